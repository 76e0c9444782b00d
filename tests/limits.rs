//! Flow control (contract §15), from outside: limits set through the API
//! subjects, the CLI and the sidecar; tasks published on the task subjects;
//! concurrency judged from the handlers' own start and end times.

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use jetweave::handler::HandlerResult;
use jetweave::Node;
use serde_json::{json, Value};

/// When each `probe` handler ran: (limit key, start, end).
type Runs = Arc<Mutex<Vec<(String, Instant, Instant)>>>;

/// A node of 8 slots whose `probe` handler sleeps `payload.ms` and records
/// its own start and end (all nodes of a test share `runs`).
async fn probe_node(server: &NatsServer, id: &str, runs: &Runs) -> TestNode {
    let mut cfg = node_config(id);
    cfg.concurrency = 8;
    let mut node = Node::new(cfg);
    let runs = runs.clone();
    node.handler("probe", move |_ctx, payload: Value| {
        let runs = runs.clone();
        async move {
            let start = Instant::now();
            let ms = payload["ms"].as_u64().unwrap_or(0);
            tokio::time::sleep(Duration::from_millis(ms)).await;
            let key = payload["key"].as_str().unwrap_or("_").to_string();
            runs.lock().unwrap().push((key, start, Instant::now()));
            HandlerResult::Ok(json!({}))
        }
    });
    start_node_with(server, node).await
}

/// A server, a coordinator and two probe nodes sharing one record.
async fn two_probe_nodes() -> (
    NatsServer,
    TestCoordinator,
    [TestNode; 2],
    Runs,
    jetweave::Client,
) {
    let server = NatsServer::start();
    let c = start_coordinator(&server, "c1").await;
    let runs: Runs = Arc::default();
    let nodes = [
        probe_node(&server, "n1", &runs).await,
        probe_node(&server, "n2", &runs).await,
    ];
    let api = api_client(&server).await;
    (server, c, nodes, runs, api)
}

async fn probe(c: &jetweave::Client, id: &str, key: &str, ms: u64) {
    publish_task(
        c.nats(),
        "weave.tasks.default.normal",
        None,
        json!({"id": id, "type": "probe", "limit_key": key, "payload": {"ms": ms, "key": key}}),
    )
    .await;
}

/// Most handlers of `key` running at one moment.
fn max_overlap(runs: &[(String, Instant, Instant)], key: &str) -> usize {
    let mine: Vec<_> = runs.iter().filter(|r| r.0 == key).collect();
    mine.iter()
        .map(|a| mine.iter().filter(|b| b.1 <= a.1 && a.1 < b.2).count())
        .max()
        .unwrap_or(0)
}

/// Publishes `echo` tasks of key K, one at a time, until one is reported
/// held back by `limit` (within 25 s: a lost watch may take ~10 s to come
/// back).
async fn until_held_back(c: &jetweave::Client, limit: &str, what: &str) {
    let mut i = 0;
    wait_for(what, Duration::from_secs(25), || {
        i += 1;
        let (c, id) = (c.clone(), format!("held-{limit}-{i}"));
        async move {
            let body = json!({"type": "echo", "limit_key": "K"});
            publish_task(c.nats(), "weave.tasks.default.normal", Some(&id), body).await;
            tokio::time::sleep(Duration::from_millis(400)).await;
            let info = c.get(&id).await.ok()?;
            (info.throttled_by.as_deref() == Some(limit)).then_some(())
        }
    })
    .await;
}

async fn wait_done(c: &jetweave::Client, id: &str) -> jetweave::protocol::TaskResult {
    let r = c.wait(id, Duration::from_secs(30)).await.expect(id);
    assert_eq!(r.status.as_str(), "completed", "{id}: {r:?}");
    r
}

