//! Scale: 1 000 simulated nodes (in this process, each with its own
//! discovery entry refreshed every second and a heartbeat) against one
//! server and one coordinator: time until the coordinator sees all of
//! them, CPU of this process (simulator + coordinator) and of the server,
//! server RSS; and one real idle node's RSS (target ≤ 15 MiB).
//! `cargo bench --bench scale` (BENCH_NODES, default 1000;
//! BENCH_HEARTBEAT_S, the simulated nodes' heartbeat interval, default 1).
//! The nodes register at once, up to 512 writes in flight, as separate
//! processes starting together would; their refreshes then go one at a
//! time.
#[path = "../tests/common/mod.rs"]
mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use futures::StreamExt;
use jetweave::discovery::KvDiscovery;
use jetweave::protocol::{now_rfc3339, Health, NodeInfo, Role};
use jetweave::subjects::Subjects;

fn rss_mib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| {
            l.split_whitespace()
                .nth(1)
                .and_then(|v| v.parse::<f64>().ok())
        })
        .unwrap_or(0.0)
        / 1024.0
}

fn server_pid(port: u16) -> Option<u32> {
    for e in std::fs::read_dir("/proc").ok()?.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let cmd = std::fs::read_to_string(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        if cmd.contains("nats-server") && cmd.contains(&port.to_string()) {
            return Some(pid);
        }
    }
    None
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        println!("benchmark skipped: run `cargo bench --bench scale`");
        return;
    }
    let count: usize = std::env::var("BENCH_NODES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let server = NatsServer::start();
    let spid = server_pid(server.port).expect("server pid");
    let _c = start_coordinator(&server, "c1").await;
    let api = api_client(&server).await;
    let client = server.client().await;
    let subjects = Subjects::new("weave").unwrap();
    // BENCH_HEARTBEAT_S: the nodes' --heartbeat-interval (contract default 1).
    let every = Duration::from_secs_f64(
        std::env::var("BENCH_HEARTBEAT_S")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(1.0),
    );
    // --node-ttl: the contract's 5 s, or three intervals if longer.
    let ttl = (every * 3).max(Duration::from_secs(5));
    let d = KvDiscovery::open(client.clone(), &subjects, ttl, 1)
        .await
        .unwrap();
    let info = |i: usize| NodeInfo {
        node_id: format!("sim-{i:04}"),
        role: Role::Worker,
        hostname: "sim".into(),
        pid: i as u32,
        url: None,
        queues: vec!["default".into()],
        capabilities: vec![],
        max_concurrency: 8,
        health: Health::Healthy,
        active_tasks: 0,
        started_at: now_rfc3339(),
        last_heartbeat_at: now_rfc3339(),
        state: Default::default(),
        uptime_s: 0.0,
        available: true,
        metadata: Default::default(),
    };
    println!("scale: {count} simulated nodes, heartbeat + discovery refresh every {every:?} each, one server, one coordinator");
    let t0 = Instant::now();
    // When the first round of registrations has been acknowledged.
    let written = Arc::new(std::sync::OnceLock::<Duration>::new());
    let sim = {
        let d = d.clone();
        let client = client.clone();
        let written = written.clone();
        tokio::spawn(async move {
            loop {
                let round = Instant::now();
                // The nodes start at once, each writing on its own as
                // separate processes would (up to 512 writes in flight);
                // later refreshes go one after the other, spread over the
                // second like independent timers, so that the server reads
                // them one at a time, as it would from 5,000 connections
                // (pipelined writes would understate its steady-state CPU).
                let in_flight = if written.get().is_none() { 512 } else { 1 };
                futures::stream::iter(0..count)
                    .for_each_concurrent(in_flight, |i| {
                        let (d, client, subjects) = (&d, &client, &subjects);
                        let n = info(i);
                        async move {
                            let _ = client
                                .publish(
                                    subjects.heartbeat(&n.node_id),
                                    serde_json::to_vec(&n).unwrap().into(),
                                )
                                .await;
                            let _ = d.put_info(&n).await;
                        }
                    })
                    .await;
                let _ = written.set(t0.elapsed());
                tokio::time::sleep(every.saturating_sub(round.elapsed())).await;
            }
        })
    };
    wait_for(
        "coordinator sees every node",
        Duration::from_secs(120),
        || async {
            let st = api.cluster_status().await.ok()?;
            (st.total_nodes as usize >= count).then_some(())
        },
    )
    .await;
    let seen = t0.elapsed();
    // Steady state: 10 s of CPU.
    let (s0, m0) = (cpu_seconds(spid), cpu_seconds(std::process::id()));
    let w0 = Instant::now();
    tokio::time::sleep(Duration::from_secs(10)).await;
    let wall = w0.elapsed().as_secs_f64();
    let (s1, m1) = (cpu_seconds(spid), cpu_seconds(std::process::id()));
    let st = api.cluster_status().await.unwrap();
    println!(
        "coordinator saw all {count} nodes after {:.2} s (cluster.status total_nodes {}); the simulator's {count} registrations were all acknowledged after {:.2} s",
        seen.as_secs_f64(),
        st.total_nodes,
        written.get().map_or(f64::NAN, |w| w.as_secs_f64()),
    );
    println!("steady state over {wall:.1} s: nats-server CPU {:.0} %, simulator+coordinator process CPU {:.0} %", (s1 - s0) / wall * 100.0, (m1 - m0) / wall * 100.0);
    println!(
        "nats-server RSS {:.1} MiB, simulator+coordinator RSS {:.1} MiB",
        rss_mib(spid),
        rss_mib(std::process::id())
    );
    waiting_requests(&client, count, spid).await;
    sim.abort();

    // One real idle node.
    let node = Proc::spawn(&[
        "--nats-url",
        &server.url(),
        "node",
        "--node-id",
        "idle-real",
    ]);
    tokio::time::sleep(Duration::from_secs(5)).await;
    let c0 = cpu_seconds(node.pid() as u32);
    tokio::time::sleep(Duration::from_secs(5)).await;
    let c1 = cpu_seconds(node.pid() as u32);
    println!(
        "one real idle node: RSS {:.1} MiB (target ≤ 15 MiB), CPU {:.1} %",
        rss_mib(node.pid() as u32),
        (c1 - c0) / 5.0 * 100.0
    );
}

