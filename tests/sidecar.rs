//! The HTTP sidecar (contract §9), as the real binary against real NATS.
mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use jetweave::config::ProcessSpec;
use serde_json::{json, Value};

struct Sidecar {
    _proc: Proc,
    base: String,
}

async fn sidecar(server: &NatsServer, extra: &[&str]) -> Sidecar {
    let (proc, base) = spawn_sidecar(server, extra).await;
    Sidecar { _proc: proc, base }
}

async fn call(method: &str, url: &str, body: Option<Value>) -> (u16, Value) {
    let http = reqwest::Client::new();
    let mut req = match method {
        "GET" => http.get(url),
        _ => http.post(url),
    };
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await.expect("http");
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

/// The agent ids `POST /agents/discover` answers for `filter`.
async fn discovered(base: &str, filter: Value) -> Vec<String> {
    let (st, v) = call("POST", &format!("{base}/agents/discover"), Some(filter)).await;
    assert_eq!(st, 200, "{v}");
    v["agents"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["agent_id"].as_str().unwrap().to_string())
        .collect()
}

async fn cluster(server: &NatsServer) -> (TestCoordinator, TestNode) {
    let c = start_coordinator(server, "c1").await;
    let mut cfg = node_config("n1");
    cfg.processes = vec![ProcessSpec::new("watcher", "echo")];
    let n = start_node(server, cfg).await;
    (c, n)
}

/// The seed `000` transport's curl examples, verbatim shapes.
#[tokio::test]
async fn per_node_routes_match_the_process_transport() {
    let server = NatsServer::start();
    let _cluster = cluster(&server).await;
    let sc = sidecar(&server, &["--node", "n1"]).await;
    let b = &sc.base;

    let (st, v) = call("GET", &format!("{b}/health"), None).await;
    assert_eq!(st, 200);
    assert_eq!(v["status"], "healthy");
    assert_eq!(v["node_id"], "n1");
    assert_eq!(v["process_count"], 1);
    let (st, v) = call("GET", &format!("{b}/status"), None).await;
    assert_eq!(st, 200);
    assert_eq!(v["node_id"], "n1");
    assert!(v["processes"].is_array());
    let (st, v) = call("GET", &format!("{b}/processes"), None).await;
    assert_eq!(st, 200);
    assert_eq!(v["node_id"], "n1");
    assert_eq!(v["processes"][0]["name"], "watcher");
    assert_eq!(v["processes"][0]["state"], "running");
    assert!(v["processes"][0]["process_id"].is_string());
    let (st, v) = call("GET", &format!("{b}/processes/watcher/status"), None).await;
    assert_eq!((st, v["name"].clone()), (200, json!("watcher")));
    let mut pid = v["process_id"].clone();
    for (verb, word, state) in [
        ("stop", "stopped", "stopped"),
        ("start", "started", "running"),
        ("restart", "restarted", "running"),
    ] {
        let (st, v) = call("POST", &format!("{b}/processes/watcher/{verb}"), None).await;
        assert_eq!(st, 200, "{verb}: {v}");
        assert_eq!(v["status"], word);
        assert_eq!(v["name"], "watcher");
        // The process really changed state (seen through the node).
        let (_, now) = call("GET", &format!("{b}/processes/watcher/status"), None).await;
        assert_eq!(now["state"], state, "after {verb}: {now}");
        if verb != "stop" {
            assert_ne!(now["process_id"], pid, "{verb} starts a new process");
        }
        pid = now["process_id"].clone();
    }
    let (st, v) = call(
        "POST",
        &format!("{b}/processes/watcher/event"),
        Some(json!({"trigger_id": "remote", "trigger_type": "remote", "payload": {"alert": "high_error_rate"}, "metadata": {}})),
    )
    .await;
    assert_eq!(st, 202, "{v}");
    assert_eq!(v["status"], "injected");
    assert_eq!(v["process"], "watcher");
    assert!(v["event_id"].is_string());
    // Cluster-wide form of the same routes.
    let (st, v) = call("GET", &format!("{b}/nodes/n1/health"), None).await;
    assert_eq!((st, v["node_id"].clone()), (200, json!("n1")));
    let (st, v) = call("GET", &format!("{b}/nodes/n1/status"), None).await;
    assert_eq!((st, v["node_id"].clone()), (200, json!("n1")));
    let (st, v) = call("GET", &format!("{b}/nodes/n1/processes"), None).await;
    assert_eq!(
        (st, v["processes"][0]["name"].clone()),
        (200, json!("watcher"))
    );
    let n = |p: &str| format!("{b}/nodes/n1/processes/watcher/{p}");
    let (st, v) = call("POST", &n("stop"), None).await;
    assert_eq!((st, v["status"].clone()), (200, json!("stopped")));
    let (_, v) = call("GET", &n("status"), None).await;
    assert_eq!(v["state"], "stopped");
    let (st, v) = call("POST", &n("event"), Some(json!({"payload": 1}))).await;
    assert_eq!(st, 409, "an event to a stopped process: {v}");
    let (st, v) = call("POST", &n("start"), None).await;
    assert_eq!((st, v["status"].clone()), (200, json!("started")));
    let (st, v) = call("POST", &n("restart"), None).await;
    assert_eq!((st, v["status"].clone()), (200, json!("restarted")));
    let (st, v) = call("POST", &n("event"), Some(json!({"payload": 1}))).await;
    assert_eq!((st, v["status"].clone()), (202, json!("injected")));
    let (_, v) = call("GET", &n("status"), None).await;
    assert_eq!(v["state"], "running");
    // 404s.
    for (m, path) in [
        ("GET", "/processes/ghost/status"),
        ("POST", "/processes/ghost/start"),
        ("POST", "/processes/ghost/event"),
        ("GET", "/nodes/ghost/health"),
        ("GET", "/tasks/nope"),
        ("GET", "/runs/nope"),
        ("GET", "/no/such/route"),
    ] {
        let body = if m == "POST" { Some(json!({})) } else { None };
        let (st, v) = call(m, &format!("{b}{path}"), body).await;
        assert_eq!(st, 404, "{m} {path}: {v}");
    }
    // 400s: invalid JSON and fields.
    let http = reqwest::Client::new();
    let r = http
        .post(format!("{b}/processes/watcher/event"))
        .body("{oops")
        .header("content-type", "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["code"], "invalid_json");
    let (st, v) = call(
        "POST",
        &format!("{b}/tasks/submit"),
        Some(json!({"task_data": {"type": "echo"}, "priority": "urgent"})),
    )
    .await;
    assert_eq!(st, 400, "{v}");
    assert!(v["error"].as_str().unwrap().contains("priority"));
    let (st, _) = call(
        "POST",
        &format!("{b}/agents/register"),
        Some(json!({"agent_id": "x"})),
    )
    .await;
    assert_eq!(st, 400);
    // 413: body over the 1 MiB limit.
    let big = "x".repeat(2 * 1024 * 1024);
    let r = http
        .post(format!("{b}/tasks/submit"))
        .body(big)
        .header("content-type", "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 413);
}

/// The seed `001` agent-coordinator curl examples, and an HTTP agent that
/// receives a task by capability.
#[tokio::test]
async fn agent_coordinator_routes_and_an_http_agent_gets_its_task() {
    let server = NatsServer::start();
    let _cluster = cluster(&server).await;
    let sc = sidecar(&server, &[]).await;
    let b = &sc.base;

    // A local agent that records what it receives.
    let seen = Arc::new(Mutex::new(Vec::<Value>::new()));
    let s2 = seen.clone();
    let app = axum::Router::new().route(
        "/",
        axum::routing::post(move |axum::Json(v): axum::Json<Value>| {
            let s = s2.clone();
            async move {
                s.lock().unwrap().push(v.clone());
                axum::Json(json!({"answer": 42, "prompt": v["payload"]["prompt"]}))
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let agent_url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });

    let (st, v) = call(
        "POST",
        &format!("{b}/agents/register"),
        Some(json!({
            "agent_id": "hermes-agent", "agent_type": "worker",
            "capabilities": ["data-processing", "analysis", "general"],
            "services": ["task-execution", "analysis"],
            "endpoints": {"http": agent_url}, "metadata": {"version": "1.0.0"}
        })),
    )
    .await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["status"], "success");
    assert_eq!(v["message"], "Agent hermes-agent registered successfully");
    assert_eq!(v["agent_id"], "hermes-agent");
    assert!(v["registered_at"].is_string());

    let ids = discovered(b, json!({"status": "active", "agent_type": "worker"})).await;
    assert!(ids.contains(&"hermes-agent".to_string()), "{ids:?}");
    let (_, v) = call(
        "POST",
        &format!("{b}/agents/discover"),
        Some(json!({"capabilities": ["analysis"]})),
    )
    .await;
    assert_eq!(v["count"], 1, "{v}");
    assert_eq!(v["agents"][0]["endpoints"]["http"], json!(agent_url));
    // Filters exclude, too.
    for filter in [
        json!({"capabilities": ["gpu"]}),
        json!({"capabilities": ["analysis", "gpu"]}),
        json!({"agent_type": "planner"}),
        json!({"status": "offline"}),
    ] {
        let ids = discovered(b, filter.clone()).await;
        assert!(
            !ids.contains(&"hermes-agent".to_string()),
            "{filter} matched: {ids:?}"
        );
    }
    // The agent is in discovery (`P-nodes`) like any node.
    let entry = node_entry(&server.client().await, "hermes-agent")
        .await
        .expect("agent in weave-nodes");
    assert_eq!(entry["url"], json!(agent_url));
    assert!(entry["capabilities"]
        .as_array()
        .unwrap()
        .contains(&json!("analysis")));
    let (st, _) = call("POST", &format!("{b}/agents/hermes-agent/heartbeat"), None).await;
    assert_eq!(st, 200);

    let (st, v) = call(
        "POST",
        &format!("{b}/tasks/submit"),
        Some(json!({
            "task_data": {"model": "llama2", "prompt": "test prompt"},
            "priority": "normal", "requirements": {"capabilities": ["data-processing"]}
        })),
    )
    .await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["status"], "success");
    assert_eq!(v["agent_id"], "hermes-agent");
    let id = v["task_id"].as_str().unwrap().to_string();
    let (st, r) = call("GET", &format!("{b}/tasks/{id}/result?wait_s=10"), None).await;
    assert_eq!(st, 200, "{r}");
    assert_eq!(r["status"], "completed");
    assert_eq!(r["result"], json!({"answer": 42, "prompt": "test prompt"}));
    assert_eq!(seen.lock().unwrap()[0]["payload"]["model"], "llama2");
    let (st, t) = call("GET", &format!("{b}/tasks/{id}"), None).await;
    assert_eq!((st, t["status"].clone()), (200, json!("completed")));

    // Counts come from the streams: right away, and the same on another
    // sidecar (as after a restart); the strategy is the configured one.
    let (st, v) = call("GET", &format!("{b}/tasks/status"), None).await;
    assert_eq!(st, 200, "{v}");
    assert!(v["stats"]["tasks_completed"].as_u64().unwrap() >= 1, "{v}");
    assert_eq!(
        v["stats"]["load_balancer_stats"]["strategy"],
        "least_connections"
    );
    let other = sidecar(&server, &["--agent-strategy", "round_robin"]).await;
    let (_, w) = call("GET", &format!("{}/tasks/status", other.base), None).await;
    for k in ["tasks_distributed", "tasks_completed", "tasks_failed"] {
        assert_eq!(v["stats"][k], w["stats"][k], "{k}: {v} vs {w}");
    }
    assert_eq!(w["stats"]["load_balancer_stats"]["strategy"], "round_robin");
    let score = &w["stats"]["load_balancer_stats"]["agent_health"]["hermes-agent"];
    assert!(score.as_f64().unwrap() > 0.5, "{w}");
    assert_eq!(v["status"], "success");
    let stats = &v["stats"];
    assert!(stats["tasks_distributed"].as_u64().unwrap() >= 1);
    for f in ["tasks_failed", "load_balancer_stats"] {
        assert!(stats.get(f).is_some(), "{f}");
    }
    for f in [
        "strategy",
        "active_agents",
        "total_assignments",
        "avg_agent_load",
    ] {
        assert!(stats["load_balancer_stats"].get(f).is_some(), "{f}");
    }
}

#[tokio::test]
async fn native_routes_auth_metrics_two_sidecars_and_nats_down() {
    let mut server = NatsServer::start();
    let (_c, _n) = cluster(&server).await;
    let a = sidecar(&server, &[]).await;
    let b = sidecar(&server, &["--auth-token", "s3cret"]).await;
    // /health on a sidecar without --node: its own health and what it sees.
    let (st, h) = call("GET", &format!("{}/health", a.base), None).await;
    assert_eq!((st, h["status"].as_str()), (200, Some("healthy")), "{h}");
    assert_eq!(
        (h["node_id"].clone(), h["healthy_nodes"].as_u64()),
        (json!(null), Some(1)),
        "{h}"
    );

    // Native task routes.
    let nats = server.client().await;
    let api = jetweave::Client::new(nats, "weave").unwrap();
    let mut req = jetweave::protocol::SubmitRequest {
        envelope: jetweave::protocol::TaskEnvelope::new("echo", json!({"n": 1})),
        ..Default::default()
    };
    req.envelope.id = Some("native-1".into());
    api.submit(&req).await.unwrap();
    let (st, r) = call(
        "GET",
        &format!("{}/tasks/native-1/result?wait_s=5", a.base),
        None,
    )
    .await;
    assert_eq!((st, r["result"].clone()), (200, json!({"n": 1})));
    let (st, r) = call("POST", &format!("{}/tasks/native-1/cancel", a.base), None).await;
    assert_eq!(st, 409, "{r}");
    // A successful cancel of a running task.
    req.envelope = jetweave::protocol::TaskEnvelope::new("sleep", json!({"ms": 20000}));
    req.envelope.id = Some("native-2".into());
    api.submit(&req).await.unwrap();
    wait_for("native-2 running", Duration::from_secs(5), || async {
        let (_, v) = call("GET", &format!("{}/tasks/native-2", a.base), None).await;
        (v["status"] == "running").then_some(())
    })
    .await;
    let (st, r) = call("POST", &format!("{}/tasks/native-2/cancel", a.base), None).await;
    assert_eq!(st, 200, "{r}");
    let (st, r) = call(
        "GET",
        &format!("{}/tasks/native-2/result?wait_s=5", a.base),
        None,
    )
    .await;
    assert_eq!((st, r["status"].clone()), (200, json!("cancelled")), "{r}");
    let (st, r) = call(
        "GET",
        &format!("{}/tasks/native-1/result?wait_s=abc", a.base),
        None,
    )
    .await;
    assert_eq!(st, 400, "{r}");
    let (st, v) = call("GET", &format!("{}/nodes", a.base), None).await;
    assert_eq!((st, v["nodes"][0]["node_id"].clone()), (200, json!("n1")));
    let (st, v) = call("POST", &format!("{}/nodes/n1/drain", a.base), None).await;
    assert_eq!((st, v["health"].clone()), (200, json!("draining")));
    let (st, v) = call("POST", &format!("{}/nodes/n1/resume", a.base), None).await;
    assert_eq!((st, v["health"].clone()), (200, json!("healthy")));
    let (st, v) = call(
        "POST",
        &format!("{}/runs", a.base),
        Some(json!({"run_id": "hr", "dataset_id": "d", "total_items": 2, "type": "count"})),
    )
    .await;
    assert_eq!(st, 201, "{v}");
    let (st, v) = call("GET", &format!("{}/runs/hr", a.base), None).await;
    assert_eq!((st, v["run_id"].clone()), (200, json!("hr")));
    let (st, v) = call(
        "POST",
        &format!("{}/runs", a.base),
        Some(json!({"dataset_id": "d", "total_items": 2, "shard_size": 0, "type": "count"})),
    )
    .await;
    assert_eq!(st, 400, "{v}");

    // Two sidecars agree.
    let http = reqwest::Client::new();
    let one: Value = http
        .get(format!("{}/cluster/status", a.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let two: Value = http
        .get(format!("{}/cluster/status", b.base))
        .bearer_auth("s3cret")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(one["total_nodes"], 1);
    assert_eq!(one["total_nodes"], two["total_nodes"]);
    assert_eq!(one["leader"], "c1");
    assert_eq!(two["leader"], "c1");

    // 401 without or with a wrong token.
    assert_eq!(
        http.get(format!("{}/cluster/status", b.base))
            .send()
            .await
            .unwrap()
            .status()
            .as_u16(),
        401
    );
    assert_eq!(
        http.get(format!("{}/cluster/status", b.base))
            .bearer_auth("wrong")
            .send()
            .await
            .unwrap()
            .status()
            .as_u16(),
        401
    );

    // 401 on POST routes and /metrics too; the right token passes.
    for (m, path) in [
        ("POST", "/nodes/n1/drain"),
        ("POST", "/runs"),
        ("POST", "/tasks/submit"),
        ("POST", "/agents/register"),
        ("GET", "/metrics"),
        ("GET", "/health"),
    ] {
        let r = http
            .request(m.parse().unwrap(), format!("{}{path}", b.base))
            .json(&json!({}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 401, "{m} {path}");
    }
    assert_eq!(
        node_entry(&server.client().await, "n1").await.unwrap()["health"],
        "healthy",
        "a refused drain changed nothing"
    );
    let r = http
        .get(format!("{}/metrics", b.base))
        .bearer_auth("s3cret")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);

    // A dead letter for jetweave_dlq_depth.
    let mut dead = jetweave::protocol::SubmitRequest {
        envelope: jetweave::protocol::TaskEnvelope::new("fail", json!({"times": -1})),
        ..Default::default()
    };
    dead.envelope.max_attempts = Some(1);
    let dead_id = api.submit(&dead).await.unwrap().task_id;
    api.wait(&dead_id, Duration::from_secs(10)).await.unwrap();

    // /metrics: Prometheus text that counts what we did.
    let text = http
        .get(format!("{}/metrics", a.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let line = text
        .lines()
        .find(|l| {
            l.starts_with("jetweave_sidecar_requests_total")
                && l.contains("route=\"/nodes/{node}/drain\"")
        })
        .unwrap_or_else(|| panic!("no drain counter in\n{text}"));
    assert!(line.ends_with(" 1"), "{line}");
    assert!(text.contains("jetweave_sidecar_nats_request_seconds_bucket"));
    assert!(
        text.contains("jetweave_nodes{health=\"healthy\"} 1"),
        "{text}"
    );
    // Contract §14 families read from the streams and discovery.
    let sample = |name: &str, labels: &[&str]| -> Option<String> {
        text.lines()
            .find(|l| l.starts_with(&format!("{name}{{")) && labels.iter().all(|x| l.contains(x)))
            .map(|l| l.rsplit_once(' ').unwrap().1.to_string())
    };
    for p in ["critical", "high", "normal", "low"] {
        let v = sample(
            "jetweave_queue_pending",
            &["queue=\"default\"", &format!("priority=\"{p}\"")],
        );
        assert_eq!(v.as_deref(), Some("0"), "{p}: {text}");
    }
    assert_eq!(
        sample("jetweave_dlq_depth", &["queue=\"default\""]).as_deref(),
        Some("1"),
        "{text}"
    );
    assert!(
        sample("jetweave_node_active_tasks", &["node=\"n1\""]).is_some(),
        "{text}"
    );
    for l in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let (name, value) = l.rsplit_once(' ').expect("metric line");
        assert!(!name.is_empty());
        value
            .parse::<f64>()
            .unwrap_or_else(|_| panic!("bad sample {l}"));
    }

    // NATS gone: 503, not a hang or a 500.
    server.kill();
    let (st, v) = call("GET", &format!("{}/cluster/status", a.base), None).await;
    assert_eq!(st, 503, "{v}");
    let (st, _) = call("GET", &format!("{}/nodes/n1/health", a.base), None).await;
    assert_eq!(st, 503);
}

/// `jetweave node --http ADDR` embeds the sidecar for that node and
/// advertises it as the node's url.
#[tokio::test]
async fn a_node_can_embed_its_sidecar() {
    let server = NatsServer::start();
    let _c = start_coordinator(&server, "c1").await;
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let _node = Proc::spawn(&[
        "--nats-url",
        &server.url(),
        "node",
        "--node-id",
        "emb",
        "--http",
        &listen,
    ]);
    let base = format!("http://{listen}");
    let v: Value = wait_for("embedded sidecar", Duration::from_secs(15), || async {
        let r = reqwest::get(format!("{base}/health")).await.ok()?;
        if r.status() != 200 {
            return None;
        }
        r.json().await.ok()
    })
    .await;
    assert_eq!(v["node_id"], "emb");
    let api = api_client(&server).await;
    let info = api
        .nodes()
        .await
        .unwrap()
        .into_iter()
        .find(|n| n.node_id == "emb")
        .unwrap();
    assert_eq!(info.url.as_deref(), Some(base.as_str()));
}

#[tokio::test]
async fn openapi_document_lists_every_route() {
    let server = NatsServer::start();
    let sc = sidecar(&server, &["--node", "n1"]).await;
    let (st, doc) = call("GET", &format!("{}/openapi.json", sc.base), None).await;
    assert_eq!(st, 200);
    assert!(doc["openapi"].as_str().unwrap().starts_with('3'));
    let paths = doc["paths"].as_object().unwrap();
    for p in [
        "/health",
        "/status",
        "/processes",
        "/processes/{name}/status",
        "/processes/{name}/{verb}",
        "/nodes/{node}/health",
        "/agents/register",
        "/agents/discover",
        "/agents/{id}/heartbeat",
        "/tasks/submit",
        "/tasks/status",
        "/tasks/{id}",
        "/tasks/{id}/result",
        "/tasks/{id}/cancel",
        "/cluster/status",
        "/nodes",
        "/nodes/{node}/drain",
        "/nodes/{node}/resume",
        "/runs",
        "/runs/{id}",
        "/metrics",
        "/ui",
        "/ui/stream",
    ] {
        assert!(
            paths.contains_key(p),
            "{p} missing from the OpenAPI document"
        );
    }
}

/// A registered agent that stops heartbeating leaves discovery.
#[tokio::test]
async fn a_silent_agent_expires() {
    let server = NatsServer::start();
    let _c = start_coordinator(&server, "c1").await;
    // 1 s; 3 s on a test cluster, where an R3 write or a discover under
    // the suite's load can take long enough for a beat to miss a 1 s TTL.
    let ttl = if test_cluster_size() > 1 { 3 } else { 1 };
    let sc = sidecar(&server, &["--agent-ttl", &ttl.to_string()]).await;
    let b = &sc.base;
    let (st, _) = call(
        "POST",
        &format!("{b}/agents/register"),
        Some(json!({
            "agent_id": "quiet", "capabilities": ["x"], "endpoints": {"http": "http://127.0.0.1:9"}
        })),
    )
    .await;
    assert_eq!(st, 200);
    let (_, v) = call("POST", &format!("{b}/agents/discover"), Some(json!({}))).await;
    assert_eq!(v["count"], 1, "{v}");
    // Heartbeats keep it...
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let (st, _) = call("POST", &format!("{b}/agents/quiet/heartbeat"), None).await;
        assert_eq!(st, 200);
    }
    let (_, v) = call("POST", &format!("{b}/agents/discover"), Some(json!({}))).await;
    assert_eq!(v["count"], 1, "heartbeats keep the agent: {v}");
    // ...silence drops it.
    wait_for("agent gone", Duration::from_secs(4 + ttl), || async {
        let (_, v) = call("POST", &format!("{b}/agents/discover"), Some(json!({}))).await;
        (v["count"] == 0).then_some(())
    })
    .await;
    let (st, _) = call("POST", &format!("{b}/agents/quiet/heartbeat"), None).await;
    assert_eq!(st, 404);
}

/// A local agent: answers `{"agent": name, "payload": ...}`, after `delay`.
async fn agent_server(name: &'static str, delay: Duration) -> String {
    let app = axum::Router::new().route(
        "/",
        axum::routing::post(move |axum::Json(v): axum::Json<Value>| async move {
            tokio::time::sleep(delay).await;
            axum::Json(json!({"agent": name, "payload": v["payload"]}))
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    url
}

async fn register(base: &str, id: &str, caps: &[&str], url: &str) {
    let body = json!({"agent_id": id, "capabilities": caps, "endpoints": {"http": url}});
    let (st, v) = call("POST", &format!("{base}/agents/register"), Some(body)).await;
    assert_eq!(st, 200, "{v}");
}

async fn submit_needing(base: &str, caps: &[&str], n: u32) -> String {
    let body = json!({"task_data": {"n": n}, "requirements": {"capabilities": caps}});
    let (st, v) = call("POST", &format!("{base}/tasks/submit"), Some(body)).await;
    assert_eq!(st, 200, "{v}");
    v["task_id"].as_str().unwrap().to_string()
}

async fn result_of(base: &str, id: &str) -> Value {
    let (st, r) = call("GET", &format!("{base}/tasks/{id}/result?wait_s=25"), None).await;
    assert_eq!(st, 200, "{r}");
    r
}

/// Seed 001: a task for a capability no agent has waits until one
/// registers; registrations live in NATS, so an agent outlives the sidecar
/// it registered with (another sidecar takes over its bridge).
#[tokio::test]
async fn agent_tasks_wait_for_a_capable_agent_and_agents_outlive_their_sidecar() {
    let server = NatsServer::start();
    let (_c, _n) = cluster(&server).await;
    let a = sidecar(&server, &[]).await;
    let b = sidecar(&server, &[]).await;
    let id = submit_needing(&b.base, &["vision"], 1).await;
    let (_, t) = call("GET", &format!("{}/tasks/{id}", b.base), None).await;
    assert_eq!(t["status"], "queued", "{t}");
    let url = agent_server("eye", Duration::ZERO).await;
    register(&a.base, "eye", &["vision"], &url).await;
    let r = result_of(&b.base, &id).await;
    assert_eq!(
        (r["status"].as_str(), r["result"]["agent"].as_str()),
        (Some("completed"), Some("eye")),
        "{r}"
    );

    // The sidecar that registered it goes away: its bridge with it.
    let t0 = std::time::Instant::now();
    drop(a);
    let (st, _) = call("POST", &format!("{}/agents/eye/heartbeat", b.base), None).await;
    assert_eq!(
        st, 200,
        "the registration is in NATS, not in the dead sidecar"
    );
    let id = submit_needing(&b.base, &["vision"], 2).await;
    let r = result_of(&b.base, &id).await;
    assert_eq!(r["result"]["agent"], "eye", "{r}");
    eprintln!("served again {:?} after its sidecar died", t0.elapsed());
}

/// Seed 001: a task taken by an agent that dies goes to another agent with
/// the capabilities.
#[tokio::test]
async fn a_dead_agents_task_goes_to_another_capable_agent() {
    let server = NatsServer::start();
    let (_c, _n) = cluster(&server).await;
    let sc = sidecar(&server, &["--agent-ttl", "2"]).await;
    let b = &sc.base;
    let stuck = agent_server("stuck", Duration::from_secs(60)).await;
    register(b, "stuck", &["vision"], &stuck).await;
    let id = submit_needing(b, &["vision"], 1).await;
    wait_for("taken by stuck", Duration::from_secs(5), || async {
        let (_, t) = call("GET", &format!("{b}/tasks/{id}"), None).await;
        (t["status"] == "running").then_some(())
    })
    .await;
    let url = agent_server("fresh", Duration::ZERO).await;
    register(b, "fresh", &["vision"], &url).await;
    // "fresh" heartbeats; "stuck" falls silent and expires.
    let hb = {
        let b = b.clone();
        tokio::spawn(async move {
            loop {
                call("POST", &format!("{b}/agents/fresh/heartbeat"), None).await;
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        })
    };
    let r = result_of(b, &id).await;
    hb.abort();
    assert_eq!(
        (r["status"].as_str(), r["result"]["agent"].as_str()),
        (Some("completed"), Some("fresh")),
        "{r}"
    );
}

/// The sidecar's agent-bridge loop comes back after the NATS server is
/// killed and restarted: a task waiting for a capability is handed to an
/// agent that registers afterwards.
#[tokio::test]
async fn the_agent_bridge_loop_survives_a_server_restart() {
    let mut server = NatsServer::start();
    let sc = sidecar(&server, &[]).await;
    server.restart();
    let (_c, _n) = cluster(&server).await;
    let b = &sc.base;
    let id = wait_for("sidecar back on NATS", Duration::from_secs(20), || async {
        let body = json!({"task_data": {"n": 1}, "requirements": {"capabilities": ["ear"]}});
        let (st, v) = call("POST", &format!("{b}/tasks/submit"), Some(body)).await;
        (st == 200).then(|| v["task_id"].as_str().unwrap().to_string())
    })
    .await;
    let url = agent_server("ear", Duration::ZERO).await;
    register(b, "ear", &["ear"], &url).await;
    let r = result_of(b, &id).await;
    assert_eq!(r["result"]["agent"], "ear", "{r}");
}

/// One sample of `name` with all `labels` in a Prometheus text page.
fn sample(text: &str, name: &str, labels: &[&str]) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(&format!("{name}{{")) && labels.iter().all(|x| l.contains(x)))
        .and_then(|l| l.rsplit_once(' ')?.1.parse().ok())
}

async fn scrape(base: &str) -> Option<String> {
    let r = reqwest::get(format!("{base}/metrics")).await.ok()?;
    r.text().await.ok()
}

/// Waits until `base` counts `want` tasks of `(queue, type, status)`.
async fn counted(base: &str, queue: &str, task_type: &str, status: &str, want: f64) {
    let labels = [
        format!("queue=\"{queue}\""),
        format!("type=\"{task_type}\""),
        format!("status=\"{status}\""),
    ];
    let labels: Vec<&str> = labels.iter().map(String::as_str).collect();
    wait_for(
        &format!("{base} counting {want} {queue}/{task_type} {status}"),
        Duration::from_secs(10),
        || async {
            let text = scrape(base).await?;
            (sample(&text, "jetweave_tasks_total", &labels) == Some(want)).then_some(())
        },
    )
    .await;
}

/// `jetweave_tasks_total` and `jetweave_task_duration_seconds` come from the
/// result stream: a second sidecar and a restarted one count the same, and
/// counting goes on after the server restarts and after the sidecars'
/// consumers are deleted.
#[tokio::test]
async fn task_counts_come_from_the_result_stream() {
    let mut server = NatsServer::start();
    let _c = start_coordinator(&server, "c1").await;
    let _n = start_node(&server, node_config("n1")).await;
    let client = server.client().await;
    let api = api_client(&server).await;
    let a = sidecar(&server, &[]).await;
    let publish = |id: String, body: Value| {
        let client = client.clone();
        async move { publish_task(&client, "weave.tasks.default.normal", Some(&id), body).await }
    };
    for i in 0..3 {
        publish(format!("ok{i}"), json!({"type": "echo"})).await;
    }
    publish(
        "bad".into(),
        json!({"type": "fail", "payload": {"times": -1}, "max_attempts": 2, "backoff_s": [0.1]}),
    )
    .await;
    for id in ["ok0", "ok1", "ok2", "bad"] {
        api.wait(id, Duration::from_secs(10)).await.unwrap();
    }
    counted(&a.base, "default", "echo", "completed", 3.0).await;
    counted(&a.base, "default", "fail", "dead", 1.0).await;
    let text = scrape(&a.base).await.unwrap();
    let n = sample(
        &text,
        "jetweave_task_duration_seconds_count",
        &["type=\"echo\""],
    );
    assert_eq!(n, Some(3.0), "{text}");
    let retried = sample(&text, "jetweave_task_retries_total", &["type=\"fail\""]);
    assert_eq!(retried, Some(1.0), "the dead task's first attempt: {text}");
    let age = sample(
        &text,
        "jetweave_node_heartbeat_age_seconds",
        &["node=\"n1\""],
    );
    assert!(age.is_some_and(|a| (0.0..5.0).contains(&a)), "{text}");

    // A second sidecar, started after the fact, counts the same.
    let b = sidecar(&server, &[]).await;
    counted(&b.base, "default", "echo", "completed", 3.0).await;
    counted(&b.base, "default", "fail", "dead", 1.0).await;
    drop(b);

    // The server restarts and the consumers are deleted: a reads on.
    server.restart();
    let client = server.client().await;
    let api = api_client(&server).await;
    wait_for(
        "the result stream back",
        Duration::from_secs(10),
        || async {
            async_nats::jetstream::new(client.clone())
                .get_stream("WEAVE_RESULTS")
                .await
                .ok()
        },
    )
    .await;
    delete_consumers(&client, "WEAVE_RESULTS").await;
    publish_task(
        &client,
        "weave.tasks.default.normal",
        Some("ok3"),
        json!({"type": "echo"}),
    )
    .await;
    api.wait("ok3", Duration::from_secs(15)).await.unwrap();
    counted(&a.base, "default", "echo", "completed", 4.0).await;
    counted(&a.base, "default", "fail", "dead", 1.0).await;
    // Its loops (the tally among them) end with it: SIGTERM, exit 0.
    let mut a = a;
    a._proc.signal(libc::SIGTERM);
    let st = a
        ._proc
        .wait_exit(Duration::from_secs(10))
        .expect("the sidecar exits");
    assert!(st.success(), "{st:?}");
}
