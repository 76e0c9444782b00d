//! Periodic tasks without a beat process (contract §12), from outside:
//! `weave.api.schedules.*`, the CLI, the fired tasks.

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

/// Results whose echoed payload carries `mark`.
async fn fired(c: &jetweave::Client, mark: &str) -> usize {
    stored(c.nats(), "WEAVE_RESULTS", "weave.results.>")
        .await
        .iter()
        .filter(|(_, v)| v["result"]["mark"] == mark)
        .count()
}

/// Messages stored on a queue no node serves (read by direct get: a
/// work-queue stream allows no ordered consumer).
async fn queued(c: &jetweave::Client, queue: &str) -> Vec<Value> {
    let js = async_nats::jetstream::new(c.nats().clone());
    let Ok(stream) = js.get_stream("WEAVE_TASKS").await else {
        return Vec::new();
    };
    let subject = format!("weave.tasks.{queue}.normal");
    let (mut out, mut seq) = (Vec::new(), 1);
    while let Ok(m) = stream
        .direct_get_next_for_subject(subject.as_str(), Some(seq))
        .await
    {
        seq = m.sequence + 1;
        out.extend(serde_json::from_slice(&m.payload).ok());
    }
    out
}

#[tokio::test]
async fn schedules_fire_once_per_tick_and_stop_when_deleted() {
    let server = NatsServer::start();
    let _c1 = start_coordinator(&server, "c1").await;
    let _c2 = start_coordinator(&server, "c2").await;
    let _n = start_node(&server, node_config("n1")).await;
    let c = api_client(&server).await;

    let t0 = Instant::now();
    let v = api_raw(
        &c,
        "schedules.create",
        json!({"schedule_id": "a", "every_s": 1,
        "type": "echo", "payload": {"mark": "a"}}),
    )
    .await;
    assert_eq!(
        (v["ok"].clone(), v["schedule_id"].clone()),
        (json!(true), json!("a")),
        "{v}"
    );
    assert!(v["next_at"].is_string(), "{v}");
    let url = server.url();
    let o = jw_async(&[
        "--nats-url",
        &url,
        "schedule",
        "create",
        "b",
        "--every",
        "1",
        "--type",
        "echo",
        "--queue",
        "idle",
        "--payload",
        r#"{"mark": "b"}"#,
    ])
    .await;
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));

    // Three firings of a 1 s schedule take at least 2 s, with two
    // coordinators running: the server fires, once per tick.
    wait_for("three firings of a", Duration::from_secs(10), || async {
        (fired(&c, "a").await >= 3).then_some(())
    })
    .await;
    assert!(
        t0.elapsed() >= Duration::from_secs(2),
        "fired too often: {:?}",
        t0.elapsed()
    );
    // Each firing is a normal task naming its schedule.
    let b = wait_for("b fired", Duration::from_secs(5), || async {
        queued(&c, "idle").await.into_iter().next()
    })
    .await;
    assert_eq!(b["metadata"]["schedule_id"], "b");
    assert_eq!(b["type"], "echo");

    let list = c.schedules().await.unwrap();
    let ids: Vec<&str> = list.iter().map(|s| s.schedule_id.as_str()).collect();
    assert_eq!(ids, ["a", "b"]);
    assert_eq!((list[1].every_s, list[1].queue.as_str()), (Some(1), "idle"));
    // Replacing keeps one schedule per id.
    c.schedule_create(
        &serde_json::from_value(json!({"schedule_id": "b", "every_s": 1,
        "type": "echo", "queue": "idle", "payload": {"mark": "b2"}}))
        .unwrap(),
    )
    .await
    .unwrap();
    assert_eq!(c.schedules().await.unwrap().len(), 2);

    // Deleted: at most one more firing (within +1 s), while b goes on.
    c.schedule_delete("a").await.unwrap();
    let after = fired(&c, "a").await;
    let b_now = queued(&c, "idle").await.len();
    wait_for("b fires twice more", Duration::from_secs(10), || async {
        (queued(&c, "idle").await.len() >= b_now + 2).then_some(())
    })
    .await;
    assert!(
        fired(&c, "a").await <= after + 1,
        "a fired after its deletion"
    );
    let o = jw_async(&["--nats-url", &url, "schedule", "rm", "b"]).await;
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(c.schedules().await.unwrap().is_empty());

    let v = api_raw(&c, "schedules.delete", json!({"schedule_id": "a"})).await;
    assert_eq!(v["code"], "not_found", "{v}");
    for bad in [
        json!({"schedule_id": "x", "every_s": 0, "type": "echo"}),
        json!({"schedule_id": "x", "every_s": 1.5, "type": "echo"}),
        json!({"schedule_id": "x", "every_s": 1, "cron": "* * * * * *", "type": "echo"}),
        json!({"schedule_id": "x", "type": "echo"}),
        json!({"schedule_id": "x", "cron": "nonsense", "type": "echo"}),
        json!({"schedule_id": "x", "every_s": 1}),
        json!({"schedule_id": "x.y", "every_s": 1, "type": "echo"}),
        json!({"schedule_id": "x", "every_s": 1, "type": "echo", "extra": 1}),
    ] {
        let v = api_raw(&c, "schedules.create", bad.clone()).await;
        assert_eq!(v["ok"], false, "{bad}: {v}");
    }
    assert!(
        c.schedules().await.unwrap().is_empty(),
        "nothing stored by bad requests"
    );
}

/// A schedule lives in JetStream: it fires again after the server restarts
/// (no process of ours keeps it), and a cron schedule is accepted.
#[tokio::test]
async fn a_schedule_survives_a_server_restart() {
    let mut server = NatsServer::start();
    let _c = start_coordinator(&server, "c1").await;
    let c = api_client(&server).await;
    let v = api_raw(
        &c,
        "schedules.create",
        json!({"schedule_id": "r", "cron": "* * * * * *",
        "type": "echo", "queue": "idle"}),
    )
    .await;
    assert_eq!(v["ok"], true, "{v}");
    wait_for("fired once", Duration::from_secs(5), || async {
        (!queued(&c, "idle").await.is_empty()).then_some(())
    })
    .await;
    server.restart();
    let before = wait_for("server back", Duration::from_secs(15), || async {
        Some(queued(&c, "idle").await.len()).filter(|n| *n > 0)
    })
    .await;
    wait_for(
        "fires after the restart",
        Duration::from_secs(10),
        || async { (queued(&c, "idle").await.len() > before).then_some(()) },
    )
    .await;
}
