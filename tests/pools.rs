//! Worker pools (contract §10), from outside: `jetweave pool` processes,
//! their control subjects, the CLI, discovery and the sidecar's metrics.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

fn jw(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_jetweave"))
        .args(args)
        .output()
        .expect("run jetweave")
}

/// A `jetweave pool` with fast worker timings.
fn pool_proc(server: &NatsServer, id: &str, extra: &[&str]) -> Proc {
    let url = server.url();
    let mut args = vec![
        "--nats-url",
        &url,
        "pool",
        "--pool-id",
        id,
        "--node-ttl",
        "2",
        "--heartbeat-interval",
        "0.5",
    ];
    args.extend_from_slice(extra);
    Proc::spawn(&args)
}

/// Polls use 1 s requests: one lost while a cluster is busy must cost one
/// poll, not the client's default 10 s.
fn poll(c: &jetweave::Client) -> jetweave::Client {
    c.clone().with_timeout(Duration::from_secs(1))
}

async fn status(c: &jetweave::Client, pool: &str) -> Option<jetweave::protocol::PoolStatus> {
    poll(c).pool_status(pool).await.ok()
}

/// Waits until the pool serves exactly `n` workers.
async fn workers(c: &jetweave::Client, pool: &str, n: u32, within: Duration) -> Vec<String> {
    wait_for(&format!("{pool} at {n} workers"), within, || async {
        let s = status(c, pool).await?;
        (s.worker_count == n).then_some(s.workers)
    })
    .await
}

/// The live node ids in discovery with this prefix, and their pids.
async fn registered(c: &jetweave::Client, prefix: &str) -> Vec<(String, u32)> {
    let mut v: Vec<(String, u32)> = poll(c)
        .nodes()
        .await
        .unwrap_or_default()
        .into_iter()
        .filter(|n| n.node_id.starts_with(prefix))
        .map(|n| (n.node_id, n.pid))
        .collect();
    v.sort();
    v
}

fn alive(pid: u32) -> bool {
    Command::new("kill")
        .args(["-0", &pid.to_string()])
        .status()
        .is_ok_and(|s| s.success())
}