#[tokio::test]
async fn max_running_caps_one_key_on_all_nodes_and_holds_back_nothing_else() {
    let (server, _c, _nodes, runs, c) = two_probe_nodes().await;
    let url = server.url();
    let o = jw_async(&[
        "--nats-url",
        &url,
        "limit",
        "set",
        "db",
        "--type",
        "probe",
        "--max-running",
        "2",
    ])
    .await;
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // The nodes apply it from their watch of weave-limits.
    tokio::time::sleep(Duration::from_millis(300)).await;

    for i in 0..12 {
        probe(&c, &format!("a{i}"), "A", 300).await;
    }
    let t0 = Instant::now();
    probe(&c, "b0", "B", 100).await;
    probe(&c, "b1", "B", 100).await;
    publish_task(
        c.nats(),
        "weave.tasks.default.normal",
        Some("free"),
        json!({"type": "sleep", "payload": {"ms": 100}}),
    )
    .await;

    // While A's backlog waits: a waiting task says why, and the list shows
    // two of A running.
    let info = wait_for("a11 throttled", Duration::from_secs(5), || async {
        let i = c.get("a11").await.ok()?;
        (i.throttled_by.as_deref() == Some("db")).then_some(i)
    })
    .await;
    assert_eq!(info.status.as_str(), "queued");
    wait_for("db running A=2", Duration::from_secs(5), || async {
        let l = c.limits().await.ok()?;
        (l.first()?.running.get("A") == Some(&2)).then_some(())
    })
    .await;

    for id in ["b0", "b1", "free"] {
        wait_done(&c, id).await;
    }
    let others_done = t0.elapsed();
    for i in 0..12 {
        wait_done(&c, &format!("a{i}")).await;
    }
    let all_done = t0.elapsed();
    let runs = runs.lock().unwrap().clone();
    eprintln!("B and unlimited done in {others_done:?}, A's 12 in {all_done:?}");
    assert_eq!(max_overlap(&runs, "A"), 2, "A reached but never passed 2");
    assert!(max_overlap(&runs, "B") <= 2);
    // 12 x 0.3 s two at a time is >= 1.8 s; B and the unlimited task were
    // not queued behind A's backlog.
    assert!(all_done >= Duration::from_millis(1800), "{all_done:?}");
    assert!(
        others_done < Duration::from_millis(1000),
        "B and unlimited took {others_done:?}"
    );
}

#[tokio::test]
async fn per_second_spreads_starts_per_key() {
    let (_server, _c, _nodes, runs, c) = two_probe_nodes().await;
    let v = api_raw(
        &c,
        "limits.set",
        json!({"limit_id": "api", "type": "probe", "per_second": 5, "burst": 1}),
    )
    .await;
    assert_eq!(v["ok"], true, "{v}");
    tokio::time::sleep(Duration::from_millis(300)).await;

    for i in 0..11 {
        probe(&c, &format!("a{i}"), "A", 0).await;
    }
    let t0 = Instant::now();
    for i in 0..3 {
        probe(&c, &format!("b{i}"), "B", 0).await;
    }
    for i in 0..3 {
        wait_done(&c, &format!("b{i}")).await;
    }
    let b_done = t0.elapsed();
    for i in 0..11 {
        wait_done(&c, &format!("a{i}")).await;
    }
    let runs = runs.lock().unwrap().clone();
    let mut a: Vec<Instant> = runs.iter().filter(|r| r.0 == "A").map(|r| r.1).collect();
    a.sort();
    let span = a[10] - a[0];
    eprintln!("11 starts of A over {span:?}; B's 3 done in {b_done:?}");
    // 1 at once, then one per 0.2 s: the 11th starts 2 s after the first
    // (less the spread of one KV round trip between the two measurements).
    assert!(span >= Duration::from_millis(1980), "11 starts in {span:?}");
    for i in 0..a.len() {
        for j in i + 1..a.len() {
            let allowed = 1.0 + 5.0 * (a[j] - a[i]).as_secs_f64() + 0.1;
            assert!((j - i + 1) as f64 <= allowed, "starts {i}..{j} too close");
        }
    }
    // B's three starts (0, 0.2, 0.4 s) were not slowed by A's backlog.
    assert!(b_done < Duration::from_millis(1500), "B took {b_done:?}");
}

