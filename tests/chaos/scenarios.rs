//! Chaos scenarios (issue #13, docs/reliability.md): each starts real
//! `nats-server` and `jetweave` processes, applies faults while work runs,
//! and returns a [`Report`] — load, faults, tasks lost, second results,
//! longest stall, time — with the goals it missed. `tests/chaos.rs` runs the
//! short versions in the suite; `cargo bench --bench chaos` the long ones.
#![allow(dead_code)]

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream;
use futures::StreamExt;
use serde_json::{json, Value};

use crate::common::*;

/// How big a scenario is.
#[derive(Clone, Copy, Debug)]
pub struct Scale {
    /// Tasks submitted in the load scenarios.
    pub tasks: usize,
    /// Malformed messages in the hostile-input scenario.
    pub hostile: usize,
    /// Shards of the coordinator-failover run.
    pub shards: u64,
    /// Server-loss targets to try (of the four).
    pub targets: usize,
}

/// The CI size: each scenario in seconds.
pub const SHORT: Scale = Scale {
    tasks: 1500,
    hostile: 1000,
    shards: 16,
    targets: 1,
};

/// The issue's size.
pub const LONG: Scale = Scale {
    tasks: 10_000,
    hostile: 10_000,
    shards: 40,
    targets: 4,
};

/// What a scenario measured, and the goals it missed.
#[derive(Debug, Default)]
pub struct Report {
    pub name: String,
    pub load: String,
    pub faults: String,
    pub lost: usize,
    pub second: usize,
    pub stall: Option<Duration>,
    pub notes: Vec<String>,
    pub took: Duration,
    pub missed: Vec<String>,
}

impl Report {
    fn new(name: &str) -> Self {
        Report {
            name: name.into(),
            ..Default::default()
        }
    }

    /// Records a goal; a false one is missed.
    pub fn goal(&mut self, ok: bool, what: impl Into<String>) {
        if !ok {
            self.missed.push(what.into());
        }
    }

    pub fn note(&mut self, n: impl Into<String>) {
        self.notes.push(n.into());
    }

    pub fn passed(&self) -> bool {
        self.missed.is_empty()
    }

    /// The one summary line.
    pub fn line(&self) -> String {
        let verdict = if self.passed() {
            "ok".to_string()
        } else {
            format!("MISSED: {}", self.missed.join("; "))
        };
        format!(
            "{}: load {}; faults {}; lost {}; second results {}; longest stall {}; {}; took {:.1} s; {}",
            self.name,
            self.load,
            self.faults,
            self.lost,
            self.second,
            self.stall
                .map_or("-".into(), |d| format!("{:.2} s", d.as_secs_f64())),
            self.notes.join("; "),
            self.took.as_secs_f64(),
            verdict
        )
    }
}

