//! The worker node: joins discovery, heartbeats, obeys control, hosts
//! processes, and runs tasks from its queues.
//!
//! Stopping has one path. Every way to stop a node — the caller's
//! [`Shutdown`], [`NodeHandle::shutdown`], the `shutdown` verb, SIGTERM or
//! SIGINT in the binary — is a *stop request* (with a deadline) that the
//! lifecycle task carries out: drain, wait for in-flight work up to the
//! deadline, end every loop (and wait for them), delete the KV entry,
//! report done. The loops listen to one internal signal that only the
//! lifecycle triggers.
//!
//! [`Node::start`] spawns these parts:
//! - the *heartbeat* loop: publishes a [`Heartbeat`] and refreshes the
//!   node's KV entry (with TTL) every interval, and at once on a health
//!   change;
//! - the `weave-node` micro service with three endpoints: `control`
//!   (`P.ctl.<id>.>`), `broadcast` (`P.ctl.all.*`, its own queue group so
//!   every node answers) and `events` (`P.event.<id>.*`);
//! - one dispatcher per queue (`dispatch`; one attempt in `attempt`) and the cancel watch;
//! - the *lifecycle* task, which on `shutdown` (verb, signal or
//!   [`NodeHandle::shutdown`]) drains, waits for in-flight work up to a
//!   deadline, deletes the KV entry and stops everything.

mod attempt;
mod dispatch;
mod limits;
mod long_poll;
mod process;
mod spans;
mod task_message;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream;
use async_nats::service::ServiceExt;
use bytes::Bytes;
use futures::StreamExt;
use serde::Deserialize;
use serde_json::{json, Map, Value};
use tokio::sync::{watch, Notify};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{NodeConfig, MAX_LISTED};
use crate::error::{Error, ErrorCode};
use crate::handler::{Handlers, TaskContext};
use crate::shutdown::Shutdown;
use crate::store::audit::publish_audit;
use crate::store::checkpoint::Checkpoints;
use crate::store::discovery::KvDiscovery;
use crate::wire::protocol::{error_body, json_body};
use crate::wire::protocol::{
    now_rfc3339, parse_object, EventInjected, EventOutcome, EventRequest, Health, Heartbeat,
    NoFields, NodeInfo, WorkerState,
};
use crate::wire::subjects::{Subjects, NODE_SERVICE};
use process::Processes;

/// Default bound on waiting for in-flight work at shutdown.
pub const DEFAULT_SHUTDOWN_DEADLINE: Duration = Duration::from_secs(30);

/// Why a running task's token was cancelled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CancelReason {
    /// A user asked: the task ends `cancelled`.
    User,
    /// The attempt ran out of time.
    Timeout,
    /// The node is stopping: the task goes back to the queue.
    Shutdown,
    /// The attempt's lease is gone (no progress ack confirmed for longer
    /// than `ack_wait`: the node was paused or cut off, or the server
    /// redelivered the task to this node): another delivery owns it now.
    LeaseLost,
}

/// A task running on this node.
pub(crate) struct Running {
    pub queue: String,
    pub cancel: CancellationToken,
    pub reason: Arc<Mutex<Option<CancelReason>>>,
    pub started_at: String,
}

/// The other nodes as discovery lists them, read only when a task has no
/// handler here (rare) and kept [`Peers::FRESH`]. A node does not watch
/// discovery: every watcher receives every node's entry on every beat, so
/// N nodes watching would be N² messages a beat (docs/operations.md,
/// scaling model).
pub(crate) struct Peers {
    discovery: KvDiscovery,
    cached: tokio::sync::Mutex<Option<(std::time::Instant, Arc<Vec<NodeInfo>>)>>,
}

impl Peers {
    const FRESH: Duration = Duration::from_secs(2);

    fn new(discovery: KvDiscovery) -> Self {
        Peers {
            discovery,
            cached: tokio::sync::Mutex::new(None),
        }
    }

    /// The listed nodes (one read shared by concurrent callers), or `None`
    /// when discovery cannot be read now.
    pub(crate) async fn nodes(&self) -> Option<Arc<Vec<NodeInfo>>> {
        let mut cached = self.cached.lock().await;
        if let Some((at, nodes)) = cached.as_ref() {
            if at.elapsed() < Self::FRESH {
                return Some(nodes.clone());
            }
        }
        let read = tokio::time::timeout(Self::FRESH, self.discovery.nodes()).await;
        let nodes = Arc::new(read.ok()?.ok()?);
        *cached = Some((std::time::Instant::now(), nodes.clone()));
        Some(nodes)
    }
}

