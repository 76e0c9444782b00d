//! Least privilege (contract §13) against a real nats-server running the
//! config `jetweave auth init` writes: anonymous connections are refused,
//! every role does its work with its own key, and what a role may not do
//! (a node draining its neighbour, writing its discovery key, creating a
//! run; a submitter draining) is refused by the server and reported to the
//! caller. The server's log must show no other refusal: the generated
//! permissions cover everything the main flows use. Also: the sidecar over
//! HTTPS, agent endpoints limited to allowed hosts, `jetweave up --secure`.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::*;
use jetweave::connect::NatsOptions;
use jetweave::error::ErrorKind;
use serde_json::{json, Value};

fn jw(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_jetweave"))
        .args(args)
        .output()
        .expect("run jetweave")
}

fn key(dir: &Path, user: &str) -> String {
    dir.join(format!("{user}.nk")).display().to_string()
}

/// Connects as `user` of `dir`.
async fn connect_as(server: &NatsServer, dir: &Path, user: &str) -> async_nats::Client {
    let mut o = NatsOptions::new(server.url());
    o.nkey = Some(PathBuf::from(key(dir, user)));
    o.connect(user).await.expect("connect with key")
}

/// `jetweave auth init` into a temp dir: the files, their modes.
fn auth_init(nodes: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display().to_string();
    let o = jw(&[
        "auth", "init", "--dir", &d, "--nodes", nodes, "--pools", "p:2",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    for user in [
        "coordinator",
        "sidecar",
        "submitter",
        "operator",
        "node-p-2",
    ] {
        let meta = std::fs::metadata(dir.path().join(format!("{user}.nk"))).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600, "{user}.nk");
    }
    dir
}

/// A server running the config of `auth_init(nodes)` and a coordinator
/// with its key.
fn secured(nodes: &str) -> (tempfile::TempDir, NatsServer, Proc) {
    let auth = auth_init(nodes);
    let server = NatsServer::start_secured(auth.path());
    let url = server.url();
    let ck = key(auth.path(), "coordinator");
    let coordinator = Proc::spawn(&[
        "--nats-url",
        &url,
        "--nkey",
        &ck,
        "coordinator",
        "--id",
        "c1",
        "--lease-ttl",
        "2",
    ]);
    (auth, server, coordinator)
}

/// A `jetweave node` with its own key, returned once it is in discovery.
async fn secure_node(server: &NatsServer, dir: &Path, id: &str, op: &jetweave::Client) -> Proc {
    let k = key(dir, &format!("node-{id}"));
    let url = server.url();
    let p = Proc::spawn(&[
        "--nats-url",
        &url,
        "--nkey",
        &k,
        "node",
        "--node-id",
        id,
        "--node-ttl",
        "2",
        "--heartbeat-interval",
        "0.5",
        "--ack-wait",
        "2",
    ]);
    wait_for(
        &format!("{id} registered"),
        Duration::from_secs(20),
        || async {
            let nodes = op.nodes().await.ok()?;
            nodes.iter().any(|n| n.node_id == id).then_some(())
        },
    )
    .await;
    p
}

#[tokio::test]
async fn each_role_does_its_work_and_nothing_more() {
    let (auth, server, _coordinator) = secured("n1,n2");
    let dir = auth.path();
    let url = server.url();

    // Anonymous: refused, by the library and by the CLI.
    assert!(async_nats::connect(url.clone()).await.is_err());
    let o = jw(&["--nats-url", &url, "--connect-wait", "0.5", "nodes"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("refused the credentials"));

    let op = jetweave::Client::new(connect_as(&server, dir, "operator").await, "weave").unwrap();
    let _n1 = secure_node(&server, dir, "n1", &op).await;
    let _n2 = secure_node(&server, dir, "n2", &op).await;

    // The submitter: tasks by the API and by publishing, results.
    let sub = jetweave::Client::new(connect_as(&server, dir, "submitter").await, "weave").unwrap();
    for i in 0..6 {
        let req: jetweave::protocol::SubmitRequest =
            serde_json::from_value(json!({"type": "echo", "payload": i})).unwrap();
        let r = sub.submit(&req).await.expect("submit as submitter");
        let res = sub.wait(&r.task_id, Duration::from_secs(15)).await.unwrap();
        assert_eq!(res.result, json!(i));
    }
    let published = publish_task(
        sub.nats(),
        "weave.tasks.default.high",
        Some("pub-1"),
        json!({"type": "echo", "payload": "by publish"}),
    )
    .await;
    assert!(published > 0);
    let res = sub.wait("pub-1", Duration::from_secs(15)).await.unwrap();
    assert_eq!(res.result, json!("by publish"));

    // The operator creates a run: shards, checkpoints and shard_done on
    // both nodes.
    let run = json!({"run_id": "sec", "dataset_id": "d", "total_items": 8, "shard_size": 2,
        "type": "count", "payload": {"item_ms": 20}});
    op.create_run(&run).await.expect("run as operator");
    let done = op
        .wait_run("sec", Duration::from_secs(30), |_, _| {})
        .await
        .expect("run completes");
    assert_eq!(done["status"], "completed", "{done}");
    let cps = jetweave::checkpoint::Checkpoints::open(op.nats().clone(), op.subjects(), 5, 1)
        .await
        .unwrap()
        .all("sec:0:slice:0:2")
        .await
        .unwrap();
    assert!(!cps.is_empty(), "the node wrote its checkpoints");

    refused_as_node(&server, dir, &op).await;
    refused_as_submitter(&url, dir, &op).await;

    // The operator drains and resumes.
    let opk = key(dir, "operator");
    for (verb, health) in [("drain", "draining"), ("resume", "healthy")] {
        let o = jw(&["--nats-url", &url, "--nkey", &opk, verb, "n2", "--json"]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let v = op.control("n2", "status", &json!({})).await.unwrap();
        assert_eq!(v["health"], health);
    }

    // Nothing else was refused: the flows above needed no permission the
    // generated config lacks.
    let mut seen: Vec<(String, String)> = NatsServer::violations(dir);
    seen.sort();
    seen.dedup();
    let expected: Vec<(String, String)> = [
        ("Publish", "$KV.weave-nodes.n2"),
        ("Publish", "weave.api.runs.create"),
        ("Publish", "weave.ctl.all.drain"),
        ("Publish", "weave.ctl.n2.drain"),
    ]
    .iter()
    .map(|(k, s)| (k.to_string(), s.to_string()))
    .collect();
    assert_eq!(seen, expected, "refusals the server logged");
}

/// As node n1: draining n2 or all nodes, writing n2's discovery entry and
/// creating a run are refused, the caller is told, and n2 stays healthy.
async fn refused_as_node(server: &NatsServer, dir: &Path, op: &jetweave::Client) {
    let n1 = jetweave::Client::new(connect_as(server, dir, "node-n1").await, "weave").unwrap();
    let e = n1.control("n2", "drain", &json!({})).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Forbidden, "{e}");
    assert_eq!(e.code(), "permission_denied");
    let e = n1
        .broadcast("drain", Duration::from_secs(2))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Forbidden, "{e}");
    let e = n1
        .create_run(
            &json!({"dataset_id": "x", "total_items": 1, "shard_size": 1,
        "type": "echo"}),
        )
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Forbidden, "{e}");

    let since = Instant::now();
    let since_wall = time::OffsetDateTime::now_utc();
    let js = async_nats::jetstream::new(n1.nats().clone());
    let put = tokio::time::timeout(Duration::from_secs(3), async {
        js.publish("$KV.weave-nodes.n2", "{}".into())
            .await?
            .await
            .map(|_| ())
            .map_err(Into::into)
    })
    .await;
    assert!(
        !matches!(put, Ok(Ok::<(), async_nats::Error>(()))),
        "n1 wrote n2's entry"
    );
    let denied = wait_for(
        "the refusal of n2's key",
        Duration::from_secs(5),
        || async { jetweave::connect::permission_denied("$KV.weave-nodes.n2", since) },
    )
    .await;
    assert!(denied.contains("Permissions Violation"), "{denied}");

    // n2 is healthy, and its entry is n2's own (a heartbeat after this).
    let v = op.control("n2", "status", &json!({})).await.unwrap();
    assert_eq!(v["health"], "healthy");
    let entry = wait_for("n2's entry refreshed", Duration::from_secs(5), || async {
        let nodes = op.nodes().await.ok()?;
        let n = nodes.into_iter().find(|n| n.node_id == "n2")?;
        (ts(&json!(n.last_heartbeat_at)) > since_wall).then_some(n)
    })
    .await;
    assert_eq!(entry.health, jetweave::protocol::Health::Healthy);
}

