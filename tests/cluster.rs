//! jetweave on a NATS cluster: what the product creates is replicated as
//! the cluster allows. With `JETWEAVE_TEST_CLUSTER=3` every test file runs
//! on a 3-server cluster (CI runs tasks, runs and this file that way too);
//! without it these tests check the single-server side of the same rules.
mod common;

use std::time::Duration;

use common::*;

/// Streams and buckets get one replica per server, up to 3; a replicated
/// bucket is read from its stream leader (no direct gets that a replica a
/// moment behind could answer), a single server's keeps direct gets.
#[tokio::test]
async fn streams_and_buckets_are_replicated_as_the_cluster_allows() {
    let server = NatsServer::start();
    let _node = start_node(&server, node_config("r1")).await;
    let js = async_nats::jetstream::new(server.client().await);
    let want = test_cluster_size().min(3);
    for name in [
        "WEAVE_TASKS",
        "WEAVE_RESULTS",
        "WEAVE_DLQ",
        "WEAVE_EVENTS",
        "KV_weave-nodes",
        "KV_weave-attempts",
    ] {
        let info = wait_for(name, Duration::from_secs(10), || async {
            js.get_stream(name).await.ok()?.info().await.ok().cloned()
        })
        .await;
        assert_eq!(info.config.num_replicas, want, "{name}");
        if name.starts_with("KV_") {
            assert_eq!(info.config.allow_direct, want == 1, "{name} direct gets");
        }
    }
}

/// A stream that does not answer on its subjects yet (a server that has
/// not heard of it, or a leader election: publishes find "no stream") is
/// waited for: a submit, a run and a limit sent meanwhile are stored once
/// it answers, not refused. Here the streams stop answering by losing
/// their subjects for a second.
#[tokio::test]
async fn api_writes_wait_for_a_stream_that_does_not_answer_yet() {
    let server = NatsServer::start();
    let _c = start_coordinator(&server, "c1").await;
    let nats = server.client().await;
    let js = async_nats::jetstream::new(nats.clone());
    // The limits bucket is made on first use.
    let listed = req(&nats, "weave.api.limits.list", b"{}").await;
    assert!(listed["limits"].is_array(), "{listed}");
    let restore =
        park_for_a_second(&js, &["WEAVE_TASKS", "KV_weave-runs", "KV_weave-limits"]).await;
    // No stream answers a task publish now.
    let ack = js
        .publish("weave.tasks.default.normal", "{}".into())
        .await
        .expect("publish");
    assert!(ack.await.is_err(), "a stream still took weave.tasks");
    let started = std::time::Instant::now();
    let (task, run, limit) = tokio::join!(
        req(
            &nats,
            "weave.api.tasks.submit",
            br#"{"type": "echo", "id": "parked-task"}"#
        ),
        req(
            &nats,
            "weave.api.runs.create",
            br#"{"run_id": "parked-run", "dataset_id": "d", "total_items": 1, "type": "count"}"#
        ),
        req(
            &nats,
            "weave.api.limits.set",
            br#"{"limit_id": "parked-limit", "type": "echo", "max_running": 1}"#
        ),
    );
    restore.await.expect("restore");
    assert_eq!(task["task_id"], "parked-task", "{task}");
    assert_eq!(run["run_id"], "parked-run", "{run}");
    assert_eq!(limit["ok"], true, "{limit}");
    assert!(started.elapsed() >= Duration::from_millis(900));
    assert_eq!(status(&nats, "parked-task").await, "queued");
    let stored = req(&nats, "weave.api.runs.get", br#"{"run_id": "parked-run"}"#).await;
    assert_eq!(stored["run_id"], "parked-run", "{stored}");

    // A cancel writes the cancels bucket (made by the first cancel) and
    // the task's result.
    req(
        &nats,
        "weave.api.tasks.submit",
        br#"{"type": "echo", "id": "first"}"#,
    )
    .await;
    let first = req(&nats, "weave.api.tasks.cancel", br#"{"task_id": "first"}"#).await;
    assert_eq!(first["ok"], true, "{first}");
    let restore = park_for_a_second(&js, &["KV_weave-cancels", "WEAVE_RESULTS"]).await;
    let cancel = req(
        &nats,
        "weave.api.tasks.cancel",
        br#"{"task_id": "parked-task"}"#,
    )
    .await;
    restore.await.expect("restore");
    assert_eq!(cancel["ok"], true, "{cancel}");
    assert_eq!(status(&nats, "parked-task").await, "cancelled");
}

/// The task's status as `tasks.get` tells it.
async fn status(nats: &async_nats::Client, task_id: &str) -> serde_json::Value {
    let body = serde_json::json!({ "task_id": task_id }).to_string();
    let info = req(nats, "weave.api.tasks.get", body.as_bytes()).await;
    info["status"].clone()
}

/// Takes the subjects of `streams` away; the handle puts them back after
/// a second.
async fn park_for_a_second(
    js: &async_nats::jetstream::Context,
    streams: &[&str],
) -> tokio::task::JoinHandle<()> {
    let mut parked = Vec::new();
    for name in streams {
        let mut stream = js.get_stream(*name).await.expect(name);
        let config = stream.info().await.expect(name).config.clone();
        let mut cut = config.clone();
        cut.subjects = vec![format!("parked.{name}")];
        js.update_stream(cut).await.expect("take the subjects away");
        parked.push(config);
    }
    let js = js.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(1)).await;
        for config in parked {
            js.update_stream(config)
                .await
                .expect("restore the subjects");
        }
    })
}