/// State shared by every part of a node.
pub(crate) struct NodeState {
    pub cfg: NodeConfig,
    pub subjects: Subjects,
    pub client: async_nats::Client,
    pub js: jetstream::Context,
    pub discovery: KvDiscovery,
    pub peers: Peers,
    pub handlers: Handlers,
    pub checkpoints: Option<Checkpoints>,
    pub health: watch::Sender<Health>,
    pub active: AtomicU32,
    pub completed: AtomicU64,
    pub failed: AtomicU64,
    pub running: Mutex<HashMap<String, Running>>,
    pub cancelled: Mutex<HashSet<String>>,
    pub processes: Processes,
    pub started_at: String,
    /// When the node started (monotonic, for `uptime_s`).
    pub started: std::time::Instant,
    /// Ends every loop of the node; only the lifecycle triggers it.
    pub shutdown: Shutdown,
    /// The stop request; the lifecycle task carries it out.
    pub stop_requested: Shutdown,
    /// The stop request's bound on waiting for in-flight work.
    pub stop_deadline: Mutex<Duration>,
    /// In-flight tasks, events and shards.
    pub work: TaskTracker,
    /// Every loop of the node (service, dispatchers, watches, heartbeat):
    /// the lifecycle waits for them before it reports the node stopped.
    pub loops: TaskTracker,
    /// Wakes the heartbeat loop for an immediate refresh.
    pub refresh: Notify,
    pub results: jetstream::stream::Stream,
    /// Failed-attempt counts (`P-attempts`).
    pub attempts: async_nats::jetstream::kv::Store,
    /// Task slots shared by the node's queues: one per handler running
    /// (or message asked for, on its way to a handler).
    pub slots: Arc<tokio::sync::Semaphore>,
    /// Attempts whose handler has returned and whose result is being
    /// stored: as many as slots. A slot serves the next task while its
    /// last one's result makes its round trip to the server, so a node
    /// holds at most twice `concurrency` unacknowledged messages.
    pub concluding: Arc<tokio::sync::Semaphore>,
    /// Replicas of the JetStream resources it creates.
    pub replicas: usize,
    /// Flow-control limits and the slots this node holds (contract §15).
    pub limits: Arc<limits::Limits>,
}

impl NodeState {
    pub(crate) fn health(&self) -> Health {
        *self.health.borrow()
    }

    pub(crate) fn set_health(&self, h: Health) -> bool {
        let changed = self.health.send_if_modified(|cur| {
            if *cur != h {
                *cur = h;
                true
            } else {
                false
            }
        });
        if changed {
            self.refresh.notify_one();
        }
        changed
    }

    fn running_by_queue(&self) -> Map<String, Value> {
        let mut m: BTreeMap<String, u64> = BTreeMap::new();
        {
            let r = self.running.lock().expect("lock poisoned");
            for t in r.values().filter(|t| t.queue != dispatch::SHARDS_LABEL) {
                *m.entry(t.queue.clone()).or_default() += 1;
            }
        }
        m.into_iter().map(|(k, v)| (k, json!(v))).collect()
    }

    pub(crate) fn node_info(&self) -> NodeInfo {
        let mut metadata: Map<String, Value> = self
            .cfg
            .metadata
            .iter()
            .map(|(k, v)| (k.clone(), json!(v)))
            .collect();
        let handlers = self.handlers.types();
        if handlers.len() > MAX_LISTED {
            metadata.insert("handlers_more".into(), json!(handlers.len() - MAX_LISTED));
        }
        let listed: Vec<_> = handlers.into_iter().take(MAX_LISTED).collect();
        metadata.insert("handlers".into(), json!(listed));
        metadata.insert(
            "running_by_queue".into(),
            Value::Object(self.running_by_queue()),
        );
        metadata.insert("processes".into(), json!(self.processes.running_count()));
        metadata.insert(
            "completed".into(),
            json!(self.completed.load(Ordering::Relaxed)),
        );
        metadata.insert("failed".into(), json!(self.failed.load(Ordering::Relaxed)));
        let throttled = self.limits.throttled_counts();
        if !throttled.is_empty() {
            metadata.insert("throttled".into(), json!(throttled));
        }
        NodeInfo {
            node_id: self.cfg.node_id.clone(),
            role: self.cfg.role,
            hostname: gethostname::gethostname().to_string_lossy().into_owned(),
            pid: std::process::id(),
            url: self.cfg.normalized_url(),
            queues: self.cfg.queues.clone(),
            capabilities: self.cfg.capabilities.clone(),
            max_concurrency: self.cfg.concurrency,
            health: self.health(),
            active_tasks: self.active.load(Ordering::Relaxed),
            started_at: self.started_at.clone(),
            last_heartbeat_at: now_rfc3339(),
            state: WorkerState::of(self.active.load(Ordering::Relaxed)),
            uptime_s: self.uptime_s(),
            available: self.available(),
            metadata,
        }
    }

