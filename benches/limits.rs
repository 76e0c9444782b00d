//! What flow control costs (contract §15), side by side in one run on one
//! server (the machine is noisy; compare ratios):
//!
//! (a) raw JetStream work queue (reference);
//! (b) jetweave `echo` tasks, no limit defined;
//! (c) the same tasks with 100 limits defined that match none of them
//!     (other types): the cost of having limits at all;
//! (d) tasks under a concurrency limit too large to bite (`max_running`
//!     100000, one limit key): one slot taken and given back per task;
//! (e) tasks under a rate limit too large to bite (1e6/s): one token per
//!     task.
//!
//! `cargo bench --bench limits` (env: BENCH_N tasks per pass, default
//! 10000; BENCH_REPS, default 3). One node process, concurrency 256.
#[path = "../tests/common/mod.rs"]
mod common;
mod shared;

use common::*;
use serde_json::json;
use shared::*;

async fn set_limit(c: &jetweave::Client, spec: serde_json::Value) {
    let spec = serde_json::from_value(spec).expect("limit spec");
    c.limit_set(&spec).await.expect("limit set");
}

async fn clear_limits(c: &jetweave::Client) {
    for l in c.limits().await.expect("limits") {
        c.limit_delete(&l.limit_id).await.expect("limit delete");
    }
}

fn keyed(n: usize) -> bytes::Bytes {
    bytes::Bytes::from(
        json!({"type": "echo", "payload": {"n": 1}, "limit_key": format!("k{}", n % 16)})
            .to_string(),
    )
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    if std::env::args().any(|a| a == "--list") {
        println!("limits: bench");
        return;
    }
    if !std::env::args().any(|a| a == "--bench") {
        println!("benchmark skipped: run `cargo bench --bench limits`");
        return;
    }
    let n = env_usize("BENCH_N", 10_000);
    let reps = env_usize("BENCH_REPS", 3);
    let server = NatsServer::start();
    let _coord = start_coordinator(&server, "bench-c").await;
    let c = api_client(&server).await;
    println!("jetweave flow-control benchmark: N = {n} echo tasks per case, {reps} passes, one nats-server, one node process (concurrency 256)");
    let names = [
        "(a) raw JetStream work queue",
        "(b) jetweave, no limits",
        "(c) jetweave, 100 limits, none matching",
        "(d) under max_running 100000 ",
        "(e) under per_second 1e6 ",
    ];
    let mut r: Vec<Vec<f64>> = vec![vec![]; names.len()];
    for pass in 0..reps {
        r[0].push(raw(&server, n, pass).await);
        let ns = nodes(&server, 1, pass).await;
        clear_limits(&c).await;
        r[1].push(weave(&server, n, pass * 10).await);
        for i in 0..100 {
            set_limit(
                &c,
                json!({"limit_id": format!("other{i}"), "type": format!("t{i}"), "max_running": 1}),
            )
            .await;
        }
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        r[2].push(weave(&server, n, pass * 10 + 1).await);
        clear_limits(&c).await;
        set_limit(
            &c,
            json!({"limit_id": "big", "type": "echo", "max_running": 100_000}),
        )
        .await;
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        let prefix = format!("d{pass}-");
        r[3].push(weave_body(&server, n, &prefix, keyed(pass)).await);
        clear_limits(&c).await;
        set_limit(
            &c,
            json!({"limit_id": "fast", "type": "echo", "per_second": 1e6}),
        )
        .await;
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        let prefix = format!("e{pass}-");
        r[4].push(weave_body(&server, n, &prefix, keyed(pass + 1)).await);
        clear_limits(&c).await;
        stop(ns).await;
        println!(
            "pass {pass}: raw {:.0} | none {:.0} | 100 other limits {:.0} | max_running {:.0} | per_second {:.0} (msgs or tasks/s)",
            r[0][pass], r[1][pass], r[2][pass], r[3][pass], r[4][pass]
        );
    }
    println!();
    for (i, name) in names.iter().enumerate() {
        let (lo, med, hi) = stats(r[i].clone());
        println!("{name:<44} median {med:>10.0} /s  (min {lo:.0}, max {hi:.0})");
        if i >= 2 {
            let ratio: Vec<f64> = r[i].iter().zip(&r[1]).map(|(x, b)| x / b).collect();
            let (lo, med, hi) = stats(ratio);
            println!("    ratio to (b), same pass                  median {med:>10.3}     (min {lo:.3}, max {hi:.3})");
        }
    }
}
