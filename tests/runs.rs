//! Runs, shard assignment and movement (contract §7), leader failover.
mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::*;
use futures::StreamExt;
use serde_json::{json, Value};

fn assignments(run: &Value) -> Vec<(String, String)> {
    run["assignments"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.as_str().unwrap_or("").to_string()))
        .collect()
}

async fn result_of(
    api: &jetweave::Client,
    run_id: &str,
    key: &str,
) -> jetweave::protocol::TaskResult {
    api.wait(&format!("{run_id}:0:{key}"), Duration::from_secs(10))
        .await
        .unwrap()
}

#[tokio::test]
async fn a_run_is_split_over_two_nodes_and_completes() {
    let server = NatsServer::start();
    let _c = start_coordinator(&server, "c1").await;
    let _a = start_node(&server, node_config("a")).await;
    let _b = start_node(&server, node_config("b")).await;
    let api = api_client(&server).await;
    let created = api
        .create_run(
            &json!({"run_id": "r1", "dataset_id": "ds", "iteration": 0, "total_items": 100,
            "shard_size": 25, "strategy": "by_slice", "type": "count", "payload": {"item_ms": 5}}),
        )
        .await
        .unwrap();
    assert_eq!(created["total_shards"], 4);
    let mut seen = Vec::new();
    let run = api
        .wait_run("r1", Duration::from_secs(20), |d, t| seen.push((d, t)))
        .await
        .unwrap();
    assert_eq!(run["status"], "completed", "{run}");
    assert_eq!(run["completed_shards"], 4);
    assert_eq!(seen.last(), Some(&(4, 4)));
    let a = assignments(&run);
    let keys: Vec<&str> = a.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(
        keys,
        ["slice:0:25", "slice:25:50", "slice:50:75", "slice:75:100"]
    );
    let nodes: BTreeSet<&str> = a.iter().map(|(_, n)| n.as_str()).collect();
    assert_eq!(nodes, BTreeSet::from(["a", "b"]), "shards on both nodes");
    let r = result_of(&api, "r1", "slice:25:50").await;
    assert_eq!(r.result, json!({"items": 25, "resumed_from": 0}));
    // The audit log has the run's life.
    let js = async_nats::jetstream::new(server.client().await);
    let ev = js.get_stream("WEAVE_EVENTS").await.unwrap();
    for subj in [
        "weave.events.run.created",
        "weave.events.shard.assigned",
        "weave.events.shard.completed",
        "weave.events.run.completed",
    ] {
        assert!(ev.direct_get_last_for_subject(subj).await.is_ok(), "{subj}");
    }
    let st = api.cluster_status().await.unwrap();
    assert_eq!(st.runs.get("completed"), Some(&1));
}

