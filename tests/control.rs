//! Heartbeats (§2), control (§3), processes and events (§4), bad input.
mod common;

use std::time::{Duration, Instant};

use common::*;
use futures::StreamExt;
use jetweave::config::ProcessSpec;
use serde_json::{json, Value};

async fn next_json(sub: &mut async_nats::Subscriber, d: Duration) -> Value {
    let m = tokio::time::timeout(d, sub.next())
        .await
        .expect("message in time")
        .expect("subscription open");
    serde_json::from_slice(&m.payload).expect("JSON")
}

#[tokio::test]
async fn heartbeats_arrive_at_the_interval_and_show_drain_and_resume() {
    let server = NatsServer::start();
    let client = server.client().await;
    let mut hb = client.subscribe("weave.node.n1.heartbeat").await.unwrap();
    client.flush().await.unwrap();
    let node = start_node(&server, node_config("n1")).await; // 0.5 s interval
    let first = next_json(&mut hb, Duration::from_secs(2)).await;
    for f in [
        "node_id",
        "health",
        "active_tasks",
        "max_concurrency",
        "queues",
        "completed",
        "failed",
        "last_heartbeat_at",
        "metadata",
    ] {
        assert!(first.get(f).is_some(), "heartbeat lacks {f}: {first}");
    }
    let t0 = Instant::now();
    for _ in 0..4 {
        next_json(&mut hb, Duration::from_secs(2)).await;
    }
    let per = t0.elapsed() / 4;
    assert!(
        per >= Duration::from_millis(350) && per <= Duration::from_millis(750),
        "interval {per:?}"
    );

    // Drain: visible in heartbeats and KV within 1 s.
    let reply = req(&client, "weave.ctl.n1.drain", b"").await;
    assert_eq!(reply["ok"], true);
    assert_eq!(reply["health"], "draining");
    let t0 = Instant::now();
    loop {
        let h = next_json(&mut hb, Duration::from_secs(2)).await;
        if h["health"] == "draining" {
            break;
        }
    }
    assert!(t0.elapsed() < Duration::from_secs(1));
    let js = async_nats::jetstream::new(client.clone());
    let kv = js.get_key_value("weave-nodes").await.unwrap();
    let info: Value = serde_json::from_slice(&kv.get("n1").await.unwrap().unwrap()).unwrap();
    assert_eq!(info["health"], "draining");

    let reply = req(&client, "weave.ctl.n1.resume", b"").await;
    assert_eq!(reply["health"], "healthy");
    wait_for("resume in KV", Duration::from_secs(1), || async {
        let v: Value = serde_json::from_slice(&kv.get("n1").await.ok()??).ok()?;
        (v["health"] == "healthy").then_some(())
    })
    .await;
    node.handle.shutdown(Duration::from_secs(2)).await;
}

#[tokio::test]
async fn ping_status_broadcast_and_micro_service_discovery() {
    let server = NatsServer::start();
    let client = server.client().await;
    let mut nodes = Vec::new();
    for id in ["a1", "a2", "a3"] {
        nodes.push(start_node(&server, node_config(id)).await);
    }
    let ping = req(&client, "weave.ctl.a2.ping", b"").await;
    assert_eq!(ping["ok"], true);
    assert_eq!(ping["node_id"], "a2");
    assert_eq!(ping["health"], "healthy");
    let status = req(&client, "weave.ctl.a1.status", b"").await;
    assert_eq!(status["ok"], true);
    assert_eq!(status["max_concurrency"], 8);
    assert!(status["handlers"]
        .as_array()
        .unwrap()
        .contains(&json!("echo")));

    // Broadcast: one reply per live node.
    let inbox = client.new_inbox();
    let mut replies = client.subscribe(inbox.clone()).await.unwrap();
    client
        .publish_with_reply("weave.ctl.all.ping", inbox, "".into())
        .await
        .unwrap();
    let mut ids = Vec::new();
    while let Ok(Some(m)) = tokio::time::timeout(Duration::from_millis(700), replies.next()).await {
        let v: Value = serde_json::from_slice(&m.payload).unwrap();
        assert_eq!(v["ok"], true);
        ids.push(v["node_id"].as_str().unwrap().to_string());
    }
    ids.sort();
    assert_eq!(ids, ["a1", "a2", "a3"]);

    // $SRV.PING.weave-node: one answer per node, with its node_id metadata.
    let inbox = client.new_inbox();
    let mut replies = client.subscribe(inbox.clone()).await.unwrap();
    client
        .publish_with_reply("$SRV.INFO.weave-node", inbox, "".into())
        .await
        .unwrap();
    let mut ids = Vec::new();
    while let Ok(Some(m)) = tokio::time::timeout(Duration::from_millis(700), replies.next()).await {
        let v: Value = serde_json::from_slice(&m.payload).unwrap();
        assert_eq!(v["name"], "weave-node");
        ids.push(v["metadata"]["node_id"].as_str().unwrap().to_string());
    }
    ids.sort();
    assert_eq!(ids, ["a1", "a2", "a3"]);
    let pings = {
        let inbox = client.new_inbox();
        let mut r = client.subscribe(inbox.clone()).await.unwrap();
        client
            .publish_with_reply("$SRV.PING", inbox, "".into())
            .await
            .unwrap();
        let mut n = 0;
        while let Ok(Some(_)) = tokio::time::timeout(Duration::from_millis(500), r.next()).await {
            n += 1;
        }
        n
    };
    assert_eq!(pings, 3);
    for n in nodes {
        n.shutdown.trigger();
        n.handle.wait().await;
    }
}

