//! JetStream resources, one place for each: the configs of every stream,
//! bucket and consumer jetweave creates (`ensure_*`, `*_bucket`), and the
//! reads and writes of what they hold ([`tasks`], [`results`], [`audit`],
//! [`checkpoint`], [`discovery`]). Workers, coordinators and clients use
//! these; nothing here knows about them.

use async_nats::jetstream::{self, consumer, kv, stream};
use std::time::Duration;

use crate::error::Error;
use crate::wire::protocol::Priority;
use crate::wire::subjects::Subjects;

pub mod audit;
pub mod checkpoint;
pub mod discovery;
pub mod limits;
pub mod results;
pub mod tasks;

/// Duplicate window of `P_TASKS` (the server default).
pub const DUPLICATE_WINDOW: Duration = Duration::from_secs(120);

/// Opens a KV bucket, creating it with `config` when it does not exist
/// (two processes racing to create it both end up with the same bucket).
/// Opens a KV bucket, creating it when missing; a second caller or a
/// restart finds the existing one and leaves it as it is.
pub async fn open_bucket(js: &jetstream::Context, config: kv::Config) -> Result<kv::Store, Error> {
    if let Ok(store) = js.get_key_value(config.bucket.as_str()).await {
        return Ok(store);
    }
    match js.create_key_value(config.clone()).await {
        Ok(store) => Ok(store),
        Err(e) => js
            .get_key_value(config.bucket.as_str())
            .await
            .map_err(|_| Error::nats(format!("cannot open KV bucket {}: {e}", config.bucket))),
    }
}

/// Creates the task, result, DLQ and event streams when missing (an
/// existing stream is left as it is, so restarts never reset anything).
pub async fn ensure_streams(
    js: &jetstream::Context,
    subjects: &Subjects,
    replicas: usize,
) -> Result<(), Error> {
    let replicas = replicas.max(1);
    let day = Duration::from_secs(86_400);
    let configs = [
        stream::Config {
            name: subjects.tasks_stream(),
            description: Some("jetweave task queues (work queue)".into()),
            subjects: subjects
                .task_subjects()
                .into_iter()
                .chain([subjects.delayed_wildcard()])
                .collect(),
            // No size cap: a cap with the default discard policy would drop
            // accepted tasks, and message schedules rule out discard-new.
            // A full JetStream store refuses new tasks instead (see
            // docs/reliability.md, limits).
            retention: stream::RetentionPolicy::WorkQueue,
            storage: stream::StorageType::File,
            num_replicas: replicas,
            duplicate_window: DUPLICATE_WINDOW,
            allow_direct: true,
            allow_message_schedules: true,
            ..Default::default()
        },
        stream::Config {
            name: subjects.results_stream(),
            description: Some("jetweave task results (one per task)".into()),
            subjects: vec![subjects.results_wildcard()],
            storage: stream::StorageType::File,
            num_replicas: replicas,
            max_messages_per_subject: 1,
            max_age: 7 * day,
            allow_direct: true,
            ..Default::default()
        },
        stream::Config {
            name: subjects.dlq_stream(),
            description: Some("jetweave dead letters".into()),
            subjects: vec![subjects.dlq_wildcard()],
            storage: stream::StorageType::File,
            num_replicas: replicas,
            max_age: 30 * day,
            allow_direct: true,
            ..Default::default()
        },
        stream::Config {
            name: subjects.events_stream(),
            description: Some("jetweave audit log and process event outcomes".into()),
            subjects: vec![subjects.events_wildcard()],
            storage: stream::StorageType::File,
            num_replicas: replicas,
            max_age: 7 * day,
            allow_direct: true,
            ..Default::default()
        },
    ];
    for c in configs {
        let name = c.name.clone();
        js.get_or_create_stream(c)
            .await
            .map_err(|e| Error::nats(format!("cannot create stream {name}: {e}")))?;
    }
    Ok(())
}

/// Creates the shard assignment stream when missing.
/// Creates the `P_SHARDS` work-queue stream when missing.
pub async fn ensure_shards_stream(
    js: &jetstream::Context,
    subjects: &Subjects,
    replicas: usize,
) -> Result<(), Error> {
    js.get_or_create_stream(stream::Config {
        name: subjects.shards_stream(),
        description: Some("jetweave shard assignments (one subject per node)".into()),
        subjects: vec![subjects.shards_wildcard()],
        retention: stream::RetentionPolicy::WorkQueue,
        storage: stream::StorageType::File,
        num_replicas: replicas.max(1),
        allow_direct: true,
        ..Default::default()
    })
    .await
    .map(|_| ())
    .map_err(|e| Error::nats(format!("cannot create shard stream: {e}")))
}