#[tokio::test]
async fn a_killed_nodes_slot_comes_back_within_its_ttl() {
    let server = NatsServer::start();
    let _c = start_coordinator(&server, "c1").await;
    let c = api_client(&server).await;
    // k1 alone serves "slow": its task is not redelivered anywhere after
    // the kill, so only the slot's TTL can free the limit.
    let mut k1 = spawn_node_proc_with(&server, "k1", &["--queues", "default,slow"]).await;
    let v = api_raw(
        &c,
        "limits.set",
        json!({"limit_id": "one", "max_running": 1}),
    )
    .await;
    assert_eq!(v["ok"], true, "{v}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    publish_task(
        c.nats(),
        "weave.tasks.slow.normal",
        Some("long"),
        json!({"type": "sleep", "limit_key": "A", "payload": {"ms": 60000}}),
    )
    .await;
    wait_for("long runs", Duration::from_secs(10), || async {
        let i = c.get("long").await.ok()?;
        (i.status.as_str() == "running").then_some(())
    })
    .await;
    let _k2 = spawn_node_proc_with(&server, "k2", &["--queues", "default"]).await;
    publish_task(
        c.nats(),
        "weave.tasks.default.normal",
        Some("short"),
        json!({"type": "echo", "limit_key": "A", "payload": 1}),
    )
    .await;
    wait_for("short throttled", Duration::from_secs(5), || async {
        let i = c.get("short").await.ok()?;
        (i.throttled_by.as_deref() == Some("one")).then_some(())
    })
    .await;
    k1.kill9();
    let killed = Instant::now();
    wait_for("slot given back", Duration::from_secs(10), || async {
        let l = c.limits().await.ok()?;
        l.first()?.running.is_empty().then_some(())
    })
    .await;
    let back = killed.elapsed();
    // node_ttl 2 s + 1 s.
    assert!(back <= Duration::from_secs(3), "slot back after {back:?}");
    let r = wait_done(&c, "short").await;
    assert_eq!(r.node_id.as_deref(), Some("k2"));
    // Then the held-back task starts within one retry wait (<= 0.75 s).
    let started = killed.elapsed();
    eprintln!("slot back {back:?} after the kill; the waiting task done after {started:?}");
    assert!(
        started <= Duration::from_millis(3900),
        "short ran after {started:?}"
    );
}