    fn heartbeat(&self) -> Heartbeat {
        let mut metadata = Map::new();
        metadata.insert(
            "running_by_queue".into(),
            Value::Object(self.running_by_queue()),
        );
        Heartbeat {
            node_id: self.cfg.node_id.clone(),
            health: self.health(),
            active_tasks: self.active.load(Ordering::Relaxed),
            max_concurrency: self.cfg.concurrency,
            queues: self.cfg.queues.clone(),
            completed: self.completed.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
            last_heartbeat_at: now_rfc3339(),
            state: WorkerState::of(self.active.load(Ordering::Relaxed)),
            uptime_s: self.uptime_s(),
            available: self.available(),
            metadata,
        }
    }

    /// Seconds since the node started, to the millisecond.
    fn uptime_s(&self) -> f64 {
        (self.started.elapsed().as_secs_f64() * 1000.0).round() / 1000.0
    }

    /// Healthy with a free slot (a supervisor runs no tasks: never).
    fn available(&self) -> bool {
        self.health() == Health::Healthy
            && self.cfg.role != crate::wire::protocol::Role::Supervisor
            && self.active.load(Ordering::Relaxed) < self.cfg.concurrency
    }

    /// Publishes an audit event to `P.events.<kind>` (stream `P_EVENTS`).
    pub(crate) async fn audit(&self, kind: &str, details: Value) {
        publish_audit(
            &self.js,
            &self.subjects,
            kind,
            Some(&self.cfg.node_id),
            None,
            details,
        )
        .await
    }

    /// Like [`Self::audit`], stored once per `once_key` (a retried report
    /// is de-duplicated by `Nats-Msg-Id`).
    pub(crate) async fn audit_once(&self, kind: &str, details: Value, once_key: &str) {
        crate::store::audit::publish_audit_once(
            &self.js,
            &self.subjects,
            kind,
            Some(&self.cfg.node_id),
            None,
            details,
            once_key,
        )
        .await
    }

    fn ctl_ok(&self, mut extra: Map<String, Value>) -> Value {
        extra.insert("ok".into(), json!(true));
        extra.insert("node_id".into(), json!(self.cfg.node_id));
        extra.insert("health".into(), json!(self.health()));
        Value::Object(extra)
    }
}

/// A node, before it starts: its config and its handlers.
pub struct Node {
    config: NodeConfig,
    handlers: Handlers,
    replicas: usize,
}

impl Node {
    /// A node with the built-in handlers and the config file's external
    /// handlers.
    pub fn new(config: NodeConfig) -> Self {
        let mut handlers = Handlers::builtin();
        handlers.register_specs(&config.handlers);
        Node {
            config,
            handlers,
            replicas: 0,
        }
    }

    /// Registers a Rust handler for `task_type`.
    pub fn handler<F, Fut>(&mut self, task_type: &str, f: F) -> &mut Self
    where
        F: Fn(TaskContext, Value) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = crate::handler::HandlerResult> + Send + 'static,
    {
        self.handlers.register(task_type, f);
        self
    }

    /// Replicas for the JetStream resources it creates; by default 1 on
    /// a single server and 3 on a cluster.
    pub fn replicas(&mut self, n: usize) -> &mut Self {
        self.replicas = n.max(1);
        self
    }

