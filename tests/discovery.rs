//! Discovery (contract §1): the node's KV entry, its TTL on crash, its
//! deletion on clean shutdown, and the static backend.
mod common;

use std::time::{Duration, Instant};

use common::*;
use futures::StreamExt;
use jetweave::discovery::{Discovery, DiscoveryEvent, KvDiscovery, LeaveReason, StaticDiscovery};
use jetweave::subjects::Subjects;
use serde_json::json;

async fn discovery(server: &NatsServer) -> KvDiscovery {
    let s = Subjects::new("weave").unwrap();
    KvDiscovery::open(server.client().await, &s, Duration::from_secs(2), 1)
        .await
        .unwrap()
}

#[tokio::test]
async fn node_entry_has_every_field_and_is_deleted_on_shutdown() {
    let server = NatsServer::start();
    let mut cfg = node_config("n1");
    cfg.capabilities = vec!["gpu".into()];
    cfg.url = Some("http://127.0.0.1:9100/".into());
    let node = start_node(&server, cfg).await;
    let client = server.client().await;
    let js = async_nats::jetstream::new(client);
    let kv = js.get_key_value("weave-nodes").await.unwrap();
    let raw = kv.get("n1").await.unwrap().expect("entry present");
    let v: serde_json::Value = serde_json::from_slice(&raw).unwrap();
    for f in [
        "node_id",
        "role",
        "hostname",
        "pid",
        "url",
        "queues",
        "capabilities",
        "max_concurrency",
        "health",
        "active_tasks",
        "started_at",
        "last_heartbeat_at",
        "metadata",
    ] {
        assert!(v.get(f).is_some(), "NodeInfo lacks {f}: {v}");
    }
    assert_eq!(v["node_id"], "n1");
    assert_eq!(v["health"], "healthy");
    assert_eq!(v["url"], "http://127.0.0.1:9100");
    assert_eq!(v["capabilities"][0], "gpu");
    assert_eq!(v["pid"], std::process::id());

    let d = discovery(&server).await;
    let mut watch = d.watch().await.unwrap();
    node.handle.shutdown(Duration::from_secs(5)).await;
    let ev = tokio::time::timeout(Duration::from_secs(3), async {
        loop {
            match watch.next().await {
                Some(DiscoveryEvent::Left { node_id, reason }) => break (node_id, reason),
                Some(_) => continue,
                None => panic!("watch ended"),
            }
        }
    })
    .await
    .expect("a Left event after shutdown");
    assert_eq!(ev, ("n1".to_string(), LeaveReason::Deleted));
    assert!(kv.get("n1").await.unwrap().is_none());
}

/// kill -9 of a node process: a watcher sees it leave within node_ttl + 1 s,
/// and a node that re-registers after expiring expires again.
#[tokio::test]
async fn crashed_node_expires_and_reregistered_node_expires_again() {
    let server = NatsServer::start();
    let d = discovery(&server).await;
    let args = [
        "--nats-url",
        &server.url(),
        "node",
        "--node-id",
        "crashy",
        "--node-ttl",
        "2",
        "--heartbeat-interval",
        "0.5",
    ];
    for round in 0..2 {
        let mut node = Proc::spawn(&args);
        wait_for("node registered", Duration::from_secs(15), || async {
            d.get("crashy").await.ok().flatten()
        })
        .await;
        let mut watch = d.watch().await.unwrap();
        // Skip the replayed current entry.
        node.kill9();
        let killed = Instant::now();
        let reason = tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                match watch.next().await {
                    Some(DiscoveryEvent::Left { node_id, reason }) if node_id == "crashy" => {
                        break reason
                    }
                    Some(_) => continue,
                    None => panic!("watch ended"),
                }
            }
        })
        .await
        .unwrap_or_else(|_| panic!("round {round}: no Left event within 5 s"));
        let took = killed.elapsed();
        assert_eq!(reason, LeaveReason::Expired);
        assert!(
            took <= Duration::from_secs(3),
            "round {round}: left after {took:?} > ttl + 1 s"
        );
        eprintln!("round {round}: expired {took:?} after kill -9");
    }
}

#[tokio::test]
async fn sigterm_deletes_the_entry_and_exits_zero() {
    let server = NatsServer::start();
    let d = discovery(&server).await;
    let mut node = Proc::spawn(&["--nats-url", &server.url(), "node", "--node-id", "termy"]);
    wait_for("node registered", Duration::from_secs(15), || async {
        d.get("termy").await.ok().flatten()
    })
    .await;
    node.signal(libc::SIGTERM);
    let st = node
        .wait_exit(Duration::from_secs(10))
        .expect("exited after SIGTERM");
    assert!(st.success(), "exit status {st:?}");
    assert!(
        d.get("termy").await.unwrap().is_none(),
        "entry deleted at once"
    );
}