#[tokio::test]
async fn invalid_limits_are_refused_and_a_deleted_limit_frees_its_tasks() {
    let server = NatsServer::start();
    let _c = start_coordinator(&server, "c1").await;
    let n = start_node(&server, node_config("n1")).await;
    let c = api_client(&server).await;
    for bad in [
        json!({}),
        json!({"limit_id": "x"}),
        json!({"limit_id": "x", "max_running": 0}),
        json!({"limit_id": "x", "per_second": 0}),
        json!({"limit_id": "x", "per_second": 1, "burst": 0}),
        json!({"limit_id": "a.b", "max_running": 1}),
        json!({"limit_id": "x", "max_running": 1, "color": "red"}),
        json!({"limit_id": "x", "max_running": "2"}),
    ] {
        let v = api_raw(&c, "limits.set", bad.clone()).await;
        assert_eq!(v["code"], "invalid_value", "{bad} -> {v}");
    }
    let v = api_raw(
        &c,
        "tasks.submit",
        json!({"type": "echo", "limit_key": "a b"}),
    )
    .await;
    assert_eq!(v["code"], "invalid_value", "{v}");
    assert!(v["error"].as_str().unwrap().contains("limit_key"), "{v}");
    // A valid key is accepted by the API (and the CLI's --limit-key).
    let v = api_raw(
        &c,
        "tasks.submit",
        json!({"type": "echo", "limit_key": "tenant-1"}),
    )
    .await;
    let id = v["task_id"].as_str().expect("submitted").to_string();
    wait_done(&c, &id).await;
    let o = jw_async(&[
        "--nats-url",
        &server.url(),
        "submit",
        "echo",
        "--limit-key",
        "t2",
        "--wait",
    ])
    .await;
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v = api_raw(&c, "limits.delete", json!({"limit_id": "nope"})).await;
    assert_eq!(v["code"], "not_found", "{v}");
    assert!(c.limits().await.unwrap().is_empty(), "nothing was stored");

    let url = server.url();
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let _s = Proc::spawn(&["--nats-url", &url, "sidecar", "--listen", &listen]);
    let base = format!("http://{listen}");
    let http = reqwest::Client::new();
    let put = |body: Value| {
        let http = http.clone();
        let base = base.clone();
        async move {
            http.put(format!("{base}/limits/x"))
                .json(&body)
                .send()
                .await
                .ok()
        }
    };
    let r = wait_for("sidecar up", Duration::from_secs(10), || {
        put(json!({"type": "sleep", "max_running": 1}))
    })
    .await;
    assert_eq!(r.status().as_u16(), 200);
    let r = put(json!({"per_second": -1})).await.unwrap();
    assert_eq!(r.status().as_u16(), 400);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["code"], "invalid_value");
    let v: Value = reqwest::get(format!("{base}/limits"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["limits"][0]["limit_id"], "x", "{v}");
    assert_eq!(v["limits"][0]["max_running"], 1, "{v}");

    // One sleep of key K holds the only slot; the second waits on x.
    let sleep = |id: &'static str, ms: u64| {
        let c = c.clone();
        async move {
            let body = json!({"type": "sleep", "limit_key": "K", "payload": {"ms": ms}});
            publish_task(c.nats(), "weave.tasks.default.normal", Some(id), body).await;
        }
    };
    sleep("hold", 5000).await;
    sleep("waits", 10).await;
    wait_for("waits throttled by x", Duration::from_secs(5), || async {
        let i = c.get("waits").await.ok()?;
        (i.throttled_by.as_deref() == Some("x") && i.status.as_str() == "queued").then_some(())
    })
    .await;
    let r = http
        .delete(format!("{base}/limits/x"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let deleted = time::OffsetDateTime::now_utc();
    let r = wait_done(&c, "waits").await;
    let started = ts(&json!(r.started_at));
    eprintln!("started {} after the limit was deleted", started - deleted);
    assert!(
        started - deleted <= time::Duration::seconds(1),
        "started {} after the delete",
        started - deleted
    );
    let r = http
        .delete(format!("{base}/limits/x"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 404);

    // The node's watches of the limits lose their consumers: a limit set
    // afterwards still applies once the watch is back (the client library
    // notices a lost consumer by its missing idle heartbeats, ~10 s).
    let nats = server.client().await;
    assert!(delete_consumers(&nats, "KV_weave-limits").await >= 1);
    assert!(delete_consumers(&nats, "KV_weave-limit-state").await >= 1);
    let set = json!({"limit_id": "slow", "type": "echo", "per_second": 0.001});
    assert_eq!(api_raw(&c, "limits.set", set).await["ok"], true);
    until_held_back(&c, "slow", "a limit set after the watch was lost applies").await;
    // The sidecar's metrics: hold-backs summed from the nodes, running
    // slots from the state bucket.
    let text = wait_for("limit metrics", Duration::from_secs(10), || async {
        let t = reqwest::get(format!("{base}/metrics"))
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        t.contains("jetweave_limit_throttled_total{limit=\"slow\"}")
            .then_some(t)
    })
    .await;
    assert!(
        text.contains("jetweave_limit_running{limit=\"slow\"} 0"),
        "{text}"
    );
    assert!(
        text.contains("jetweave_limit_throttled_total{limit=\"x\"}"),
        "{text}"
    );
    drop(n);
}

/// The node's limit watches come back after the NATS server dies and
/// restarts (a limit set afterwards holds tasks back), and the node still
/// stops promptly (its watch loops end with it).
#[tokio::test]
async fn limits_survive_a_server_restart() {
    let mut server = NatsServer::start();
    let _c = start_coordinator(&server, "c1").await;
    let n = start_node(&server, node_config("n1")).await;
    let c = api_client(&server).await;
    server.restart();
    let set = json!({"limit_id": "after", "type": "echo", "per_second": 0.001});
    wait_for("API back", Duration::from_secs(20), || async {
        let v = c
            .nats()
            .request("weave.api.limits.set", set.to_string().into())
            .await
            .ok()?;
        (serde_json::from_slice::<Value>(&v.payload).ok()?["ok"] == true).then_some(())
    })
    .await;
    until_held_back(&c, "after", "a limit set after the restart applies").await;
    let t0 = Instant::now();
    n.handle.shutdown(Duration::from_secs(2)).await;
    assert!(
        t0.elapsed() < Duration::from_secs(8),
        "stopped in {:?}",
        t0.elapsed()
    );
}