    /// Joins the cluster and starts every part. Returns once the node is
    /// registered, its endpoints answer and its queues are consumed.
    pub async fn start(
        mut self,
        client: async_nats::Client,
        shutdown: Shutdown,
    ) -> Result<NodeHandle, Error> {
        self.config.validate()?;
        let cfg = self.config;
        let subjects = Subjects::new(&cfg.prefix)?;
        refuse_a_live_id(&client, &subjects, &cfg.node_id).await?;
        let js = jetstream::new(client.clone());
        if self.replicas == 0 {
            self.replicas = crate::store::replicas_for(&client, &subjects).await;
        }
        crate::store::ensure_streams(&js, &subjects, self.replicas).await?;
        let results = js
            .get_stream(subjects.results_stream())
            .await
            .map_err(Error::nats_source)?;
        let discovery =
            KvDiscovery::open(client.clone(), &subjects, cfg.node_ttl, self.replicas).await?;
        // Not a child of `shutdown`: the caller's signal is a stop request
        // like any other (the lifecycle drains first, then ends the loops).
        let node_shutdown = Shutdown::new();
        let loops = TaskTracker::new();
        let attempts = crate::store::attempts_bucket(&js, &subjects, self.replicas).await?;
        let limits =
            limits::Limits::open(&js, &subjects, self.replicas, &cfg.node_id, cfg.node_ttl).await?;
        let checkpoints = Checkpoints::open(
            client.clone(),
            &subjects,
            cfg.checkpoints_keep,
            self.replicas,
        )
        .await?;
        let (health, _) = watch::channel(Health::Healthy);
        let processes = Processes::new(&cfg.processes, &self.handlers, node_shutdown.clone());
        let shared = Arc::new(NodeState {
            subjects,
            client: client.clone(),
            js,
            peers: Peers::new(discovery.clone()),
            discovery,
            handlers: self.handlers,
            checkpoints: Some(checkpoints),
            health,
            active: AtomicU32::new(0),
            completed: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            running: Mutex::new(HashMap::new()),
            cancelled: Mutex::new(HashSet::new()),
            processes,
            started_at: now_rfc3339(),
            started: std::time::Instant::now(),
            shutdown: node_shutdown.clone(),
            stop_requested: Shutdown::new(),
            stop_deadline: Mutex::new(DEFAULT_SHUTDOWN_DEADLINE),
            work: TaskTracker::new(),
            loops,
            refresh: Notify::new(),
            results,
            attempts,
            slots: Arc::new(tokio::sync::Semaphore::new(cfg.concurrency as usize)),
            concluding: Arc::new(tokio::sync::Semaphore::new(cfg.concurrency as usize)),
            replicas: self.replicas,
            limits,
            cfg,
        });

        if let Err(e) = start_parts(&shared).await {
            abandon(&shared).await;
            return Err(e);
        }
        let (done_tx, done_rx) = watch::channel(false);
        tokio::spawn(lifecycle(shared.clone(), shutdown, done_tx));
        tracing::info!(node_id = %shared.cfg.node_id, "node started");
        Ok(NodeHandle {
            shared,
            done: done_rx,
        })
    }
}

/// Registers the node and starts its loops: the entry first (so anyone it
/// answers can find it), then the service, the cancel watch, the
/// dispatchers (not on a supervisor) and the heartbeat. The dispatchers
/// take work only once every consumer exists: a start that fails half-way
/// (NATS lost meanwhile) has taken no task with it.
async fn start_parts(s: &Arc<NodeState>) -> Result<(), Error> {
    // On a cluster a bucket created a moment ago may not be known yet on
    // the server this node talks to ("no stream found"): try again.
    let info = s.node_info();
    let unavailable = |e: &Error| e.kind() == crate::error::ErrorKind::Unavailable;
    crate::store::settle(|| s.discovery.put_info(&info), unavailable).await?;
    start_service(s).await?;
    dispatch::start_cancel_watch(s).await?;
    s.limits.start(&s.shutdown, &s.loops);
    for spec in &s.cfg.processes {
        process::start_trigger(s, spec);
    }
    let mut dispatchers = Vec::new();
    if s.cfg.role != crate::wire::protocol::Role::Supervisor {
        for q in s.cfg.queues.clone() {
            dispatchers.push(dispatch::queue_dispatcher(s, &q).await?);
        }
        dispatchers.push(dispatch::shard_dispatcher(s).await?);
    }
    for d in dispatchers {
        s.loops.spawn(d);
    }
    s.loops.spawn(heartbeat_loop(s.clone()));
    s.client.flush().await.map_err(Error::nats_source)?;
    s.audit(
        "node.joined",
        json!({"role": s.cfg.role, "queues": s.cfg.queues}),
    )
    .await;
    Ok(())
}

