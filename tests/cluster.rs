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
