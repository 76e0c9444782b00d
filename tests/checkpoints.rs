//! Checkpoints (contract §8) in the object store.
mod common;

use std::time::Duration;

use common::*;
use futures::StreamExt;
use jetweave::checkpoint::Checkpoints;
use jetweave::handler::TaskContext;
use jetweave::subjects::Subjects;
use serde_json::json;

#[tokio::test]
async fn large_checkpoints_round_trip_and_names_sort_by_time() {
    let server = NatsServer::start();
    let s = Subjects::new("weave").unwrap();
    let cp = Checkpoints::open(server.client().await, &s, 3, 1)
        .await
        .unwrap();
    let ctx = TaskContext::new("run1:0:slice:0:10", "count", 1);
    assert!(cp.latest("run1:0:slice:0:10").await.unwrap().is_none());
    let big: String = (0..8 * 1024 * 1024)
        .map(|i| (b'a' + (i % 26) as u8) as char)
        .collect();
    let t0 = std::time::Instant::now();
    cp.save(&ctx, json!({"blob": big}), Default::default())
        .await
        .unwrap();
    let latest = cp.latest("run1:0:slice:0:10").await.unwrap().unwrap();
    eprintln!("8 MiB checkpoint save+load {:?}", t0.elapsed());
    assert_eq!(
        latest.payload["blob"].as_str().unwrap().len(),
        8 * 1024 * 1024
    );
    assert!(latest.payload["blob"] == json!(big));
    for i in 0..4 {
        cp.save(&ctx, json!({"i": i}), Default::default())
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    // Pruned to 3, oldest first.
    let all = cp.all("run1:0:slice:0:10").await.unwrap();
    let is: Vec<i64> = all
        .iter()
        .map(|c| c.payload["i"].as_i64().unwrap())
        .collect();
    assert_eq!(is, [1, 2, 3]);
    assert_eq!(
        cp.latest("run1:0:slice:0:10")
            .await
            .unwrap()
            .unwrap()
            .payload["i"],
        3
    );
    // `nats obj ls weave-checkpoints`: names sort by time.
    let js = async_nats::jetstream::new(server.client().await);
    let store = js.get_object_store("weave-checkpoints").await.unwrap();
    let mut list = store.list().await.unwrap();
    let mut names = Vec::new();
    while let Some(Ok(o)) = list.next().await {
        names.push(o.name);
    }
    assert_eq!(names.len(), 3);
    let mut sorted = names.clone();
    sorted.sort();
    let by_time: Vec<String> = all.iter().map(|c| c.checkpoint_id.clone()).collect();
    for (name, id) in sorted.iter().zip(&by_time) {
        assert!(name.starts_with("run1:0:slice:0:10/"), "{name}");
        assert!(name.ends_with(id.as_str()), "{name} sorts with {id}");
    }
    // A corrupt newest object: `latest` reads it, skips it and answers the
    // newest readable checkpoint.
    let mut body: &[u8] = b"{not json";
    store
        .put("run1:0:slice:0:10/99999999999999999999-corrupt", &mut body)
        .await
        .unwrap();
    let latest = cp.latest("run1:0:slice:0:10").await.unwrap().unwrap();
    assert_eq!(latest.payload["i"], 3);
    assert_eq!(cp.all("run1:0:slice:0:10").await.unwrap().len(), 3);
}

/// §8 from outside: a node's `count` handler resumes from the newest
/// readable checkpoint when the newest object is corrupt, and starts from 0
/// when nothing readable is left; the checkpoints it writes have the
/// contract's object names and every CheckpointRecord field.
#[tokio::test]
async fn a_corrupt_latest_checkpoint_is_skipped_by_the_handler() {
    let server = NatsServer::start();
    let nats = server.client().await;
    let s = Subjects::new("weave").unwrap();
    let cp = Checkpoints::open(nats.clone(), &s, 5, 1).await.unwrap();
    let js = async_nats::jetstream::new(nats.clone());
    let store = js.get_object_store("weave-checkpoints").await.unwrap();
    for (task, done) in [("resume-me", 3), ("resume-me", 5), ("spoiled", 2)] {
        let ctx = TaskContext::new(task, "count", 1);
        cp.save(&ctx, json!({"done": done}), Default::default())
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    // The newest checkpoint of each is overwritten with garbage in place.
    let mut list = store.list().await.unwrap();
    let mut names = Vec::new();
    while let Some(Ok(o)) = list.next().await {
        names.push(o.name);
    }
    names.sort();
    for task in ["resume-me/", "spoiled/"] {
        let newest = names.iter().rfind(|n| n.starts_with(task)).unwrap();
        let mut body: &[u8] = b"\x00garbage";
        store.put(newest.as_str(), &mut body).await.unwrap();
    }
    let _node = start_node(&server, node_config("n1")).await;
    let api = api_client(&server).await;
    for id in ["resume-me", "fresh", "spoiled"] {
        publish_task(
            &nats,
            "weave.tasks.default.normal",
            Some(id),
            json!({"type": "count", "payload": {"items": 6}}),
        )
        .await;
    }
    let r = api
        .wait("resume-me", Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(r.result, json!({"items": 6, "resumed_from": 3}), "{r:?}");
    let r = api.wait("fresh", Duration::from_secs(10)).await.unwrap();
    assert_eq!(r.result, json!({"items": 6, "resumed_from": 0}), "{r:?}");
    let r = api.wait("spoiled", Duration::from_secs(10)).await.unwrap();
    assert_eq!(r.result, json!({"items": 6, "resumed_from": 0}), "{r:?}");

    // What the node wrote: `<task_id>/<unix_nanos:020>-<checkpoint_id>`.
    let mut list = store.list().await.unwrap();
    let mut names = Vec::new();
    while let Some(Ok(o)) = list.next().await {
        names.push(o.name);
    }
    let written: Vec<&String> = names.iter().filter(|n| n.starts_with("fresh/")).collect();
    assert_eq!(written.len(), 6, "one per item: {names:?}");
    let records = cp.all("fresh").await.unwrap();
    assert_eq!(records.len(), 6);
    assert_eq!(records.last().unwrap().payload, json!({"done": 6}));
    for (name, rec) in written.iter().zip(&records) {
        let rest = name.strip_prefix("fresh/").unwrap();
        let (nanos, id) = rest.split_once('-').unwrap();
        assert_eq!(nanos.len(), 20, "{name}");
        let nanos: i128 = nanos.parse().unwrap();
        assert_eq!(id, rec.checkpoint_id);
        let created = time::OffsetDateTime::parse(
            &rec.created_at,
            &time::format_description::well_known::Rfc3339,
        )
        .unwrap();
        let skew = (created.unix_timestamp_nanos() - nanos).abs();
        assert!(
            skew < 1_000_000_000,
            "name time and created_at agree: {name} {rec:?}"
        );
        assert_eq!(rec.task_id, "fresh");
        assert_eq!(rec.node_id, "n1");
        assert_eq!(
            (rec.run_id.clone(), rec.iteration, rec.shard_key.clone()),
            (None, None, None)
        );
        assert!(rec.metadata.is_empty());
    }
}

/// §8: a run shard's checkpoints carry its run id, iteration and shard key.
#[tokio::test]
async fn shard_checkpoints_name_their_run_and_shard() {
    let server = NatsServer::start();
    let _c = start_coordinator(&server, "c1").await;
    let _n = start_node(&server, node_config("n1")).await;
    let api = api_client(&server).await;
    api.create_run(&json!({"run_id": "cpr", "dataset_id": "d", "iteration": 4,
        "total_items": 3, "shard_size": 3, "type": "count"}))
        .await
        .unwrap();
    api.wait_run("cpr", Duration::from_secs(20), |_, _| {})
        .await
        .unwrap();
    let cp = Checkpoints::open(
        server.client().await,
        &Subjects::new("weave").unwrap(),
        3,
        1,
    )
    .await
    .unwrap();
    let all = cp.all("cpr:4:slice:0:3").await.unwrap();
    assert_eq!(all.len(), 3);
    let raw = serde_json::to_value(&all[2]).unwrap();
    let mut fields: Vec<&str> = raw
        .as_object()
        .unwrap()
        .keys()
        .map(|k| k.as_str())
        .collect();
    fields.sort();
    assert_eq!(
        fields,
        [
            "checkpoint_id",
            "created_at",
            "iteration",
            "metadata",
            "node_id",
            "payload",
            "run_id",
            "shard_key",
            "task_id"
        ]
    );
    assert_eq!(raw["run_id"], "cpr");
    assert_eq!(raw["iteration"], 4);
    assert_eq!(raw["shard_key"], "slice:0:3");
    assert_eq!(raw["task_id"], "cpr:4:slice:0:3");
    assert_eq!(raw["node_id"], "n1");
    assert_eq!(raw["payload"], json!({"done": 3}));
}

/// A handler sets a checkpoint's metadata with `ctx.checkpoint_with`; it is
/// stored in the record next to the payload (seed 002).
#[tokio::test]
async fn a_handler_sets_checkpoint_metadata() {
    let server = NatsServer::start();
    let nats = server.client().await;
    let mut node = jetweave::Node::new(node_config("n1"));
    node.handler("cursor", |ctx, _payload| async move {
        let mut meta = serde_json::Map::new();
        meta.insert("cursor".into(), json!("2026-12-01"));
        ctx.checkpoint_with(json!({"done": 1}), meta).await?;
        Ok(json!("saved"))
    });
    let _n = start_node_with(&server, node).await;
    publish_task(
        &nats,
        "weave.tasks.default.normal",
        Some("with-meta"),
        json!({"type": "cursor"}),
    )
    .await;
    let api = api_client(&server).await;
    let r = api
        .wait("with-meta", Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(r.result, json!("saved"), "{r:?}");
    let s = Subjects::new("weave").unwrap();
    let cp = Checkpoints::open(nats, &s, 5, 1).await.unwrap();
    let rec = cp.latest("with-meta").await.unwrap().expect("a checkpoint");
    assert_eq!(rec.payload, json!({"done": 1}));
    assert_eq!(rec.metadata.get("cursor"), Some(&json!("2026-12-01")));
}

/// `latest` and `save` never list the object store (a listing reads the
/// metadata of every checkpoint it holds): they go through the per-task
/// index. Seen from the server: no consumer on the store's metadata
/// subjects is created, whatever else the store holds.
#[tokio::test]
async fn latest_and_save_never_list_the_store() {
    let server = NatsServer::start();
    let nats = server.client().await;
    let s = Subjects::new("weave").unwrap();
    let cp = Checkpoints::open(nats.clone(), &s, 2, 1).await.unwrap();
    for i in 0..20 {
        let ctx = TaskContext::new(format!("other-{i}"), "count", 1);
        cp.save(&ctx, json!({"i": i}), Default::default())
            .await
            .unwrap();
    }
    let mut creates = nats
        .subscribe("$JS.API.CONSUMER.CREATE.OBJ_weave-checkpoints.>")
        .await
        .unwrap();
    let mut plain = nats
        .subscribe("$JS.API.CONSUMER.CREATE.OBJ_weave-checkpoints")
        .await
        .unwrap();
    nats.flush().await.unwrap();
    let ctx = TaskContext::new("t:1", "count", 1);
    assert!(cp.latest("t:1").await.unwrap().is_none());
    for done in 0..4 {
        cp.save(&ctx, json!({"done": done}), Default::default())
            .await
            .unwrap();
        let back = cp.latest("t:1").await.unwrap().unwrap();
        assert_eq!(back.payload["done"], done);
    }
    let all = cp.all("t:1").await.unwrap();
    assert_eq!(all.len(), 2, "pruned to keep = 2 through the index");
    // `all` lists (that is what it is for); nothing before it did.
    let mut listings = Vec::new();
    let mut seen = 0;
    while let Ok(Some(m)) = tokio::time::timeout(Duration::from_millis(300), async {
        tokio::select! { m = creates.next() => m, m = plain.next() => m }
    })
    .await
    {
        seen += 1;
        let body = String::from_utf8_lossy(&m.payload).to_string();
        if body.contains("$O.weave-checkpoints.M.>") || m.subject.ends_with(".M.>") {
            listings.push(body);
        }
    }
    assert!(seen >= 5, "chunk reads create consumers: {seen}");
    assert_eq!(listings.len(), 1, "only all() listed: {listings:?}");
}