/// Undoes a start that failed half-way (NATS or JetStream lost meanwhile):
/// ends the loops it started and removes the entry it wrote (best
/// effort), so a caller may simply start again.
async fn abandon(s: &Arc<NodeState>) {
    s.shutdown.trigger();
    s.loops.close();
    let _ = tokio::time::timeout(Duration::from_secs(2), s.loops.wait()).await;
    let remove = s.discovery.delete(&s.cfg.node_id);
    let _ = tokio::time::timeout(Duration::from_secs(1), remove).await;
}

/// The `status` verb's reply body.
fn node_status(s: &NodeState) -> crate::wire::protocol::NodeStatus {
    let info = s.node_info();
    crate::wire::protocol::NodeStatus {
        role: info.role,
        active_tasks: info.active_tasks,
        max_concurrency: info.max_concurrency,
        queues: info.queues,
        capabilities: info.capabilities,
        handlers: s.handlers.types(),
        completed: s.completed.load(Ordering::Relaxed),
        failed: s.failed.load(Ordering::Relaxed),
        started_at: s.started_at.clone(),
        processes: s.processes.list(),
        running_tasks: s
            .running
            .lock()
            .expect("running set poisoned")
            .keys()
            .cloned()
            .collect(),
    }
}

/// Two live nodes with one id would share a discovery entry and a shard
/// consumer: refuse to start while another answers for it.
async fn refuse_a_live_id(
    client: &async_nats::Client,
    subjects: &Subjects,
    node_id: &str,
) -> Result<(), Error> {
    if let Ok(Ok(m)) = tokio::time::timeout(
        Duration::from_millis(300),
        client.request(subjects.ctl(node_id, "ping"), Bytes::new()),
    )
    .await
    {
        if serde_json::from_slice::<Value>(&m.payload).is_ok_and(|v| v["ok"] == Value::Bool(true)) {
            return Err(Error::Config(format!(
                "node id {node_id:?} is in use by a live node; pick another --node-id or stop that node"
            )));
        }
    }
    Ok(())
}

/// A running node.
#[derive(Clone)]
pub struct NodeHandle {
    shared: Arc<NodeState>,
    done: watch::Receiver<bool>,
}

impl NodeHandle {
    /// The node id.
    pub fn node_id(&self) -> &str {
        &self.shared.cfg.node_id
    }

    /// Current health.
    pub fn health(&self) -> Health {
        self.shared.health()
    }

    /// What the `status` verb answers, read now (no NATS round trip).
    pub fn status(&self) -> crate::wire::protocol::NodeStatus {
        node_status(&self.shared)
    }

    /// Stops taking new work (within 1 s); running work finishes.
    pub async fn drain(&self) {
        drain(&self.shared).await
    }

    /// Takes new work again.
    pub async fn resume(&self) {
        resume(&self.shared).await
    }

    /// Graceful shutdown: drain, wait for in-flight work up to `deadline`,
    /// delete the discovery entry, stop. Returns when it is done.
    pub async fn shutdown(&self, deadline: Duration) {
        request_stop(&self.shared, deadline);
        self.wait().await
    }

    /// Resolves when the node has stopped.
    pub async fn wait(&self) {
        let mut done = self.done.clone();
        let _ = done.wait_for(|d| *d).await;
    }
}

async fn drain(s: &NodeState) {
    if s.set_health(Health::Draining) {
        s.audit("node.draining", json!({})).await;
    }
}

async fn resume(s: &NodeState) {
    if s.set_health(Health::Healthy) {
        s.audit("node.resumed", json!({})).await;
    }
}

fn request_stop(s: &NodeState, deadline: Duration) {
    {
        let mut d = s.stop_deadline.lock().expect("lock poisoned");
        *d = deadline;
    }
    s.stop_requested.trigger();
}

