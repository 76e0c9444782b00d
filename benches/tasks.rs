//! Task throughput and latency, side by side with raw JetStream on the
//! same server in the same run (the machine is noisy; compare ratios).
//!
//! `cargo bench --bench tasks` (env: BENCH_N tasks per pass, default 20000;
//! BENCH_REPS repetitions, default 3).
//!
//! (a) raw: an async-nats publisher (pipelined acks) and a pull consumer
//!     (fetch + ack) on a work-queue stream, running concurrently;
//! (b) jetweave: `echo` tasks published on `weave.tasks.default.normal`
//!     (pipelined acks) until every terminal result is on `P_RESULTS`,
//!     with 1 and 2 in-process nodes;
//! (c) submit-to-result latency at a steady 200 tasks/s, open loop.
#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer, stream};
use common::*;
use futures::StreamExt;
use jetweave::Node;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn stats(mut v: Vec<f64>) -> (f64, f64, f64) {
    v.sort_by(|a, b| a.total_cmp(b));
    (v[0], v[v.len() / 2], v[v.len() - 1])
}

async fn publish_all(
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
async fn raw(server: &NatsServer, n: usize, pass: usize) -> f64 {
    let client = server.client().await;
    let js = jetstream::new(client.clone());
    let name = format!("RAW{pass}");
    let s = js
        .create_stream(stream::Config {
            name: name.clone(),
            subjects: vec![format!("raw{pass}.>")],
            retention: stream::RetentionPolicy::WorkQueue,
            ..Default::default()
        })
        .await
        .unwrap();
    let c: consumer::PullConsumer = s
        .create_consumer(consumer::pull::Config {
            durable_name: Some("w".into()),
            ack_policy: consumer::AckPolicy::Explicit,
            ..Default::default()
        })
        .await
        .unwrap();
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
    let pjs = jetstream::new(server.client().await);
    publish_all(
        &pjs,
        &format!("raw{pass}.q"),
        n,
        &body,
        &format!("raw{pass}-"),
    )
    .await;
    consumer_task.await.unwrap();
    let rate = n as f64 / t0.elapsed().as_secs_f64();
    js.delete_stream(&name).await.unwrap();
    rate
}

/// (b) jetweave echo tasks: tasks/s from first submit until every result
/// is stored in `WEAVE_RESULTS` (read from the stream state, so the
/// measurement adds no subscriber traffic).
async fn weave(server: &NatsServer, n: usize, pass: usize) -> f64 {
    let client = server.client().await;
    let js = jetstream::new(client.clone());
    let mut results = js.get_stream("WEAVE_RESULTS").await.unwrap();
    let before = results.info().await.unwrap().state.messages;
    let body = bytes::Bytes::from(r#"{"type":"echo","payload":{"n":1}}"#);
    let t0 = Instant::now();
    let pjs = jetstream::new(server.client().await);
    let prefix = format!("w{pass}-");
    let publish = publish_all(&pjs, "weave.tasks.default.normal", n, &body, &prefix);
    let wait = async {
        loop {
            let now = results.info().await.unwrap().state.messages;
            if now >= before + n as u64 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    };
    tokio::join!(publish, wait);
    n as f64 / t0.elapsed().as_secs_f64()
}

/// (c) latency at a steady offered load, open loop: send times are fixed
/// by the schedule, not by completions.
async fn latency(server: &NatsServer, rate: f64, n: usize, pass: usize) -> (f64, f64) {
    let client = server.client().await;
    let mut results = client.subscribe("weave.results.>").await.unwrap();
    client.flush().await.unwrap();
    let js = jetstream::new(server.client().await);
    let start = tokio::time::Instant::now();
    let interval = Duration::from_secs_f64(1.0 / rate);
    let sent = std::sync::Arc::new(std::sync::Mutex::new(vec![None::<Instant>; n]));
    let s2 = sent.clone();
    let publisher = tokio::spawn(async move {
        let mut pending = Vec::with_capacity(n);
        for i in 0..n {
            tokio::time::sleep_until(start + interval * i as u32).await;
            let body = format!(r#"{{"type":"echo","id":"lat{pass}-{i}","payload":{i}}}"#);
            s2.lock().unwrap()[i] = Some(Instant::now());
            // Fire the publish; its ack is awaited off the schedule.
            let ack = js
                .publish("weave.tasks.default.normal", body.into())
                .await
                .unwrap();
            pending.push(tokio::spawn(async move { ack.await.unwrap() }));
        }
        // The context must outlive its pending acks.
        for p in pending {
            p.await.unwrap();
        }
        drop(js);
    });
    let mut lat = Vec::with_capacity(n);
    while lat.len() < n {
        let m = results.next().await.unwrap();
        let now = Instant::now();
        let id = m.subject.rsplit('.').next().unwrap().to_string();
        let i: usize = id.rsplit('-').next().unwrap().parse().unwrap();
        let t = sent.lock().unwrap()[i].unwrap();
        lat.push(now.duration_since(t).as_secs_f64() * 1000.0);
    }
    publisher.await.unwrap();
    lat.sort_by(|a, b| a.total_cmp(b));
    (lat[lat.len() / 2], lat[(lat.len() * 99) / 100])
}

async fn nodes(server: &NatsServer, k: usize, pass: usize) -> Vec<TestNode> {
    let mut out = Vec::new();
    for i in 0..k {
        let mut cfg = node_config(&format!("bench{pass}-{i}"));
        cfg.concurrency = 256;
        cfg.ack_wait = Duration::from_secs(30);
        out.push(start_node_with(server, Node::new(cfg)).await);
    }
    out
}

async fn stop(nodes: Vec<TestNode>) {
    for n in nodes {
        n.handle.shutdown(Duration::from_secs(5)).await;
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    if std::env::args().any(|a| a == "--list") {
        println!("tasks: bench");
        return;
    }
    // `cargo test --all-targets` builds and runs this too (without
    // `--bench`): only `cargo bench` measures.
    if !std::env::args().any(|a| a == "--bench") {
        println!("benchmark skipped: run `cargo bench --bench tasks`");
        return;
    }
    let n = env_usize("BENCH_N", 20_000);
    let reps = env_usize("BENCH_REPS", 3);
    let server = NatsServer::start();
    println!("jetweave task benchmark: N = {n} tasks per pass, {reps} repetitions, one nats-server (default fsync), loopback, 2 cores");
    let (mut a, mut b1, mut b2, mut p50, mut p99) = (vec![], vec![], vec![], vec![], vec![]);
    for pass in 0..reps {
        a.push(raw(&server, n, pass).await);
        let ns = nodes(&server, 1, pass * 10).await;
        b1.push(weave(&server, n, pass * 10).await);
        let (l50, l99) = latency(&server, 200.0, 1000, pass).await;
        p50.push(l50);
        p99.push(l99);
        stop(ns).await;
        let ns = nodes(&server, 2, pass * 10 + 1).await;
        b2.push(weave(&server, n, pass * 10 + 1).await);
        stop(ns).await;
        println!(
            "pass {pass}: raw {:.0} msg/s | jetweave 1 node {:.0} tasks/s, 2 nodes {:.0} tasks/s | 200/s latency p50 {:.2} ms p99 {:.2} ms",
            a[pass], b1[pass], b2[pass], p50[pass], p99[pass]
        );
    }
    let show = |name: &str, v: &[f64], unit: &str| {
        let (lo, med, hi) = stats(v.to_vec());
        println!("{name:<38} median {med:>9.2} {unit}  (min {lo:.2}, max {hi:.2})");
    };
    println!();
    show("(a) raw JetStream work queue", &a, "msg/s");
    show("(b) jetweave echo, 1 node", &b1, "tasks/s");
    show("(b) jetweave echo, 2 nodes", &b2, "tasks/s");
    let r1: Vec<f64> = b1.iter().zip(&a).map(|(b, a)| b / a).collect();
    let r2: Vec<f64> = b2.iter().zip(&a).map(|(b, a)| b / a).collect();
    show("ratio (b)/(a), 1 node", &r1, "");
    show("ratio (b)/(a), 2 nodes", &r2, "");
    show("(c) latency p50 at 200 tasks/s", &p50, "ms");
    show("(c) latency p99 at 200 tasks/s", &p99, "ms");
}