#[tokio::test]
async fn processes_start_stop_restart_and_take_events() {
    let server = NatsServer::start();
    let client = server.client().await;
    let mut cfg = node_config("p1");
    cfg.processes = vec![
        ProcessSpec::new("watcher", "echo"),
        ProcessSpec {
            autostart: false,
            ..ProcessSpec::new("idle", "echo")
        },
        ProcessSpec::new("broken", "nope"),
    ];
    let node = start_node(&server, cfg).await;

    let list = req(&client, "weave.ctl.p1.processes", b"").await;
    let procs = list["processes"].as_array().unwrap();
    let state = |n: &str| procs.iter().find(|p| p["name"] == n).unwrap()["state"].clone();
    assert_eq!(state("watcher"), "running");
    assert_eq!(state("idle"), "stopped");
    assert_eq!(state("broken"), "failed");

    // Event injection: reply, then the outcome on the events subject.
    let mut outcomes = client
        .subscribe("weave.events.process.p1.watcher")
        .await
        .unwrap();
    client.flush().await.unwrap();
    let ev = json!({"trigger_id": "t1", "trigger_type": "manual", "payload": {"hello": "world"}, "metadata": {}});
    let r = req(&client, "weave.event.p1.watcher", ev.to_string().as_bytes()).await;
    assert_eq!(r["status"], "injected");
    assert_eq!(r["process"], "watcher");
    let out = next_json(&mut outcomes, Duration::from_secs(3)).await;
    assert_eq!(out["event_id"], r["event_id"]);
    assert_eq!(out["status"], "completed");
    assert_eq!(out["result"], json!({"hello": "world"}));
    // ... and it is stored in WEAVE_EVENTS.
    let js = async_nats::jetstream::new(client.clone());
    let stream = js.get_stream("WEAVE_EVENTS").await.unwrap();
    let stored = stream
        .direct_get_last_for_subject("weave.events.process.p1.watcher")
        .await
        .unwrap();
    assert_eq!(
        serde_json::from_slice::<Value>(&stored.payload).unwrap()["event_id"],
        r["event_id"]
    );

    // Stop refuses events; start accepts them again with a new process id.
    let before = req(&client, "weave.ctl.p1.process.watcher.status", b"").await;
    let r = req(&client, "weave.ctl.p1.process.watcher.stop", b"").await;
    assert_eq!(r["status"], "stopped");
    assert_eq!(r["state"], "stopped");
    let r = req(&client, "weave.event.p1.watcher", b"{}").await;
    assert_eq!(r["ok"], false);
    assert_eq!(r["code"], "process_stopped");
    let r = req(&client, "weave.ctl.p1.process.watcher.start", b"").await;
    assert_eq!(r["status"], "started");
    assert_ne!(r["process_id"], before["process_id"]);
    let r2 = req(&client, "weave.ctl.p1.process.watcher.restart", b"").await;
    assert_eq!(r2["status"], "restarted");
    assert_eq!(r2["state"], "running");
    assert_ne!(r2["process_id"], r["process_id"]);
    let r = req(&client, "weave.event.p1.watcher", b"{}").await;
    assert_eq!(r["status"], "injected");
    let r = req(&client, "weave.ctl.p1.process.broken.start", b"").await;
    assert_eq!(r["ok"], false);

    // Unknown process: errors everywhere.
    for subject in [
        "weave.event.p1.ghost",
        "weave.ctl.p1.process.ghost.start",
        "weave.ctl.p1.process.ghost.status",
    ] {
        let r = req(&client, subject, b"{}").await;
        assert_eq!(r["ok"], false, "{subject}: {r}");
        assert_eq!(r["code"], "unknown_process", "{subject}: {r}");
    }
    node.handle.shutdown(Duration::from_secs(2)).await;
}