/// Waits for a stop request (or the outer shutdown), then stops gracefully.
async fn lifecycle(s: Arc<NodeState>, outer: Shutdown, done: watch::Sender<bool>) {
    tokio::select! {
        _ = s.stop_requested.wait() => {}
        _ = outer.wait() => {}
    }
    let deadline = *s.stop_deadline.lock().expect("stop deadline poisoned");
    tracing::info!(node_id = %s.cfg.node_id, ?deadline, "shutting down: draining");
    drain(&s).await;
    finish_work(&s, deadline).await;
    // A last beat with the final counts (a pool sums its workers' counts).
    let _ = s
        .client
        .publish(
            s.subjects.heartbeat(&s.cfg.node_id),
            json_body(&s.heartbeat()),
        )
        .await;
    // Stop every loop, and wait for them, before deleting the entry: a
    // heartbeat in flight would re-create it.
    s.shutdown.trigger();
    s.loops.close();
    if tokio::time::timeout(Duration::from_secs(5), s.loops.wait())
        .await
        .is_err()
    {
        tracing::warn!("node loops did not stop within 5 s");
    }
    if s.client.connection_state() == async_nats::connection::State::Connected {
        if let Err(e) = s.discovery.delete(&s.cfg.node_id).await {
            tracing::warn!(error = %e, "could not delete discovery entry");
        }
        s.audit("node.left", json!({"reason": "shutdown"})).await;
    } else {
        // Waiting on a server that is gone would only delay the exit; the
        // entry expires with its TTL.
        tracing::warn!("NATS unreachable: leaving without deleting the discovery entry");
    }
    crate::connect::flush_briefly(&s.client).await;
    tracing::info!(node_id = %s.cfg.node_id, "node stopped");
    let _ = done.send(true);
}

/// Waits up to `deadline` for running tasks; then cancels what is left as
/// `Shutdown` (back to the queue, not the task's fault).
async fn finish_work(s: &NodeState, deadline: Duration) {
    s.work.close();
    if tokio::time::timeout(deadline, s.work.wait()).await.is_ok() {
        return;
    }
    tracing::warn!("shutdown deadline passed; returning unfinished tasks to the queue");
    for t in s.running.lock().expect("running set poisoned").values() {
        t.reason
            .lock()
            .expect("cancel reason poisoned")
            .get_or_insert(CancelReason::Shutdown);
        t.cancel.cancel();
    }
    let _ = tokio::time::timeout(Duration::from_secs(5), s.work.wait()).await;
}

async fn heartbeat_loop(s: Arc<NodeState>) {
    let mut tick = tokio::time::interval(s.cfg.heartbeat_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = s.shutdown.wait() => break,
            _ = tick.tick() => {}
            _ = s.refresh.notified() => {}
        }
        if s.shutdown.is_triggered() {
            break;
        }
        // The beat and the entry it refreshes carry the same time.
        let beat = s.heartbeat();
        let mut info = s.node_info();
        info.last_heartbeat_at = beat.last_heartbeat_at.clone();
        if let Err(e) = s
            .client
            .publish(s.subjects.heartbeat(&s.cfg.node_id), json_body(&beat))
            .await
        {
            tracing::warn!(error = %e, "heartbeat not published");
        }
        if let Err(e) = s.discovery.put_info(&info).await {
            tracing::warn!(error = %e, "discovery entry not refreshed");
        }
        // The running slots of limits live as long as the node's entry.
        s.limits.refresh().await;
    }
}

/// Registers the `weave-node` micro service and serves its endpoints.
async fn start_service(s: &Arc<NodeState>) -> Result<(), Error> {
    let mut meta = std::collections::HashMap::new();
    meta.insert("node_id".to_string(), s.cfg.node_id.clone());
    let service = s
        .client
        .service_builder()
        .description("jetweave node: control, processes and event injection")
        .metadata(meta)
        .start(NODE_SERVICE, env!("CARGO_PKG_VERSION"))
        .await
        .map_err(|e| Error::nats(format!("cannot start {NODE_SERVICE} service: {e}")))?;
    let control = service
        .endpoint_builder()
        .name("control")
        .add(s.subjects.ctl_node_wildcard(&s.cfg.node_id))
        .await
        .map_err(Error::nats)?;
    let broadcast = service
        .endpoint_builder()
        .name("broadcast")
        .queue_group(format!("node-{}", s.cfg.node_id))
        .add(s.subjects.ctl_all_wildcard())
        .await
        .map_err(Error::nats)?;
    let events = service
        .endpoint_builder()
        .name("events")
        .add(s.subjects.event_node_wildcard(&s.cfg.node_id))
        .await
        .map_err(Error::nats)?;
    let endpoints = futures::stream::select_all([control, broadcast, events]);
    let s = s.clone();
    let loops = s.loops.clone();
    loops.spawn(async move {
        let mut endpoints = endpoints;
        loop {
            tokio::select! {
                _ = s.shutdown.wait() => break,
                req = endpoints.next() => {
                    let Some(req) = req else { break };
                    let s2 = s.clone();
                    s.loops.spawn(async move { serve_request(s2, req).await });
                }
            }
        }
        let _ = service.stop().await;
    });
    Ok(())
}