#[tokio::test]
async fn capabilities_place_shards_and_a_run_waits_for_a_fitting_node() {
    let server = NatsServer::start();
    let _c = start_coordinator(&server, "c1").await;
    let _plain = start_node(&server, node_config("plain")).await;
    let mut g = node_config("gpu1");
    g.capabilities = vec!["gpu".into()];
    g.concurrency = 1;
    let _gpu = start_node(&server, g).await;
    let api = api_client(&server).await;
    api.create_run(
        &json!({"run_id": "g1", "dataset_id": "ds", "total_items": 6, "shard_size": 2,
        "type": "count", "requirements": {"capabilities": ["gpu"]}}),
    )
    .await
    .unwrap();
    let run = api
        .wait_run("g1", Duration::from_secs(20), |_, _| {})
        .await
        .unwrap();
    assert_eq!(run["status"], "completed");
    assert!(assignments(&run).iter().all(|(_, n)| n == "gpu1"), "{run}");

    // A node without the capability joins while gpu1 still holds shards it
    // has not started: the join's rebalance leaves them where they are.
    api.create_run(
        &json!({"run_id": "g2", "dataset_id": "ds", "total_items": 8, "shard_size": 2,
        "type": "count", "payload": {"item_ms": 150}, "requirements": {"capabilities": ["gpu"]}}),
    )
    .await
    .unwrap();
    wait_for("g2 assigned", Duration::from_secs(5), || async {
        let r = api.get_run("g2").await.ok()?;
        (assignments(&r).len() == 4).then_some(())
    })
    .await;
    let _plain2 = start_node(&server, node_config("plain2")).await;
    let run = api
        .wait_run("g2", Duration::from_secs(20), |_, _| {})
        .await
        .unwrap();
    assert_eq!(run["status"], "completed");
    assert!(assignments(&run).iter().all(|(_, n)| n == "gpu1"), "{run}");

    // Nobody has "tpu": the run waits and says why; a fitting node unblocks it.
    api.create_run(
        &json!({"run_id": "t1", "dataset_id": "ds", "total_items": 2, "shard_size": 1,
        "type": "count", "requirements": {"capabilities": ["tpu"]}}),
    )
    .await
    .unwrap();
    let waiting = wait_for("waiting reason", Duration::from_secs(5), || async {
        let r = api.get_run("t1").await.ok()?;
        r["waiting"].as_str().map(str::to_string)
    })
    .await;
    assert!(waiting.contains("tpu"), "{waiting}");
    let mut t = node_config("tpu1");
    t.capabilities = vec!["tpu".into()];
    let _tpu = start_node(&server, t).await;
    let run = api
        .wait_run("t1", Duration::from_secs(20), |_, _| {})
        .await
        .unwrap();
    assert_eq!(run["status"], "completed");
}