#[tokio::test]
async fn bad_input_gets_error_replies_and_the_node_keeps_serving() {
    let server = NatsServer::start();
    let client = server.client().await;
    let mut cfg = node_config("b1");
    cfg.processes = vec![ProcessSpec::new("w", "echo")];
    let node = start_node(&server, cfg).await;
    let mut noise = vec![0u8; 512 * 1024];
    for (i, b) in noise.iter_mut().enumerate() {
        *b = (i.wrapping_mul(2654435761) >> 13) as u8;
    }
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("weave.event.b1.w", b"{not json".to_vec(), "invalid_json"),
        ("weave.event.b1.w", b"[1,2,3]".to_vec(), "invalid_json"),
        (
            "weave.event.b1.w",
            br#"{"metadata": 5}"#.to_vec(),
            "invalid_value",
        ),
        ("weave.event.b1.w", noise.clone(), "invalid_json"),
        (
            "weave.event.b1.w",
            br#"{"paylod": {"alert": 1}}"#.to_vec(),
            "invalid_value",
        ),
        ("weave.ctl.b1.shutdown", b"{oops".to_vec(), "invalid_json"),
        (
            "weave.ctl.b1.shutdown",
            br#"{"deadline_s": -3}"#.to_vec(),
            "invalid_value",
        ),
        ("weave.ctl.b1.shutdown", b"[]".to_vec(), "invalid_json"),
        ("weave.ctl.b1.explode", b"".to_vec(), "unknown_verb"),
        (
            "weave.ctl.b1.process.w.explode",
            b"".to_vec(),
            "unknown_verb",
        ),
        ("weave.ctl.b1.a.b.c.d.e", noise.clone(), "unknown_verb"),
        ("weave.ctl.all.explode", b"".to_vec(), "unknown_verb"),
    ];
    for (subject, body, code) in cases {
        let r = req(&client, subject, &body).await;
        assert_eq!(r["ok"], false, "{subject}: {r}");
        assert_eq!(r["code"], code, "{subject}: {r}");
        assert!(
            r["error"].as_str().is_some_and(|e| !e.is_empty()),
            "{subject}: {r}"
        );
    }
    // Still alive and healthy.
    let ping = req(&client, "weave.ctl.b1.ping", b"").await;
    assert_eq!(ping["ok"], true);
    assert_eq!(ping["health"], "healthy");
    let r = req(&client, "weave.event.b1.w", br#"{"payload": 1}"#).await;
    assert_eq!(r["status"], "injected");
    node.handle.shutdown(Duration::from_secs(2)).await;
}

