//! A worker in another language, written only against subjects.md with
//! nats-py, serves the same queue as a Rust node.
mod common;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;
use jetweave::protocol::{SubmitRequest, TaskEnvelope, TaskStatus};
use serde_json::json;

fn python() -> PathBuf {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let py = root.join(".tools/py/bin/python");
    if !py.exists() {
        let st = Command::new("bash")
            .arg(root.join("scripts/install-python-deps.sh"))
            .status()
            .expect("install python deps");
        assert!(st.success());
    }
    py
}

struct Py(Child);
impl Drop for Py {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn python_worker_and_rust_node_share_the_queue() {
    let server = NatsServer::start();
    let _c = start_coordinator(&server, "c1").await;
    let mut cfg = node_config("rs1");
    cfg.concurrency = 1;
    let _rs = start_node(&server, cfg).await;
    let mut py = Py(Command::new(python())
        .arg(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("examples/python_worker.py"))
        .args([
            "--nats-url",
            &server.url(),
            "--node-id",
            "py1",
            "--heartbeat-interval",
            "0.5",
            "--node-ttl",
            "2",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start python worker"));
    let api = api_client(&server).await;
    let info = wait_for(
        "python worker in discovery",
        Duration::from_secs(20),
        || async {
            api.nodes()
                .await
                .ok()?
                .into_iter()
                .find(|n| n.node_id == "py1")
        },
    )
    .await;
    assert_eq!(info.handlers(), ["echo"]);
    assert_eq!(info.queues, ["default"]);

    // Keep the Rust node's one slot busy for a while, so both serve the queue.
    let busy = api
        .submit(&SubmitRequest {
            envelope: TaskEnvelope::new("sleep", json!({"ms": 1500})),
            ..Default::default()
        })
        .await
        .unwrap()
        .task_id;
    // A node with fewer slots than priorities polls (every 250 ms) rather
    // than leaving pull requests waiting, so the python worker may see the
    // sleep first (and hand it back): wait until the Rust node runs it.
    wait_for("rs1 runs the sleep", Duration::from_secs(10), || async {
        let t = api.get(&busy).await.ok()?;
        (t.status == TaskStatus::Running && t.node_id.as_deref() == Some("rs1")).then_some(())
    })
    .await;
    let mut ids = Vec::new();
    for i in 0..60 {
        let req = SubmitRequest {
            envelope: TaskEnvelope::new("echo", json!({"i": i})),
            ..Default::default()
        };
        ids.push(api.submit(&req).await.unwrap().task_id);
    }
    let mut by_node: BTreeMap<String, usize> = BTreeMap::new();
    for (i, id) in ids.iter().enumerate() {
        let r = api.wait(id, Duration::from_secs(20)).await.unwrap();
        assert_eq!(r.status, TaskStatus::Completed);
        assert_eq!(r.result, json!({"i": i}));
        *by_node.entry(r.node_id.unwrap_or_default()).or_default() += 1;
    }
    let r = api.wait(&busy, Duration::from_secs(20)).await.unwrap();
    *by_node.entry(r.node_id.unwrap_or_default()).or_default() += 1;
    eprintln!("tasks by node: {by_node:?}");
    assert!(
        by_node.get("py1").copied().unwrap_or(0) > 0,
        "python worker ran none: {by_node:?}"
    );
    assert!(
        by_node.get("rs1").copied().unwrap_or(0) > 0,
        "rust node ran none: {by_node:?}"
    );

    // SIGTERM: the python worker removes its entry.
    unsafe {
        libc::kill(py.0.id() as i32, libc::SIGTERM);
    }
    let _ = py.0.wait();
    wait_for("python worker gone", Duration::from_secs(5), || async {
        let nodes = api.nodes().await.ok()?;
        (!nodes.iter().any(|n| n.node_id == "py1")).then_some(())
    })
    .await;
}

/// Started before any jetweave process made the streams, the Python worker
/// says in one line what it waits for, and joins once a node has made them.
#[tokio::test]
async fn python_worker_waits_for_the_streams() {
    let server = NatsServer::start();
    let mut child = Command::new(python())
        .arg(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("examples/python_worker.py"))
        .args([
            "--nats-url",
            &server.url(),
            "--node-id",
            "early",
            "--node-ttl",
            "2",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start python worker");
    let stderr = child.stderr.take().unwrap();
    let mut py = Py(child);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            let _ = tx.send(line);
        }
    });
    let line = rx
        .recv_timeout(Duration::from_secs(15))
        .expect("a line saying what it waits for");
    assert!(line.contains("waiting for jetweave's streams"), "{line}");
    assert!(
        py.0.try_wait().unwrap().is_none(),
        "it keeps waiting, it does not die"
    );
    let _rs = start_node(&server, node_config("rs1")).await;
    let client = server.client().await;
    let entry = wait_for(
        "python worker registered",
        Duration::from_secs(10),
        || async { node_entry(&client, "early").await },
    )
    .await;
    assert_eq!(entry["metadata"]["language"], "python");
    let extra: Vec<String> = rx.try_iter().collect();
    assert!(extra.iter().all(|l| !l.contains("Traceback")), "{extra:?}");
}
