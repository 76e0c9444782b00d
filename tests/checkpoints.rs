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
    // A corrupt checkpoint: the handler starts fresh.
    let mut body: &[u8] = b"{not json";
    store
        .put("run1:0:slice:0:10/99999999999999999999-corrupt", &mut body)
        .await
        .unwrap();
    assert!(cp.latest("run1:0:slice:0:10").await.is_err());
    let ctx = TaskContext::new("run1:0:slice:0:10", "count", 1);
    assert!(ctx.latest_checkpoint().await.is_none());
}