/// Every terminal result published on `weave.results.>` as seen by a core
/// subscriber: how many per task, and when.
struct Tally {
    seen: Arc<Mutex<HashMap<String, Vec<String>>>>,
    first: Arc<Mutex<HashMap<String, Instant>>>,
    times: Arc<Mutex<Vec<Instant>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Tally {
    async fn start(client: &async_nats::Client) -> Self {
        let mut sub = client
            .subscribe("weave.results.>")
            .await
            .expect("subscribe");
        client.flush().await.expect("flush");
        let seen: Arc<Mutex<HashMap<String, Vec<String>>>> = Arc::default();
        let first: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
        let times: Arc<Mutex<Vec<Instant>>> = Arc::default();
        let (s, f, t) = (seen.clone(), first.clone(), times.clone());
        let task = tokio::spawn(async move {
            while let Some(m) = sub.next().await {
                let id = m.subject.trim_start_matches("weave.results.").to_string();
                let v: Value = serde_json::from_slice(&m.payload).unwrap_or(Value::Null);
                let status = v["status"].as_str().unwrap_or("?").to_string();
                f.lock()
                    .unwrap()
                    .entry(id.clone())
                    .or_insert_with(Instant::now);
                s.lock().unwrap().entry(id).or_default().push(status);
                t.lock().unwrap().push(Instant::now());
            }
        });
        Tally {
            seen,
            first,
            times,
            task,
        }
    }

    /// When the first result of `id` was seen.
    fn first_at(&self, id: &str) -> Option<Instant> {
        self.first.lock().unwrap().get(id).copied()
    }

    fn has(&self, id: &str) -> bool {
        self.seen.lock().unwrap().contains_key(id)
    }

    fn count(&self) -> usize {
        self.seen.lock().unwrap().len()
    }

    /// Tasks whose result was published more than once (the later ones
    /// were refused by the stream, but live subscribers saw them).
    fn seen_twice(&self, ids: &[String]) -> usize {
        let s = self.seen.lock().unwrap();
        ids.iter()
            .filter(|id| s.get(*id).is_some_and(|v| v.len() > 1))
            .count()
    }

    /// The longest time without a result between `from` and the last one.
    fn longest_gap(&self, from: Instant) -> Duration {
        let mut t: Vec<Instant> = self.times.lock().unwrap().clone();
        t.retain(|x| *x >= from);
        t.sort();
        let mut prev = from;
        let mut gap = Duration::ZERO;
        for x in t {
            gap = gap.max(x - prev);
            prev = x;
        }
        gap
    }
}

impl Drop for Tally {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Progress as the results stream sees it: its message count, sampled
/// every 100 ms (a result only counts once stored; a live publish that the
/// stream refused does not).
struct Stored {
    times: Arc<Mutex<Vec<Instant>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Stored {
    fn start(client: &async_nats::Client) -> Self {
        let js = jetstream::ContextBuilder::new()
            .timeout(Duration::from_millis(300))
            .build(client.clone());
        let times: Arc<Mutex<Vec<Instant>>> = Arc::default();
        let t = times.clone();
        let task = tokio::spawn(async move {
            let mut last = 0;
            loop {
                if let Ok(mut s) = js.get_stream("WEAVE_RESULTS").await {
                    if let Ok(info) = s.info().await {
                        if info.state.messages > last {
                            last = info.state.messages;
                            t.lock().unwrap().push(Instant::now());
                        }
                    }
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
        Stored { times, task }
    }

    /// The longest time without a newly stored result from `from` to the
    /// last one stored.
    fn longest_gap(&self, from: Instant) -> Duration {
        let t = self.times.lock().unwrap().clone();
        let mut prev = from;
        let mut gap = Duration::ZERO;
        for x in t.into_iter().filter(|x| *x >= from) {
            gap = gap.max(x - prev);
            prev = x;
        }
        gap
    }
}

impl Drop for Stored {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A chaos task: echo, or sleep 5–200 ms, on one of the four priorities.
fn mixed_task(i: usize, rng: &mut fastrand::Rng) -> (String, Value) {
    let prio = ["critical", "high", "normal", "low"][i % 4];
    let body = if i.is_multiple_of(2) {
        json!({"type": "echo", "payload": {"i": i}})
    } else {
        json!({"type": "sleep", "payload": {"ms": rng.u64(5..=200)}})
    };
    (format!("weave.tasks.default.{prio}"), body)
}

/// Publishes `n` tasks with ids `<prefix>-<i>`, each until the stream
/// acknowledges it (a failed publish is retried with the same
/// `Nats-Msg-Id`, so a retry after a lost ack is no second task).
async fn submit(client: &async_nats::Client, prefix: &str, n: usize) -> Vec<String> {
    let js = jetstream::new(client.clone());
    let mut rng = fastrand::Rng::with_seed(7);
    let tasks: Vec<(String, String, Value)> = (0..n)
        .map(|i| {
            let (subject, body) = mixed_task(i, &mut rng);
            (format!("{prefix}-{i}"), subject, body)
        })
        .collect();
    let ids: Vec<String> = tasks.iter().map(|t| t.0.clone()).collect();
    futures::stream::iter(tasks)
        .for_each_concurrent(64, |(id, subject, body)| {
            let js = js.clone();
            async move { publish_until_acked(&js, &subject, &id, &body).await }
        })
        .await;
    ids
}

async fn publish_until_acked(js: &jetstream::Context, subject: &str, id: &str, body: &Value) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let m = jetstream::message::PublishMessage::build()
            .payload(body.to_string().into())
            .message_id(id);
        let acked = match js.send_publish(subject.to_string(), m).await {
            Ok(ack) => ack.await.is_ok(),
            Err(_) => false,
        };
        if acked {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "submit of {id} never acknowledged"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The stored terminal result of each task that has one.
async fn stored_results(client: &async_nats::Client, ids: &[String]) -> HashMap<String, Value> {
    let js = jetstream::new(client.clone());
    let stream = loop {
        match js.get_stream("WEAVE_RESULTS").await {
            Ok(s) => break s,
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    };
    futures::stream::iter(ids.iter().cloned())
        .map(|id| {
            let stream = stream.clone();
            async move {
                for _ in 0..20 {
                    match stream
                        .direct_get_last_for_subject(format!("weave.results.{id}"))
                        .await
                    {
                        Ok(m) => {
                            let v = serde_json::from_slice(&m.payload).unwrap_or(Value::Null);
                            return Some((id, v));
                        }
                        Err(e) if e.to_string().contains("not found") => return None,
                        Err(_) => tokio::time::sleep(Duration::from_millis(250)).await,
                    }
                }
                None
            }
        })
        .buffer_unordered(64)
        .filter_map(|x| async { x })
        .collect()
        .await
}

/// Waits until every task has a result (seen live, or stored when the
/// live view stalls), or `limit` passes.
async fn await_results(
    client: &async_nats::Client,
    tally: &Tally,
    ids: &[String],
    limit: Duration,
    mut tick: impl FnMut(usize),
) {
    let deadline = Instant::now() + limit;
    let mut found: HashSet<String> = HashSet::new();
    let (mut last_count, mut last_change) = (0, Instant::now());
    while Instant::now() < deadline {
        let missing: Vec<String> = ids
            .iter()
            .filter(|id| !found.contains(*id) && !tally.has(id))
            .cloned()
            .collect();
        if missing.is_empty() {
            return;
        }
        let count = tally.count();
        tick(ids.len() - missing.len());
        if count != last_count {
            (last_count, last_change) = (count, Instant::now());
        } else if last_change.elapsed() > Duration::from_secs(3) {
            found.extend(stored_results(client, &missing).await.into_keys());
            last_change = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Counts lost tasks, stored second results and non-`completed` results.
async fn judge(client: &async_nats::Client, tally: &Tally, ids: &[String], r: &mut Report) {
    let results = stored_results(client, ids).await;
    r.lost = ids.len() - results.len();
    r.second = second_stored(client).await;
    let not_completed: Vec<String> = results
        .iter()
        .filter(|(_, v)| v["status"] != "completed")
        .map(|(id, v)| format!("{id}: {} {}", v["status"], v["error"]))
        .take(3)
        .collect();
    let lost_leases: u64 = results
        .values()
        .map(|v| v["lost_leases"].as_u64().unwrap_or(0))
        .sum();
    let retried = results
        .values()
        .filter(|v| v["attempts"].as_u64().unwrap_or(0) > 1)
        .count();
    r.note(format!(
        "{lost_leases} lost leases, {retried} tasks with >1 attempt, {} results seen twice live",
        tally.seen_twice(ids)
    ));
    r.goal(r.lost == 0, format!("{} tasks without a result", r.lost));
    r.goal(r.second == 0, format!("{} second results stored", r.second));
    r.goal(
        not_completed.is_empty(),
        format!("not all completed: {not_completed:?}"),
    );
}

/// Results the results stream replaced (a second result for one task):
/// it keeps one message per subject, so any overwrite shows as a gap.
async fn second_stored(client: &async_nats::Client) -> usize {
    let js = jetstream::new(client.clone());
    let Ok(mut s) = js.get_stream("WEAVE_RESULTS").await else {
        return 0;
    };
    let Ok(info) = s.info().await else { return 0 };
    let st = &info.state;
    if st.messages == 0 {
        return 0;
    }
    (st.last_sequence - st.first_sequence + 1 - st.messages) as usize
}

const NODE_FLAGS: &[&str] = &["--concurrency", "4"];

/// Node churn: three nodes, one SIGKILLed every ~2 s and restarted with the
/// same id, under mixed echo / sleep tasks on all four priorities.
pub async fn node_churn(scale: Scale) -> Report {
    let mut r = Report::new("node churn");
    let t0 = Instant::now();
    let server = NatsServer::start();
    let client = server.client().await;
    let ids_of_nodes = ["c1", "c2", "c3"];
    let mut nodes = Vec::new();
    for id in ids_of_nodes {
        nodes.push(spawn_node_proc_with(&server, id, NODE_FLAGS).await);
    }
    let tally = Tally::start(&client).await;
    let stored = Stored::start(&client);
    let ids = submit(&client, "churn", scale.tasks).await;
    let start = Instant::now();
    let mut kills = 0;
    let mut next_kill = Instant::now() + Duration::from_secs(2);
    let limit = Duration::from_secs(30 + scale.tasks as u64 / 50);
    let deadline = Instant::now() + limit;
    while tally.count() < ids.len() && Instant::now() < deadline {
        if Instant::now() >= next_kill {
            let k = kills % nodes.len();
            nodes[k].kill9();
            nodes[k] = spawn_node_proc_with(&server, ids_of_nodes[k], NODE_FLAGS).await;
            kills += 1;
            // 1.5-2.5 s apart: a killer that ticks exactly every ack_wait
            // (2 s here) phase-locks with the redeliveries, which go to
            // the oldest waiting pull request, i.e. to the node killed next:
            // one task then dies with every holder until its deliveries
            // run out. Real failures do not keep time with ack_wait.
            next_kill += Duration::from_millis(1500 + fastrand::u64(0..1000));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    await_results(&client, &tally, &ids, Duration::from_secs(20), |_| {}).await;
    r.load = format!(
        "{} tasks (echo, sleep 5-200 ms, 4 priorities), 3 nodes x 4 slots",
        ids.len()
    );
    r.faults = format!("{kills} node kills (-9, every 1.5-2.5 s, restarted with the same id)");
    r.stall = Some(stored.longest_gap(start));
    judge(&client, &tally, &ids, &mut r).await;
    r.goal(kills >= 2, format!("only {kills} kills happened"));
    r.took = t0.elapsed();
    r
}

fn coordinator_proc(url: &str, id: &str) -> Proc {
    Proc::spawn(&[
        "--nats-url",
        url,
        "coordinator",
        "--id",
        id,
        "--lease-ttl",
        "2",
    ])
}

/// A `count` run of `shards` shards of `items` items at `item_ms` each.
fn run_spec(run_id: &str, shards: u64, items: u64, item_ms: u64) -> Value {
    json!({"run_id": run_id, "dataset_id": "chaos", "iteration": 0,
        "total_items": shards * items, "shard_size": items, "strategy": "by_slice",
        "type": "count", "payload": {"item_ms": item_ms}})
}

/// Checks a finished run: completed, every shard's stored result
/// `completed` and exactly one `shard.completed` event per shard.
async fn judge_run(client: &async_nats::Client, run: &Value, r: &mut Report) {
    let run_id = run["run_id"].as_str().unwrap_or_default().to_string();
    r.goal(
        run["status"] == "completed",
        format!("run ended {}", run["status"]),
    );
    let keys: Vec<String> = run["assignments"]
        .as_object()
        .map(|a| a.keys().cloned().collect())
        .unwrap_or_default();
    let ids: Vec<String> = keys.iter().map(|k| format!("{run_id}:0:{k}")).collect();
    let results = stored_results(client, &ids).await;
    r.lost = ids.len() - results.len();
    r.second = second_stored(client).await;
    let bad = results
        .values()
        .filter(|v| v["status"] != "completed")
        .count();
    r.goal(r.lost == 0, format!("{} shards without a result", r.lost));
    r.goal(bad == 0, format!("{bad} shards not completed"));
    let mut done: HashMap<String, usize> = HashMap::new();
    for e in audit_events(client, "shard.completed").await {
        if e["run_id"] == run_id.as_str() {
            let key = e["details"]["shard_key"]
                .as_str()
                .unwrap_or("?")
                .to_string();
            *done.entry(key).or_default() += 1;
        }
    }
    let twice = done.values().filter(|n| **n > 1).count();
    r.goal(
        done.len() == keys.len() && twice == 0,
        format!(
            "shard.completed events: {} shards, {twice} twice",
            done.len()
        ),
    );
    r.goal(r.second == 0, format!("{} second results stored", r.second));
}

/// Pause: a node holding shards is SIGSTOPped past its TTL (5 s) and
/// continued; the run completes, every shard once.
pub async fn pause(_scale: Scale) -> Report {
    let mut r = Report::new("pause");
    let t0 = Instant::now();
    let server = NatsServer::start();
    let client = server.client().await;
    let _c = start_coordinator(&server, "c1").await;
    let api = api_client(&server).await;
    let a = spawn_node_proc_with(&server, "pa", &["--concurrency", "2"]).await;
    let _b = spawn_node_proc_with(&server, "pb", &["--concurrency", "2"]).await;
    api.create_run(&run_spec("pz", 8, 5, 200))
        .await
        .expect("run");
    wait_for("pa holds shards", Duration::from_secs(10), || async {
        let run = api.get_run("pz").await.ok()?;
        let on_a = run["assignments"]
            .as_object()?
            .values()
            .filter(|v| *v == "pa")
            .count();
        (on_a >= 2).then_some(())
    })
    .await;
    a.signal(libc::SIGSTOP);
    let paused = Instant::now();
    tokio::time::sleep(Duration::from_secs(5)).await;
    a.signal(libc::SIGCONT);
    let run = api
        .wait_run("pz", Duration::from_secs(60), |_, _| {})
        .await
        .unwrap_or_else(|e| json!({"run_id": "pz", "status": format!("{e}")}));
    r.load = "a run of 8 shards x 1 s on 2 nodes x 2 slots".into();
    r.faults = "SIGSTOP of a node holding shards for 5 s (TTL 2 s), then SIGCONT".into();
    r.note(format!(
        "run done {:.1} s after the pause began",
        paused.elapsed().as_secs_f64()
    ));
    judge_run(&client, &run, &mut r).await;
    r.took = t0.elapsed();
    r
}

/// Coordinator leader killed mid-run: two coordinator processes, the
/// leader SIGKILLed when a quarter of the shards are done.
pub async fn leader_kill(scale: Scale) -> Report {
    let mut r = Report::new("coordinator leader killed");
    let t0 = Instant::now();
    let server = NatsServer::start();
    let client = server.client().await;
    let api = api_client(&server).await;
    let mut coords = [
        coordinator_proc(&server.url(), "k1"),
        coordinator_proc(&server.url(), "k2"),
    ];
    let leader = wait_for("a leader", Duration::from_secs(15), || async {
        api.cluster_status().await.ok()?.leader
    })
    .await;
    let _n1 = spawn_node_proc_with(&server, "kn1", NODE_FLAGS).await;
    let _n2 = spawn_node_proc_with(&server, "kn2", NODE_FLAGS).await;
    let shards = scale.shards;
    api.create_run(&run_spec("kz", shards, 4, 300))
        .await
        .expect("run");
    wait_for("a quarter done", Duration::from_secs(30), || async {
        let run = api.get_run("kz").await.ok()?;
        (run["completed_shards"].as_u64()? >= shards / 4).then_some(())
    })
    .await;
    let k = if leader == "k1" { 0 } else { 1 };
    coords[k].kill9();
    let killed = Instant::now();
    // Short requests: one that reaches the killed leader (its interest
    // lingers a moment on a cluster) must not wait the client's 10 s.
    let poll = api.clone().with_timeout(Duration::from_millis(500));
    let took = wait_for("a new leader", Duration::from_secs(15), || async {
        let l = poll.cluster_status().await.ok()?.leader?;
        (l != leader).then(|| killed.elapsed())
    })
    .await;
    let run = api
        .wait_run("kz", Duration::from_secs(60), |_, _| {})
        .await
        .unwrap_or_else(|e| json!({"run_id": "kz", "status": format!("{e}")}));
    r.load = format!("a run of {shards} shards x 1.2 s on 2 nodes x 4 slots, 2 coordinators");
    r.faults = format!("kill -9 of the leader ({leader}) at a quarter of the shards");
    r.note(format!(
        "new leader after {:.2} s (lease 2 s)",
        took.as_secs_f64()
    ));
    r.goal(took < Duration::from_secs(5), "takeover within 5 s");
    judge_run(&client, &run, &mut r).await;
    r.took = t0.elapsed();
    r
}

/// The ids in a node's `running_tasks`, if it answers.
async fn running_on(api: &jetweave::Client, node: &str) -> Option<Vec<String>> {
    let st = api.control(node, "status", &json!({})).await.ok()?;
    Some(
        st["running_tasks"]
            .as_array()?
            .iter()
            .filter_map(|v| v.as_str().map(str::to_string))
            .collect(),
    )
}

/// Partition: a node reaches NATS through a proxy that holds every byte
/// for 10 s while it runs tasks. Its tasks finish elsewhere within
/// `ack_wait` + 1 s (+ the task), its late results are not stored twice,
/// it runs none of them after the link returns, and it serves again
/// without a restart.
pub async fn partition(_scale: Scale) -> Report {
    let mut r = Report::new("partition");
    let t0 = Instant::now();
    let mon = free_port();
    let server = NatsServer::start_with(&["-m", &mon.to_string()]);
    let client = server.client().await;
    let _c = start_coordinator(&server, "c1").await;
    let api = api_client(&server).await;
    let proxy = Proxy::start(server.port).await;
    let mut cut = spawn_node_at(&proxy.url(), "cut", NODE_FLAGS).await;
    let _other = spawn_node_proc_with(&server, "other", NODE_FLAGS).await;
    let tally = Tally::start(&client).await;
    let stored = Stored::start(&client);
    let ids: Vec<String> = (0..8).map(|i| format!("part-{i}")).collect();
    let js = jetstream::new(client.clone());
    for id in &ids {
        let body = json!({"type": "sleep", "payload": {"ms": 1500}});
        publish_until_acked(&js, "weave.tasks.default.normal", id, &body).await;
    }
    let held = wait_for(
        "tasks running on the cut node",
        Duration::from_secs(10),
        || async {
            let v = running_on(&api, "cut").await?;
            (v.len() >= 2).then_some(v)
        },
    )
    .await;
    proxy.pause();
    let cut_at = Instant::now();
    tokio::time::sleep(Duration::from_secs(10)).await;
    proxy.resume();
    let resumed = Instant::now();
    // Right after the link returns it must not be running the moved tasks.
    let after = match tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            if let Some(v) = running_on(&api, "cut").await {
                return v;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    {
        Ok(v) => v,
        Err(_) => {
            let out = std::process::Command::new("python3")
                .args(["-c", "import urllib.request,sys;print(urllib.request.urlopen(sys.argv[1]).read().decode())"])
                .arg(format!("http://127.0.0.1:{mon}/connz?subs=detail"))
                .output()
                .expect("connz");
            std::fs::write("/tmp/connz.json", out.stdout).ok();
            let alive = cut.child.try_wait();
            panic!(
                "the cut node does not answer: exit {alive:?}, proxy accepted {}",
                proxy.accepted()
            );
        }
    };
    let answered = resumed.elapsed();
    await_results(&client, &tally, &ids, Duration::from_secs(30), |_| {}).await;
    let slowest = held
        .iter()
        .filter_map(|id| {
            tally
                .first_at(id)
                .map(|t| t.saturating_duration_since(cut_at))
        })
        .max()
        .unwrap_or(Duration::MAX);
    r.load = "8 sleep 1.5 s tasks on 2 nodes x 4 slots".into();
    r.faults = format!("the link of a node running {} tasks held 10 s", held.len());
    r.stall = Some(stored.longest_gap(cut_at));
    let bound = Duration::from_millis(2000 + 1000 + 1500);
    r.note(format!(
        "its tasks done elsewhere {:.2} s after the cut (bound {:.1} s); it answered {:.2} s after the link returned",
        slowest.as_secs_f64(),
        bound.as_secs_f64(),
        answered.as_secs_f64()
    ));
    r.goal(
        slowest <= bound,
        "its tasks finished elsewhere within ack_wait + 1 s",
    );
    let twice: Vec<&String> = after.iter().filter(|id| held.contains(*id)).collect();
    r.goal(
        twice.is_empty(),
        format!("still running moved tasks after the cut: {twice:?}"),
    );
    judge(&client, &tally, &ids, &mut r).await;
    let results = stored_results(&client, &held).await;
    let by_cut = results.values().filter(|v| v["node_id"] == "cut").count();
    r.goal(
        by_cut == 0,
        format!("{by_cut} moved tasks stored as done by the cut node"),
    );
    // It serves again: with the other node drained, new work runs on it.
    api.control("other", "drain", &json!({}))
        .await
        .expect("drain other");
    let more: Vec<String> = (0..4).map(|i| format!("part-after-{i}")).collect();
    for id in &more {
        publish_until_acked(
            &js,
            "weave.tasks.default.normal",
            id,
            &json!({"type": "echo"}),
        )
        .await;
    }
    await_results(&client, &tally, &more, Duration::from_secs(15), |_| {}).await;
    let served = stored_results(&client, &more).await;
    let on_cut = served.values().filter(|v| v["node_id"] == "cut").count();
    r.goal(
        on_cut == more.len(),
        format!("after the link returned it ran {on_cut} of 4 new tasks"),
    );
    r.took = t0.elapsed();
    r
}

/// The replica counts of `streams`.
async fn replicas_of(client: &async_nats::Client, streams: &[&str]) -> Vec<usize> {
    let js = jetstream::new(client.clone());
    let mut out = Vec::new();
    for name in streams {
        let n = match js.get_stream(*name).await {
            Ok(mut s) => s.info().await.map(|i| i.config.num_replicas).unwrap_or(0),
            Err(_) => 0,
        };
        out.push(n);
    }
    out
}

/// A stream, or a consumer (`stream`, `consumer`), with a Raft leader.
type Group = (String, Option<String>);

/// The streams and durable consumers whose leader is `server`.
async fn groups_led_by(client: &async_nats::Client, server: &str) -> Vec<Group> {
    let js = jetstream::new(client.clone());
    let names: Vec<String> = js
        .stream_names()
        .filter_map(|n| async { n.ok() })
        .collect()
        .await;
    let mut led = Vec::new();
    for name in names {
        let g = (name.clone(), None);
        if group_leader(client, &g).await.as_deref() == Some(server) {
            led.push(g);
        }
        let Ok(stream) = js.get_stream(&name).await else {
            continue;
        };
        let consumers: Vec<String> = stream
            .consumer_names()
            .filter_map(|n| async { n.ok() })
            .collect()
            .await;
        for c in consumers {
            let g = (name.clone(), Some(c));
            if group_leader(client, &g).await.as_deref() == Some(server) {
                led.push(g);
            }
        }
    }
    led
}

/// The current leader of a stream or consumer (short timeout).
async fn group_leader(client: &async_nats::Client, g: &Group) -> Option<String> {
    let js = jetstream::ContextBuilder::new()
        .timeout(Duration::from_millis(300))
        .build(client.clone());
    let stream = js.get_stream(&g.0).await.ok()?;
    match &g.1 {
        None => stream.cached_info().cluster.as_ref()?.leader.clone(),
        Some(c) => {
            let mut consumer: jetstream::consumer::PullConsumer =
                stream.get_consumer(c).await.ok()?;
            consumer.info().await.ok()?.cluster.as_ref()?.leader.clone()
        }
    }
}

/// The server leading `stream`, by name.
async fn leader_of(client: &async_nats::Client, stream: &str) -> Option<String> {
    // A short timeout: while a stream has no leader its info does not
    // answer, and the poll must not hide the election behind a long wait.
    let js = jetstream::ContextBuilder::new()
        .timeout(Duration::from_millis(300))
        .build(client.clone());
    let mut s = js.get_stream(stream).await.ok()?;
    s.info().await.ok()?.cluster.as_ref()?.leader.clone()
}

/// Server loss: a 3-server cluster (R3 streams), a coordinator and two
/// nodes connected to all three; the server leading `target` (a stream
/// name, or "random") is SIGKILLed when 40 % of the results are in and
/// restarted 10 s later. Then a run completes and a cancel stops its task.
pub async fn server_loss(scale: Scale, target: &str) -> Report {
    let mut r = Report::new(&format!("server loss ({target})"));
    let t0 = Instant::now();
    let mut cluster = NatsCluster::start(3).await;
    let client = cluster.client().await;
    let mut cfg = jetweave::CoordinatorConfig::new();
    cfg.id = "c1".into();
    cfg.lease_ttl = Duration::from_secs(2);
    cfg.node_ttl = Duration::from_secs(2);
    // Replicas as detected from the cluster (the goal below checks R3).
    let shutdown = jetweave::Shutdown::new();
    let _coord = jetweave::Coordinator::start(cluster.client().await, cfg, shutdown.clone())
        .await
        .expect("coordinator");
    let api = jetweave::Client::new(cluster.client().await, "weave").expect("client");
    let urls = cluster.urls();
    let _n1 = spawn_node_at(&urls, "sl1", NODE_FLAGS).await;
    let _n2 = spawn_node_at(&urls, "sl2", NODE_FLAGS).await;
    let replicas = replicas_of(
        &client,
        &["WEAVE_TASKS", "WEAVE_RESULTS", "KV_weave-attempts"],
    )
    .await;
    r.goal(
        replicas.iter().all(|x| *x == 3),
        format!("replicas {replicas:?}"),
    );
    let tally = Tally::start(&client).await;
    let stored = Stored::start(&client);
    let n = scale.tasks.min(5000);
    let submitter = {
        let c = client.clone();
        tokio::spawn(async move { submit(&c, "loss", n).await })
    };
    wait_for("40 % of the results", Duration::from_secs(120), || async {
        (tally.count() * 10 >= n * 4).then_some(())
    })
    .await;
    let victim = match target {
        "random" => format!("s{}", fastrand::usize(1..=3)),
        stream => leader_of(&client, stream).await.expect("a stream leader"),
    };
    let i = cluster.index_of(&victim).expect("victim server");
    let led = groups_led_by(&client, &victim).await;
    cluster.kill(i);
    let killed = Instant::now();
    // Asked of a survivor, so that the figure is NATS's and not our
    // client's reconnect.
    let survivor = format!("nats://127.0.0.1:{}", cluster.servers[(i + 1) % 3].port);
    let observer = async_nats::connect(survivor)
        .await
        .expect("connect to a survivor");
    // NATS's own election: until every stream and consumer the victim led
    // has another leader.
    let election = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            let mut pending = 0;
            for g in &led {
                if group_leader(&observer, g).await.is_none_or(|l| l == victim) {
                    pending += 1;
                }
            }
            if pending == 0 {
                return killed.elapsed();
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    })
    .await;
    r.goal(
        election.is_ok(),
        format!("no new leaders for {led:?} within 30 s"),
    );
    let election = election.unwrap_or(Duration::from_secs(30));
    tokio::time::sleep(Duration::from_secs(10).saturating_sub(killed.elapsed())).await;
    cluster.restart(i);
    let ids = submitter.await.expect("submitter");
    await_results(&client, &tally, &ids, Duration::from_secs(120), |_| {}).await;
    let stall = stored.longest_gap(killed);
    r.load = format!("{n} tasks on 2 nodes x 4 slots, R3 streams on 3 servers");
    r.faults = format!(
        "kill -9 of {victim} (target {target}; it led {} streams and consumers) at 40 %, restarted after 10 s",
        led.len()
    );
    r.stall = Some(stall);
    r.note(format!(
        "NATS elections of what it led {:.2} s",
        election.as_secs_f64()
    ));
    r.goal(
        stall <= election + Duration::from_secs(5),
        format!("stall {:.1} s > election + 5 s", stall.as_secs_f64()),
    );
    judge(&client, &tally, &ids, &mut r).await;
    after_the_storm(&api, &mut r).await;
    r.took = t0.elapsed();
    r
}

/// After a fault: a new run completes and a cancel stops a running task.
async fn after_the_storm(api: &jetweave::Client, r: &mut Report) {
    let run_ok = match api.create_run(&run_spec("after", 4, 2, 50)).await {
        Ok(_) => api
            .wait_run("after", Duration::from_secs(30), |_, _| {})
            .await
            .is_ok_and(|run| run["status"] == "completed"),
        Err(_) => false,
    };
    r.goal(run_ok, "a run afterwards completes");
    let sub = jetweave::protocol::SubmitRequest {
        envelope: jetweave::protocol::TaskEnvelope::new("sleep", json!({"ms": 30000})),
        ..Default::default()
    };
    let cancelled = async {
        let id = api.submit(&sub).await.ok()?.task_id;
        wait_for("the long task running", Duration::from_secs(15), || async {
            (api.get(&id).await.ok()?.status == jetweave::protocol::TaskStatus::Running)
                .then_some(())
        })
        .await;
        api.cancel(&id).await.ok()?;
        let res = api.wait(&id, Duration::from_secs(10)).await.ok()?;
        Some(res.status == jetweave::protocol::TaskStatus::Cancelled)
    }
    .await;
    r.goal(
        cancelled == Some(true),
        "a cancel afterwards stops its task",
    );
}

/// Bodies no request subject accepts (never empty or `{}`, which verbs
/// without fields take).
fn bad_bodies(rng: &mut fastrand::Rng) -> Vec<Vec<u8>> {
    let mut v: Vec<Vec<u8>> = vec![
        b"{not json".to_vec(),
        b"[1,2,3]".to_vec(),
        b"null".to_vec(),
        b"\"a string\"".to_vec(),
        b"12345".to_vec(),
        br#"{"deadline_s": "soon"}"#.to_vec(),
        br#"{"task_id": 5}"#.to_vec(),
        br#"{"type": 5, "payload": []}"#.to_vec(),
        br#"{"run_id": {"$gt": ""}}"#.to_vec(),
        format!(r#"{{"task_id": "{}"}}"#, "x".repeat(300)).into_bytes(),
        format!(r#"{{"unknown": "{}"}}"#, "y".repeat(512 * 1024)).into_bytes(),
        format!("{}{}", "[".repeat(5000), "]".repeat(5000)).into_bytes(),
        format!("{}1{}", r#"{"a":"#.repeat(2000), "}".repeat(2000)).into_bytes(),
        vec![0xff, 0xfe, 0x00, 0x7b],
    ];
    for _ in 0..8 {
        let n = rng.usize(1..300);
        v.push((0..n).map(|_| rng.u8(..)).collect());
    }
    v
}

/// Hostile input: malformed messages over every request subject, bad task
/// publishes, garbage discovery entries and bad HTTP requests to every
/// sidecar route. Everything is answered, nothing exits, no ghost node is
/// listed, and afterwards a normal task completes and the node answers.
pub async fn hostile(scale: Scale) -> Report {
    let mut r = Report::new("hostile input");
    let t0 = Instant::now();
    let server = NatsServer::start();
    let client = server.client().await;
    let mut coord = coordinator_proc(&server.url(), "hc");
    let mut node = spawn_node_proc(&server, "h1").await;
    let api = api_client(&server).await;
    wait_for("the api", Duration::from_secs(15), || async {
        api.cluster_status().await.ok()
    })
    .await;
    let (mut sidecar, base) = sidecar_proc(&server.url()).await;
    let mut rng = fastrand::Rng::with_seed(13);
    let bodies = bad_bodies(&mut rng);
    let subjects = [
        "weave.ctl.h1.ping",
        "weave.ctl.h1.status",
        "weave.ctl.h1.drain",
        "weave.ctl.h1.resume",
        "weave.ctl.h1.shutdown",
        "weave.ctl.h1.process.p.start",
        "weave.ctl.h1.process.p.stop",
        "weave.ctl.h1.no_such_verb",
        "weave.ctl.all.ping",
        "weave.ctl.all.drain",
        "weave.event.h1.p",
        "weave.api.tasks.submit",
        "weave.api.tasks.get",
        "weave.api.tasks.cancel",
        "weave.api.nodes.list",
        "weave.api.cluster.status",
        "weave.api.runs.create",
        "weave.api.runs.get",
    ];
    let (mut sent, mut answered, mut obeyed) = (0usize, 0usize, Vec::new());
    let requests = scale.hostile * 8 / 10;
    for k in 0..requests {
        let subject = subjects[k % subjects.len()];
        let body = &bodies[(k / subjects.len()) % bodies.len()];
        sent += 1;
        let reply = tokio::time::timeout(
            Duration::from_secs(5),
            client.request(subject.to_string(), body.clone().into()),
        )
        .await;
        if let Ok(Ok(m)) = reply {
            answered += 1;
            let v: Value = serde_json::from_slice(&m.payload).unwrap_or(Value::Null);
            if v["ok"] != false && obeyed.len() < 5 {
                obeyed.push(format!(
                    "{subject} <- {}: {v}",
                    String::from_utf8_lossy(&body[..body.len().min(40)])
                ));
            }
        }
    }
    // Publishes on an unknown priority are not stored; while a node idles
    // on the queue its doorbell hears them, so the ack times out instead
    // of failing fast: a short timeout keeps this quick.
    let js = jetstream::ContextBuilder::new()
        .timeout(Duration::from_millis(100))
        .build(client.clone());
    let publishes = scale.hostile / 10;
    let task_subjects = [
        "weave.tasks.default.normal",
        "weave.tasks.default.urgent",
        "weave.tasks.default.high",
    ];
    let (mut refused, mut accepted) = (0, 0);
    for k in 0..publishes {
        let subject = task_subjects[k % task_subjects.len()];
        let body = bodies[k % bodies.len()].clone();
        match js.publish(subject.to_string(), body.into()).await {
            Ok(ack) => match ack.await {
                Ok(_) => accepted += 1,
                Err(_) => refused += 1,
            },
            Err(_) => refused += 1,
        }
    }
    let kv = js.get_key_value("weave-nodes").await.expect("nodes bucket");
    let garbage = scale.hostile / 10;
    for k in 0..garbage {
        let value = match k % 3 {
            0 => bodies[k % bodies.len()].clone(),
            1 => json!({"node_id": format!("someone-else-{k}"), "status": "healthy"})
                .to_string()
                .into_bytes(),
            _ => json!({"node_id": format!("ghost-{k}"), "capacity": "lots"})
                .to_string()
                .into_bytes(),
        };
        let _ = kv.put(format!("ghost-{k}"), value.into()).await;
    }
    let (http_sent, http_bad) = hostile_http(&base, &bodies).await;
    r.load = format!(
        "{sent} malformed requests on {} subjects, {publishes} bad task publishes, {garbage} garbage KV entries, {http_sent} bad HTTP requests",
        subjects.len()
    );
    r.faults = "hostile input".into();
    r.note(format!("{answered} of {sent} requests answered"));
    r.note(format!("task publishes: {accepted} stored (dead-lettered by the node), {refused} refused by the stream"));
    r.goal(
        answered == sent,
        format!("{} requests unanswered", sent - answered),
    );
    r.goal(
        obeyed.is_empty(),
        format!("malformed requests obeyed: {obeyed:?}"),
    );
    r.goal(
        http_bad.is_empty(),
        format!("HTTP answers not 4xx: {http_bad:?}"),
    );
    for (name, p) in [
        ("coordinator", &mut coord.child),
        ("node", &mut node.child),
        ("sidecar", &mut sidecar.child),
    ] {
        let exited = p.try_wait().ok().flatten();
        r.goal(exited.is_none(), format!("the {name} exited: {exited:?}"));
    }
    let nodes: Vec<String> = api
        .nodes()
        .await
        .map(|v| v.into_iter().map(|n| n.node_id).collect())
        .unwrap_or_default();
    r.goal(nodes == ["h1"], format!("nodes listed: {nodes:?}"));
    let st = api.control("h1", "status", &json!({})).await;
    r.goal(
        st.as_ref().is_ok_and(|v| v["health"] == "healthy"),
        format!("h1 status afterwards: {st:?}"),
    );
    let sub = jetweave::protocol::SubmitRequest {
        envelope: jetweave::protocol::TaskEnvelope::new("echo", json!({"after": "the storm"})),
        ..Default::default()
    };
    let done = match api.submit(&sub).await {
        Ok(s) => api.wait(&s.task_id, Duration::from_secs(20)).await.ok(),
        Err(_) => None,
    };
    r.goal(
        done.is_some_and(|d| d.status == jetweave::protocol::TaskStatus::Completed),
        "a normal task afterwards completes",
    );
    r.took = t0.elapsed();
    r
}

/// A `jetweave sidecar` process with `--node h1`, and its base URL.
async fn sidecar_proc(url: &str) -> (Proc, String) {
    let listen = format!("127.0.0.1:{}", free_port());
    let p = Proc::spawn(&[
        "--nats-url",
        url,
        "sidecar",
        "--listen",
        &listen,
        "--node",
        "h1",
    ]);
    let base = format!("http://{listen}");
    let http = reqwest::Client::new();
    wait_for("sidecar up", Duration::from_secs(15), || async {
        http.get(format!("{base}/health"))
            .send()
            .await
            .ok()
            .map(|_| ())
    })
    .await;
    (p, base)
}

/// Bad requests to every sidecar route; returns how many were sent and
/// the ones not answered with a 4xx.
async fn hostile_http(base: &str, bodies: &[Vec<u8>]) -> (usize, Vec<String>) {
    let routes: &[(&str, &str)] = &[
        ("GET", "/health?x=%ff"),
        ("GET", "/status"),
        ("GET", "/processes/nope/status"),
        ("POST", "/processes/p/start"),
        ("POST", "/processes/p/explode"),
        ("POST", "/processes/p/event"),
        ("POST", "/agents/register"),
        ("POST", "/agents/discover"),
        ("POST", "/agents/nobody/heartbeat"),
        ("POST", "/tasks/submit"),
        ("GET", "/tasks/%ff%fe"),
        ("GET", "/tasks/nope/result?wait_s=abc"),
        ("POST", "/tasks/nope/cancel"),
        ("POST", "/nodes/h1/drain"),
        ("POST", "/nodes/h1/resume"),
        ("GET", "/nodes/..%2f..%2fetc/health"),
        ("GET", "/nodes/ghost/status"),
        ("POST", "/runs"),
        ("GET", "/runs/..%2fx"),
        ("GET", "/nope"),
    ];
    let http = reqwest::Client::new();
    let (mut sent, mut bad) = (0, Vec::new());
    for (method, path) in routes {
        for body in bodies.iter().take(6) {
            sent += 1;
            let url = format!("{base}{path}");
            let req = if *method == "GET" {
                http.get(&url)
            } else {
                http.post(&url)
            };
            let res = req
                .header("content-type", "application/json")
                .body(body.clone())
                .timeout(Duration::from_secs(10))
                .send()
                .await;
            match res {
                Ok(res) if res.status().is_client_error() => {}
                // GETs that ignore their body and name nothing wrong.
                Ok(res) if *method == "GET" && res.status().is_success() => {}
                Ok(res) => bad.push(format!("{method} {path}: {}", res.status())),
                Err(e) => bad.push(format!("{method} {path}: {e}")),
            }
        }
    }
    (sent, bad)
}

/// A server started with `conf` (a config file written to a temp dir).
fn server_with_config(conf: &str) -> (NatsServer, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("server.conf");
    std::fs::write(&path, conf).expect("write config");
    let server = NatsServer::start_with(&["-c", path.to_str().expect("utf-8 path")]);
    (server, dir)
}

/// Limits: NATS's max payload and a full JetStream store. Submits over a
/// limit get an error that names it, through the client and the sidecar;
/// every acknowledged task stays queued and completes once there is room.
pub async fn limits(_scale: Scale) -> Report {
    let mut r = Report::new("limits");
    let t0 = Instant::now();
    let conf = "max_payload: 65536\njetstream { max_file_store: 8MB }\n";
    let (server, dir) = server_with_config(conf);
    let client = server.client().await;
    let _c = start_coordinator(&server, "c1").await;
    let api = api_client(&server).await;
    let big = jetweave::protocol::SubmitRequest {
        envelope: jetweave::protocol::TaskEnvelope::new("echo", json!("x".repeat(100_000))),
        ..Default::default()
    };
    let e = api
        .submit(&big)
        .await
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    r.note(format!("100 kB submit: {e:?}"));
    r.goal(
        e.to_lowercase().contains("payload"),
        format!("over max_payload: {e:?}"),
    );
    let (_sidecar, base) = sidecar_proc(&server.url()).await;
    let res = reqwest::Client::new()
        .post(format!("{base}/tasks/submit"))
        .json(&json!({"task_data": {"type": "echo", "payload": "x".repeat(100_000)}}))
        .send()
        .await;
    let (status, text) = match res {
        Ok(res) => (res.status().as_u16(), res.text().await.unwrap_or_default()),
        Err(e) => (0, e.to_string()),
    };
    r.note(format!("sidecar: {status}"));
    r.goal(
        (400..500).contains(&status) && text.to_lowercase().contains("payload"),
        format!("sidecar over max_payload: {status} {text}"),
    );
    // Fill the store with 16 kB tasks until a submit is refused.
    let mut accepted = Vec::new();
    let mut refusal = None;
    for i in 0..2000 {
        let mut req = jetweave::protocol::SubmitRequest {
            envelope: jetweave::protocol::TaskEnvelope::new("echo", json!("y".repeat(16_000))),
            ..Default::default()
        };
        req.envelope.id = Some(format!("fill-{i}"));
        match api.submit(&req).await {
            Ok(s) => accepted.push(s.task_id),
            Err(e) => {
                refusal = Some(e.to_string());
                break;
            }
        }
    }
    let refusal = refusal.unwrap_or_default();
    r.note(format!(
        "store full after {} tasks: {refusal:?}",
        accepted.len()
    ));
    r.goal(
        refusal.to_lowercase().contains("resources") || refusal.to_lowercase().contains("storage"),
        format!("a full store names the limit: {refusal:?}"),
    );
    // The operator makes room (a config reload), a node drains the queue.
    let path = dir.path().join("server.conf");
    std::fs::write(
        &path,
        "max_payload: 65536\njetstream { max_file_store: 1GB }\n",
    )
    .expect("conf");
    let pid = server.pid().expect("server running") as i32;
    // SAFETY: a signal to our own child process.
    unsafe { libc::kill(pid, libc::SIGHUP) };
    let _n = start_node(&server, node_config("ln")).await;
    let tally = Tally::start(&client).await;
    await_results(&client, &tally, &accepted, Duration::from_secs(60), |_| {}).await;
    judge(&client, &tally, &accepted, &mut r).await;
    r.load = format!(
        "a 100 kB task (max_payload 64 kB); 16 kB tasks into an 8 MB store ({} accepted)",
        accepted.len()
    );
    r.faults = "over the payload and storage limits".into();
    r.took = t0.elapsed();
    r
}

/// Durability: acknowledged submits, results and KV entries counted before
/// a `kill -9` of the only server and after its restart, with
/// `sync_interval: always` (what nats-server.conf ships) and with the
/// default fsync.
pub async fn durability(scale: Scale) -> Report {
    let mut r = Report::new("durability");
    let t0 = Instant::now();
    let n = (scale.tasks / 3).max(300);
    for (label, conf) in [
        ("sync always", "jetstream { sync_interval: always }\n"),
        ("default fsync", "jetstream {}\n"),
    ] {
        let (mut server, _dir) = server_with_config(conf);
        {
            let c = start_coordinator(&server, "c1").await;
            c.shutdown.trigger();
            c.coordinator.wait().await;
        }
        let client = server.client().await;
        let js = jetstream::new(client.clone());
        let kv = js.get_key_value("weave-runs").await.expect("runs bucket");
        for i in 0..n {
            let id = format!("dur-{i}");
            publish_until_acked(
                &js,
                "weave.tasks.default.normal",
                &id,
                &json!({"type": "echo"}),
            )
            .await;
            publish_until_acked(
                &js,
                &format!("weave.results.{id}"),
                &id,
                &json!({"task_id": id, "status": "completed"}),
            )
            .await;
            kv.put(&id, "1".into()).await.expect("kv put");
        }
        server.kill();
        server.restart();
        let client = server.client().await;
        let js = jetstream::new(client.clone());
        let count = |name: &'static str| {
            let js = js.clone();
            async move {
                wait_for("the stream back", Duration::from_secs(20), || async {
                    Some(
                        js.get_stream(name)
                            .await
                            .ok()?
                            .info()
                            .await
                            .ok()?
                            .state
                            .messages as usize,
                    )
                })
                .await
            }
        };
        let (tasks, results) = (count("WEAVE_TASKS").await, count("WEAVE_RESULTS").await);
        let kv = js.get_key_value("weave-runs").await.expect("runs bucket");
        let keys = kv.keys().await.expect("keys").count().await;
        r.note(format!("{label}: {tasks}/{n} tasks, {results}/{n} results, {keys}/{n} KV entries after kill -9"));
        let lost = (n - tasks.min(n)) + (n - results.min(n)) + (n - keys.min(n));
        if label == "sync always" {
            r.lost = lost;
            r.goal(
                lost == 0,
                format!("{lost} acknowledged writes lost with sync always"),
            );
        }
    }
    r.load = format!("{n} acknowledged task publishes, results and KV puts");
    r.faults = "kill -9 of the only server right after the last ack".into();
    r.took = t0.elapsed();
    r
}
