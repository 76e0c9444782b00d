//! The operator CLI and `jetweave up`, as the real binary.
mod common;

use std::os::unix::process::CommandExt;

use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::*;
use serde_json::Value;

fn jw(url: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_jetweave"))
        .arg("--nats-url")
        .arg(url)
        .args(args)
        .output()
        .expect("run jetweave")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn json_out(o: &Output) -> Value {
    assert!(
        o.status.success(),
        "exit {:?}: {}{}",
        o.status,
        stdout(o),
        String::from_utf8_lossy(&o.stderr)
    );
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {}", stdout(o)))
}

// Multi-threaded: the CLI runs as a blocking child process while the
// in-process cluster keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 3)]
async fn every_subcommand_against_a_real_cluster() {
    let server = NatsServer::start();
    let _c = start_coordinator(&server, "c1").await;
    let _n1 = start_node(&server, node_config("n1")).await;
    let _n2 = start_node(&server, node_config("n2")).await;
    let url = server.url();

    // nodes: table and JSON.
    let o = jw(&url, &["nodes"]);
    assert!(o.status.success());
    let t = stdout(&o);
    assert!(
        t.contains("NODE") && t.contains("n1") && t.contains("n2") && t.contains("healthy"),
        "{t}"
    );
    let v = json_out(&jw(&url, &["nodes", "--json"]));
    assert_eq!(v.as_array().unwrap().len(), 2);

    // ping / drain / resume, one node and --all.
    let v = json_out(&jw(&url, &["ping", "n1", "--json"]));
    assert_eq!(v[0]["node_id"], "n1");
    let v = json_out(&jw(&url, &["ping", "--all", "--json"]));
    assert_eq!(v.as_array().unwrap().len(), 2);
    let nats = server.client().await;
    let o = jw(&url, &["drain", "n2"]);
    assert_eq!(o.status.code(), Some(0), "{}", stdout(&o));
    assert!(stdout(&o).contains("draining"), "{}", stdout(&o));
    assert_eq!(node_entry(&nats, "n2").await.unwrap()["health"], "draining");
    assert_eq!(node_entry(&nats, "n1").await.unwrap()["health"], "healthy");
    let v = json_out(&jw(&url, &["drain", "--all", "--json"]));
    assert_eq!(v.as_array().unwrap().len(), 2, "{v}");
    assert_eq!(node_entry(&nats, "n1").await.unwrap()["health"], "draining");
    let v = json_out(&jw(&url, &["resume", "--all", "--json"]));
    let mut ids: Vec<&str> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            assert_eq!(r["health"], "healthy", "{r}");
            r["node_id"].as_str().unwrap()
        })
        .collect();
    ids.sort();
    assert_eq!(ids, ["n1", "n2"], "one reply per node");
    for n in ["n1", "n2"] {
        assert_eq!(node_entry(&nats, n).await.unwrap()["health"], "healthy");
    }
    let o = jw(&url, &["ping", "ghost"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("jetweave nodes"),
        "errors say what to do next"
    );

    // submit --wait (table and JSON), task, cancel.
    let o = jw(
        &url,
        &["submit", "echo", "--payload", r#"{"x": 1}"#, "--wait"],
    );
    assert!(o.status.success());
    assert!(stdout(&o).contains("completed"), "{}", stdout(&o));
    // Fire and forget: accepted; with --wait (nothing to wait for) refused.
    let o = jw(&url, &["submit", "echo", "--ignore-result"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let o = jw(&url, &["submit", "echo", "--ignore-result", "--wait"]);
    assert_eq!(o.status.code(), Some(2), "--ignore-result with --wait");
    let v = json_out(&jw(
        &url,
        &[
            "submit",
            "echo",
            "--payload",
            "[1,2]",
            "--priority",
            "high",
            "--wait",
            "--json",
            "--id",
            "cli-1",
        ],
    ));
    assert_eq!(v["status"], "completed");
    assert_eq!(v["result"], serde_json::json!([1, 2]));
    let v = json_out(&jw(&url, &["task", "cli-1", "--json"]));
    assert_eq!(v["status"], "completed");
    assert!(stdout(&jw(&url, &["task", "cli-1"])).contains("completed"));
    let id = stdout(&jw(
        &url,
        &["submit", "sleep", "--payload", r#"{"ms": 10000}"#],
    ))
    .trim()
    .to_string();
    wait_for("running", Duration::from_secs(5), || async {
        let v: Value = serde_json::from_slice(&jw(&url, &["task", &id, "--json"]).stdout).ok()?;
        (v["status"] == "running").then_some(())
    })
    .await;
    let v = json_out(&jw(&url, &["cancel", &id, "--json"]));
    assert_eq!(v["status"], "cancelled");
    let o = jw(
        &url,
        &[
            "submit",
            "fail",
            "--payload",
            r#"{"times": -1}"#,
            "--max-attempts",
            "1",
            "--wait",
        ],
    );
    assert_eq!(o.status.code(), Some(1), "a dead task is a failure exit");
    let o = jw(&url, &["submit", "echo", "--payload", "{bad"]);
    assert_eq!(o.status.code(), Some(1));
    let o = jw(&url, &["submit", "echo", "--priority", "urgent"]);
    assert_eq!(o.status.code(), Some(1));
    let o = jw(&url, &["bogus-command"]);
    assert_eq!(o.status.code(), Some(2), "usage errors exit 2");

    // run create (follows to the end) and run status.
    let v = json_out(&jw(
        &url,
        &[
            "run",
            "create",
            "--run-id",
            "clirun",
            "--dataset",
            "ds",
            "--total",
            "6",
            "--shard-size",
            "2",
            "--type",
            "count",
            "--json",
        ],
    ));
    assert_eq!(v["status"], "completed");
    assert_eq!(v["completed_shards"], 3);
    let t = stdout(&jw(&url, &["run", "status", "clirun"]));
    assert!(t.contains("completed") && t.contains("slice:0:2"), "{t}");

    // checkpoints of a shard, events, status.
    let v = json_out(&jw(&url, &["checkpoints", "clirun:0:slice:0:2", "--json"]));
    assert!(!v.as_array().unwrap().is_empty());
    let t = stdout(&jw(&url, &["events", "--since", "10m"]));
    assert!(
        t.contains("run.completed") && t.contains("node.joined"),
        "{t}"
    );
    let o = jw(&url, &["events", "--since", "10m", "--json"]);
    let first: Value = serde_json::from_str(stdout(&o).lines().next().unwrap()).unwrap();
    assert!(first["subject"]
        .as_str()
        .unwrap()
        .starts_with("weave.events."));
    let v = json_out(&jw(&url, &["status", "--json"]));
    assert_eq!(v["total_nodes"], 2);
    assert_eq!(v["leader"], "c1");
    let t = stdout(&jw(&url, &["status"]));
    assert!(t.contains("leader c1") && t.contains("QUEUE"), "{t}");
}

/// `jetweave up` starts a cluster, serves a task, refuses a second copy,
/// and stops on SIGINT leaving nothing behind.
#[tokio::test]
async fn up_serves_a_task_and_stops_cleanly() {
    let data = tempfile::tempdir().unwrap();
    let (port, mon, http) = (free_port(), free_port(), free_port());
    let args = |d: &std::path::Path| {
        vec![
            "up".to_string(),
            "--data-dir".into(),
            d.display().to_string(),
            "--nats-port".into(),
            port.to_string(),
            "--monitor-port".into(),
            mon.to_string(),
            "--http".into(),
            format!("127.0.0.1:{http}"),
        ]
    };
    nats_server_bin(); // make sure it is installed
    let mut up = Command::new(env!("CARGO_BIN_EXE_jetweave"))
        .args(args(data.path()))
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .unwrap();
    let url = format!("nats://127.0.0.1:{port}");
    let v = wait_for(
        "a task served by jetweave up",
        Duration::from_secs(30),
        || {
            let url = url.clone();
            async move {
                let o = jw(
                    &url,
                    &[
                        "--connect-wait",
                        "0.2",
                        "submit",
                        "wordcount",
                        "--payload",
                        r#"{"text": "to be or not to be"}"#,
                        "--wait",
                        "--json",
                        "--timeout",
                        "5",
                    ],
                );
                o.status
                    .success()
                    .then(|| serde_json::from_slice::<Value>(&o.stdout).ok())
                    .flatten()
            }
        },
    )
    .await;
    assert_eq!(v["result"]["words"], 6);
    let health = reqwest::get(format!("http://127.0.0.1:{http}/health"))
        .await
        .unwrap();
    assert_eq!(health.status().as_u16(), 200);

    let second = Command::new(env!("CARGO_BIN_EXE_jetweave"))
        .args(args(data.path()))
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    assert_eq!(second.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&second.stderr).contains("already running"));

    // Ctrl-C in a terminal: SIGINT to the whole process group (up runs in
    // its own group here, as a shell would start it). The server must not
    // die before the node has drained through it (then the node's last
    // writes would wait out their timeouts): up stops within 3 s (about
    // 1 s here; over 4 s when the server got the SIGINT too).
    unsafe {
        libc::kill(-(up.id() as i32), libc::SIGINT);
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    let status = loop {
        if let Some(st) = up.try_wait().unwrap() {
            break st;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "up did not stop on SIGINT"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status:?}");
    let mut out = String::new();
    std::io::Read::read_to_string(up.stdout.as_mut().unwrap(), &mut out).unwrap();
    assert!(
        out.contains("jetweave is up") && out.contains("nats") && out.contains("curl"),
        "{out}"
    );
    // No leftovers: the NATS port and the sidecar port are free again.
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
        "nats-server still running"
    );
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", http)).is_err(),
        "sidecar still listening"
    );
    assert!(!data.path().join("up.pid").exists());
}

/// `nodes --watch` redraws when a node joins and when it leaves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_watch_redraws_on_join_and_leave() {
    use std::io::BufRead;
    let server = NatsServer::start();
    let _c = start_coordinator(&server, "c1").await;
    let _n1 = start_node(&server, node_config("n1")).await;
    let mut child = Command::new(env!("CARGO_BIN_EXE_jetweave"))
        .args(["--nats-url", &server.url(), "nodes", "--watch", "--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let out = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for l in std::io::BufReader::new(out).lines().map_while(Result::ok) {
            let _ = tx.send(l);
        }
    });
    let ids = |line: &str| -> Vec<String> {
        let v: Value = serde_json::from_str(line).unwrap_or(Value::Null);
        v.as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|n| n["node_id"].as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    };
    let first = rx
        .recv_timeout(Duration::from_secs(15))
        .expect("first listing");
    assert_eq!(ids(&first), ["n1"]);
    let n2 = start_node(&server, node_config("n2")).await;
    let joined = loop {
        let l = rx
            .recv_timeout(Duration::from_secs(5))
            .expect("a redraw after the join");
        if ids(&l).contains(&"n2".to_string()) {
            break l;
        }
    };
    assert_eq!(ids(&joined), ["n1", "n2"]);
    n2.handle.shutdown(Duration::from_secs(2)).await;
    loop {
        let l = rx
            .recv_timeout(Duration::from_secs(5))
            .expect("a redraw after the leave");
        if ids(&l) == ["n1"] {
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
}