/// The durable consumer of one (queue, priority).
pub async fn task_consumer(
    js: &jetstream::Context,
    subjects: &Subjects,
    queue: &str,
    priority: Priority,
    ack_wait: Duration,
) -> Result<consumer::PullConsumer, Error> {
    let stream = js
        .get_stream(subjects.tasks_stream())
        .await
        .map_err(Error::nats_source)?;
    let name = subjects.task_consumer(queue, priority);
    stream
        .get_or_create_consumer(
            &name,
            consumer::pull::Config {
                durable_name: Some(name.clone()),
                description: Some(format!("jetweave {queue}/{}", priority.as_str())),
                filter_subject: subjects.task(queue, priority),
                ack_policy: consumer::AckPolicy::Explicit,
                ack_wait,
                max_deliver: -1,
                max_ack_pending: 20_000,
                ..Default::default()
            },
        )
        .await
        .map_err(|e| Error::nats(format!("cannot create consumer {name}: {e}")))
}

/// A file-backed KV bucket that keeps one revision per key, with
/// `replicas` copies and an optional max age (and expiry markers).
fn bucket_config(
    bucket: String,
    description: &str,
    replicas: usize,
    max_age: Option<Duration>,
    limit_markers: bool,
) -> kv::Config {
    kv::Config {
        bucket,
        description: description.into(),
        history: 1,
        num_replicas: replicas.max(1),
        max_age: max_age.unwrap_or_default(),
        limit_markers: limit_markers.then_some(Duration::from_secs(60)),
        storage: stream::StorageType::File,
        ..Default::default()
    }
}

/// Opens (or creates) the `P-cancels` bucket. Entries age out after a day;
/// expiry markers let nodes forget cancels that aged out.
pub async fn cancels_bucket(
    js: &jetstream::Context,
    subjects: &Subjects,
    replicas: usize,
) -> Result<kv::Store, Error> {
    let day = Duration::from_secs(86_400);
    let c = bucket_config(
        subjects.cancels_bucket(),
        "jetweave cancel requests",
        replicas,
        Some(day),
        true,
    );
    open_bucket(js, c).await
}

/// Opens (or creates) the `P-attempts` bucket: how many attempts of a task
/// failed, written only when one fails (never on the success path), so a
/// redelivery after a lost lease (its node died, paused or was cut off) is
/// not counted as an attempt.
pub async fn attempts_bucket(
    js: &jetstream::Context,
    subjects: &Subjects,
    replicas: usize,
) -> Result<kv::Store, Error> {
    let week = Duration::from_secs(7 * 86_400);
    let desc = "jetweave failed attempts of tasks being retried";
    let c = bucket_config(
        subjects.attempts_bucket(),
        desc,
        replicas,
        Some(week),
        false,
    );
    open_bucket(js, c).await
}

/// Opens (or creates) the `P-agents` bucket: one registration per agent,
/// with a per-key TTL (hence limit markers).
pub async fn agents_bucket(
    js: &jetstream::Context,
    subjects: &Subjects,
    replicas: usize,
) -> Result<kv::Store, Error> {
    let desc = "jetweave agents registered through a sidecar (per-key TTL)";
    open_bucket(
        js,
        bucket_config(subjects.agents_bucket(), desc, replicas, None, true),
    )
    .await
}

/// Opens (or creates) the `P-runs` bucket.
pub async fn runs_bucket(
    js: &jetstream::Context,
    subjects: &Subjects,
    replicas: usize,
) -> Result<kv::Store, Error> {
    let desc = "jetweave runs and shard assignments";
    open_bucket(
        js,
        bucket_config(subjects.runs_bucket(), desc, replicas, None, false),
    )
    .await
}

/// Replicas for the JetStream resources jetweave creates: 1 on a single
/// server; on a cluster, 3 when the cluster can place them, else as many
/// as it can. The client's INFO lists only the cluster members known when
/// it connected (a process started while the cluster forms would see one),
/// so the cluster is asked instead: a throwaway memory stream is created
/// with 3, then 2 replicas, and deleted.
pub async fn replicas_for(client: &async_nats::Client, subjects: &Subjects) -> usize {
    let info = client.server_info();
    if info.cluster.as_deref().is_none_or(|c| c.is_empty()) {
        return 1;
    }
    let js = jetstream::new(client.clone());
    // One fixed name per prefix (so permissions can name it): two probes
    // at once create the same config (idempotent) and both delete it.
    let name = subjects.replicas_probe_stream();
    for n in [3, 2] {
        let cfg = stream::Config {
            name: name.clone(),
            subjects: vec![subjects.replicas_probe()],
            storage: stream::StorageType::Memory,
            num_replicas: n,
            max_messages: 1,
            ..Default::default()
        };
        if js.create_stream(cfg).await.is_ok() {
            let _ = js.delete_stream(&name).await;
            return n;
        }
    }
    info.connect_urls.len().clamp(1, 3)
}