#[tokio::test]
async fn shutdown_verb_drains_waits_and_unregisters() {
    let server = NatsServer::start();
    let client = server.client().await;
    let node = start_node(&server, node_config("s1")).await;
    let r = req(&client, "weave.ctl.s1.shutdown", br#"{"deadline_s": 3}"#).await;
    assert_eq!(r["ok"], true);
    assert_eq!(r["health"], "draining");
    tokio::time::timeout(Duration::from_secs(5), node.handle.wait())
        .await
        .expect("node stopped");
    let js = async_nats::jetstream::new(client.clone());
    let kv = js.get_key_value("weave-nodes").await.unwrap();
    assert!(kv.get("s1").await.unwrap().is_none());
    // The audit log saw it join and leave.
    let events = js.get_stream("WEAVE_EVENTS").await.unwrap();
    let left = events
        .direct_get_last_for_subject("weave.events.node.left")
        .await
        .unwrap();
    let v: Value = serde_json::from_slice(&left.payload).unwrap();
    assert_eq!(v["node_id"], "s1");
    assert!(events
        .direct_get_last_for_subject("weave.events.node.joined")
        .await
        .is_ok());
}

/// §1/§2: every heartbeat refreshes the KV entry (its `last_heartbeat_at`
/// moves forward with each beat), and the heartbeat's `completed` /
/// `failed` counters count completed tasks and failed attempts.
#[tokio::test]
async fn every_heartbeat_refreshes_the_entry_and_counts_are_right() {
    let server = NatsServer::start();
    let client = server.client().await;
    let mut hb = client.subscribe("weave.node.c1.heartbeat").await.unwrap();
    client.flush().await.unwrap();
    let node = start_node(&server, node_config("c1")).await;
    let js = async_nats::jetstream::new(client.clone());
    let kv = js.get_key_value("weave-nodes").await.unwrap();
    let mut watch = kv.watch_with_history("c1").await.unwrap();
    let mut last = None;
    for _ in 0..4 {
        let beat = next_json(&mut hb, Duration::from_secs(2)).await;
        let at = beat["last_heartbeat_at"].clone();
        if let Some(prev) = &last {
            assert!(ts(&at) > ts(prev), "heartbeat time moves forward");
        }
        // The entry carrying this beat's time shows up in KV.
        let until = Instant::now() + Duration::from_secs(2);
        loop {
            let e = tokio::time::timeout_at(until.into(), watch.next())
                .await
                .expect("entry refreshed with the beat in time")
                .expect("watch open")
                .unwrap();
            let v: Value = serde_json::from_slice(&e.value).unwrap();
            if v["last_heartbeat_at"] == at {
                break;
            }
        }
        last = Some(at);
    }

    // 3 echo tasks complete; `fail` once then succeed = 1 failed attempt
    // and 1 completed; `fail` always with 2 attempts = 2 failed attempts.
    let api = api_client(&server).await;
    for i in 0..3 {
        let id = format!("e{i}");
        publish_task(
            &client,
            "weave.tasks.default.normal",
            Some(&id),
            json!({"type": "echo"}),
        )
        .await;
    }
    publish_task(
        &client,
        "weave.tasks.default.normal",
        Some("f1"),
        json!({"type": "fail", "payload": {"times": 1}, "backoff_s": [0.1]}),
    )
    .await;
    publish_task(
        &client,
        "weave.tasks.default.normal",
        Some("f2"),
        json!({"type": "fail", "payload": {"times": -1}, "max_attempts": 2, "backoff_s": [0.1]}),
    )
    .await;
    for id in ["e0", "e1", "e2", "f1", "f2"] {
        api.wait(id, Duration::from_secs(10)).await.unwrap();
    }
    let until = Instant::now() + Duration::from_secs(3);
    let beat = loop {
        assert!(Instant::now() < until, "no heartbeat with completed = 4");
        let b = next_json(&mut hb, Duration::from_secs(2)).await;
        if b["completed"] == 4 {
            break b;
        }
    };
    assert_eq!(beat["failed"], 3, "{beat}");
    // The entry is written just after the beat is sent (and on a cluster a
    // read may reach a replica a moment behind): it follows within a beat.
    let entry = wait_for(
        "the entry with the beat's counts",
        Duration::from_secs(2),
        || async {
            node_entry(&client, "c1")
                .await
                .filter(|e| e["metadata"]["completed"] == 4)
        },
    )
    .await;
    assert_eq!(entry["metadata"]["completed"], 4, "{entry}");
    assert_eq!(entry["metadata"]["failed"], 3, "{entry}");
    node.handle.shutdown(Duration::from_secs(2)).await;
}

/// §3: every verb's reply carries `ok`, `node_id` and `health`.
#[tokio::test]
async fn every_control_reply_names_the_node_and_its_health() {
    let server = NatsServer::start();
    let client = server.client().await;
    let mut cfg = node_config("r1");
    cfg.processes = vec![ProcessSpec::new("w", "echo")];
    let node = start_node(&server, cfg).await;
    for (verb, health) in [
        ("ping", "healthy"),
        ("status", "healthy"),
        ("processes", "healthy"),
        ("process.w.status", "healthy"),
        ("drain", "draining"),
        ("status", "draining"),
        ("process.w.restart", "draining"),
        ("resume", "healthy"),
    ] {
        let r = req(&client, &format!("weave.ctl.r1.{verb}"), b"").await;
        assert_eq!(r["ok"], true, "{verb}: {r}");
        assert_eq!(r["node_id"], "r1", "{verb}: {r}");
        assert_eq!(r["health"], health, "{verb}: {r}");
    }
    let r = req(&client, "weave.ctl.r1.nope", b"").await;
    assert_eq!(r["ok"], false);
    assert!(r["error"].as_str().is_some_and(|e| !e.is_empty()), "{r}");
    assert!(r["code"].as_str().is_some(), "{r}");
    node.handle.shutdown(Duration::from_secs(2)).await;
}

/// §3: after `drain` no new task starts (tasks published 1 s later stay
/// queued), the running task finishes on the drained node, and `resume`
/// lets the queued ones run. Audit: `node.draining` / `node.resumed`.
#[tokio::test]
async fn a_drained_node_finishes_its_work_and_takes_no_new_task() {
    let server = NatsServer::start();
    let client = server.client().await;
    let api = api_client(&server).await;
    let node = start_node(&server, node_config("d1")).await;
    run_sleep_task(&client, "d1", "long", 1500).await;
    let mut results = client.subscribe("weave.results.>").await.unwrap();
    client.flush().await.unwrap();
    let r = req(&client, "weave.ctl.d1.drain", b"").await;
    assert_eq!(r["health"], "draining");
    tokio::time::sleep(Duration::from_secs(1)).await;
    for i in 0..5 {
        publish_task(
            &client,
            "weave.tasks.default.normal",
            Some(&format!("after{i}")),
            json!({"type": "echo"}),
        )
        .await;
    }
    // The running task completes here; nothing else starts for 1.5 s.
    let long = api.wait("long", Duration::from_secs(5)).await.unwrap();
    assert_eq!(long.status, jetweave::protocol::TaskStatus::Completed);
    assert_eq!(long.node_id.as_deref(), Some("d1"));
    let quiet_until = Instant::now() + Duration::from_millis(1500);
    while let Ok(Some(m)) = tokio::time::timeout_at(quiet_until.into(), results.next()).await {
        assert_eq!(
            m.subject.as_str(),
            "weave.results.long",
            "a task started while draining"
        );
    }
    let st = req(&client, "weave.ctl.d1.status", b"").await;
    assert!(st["running_tasks"].as_array().unwrap().is_empty(), "{st}");
    req(&client, "weave.ctl.d1.resume", b"").await;
    for i in 0..5 {
        let r = api
            .wait(&format!("after{i}"), Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(r.node_id.as_deref(), Some("d1"));
    }
    let drained = audit_events(&client, "node.draining").await;
    let resumed = audit_events(&client, "node.resumed").await;
    for (evs, kind) in [(drained, "node.draining"), (resumed, "node.resumed")] {
        assert_eq!(evs.len(), 1, "{kind}: {evs:?}");
        assert_eq!(evs[0]["kind"], kind);
        assert_eq!(evs[0]["node_id"], "d1");
        ts(&evs[0]["at"]);
    }
    node.handle.shutdown(Duration::from_secs(2)).await;
}

/// §3: `shutdown` waits for in-flight work before it deletes the entry.
#[tokio::test]
async fn shutdown_waits_for_the_running_task() {
    let server = NatsServer::start();
    let client = server.client().await;
    let api = api_client(&server).await;
    let node = start_node(&server, node_config("w1")).await;
    run_sleep_task(&client, "w1", "inflight", 1500).await;
    let t0 = Instant::now();
    let r = req(&client, "weave.ctl.w1.shutdown", br#"{"deadline_s": 10}"#).await;
    assert_eq!(r["ok"], true);
    assert_eq!(r["node_id"], "w1");
    assert_eq!(r["health"], "draining");
    // Still registered (draining) while the task runs.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        node_entry(&client, "w1").await.unwrap()["health"],
        "draining"
    );
    tokio::time::timeout(Duration::from_secs(5), node.handle.wait())
        .await
        .expect("node stopped");
    let r = api
        .result("inflight")
        .await
        .unwrap()
        .expect("result stored before exit");
    assert_eq!(r.status, jetweave::protocol::TaskStatus::Completed);
    assert_eq!(r.node_id.as_deref(), Some("w1"));
    assert!(
        t0.elapsed() >= Duration::from_millis(1000),
        "waited for the task"
    );
    assert!(node_entry(&client, "w1").await.is_none());
}

/// §3: `deadline_s` bounds the wait; the unfinished task is not lost: it
/// goes back to the queue and another node finishes it.
#[tokio::test]
async fn shutdown_deadline_returns_unfinished_work_to_the_queue() {
    let server = NatsServer::start();
    let client = server.client().await;
    let api = api_client(&server).await;
    let node = start_node(&server, node_config("w1")).await;
    run_sleep_task(&client, "w1", "slow", 3000).await;
    let t0 = Instant::now();
    let r = req(&client, "weave.ctl.w1.shutdown", br#"{"deadline_s": 1}"#).await;
    assert_eq!(r["deadline_s"], 1.0);
    tokio::time::timeout(Duration::from_secs(5), node.handle.wait())
        .await
        .expect("node stopped");
    let took = t0.elapsed();
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_millis(2500),
        "stopped after {took:?} with deadline_s 1"
    );
    assert!(
        api.result("slow").await.unwrap().is_none(),
        "no result for the unfinished task"
    );
    let _w2 = start_node(&server, node_config("w2")).await;
    let r = api.wait("slow", Duration::from_secs(10)).await.unwrap();
    assert_eq!(r.status, jetweave::protocol::TaskStatus::Completed);
    assert_eq!(r.node_id.as_deref(), Some("w2"));
}

/// §4: an event whose handler fails is published and stored as `failed`
/// with its error.
#[tokio::test]
async fn a_failing_event_handler_is_stored_as_failed() {
    let server = NatsServer::start();
    let client = server.client().await;
    let mut cfg = node_config("e1");
    cfg.processes = vec![ProcessSpec::new("bad", "fail")];
    let node = start_node(&server, cfg).await;
    let mut outcomes = client
        .subscribe("weave.events.process.e1.bad")
        .await
        .unwrap();
    client.flush().await.unwrap();
    let r = req(
        &client,
        "weave.event.e1.bad",
        br#"{"trigger_id": "t9", "payload": {"times": -1}}"#,
    )
    .await;
    assert_eq!(r["status"], "injected");
    let out = next_json(&mut outcomes, Duration::from_secs(3)).await;
    assert_eq!(out["event_id"], r["event_id"]);
    assert_eq!(out["status"], "failed");
    assert_eq!(out["error"], "planned failure");
    assert_eq!(out["trigger_id"], "t9");
    let stored = stored(&client, "WEAVE_EVENTS", "weave.events.process.e1.bad").await;
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0].1["status"], "failed");
    assert_eq!(stored[0].1["error"], "planned failure");
    // The process keeps taking events.
    let r = req(
        &client,
        "weave.event.e1.bad",
        br#"{"payload": {"times": 0}}"#,
    )
    .await;
    assert_eq!(r["status"], "injected");
    let out = next_json(&mut outcomes, Duration::from_secs(3)).await;
    assert_eq!(out["status"], "completed");
    node.handle.shutdown(Duration::from_secs(2)).await;
}