#[tokio::test]
async fn bad_run_specs_get_clear_errors() {
    let server = NatsServer::start();
    let _c = start_coordinator(&server, "c1").await;
    let nats = server.client().await;
    let cases: Vec<(&[u8], &str, &str)> = vec![
        (b"{", "invalid_json", "JSON"),
        (
            br#"{"total_items": 10, "type": "count"}"#,
            "invalid_value",
            "dataset_id",
        ),
        (
            br#"{"dataset_id": "d", "total_items": 10, "shard_size": 0, "type": "count"}"#,
            "invalid_value",
            "shard_size",
        ),
        (
            br#"{"dataset_id": "d", "total_items": -1, "type": "count"}"#,
            "invalid_value",
            "total_items",
        ),
        (
            br#"{"dataset_id": "d", "total_items": 10, "strategy": "by_magic", "type": "count"}"#,
            "invalid_value",
            "strategy",
        ),
        (
            br#"{"dataset_id": "d", "total_items": "ten", "type": "count"}"#,
            "invalid_value",
            "invalid type",
        ),
        (
            br#"{"dataset_id": "d", "total_items": 1, "type": "count", "run_id": "a:b"}"#,
            "invalid_id",
            "run id",
        ),
        (
            br#"{"dataset_id": "d", "total_items": 1000000, "shard_size": 1, "type": "count"}"#,
            "invalid_value",
            "maximum",
        ),
    ];
    for (body, code, words) in cases {
        let r = req(&nats, "weave.api.runs.create", body).await;
        assert_eq!(r["ok"], false, "{}: {r}", String::from_utf8_lossy(body));
        assert_eq!(r["code"], code, "{}: {r}", String::from_utf8_lossy(body));
        assert!(
            r["error"].as_str().unwrap().contains(words),
            "{}: {r}",
            String::from_utf8_lossy(body)
        );
    }
    let r = req(&nats, "weave.api.runs.get", br#"{"run_id": "nope"}"#).await;
    assert_eq!(r["code"], "unknown_run");
    let ok = req(
        &nats,
        "weave.api.runs.create",
        br#"{"run_id": "dup", "dataset_id": "d", "total_items": 1, "type": "count"}"#,
    )
    .await;
    assert_eq!(ok["run_id"], "dup", "{ok}");
    let again = req(
        &nats,
        "weave.api.runs.create",
        br#"{"run_id": "dup", "dataset_id": "d", "total_items": 1, "type": "count"}"#,
    )
    .await;
    assert_eq!(again["ok"], false);
}

/// kill -9 of a node mid-run: its shard moves to the survivor within
/// node_ttl + 2 s and resumes from the latest checkpoint.
#[tokio::test]
async fn a_dead_nodes_shards_move_and_resume_from_checkpoints() {
    let server = NatsServer::start();
    let _c = start_coordinator(&server, "c1").await;
    let api = api_client(&server).await;
    let mut doomed = spawn_node_proc(&server, "doomed").await;
    api.create_run(
        &json!({"run_id": "k1", "dataset_id": "ds", "total_items": 30, "shard_size": 30,
        "type": "count", "payload": {"item_ms": 100}}),
    )
    .await
    .unwrap();
    // Let it checkpoint a few items, then start the survivor and kill.
    wait_for(
        "shard running on doomed",
        Duration::from_secs(5),
        || async {
            let st = api.control("doomed", "status", &json!({})).await.ok()?;
            (!st["running_tasks"].as_array()?.is_empty()).then_some(())
        },
    )
    .await;
    let cp = jetweave::checkpoint::Checkpoints::open(
        server.client().await,
        &jetweave::subjects::Subjects::new("weave").unwrap(),
        3,
        1,
    )
    .await
    .unwrap();
    wait_for("3 items checkpointed", Duration::from_secs(5), || async {
        let c = cp.latest("k1:0:slice:0:30").await.ok()??;
        (c.payload["done"].as_u64()? >= 3).then_some(())
    })
    .await;
    let _survivor = start_node(&server, node_config("survivor")).await;
    doomed.kill9();
    let killed = Instant::now();
    wait_for("shard moved", Duration::from_secs(6), || async {
        let r = api.get_run("k1").await.ok()?;
        (r["assignments"]["slice:0:30"] == "survivor").then_some(())
    })
    .await;
    let moved = killed.elapsed();
    eprintln!("shard moved {moved:?} after kill -9 (node_ttl 2 s)");
    assert!(moved <= Duration::from_secs(4), "moved after {moved:?}");
    let run = api
        .wait_run("k1", Duration::from_secs(20), |_, _| {})
        .await
        .unwrap();
    assert_eq!(run["status"], "completed");
    assert_eq!(run["completed_shards"], 1);
    let r = result_of(&api, "k1", "slice:0:30").await;
    assert_eq!(r.node_id.as_deref(), Some("survivor"));
    let resumed = r.result["resumed_from"].as_u64().unwrap();
    assert!(resumed >= 3, "resumed from a checkpoint: {:?}", r.result);
    assert_eq!(r.result["items"], 30);
}

#[tokio::test]
async fn drain_moves_not_started_shards_and_a_joining_node_gets_shards() {
    let server = NatsServer::start();
    let _c = start_coordinator(&server, "c1").await;
    let api = api_client(&server).await;
    let mut cfg = node_config("a");
    cfg.concurrency = 1;
    let a = start_node(&server, cfg).await;
    api.create_run(
        &json!({"run_id": "j1", "dataset_id": "ds", "total_items": 10, "strategy": "by_iteration",
        "type": "count", "payload": {"item_ms": 400}}),
    )
    .await
    .unwrap();
    wait_for("all on a", Duration::from_secs(5), || async {
        let r = api.get_run("j1").await.ok()?;
        assignments(&r).iter().all(|(_, n)| n == "a").then_some(())
    })
    .await;
    // A node joins: not-started shards move toward it.
    let mut cfg = node_config("b");
    cfg.concurrency = 1;
    let _b = start_node(&server, cfg).await;
    let on_b = wait_for("shards rebalanced to b", Duration::from_secs(5), || async {
        let r = api.get_run("j1").await.ok()?;
        let n = assignments(&r).iter().filter(|(_, n)| n == "b").count();
        (n >= 3).then_some(n)
    })
    .await;
    eprintln!("{on_b} shards moved to the joining node");
    // An explicit rebalance answers (the loads are already even).
    let nats = server.client().await;
    let r = req(&nats, "weave.ctl.coordinator.rebalance", b"{}").await;
    assert_eq!(r["ok"], true);
    assert_eq!(r["leader"], true);
    assert_eq!(r["coordinator_id"], "c1");
    // Drain a while it still holds shards it has not started: it finishes
    // the one it runs, and every other one of its shards moves to b.
    let done_on_a = || async {
        let mut n = 0;
        for i in 0..10 {
            if let Ok(Some(r)) = api.result(&format!("j1:0:item:{i}")).await {
                n += usize::from(r.node_id.as_deref() == Some("a"));
            }
        }
        n
    };
    let before = api.get_run("j1").await.unwrap();
    let held = assignments(&before)
        .iter()
        .filter(|(_, n)| n == "a")
        .count();
    let done_before = done_on_a().await;
    assert!(
        held >= done_before + 2,
        "a holds {held} shards, {done_before} done: too few left to test the drain"
    );
    a.handle.drain().await;
    let run = api
        .wait_run("j1", Duration::from_secs(20), |_, _| {})
        .await
        .unwrap();
    assert_eq!(run["status"], "completed");
    let done_after = done_on_a().await;
    assert!(
        done_after <= done_before + 1,
        "a ran {} shards after draining (only the running one may finish): {run}",
        done_after - done_before
    );
    let on_a = assignments(&run).iter().filter(|(_, n)| n == "a").count();
    assert_eq!(
        on_a, done_after,
        "every shard still on a was run by a: {run}"
    );
    let moved: Vec<Value> = audit_events(&nats, "shard.reassigned")
        .await
        .into_iter()
        .filter(|v| v["details"]["reason"] == "drain")
        .collect();
    assert!(moved.len() >= held - done_before - 1, "{moved:?}");
    assert!(moved.iter().all(|v| v["node_id"] == "b"), "{moved:?}");
}

/// §7: least loaded first. a is busy with 4 tasks; a 3-shard run goes to
/// the idle b. The shard messages on `P.shards.<node>` carry the contract's
/// body and `attempt`; by_dataset runs end to end with iteration in the id.
#[tokio::test]
async fn shards_go_to_the_least_loaded_node_with_the_contract_body() {
    let server = NatsServer::start();
    let _c = start_coordinator(&server, "c1").await;
    let api = api_client(&server).await;
    let nats = server.client().await;
    let _a = start_node(&server, node_config("a")).await;
    for i in 0..4 {
        publish_task(
            &nats,
            "weave.tasks.default.normal",
            Some(&format!("busy{i}")),
            json!({"type": "sleep", "payload": {"ms": 3000}}),
        )
        .await;
    }
    wait_for("a busy in discovery", Duration::from_secs(5), || async {
        let e = node_entry(&nats, "a").await?;
        (e["active_tasks"] == 4).then_some(())
    })
    .await;
    let _b = start_node(&server, node_config("b")).await;
    let idle = "b";
    wait_for("coordinator sees b", Duration::from_secs(5), || async {
        (api.cluster_status().await.ok()?.total_nodes == 2).then_some(())
    })
    .await;
    let mut shards = nats.subscribe("weave.shards.>").await.unwrap();
    nats.flush().await.unwrap();
    api.create_run(
        &json!({"run_id": "ll", "dataset_id": "books", "iteration": 2,
        "total_items": 9, "shard_size": 3, "strategy": "by_dataset", "type": "count",
        "payload": {"item_ms": 1}, "metadata": {"who": "test"}}),
    )
    .await
    .unwrap();
    let run = api
        .wait_run("ll", Duration::from_secs(20), |_, _| {})
        .await
        .unwrap();
    assert_eq!(run["status"], "completed");
    let a = assignments(&run);
    assert_eq!(a.len(), 3);
    assert!(
        a.iter().all(|(_, n)| n == idle),
        "least loaded is {idle}: {run}"
    );
    for key in ["slice:0:3", "slice:3:6", "slice:6:9"] {
        let r = api
            .wait(&format!("ll:2:{key}"), Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(r.result["items"], 3);
    }
    let mut keys = Vec::new();
    for _ in 0..3 {
        let m = tokio::time::timeout(Duration::from_secs(2), shards.next())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(m.subject.as_str(), format!("weave.shards.{idle}"));
        let v: Value = serde_json::from_slice(&m.payload).unwrap();
        let mut fields: Vec<&str> = v.as_object().unwrap().keys().map(|k| k.as_str()).collect();
        fields.sort();
        for f in [
            "run_id",
            "dataset_id",
            "iteration",
            "shard_key",
            "target_node",
            "strategy",
            "type",
            "payload",
            "metadata",
            "attempt",
        ] {
            assert!(fields.contains(&f), "shard body lacks {f}: {v}");
        }
        assert_eq!(v["run_id"], "ll");
        assert_eq!(v["dataset_id"], "books");
        assert_eq!(v["iteration"], 2);
        assert_eq!(v["target_node"], idle);
        assert_eq!(v["strategy"], "by_dataset");
        assert_eq!(v["type"], "count");
        assert_eq!(v["payload"], json!({"item_ms": 1}));
        assert_eq!(v["metadata"]["who"], "test");
        assert_eq!(v["attempt"], 1);
        keys.push(v["shard_key"].as_str().unwrap().to_string());
    }
    keys.sort();
    assert_eq!(keys, ["slice:0:3", "slice:3:6", "slice:6:9"]);
}

/// §7: a run whose shards die ends `failed`.
#[tokio::test]
async fn a_run_whose_shards_die_ends_failed() {
    let server = NatsServer::start();
    let _c = start_coordinator(&server, "c1").await;
    let api = api_client(&server).await;
    let _n = start_node(&server, node_config("n")).await;
    api.create_run(
        &json!({"run_id": "bad", "dataset_id": "d", "total_items": 2,
        "shard_size": 1, "type": "fail", "payload": {"times": -1}}),
    )
    .await
    .unwrap();
    let run = api
        .wait_run("bad", Duration::from_secs(30), |_, _| {})
        .await
        .unwrap();
    assert_eq!(run["status"], "failed", "{run}");
    let r = api
        .wait("bad:0:slice:0:1", Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(r.status, jetweave::protocol::TaskStatus::Dead);
    let nats = server.client().await;
    let failed = audit_events(&nats, "run.failed").await;
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0]["run_id"], "bad");
}

/// A `jetweave coordinator` process with a 2 s lease.
fn coordinator_proc(server: &NatsServer, id: &str) -> Proc {
    Proc::spawn(&[
        "--nats-url",
        &server.url(),
        "coordinator",
        "--id",
        id,
        "--lease-ttl",
        "2",
    ])
}

/// kill -9 of the leading coordinator: the standby leads within the lease
/// TTL (+ the expiry sweep), a restarted coordinator waits as a standby,
/// a new run completes, and the lease never has two holders.
#[tokio::test]
async fn leader_failover() {
    let server = NatsServer::start();
    // Short requests: a status request that reached c1 just as it was
    // killed is lost, and must cost one poll, not the default 10 s (a CI
    // run measured 10.03 s for the failover that way).
    let api = api_client(&server)
        .await
        .with_timeout(Duration::from_millis(500));
    let mut c1 = coordinator_proc(&server, "c1");
    wait_for("c1 leads", Duration::from_secs(15), || async {
        let st = api.cluster_status().await.ok()?;
        (st.leader.as_deref() == Some("c1")).then_some(())
    })
    .await;
    let lease_watch = LeaseWatch::start(&server).await;
    let c2 = coordinator_proc(&server, "c2");
    let _n = start_node(&server, node_config("n1")).await;
    // Both answer the API; c2 knows c1 leads.
    wait_for("two coordinators", Duration::from_secs(15), || async {
        let nats = server.client().await;
        let n = replies(&nats, "$SRV.PING.weave-api", Duration::from_millis(300)).await;
        (n.len() == 2).then_some(())
    })
    .await;
    c1.kill9();
    let killed = Instant::now();
    wait_for("c2 leads", Duration::from_secs(15), || async {
        let st = api.cluster_status().await.ok()?;
        (st.leader.as_deref() == Some("c2")).then_some(())
    })
    .await;
    let took = killed.elapsed();
    eprintln!("new leader {took:?} after kill -9 (lease 2 s)");
    // The lease was renewed at most lease/3 before the kill, so it expires
    // within the lease TTL; the server's expiry sweep and the standby's
    // 250 ms check add at most 0.5 s.
    assert!(took <= Duration::from_millis(2500), "took {took:?}");
    // c1 comes back: it stays a standby while c2 leads; kill c2 and c1
    // leads again.
    let mut c1 = coordinator_proc(&server, "c1");
    wait_for("c1 back as a standby", Duration::from_secs(15), || async {
        let nats = server.client().await;
        let n = replies(&nats, "$SRV.PING.weave-api", Duration::from_millis(300)).await;
        (n.len() == 2).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        api.cluster_status().await.unwrap().leader.as_deref(),
        Some("c2")
    );
    drop(c2);
    wait_for("c1 leads again", Duration::from_secs(15), || async {
        let st = api.cluster_status().await.ok()?;
        (st.leader.as_deref() == Some("c1")).then_some(())
    })
    .await;
    api.create_run(&json!({"run_id": "after", "dataset_id": "ds", "total_items": 4, "shard_size": 2, "type": "count"}))
        .await
        .unwrap();
    let run = api
        .wait_run("after", Duration::from_secs(20), |_, _| {})
        .await
        .unwrap();
    assert_eq!(run["status"], "completed");
    // Never two leaders: in the lease's whole history, a different holder
    // only ever follows a delete or expiry of the previous one's lease.
    let history = lease_watch.abort_and_collect().await;
    let mut holder: Option<String> = None;
    let mut changes = 0;
    for (op, who) in &history {
        match (op.as_str(), who) {
            ("put", Some(w)) => {
                if let Some(h) = &holder {
                    assert_eq!(h, w, "{w} wrote the lease while {h} held it: {history:?}");
                } else {
                    changes += 1;
                }
                holder = Some(w.clone());
            }
            _ => holder = None,
        }
    }
    assert!(changes >= 3, "c1, c2, c1 each took the lease: {history:?}");
    c1.kill9();
}

/// (operation, holder) of each lease entry.
type LeaseHistory = Vec<(String, Option<String>)>;

/// Records every entry of the `weave-leader` lease key while a test runs.
struct LeaseWatch {
    seen: std::sync::Arc<std::sync::Mutex<LeaseHistory>>,
    task: tokio::task::JoinHandle<()>,
}

impl LeaseWatch {
    async fn start(server: &NatsServer) -> Self {
        let js = async_nats::jetstream::new(server.client().await);
        let kv = wait_for("leader bucket", Duration::from_secs(15), || async {
            js.get_key_value("weave-leader").await.ok()
        })
        .await;
        let mut w = kv.watch_with_history("coordinator").await.unwrap();
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let s = seen.clone();
        let task = tokio::spawn(async move {
            while let Some(Ok(e)) = w.next().await {
                let op = match e.operation {
                    async_nats::jetstream::kv::Operation::Put => "put",
                    async_nats::jetstream::kv::Operation::Delete => "delete",
                    async_nats::jetstream::kv::Operation::Purge => "purge",
                };
                let who = serde_json::from_slice::<Value>(&e.value)
                    .ok()
                    .and_then(|v| v["coordinator_id"].as_str().map(str::to_string));
                s.lock().unwrap().push((op.to_string(), who));
            }
        });
        LeaseWatch { seen, task }
    }

    async fn abort_and_collect(self) -> LeaseHistory {
        tokio::time::sleep(Duration::from_millis(200)).await;
        self.task.abort();
        self.seen.lock().unwrap().clone()
    }
}

/// A coordinator's `wait()` returns after its loops ended and only then
/// gives the lease up: the standby leads at once (not after the TTL) and
/// the stopped one no longer answers the API.
#[tokio::test]
async fn a_stopping_leader_hands_over_at_once() {
    let server = NatsServer::start();
    let api = api_client(&server).await;
    let c1 = start_coordinator(&server, "c1").await;
    wait_for("c1 leads", Duration::from_secs(5), || async {
        c1.coordinator.is_leader().then_some(())
    })
    .await;
    let c2 = start_coordinator(&server, "c2").await;
    c1.shutdown.trigger();
    tokio::time::timeout(Duration::from_secs(5), c1.coordinator.wait())
        .await
        .expect("c1 stopped");
    let t0 = Instant::now();
    wait_for("c2 leads", Duration::from_secs(3), || async {
        c2.coordinator.is_leader().then_some(())
    })
    .await;
    let took = t0.elapsed();
    assert!(
        took < Duration::from_millis(1500),
        "took {took:?}: the lease was not released"
    );
    assert!(!c1.coordinator.is_leader());
    let nats = server.client().await;
    let ids: Vec<Value> = replies(&nats, "$SRV.PING.weave-api", Duration::from_millis(500))
        .await
        .into_iter()
        .map(|v| v["id"].clone())
        .collect();
    assert_eq!(ids.len(), 1, "only c2 answers: {ids:?}");
    let st = api.cluster_status().await.unwrap();
    assert_eq!(st.leader.as_deref(), Some("c2"));
}

/// The coordinator's watch of `weave-runs` loses its consumer (deleted on
/// the server, as when the server holding it dies): the watch comes back,
/// and a run created afterwards is assigned and completes.
#[tokio::test]
async fn runs_survive_the_loss_of_the_coordinators_watch() {
    let server = NatsServer::start();
    let _c = start_coordinator(&server, "c1").await;
    let _n = start_node(&server, node_config("n1")).await;
    let api = api_client(&server).await;
    let n = delete_consumers(&server.client().await, "KV_weave-runs").await;
    assert!(n > 0, "the coordinator watches weave-runs");
    api.create_run(
        &json!({"run_id": "after-loss", "dataset_id": "d", "total_items": 4,
        "shard_size": 2, "type": "count"}),
    )
    .await
    .unwrap();
    let run = api
        .wait_run("after-loss", Duration::from_secs(20), |_, _| {})
        .await
        .unwrap();
    assert_eq!(run["status"], "completed");
}

/// A node paused (SIGSTOP) past its TTL loses its entry and its shard
/// consumer; when it continues it registers again, takes shards again and
/// the run completes.
#[tokio::test]
async fn a_paused_node_comes_back_and_finishes_the_run() {
    let server = NatsServer::start();
    let _c = start_coordinator(&server, "c1").await;
    let api = api_client(&server).await;
    let nats = server.client().await;
    let node = spawn_node_proc_with(&server, "sleepy", &["--concurrency", "2"]).await;
    // 8 shards of 1 s on 2 slots: most of them wait in the node's consumer.
    api.create_run(
        &json!({"run_id": "p1", "dataset_id": "d", "total_items": 40,
        "shard_size": 5, "type": "count", "payload": {"item_ms": 200}}),
    )
    .await
    .unwrap();
    wait_for("shards assigned", Duration::from_secs(5), || async {
        let r = api.get_run("p1").await.ok()?;
        (assignments(&r).len() == 8).then_some(())
    })
    .await;
    node.signal(libc::SIGSTOP);
    wait_for("sleepy expired", Duration::from_secs(6), || async {
        node_entry(&nats, "sleepy").await.is_none().then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    node.signal(libc::SIGCONT);
    wait_for(
        "sleepy registered again",
        Duration::from_secs(5),
        || async { node_entry(&nats, "sleepy").await },
    )
    .await;
    let run = api
        .wait_run("p1", Duration::from_secs(30), |_, _| {})
        .await
        .unwrap();
    assert_eq!(run["status"], "completed", "{run}");
    assert_eq!(run["completed_shards"], 8);
}
