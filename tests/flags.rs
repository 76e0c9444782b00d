//! Process flags end to end, as the real binary: `--prefix` /
//! `JETWEAVE_PREFIX` (two fabrics on one server see nothing of each other),
//! `--role supervisor|hybrid`, `NATS_URL`, token and TLS connections.
mod common;

use std::process::{Command, Output};
use std::time::Duration;

use common::*;
use futures::StreamExt;
use serde_json::{json, Value};

fn jw(args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_jetweave"))
        .args(args)
        .envs(env.iter().copied())
        .output()
        .expect("run jetweave")
}

fn node_ids(o: &Output) -> Vec<String> {
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: Value = serde_json::from_slice(&o.stdout).expect("JSON");
    let mut ids: Vec<String> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["node_id"].as_str().unwrap().to_string())
        .collect();
    ids.sort();
    ids
}

async fn keys(client: &async_nats::Client, bucket: &str) -> Vec<String> {
    let js = async_nats::jetstream::new(client.clone());
    let Ok(kv) = js.get_key_value(bucket).await else {
        return Vec::new();
    };
    let mut out: Vec<String> = match kv.keys().await {
        Ok(k) => k.filter_map(|k| async { k.ok() }).collect().await,
        Err(_) => Vec::new(),
    };
    out.sort();
    out
}

async fn result_on(client: &async_nats::Client, stream: &str, subject: &str) -> Value {
    let js = async_nats::jetstream::new(client.clone());
    wait_for(subject, Duration::from_secs(10), || async {
        let st = js.get_stream(stream).await.ok()?;
        let m = st.direct_get_last_for_subject(subject).await.ok()?;
        serde_json::from_slice(&m.payload).ok()
    })
    .await
}

/// The default fabric (`NATS_URL` from the environment, a coordinator and
/// a worker) and a `blue` fabric (`JETWEAVE_PREFIX=blue`, one hybrid node
/// that is worker and coordinator) share a server and see nothing of each
/// other.
#[tokio::test]
async fn two_prefixes_on_one_server_are_two_fabrics() {
    let server = NatsServer::start();
    let url = server.url();
    let env_url = [("NATS_URL", url.as_str())];
    let fast = ["--node-ttl", "2", "--heartbeat-interval", "0.5"];
    let _c = Proc::spawn_env(&["coordinator", "--id", "c1", "--lease-ttl", "2"], &env_url);
    let mut a = vec!["node", "--node-id", "a1"];
    a.extend(fast);
    let _a1 = Proc::spawn_env(&a, &env_url);
    let mut b = vec!["node", "--node-id", "b1", "--role", "hybrid"];
    b.extend(fast);
    let _b1 = Proc::spawn_env(
        &b,
        &[("NATS_URL", url.as_str()), ("JETWEAVE_PREFIX", "blue")],
    );
    let client = server.client().await;
    wait_for("both registered", Duration::from_secs(15), || async {
        (keys(&client, "weave-nodes").await == ["a1"]
            && keys(&client, "blue-nodes").await == ["b1"])
        .then_some(())
    })
    .await;
    assert_eq!(node_ids(&jw(&["nodes", "--json"], &env_url)), ["a1"]);
    assert_eq!(
        node_ids(&jw(
            &["--nats-url", &url, "--prefix", "blue", "nodes", "--json"],
            &[]
        )),
        ["b1"]
    );

    // Tasks stay in their fabric.
    publish_task(
        &client,
        "weave.tasks.default.normal",
        Some("wt"),
        json!({"type": "echo"}),
    )
    .await;
    publish_task(
        &client,
        "blue.tasks.default.normal",
        Some("bt"),
        json!({"type": "echo"}),
    )
    .await;
    let r = result_on(&client, "WEAVE_RESULTS", "weave.results.wt").await;
    assert_eq!(r["node_id"], "a1");
    let r = result_on(&client, "BLUE_RESULTS", "blue.results.bt").await;
    assert_eq!(r["node_id"], "b1");

    // Each fabric's leader and broadcast.
    let blue = jetweave::Client::new(client.clone(), "blue").unwrap();
    let st = wait_for("blue leader", Duration::from_secs(10), || async {
        let st = blue.cluster_status().await.ok()?;
        st.leader.is_some().then_some(st)
    })
    .await;
    assert_eq!(
        st.leader.as_deref(),
        Some("b1"),
        "a hybrid node coordinates"
    );
    assert_eq!(st.total_nodes, 1);
    let weave = jetweave::Client::new(client.clone(), "weave").unwrap();
    let st = wait_for("weave leader", Duration::from_secs(10), || async {
        let st = weave.cluster_status().await.ok()?;
        st.leader.is_some().then_some(st)
    })
    .await;
    assert_eq!(st.leader.as_deref(), Some("c1"));
    assert_eq!(st.total_nodes, 1);
    let replies = blue
        .broadcast("ping", Duration::from_millis(700))
        .await
        .unwrap();
    let ids: Vec<&str> = replies
        .iter()
        .filter_map(|r| r["node_id"].as_str())
        .collect();
    assert_eq!(ids, ["b1"]);
    let joined = stored(&client, "BLUE_EVENTS", "blue.events.node.joined").await;
    assert_eq!(joined.len(), 1);
    assert_eq!(joined[0].1["node_id"], "b1");
    assert!(stored(&client, "WEAVE_EVENTS", "weave.events.node.joined")
        .await
        .iter()
        .all(|(_, v)| v["node_id"] == "a1"));
}

