//! The jetweave side of `scripts/bench-peers.sh`: the same workloads as
//! `bench/celery/drive.py` and `bench/taskiq/drive.py` — N no-op tasks
//! submitted (through `weave-api`, up to 256 requests in flight, as
//! taskiq's drive gathers its `kiq()` calls) then all awaited (256 at a
//! time), and
//! sequential submit-to-result latency — on a fresh nats-server with one
//! coordinator in this process and one `jetweave node` process (the
//! shipped binary, release build); then a killed worker: a 1 s task on one of two node
//! processes, that process killed with SIGKILL once the task runs, and
//! the time from the kill to the task's result (default timings). Prints
//! one JSON line.
#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use common::*;
use futures::StreamExt;
use jetweave::protocol::{SubmitRequest, TaskEnvelope};

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let mut args = std::env::args().skip(1);
    let n: usize = args.next().and_then(|v| v.parse().ok()).unwrap_or(2000);
    let seq: usize = args.next().and_then(|v| v.parse().ok()).unwrap_or(200);
    let server = NatsServer::start();
    let _c = start_coordinator(&server, "c1").await;
    let _node = spawn_node_proc(&server, "w1").await;
    let api = api_client(&server).await;
    let req = |i: usize| SubmitRequest {
        envelope: TaskEnvelope::new("echo", serde_json::json!(i)),
        ..Default::default()
    };
    let t0 = Instant::now();
    let ids: Vec<String> = futures::stream::iter(0..n)
        .map(|i| {
            let (api, r) = (&api, req(i));
            async move { api.submit(&r).await.expect("submit").task_id }
        })
        .buffer_unordered(256)
        .collect()
        .await;
    futures::stream::iter(&ids)
        .for_each_concurrent(256, |id| async {
            api.wait(id, Duration::from_secs(300))
                .await
                .expect("result");
        })
        .await;
    let tput = n as f64 / t0.elapsed().as_secs_f64();
    let mut lat = Vec::with_capacity(seq);
    for i in 0..seq {
        let t = Instant::now();
        let id = api.submit(&req(i)).await.expect("submit").task_id;
        api.wait(&id, Duration::from_secs(30))
            .await
            .expect("result");
        lat.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    lat.sort_by(|a, b| a.total_cmp(b));
    let recovery = killed_worker().await;
    println!(
        "{}",
        serde_json::json!({
            "tasks_per_s": tput,
            "seq_p50_ms": lat[lat.len() / 2],
            "seq_p99_ms": lat[(lat.len() * 99 / 100).saturating_sub(1)],
            "killed_worker_s": recovery,
        })
    );
}

/// Seconds from the SIGKILL of the node running a 1 s task to the task's
/// result, with a second node alive.
async fn killed_worker() -> f64 {
    let server = NatsServer::start();
    let _c = start_coordinator(&server, "c1").await;
    let mut nodes = [
        spawn_node_proc(&server, "k1").await,
        spawn_node_proc(&server, "k2").await,
    ];
    let api = api_client(&server).await;
    let req = SubmitRequest {
        envelope: TaskEnvelope::new("sleep", serde_json::json!({"ms": 1000})),
        ..Default::default()
    };
    let id = api.submit(&req).await.expect("submit").task_id;
    let node = wait_for("the task runs", Duration::from_secs(10), || async {
        api.get(&id).await.ok()?.node_id
    })
    .await;
    let victim = if node == "k1" { 0 } else { 1 };
    nodes[victim].kill9();
    let killed = Instant::now();
    let r = api
        .wait(&id, Duration::from_secs(120))
        .await
        .expect("result");
    let survivor = if victim == 0 { "k2" } else { "k1" };
    assert_eq!(r.node_id.as_deref(), Some(survivor));
    killed.elapsed().as_secs_f64()
}