/// Starts at min; `scale` within [min, max] is reached within 10 s (up and
/// down), outside it is `out_of_range`; bad bodies and verbs get errors;
/// the `weave-pool` service, `jetweave pools` and `jetweave scale`.
#[tokio::test]
async fn a_pool_starts_at_min_and_scales_on_request() {
    let server = NatsServer::start();
    let _c = start_coordinator(&server, "c1").await;
    let c = api_client(&server).await;
    let _p = pool_proc(
        &server,
        "p",
        &["--min", "2", "--max", "4", "--no-auto-scale"],
    );
    assert_eq!(
        workers(&c, "p", 2, Duration::from_secs(15)).await,
        ["p-1", "p-2"]
    );
    wait_for(
        "p-1 and p-2 in discovery",
        Duration::from_secs(10),
        || async { (registered(&c, "p-").await.len() == 2).then_some(()) },
    )
    .await;

    let t0 = Instant::now();
    let r = c.scale("p", 4).await.expect("scale");
    assert_eq!(r.desired, 4);
    workers(&c, "p", 4, Duration::from_secs(10)).await;
    wait_for(
        "4 workers in discovery",
        Duration::from_secs(10) - t0.elapsed(),
        || async { (registered(&c, "p-").await.len() == 4).then_some(()) },
    )
    .await;
    let url = server.url();
    let o = jw(&["--nats-url", &url, "scale", "p", "3", "--json"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(
        workers(&c, "p", 3, Duration::from_secs(10)).await,
        ["p-1", "p-2", "p-3"]
    );

    for n in [1, 5] {
        let e = c.scale("p", n).await.unwrap_err();
        assert_eq!(e.code(), "out_of_range", "{n}: {e}");
    }
    let nats = c.nats();
    for (subject, body, code) in [
        ("weave.ctl.p.scale", "{not json", "invalid_json"),
        ("weave.ctl.p.scale", r#"{"workers": "3"}"#, "invalid_value"),
        (
            "weave.ctl.p.scale",
            r#"{"workers": 3, "x": 1}"#,
            "invalid_value",
        ),
        ("weave.ctl.p.explode", "{}", "unknown_verb"),
    ] {
        let m = nats.request(subject, body.into()).await.unwrap();
        let v: Value = serde_json::from_slice(&m.payload).unwrap();
        assert_eq!(
            (v["ok"].clone(), v["code"].as_str()),
            (json!(false), Some(code)),
            "{body}"
        );
    }
    let st = status(&c, "p").await.unwrap();
    assert_eq!(
        (st.desired, st.min, st.max, st.auto_scale),
        (3, 2, 4, false)
    );

    let m = nats
        .request("$SRV.PING.weave-pool", "".into())
        .await
        .unwrap();
    let v: Value = serde_json::from_slice(&m.payload).unwrap();
    assert_eq!(v["metadata"]["pool_id"], "p");
    let o = jw(&["--nats-url", &url, "pools", "--json"]);
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v[0]["pool_id"], "p");
    assert_eq!(v[0]["worker_count"], 3);
}

/// A worker killed with SIGKILL comes back with the same id within
/// node_ttl + 2 s; SIGTERM to the pool drains every worker, exits 0 and
/// leaves no child behind.
#[tokio::test]
async fn a_dead_worker_is_replaced_and_sigterm_leaves_no_child() {
    let server = NatsServer::start();
    let _c = start_coordinator(&server, "c1").await;
    let c = api_client(&server).await;
    let mut pool = pool_proc(&server, "r", &["--min", "2", "--max", "2"]);
    let before = wait_for(
        "two workers registered",
        Duration::from_secs(15),
        || async {
            let r = registered(&c, "r-").await;
            (r.len() == 2).then_some(r)
        },
    )
    .await;
    let (id, pid) = before[1].clone();
    assert_eq!(id, "r-2");
    Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .unwrap();
    let t0 = Instant::now();
    let new_pid = wait_for("r-2 replaced", Duration::from_secs(4), || async {
        let r = registered(&c, "r-").await;
        r.iter()
            .find(|(n, p)| n == "r-2" && *p != pid)
            .map(|(_, p)| *p)
    })
    .await;
    eprintln!("r-2 replaced after {:?}", t0.elapsed());
    assert!(alive(new_pid));

    pool.signal(libc::SIGTERM);
    let st = pool
        .wait_exit(Duration::from_secs(20))
        .expect("the pool exits");
    assert!(st.success(), "{st:?}");
    for pid in [before[0].1, new_pid] {
        assert!(!alive(pid), "worker {pid} left behind");
    }
}

/// Auto-scaling: a backlog grows the pool to max (one step per cooldown),
/// an idle queue shrinks it to min; scaling down never kills or retries a
/// task (every task completes on its first delivery).
#[tokio::test]
async fn a_backlog_grows_the_pool_and_idleness_shrinks_it() {
    let server = NatsServer::start();
    let _c = start_coordinator(&server, "c1").await;
    let c = api_client(&server).await;
    let _p = pool_proc(
        &server,
        "a",
        &[
            "--min",
            "1",
            "--max",
            "3",
            "--concurrency",
            "2",
            "--scale-up-threshold",
            "4",
            "--scale-down-threshold",
            "1",
            "--cooldown",
            "1",
        ],
    );
    workers(&c, "a", 1, Duration::from_secs(15)).await;
    let nats = c.nats();
    let ids: Vec<String> = (0..40).map(|i| format!("bk-{i}")).collect();
    for id in &ids {
        publish_task(
            nats,
            "weave.tasks.default.normal",
            Some(id),
            json!({"type": "sleep", "payload": {"ms": 400}}),
        )
        .await;
    }
    let t0 = Instant::now();
    workers(&c, "a", 3, Duration::from_secs(20)).await;
    let grew = t0.elapsed();
    for id in &ids {
        let r = c.wait(id, Duration::from_secs(60)).await.expect("result");
        assert_eq!(r.status.as_str(), "completed", "{id}");
        assert_eq!((r.attempts, r.lost_leases), (1, 0), "{id} ran once");
    }
    let t1 = Instant::now();
    workers(&c, "a", 1, Duration::from_secs(20)).await;
    eprintln!(
        "grew to 3 in {grew:?}, shrank to 1 {:?} after the backlog",
        t1.elapsed()
    );
    let st = status(&c, "a").await.unwrap();
    assert_eq!(st.total_completed, 40, "{st:?}");
    assert!(st.auto_scale);
}

/// Scaling down drains: a worker removed while it runs a task finishes it
/// (completed, on that worker, first attempt) and only then exits.
#[tokio::test]
async fn scaling_down_never_kills_a_running_task() {
    let server = NatsServer::start();
    let _c = start_coordinator(&server, "c1").await;
    let c = api_client(&server).await;
    let _p = pool_proc(
        &server,
        "d",
        &[
            "--min",
            "1",
            "--max",
            "2",
            "--no-auto-scale",
            "--concurrency",
            "1",
        ],
    );
    workers(&c, "d", 1, Duration::from_secs(15)).await;
    c.scale("d", 2).await.unwrap();
    workers(&c, "d", 2, Duration::from_secs(10)).await;
    // One 3 s task on each worker (one slot each); whichever runs on d-2
    // is the one scaling down must let finish.
    for id in ["t1", "t2"] {
        publish_task(
            c.nats(),
            "weave.tasks.default.normal",
            Some(id),
            json!({"type": "sleep", "payload": {"ms": 3000}}),
        )
        .await;
    }
    let on_d2 = wait_for("a task running on d-2", Duration::from_secs(10), || async {
        let m = c
            .nats()
            .request("weave.ctl.d-2.status", "".into())
            .await
            .ok()?;
        let v: Value = serde_json::from_slice(&m.payload).ok()?;
        v["running_tasks"]
            .as_array()?
            .first()?
            .as_str()
            .map(String::from)
    })
    .await;
    c.scale("d", 1).await.unwrap();
    assert_eq!(workers(&c, "d", 1, Duration::from_secs(5)).await, ["d-1"]);
    let r = c.wait(&on_d2, Duration::from_secs(15)).await.unwrap();
    assert_eq!(r.status.as_str(), "completed");
    assert_eq!(r.node_id.as_deref(), Some("d-2"));
    assert_eq!((r.attempts, r.lost_leases), (1, 0));
    wait_for(
        "d-2 gone after its task",
        Duration::from_secs(10),
        || async { (registered(&c, "d-").await.len() == 1).then_some(()) },
    )
    .await;
}

/// `--worker-cmd`: any command, with `{node_id}` and the pool's env (here
/// the Python worker); the sidecar's metrics show the pool.
#[tokio::test]
async fn a_pool_runs_any_worker_command_and_shows_in_metrics() {
    let server = NatsServer::start();
    let _c = start_coordinator(&server, "c1").await;
    let c = api_client(&server).await;
    // The Python worker uses the task consumers a jetweave node creates.
    let seed = start_node(&server, node_config("seed")).await;
    seed.handle.shutdown(Duration::from_secs(2)).await;
    let root = env!("CARGO_MANIFEST_DIR");
    let py = format!("{root}/.tools/py/bin/python");
    let script = format!("{root}/examples/python_worker.py");
    let _p = pool_proc(
        &server,
        "py",
        &[
            "--min",
            "1",
            "--max",
            "2",
            "--no-auto-scale",
            "--worker-cmd",
            &py,
            &script,
            "--node-id",
            "{node_id}",
        ],
    );
    wait_for("py-1 registered", Duration::from_secs(20), || async {
        (registered(&c, "py-").await.len() == 1).then_some(())
    })
    .await;
    publish_task(
        c.nats(),
        "weave.tasks.default.normal",
        Some("py-task"),
        json!({"type": "echo", "payload": 5}),
    )
    .await;
    let r = c.wait("py-task", Duration::from_secs(15)).await.unwrap();
    assert_eq!(r.node_id.as_deref(), Some("py-1"));

    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let url = server.url();
    let _s = Proc::spawn(&["--nats-url", &url, "sidecar", "--listen", &listen]);
    let text = wait_for("pool metrics", Duration::from_secs(15), || async {
        let t = reqwest::get(format!("http://{listen}/metrics"))
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        t.contains("jetweave_pool_workers{pool=\"py\"} 1")
            .then_some(t)
    })
    .await;
    assert!(
        text.contains("jetweave_pool_desired{pool=\"py\"} 1"),
        "{text}"
    );
}

/// The pool's control service and its view of the workers survive a
/// restart of the NATS server under it: afterwards `status` answers and
/// `scale` still works.
#[tokio::test]
async fn a_pool_survives_a_server_restart() {
    let mut server = NatsServer::start();
    let _c = start_coordinator(&server, "c1").await;
    let c = api_client(&server).await;
    let _p = pool_proc(
        &server,
        "f",
        &["--min", "1", "--max", "2", "--no-auto-scale"],
    );
    workers(&c, "f", 1, Duration::from_secs(15)).await;
    server.restart();
    let t0 = Instant::now();
    wait_for(
        "status after the restart",
        Duration::from_secs(15),
        || async { c.pool_status("f").await.ok() },
    )
    .await;
    eprintln!("pool answered {:?} after the restart", t0.elapsed());
    c.scale("f", 2).await.expect("scale after the restart");
    let ids = workers(&c, "f", 2, Duration::from_secs(10)).await;
    assert_eq!(ids, ["f-1", "f-2"]);
    wait_for("f-2 registered", Duration::from_secs(15), || async {
        (registered(&c, "f-").await.len() == 2).then_some(())
    })
    .await;
}