/// `--role supervisor` runs the coordinator and no tasks or shards.
#[tokio::test]
async fn a_supervisor_node_coordinates_and_runs_no_work() {
    let server = NatsServer::start();
    let url = server.url();
    let _sup = Proc::spawn(&[
        "--nats-url",
        &url,
        "node",
        "--node-id",
        "sup",
        "--role",
        "supervisor",
        "--node-ttl",
        "2",
    ]);
    let _w = spawn_node_proc(&server, "w1").await;
    let api = api_client(&server).await;
    let client = server.client().await;
    wait_for("sup leads", Duration::from_secs(15), || async {
        let st = api.cluster_status().await.ok()?;
        (st.leader.as_deref() == Some("sup")).then_some(())
    })
    .await;
    let entry = wait_for("sup registered", Duration::from_secs(10), || async {
        node_entry(&client, "sup").await
    })
    .await;
    assert_eq!(entry["role"], "supervisor");
    for i in 0..6 {
        publish_task(
            &client,
            "weave.tasks.default.normal",
            Some(&format!("t{i}")),
            json!({"type": "echo"}),
        )
        .await;
    }
    for i in 0..6 {
        let r = api
            .wait(&format!("t{i}"), Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(r.node_id.as_deref(), Some("w1"));
    }
    api.create_run(&json!({"run_id": "s", "dataset_id": "d", "total_items": 4, "shard_size": 1, "type": "count"}))
        .await
        .unwrap();
    let run = api
        .wait_run("s", Duration::from_secs(20), |_, _| {})
        .await
        .unwrap();
    assert_eq!(run["status"], "completed");
    assert!(
        run["assignments"]
            .as_object()
            .unwrap()
            .values()
            .all(|n| n == "w1"),
        "{run}"
    );
}

/// A server that wants a token: with `--token` (or `NATS_TOKEN`) the
/// processes and the CLI work; without it the binary fails with one clear
/// line, exit 1.
#[tokio::test]
async fn token_connections() {
    let server = NatsServer::start_with(&["--auth", "s3cret-token"]);
    let url = server.url();
    let t0 = std::time::Instant::now();
    let out = jw(&["--nats-url", &url, "ping", "--all"], &[]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    let last = err.trim().lines().last().unwrap_or_default();
    assert!(
        last.contains("refused the credentials") && last.contains("--token"),
        "{err}"
    );
    assert!(
        t0.elapsed() < Duration::from_secs(3),
        "a refused login fails at once"
    );
    let token = [("NATS_TOKEN", "s3cret-token")];
    let _c = Proc::spawn_env(&["--nats-url", &url, "coordinator", "--id", "c1"], &token);
    let flag = ["--nats-url", &url, "--token", "s3cret-token"];
    let mut node = flag.to_vec();
    node.extend(["node", "--node-id", "tok"]);
    let _n = Proc::spawn(&node);
    let ids = wait_for("node with a token", Duration::from_secs(15), || async {
        let o = jw(&["--nats-url", &url, "nodes", "--json"], &token);
        o.status
            .success()
            .then(|| node_ids(&o))
            .filter(|ids| !ids.is_empty())
    })
    .await;
    assert_eq!(ids, ["tok"]);
    let mut submit = flag.to_vec();
    submit.extend(["submit", "echo", "--payload", "[7]", "--wait", "--json"]);
    let o = jw(&submit, &[]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["result"], json!([7]));
    assert_eq!(v["node_id"], "tok");
}

/// A TLS server: with `--nats-tls-ca` (and `--nats-tls`) processes and the CLI
/// connect and work; a client that does not trust the CA is refused.
#[tokio::test]
async fn tls_connections() {
    let dir = tempfile::tempdir().unwrap();
    // A CA, and a server certificate for 127.0.0.1 signed by it.
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["127.0.0.1".into(), "localhost".into()])
        .unwrap()
        .signed_by(&key, &ca_cert, &ca_key)
        .unwrap();
    let path = |n: &str| dir.path().join(n).to_str().unwrap().to_string();
    std::fs::write(path("ca.pem"), ca_cert.pem()).unwrap();
    std::fs::write(path("cert.pem"), cert.pem()).unwrap();
    std::fs::write(path("key.pem"), key.serialize_pem()).unwrap();
    let (ca, c, k) = (path("ca.pem"), path("cert.pem"), path("key.pem"));
    let server = NatsServer::start_with(&["--tls", "--tlscert", &c, "--tlskey", &k]);
    let url = format!("tls://127.0.0.1:{}", server.port);
    let out = jw(&["--nats-url", &url, "ping", "--all"], &[]);
    assert_eq!(out.status.code(), Some(1), "an untrusted server is refused");
    let flag = ["--nats-url", &url, "--nats-tls-ca", &ca, "--nats-tls"];
    let mut coord = flag.to_vec();
    coord.extend(["coordinator", "--id", "c1"]);
    let _c = Proc::spawn(&coord);
    let mut node = flag.to_vec();
    node.extend(["node", "--node-id", "secure"]);
    let _n = Proc::spawn(&node);
    let mut nodes = flag.to_vec();
    nodes.extend(["nodes", "--json"]);
    let ids = wait_for("node over TLS", Duration::from_secs(15), || async {
        let o = jw(&nodes, &[]);
        o.status
            .success()
            .then(|| node_ids(&o))
            .filter(|ids| !ids.is_empty())
    })
    .await;
    assert_eq!(ids, ["secure"]);
    let mut submit = flag.to_vec();
    submit.extend(["submit", "echo", "--payload", "1", "--wait", "--json"]);
    let o = jw(&submit, &[]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["status"], "completed");
    assert_eq!(v["node_id"], "secure");
}

/// `--metrics ADDR`: the node's own Prometheus metrics, read from its
/// status at scrape time; the server ends with the node on SIGTERM.
#[tokio::test]
async fn a_node_serves_its_own_metrics() {
    let server = NatsServer::start();
    let _c = start_coordinator(&server, "c1").await;
    let listen = format!("127.0.0.1:{}", free_port());
    let mut node =
        spawn_node_proc_with(&server, "m1", &["--metrics", &listen, "--concurrency", "3"]).await;
    let api = api_client(&server).await;
    let client = server.client().await;
    publish_task(
        &client,
        "weave.tasks.default.normal",
        Some("mt1"),
        json!({"type": "echo"}),
    )
    .await;
    api.wait("mt1", Duration::from_secs(10)).await.unwrap();
    // The metrics server starts once the node has (it is in discovery
    // slightly before).
    let text = wait_for("node metrics", Duration::from_secs(10), || async {
        let r = reqwest::get(format!("http://{listen}/metrics"))
            .await
            .ok()?;
        r.text().await.ok()
    })
    .await;
    for line in [
        "jetweave_node_max_concurrency{node=\"m1\"} 3",
        "jetweave_node_tasks_completed_total{node=\"m1\"} 1",
        "jetweave_node_active_tasks{node=\"m1\"} 0",
        "jetweave_node_health{health=\"healthy\",node=\"m1\"} 1",
    ] {
        assert!(text.lines().any(|l| l == line), "{line} in:\n{text}");
    }
    node.signal(libc::SIGTERM);
    assert!(node
        .wait_exit(Duration::from_secs(15))
        .is_some_and(|s| s.success()));
    assert!(reqwest::get(format!("http://{listen}/metrics"))
        .await
        .is_err());
}

/// The threads of a process (/proc/<pid>/task).
fn threads(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .expect("proc")
        .count()
}

#[tokio::test]
async fn worker_threads_sets_a_processes_runtime_threads() {
    let server = NatsServer::start();
    let _c = start_coordinator(&server, "c1").await;
    let api = api_client(&server).await;
    let client = server.client().await;
    // Default: a single-threaded runtime, the whole node on its main
    // thread. `--worker-threads 3`: three runtime threads beside it.
    // Both run their tasks.
    for (id, extra, want) in [("w1", vec![], 1), ("w3", vec!["--worker-threads", "3"], 4)] {
        let mut node = spawn_node_proc_with(&server, id, &extra).await;
        let task = format!("{id}-t");
        let body = json!({"type": "echo", "payload": {"on": id}});
        publish_task(&client, "weave.tasks.default.normal", Some(&task), body).await;
        let r = api.wait(&task, Duration::from_secs(10)).await.unwrap();
        assert_eq!(r.node_id.as_deref(), Some(id));
        assert_eq!(threads(node.pid()), want, "{id}");
        node.kill9();
    }
}
