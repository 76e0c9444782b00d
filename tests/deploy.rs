//! deploy/: the 3-server cluster script starts a cluster that a node and a
//! coordinator use (with 3 replicas), and the other files are well formed.
mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use jetweave::protocol::{SubmitRequest, TaskEnvelope, TaskStatus};
use serde_json::json;

/// A base port with the client, cluster and monitoring ports all free.
fn base_port() -> u16 {
    loop {
        let p = 20_000 + (std::process::id() as u16 % 200) * 20 + fastrand::u16(0..19);
        let all_free = [0u16, 1, 2, 100, 101, 102, 4000, 4001, 4002]
            .iter()
            .all(|o| std::net::TcpListener::bind(("127.0.0.1", p + o)).is_ok());
        if all_free {
            return p;
        }
    }
}

struct Cluster(std::process::Child);
impl Drop for Cluster {
    fn drop(&mut self) {
        unsafe {
            libc::kill(self.0.id() as i32, libc::SIGTERM);
        }
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_server_cluster_script_serves_a_node_and_a_coordinator() {
    nats_server_bin();
    let data = tempfile::tempdir().unwrap();
    let base = base_port();
    let mut child = Command::new("bash")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/deploy/nats-cluster/start.sh"
        ))
        .arg(base.to_string())
        .arg(data.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let out = child.stdout.take().unwrap();
    let _cluster = Cluster(child);
    // Keep reading the script's output after the ready line: a closed pipe
    // would kill it (SIGPIPE) and with it the cluster.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for l in BufReader::new(out).lines().map_while(Result::ok) {
            if l.starts_with("cluster ready: ") {
                let _ = tx.send(l);
            }
        }
    });
    let line = tokio::task::spawn_blocking(move || rx.recv_timeout(Duration::from_secs(30)))
        .await
        .unwrap()
        .expect("cluster ready line");
    let urls = line.trim_start_matches("cluster ready: ").to_string();
    let opts = jetweave::NatsOptions::new(urls.clone());
    let client = opts.connect("test").await.unwrap();
    assert_eq!(
        jetweave::store::replicas_for(
            &client,
            &jetweave::subjects::Subjects::new("weave").unwrap()
        )
        .await,
        3
    );

    let shutdown = jetweave::Shutdown::new();
    let mut ccfg = jetweave::CoordinatorConfig::new();
    ccfg.id = "c1".into();
    let _coord = jetweave::Coordinator::start(client.clone(), ccfg, shutdown.clone())
        .await
        .unwrap();
    let node = jetweave::Node::new(node_config("cn1"))
        .start(opts.connect("node").await.unwrap(), shutdown.clone())
        .await
        .unwrap();
    let api = jetweave::Client::new(client.clone(), "weave").unwrap();
    let id = api
        .submit(&SubmitRequest {
            envelope: TaskEnvelope::new("echo", json!("clustered")),
            ..Default::default()
        })
        .await
        .unwrap()
        .task_id;
    let r = api.wait(&id, Duration::from_secs(10)).await.unwrap();
    assert_eq!(r.status, TaskStatus::Completed);
    let js = async_nats::jetstream::new(client.clone());
    for name in [
        "WEAVE_TASKS",
        "WEAVE_RESULTS",
        "KV_weave-nodes",
        "KV_weave-runs",
    ] {
        let mut s = js.get_stream(name).await.unwrap();
        assert_eq!(s.info().await.unwrap().config.num_replicas, 3, "{name}");
    }
    node.shutdown(Duration::from_secs(5)).await;
    shutdown.trigger();
}