/// When `wait()` returns every loop of the node has ended: no heartbeat
/// follows, the entry stays deleted, and the node's service is gone.
#[tokio::test]
async fn a_stopped_node_leaves_nothing_running() {
    let server = NatsServer::start();
    let client = server.client().await;
    let node = start_node(&server, node_config("gone1")).await;
    let mut hb = client
        .subscribe("weave.node.gone1.heartbeat")
        .await
        .unwrap();
    client.flush().await.unwrap();
    next_json(&mut hb, Duration::from_secs(2)).await;
    node.shutdown.trigger();
    tokio::time::timeout(Duration::from_secs(10), node.handle.wait())
        .await
        .expect("node stopped");
    let stopped = time::OffsetDateTime::now_utc();
    // Three heartbeat intervals: nothing beats after wait() returned (a beat
    // sent before it may still be on its way).
    let quiet_until = Instant::now() + Duration::from_millis(1500);
    while let Ok(Some(m)) = tokio::time::timeout_at(quiet_until.into(), hb.next()).await {
        let v: Value = serde_json::from_slice(&m.payload).unwrap();
        assert!(
            ts(&v["last_heartbeat_at"]) < stopped,
            "heartbeat after wait(): {v}"
        );
    }
    assert!(node_entry(&client, "gone1").await.is_none());
    let r = client
        .request("weave.ctl.gone1.ping", "".into())
        .await
        .expect_err("no one answers for a stopped node");
    assert_eq!(r.kind(), async_nats::RequestErrorKind::NoResponders);
}