#[tokio::test]
async fn unreachable_nats_is_a_one_line_error() {
    let port = free_port();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_jetweave"))
        .args([
            "--nats-url",
            &format!("nats://127.0.0.1:{port}"),
            "--connect-wait",
            "1",
            "node",
            "--node-id",
            "x",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot reach NATS"), "{err}");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_jetweave"))
        .args(["node", "--node-id", "bad id"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid node id"));
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_jetweave"))
        .args(["node", "--node-id", "x", "--node-ttl", "1.5"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("whole number"));
}

#[tokio::test]
async fn static_discovery_strips_slashes_and_reports_changes() {
    let d = StaticDiscovery::new([
        ("node-1", "http://host1:9100/"),
        ("node-2", "http://host2:9100"),
    ]);
    let mut w = d.watch().await.unwrap();
    let nodes = d.discover().await.unwrap();
    assert_eq!(nodes.len(), 2);
    assert_eq!(nodes[0].url.as_deref(), Some("http://host1:9100"));
    d.register("node-4", Some("http://host4:9100//"), Default::default())
        .await
        .unwrap();
    d.unregister("node-2").await.unwrap();
    match w.next().await.unwrap() {
        DiscoveryEvent::Joined(n) => assert_eq!(n.url.as_deref(), Some("http://host4:9100")),
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        w.next().await.unwrap(),
        DiscoveryEvent::Left { .. }
    ));
    let ids: Vec<String> = d
        .discover()
        .await
        .unwrap()
        .into_iter()
        .map(|n| n.node_id)
        .collect();
    assert_eq!(ids, ["node-1", "node-4"]);
    assert!(d
        .register("bad id", None, Default::default())
        .await
        .is_err());
}

#[tokio::test]
async fn a_second_node_with_a_live_id_is_refused() {
    let server = NatsServer::start();
    let _first = start_node(&server, node_config("twin")).await;
    let err = jetweave::Node::new(node_config("twin"))
        .start(server.client().await, jetweave::Shutdown::new())
        .await
        .err()
        .expect("refused");
    assert!(err.to_string().contains("in use by a live node"), "{err}");
}

/// §3: SIGTERM and SIGINT are `shutdown`: the node waits for its running
/// task (its result is stored), deletes its entry and exits 0.
#[tokio::test]
async fn sigterm_and_sigint_wait_for_running_work() {
    let server = NatsServer::start();
    let client = server.client().await;
    let api = api_client(&server).await;
    for (sig, id) in [(libc::SIGINT, "inty"), (libc::SIGTERM, "termy2")] {
        let mut node = spawn_node_proc(&server, id).await;
        let task = format!("{id}-task");
        run_sleep_task(&client, id, &task, 1200).await;
        let t0 = Instant::now();
        node.signal(sig);
        let st = node.wait_exit(Duration::from_secs(10)).expect("exited");
        assert!(st.success(), "signal {sig}: exit status {st:?}");
        assert!(
            t0.elapsed() >= Duration::from_millis(700),
            "signal {sig}: did not wait"
        );
        let r = api
            .result(&task)
            .await
            .unwrap()
            .expect("result stored before exit");
        assert_eq!(r.status, jetweave::protocol::TaskStatus::Completed);
        assert_eq!(r.node_id.as_deref(), Some(id));
        assert!(
            node_entry(&client, id).await.is_none(),
            "signal {sig}: entry deleted"
        );
    }
}

/// §4: the leading coordinator records `node.expired` for a node that
/// vanished without a word (and `node.left` is not written for it).
#[tokio::test]
async fn an_expired_node_is_in_the_audit_log() {
    let server = NatsServer::start();
    let client = server.client().await;
    let _c = start_coordinator(&server, "c1").await;
    let mut node = spawn_node_proc(&server, "gone").await;
    let joined = first_audit(&client, "node.joined", Duration::from_secs(5)).await;
    assert_eq!(joined["node_id"], "gone");
    assert_eq!(joined["details"]["queues"], serde_json::json!(["default"]));
    node.kill9();
    let ev = first_audit(&client, "node.expired", Duration::from_secs(6)).await;
    assert_eq!(ev["kind"], "node.expired");
    assert_eq!(ev["node_id"], "gone");
    ts(&ev["at"]);
    assert!(audit_events(&client, "node.left").await.is_empty());
    eprintln!(
        "ALL {:?}",
        stored(&client, "WEAVE_EVENTS", "weave.events.>").await
    );
    let joined = audit_events(&client, "node.joined").await;
    assert_eq!(joined.len(), 1);
    assert_eq!(joined[0]["node_id"], "gone");
    assert_eq!(
        joined[0]["details"]["queues"],
        serde_json::json!(["default"])
    );
}

/// Entries in `weave-nodes` that are not a node's NodeInfo (garbage, a copy
/// of another node's entry under a new key) are not listed anywhere.
#[tokio::test]
async fn garbage_entries_are_not_ghost_nodes() {
    let server = NatsServer::start();
    let client = server.client().await;
    let _c = start_coordinator(&server, "c1").await;
    let _n = start_node(&server, node_config("n1")).await;
    let api = api_client(&server).await;
    let js = async_nats::jetstream::new(client.clone());
    let kv = js.get_key_value("weave-nodes").await.unwrap();
    let real = kv.get("n1").await.unwrap().unwrap();
    kv.put("ghost1", "not json".into()).await.unwrap();
    kv.put("ghost2", r#"{"x": 1}"#.into()).await.unwrap();
    kv.put("ghost3", real).await.unwrap();
    // A node that joins after the garbage is seen: the view is current.
    let _n2 = start_node(&server, node_config("n2")).await;
    wait_for("n2 listed", Duration::from_secs(5), || async {
        (api.cluster_status().await.ok()?.total_nodes >= 2).then_some(())
    })
    .await;
    let st = api.cluster_status().await.unwrap();
    assert_eq!(st.total_nodes, 2, "{st:?}");
    let mut ids: Vec<String> = api
        .nodes()
        .await
        .unwrap()
        .into_iter()
        .map(|n| n.node_id)
        .collect();
    ids.sort();
    assert_eq!(ids, ["n1", "n2"]);
    let d = discovery(&server).await;
    let ids: Vec<String> = d
        .nodes()
        .await
        .unwrap()
        .into_iter()
        .map(|n| n.node_id)
        .collect();
    assert_eq!(ids, ["n1", "n2"]);
}

/// The coordinator's discovery watch loses its consumer: the view comes
/// back, so a node that joins afterwards is seen and one that leaves is
/// gone.
#[tokio::test]
async fn the_cluster_view_survives_the_loss_of_its_watch() {
    let server = NatsServer::start();
    let client = server.client().await;
    let _c = start_coordinator(&server, "c1").await;
    let n1 = start_node(&server, node_config("n1")).await;
    let api = api_client(&server).await;
    assert!(delete_consumers(&client, "KV_weave-nodes").await > 0);
    let _n2 = start_node(&server, node_config("n2")).await;
    n1.handle.shutdown(Duration::from_secs(2)).await;
    let ids = wait_for(
        "the view has n2 and not n1",
        Duration::from_secs(20),
        || async {
            let mut ids: Vec<String> = api
                .nodes()
                .await
                .ok()?
                .into_iter()
                .map(|n| n.node_id)
                .collect();
            ids.sort();
            (ids == ["n2"]).then_some(ids)
        },
    )
    .await;
    assert_eq!(ids, ["n2"]);
}

/// The first audit event of `kind`, waited for up to `d`.
async fn first_audit(client: &async_nats::Client, kind: &str, d: Duration) -> serde_json::Value {
    wait_for(kind, d, || async {
        audit_events(client, kind).await.into_iter().next()
    })
    .await
}

/// Entries and heartbeats say whether a node is idle or busy, how long it
/// has been up, and whether it would take a task now (seed 003).
#[tokio::test]
async fn entries_say_idle_or_busy_uptime_and_availability() {
    let server = NatsServer::start();
    let nats = server.client().await;
    let mut cfg = node_config("n1");
    cfg.concurrency = 1;
    let _n = start_node(&server, cfg).await;
    let e = node_entry(&nats, "n1").await.expect("entry");
    assert_eq!(
        (e["state"].as_str(), e["available"].as_bool()),
        (Some("idle"), Some(true)),
        "{e}"
    );
    let mut beats = nats.subscribe("weave.node.n1.heartbeat").await.unwrap();
    run_sleep_task(&nats, "n1", "busy-1", 3000).await;
    let e = wait_for("entry busy", Duration::from_secs(5), || async {
        let e = node_entry(&nats, "n1").await?;
        (e["state"] == "busy").then_some(e)
    })
    .await;
    assert_eq!(e["available"], false, "its only slot is taken: {e}");
    assert!(e["uptime_s"].as_f64().unwrap() > 0.0, "{e}");
    let deadline = Instant::now() + Duration::from_secs(5);
    let beat = loop {
        assert!(Instant::now() < deadline, "no busy heartbeat");
        let m = tokio::time::timeout(Duration::from_secs(2), beats.next())
            .await
            .expect("a heartbeat")
            .expect("subscription open");
        let v: serde_json::Value = serde_json::from_slice(&m.payload).unwrap();
        if v["state"] == "busy" {
            break v;
        }
    };
    assert_eq!(beat["available"], false, "{beat}");
    let e = wait_for("idle again", Duration::from_secs(10), || async {
        let e = node_entry(&nats, "n1").await?;
        (e["state"] == "idle" && e["available"] == true).then_some(e)
    })
    .await;
    assert!(e["uptime_s"].as_f64().unwrap() >= 3.0, "{e}");
}

/// Static discovery (contract §1, seed 000): `[[static_node]]` in the
/// coordinator's and the sidecar's config, and `weave.api.nodes.register`
/// for hosts that cannot run a node; such entries have no TTL, run
/// nothing, and leave only by `nodes.unregister`.
#[tokio::test]
async fn static_nodes_are_listed_until_unregistered() {
    let server = NatsServer::start();
    let mut cfg = jetweave::CoordinatorConfig::new();
    cfg.node_ttl = Duration::from_secs(2);
    cfg.static_nodes = vec![jetweave::discovery::StaticNode {
        node_id: "legacy-1".into(),
        url: "http://10.0.0.5:9100/".into(),
    }];
    let _c = jetweave::Coordinator::start(server.client().await, cfg, jetweave::Shutdown::new())
        .await
        .unwrap();
    let _n = start_node(&server, node_config("n1")).await;
    let api = api_client(&server).await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("static.toml");
    std::fs::write(
        &file,
        "[[static_node]]\nnode_id = \"legacy-2\"\nurl = \"https://legacy2.internal/\"\n",
    )
    .unwrap();
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let _s = Proc::spawn(&[
        "--nats-url",
        &server.url(),
        "sidecar",
        "--listen",
        &listen,
        "--config",
        file.to_str().unwrap(),
    ]);
    let v = api_raw(
        &api,
        "nodes.register",
        json!({"node_id": "legacy-3", "url": "http://h3:80", "metadata": {"rack": "b"}}),
    )
    .await;
    assert_eq!(v["ok"], true, "{v}");
    let ids = |nodes: Vec<jetweave::protocol::NodeInfo>| {
        let mut v: Vec<String> = nodes.into_iter().map(|n| n.node_id).collect();
        v.sort();
        v
    };
    wait_for(
        "every static node listed",
        Duration::from_secs(10),
        || async {
            (ids(api.nodes().await.ok()?) == ["legacy-1", "legacy-2", "legacy-3", "n1"])
                .then_some(())
        },
    )
    .await;
    // No TTL: still there after node_ttl (2 s) + 1 s.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let nodes = api.nodes().await.unwrap();
    assert_eq!(
        ids(nodes.clone()),
        ["legacy-1", "legacy-2", "legacy-3", "n1"]
    );
    let l1 = nodes.iter().find(|n| n.node_id == "legacy-1").unwrap();
    assert_eq!(l1.url.as_deref(), Some("http://10.0.0.5:9100"));
    assert_eq!(
        (
            l1.max_concurrency,
            l1.available,
            l1.metadata["static"].clone()
        ),
        (0, false, json!(true))
    );
    let l3 = nodes.iter().find(|n| n.node_id == "legacy-3").unwrap();
    assert_eq!(l3.metadata["rack"], "b");
    // Refusals.
    for (ep, body, code) in [
        (
            "nodes.register",
            json!({"node_id": "n1", "url": "http://x"}),
            "already_exists",
        ),
        (
            "nodes.register",
            json!({"node_id": "bad id", "url": "http://x"}),
            "invalid_id",
        ),
        (
            "nodes.register",
            json!({"node_id": "x", "url": "ftp://x"}),
            "invalid_value",
        ),
        ("nodes.register", json!({"node_id": "x"}), "invalid_value"),
        (
            "nodes.unregister",
            json!({"node_id": "n1"}),
            "invalid_value",
        ),
        (
            "nodes.unregister",
            json!({"node_id": "ghost"}),
            "unknown_node",
        ),
    ] {
        let v = api_raw(&api, ep, body.clone()).await;
        assert_eq!(v["code"], code, "{ep} {body}: {v}");
    }
    let v = api_raw(&api, "nodes.unregister", json!({"node_id": "legacy-3"})).await;
    assert_eq!(v["ok"], true, "{v}");
    wait_for("legacy-3 gone", Duration::from_secs(5), || async {
        (ids(api.nodes().await.ok()?) == ["legacy-1", "legacy-2", "n1"]).then_some(())
    })
    .await;
}
