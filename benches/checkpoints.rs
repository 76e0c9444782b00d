//! Checkpoint save+load of 1 KiB, 1 MiB and 8 MiB against a raw object
//! store put+get of the same bytes, on the same server in the same run.
//! `cargo bench --bench checkpoints` (BENCH_REPS, default 5).
#[path = "../tests/common/mod.rs"]
mod common;

use std::time::Instant;

use async_nats::jetstream::{self, object_store};
use common::*;
use jetweave::checkpoint::Checkpoints;
use jetweave::handler::TaskContext;
use jetweave::subjects::Subjects;
use tokio::io::AsyncReadExt;

fn median(mut v: Vec<f64>) -> (f64, f64, f64) {
    v.sort_by(|a, b| a.total_cmp(b));
    (v[0], v[v.len() / 2], v[v.len() - 1])
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        println!("benchmark skipped: run `cargo bench --bench checkpoints`");
        return;
    }
    let reps: usize = std::env::var("BENCH_REPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    let server = NatsServer::start();
    let client = server.client().await;
    let js = jetstream::new(client.clone());
    let raw = js
        .create_object_store(object_store::Config {
            bucket: "rawbench".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let cp = Checkpoints::open(client.clone(), &Subjects::new("weave").unwrap(), 3, 1)
        .await
        .unwrap();
    println!("checkpoint save+load vs raw object store put+get, {reps} repetitions, one nats-server, loopback");
    println!(
        "{:<8} {:>22} {:>22} {:>8}",
        "size", "jetweave ms (min/med/max)", "raw ms (min/med/max)", "ratio"
    );
    for (label, size) in [("1 KiB", 1024usize), ("1 MiB", 1 << 20), ("8 MiB", 8 << 20)] {
        let text: String = (0..size).map(|i| (b'a' + (i % 26) as u8) as char).collect();
        let bytes = text.clone().into_bytes();
        let (mut ours, mut theirs) = (vec![], vec![]);
        for r in 0..reps {
            let ctx = TaskContext::new(format!("bench:{label}:{r}").replace(' ', "_"), "count", 1);
            let t0 = Instant::now();
            cp.save(
                &ctx,
                serde_json::Value::String(text.clone()),
                Default::default(),
            )
            .await
            .unwrap();
            let back = cp.latest(&ctx.task_id).await.unwrap().unwrap();
            ours.push(t0.elapsed().as_secs_f64() * 1000.0);
            assert_eq!(back.payload.as_str().map(str::len), Some(size));

            let name = format!("raw-{label}-{r}");
            let t0 = Instant::now();
            let meta = object_store::ObjectMetadata {
                name: name.clone(),
                chunk_size: Some(512 * 1024),
                ..Default::default()
            };
            raw.put(meta, &mut bytes.as_slice()).await.unwrap();
            let mut obj = raw.get(&name).await.unwrap();
            let mut buf = Vec::new();
            obj.read_to_end(&mut buf).await.unwrap();
            theirs.push(t0.elapsed().as_secs_f64() * 1000.0);
            assert_eq!(buf.len(), size);
        }
        let (a0, a1, a2) = median(ours);
        let (b0, b1, b2) = median(theirs);
        println!(
            "{label:<8} {a0:>6.2}/{a1:>6.2}/{a2:>7.2} {b0:>8.2}/{b1:>6.2}/{b2:>7.2} {:>8.2}",
            a1 / b1
        );
    }
}