/// A malformed body on a control verb gets an error reply and changes
/// nothing; an empty body or `{}` is still fine for verbs without fields.
#[tokio::test]
async fn malformed_control_bodies_change_nothing() {
    let server = NatsServer::start();
    let client = server.client().await;
    let mut cfg = node_config("strict");
    cfg.processes = vec![ProcessSpec::new("w", "echo")];
    let node = start_node(&server, cfg).await;
    let bad: [(&str, &[u8], &str); 8] = [
        ("drain", b"{not json", "invalid_json"),
        ("drain", b"[1,2,3]", "invalid_json"),
        ("drain", b"null", "invalid_json"),
        ("drain", br#"{"deadline_s": "x"}"#, "invalid_value"),
        ("shutdown", br#"{"deadline_s": "x"}"#, "invalid_value"),
        ("shutdown", b"[1]", "invalid_json"),
        ("process.w.stop", b"{oops", "invalid_json"),
        ("ping", br#"{"surprise": 1}"#, "invalid_value"),
    ];
    for (verb, body, code) in bad {
        let r = req(&client, &format!("weave.ctl.strict.{verb}"), body).await;
        assert_eq!(
            r["ok"],
            false,
            "{verb} {:?}: {r}",
            String::from_utf8_lossy(body)
        );
        assert_eq!(r["code"], code, "{verb}: {r}");
    }
    // Nothing changed: healthy, serving, the process still runs.
    let st = req(&client, "weave.ctl.strict.status", b"").await;
    assert_eq!(st["health"], "healthy", "{st}");
    assert_eq!(st["processes"][0]["state"], "running", "{st}");
    for body in [&b""[..], b"{}", b"  "] {
        let r = req(&client, "weave.ctl.strict.ping", body).await;
        assert_eq!(r["ok"], true, "{r}");
    }
    node.handle.shutdown(Duration::from_secs(2)).await;
}

/// SIGTERM to a node whose NATS server is gone still ends it (exit 0),
/// within the NATS timeouts of its drain: it used to wait forever for a
/// reconnection to flush its last messages.
#[tokio::test]
async fn a_node_stops_on_sigterm_while_nats_is_down() {
    let mut server = NatsServer::start();
    let mut node = spawn_node_proc_with(&server, "orphan", &["--shutdown-deadline", "2"]).await;
    let client = server.client().await;
    wait_for("orphan started", Duration::from_secs(10), || async {
        let joined = audit_events(&client, "node.joined").await;
        joined
            .iter()
            .any(|e| e["node_id"] == "orphan")
            .then_some(())
    })
    .await;
    server.kill();
    let t0 = std::time::Instant::now();
    node.signal(libc::SIGTERM);
    let status = node
        .wait_exit(Duration::from_secs(25))
        .expect("the node exits without its server");
    assert!(status.success(), "{status:?}");
    eprintln!("exited {:?} after SIGTERM", t0.elapsed());
}

/// The `state` of each process in a `processes` reply.
fn process_states(r: &Value) -> Vec<String> {
    r["processes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["state"].as_str().unwrap().to_string())
        .collect()
}

/// Process triggers fire events on schedule (every_s, and a five-field
/// crontab expression is accepted); `process.<name>.add` adds a process at
/// run time; `start_all` / `stop_all` act on every process (seed 000).
#[tokio::test]
async fn process_triggers_add_and_start_stop_all() {
    let server = NatsServer::start();
    let client = server.client().await;
    let mut cfg = node_config("p1");
    cfg.processes = vec![
        ProcessSpec {
            every_s: Some(0.5),
            payload: json!({"tick": true}),
            ..ProcessSpec::new("ticker", "echo")
        },
        ProcessSpec {
            cron: Some("*/5 * * * *".into()),
            ..ProcessSpec::new("nightly", "echo")
        },
    ];
    let _node = start_node(&server, cfg).await;
    let mut ticks = client
        .subscribe("weave.events.process.p1.ticker")
        .await
        .unwrap();
    let t0 = Instant::now();
    for _ in 0..3 {
        let m = tokio::time::timeout(Duration::from_secs(3), ticks.next())
            .await
            .expect("a tick")
            .unwrap();
        let v: Value = serde_json::from_slice(&m.payload).unwrap();
        assert_eq!(
            (v["status"].as_str(), v["trigger_id"].as_str()),
            (Some("completed"), Some("every")),
            "{v}"
        );
        assert_eq!(v["result"], json!({"tick": true}));
    }
    let took = t0.elapsed();
    assert!(
        took >= Duration::from_millis(1000),
        "3 ticks of 0.5 s in {took:?}"
    );

    // Added at run time, with its own trigger; a second add is refused.
    let add = br#"{"handler": "echo", "every_s": 0.5, "payload": {"late": 1}}"#;
    let r = req(&client, "weave.ctl.p1.process.late.add", add).await;
    assert_eq!(
        (r["ok"].as_bool(), r["state"].as_str()),
        (Some(true), Some("running")),
        "{r}"
    );
    let mut late = client
        .subscribe("weave.events.process.p1.late")
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(3), late.next())
        .await
        .expect("the added process's trigger fires");
    let r = req(&client, "weave.ctl.p1.process.late.add", add).await;
    assert_eq!(r["code"], "already_exists", "{r}");
    for (body, code) in [
        (&br#"{"handler": "nope"}"#[..], "invalid_value"),
        (
            br#"{"handler": "echo", "cron": "not cron"}"#,
            "invalid_value",
        ),
        (
            br#"{"handler": "echo", "every_s": 1, "cron": "* * * * *"}"#,
            "invalid_value",
        ),
        (br#"{"handler": "echo", "colour": 1}"#, "invalid_value"),
        (b"{", "invalid_json"),
    ] {
        let r = req(&client, "weave.ctl.p1.process.other.add", body).await;
        assert_eq!(r["code"], code, "{r}");
    }
    let r = req(
        &client,
        "weave.ctl.p1.process.a.b.add",
        br#"{"handler": "echo"}"#,
    )
    .await;
    assert_eq!(r["ok"], false, "{r}");

    // stop_all: every process stopped, events refused, triggers skip.
    let r = req(&client, "weave.ctl.p1.stop_all", b"").await;
    let states = process_states(&r);
    assert_eq!(states, ["stopped"; 3], "{r}");
    let r = req(&client, "weave.event.p1.ticker", br#"{"payload": 1}"#).await;
    assert_eq!(r["code"], "process_stopped", "{r}");
    while tokio::time::timeout(Duration::from_millis(100), ticks.next())
        .await
        .is_ok()
    {}
    assert!(
        tokio::time::timeout(Duration::from_millis(1200), ticks.next())
            .await
            .is_err(),
        "a stopped process's trigger does not fire"
    );
    let r = req(&client, "weave.ctl.p1.start_all", b"").await;
    let states = process_states(&r);
    assert_eq!(states, ["running"; 3], "{r}");
    tokio::time::timeout(Duration::from_secs(3), ticks.next())
        .await
        .expect("ticks again after start_all");
}

/// A process trigger keeps firing after the NATS server is killed and
/// restarted, and its loop ends with the node.
#[tokio::test]
async fn process_triggers_survive_a_server_restart_and_end_with_the_node() {
    let mut server = NatsServer::start();
    let mut cfg = node_config("t1");
    cfg.processes = vec![ProcessSpec {
        every_s: Some(0.5),
        ..ProcessSpec::new("ticker", "echo")
    }];
    let node = start_node(&server, cfg).await;
    server.restart();
    let client = server.client().await;
    let mut ticks = client
        .subscribe("weave.events.process.t1.ticker")
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(15), ticks.next())
        .await
        .expect("a tick after the restart");
    let t0 = Instant::now();
    node.handle.shutdown(Duration::from_secs(2)).await;
    assert!(t0.elapsed() < Duration::from_secs(8), "{:?}", t0.elapsed());
    // Stopped: no tick any more.
    while tokio::time::timeout(Duration::from_millis(100), ticks.next())
        .await
        .is_ok()
    {}
    assert!(
        tokio::time::timeout(Duration::from_millis(1500), ticks.next())
            .await
            .is_err(),
        "the trigger loop ended with the node"
    );
}

/// A node at every configured bound (32 queues, capabilities and metadata
/// keys of the longest size, 100 handler types) with all its slots busy
/// sends heartbeats under 4 KiB and a discovery entry under 16 KiB; one
/// past a bound is refused at start, naming it.
#[tokio::test]
async fn heartbeats_and_entries_stay_bounded_whatever_the_node_runs() {
    use jetweave::config::{MAX_LISTED, MAX_METADATA_KEY, MAX_METADATA_VALUE};
    let server = NatsServer::start();
    let client = server.client().await;
    let mut cfg = node_config("big");
    cfg.queues = (0..MAX_LISTED).map(|i| format!("q{i}")).collect();
    cfg.capabilities = (0..MAX_LISTED)
        .map(|i| format!("{i:0>width$}", width = MAX_METADATA_KEY))
        .collect();
    cfg.metadata = (0..MAX_LISTED)
        .map(|i| {
            (
                format!("{i:0>width$}", width = MAX_METADATA_KEY),
                "v".repeat(MAX_METADATA_VALUE),
            )
        })
        .collect();
    cfg.concurrency = MAX_LISTED as u32;
    let mut too_many = cfg.clone();
    too_many.queues.push("one-more".into());
    let err = jetweave::Node::new(too_many)
        .start(client.clone(), jetweave::Shutdown::new())
        .await
        .err()
        .expect("33 queues refused");
    assert!(err.to_string().contains("at most 32 queues"), "{err}");
    let mut long = cfg.clone();
    long.metadata
        .insert("k".into(), "v".repeat(MAX_METADATA_VALUE + 1));
    assert!(jetweave::Node::new(long)
        .start(client.clone(), jetweave::Shutdown::new())
        .await
        .is_err());

    let mut node = jetweave::Node::new(cfg);
    for i in 0..100 {
        node.handler(&format!("handler-{i}"), |_ctx, _p| async {
            Ok(json!(null))
        });
    }
    let mut hb = client.subscribe("weave.node.big.heartbeat").await.unwrap();
    let n = start_node_with(&server, node).await;
    for i in 0..MAX_LISTED {
        publish_task(
            &client,
            &format!("weave.tasks.q{i}.normal"),
            None,
            json!({"type": "sleep", "payload": {"ms": 5000}}),
        )
        .await;
    }
    let until = Instant::now() + Duration::from_secs(10);
    let beat = loop {
        let m = tokio::time::timeout_at(until.into(), hb.next())
            .await
            .expect("a beat with every slot busy in time")
            .expect("subscription open");
        let v: Value = serde_json::from_slice(&m.payload).unwrap();
        if v["active_tasks"] == MAX_LISTED {
            break m.payload.len();
        }
    };
    let js = async_nats::jetstream::new(client.clone());
    let kv = js.get_key_value("weave-nodes").await.unwrap();
    let entry = kv.get("big").await.unwrap().expect("entry").len();
    eprintln!("heartbeat {beat} bytes, discovery entry {entry} bytes");
    assert!(beat < 4096, "heartbeat {beat} bytes");
    assert!(entry < 16 * 1024, "entry {entry} bytes");
    n.handle.shutdown(Duration::from_millis(100)).await;
}
