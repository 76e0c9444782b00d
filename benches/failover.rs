//! Failover times, each repeated (BENCH_REPS, default 3) with min/median/max:
//! (a) `kill -9` of a node process → its discovery entry gone for a watcher;
//! (b) → its in-flight queue task finished elsewhere (handler time subtracted);
//! (c) → its shard resumed elsewhere (the assignment moved);
//! and `kill -9` of the leading coordinator → a new leader.
//! node_ttl 2 s, ack_wait 2 s, lease 2 s. `cargo bench --bench failover`.
#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use common::*;
use futures::StreamExt;
use jetweave::discovery::{Discovery, DiscoveryEvent, KvDiscovery};
use jetweave::protocol::{SubmitRequest, TaskEnvelope};
use jetweave::subjects::Subjects;
use serde_json::json;

fn stats(mut v: Vec<f64>) -> String {
    v.sort_by(|a, b| a.total_cmp(b));
    format!(
        "median {:.2} s (min {:.2}, max {:.2})",
        v[v.len() / 2],
        v[0],
        v[v.len() - 1]
    )
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        println!("benchmark skipped: run `cargo bench --bench failover`");
        return;
    }
    let reps: usize = std::env::var("BENCH_REPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let (mut gone, mut task, mut shard, mut leader) = (vec![], vec![], vec![], vec![]);
    for rep in 0..reps {
        let server = NatsServer::start();
        let _c = start_coordinator(&server, "c1").await;
        let api = api_client(&server).await;
        let d = KvDiscovery::open(
            server.client().await,
            &Subjects::new("weave").unwrap(),
            Duration::from_secs(2),
            1,
        )
        .await
        .unwrap();
        let mut victim = spawn_node_proc(&server, "victim").await;
        // An in-flight task and a shard on the victim.
        let id = api
            .submit(&SubmitRequest {
                envelope: TaskEnvelope::new("sleep", json!({"ms": 500})),
                ..Default::default()
            })
            .await
            .unwrap()
            .task_id;
        api.create_run(&json!({"run_id": format!("fo{rep}"), "dataset_id": "d", "total_items": 40, "shard_size": 40,
            "type": "count", "payload": {"item_ms": 100}})).await.unwrap();
        wait_for("work running on victim", Duration::from_secs(5), || async {
            let st = api.control("victim", "status", &json!({})).await.ok()?;
            (st["running_tasks"].as_array()?.len() == 2).then_some(())
        })
        .await;
        let _survivor = start_node(&server, node_config("survivor")).await;
        let mut watch = d.watch().await.unwrap();
        victim.kill9();
        let t0 = Instant::now();
        let run_id = format!("fo{rep}");
        let (mut g, mut t, mut s) = (None, None, None);
        let deadline = t0 + Duration::from_secs(15);
        while (g.is_none() || t.is_none() || s.is_none()) && Instant::now() < deadline {
            if g.is_none() {
                if let Ok(Some(DiscoveryEvent::Left { node_id, .. })) =
                    tokio::time::timeout(Duration::from_millis(10), watch.next()).await
                {
                    if node_id == "victim" {
                        g = Some(t0.elapsed().as_secs_f64());
                    }
                }
            }
            if t.is_none() {
                if let Ok(Some(r)) = api.result(&id).await {
                    if r.node_id.as_deref() == Some("survivor") {
                        t = Some(t0.elapsed().as_secs_f64() - r.duration_s);
                    }
                }
            }
            if s.is_none() {
                if let Ok(r) = api.get_run(&run_id).await {
                    if r["assignments"]["slice:0:40"] == "survivor" {
                        s = Some(t0.elapsed().as_secs_f64());
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        gone.push(g.expect("entry gone"));
        task.push(t.expect("task finished elsewhere"));
        shard.push(s.expect("shard moved"));

        // Leader failover with coordinator processes.
        let mut c1 = Proc::spawn(&[
            "--nats-url",
            &server.url(),
            "--prefix",
            "lf",
            "coordinator",
            "--id",
            "l1",
            "--lease-ttl",
            "2",
        ]);
        let lapi = jetweave::Client::new(server.client().await, "lf").unwrap();
        wait_for("l1 leads", Duration::from_secs(15), || async {
            (lapi.cluster_status().await.ok()?.leader.as_deref() == Some("l1")).then_some(())
        })
        .await;
        let _c2 = Proc::spawn(&[
            "--nats-url",
            &server.url(),
            "--prefix",
            "lf",
            "coordinator",
            "--id",
            "l2",
            "--lease-ttl",
            "2",
        ]);
        tokio::time::sleep(Duration::from_millis(1500)).await;
        c1.kill9();
        let t0 = Instant::now();
        wait_for("l2 leads", Duration::from_secs(10), || async {
            (lapi.cluster_status().await.ok()?.leader.as_deref() == Some("l2")).then_some(())
        })
        .await;
        leader.push(t0.elapsed().as_secs_f64());
        println!("rep {rep}: entry gone {:.2} s, task elsewhere {:.2} s, shard moved {:.2} s, new leader {:.2} s",
            gone[rep], task[rep], shard[rep], leader[rep]);
    }
    println!();
    println!(
        "(a) kill -9 → discovery entry gone (node_ttl 2 s, target ≤ 3 s):  {}",
        stats(gone)
    );
    println!("(b) kill -9 → in-flight task done elsewhere (ack_wait 2 s, target ≤ 3 s; handler time excluded): {}", stats(task));
    println!(
        "(c) kill -9 → shard resumed elsewhere (node_ttl 2 s, target ≤ 4 s): {}",
        stats(shard)
    );
    println!(
        "    kill -9 of the leader → new leader (lease 2 s, target ≤ 3 s):   {}",
        stats(leader)
    );
}
