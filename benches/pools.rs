//! Auto-scaling against fixed pools (contract §10): 2,000 `sleep` 100 ms
//! tasks published at once onto a `jetweave pool` that is (a) fixed at 1
//! worker, (b) fixed at 6, (c) auto-scaled 1..6 (thresholds 10 / 2,
//! cooldown 5 s); every worker has 4 slots. Printed: time until the last
//! result is stored, worker-seconds used until then, and (auto) when the
//! pool was back at 1 worker. The worker count over time is written to
//! `target/pools-bench.csv`; `scripts/bench-chart.sh pools` draws
//! docs/pools.png from it. `cargo bench --bench pools`.
#[path = "../tests/common/mod.rs"]
mod common;

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use common::*;
use serde_json::json;

const TASKS: usize = 2000;

struct Run {
    name: &'static str,
    drained_s: f64,
    worker_s: f64,
    back_to_min_s: Option<f64>,
    samples: Vec<(f64, u32)>,
}

async fn results(js: &async_nats::jetstream::Context) -> u64 {
    match js.get_stream("WEAVE_RESULTS").await {
        Ok(mut s) => s.info().await.map(|i| i.state.messages).unwrap_or(0),
        Err(_) => 0,
    }
}

async fn run(name: &'static str, flags: &[&str]) -> Run {
    let server = NatsServer::start();
    let _c = start_coordinator(&server, "c1").await;
    let c = api_client(&server).await;
    let url = server.url();
    let mut args = vec![
        "--nats-url",
        &url,
        "pool",
        "--pool-id",
        "b",
        "--concurrency",
        "4",
    ];
    args.extend_from_slice(flags);
    let _pool = Proc::spawn(&args);
    let min = wait_for("pool ready", Duration::from_secs(30), || async {
        let s = c.pool_status("b").await.ok()?;
        (s.worker_count == s.min).then_some(s.min)
    })
    .await;
    let js = async_nats::jetstream::new(c.nats().clone());
    let mut acks = Vec::with_capacity(TASKS);
    for i in 0..TASKS {
        let body = json!({"type": "sleep", "id": format!("s{i}"), "payload": {"ms": 100}});
        let ack = js
            .publish("weave.tasks.default.normal", body.to_string().into())
            .await
            .expect("publish");
        acks.push(ack);
    }
    for a in acks {
        a.await.expect("stored");
    }
    let t0 = Instant::now();
    let (mut samples, mut worker_s, mut last) = (Vec::new(), 0.0, 0.0);
    let mut drained_s = None;
    let mut back_to_min_s = None;
    while t0.elapsed() < Duration::from_secs(300) {
        let t = t0.elapsed().as_secs_f64();
        let n = c
            .pool_status("b")
            .await
            .map(|s| s.worker_count)
            .unwrap_or(0);
        samples.push((t, n));
        if drained_s.is_none() {
            worker_s += f64::from(n) * (t - last);
            if results(&js).await >= TASKS as u64 {
                drained_s = Some(t);
            }
        } else if n == min {
            back_to_min_s = Some(t);
            break;
        }
        last = t;
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    Run {
        name,
        drained_s: drained_s.expect("every task done within 300 s"),
        worker_s,
        back_to_min_s,
        samples,
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        println!("benchmark skipped: run `cargo bench --bench pools`");
        return;
    }
    let fixed = ["--no-auto-scale"];
    let runs = [
        run(
            "fixed 1",
            &[&["--min", "1", "--max", "1"][..], &fixed].concat(),
        )
        .await,
        run(
            "fixed 6",
            &[&["--min", "6", "--max", "6"][..], &fixed].concat(),
        )
        .await,
        run(
            "auto 1..6",
            &["--min", "1", "--max", "6", "--cooldown", "5"],
        )
        .await,
    ];
    println!("{TASKS} sleep 100 ms tasks, 4 slots per worker");
    println!("| pool | drained in | worker-seconds | back to min |");
    println!("| --- | ---: | ---: | ---: |");
    let mut csv = String::from("pool,t_s,workers\n");
    for r in &runs {
        let back = r
            .back_to_min_s
            .map(|b| format!("{b:.1} s"))
            .unwrap_or_else(|| "-".into());
        println!(
            "| {} | {:.1} s | {:.0} | {back} |",
            r.name, r.drained_s, r.worker_s
        );
        for (t, n) in &r.samples {
            let _ = writeln!(csv, "{},{t:.2},{n}", r.name);
        }
    }
    let out = concat!(env!("CARGO_MANIFEST_DIR"), "/target/pools-bench.csv");
    std::fs::write(out, csv).expect("write csv");
    println!("worker counts over time: {out}");
}
