//! What the task benchmarks share: raw JetStream's reference, publishing
//! tasks until their results are stored, node processes.

use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer, stream};
use futures::StreamExt;

use super::common::*;

pub fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

pub fn stats(mut v: Vec<f64>) -> (f64, f64, f64) {
    v.sort_by(|a, b| a.total_cmp(b));
    (v[0], v[v.len() / 2], v[v.len() - 1])
}

pub async fn publish_all(
    js: &jetstream::Context,
    subject: &str,
    n: usize,
    body: &bytes::Bytes,
    id_prefix: &str,
) {
    let mut acks = futures::stream::FuturesUnordered::new();
    for i in 0..n {
        let m = jetstream::message::PublishMessage::build()
            .payload(body.clone())
            .message_id(format!("{id_prefix}{i}"));
        acks.push(std::future::IntoFuture::into_future(
            js.send_publish(subject.to_string(), m)
                .await
                .expect("publish"),
        ));
        while acks.len() >= 4096 {
            acks.next().await.expect("ack").expect("ack ok");
        }
    }
    while let Some(a) = acks.next().await {
        a.expect("ack ok");
    }
}

/// (a) raw JetStream work queue: msgs/s end to end.
pub async fn raw(server: &NatsServer, n: usize, pass: usize) -> f64 {
    let client = server.client().await;
    let js = jetstream::new(client.clone());
    let name = format!("RAW{pass}");
    let c = work_queue(&js, &name, &format!("raw{pass}"), None).await;
    let body = bytes::Bytes::from(r#"{"type":"echo","payload":{"n":1}}"#);
    let t0 = Instant::now();
    let consumer_task = tokio::spawn(async move {
        let mut got = 0;
        let mut msgs = c.messages().await.unwrap();
        while got < n {
            let m = msgs.next().await.unwrap().unwrap();
            m.ack().await.unwrap();
            got += 1;
        }
    });
    let rate =
        publish_until_consumed(server, n, &format!("raw{pass}"), &body, t0, consumer_task).await;
    js.delete_stream(&name).await.unwrap();
    rate
}

/// (a'') raw (a) with jetweave's consumer layout: four consumers on the
/// stream filtered by priority (`<prefix>.critical|high|normal|low`), a
/// pull request waiting on each of the three that get nothing, messages
/// published to and consumed from `.normal`. What the priorities cost the
/// server, with no jetweave code in the way.
#[allow(dead_code)] // benches/tasks.rs only
pub async fn raw_priorities(server: &NatsServer, n: usize, pass: usize) -> f64 {
    let client = server.client().await;
    let js = jetstream::new(client.clone());
    let (name, prefix) = (format!("RAWP{pass}"), format!("rawp{pass}"));
    let s = js
        .create_stream(stream::Config {
            name: name.clone(),
            subjects: vec![format!("{prefix}.>")],
            retention: stream::RetentionPolicy::WorkQueue,
            ..Default::default()
        })
        .await
        .unwrap();
    let mut idle = Vec::new();
    let mut normal = None;
    for p in ["critical", "high", "normal", "low"] {
        let c: consumer::PullConsumer = s
            .create_consumer(consumer::pull::Config {
                durable_name: Some(p.into()),
                filter_subject: format!("{prefix}.{p}"),
                ack_policy: consumer::AckPolicy::Explicit,
                ..Default::default()
            })
            .await
            .unwrap();
        match p {
            "normal" => normal = Some(c),
            _ => idle.push(c.messages().await.unwrap()),
        }
    }
    let c = normal.expect("normal consumer");
    let body = bytes::Bytes::from(r#"{"type":"echo","payload":{"n":1}}"#);
    let t0 = Instant::now();
    let consumer_task = tokio::spawn(async move {
        let mut msgs = c.messages().await.unwrap();
        for _ in 0..n {
            msgs.next().await.unwrap().unwrap().ack().await.unwrap();
        }
    });
    let pjs = jetstream::new(server.client().await);
    publish_all(
        &pjs,
        &format!("{prefix}.normal"),
        n,
        &body,
        &format!("{prefix}-"),
    )
    .await;
    consumer_task.await.unwrap();
    let rate = n as f64 / t0.elapsed().as_secs_f64();
    drop(idle);
    js.delete_stream(&name).await.unwrap();
    rate
}

/// A work-queue stream `name` on `<prefix>.>` with one explicit-ack pull
/// consumer.
async fn work_queue(
    js: &jetstream::Context,
    name: &str,
    prefix: &str,
    max_ack_pending: Option<i64>,
) -> consumer::PullConsumer {
    let s = js
        .create_stream(stream::Config {
            name: name.to_string(),
            subjects: vec![format!("{prefix}.>")],
            retention: stream::RetentionPolicy::WorkQueue,
            ..Default::default()
        })
        .await
        .unwrap();
    let mut config = consumer::pull::Config {
        durable_name: Some("w".into()),
        ack_policy: consumer::AckPolicy::Explicit,
        ..Default::default()
    };
    if let Some(m) = max_ack_pending {
        config.max_ack_pending = m;
    }
    s.create_consumer(config).await.unwrap()
}

/// Publishes `n` messages on `<prefix>.q` (ids `<prefix>-<i>`), waits for
/// `consumer` to take them all; messages/s since `t0`.
async fn publish_until_consumed(
    server: &NatsServer,
    n: usize,
    prefix: &str,
    body: &bytes::Bytes,
    t0: Instant,
    consumer: tokio::task::JoinHandle<()>,
) -> f64 {
    let pjs = jetstream::new(server.client().await);
    publish_all(&pjs, &format!("{prefix}.q"), n, body, &format!("{prefix}-")).await;
    consumer.await.unwrap();
    n as f64 / t0.elapsed().as_secs_f64()
}

/// (a') the bound for tasks with a stored result: raw (a) plus, per
/// message, what jetweave's stream work adds — a result published to a
/// stream configured like `WEAVE_RESULTS` (one subject per task, one
/// message per subject, `Nats-Expected-Last-Subject-Sequence: 0`), its
/// ack awaited before the task is acked, up to 256 in flight (one node's
/// slots). No parsing, no handler, no bookkeeping: only the server's work.
#[allow(dead_code)] // benches/tasks.rs only
pub async fn raw_with_result(server: &NatsServer, n: usize, pass: usize) -> f64 {
    let client = server.client().await;
    let js = jetstream::new(client.clone());
    let (name, rname) = (format!("RAWR{pass}"), format!("RAWRES{pass}"));
    let c = work_queue(&js, &name, &format!("rawr{pass}"), Some(256)).await;
    js.create_stream(stream::Config {
        name: rname.clone(),
        subjects: vec![format!("rawres{pass}.>")],
        max_messages_per_subject: 1,
        allow_direct: true,
        ..Default::default()
    })
    .await
    .unwrap();
    let body = bytes::Bytes::from(r#"{"type":"echo","payload":{"n":1}}"#);
    let t0 = Instant::now();
    let subject = move |seq| format!("rawres{pass}.{seq}");
    let consumer_task = store_results(c, js.clone(), n, subject);
    let rate =
        publish_until_consumed(server, n, &format!("rawr{pass}"), &body, t0, consumer_task).await;
    js.delete_stream(&name).await.unwrap();
    js.delete_stream(&rname).await.unwrap();
    rate
}

/// The consumer of the bound (a'): for `n` messages, up to 256 in flight,
/// stores a result on `subject(stream sequence)` (first write wins, as a
/// node's), waits for its ack, then acks the message.
#[allow(dead_code)] // benches/tasks.rs only
pub fn store_results(
    c: consumer::PullConsumer,
    js: jetstream::Context,
    n: usize,
    subject: impl Fn(u64) -> String + Send + 'static,
) -> tokio::task::JoinHandle<()> {
    let result = bytes::Bytes::from(
        r#"{"task_id":"0123456789abcdef0123456789abcdef","status":"completed","result":{"n":1},"error":null,"attempts":1,"node_id":"bench0-0","started_at":"2026-12-02T20:00:00.000000Z","finished_at":"2026-12-02T20:00:00.000100Z","duration_s":0.0001}"#,
    );
    tokio::spawn(async move {
        let mut msgs = c.messages().await.unwrap();
        let mut inflight = futures::stream::FuturesUnordered::new();
        let mut got = 0;
        while got < n {
            tokio::select! {
                Some(m) = msgs.next(), if inflight.len() < 256 => {
                    let m = m.unwrap();
                    let (js, result) = (js.clone(), result.clone());
                    let subject = subject(m.info().unwrap().stream_sequence);
                    inflight.push(async move {
                        let p = jetstream::message::PublishMessage::build()
                            .payload(result)
                            .expected_last_subject_sequence(0);
                        js.send_publish(subject, p).await.unwrap().await.unwrap();
                        m.ack().await.unwrap();
                    });
                }
                Some(()) = inflight.next() => got += 1,
            }
        }
    })
}

/// (b) jetweave echo tasks: tasks/s from first submit until every result
/// is stored in `WEAVE_RESULTS` (read from the stream state, so the
/// measurement adds no subscriber traffic).
pub async fn weave(server: &NatsServer, n: usize, pass: usize) -> f64 {
    let body = bytes::Bytes::from(r#"{"type":"echo","payload":{"n":1}}"#);
    weave_body(server, n, &format!("w{pass}-"), body).await
}

/// Like [`weave`], with the task body given (ids `<prefix><i>`).
pub async fn weave_body(server: &NatsServer, n: usize, prefix: &str, body: bytes::Bytes) -> f64 {
    let client = server.client().await;
    let js = jetstream::new(client.clone());
    let results = js.get_stream("WEAVE_RESULTS").await.unwrap();
    let before = results.get_info().await.unwrap().state.messages;
    let t0 = Instant::now();
    let pjs = jetstream::new(server.client().await);
    let publish = publish_all(&pjs, "weave.tasks.default.normal", n, &body, prefix);
    let wait = poll_until(
        || {
            let results = &results;
            async move { results.get_info().await.unwrap().state.messages - before }
        },
        n as u64,
        t0,
    );
    tokio::join!(publish, wait);
    n as f64 / t0.elapsed().as_secs_f64()
}

/// Polls `done` (a count read from the server) until it reaches
/// `target`, sleeping about half the time the rate so far says is left
/// (1–50 ms): the end is seen within ~1 ms, with a few dozen stream-info
/// requests per pass. Polling every 2 ms cost the server ~1 µs per task,
/// a load the raw references (which count in-process) do not carry.
#[allow(dead_code)] // benches/tasks.rs only
pub async fn poll_until<F, Fut>(mut done: F, target: u64, t0: Instant)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = u64>,
{
    loop {
        let now = done().await;
        if now >= target {
            return;
        }
        let per_task = t0.elapsed().as_secs_f64() / now.max(1) as f64;
        let left = if now == 0 {
            0.01
        } else {
            (target - now) as f64 * per_task
        };
        tokio::time::sleep(Duration::from_secs_f64((left / 2.0).clamp(0.001, 0.05))).await;
    }
}

/// `k` nodes as separate `jetweave node` processes (256 slots each),
/// returned once every one is in discovery.
pub async fn nodes(server: &NatsServer, k: usize, pass: usize) -> Vec<Proc> {
    let d = jetweave::discovery::KvDiscovery::open(
        server.client().await,
        &jetweave::subjects::Subjects::new("weave").unwrap(),
        Duration::from_secs(5),
        1,
    )
    .await
    .unwrap();
    let mut out = Vec::new();
    let mut ids = Vec::new();
    let slots = env_usize("BENCH_CONCURRENCY", 256).to_string();
    for i in 0..k {
        let id = format!("bench{pass}-{i}");
        out.push(Proc::spawn(&[
            "--nats-url",
            &server.url(),
            "node",
            "--node-id",
            &id,
            "--concurrency",
            &slots,
            "--ack-wait",
            "30",
        ]));
        ids.push(id);
    }
    wait_for("bench nodes up", Duration::from_secs(30), || async {
        let live = d.nodes().await.ok()?;
        ids.iter()
            .all(|id| live.iter().any(|n| &n.node_id == id))
            .then_some(())
    })
    .await;
    out
}

/// SIGTERM each node and wait for it to exit (it drains and unregisters).
pub async fn stop(nodes: Vec<Proc>) {
    for mut n in nodes {
        n.signal(libc::SIGTERM);
        let _ = tokio::task::spawn_blocking(move || n.wait_exit(Duration::from_secs(10))).await;
    }
}