#[test]
fn deploy_files_are_well_formed() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy");
    for f in [
        "k8s/node.yaml",
        "k8s/coordinator.yaml",
        "k8s/sidecar.yaml",
        "k8s/autoscale.yaml",
    ] {
        let text = std::fs::read_to_string(root.join(f)).unwrap();
        for doc in text.split("\n---\n") {
            let v: serde_json::Value =
                serde_yaml_ng::from_str(doc).unwrap_or_else(|e| panic!("{f}: {e}"));
            assert!(v["kind"].is_string() && v["apiVersion"].is_string(), "{f}");
        }
    }
    let node: serde_json::Value =
        serde_yaml_ng::from_str(&std::fs::read_to_string(root.join("k8s/node.yaml")).unwrap())
            .unwrap();
    let spec = &node["spec"]["template"]["spec"];
    assert!(spec["terminationGracePeriodSeconds"].as_u64().unwrap() >= 60);
    assert!(spec["containers"][0]["lifecycle"]["preStop"].is_object());
    let coord: serde_json::Value = serde_yaml_ng::from_str(
        &std::fs::read_to_string(root.join("k8s/coordinator.yaml")).unwrap(),
    )
    .unwrap();
    assert_eq!(coord["spec"]["replicas"], 2);
    let scaled: serde_json::Value = serde_yaml_ng::from_str(
        std::fs::read_to_string(root.join("k8s/autoscale.yaml"))
            .unwrap()
            .split("\n---\n")
            .next()
            .unwrap(),
    )
    .unwrap();
    let triggers = scaled["spec"]["triggers"].as_array().unwrap();
    let consumers: Vec<&str> = triggers
        .iter()
        .map(|t| t["metadata"]["consumer"].as_str().unwrap())
        .collect();
    assert_eq!(
        consumers,
        [
            "tasks_default_critical",
            "tasks_default_high",
            "tasks_default_normal",
            "tasks_default_low"
        ],
        "one KEDA trigger per priority consumer"
    );
    for unit in ["jetweave-node", "jetweave-coordinator", "jetweave-sidecar"] {
        let text = std::fs::read_to_string(root.join(format!("systemd/{unit}.service"))).unwrap();
        for key in [
            "EnvironmentFile=",
            "Restart=on-failure",
            "KillSignal=SIGTERM",
            "TimeoutStopSec=",
            "ExecStart=/usr/local/bin/jetweave ",
        ] {
            assert!(text.contains(key), "{unit} lacks {key}");
        }
        // The ExecStart flags are ones the binary accepts (clap exits 2 on
        // an unknown flag, before --help).
        let exec = text
            .lines()
            .find_map(|l| l.strip_prefix("ExecStart=/usr/local/bin/jetweave "))
            .unwrap();
        let args: Vec<String> = exec
            .split_whitespace()
            .map(|a| a.replace("%H", "host1"))
            .collect();
        let out = Command::new(env!("CARGO_BIN_EXE_jetweave"))
            .args(&args)
            .arg("--help")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{unit}: ExecStart flags rejected: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        // `systemd-analyze verify` on the unit with ExecStart pointing at the
        // built binary: no unknown keys, no bad values.
        let has_analyze = Command::new("systemd-analyze")
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success());
        if has_analyze {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join(format!("{unit}.service"));
            std::fs::write(
                &path,
                text.replace("/usr/local/bin/jetweave", env!("CARGO_BIN_EXE_jetweave")),
            )
            .unwrap();
            let out = Command::new("systemd-analyze")
                .args(["verify", "--man=no"])
                .arg(&path)
                .output()
                .unwrap();
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(
                out.status.success() && err.trim().is_empty(),
                "{unit}: {err}"
            );
        } else {
            eprintln!("systemd-analyze not installed: units checked by key and flags only");
        }
    }
    // The node unit's stop timeout covers its shutdown deadline.
    let node_unit = std::fs::read_to_string(root.join("systemd/jetweave-node.service")).unwrap();
    assert!(
        node_unit.contains("--shutdown-deadline 60") && node_unit.contains("TimeoutStopSec=75")
    );
    let toml_text = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/jetweave.toml"),
    )
    .unwrap();
    let mut cfg = jetweave::NodeConfig::from_toml(&toml_text).unwrap();
    cfg.node_id = "n1".into();
    cfg.validate().unwrap();
}

/// deploy/grafana/jetweave.json: valid dashboard JSON whose every panel
/// queries Prometheus, and every jetweave family it uses is one the
/// sidecar exports (the §14 table in subjects.md lists them).
#[test]
fn grafana_dashboard_uses_only_exported_families() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(root.join("deploy/grafana/jetweave.json")).unwrap();
    let dash: serde_json::Value = serde_json::from_str(&text).expect("dashboard JSON");
    let doc = std::fs::read_to_string(root.join("subjects.md")).unwrap();
    let section = doc
        .split("## 14. Observability")
        .nth(1)
        .and_then(|s| s.split("\n## ").next())
        .expect("subjects.md §14");
    let panels = dash["panels"].as_array().expect("panels");
    assert!(panels.len() >= 8, "{} panels", panels.len());
    let mut used = std::collections::BTreeSet::new();
    for p in panels {
        let targets = p["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "panel {} queries nothing", p["title"]);
        for t in targets {
            let expr = t["expr"].as_str().expect("expr");
            for word in expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
                if let Some(family) = word.strip_prefix("jetweave_") {
                    let family = ["_bucket", "_count", "_sum"]
                        .iter()
                        .fold(family, |f, s| f.strip_suffix(s).unwrap_or(f));
                    used.insert(format!("jetweave_{family}"));
                }
            }
        }
    }
    for family in &used {
        assert!(
            section.contains(family.as_str()),
            "{family} is not in subjects.md §14"
        );
    }
    assert!(
        used.contains("jetweave_tasks_total") && used.contains("jetweave_task_duration_seconds")
    );
}
