//! The jetweave side of `scripts/bench-celery.sh`: the same workloads as
//! `bench/celery/drive.py` — N no-op tasks submitted then all awaited, and
//! sequential submit-to-result latency — on a fresh nats-server with one
//! coordinator and one node in this process. Prints one JSON line.
#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use common::*;
use jetweave::protocol::{SubmitRequest, TaskEnvelope};

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let mut args = std::env::args().skip(1);
    let n: usize = args.next().and_then(|v| v.parse().ok()).unwrap_or(2000);
    let seq: usize = args.next().and_then(|v| v.parse().ok()).unwrap_or(200);
    let server = NatsServer::start();
    let _c = start_coordinator(&server, "c1").await;
    let _node = start_node(&server, node_config("w1")).await;
    let api = api_client(&server).await;
    let req = |i: usize| SubmitRequest {
        envelope: TaskEnvelope::new("echo", serde_json::json!(i)),
        ..Default::default()
    };
    let t0 = Instant::now();
    let mut ids = Vec::with_capacity(n);
    for i in 0..n {
        ids.push(api.submit(&req(i)).await.expect("submit").task_id);
    }
    for id in &ids {
        api.wait(id, Duration::from_secs(300))
            .await
            .expect("result");
    }
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
    println!(
        "{}",
        serde_json::json!({
            "tasks_per_s": tput,
            "seq_p50_ms": lat[lat.len() / 2],
            "seq_p99_ms": lat[(lat.len() * 99 / 100).saturating_sub(1)],
        })
    );
}
