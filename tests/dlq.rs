//! Dead letters you can act on (contract §11), from outside: the
//! `weave.api.dlq.*` subjects, the CLI and the sidecar.

mod common;

use std::time::Duration;

use common::*;
use serde_json::{json, Value};

/// A task that fails both of its attempts on `queue` at `priority`.
async fn doomed(c: &jetweave::Client, id: &str, queue: &str, priority: &str) {
    publish_task(
        c.nats(),
        &format!("weave.tasks.{queue}.{priority}"),
        Some(id),
        json!({"type": "fail", "payload": {"times": -1}, "max_attempts": 2,
               "backoff_s": [0.1], "metadata": {"owner": "t"}}),
    )
    .await;
    let r = c
        .wait(id, Duration::from_secs(20))
        .await
        .expect("dead result");
    assert_eq!(r.status.as_str(), "dead", "{id}");
}

#[tokio::test]
async fn dead_letters_are_listed_requeued_and_purged() {
    let server = NatsServer::start();
    let _c = start_coordinator(&server, "c1").await;
    let mut cfg = node_config("n1");
    cfg.queues = vec!["default".into(), "other".into()];
    let _n = start_node(&server, cfg).await;
    let c = api_client(&server).await;
    doomed(&c, "d1", "default", "high").await;
    doomed(&c, "d2", "default", "normal").await;
    doomed(&c, "d3", "other", "normal").await;

    // list: oldest first, total counts beyond the limit, a queue filter.
    let l = c.dlq_list(None, Some(2)).await.unwrap();
    assert_eq!(l.total, 3);
    let ids: Vec<&str> = l.entries.iter().map(|e| e.task_id.as_str()).collect();
    assert_eq!(ids, ["d1", "d2"]);
    let e = &l.entries[0];
    assert_eq!(
        (e.queue.as_str(), e.task_type.as_str(), e.attempts),
        ("default", "fail", 2)
    );
    assert!(e.error.contains("planned failure"), "{e:?}");
    assert_eq!(c.dlq_list(Some("other"), None).await.unwrap().total, 1);

    // requeue one: a new task, same type/payload/queue/priority, fresh
    // attempts, linked to the old, which keeps its dead result.
    let v = c.dlq_requeue("d1").await.unwrap();
    assert_eq!(v["requeued_from"], "d1");
    let new = v["task_id"].as_str().unwrap().to_string();
    assert_ne!(new, "d1");
    let r = c.wait(&new, Duration::from_secs(20)).await.unwrap();
    assert_eq!(
        (r.status.as_str(), r.attempts),
        ("dead", 2),
        "fresh attempts"
    );
    assert_eq!(
        c.result("d1").await.unwrap().unwrap().status.as_str(),
        "dead"
    );
    let dead = stored(c.nats(), "WEAVE_DLQ", "weave.dlq.default").await;
    let again = dead
        .iter()
        .map(|(_, v)| v)
        .find(|v| v["task_id"] == new.as_str())
        .expect("the requeued task died again");
    assert_eq!(again["envelope"]["metadata"]["requeued_from"], "d1");
    assert_eq!(again["envelope"]["metadata"]["owner"], "t");
    assert_eq!(again["priority"], "high", "same priority");
    assert!(
        !dead.iter().any(|(_, v)| v["task_id"] == "d1"),
        "d1 left the DLQ"
    );

    // errors
    let v = api_raw(&c, "dlq.requeue", json!({"task_id": "nope"})).await;
    assert_eq!(v["code"], "not_found", "{v}");
    for bad in [
        json!({}),
        json!({"all": true}),
        json!({"task_id": "d2", "x": 1}),
        json!({"queue": "bad.queue", "all": true}),
    ] {
        let v = api_raw(&c, "dlq.requeue", bad.clone()).await;
        assert_eq!(v["ok"], false, "{bad}: {v}");
    }
    let v = api_raw(&c, "dlq.list", json!({"limit": 0})).await;
    assert_eq!(v["code"], "invalid_value");

    // requeue all of a queue, then purge.
    let v = c.dlq_requeue_all("other").await.unwrap();
    assert_eq!(v["requeued"], 1);
    let v = c.dlq_purge(Some("default")).await.unwrap();
    assert!(v["purged"].as_u64().unwrap() >= 2, "{v}");
    assert_eq!(c.dlq_list(Some("default"), None).await.unwrap().total, 0);
}

/// The CLI and the sidecar routes.
#[tokio::test]
async fn dlq_from_the_cli_and_the_sidecar() {
    let server = NatsServer::start();
    let _c = start_coordinator(&server, "c1").await;
    let _n = start_node(&server, node_config("n1")).await;
    let c = api_client(&server).await;
    doomed(&c, "x1", "default", "normal").await;
    doomed(&c, "x2", "default", "normal").await;
    let url = server.url();
    let o = jw_async(&["--nats-url", &url, "dlq", "ls", "--json"]).await;
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["total"], 2);
    let o = jw_async(&["--nats-url", &url, "dlq", "requeue", "x1"]).await;
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let o = jw_async(&["--nats-url", &url, "dlq", "requeue", "nope"]).await;
    assert_eq!(o.status.code(), Some(1));

    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let _s = Proc::spawn(&["--nats-url", &url, "sidecar", "--listen", &listen]);
    let base = format!("http://{listen}");
    let list = wait_for("sidecar up", Duration::from_secs(10), || async {
        reqwest::get(format!("{base}/dlq?queue=default")).await.ok()
    })
    .await;
    assert_eq!(list.status().as_u16(), 200);
    let v: Value = list.json().await.unwrap();
    assert!(
        v["entries"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["task_id"] == "x2"),
        "{v}"
    );
    let http = reqwest::Client::new();
    let r = http
        .post(format!("{base}/dlq/x2/requeue"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let r = http
        .post(format!("{base}/dlq/x2/requeue"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 404, "already requeued");
    let r = reqwest::get(format!("{base}/dlq?limit=x")).await.unwrap();
    assert_eq!(r.status().as_u16(), 400);
    let o = jw_async(&["--nats-url", &url, "dlq", "purge"]).await;
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}
