//! The coordinator: serves the `weave-api` service, and — while it holds
//! the leader lease — assigns run shards to nodes and moves them when nodes
//! die, drain or join.
//!
//! - `api`: the `weave-api` endpoints, served by every coordinator.
//! - `leader`: the lease in the `P-leader` KV bucket (per-key TTL,
//!   renewed with a revision check), so one coordinator leads.
//! - `planner`: pure planning (shard keys, placement strategy).
//! - `runs`: the leader's assignment engine.
//!
//! Any number of coordinators can run; they share nothing but NATS.

mod api;
mod dlq;
mod leader;
mod limits;
mod planner;
mod runs;
mod schedules;

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, kv, stream};

use crate::error::Error;
use crate::shutdown::Shutdown;
use crate::store::discovery::{ClusterView, KvDiscovery};
use crate::wire::subjects::Subjects;
use tokio_util::task::TaskTracker;

pub use leader::Leader;
pub use planner::{plan_shards, AssignStrategy};

/// How a coordinator runs.
#[derive(Debug, Clone)]
pub struct CoordinatorConfig {
    /// Its id (`[A-Za-z0-9_-]{1,64}`).
    pub id: String,
    /// Subject prefix.
    pub prefix: String,
    /// Leader lease TTL (whole seconds).
    pub lease_ttl: Duration,
    /// Shard assignment strategy.
    pub strategy: AssignStrategy,
    /// Most shards a run may have.
    pub max_shards: u64,
    /// Replicas of the JetStream resources it creates (0: 1 on a single
    /// server, 3 on a cluster).
    pub replicas: usize,
    /// Node TTL used when it opens the discovery bucket.
    pub node_ttl: Duration,
    /// Most tasks waiting in a queue before `tasks.submit` refuses more
    /// with `queue_full` (queues not named: no bound).
    pub max_pending: std::collections::BTreeMap<String, u64>,
    /// Hosts that run no node, put in discovery at start (static
    /// discovery, `[[static_node]]`).
    pub static_nodes: Vec<crate::store::discovery::StaticNode>,
}

impl CoordinatorConfig {
    /// Defaults with a random id.
    pub fn new() -> Self {
        CoordinatorConfig {
            id: format!("coord-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]),
            prefix: crate::wire::subjects::DEFAULT_PREFIX.into(),
            lease_ttl: Duration::from_secs(5),
            strategy: AssignStrategy::LeastLoaded,
            max_shards: 100_000,
            replicas: 0,
            node_ttl: Duration::from_secs(5),
            max_pending: Default::default(),
            static_nodes: vec![],
        }
    }
}

impl Default for CoordinatorConfig {
    fn default() -> Self {
        Self::new()
    }
}

pub(crate) struct CoordinatorState {
    pub id: String,
    pub cfg: CoordinatorConfig,
    pub subjects: Subjects,
    pub client: async_nats::Client,
    pub js: jetstream::Context,
    pub view: ClusterView,
    pub discovery: KvDiscovery,
    pub results: stream::Stream,
    pub tasks: stream::Stream,
    pub runs: kv::Store,
    pub leader: Leader,
    pub shutdown: Shutdown,
    /// Every loop and in-flight request of this coordinator.
    pub loops: TaskTracker,
}

/// A running coordinator.
#[derive(Clone)]
pub struct Coordinator {
    shared: Arc<CoordinatorState>,
}

impl Coordinator {
    /// Starts the API service, the leader election and the run loop.
    pub async fn start(
        client: async_nats::Client,
        cfg: CoordinatorConfig,
        shutdown: Shutdown,
    ) -> Result<Coordinator, Error> {
        crate::wire::subjects::validate_id("coordinator id", &cfg.id)?;
        let mut cfg = cfg;
        let subjects = Subjects::new(&cfg.prefix)?;
        if cfg.replicas == 0 {
            cfg.replicas = crate::store::replicas_for(&client, &subjects).await;
        }
        if cfg.lease_ttl.as_secs() < 1 || cfg.lease_ttl.subsec_nanos() != 0 {
            return Err(Error::Config(
                "lease TTL must be a whole number of seconds >= 1".into(),
            ));
        }
        let js = jetstream::new(client.clone());
        crate::store::ensure_streams(&js, &subjects, cfg.replicas).await?;
        crate::store::ensure_shards_stream(&js, &subjects, cfg.replicas).await?;
        let discovery =
            KvDiscovery::open(client.clone(), &subjects, cfg.node_ttl, cfg.replicas).await?;
        for n in &cfg.static_nodes {
            discovery.put_static(n, Default::default()).await?;
        }
        let loops = TaskTracker::new();
        let view = ClusterView::start(&discovery, shutdown.clone(), &loops).await?;
        let results = crate::store::open_stream(&js, &subjects.results_stream()).await?;
        let tasks = api::tasks_stream(&js, &subjects).await?;
        let runs = crate::store::runs_bucket(&js, &subjects, cfg.replicas).await?;
        let leader = Leader::open(&js, &subjects, &cfg.id, cfg.lease_ttl, cfg.replicas).await?;
        let shared = Arc::new(CoordinatorState {
            id: cfg.id.clone(),
            cfg,
            subjects,
            client: client.clone(),
            js,
            view,
            discovery,
            results,
            tasks,
            runs,
            leader,
            shutdown,
            loops,
        });
        api::start(&shared).await?;
        shared
            .leader
            .clone()
            .spawn(shared.shutdown.clone(), shared.js.clone(), &shared.loops);
        runs::start_loop(&shared).await?;
        client.flush().await.map_err(Error::nats_source)?;
        tracing::info!(id = %shared.id, "coordinator started");
        Ok(Coordinator { shared })
    }

    /// This coordinator's id.
    pub fn id(&self) -> &str {
        &self.shared.id
    }

    /// Does it lead now?
    pub fn is_leader(&self) -> bool {
        self.shared.leader.is_leader()
    }

    /// Resolves once it has stopped: after the shutdown signal, when every
    /// loop and in-flight request has ended, and then the lease is given up
    /// (if it held it) — after the last renewal, never during one.
    pub async fn wait(&self) {
        self.shared.shutdown.wait().await;
        self.shared.loops.close();
        self.shared.loops.wait().await;
        self.shared.leader.release(&self.shared.js).await;
    }
}