/// What idle nodes' waiting pull requests add: every simulated node keeps
/// one request waiting on each of the four priority consumers of
/// `default`, with an idle node's expiry and idle heartbeat
/// (worker/long_poll.rs), on top of the heartbeats and discovery
/// refreshes.
async fn waiting_requests(client: &async_nats::Client, count: usize, spid: u32) {
    use futures::StreamExt;
    let js = async_nats::jetstream::new(client.clone());
    let subjects = Subjects::new("weave").unwrap();
    let mut loops = Vec::new();
    for p in jetweave::protocol::Priority::ALL {
        let c =
            jetweave::store::task_consumer(&js, &subjects, "default", p, Duration::from_secs(5))
                .await
                .unwrap();
        for _ in 0..count {
            let c = c.clone();
            loops.push(tokio::spawn(async move {
                loop {
                    let batch = c
                        .batch()
                        .max_messages(1)
                        .expires(Duration::from_secs(30))
                        .heartbeat(Duration::from_secs(2))
                        .messages()
                        .await;
                    match batch {
                        Ok(mut b) => while b.next().await.is_some() {},
                        Err(_) => tokio::time::sleep(Duration::from_millis(500)).await,
                    }
                }
            }));
        }
    }
    tokio::time::sleep(Duration::from_secs(5)).await;
    let s0 = cpu_seconds(spid);
    let w0 = Instant::now();
    tokio::time::sleep(Duration::from_secs(10)).await;
    let wall = w0.elapsed().as_secs_f64();
    let s1 = cpu_seconds(spid);
    println!(
        "with {} waiting pull requests ({count} idle nodes x 4 priorities, expiry 30 s, idle heartbeat 2 s as an idle node's): nats-server CPU {:.0} %, RSS {:.1} MiB",
        count * 4,
        (s1 - s0) / wall * 100.0,
        rss_mib(spid)
    );
    loops.iter().for_each(|l| l.abort());
}
