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

/// Opens a KV bucket, creating it when missing; a second caller or a
/// restart finds the existing one and leaves it as it is (two processes
/// racing to create it both end up with the same bucket; a create that
/// times out while a cluster elects a leader is tried again).
///
/// A replicated bucket is created with direct gets off, so its reads go to
/// the stream leader: direct gets are answered by any replica, and one a
/// moment behind answers a read that follows a write with the value before
/// it (on a 3-server cluster an agent's heartbeat right after its
/// registration found no registration). jetweave's buckets hold control
/// state that is read right after it is written. The stream is created
/// directly (async-nats always turns direct gets on), from the same
/// settings async-nats would use, so every process that opens the bucket
/// afterwards reads from the leader from the first read on.
pub async fn open_bucket(js: &jetstream::Context, config: kv::Config) -> Result<kv::Store, Error> {
    if let Ok(store) = js.get_key_value(config.bucket.as_str()).await {
        return Ok(store);
    }
    let created = if config.num_replicas < 2 {
        // A bucket create that fails as a whole (`BucketCreate`: a cluster
        // still placing peers, a leader election) or times out is tried
        // again; a name race ends in the `get` below.
        let passes = |e: &jetstream::context::CreateKeyValueError| {
            use jetstream::context::CreateKeyValueErrorKind as K;
            matches!(e.kind(), K::TimedOut | K::BucketCreate)
        };
        settle(|| js.create_key_value(config.clone()), passes)
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    } else {
        let stream = leader_read_stream(&config);
        settle(|| js.create_stream(stream.clone()), stream_error_passes)
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    };
    js.get_key_value(config.bucket.as_str())
        .await
        .map_err(|e| match created {
            Err(c) => Error::nats(format!("cannot open KV bucket {}: {c}", config.bucket)),
            Ok(()) => Error::nats(format!("cannot open KV bucket {}: {e}", config.bucket)),
        })
}

