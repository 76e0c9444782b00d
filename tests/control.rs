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
        ProcessSpec {
            name: "watcher".into(),
            handler: "echo".into(),
            autostart: true,
        },
        ProcessSpec {
            name: "idle".into(),
            handler: "echo".into(),
            autostart: false,
        },
        ProcessSpec {
            name: "broken".into(),
            handler: "nope".into(),
            autostart: true,
        },
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
    cfg.processes = vec![ProcessSpec {
        name: "w".into(),
        handler: "echo".into(),
        autostart: true,
    }];
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