async fn serve_request(s: Arc<NodeState>, req: async_nats::service::Request) {
    let subject = req.message.subject.to_string();
    let tokens: Vec<&str> = subject.split('.').collect();
    let prefix_len = s.subjects.prefix().split('.').count();
    let rest = tokens.get(prefix_len..).unwrap_or_default();
    let outcome = match rest {
        ["event", _node, process] => inject_event(&s, process, &req.message.payload).await,
        ["ctl", "all", "task_lookup"] => {
            // Answer only if we run the task; silence means "not here".
            match lookup_task(&s, &req.message.payload) {
                Some(v) => Ok(v),
                None => return,
            }
        }
        ["ctl", _target, verb] => control(&s, verb, &req.message.payload).await,
        ["ctl", _target, "process", name, "add"] => add_process(&s, name, &req.message.payload)
            .await
            .map(|v| s.ctl_ok(v)),
        ["ctl", _target, "process", name, verb] => parse_object::<NoFields>(&req.message.payload)
            .and_then(|_| process_verb(&s, name, verb))
            .map(|v| s.ctl_ok(v)),
        _ => Err(Error::invalid(
            ErrorCode::UnknownVerb,
            format!("unknown control subject {subject}"),
        )),
    };
    let body = match outcome {
        Ok(v) => json_body(&v),
        Err(e) => error_body(&e),
    };
    if let Err(e) = req.respond(Ok(body)).await {
        tracing::debug!(error = %e, "could not reply");
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ShutdownRequest {
    #[serde(default)]
    deadline_s: Option<f64>,
}

async fn control(s: &Arc<NodeState>, verb: &str, body: &[u8]) -> Result<Value, Error> {
    if verb != "shutdown" {
        parse_object::<NoFields>(body)?;
    }
    let mut m = Map::new();
    match verb {
        "ping" => {
            m.insert("pong".into(), json!(true));
            m.insert("at".into(), json!(now_rfc3339()));
        }
        "status" => {
            if let Value::Object(fields) = serde_json::to_value(node_status(s))? {
                m = fields;
            }
        }
        "drain" => drain(s).await,
        "resume" => {
            if s.stop_requested.is_triggered() {
                return Err(Error::invalid(
                    ErrorCode::Draining,
                    "node is shutting down; it cannot resume",
                ));
            }
            resume(s).await
        }
        "shutdown" => {
            let req: ShutdownRequest = parse_object(body)?;
            let deadline = match req.deadline_s {
                Some(d) => crate::config::secs("deadline_s", d)?,
                None => DEFAULT_SHUTDOWN_DEADLINE,
            };
            s.set_health(Health::Draining);
            request_stop(s, deadline);
            m.insert("deadline_s".into(), json!(deadline.as_secs_f64()));
        }
        "processes" => {
            m.insert("processes".into(), json!(s.processes.list()));
        }
        "start_all" | "stop_all" => {
            for name in s.processes.names() {
                // A process whose handler is missing stays failed.
                let _ = if verb == "start_all" {
                    s.processes.start(&name, &s.handlers)
                } else {
                    s.processes.stop(&name)
                };
            }
            s.refresh.notify_one();
            m.insert("processes".into(), json!(s.processes.list()));
        }
        other => {
            return Err(Error::invalid(
                ErrorCode::UnknownVerb,
                format!(
                    "unknown verb {other:?}: use ping, status, drain, resume, shutdown, processes or process.<name>.<start|stop|restart|status>"
                ),
            ))
        }
    }
    Ok(s.ctl_ok(m))
}

fn process_verb(s: &NodeState, name: &str, verb: &str) -> Result<Map<String, Value>, Error> {
    let (info, status) = match verb {
        "start" => (s.processes.start(name, &s.handlers)?, "started"),
        "stop" => (s.processes.stop(name)?, "stopped"),
        "restart" => (s.processes.restart(name, &s.handlers)?, "restarted"),
        "status" => {
            let i = s.processes.status(name)?;
            (i, "ok")
        }
        other => {
            return Err(Error::invalid(
                ErrorCode::UnknownVerb,
                format!("unknown process verb {other:?}: use start, stop, restart or status"),
            ))
        }
    };
    s.refresh.notify_one();
    let mut m = Map::new();
    m.insert("status".into(), json!(status));
    m.insert("name".into(), json!(info.name));
    m.insert("state".into(), json!(info.state));
    m.insert("process_id".into(), json!(info.process_id));
    m.insert("process".into(), json!(info));
    Ok(m)
}

/// `P.ctl.<id>.process.<name>.add {"handler", "autostart"?, "every_s"? |
/// "cron"?, "payload"?}`: a process added at run time (with its trigger).
async fn add_process(
    s: &Arc<NodeState>,
    name: &str,
    body: &[u8],
) -> Result<Map<String, Value>, Error> {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Add {
        handler: String,
        #[serde(default)]
        autostart: Option<bool>,
        #[serde(default)]
        every_s: Option<f64>,
        #[serde(default)]
        cron: Option<String>,
        #[serde(default)]
        payload: Value,
    }
    let a: Add = parse_object(body)?;
    let spec = crate::config::ProcessSpec {
        autostart: a.autostart.unwrap_or(true),
        every_s: a.every_s,
        cron: a.cron,
        payload: a.payload,
        ..crate::config::ProcessSpec::new(name, a.handler)
    };
    let info = s.processes.add(spec.clone(), &s.handlers)?;
    process::start_trigger(s, &spec);
    s.refresh.notify_one();
    let mut m = Map::new();
    m.insert("status".into(), json!("added"));
    m.insert("name".into(), json!(info.name));
    m.insert("state".into(), json!(info.state));
    m.insert("process".into(), json!(info));
    Ok(m)
}

async fn inject_event(s: &Arc<NodeState>, process: &str, body: &[u8]) -> Result<Value, Error> {
    let ev: EventRequest = parse_object(body)?;
    run_event(s, process, ev)
}

/// Runs an event in a process (injected, or fired by its trigger) and
/// publishes its outcome.
pub(crate) fn run_event(
    s: &Arc<NodeState>,
    process: &str,
    ev: EventRequest,
) -> Result<Value, Error> {
    let (handler_type, stop) = s.processes.accept_event(process)?;
    let handler = s.handlers.get(&handler_type).ok_or_else(|| {
        Error::invalid(
            ErrorCode::ProcessStopped,
            format!("process {process:?} has no handler {handler_type:?}"),
        )
    })?;
    let event_id = uuid::Uuid::new_v4().simple().to_string();
    let reply = EventInjected {
        status: "injected".into(),
        event_id: event_id.clone(),
        process: process.to_string(),
    };
    let s2 = s.clone();
    let process = process.to_string();
    s.work.spawn(async move {
        let cancel = CancellationToken::new();
        let mut ctx = TaskContext::new(event_id.clone(), handler_type, 1).with_runtime(
            &s2.cfg.node_id,
            cancel.clone(),
            s2.checkpoints.clone(),
        );
        ctx.metadata = ev.metadata.clone();
        let run = crate::handler::invoke(handler, ctx, ev.payload.clone());
        let outcome = tokio::select! {
            r = run => r,
            _ = stop.wait() => { cancel.cancel(); Err(crate::handler::HandlerError::retry("process stopped")) }
        };
        let out = EventOutcome {
            event_id,
            status: if outcome.is_ok() { "completed" } else { "failed" }.into(),
            error: outcome.as_ref().err().map(|e| e.message.clone()),
            result: outcome.unwrap_or(Value::Null),
            node_id: s2.cfg.node_id.clone(),
            process: process.clone(),
            trigger_id: ev.trigger_id,
        };
        let subject = s2.subjects.event_outcome(&s2.cfg.node_id, &process);
        match s2.js.publish(subject, json_body(&out)).await {
            Ok(ack) => {
                let _ = ack.await;
            }
            Err(e) => tracing::warn!(error = %e, "event outcome not published"),
        }
    });
    Ok(serde_json::to_value(reply)?)
}

#[derive(Deserialize)]
struct LookupRequest {
    task_id: String,
}

fn lookup_task(s: &NodeState, body: &[u8]) -> Option<Value> {
    let req: LookupRequest = parse_object(body).ok()?;
    let r = s.running.lock().expect("lock poisoned");
    let Some(t) = r.get(&req.task_id) else {
        let limit = s.limits.throttled_by(&req.task_id)?;
        return Some(json!({
            "ok": true,
            "task_id": req.task_id,
            "node_id": s.cfg.node_id,
            "status": "queued",
            "throttled_by": limit,
        }));
    };
    Some(json!({
        "ok": true,
        "task_id": req.task_id,
        "node_id": s.cfg.node_id,
        "queue": t.queue,
        "started_at": t.started_at,
    }))
}