/// The stream of KV bucket `c` as async-nats builds it, with direct gets
/// off (see [`open_bucket`]).
fn leader_read_stream(c: &kv::Config) -> stream::Config {
    stream::Config {
        name: format!("KV_{}", c.bucket),
        description: Some(c.description.clone()),
        subjects: vec![format!("$KV.{}.>", c.bucket)],
        max_messages_per_subject: c.history.max(1),
        max_bytes: c.max_bytes,
        max_age: c.max_age,
        max_message_size: c.max_value_size,
        storage: c.storage,
        num_replicas: c.num_replicas,
        allow_rollup: true,
        deny_delete: true,
        discard: stream::DiscardPolicy::New,
        allow_direct: false,
        allow_message_ttl: c.limit_markers.is_some(),
        subject_delete_marker_ttl: c.limit_markers,
        ..Default::default()
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
        settle(|| js.get_or_create_stream(c.clone()), stream_error_passes)
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
    let config = stream::Config {
        name: subjects.shards_stream(),
        description: Some("jetweave shard assignments (one subject per node)".into()),
        subjects: vec![subjects.shards_wildcard()],
        retention: stream::RetentionPolicy::WorkQueue,
        storage: stream::StorageType::File,
        num_replicas: replicas.max(1),
        allow_direct: true,
        ..Default::default()
    };
    settle(
        || js.get_or_create_stream(config.clone()),
        stream_error_passes,
    )
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
    let name = subjects.task_consumer(queue, priority);
    let config = consumer::pull::Config {
        durable_name: Some(name),
        description: Some(format!("jetweave {queue}/{}", priority.as_str())),
        filter_subject: subjects.task(queue, priority),
        ack_policy: consumer::AckPolicy::Explicit,
        ack_wait,
        max_deliver: -1,
        max_ack_pending: 20_000,
        // Every idle node leaves a pull request waiting on each consumer
        // of its queues (the server's default allows 512).
        max_waiting: 100_000,
        ..Default::default()
    };
    durable_consumer(js, &subjects.tasks_stream(), config).await
}

/// Opens durable pull consumer `config.durable_name` of `stream`, creating
/// it when missing; set-up errors that pass by themselves are waited out
/// ([`settle`]).
pub(crate) async fn durable_consumer(
    js: &jetstream::Context,
    stream: &str,
    config: consumer::pull::Config,
) -> Result<consumer::PullConsumer, Error> {
    let name = config.durable_name.clone().unwrap_or_default();
    let stream = settle(|| js.get_stream(stream), get_stream_error_passes)
        .await
        .map_err(Error::nats_source)?;
    settle(
        || stream.get_or_create_consumer(&name, config.clone()),
        consumer_error_passes,
    )
    .await
    .map_err(|e| Error::nats(format!("cannot create consumer {name}: {e}")))
}

/// Opens stream `name`, waiting out set-up errors that pass by themselves
/// ([`settle`]): a process starting on a cluster still electing leaders.
pub(crate) async fn open_stream(
    js: &jetstream::Context,
    name: &str,
) -> Result<stream::Stream, Error> {
    settle(|| js.get_stream(name), get_stream_error_passes)
        .await
        .map_err(|e| Error::nats_source(e).context(format!("cannot open stream {name}")))
}

/// Watches every key of `store`, history first; a watch whose consumer
/// create timed out (a busy or electing cluster) is tried again for up to
/// 30 s ([`settle`]).
pub(crate) async fn watch_all(store: &kv::Store) -> Result<kv::Watch, Error> {
    let timed_out = |e: &kv::WatchError| matches!(e.kind(), kv::WatchErrorKind::TimedOut);
    settle(|| store.watch_with_history(">"), timed_out)
        .await
        .map_err(|e| Error::nats_source(e).context(format!("cannot watch {}", store.name)))
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
/// and a leaf server's INFO says nothing of the hub cluster whose
/// JetStream its clients use, so the JetStream that answers is asked
/// instead: a throwaway memory stream is created with 3, then 2 replicas,
/// and deleted.
pub async fn replicas_for(client: &async_nats::Client, subjects: &Subjects) -> usize {
    let js = jetstream::new(client.clone());
    // One fixed name per prefix (so permissions can name it): two probes
    // at once create the same config (idempotent) and both delete it; a
    // probe that meets the other's stream with other replicas tries again.
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
        let created = settle(|| js.create_stream(cfg.clone()), probe_error_passes).await;
        if created.is_ok() {
            let _ = js.delete_stream(&name).await;
            return n;
        }
    }
    client.server_info().connect_urls.len().clamp(1, 3)
}

/// Runs a set-up step (create or open a stream, bucket or consumer) again,
/// for up to 30 s, while it fails for a reason that passes by itself: a
/// timeout, a cluster electing a leader, or another process creating the
/// same resource at the same moment. Other errors return at once.
pub(crate) async fn settle<T, E, Fut>(
    step: impl FnMut() -> Fut,
    passes: impl Fn(&E) -> bool,
) -> Result<T, E>
where
    Fut: std::future::Future<Output = Result<T, E>>,
    E: std::fmt::Display,
{
    settle_within(Duration::from_secs(30), step, passes).await
}

/// How long a write on behalf of a caller (a submit, a run, a cancel, a
/// limit) waits for its stream to answer: under the 10 s a
/// [`crate::Client`] waits for a reply, so that the caller gets an error
/// it can retry rather than a timeout.
pub(crate) const WRITE_PATIENCE: Duration = Duration::from_secs(8);

/// Sends a write again, for up to [`WRITE_PATIENCE`], while no stream
/// answers on its subject (see [`no_stream_answered`]): on a cluster a
/// stream created a moment ago is not yet known to every server, and a
/// stream whose leader was lost has none until the election ends (4–9 s).
/// Nothing was stored by such a try, so sending it again is safe.
pub(crate) async fn write_settled<T, E, Fut>(step: impl FnMut() -> Fut) -> Result<T, E>
where
    Fut: std::future::Future<Output = Result<T, E>>,
    E: std::error::Error + 'static,
{
    settle_within(WRITE_PATIENCE, step, |e: &E| no_stream_answered(e)).await
}

/// Whether `e`, or an error it wraps, is a JetStream publish or request
/// that nobody answered (a publish's "no stream found", a request's "no
/// responders"): the server got it and nothing acted on it.
pub(crate) fn no_stream_answered(e: &(dyn std::error::Error + 'static)) -> bool {
    use jetstream::context::{PublishError, PublishErrorKind, RequestError, RequestErrorKind};
    let mut next = Some(e);
    while let Some(e) = next {
        if let Some(p) = e.downcast_ref::<PublishError>() {
            return p.kind() == PublishErrorKind::StreamNotFound;
        }
        if let Some(r) = e.downcast_ref::<RequestError>() {
            return r.kind() == RequestErrorKind::NoResponders;
        }
        next = e.source();
    }
    false
}

async fn settle_within<T, E, Fut>(
    patience: Duration,
    mut step: impl FnMut() -> Fut,
    passes: impl Fn(&E) -> bool,
) -> Result<T, E>
where
    Fut: std::future::Future<Output = Result<T, E>>,
    E: std::fmt::Display,
{
    let deadline = tokio::time::Instant::now() + patience;
    let mut delay = Duration::from_millis(50);
    loop {
        match step().await {
            Err(e) if passes(&e) && tokio::time::Instant::now() + delay < deadline => {
                tracing::debug!(error = %e, "JetStream step failed; trying again");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(1));
            }
            r => return r,
        }
    }
}

/// JetStream error codes that pass by themselves during set-up.
fn code_passes(code: jetstream::ErrorCode) -> bool {
    use jetstream::ErrorCode as C;
    [
        C::CLUSTER_NOT_AVAILABLE,
        C::CLUSTER_NOT_LEADER,
        C::STREAM_NAME_EXIST,
        C::CONSUMER_NAME_EXIST,
        C::CONSUMER_ALREADY_EXISTS,
    ]
    .contains(&code)
}

/// A stream create that may pass: as [`code_passes`], and "no suitable
/// peers" (a forming cluster has not placed every server yet).
fn stream_error_passes(e: &jetstream::context::CreateStreamError) -> bool {
    use jetstream::context::CreateStreamErrorKind as K;
    probe_error_passes(e)
        || matches!(e.kind(), K::JetStream(j) if j.error_code() == jetstream::ErrorCode::CLUSTER_NO_PEERS)
}

/// The replicas probe: "no suitable peers" is its answer (fewer servers
/// than replicas asked), not something to wait out.
fn probe_error_passes(e: &jetstream::context::CreateStreamError) -> bool {
    use jetstream::context::CreateStreamErrorKind as K;
    match e.kind() {
        K::TimedOut | K::JetStreamUnavailable => true,
        K::JetStream(j) => code_passes(j.error_code()),
        _ => false,
    }
}

fn get_stream_error_passes(e: &jetstream::context::GetStreamError) -> bool {
    use jetstream::context::GetStreamErrorKind as K;
    match e.kind() {
        K::Request => true,
        K::JetStream(j) => code_passes(j.error_code()),
        _ => false,
    }
}

fn consumer_error_passes(e: &jetstream::stream::ConsumerError) -> bool {
    use jetstream::stream::ConsumerErrorKind as K;
    match e.kind() {
        K::TimedOut | K::Request => true,
        K::JetStream(j) => code_passes(j.error_code()),
        _ => false,
    }
}