/// As the submitter, the CLI's drain is refused with a clear message.
async fn refused_as_submitter(url: &str, dir: &Path, op: &jetweave::Client) {
    let k = key(dir, "submitter");
    let o = jw(&["--nats-url", url, "--nkey", &k, "drain", "n2"]);
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("permission denied"), "{err}");
    let v = op.control("n2", "status", &json!({})).await.unwrap();
    assert_eq!(v["health"], "healthy");
}

/// A self-signed certificate for 127.0.0.1 in `dir`: (cert, key) paths.
fn self_signed(dir: &Path) -> (String, String) {
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["127.0.0.1".into(), "localhost".into()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let (c, k) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&c, cert.pem()).unwrap();
    std::fs::write(&k, key.serialize_pem()).unwrap();
    (c.display().to_string(), k.display().to_string())
}

async fn sidecar_proc(url: &str, extra: &[&str]) -> (Proc, u16) {
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let mut args = vec!["--nats-url", url, "sidecar", "--listen", &listen];
    args.extend_from_slice(extra);
    let p = Proc::spawn(&args);
    wait_for("sidecar listening", Duration::from_secs(15), || async {
        tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .ok()
    })
    .await;
    (p, port)
}

/// HTTPS with the bearer token; plain HTTP to the same port fails.
#[tokio::test]
async fn the_sidecar_serves_https() {
    let server = NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = self_signed(dir.path());
    let (_s, port) = sidecar_proc(
        &server.url(),
        &[
            "--tls-cert",
            &cert,
            "--tls-key",
            &key,
            "--auth-token",
            "t0k",
        ],
    )
    .await;
    let ca = reqwest::Certificate::from_pem(&std::fs::read(&cert).unwrap()).unwrap();
    let https = reqwest::Client::builder()
        .add_root_certificate(ca)
        .build()
        .unwrap();
    let r = https
        .get(format!("https://127.0.0.1:{port}/openapi.json"))
        .bearer_auth("t0k")
        .send()
        .await
        .expect("HTTPS request");
    assert_eq!(r.status().as_u16(), 200);
    let r = https
        .get(format!("https://127.0.0.1:{port}/openapi.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401, "the token is still required");
    let plain = reqwest::get(format!("http://127.0.0.1:{port}/openapi.json")).await;
    assert!(
        plain.map(|r| !r.status().is_success()).unwrap_or(true),
        "plain HTTP must not be served"
    );
}

async fn register(port: u16, agent: &str, endpoint: &str) -> (u16, Value) {
    let r = reqwest::Client::new()
        .post(format!("http://127.0.0.1:{port}/agents/register"))
        .json(&json!({"agent_id": agent, "endpoints": {"http": endpoint}}))
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
}

/// Agent endpoints: loopback and private ranges by default; with
/// `--agent-allow`, only what it names. Nothing is contacted to decide.
#[tokio::test]
async fn agent_endpoints_are_limited_to_allowed_hosts() {
    let server = NatsServer::start();
    let (_d, port) = sidecar_proc(&server.url(), &[]).await;
    for ok in [
        "http://127.0.0.1:9/run",
        "http://localhost:9/run",
        "http://10.1.2.3/run",
    ] {
        let (status, body) = register(port, "a1", ok).await;
        assert_eq!(status, 200, "{ok}: {body}");
    }
    for refused in [
        "http://169.254.169.254/latest",
        "http://8.8.8.8/",
        "http://[2001:db8::1]/",
    ] {
        let (status, body) = register(port, "a2", refused).await;
        assert_eq!(status, 403, "{refused}: {body}");
        assert_eq!(body["code"], "not_allowed");
    }
    let (_s, port) = sidecar_proc(
        &server.url(),
        &["--agent-allow", "10.9.0.0/16,agents.example"],
    )
    .await;
    assert_eq!(register(port, "b1", "http://10.9.1.1:80/").await.0, 200);
    assert_eq!(register(port, "b2", "http://agents.example/x").await.0, 200);
    assert_eq!(register(port, "b3", "http://127.0.0.1:9/").await.0, 403);
    let o = jw(&["sidecar", "--agent-allow", "not a host!"]);
    assert_eq!(
        o.status.code(),
        Some(1),
        "a bad --agent-allow is refused at start"
    );
}

/// `jetweave up --secure`: anonymous refused; the README tour's commands
/// work with the operator's key.
#[tokio::test]
async fn up_secure_runs_every_part_with_its_key() {
    let data = tempfile::tempdir().unwrap();
    let (port, mon, http) = (free_port(), free_port(), free_port());
    nats_server_bin();
    let mut up = Command::new(env!("CARGO_BIN_EXE_jetweave"))
        .args(["up", "--secure", "--data-dir"])
        .arg(data.path())
        .args([
            "--nats-port",
            &port.to_string(),
            "--monitor-port",
            &mon.to_string(),
        ])
        .args(["--http", &format!("127.0.0.1:{http}")])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let url = format!("nats://127.0.0.1:{port}");
    let opk = data.path().join("auth/operator.nk").display().to_string();
    let v = wait_for("a task as the operator", Duration::from_secs(40), || {
        let (url, opk) = (url.clone(), opk.clone());
        async move {
            let o = jw(&[
                "--nats-url",
                &url,
                "--nkey",
                &opk,
                "--connect-wait",
                "0.3",
                "submit",
                "echo",
                "--payload",
                "7",
                "--wait",
                "--json",
                "--timeout",
                "5",
            ]);
            o.status
                .success()
                .then(|| serde_json::from_slice::<Value>(&o.stdout).ok())
                .flatten()
        }
    })
    .await;
    assert_eq!(v["result"], 7);
    let o = jw(&["--nats-url", &url, "--connect-wait", "0.3", "nodes"]);
    assert_eq!(o.status.code(), Some(1), "anonymous is refused");
    let o = jw(&[
        "--nats-url",
        &url,
        "--nkey",
        &opk,
        "drain",
        "local",
        "--json",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    interrupt(up.id());
    let status = wait_for("up stops", Duration::from_secs(20), || {
        let s = up.try_wait().ok().flatten();
        async move { s }
    })
    .await;
    assert!(status.success());
}

/// SIGINT, like Ctrl-C.
fn interrupt(pid: u32) {
    let _ = Command::new("kill")
        .args(["-INT", &pid.to_string()])
        .status();
}

/// The paths off the happy one, secured: retries and a dead letter, a
/// delayed task, `tasks.get` of a running task (the coordinator asks the
/// nodes), cancel, event injection into a node's process, the sidecar with
/// its key (a drain over HTTP, an agent bridge), and a node killed
/// mid-task (its task and shards move). The server logs no refusal.
#[tokio::test]
async fn failure_paths_need_no_more_permissions() {
    let (auth, server, _c) = secured("n1,n2");
    let dir = auth.path();
    let url = server.url();
    let op = jetweave::Client::new(connect_as(&server, dir, "operator").await, "weave").unwrap();
    let conf = dir.join("n1.toml");
    std::fs::write(
        &conf,
        "[[process]]\nname = \"watcher\"\nhandler = \"echo\"\nautostart = true\n",
    )
    .unwrap();
    let n1k = key(dir, "node-n1");
    let _n1 = Proc::spawn(&[
        "--nats-url",
        &url,
        "--nkey",
        &n1k,
        "node",
        "--node-id",
        "n1",
        "--node-ttl",
        "2",
        "--heartbeat-interval",
        "0.5",
        "--ack-wait",
        "2",
        "--config",
        conf.to_str().unwrap(),
    ]);
    let mut n2 = secure_node(&server, dir, "n2", &op).await;
    let sub = jetweave::Client::new(connect_as(&server, dir, "submitter").await, "weave").unwrap();
    let submit = |body: Value| {
        let sub = sub.clone();
        async move {
            let req: jetweave::protocol::SubmitRequest = serde_json::from_value(body).unwrap();
            sub.submit(&req).await.expect("submit").task_id
        }
    };
    // Retries, then a dead letter.
    let t = submit(
        json!({"type": "fail", "payload": {"times": -1}, "max_attempts": 2,
        "backoff_s": [0.2]}),
    )
    .await;
    let r = sub.wait(&t, Duration::from_secs(20)).await.unwrap();
    assert_eq!((r.status.as_str(), r.attempts), ("dead", 2));
    // The operator keeps a schedule (the coordinator stores and purges it).
    let spec = serde_json::from_value(json!({"schedule_id": "sec", "every_s": 60,
        "type": "echo"}))
    .unwrap();
    op.schedule_create(&spec)
        .await
        .expect("schedule as operator");
    assert_eq!(op.schedules().await.unwrap().len(), 1);
    op.schedule_delete("sec").await.expect("delete as operator");
    // A limit set by the operator holds a submitter's task back: the nodes
    // read the limit, take and give back slots and tokens, and answer the
    // lookup of a throttled task with their own keys.
    let spec = serde_json::from_value(json!({"limit_id": "sec", "type": "sleep",
        "max_running": 1, "per_second": 50}))
    .unwrap();
    op.limit_set(&spec).await.expect("limit as operator");
    let first = submit(json!({"type": "sleep", "payload": {"ms": 1500}, "limit_key": "K"})).await;
    // The first runs under the limit (it holds K's slot) before the second
    // is sent, so the nodes know the limit by then.
    wait_for(
        "the first task holding K's slot",
        Duration::from_secs(10),
        || async {
            let limits = op.limits().await.ok()?;
            let sec = limits.iter().find(|l| l.limit_id == "sec")?;
            (sec.running.get("K") == Some(&1)).then_some(())
        },
    )
    .await;
    let second = submit(json!({"type": "sleep", "payload": {"ms": 10}, "limit_key": "K"})).await;
    wait_for(
        "the second task throttled",
        Duration::from_secs(10),
        || async {
            (sub.get(&second).await.ok()?.throttled_by.as_deref() == Some("sec")).then_some(())
        },
    )
    .await;
    let a = sub.wait(&first, Duration::from_secs(20)).await.unwrap();
    let b = sub.wait(&second, Duration::from_secs(20)).await.unwrap();
    assert!(
        ts(&json!(b.started_at)) >= ts(&json!(a.finished_at)),
        "{a:?} {b:?}"
    );
    op.limit_delete("sec")
        .await
        .expect("limit delete as operator");
    // The operator acts on it: list and requeue (the coordinator reads the
    // DLQ, publishes the new task and deletes the letter).
    assert_eq!(op.dlq_list(None, None).await.unwrap().total, 1);
    let v = op.dlq_requeue(&t).await.expect("requeue as operator");
    let again = v["task_id"].as_str().unwrap().to_string();
    let r = sub.wait(&again, Duration::from_secs(20)).await.unwrap();
    assert_eq!(r.status.as_str(), "dead");
    // A delayed task.
    let at = time::OffsetDateTime::now_utc() + time::Duration::seconds(1);
    let at = at
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    let t = submit(json!({"type": "echo", "payload": 1, "not_before": at})).await;
    assert_eq!(
        sub.wait(&t, Duration::from_secs(15)).await.unwrap().result,
        json!(1)
    );
    // Running, looked up, cancelled.
    let t = submit(json!({"type": "sleep", "payload": {"ms": 20000}})).await;
    wait_for(
        "the sleep task running",
        Duration::from_secs(10),
        || async { (sub.get(&t).await.ok()?.status.as_str() == "running").then_some(()) },
    )
    .await;
    sub.cancel(&t).await.expect("cancel as submitter");
    assert_eq!(
        sub.wait(&t, Duration::from_secs(10))
            .await
            .unwrap()
            .status
            .as_str(),
        "cancelled"
    );
    // An event injected into n1's process.
    let v = op
        .nats()
        .request("weave.event.n1.watcher", r#"{"payload": {"e": 1}}"#.into())
        .await;
    let v: Value = serde_json::from_slice(&v.expect("inject").payload).unwrap();
    assert_eq!(v["status"], "injected", "{v}");

    sidecar_with_its_key(&server, dir).await;

    // n2 dies mid-task: the task and its shards move to n1.
    let run = json!({"run_id": "kill", "dataset_id": "d", "total_items": 8, "shard_size": 2,
        "type": "count", "payload": {"item_ms": 300}});
    op.create_run(&run).await.unwrap();
    wait_for("n2 working on the run", Duration::from_secs(10), || async {
        let v = op.control("n2", "status", &json!({})).await.ok()?;
        (!v["running_tasks"].as_array()?.is_empty()).then_some(())
    })
    .await;
    n2.kill9();
    let done = op
        .wait_run("kill", Duration::from_secs(40), |_, _| {})
        .await
        .unwrap();
    assert_eq!(done["status"], "completed", "{done}");
    assert!(
        done["assignments"]
            .as_object()
            .unwrap()
            .values()
            .all(|n| n == "n1"),
        "{done}"
    );
    assert_eq!(
        NatsServer::violations(dir),
        vec![],
        "refusals the server logged"
    );
}

/// The sidecar as `sidecar`: cluster status, a drain and resume over HTTP,
/// an agent bridge (a node it hosts).
async fn sidecar_with_its_key(server: &NatsServer, dir: &Path) {
    let k = key(dir, "sidecar");
    let (_s, port) = sidecar_proc(&server.url(), &["--nkey", &k]).await;
    let http = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{port}");
    let v: Value = http
        .get(format!("{base}/cluster/status"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["total_nodes"], 2, "{v}");
    for (verb, health) in [("drain", "draining"), ("resume", "healthy")] {
        let r = http
            .post(format!("{base}/nodes/n1/{verb}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 200);
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["health"], health, "{v}");
    }
    let (status, body) = register(port, "ag1", "http://127.0.0.1:9/run").await;
    assert_eq!(status, 200, "{body}");
    let r = http.get(format!("{base}/nodes")).send().await.unwrap();
    let nodes: Value = r.json().await.unwrap();
    assert!(nodes.to_string().contains("ag1"), "{nodes}");
}

/// Rotating a key: `auth init --rotate node-n1` writes a new seed for n1
/// only; after a config reload the old key is refused (and its open
/// connection closed) while the new one and every other key work.
#[tokio::test]
async fn a_rotated_key_replaces_the_old_one_after_a_reload() {
    let auth = auth_init("n1");
    let dir = auth.path();
    let server = NatsServer::start_secured(dir);
    let old_seed = std::fs::read_to_string(dir.join("node-n1.nk")).unwrap();
    let operator_seed = std::fs::read_to_string(dir.join("operator.nk")).unwrap();
    let old = connect_as(&server, dir, "node-n1").await;
    let d = dir.display().to_string();
    let o = jw(&[
        "auth", "init", "--dir", &d, "--nodes", "n1", "--rotate", "node-n1",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_ne!(
        std::fs::read_to_string(dir.join("node-n1.nk")).unwrap(),
        old_seed
    );
    assert_eq!(
        std::fs::read_to_string(dir.join("operator.nk")).unwrap(),
        operator_seed
    );
    let pid = server.pid().unwrap().to_string();
    assert!(Command::new("kill")
        .args(["-HUP", &pid])
        .status()
        .unwrap()
        .success());
    wait_for(
        "the old connection closed",
        Duration::from_secs(10),
        || async {
            (old.connection_state() != async_nats::connection::State::Connected).then_some(())
        },
    )
    .await;
    let stale = dir.join("stale.nk");
    std::fs::write(&stale, &old_seed).unwrap();
    let mut o = NatsOptions::new(server.url());
    o.nkey = Some(stale);
    o.connect_wait = Duration::from_millis(300);
    let e = o.connect("stale").await.unwrap_err();
    assert!(e.to_string().contains("refused the credentials"), "{e}");
    // The new key and the others are accepted (a CI run once saw a refusal
    // here under load: the reload may still be settling, so retry briefly).
    for user in ["node-n1", "operator"] {
        wait_for(
            &format!("{user} accepted"),
            Duration::from_secs(5),
            || async {
                let mut o = NatsOptions::new(server.url());
                o.nkey = Some(PathBuf::from(key(dir, user)));
                o.connect_wait = Duration::from_millis(300);
                o.connect(user).await.ok()
            },
        )
        .await;
    }
}

/// A pool with its own key (`pool-<id>`) starts its workers with theirs
/// (`node-<id>-<k>`, next to it): they serve tasks, `status` and `scale`
/// work for the operator, and the server refuses nothing.
#[tokio::test]
async fn a_pool_and_its_workers_run_with_their_keys() {
    let (auth, server, _c) = secured("n1");
    let dir = auth.path();
    let url = server.url();
    let pk = key(dir, "pool-p");
    let _pool = Proc::spawn(&[
        "--nats-url",
        &url,
        "--nkey",
        &pk,
        "pool",
        "--pool-id",
        "p",
        "--min",
        "1",
        "--max",
        "2",
        "--no-auto-scale",
        "--node-ttl",
        "2",
        "--heartbeat-interval",
        "0.5",
    ]);
    let op = jetweave::Client::new(connect_as(&server, dir, "operator").await, "weave").unwrap();
    wait_for("p-1 serving", Duration::from_secs(20), || async {
        (op.pool_status("p").await.ok()?.worker_count == 1).then_some(())
    })
    .await;
    op.scale("p", 2).await.expect("scale as operator");
    wait_for("p-2 registered", Duration::from_secs(15), || async {
        let nodes = op.nodes().await.ok()?;
        nodes.iter().any(|n| n.node_id == "p-2").then_some(())
    })
    .await;
    let sub = jetweave::Client::new(connect_as(&server, dir, "submitter").await, "weave").unwrap();
    publish_task(
        sub.nats(),
        "weave.tasks.default.normal",
        Some("pt"),
        json!({"type": "echo", "payload": 3}),
    )
    .await;
    let r = sub.wait("pt", Duration::from_secs(15)).await.unwrap();
    assert!(
        r.node_id.as_deref().is_some_and(|n| n.starts_with("p-")),
        "{r:?}"
    );
    assert_eq!(
        NatsServer::violations(dir),
        vec![],
        "refusals the server logged"
    );
}
