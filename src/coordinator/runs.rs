//! Runs and shard assignments (contract §7).
//!
//! `runs.create` validates a [`RunSpec`], plans its shards and stores a
//! [`RunRecord`] in the `P-runs` KV bucket (key = run id). Every
//! coordinator mirrors the bucket through a watch; only the leader acts:
//!
//! - it assigns pending shards to healthy nodes that have the required
//!   capabilities (least loaded first, or round robin), publishing each on
//!   `P_SHARDS` (`P.shards.<node_id>`) and recording it in the run;
//! - when a node leaves (TTL expiry or shutdown) its unfinished shards are
//!   reassigned with `attempt + 1` (its shard subject is purged first);
//!   when it drains, its not-started shards move; when a node joins, or on
//!   `P.ctl.coordinator.rebalance`, not-started shards move toward it;
//! - nodes report finished shards on `P.ctl.coordinator.shard_done`; the
//!   leader checks the stored result (the first terminal result of the
//!   shard's task id is the only one the server keeps), so a shard never
//!   counts twice, and a periodic sweep catches reports lost in a leader
//!   change.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::kv;
use futures::StreamExt;
use serde::Deserialize;
use serde_json::{json, Value};

use super::planner::{plan_shards, AssignStrategy};
use super::CoordinatorState;
use crate::error::{Error, ErrorCode};
use crate::store::audit::{publish_audit, publish_audit_once};
use crate::store::discovery::DiscoveryEvent;
use crate::store::results::read_result;
use crate::store::write_settled;
use crate::wire::protocol::json_body;
use crate::wire::protocol::{
    now_rfc3339, parse_object, ControlReply, Health, NodeInfo, NodeStatus, Role, RunRecord,
    RunSpec, RunStatus, ShardAssignment, ShardDone, ShardState, ShardStatus, TaskStatus,
};
use crate::wire::subjects::validate_id;

pub(super) async fn create(s: &Arc<CoordinatorState>, body: &[u8]) -> Result<Value, Error> {
    let spec: RunSpec = parse_object(body)?;
    let run_id = spec
        .run_id
        .clone()
        .unwrap_or_else(|| format!("run-{}", &uuid::Uuid::new_v4().simple().to_string()[..12]));
    validate_id("run id", &run_id)?;
    if spec.dataset_id.is_empty() || spec.dataset_id.len() > 200 {
        return Err(Error::invalid(
            ErrorCode::InvalidValue,
            "dataset_id must be 1..=200 characters",
        ));
    }
    if spec.task_type.is_empty() {
        return Err(Error::invalid(
            ErrorCode::InvalidValue,
            "field `type` (the shard handler) is required",
        ));
    }
    let keys = plan_shards(
        &spec.strategy,
        spec.total_items,
        spec.shard_size,
        s.cfg.max_shards,
    )?;
    let mut spec = spec;
    spec.run_id = Some(run_id.clone());
    let record = RunRecord {
        run_id: run_id.clone(),
        status: RunStatus::Running,
        waiting: None,
        created_at: now_rfc3339(),
        finished_at: None,
        shards: keys
            .into_iter()
            .map(|k| {
                (
                    k,
                    ShardState {
                        status: ShardStatus::Pending,
                        node_id: None,
                        attempt: 0,
                        seq: None,
                        result: Value::Null,
                    },
                )
            })
            .collect(),
        spec,
    };
    let body = serde_json::to_vec(&record)?;
    let body = bytes::Bytes::from(body);
    write_settled(|| s.runs.create(&run_id, body.clone()))
        .await
        .map_err(|e| {
            if e.kind() == kv::CreateErrorKind::AlreadyExists {
                Error::invalid(
                    ErrorCode::InvalidValue,
                    format!("run {run_id:?} already exists"),
                )
            } else {
                Error::nats(e)
            }
        })?;
    publish_audit(
        &s.js,
        &s.subjects,
        "run.created",
        None,
        Some(&run_id),
        json!({"total_shards": record.shards.len(), "strategy": record.spec.strategy}),
    )
    .await;
    // Wake the leader (its watch sees the new key too).
    let _ = s.client.publish(s.subjects.rebalance(), "{}".into()).await;
    Ok(record.summary())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RunRef {
    run_id: String,
}

pub(super) async fn get(s: &Arc<CoordinatorState>, body: &[u8]) -> Result<Value, Error> {
    let r: RunRef = parse_object(body)?;
    validate_id("run id", &r.run_id)?;
    let rec = load(s, &r.run_id).await?.ok_or_else(|| {
        Error::invalid(ErrorCode::UnknownRun, format!("unknown run {:?}", r.run_id))
    })?;
    Ok(rec.0.summary())
}

async fn load(s: &CoordinatorState, run_id: &str) -> Result<Option<(RunRecord, u64)>, Error> {
    match s.runs.entry(run_id).await.map_err(Error::nats_source)? {
        Some(e) if e.operation == kv::Operation::Put => {
            let rec = serde_json::from_slice(&e.value)
                .map_err(|e| Error::nats(format!("corrupt run record {run_id}: {e}")))?;
            Ok(Some((rec, e.revision)))
        }
        _ => Ok(None),
    }
}

/// Runs by status, from the coordinator's mirror.
pub(super) async fn counts(s: &CoordinatorState) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    if let Ok(mut keys) = s.runs.keys().await {
        while let Some(Ok(k)) = keys.next().await {
            if let Ok(Some((r, _))) = load(s, &k).await {
                *out.entry(r.status.as_str().to_string()).or_default() += 1;
            }
        }
    }
    out
}

/// The leader's working state.
struct Engine {
    s: Arc<CoordinatorState>,
    /// Mirror of `P-runs`: run id -> (record, revision).
    runs: HashMap<String, (RunRecord, u64)>,
    health: HashMap<String, Health>,
    rr: usize,
}

/// What the engine listens to.
struct Inputs {
    done: async_nats::Subscriber,
    rebalance: async_nats::Subscriber,
    watch: kv::Watch,
    view_events: tokio::sync::broadcast::Receiver<DiscoveryEvent>,
    leadership: tokio::sync::watch::Receiver<bool>,
}

impl Inputs {
    async fn open(s: &CoordinatorState) -> Result<Self, Error> {
        let sub = |subject: String| async move {
            s.client
                .subscribe(subject)
                .await
                .map_err(Error::nats_source)
        };
        Ok(Inputs {
            done: sub(s.subjects.shard_done()).await?,
            rebalance: sub(s.subjects.rebalance()).await?,
            watch: crate::store::watch_all(&s.runs).await?,
            view_events: s
                .view
                .subscribe()
                .ok_or_else(|| Error::nats("cluster view has no event channel"))?,
            leadership: s.leader.subscribe(),
        })
    }
}

/// Starts the run engine on the coordinator's tracker.
pub(super) async fn start_loop(s: &Arc<CoordinatorState>) -> Result<(), Error> {
    let inputs = Inputs::open(s).await?;
    let engine = Engine {
        s: s.clone(),
        runs: HashMap::new(),
        health: s
            .view
            .nodes()
            .into_iter()
            .map(|n| (n.node_id.clone(), n.health))
            .collect(),
        rr: 0,
    };
    s.loops.spawn(engine.run(inputs));
    Ok(())
}

impl Engine {
    /// One `select!` over every input; each arm hands off to an `on_*`.
    async fn run(mut self, mut i: Inputs) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        let mut ticks: u64 = 0;
        loop {
            let go = tokio::select! {
                _ = self.s.shutdown.wait() => false,
                e = i.watch.next() => match e {
                    Some(Ok(e)) => { self.on_watch(e).await; true }
                    Some(Err(e)) => {
                        tracing::warn!(error = %e, "runs watch failed; watching again");
                        self.rewatch(&mut i).await
                    }
                    None => {
                        tracing::warn!("runs watch ended; watching again");
                        self.rewatch(&mut i).await
                    }
                },
                r = i.leadership.changed() => {
                    let lead = r.is_ok() && *i.leadership.borrow_and_update();
                    self.on_leadership(lead).await;
                    r.is_ok()
                }
                ev = i.view_events.recv() => match ev {
                    Ok(ev) => { self.on_view(ev).await; true }
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => true,
                    Err(_) => false,
                },
                m = i.done.next() => match m {
                    Some(m) => { self.on_done(&m).await; true }
                    None => false,
                },
                m = i.rebalance.next() => match m {
                    Some(m) => { self.on_rebalance(m).await; true }
                    None => false,
                },
                _ = tick.tick() => {
                    ticks += 1;
                    self.on_tick(ticks).await;
                    true
                }
            };
            if !go {
                break;
            }
        }
    }

    /// Re-creates the watch of `P-runs` (its consumer was lost with a
    /// server, or deleted), retrying with backoff until it works or the
    /// coordinator stops; the new watch replays every record, and the
    /// leader reconciles all runs for what it missed. False on shutdown.
    async fn rewatch(&mut self, i: &mut Inputs) -> bool {
        let mut delay = Duration::from_millis(100);
        loop {
            match self.s.runs.watch_with_history(">").await {
                Ok(w) => {
                    i.watch = w;
                    if self.s.leader.is_leader() {
                        self.reconcile_all().await;
                    }
                    return true;
                }
                Err(e) => tracing::warn!(error = %e, ?delay, "cannot watch runs yet"),
            }
            tokio::select! {
                _ = self.s.shutdown.wait() => return false,
                _ = tokio::time::sleep(delay) => {}
            }
            delay = (delay * 2).min(Duration::from_secs(2));
        }
    }

    /// A run record changed in `P-runs` (ours or another coordinator's).
    async fn on_watch(&mut self, e: kv::Entry) {
        let fresh = self.mirror(e);
        if let (Some(id), true) = (fresh, self.s.leader.is_leader()) {
            self.reconcile(&id).await;
        }
    }

    /// We became the leader: catch up on everything.
    async fn on_leadership(&mut self, leading: bool) {
        if leading {
            self.sweep_results().await;
            self.reconcile_all().await;
        }
    }

    async fn on_view(&mut self, ev: DiscoveryEvent) {
        if self.s.leader.is_leader() {
            self.on_node_event(ev).await
        }
    }

    /// A node reports a finished shard.
    async fn on_done(&mut self, m: &async_nats::Message) {
        if !self.s.leader.is_leader() {
            return;
        }
        if let Ok(d) = serde_json::from_slice::<ShardDone>(&m.payload) {
            self.shard_done(&d.run_id, &d.shard_key).await;
        }
    }

    /// `P.ctl.coordinator.rebalance`: every coordinator answers; the
    /// leader moves shards.
    async fn on_rebalance(&mut self, m: async_nats::Message) {
        let mut moved = 0;
        if self.s.leader.is_leader() {
            self.reconcile_all().await;
            moved = self.rebalance(None).await;
        }
        if let Some(reply) = m.reply {
            let body = json_body(
                &json!({"ok": true, "leader": self.s.leader.is_leader(), "moved": moved, "coordinator_id": self.s.id}),
            );
            let _ = self.s.client.publish(reply, body).await;
        }
    }

    /// Every second: reconcile; every third: sweep for lost reports.
    async fn on_tick(&mut self, ticks: u64) {
        if self.s.leader.is_leader() {
            if ticks.is_multiple_of(3) {
                self.sweep_results().await;
            }
            self.reconcile_all().await;
        }
    }

    /// Applies a watch entry; returns the run id if it is a new run.
    fn mirror(&mut self, e: kv::Entry) -> Option<String> {
        if e.operation != kv::Operation::Put {
            self.runs.remove(&e.key);
            return None;
        }
        let rec: RunRecord = serde_json::from_slice(&e.value).ok()?;
        let fresh = !self.runs.contains_key(&e.key);
        match self.runs.get(&e.key) {
            Some((_, rev)) if *rev >= e.revision => {}
            _ => {
                self.runs.insert(e.key.clone(), (rec, e.revision));
            }
        }
        fresh.then_some(e.key)
    }

    fn eligible(&self, rec: &RunRecord) -> Vec<NodeInfo> {
        self.s
            .view
            .nodes()
            .into_iter()
            .filter(|n| {
                n.health == Health::Healthy
                    && n.role != Role::Supervisor
                    && n.may_handle(&rec.spec.task_type)
                    && rec
                        .spec
                        .requirements
                        .capabilities
                        .iter()
                        .all(|c| n.capabilities.contains(c))
            })
            .collect()
    }

    /// Unfinished shards per node across all runs.
    fn load(&self) -> HashMap<String, u64> {
        let mut m = HashMap::new();
        for (r, _) in self.runs.values() {
            for sh in r.shards.values() {
                if sh.status == ShardStatus::Assigned {
                    if let Some(n) = &sh.node_id {
                        *m.entry(n.clone()).or_default() += 1;
                    }
                }
            }
        }
        m
    }

    fn pick(&mut self, nodes: &[NodeInfo], load: &HashMap<String, u64>) -> Option<String> {
        if nodes.is_empty() {
            return None;
        }
        match self.s.cfg.strategy {
            AssignStrategy::RoundRobin => {
                self.rr = self.rr.wrapping_add(1);
                Some(nodes[self.rr % nodes.len()].node_id.clone())
            }
            AssignStrategy::LeastLoaded => nodes
                .iter()
                .min_by_key(|n| {
                    (
                        u64::from(n.active_tasks) + load.get(&n.node_id).copied().unwrap_or(0),
                        load.get(&n.node_id).copied().unwrap_or(0),
                        n.node_id.clone(),
                    )
                })
                .map(|n| n.node_id.clone()),
        }
    }

    async fn publish_assignment(
        &self,
        rec: &RunRecord,
        key: &str,
        node: &str,
        attempt: u32,
    ) -> Result<u64, Error> {
        let a = ShardAssignment {
            run_id: rec.run_id.clone(),
            dataset_id: rec.spec.dataset_id.clone(),
            iteration: rec.spec.iteration,
            shard_key: key.to_string(),
            target_node: node.to_string(),
            strategy: rec.spec.strategy.clone(),
            task_type: rec.spec.task_type.clone(),
            payload: rec.spec.payload.clone(),
            metadata: rec.spec.metadata.clone(),
            attempt,
            task_id: rec.task_id(key),
        };
        let ack = self
            .s
            .js
            .publish(self.s.subjects.shards(node), json_body(&a))
            .await
            .map_err(Error::nats_source)?
            .await
            .map_err(Error::nats_source)?;
        Ok(ack.sequence)
    }

    /// Writes a changed record (compare-and-set on the revision).
    async fn save(&mut self, rec: RunRecord, rev: u64) -> bool {
        let Ok(body) = serde_json::to_vec(&rec) else {
            return false;
        };
        match self.s.runs.update(&rec.run_id, body.into(), rev).await {
            Ok(new_rev) => {
                self.runs.insert(rec.run_id.clone(), (rec, new_rev));
                true
            }
            Err(e) => {
                tracing::warn!(run_id = %rec.run_id, error = %e, "run record changed under us; reloading");
                if let Ok(Some(fresh)) = load(&self.s, &rec.run_id).await {
                    self.runs.insert(rec.run_id.clone(), fresh);
                }
                false
            }
        }
    }

    /// Ids of the runs still running.
    fn running_ids(&self) -> Vec<String> {
        self.runs
            .iter()
            .filter(|(_, (r, _))| r.status == RunStatus::Running)
            .map(|(k, _)| k.clone())
            .collect()
    }

    async fn reconcile_all(&mut self) {
        let ids = self.running_ids();
        for id in ids {
            self.reconcile(&id).await;
        }
    }

    /// Assigns pending shards, re-queues shards of vanished nodes, and
    /// closes the run when every shard is done.
    /// Publishes a shard's assignment to `node` and records it in the
    /// audit log; `None` if it could not be published.
    async fn assign(
        &self,
        rec: &RunRecord,
        key: &str,
        sh: &ShardState,
        node: &str,
    ) -> Option<ShardState> {
        let attempt = sh.attempt + 1;
        let seq = match self.publish_assignment(rec, key, node, attempt).await {
            Ok(seq) => seq,
            Err(e) => {
                tracing::warn!(error = %e, "cannot publish shard assignment");
                return None;
            }
        };
        let kind = if sh.attempt > 0 {
            "shard.reassigned"
        } else {
            "shard.assigned"
        };
        publish_audit(
            &self.s.js,
            &self.s.subjects,
            kind,
            Some(node),
            Some(&rec.run_id),
            json!({"shard_key": key, "attempt": attempt, "from": sh.node_id}),
        )
        .await;
        Some(ShardState {
            status: ShardStatus::Assigned,
            node_id: Some(node.to_string()),
            attempt,
            seq: Some(seq),
            result: Value::Null,
        })
    }

    async fn reconcile(&mut self, run_id: &str) {
        if !self.s.leader.is_leader() {
            return;
        }
        let Some((mut rec, rev)) = self.runs.get(run_id).cloned() else {
            return;
        };
        if rec.status != RunStatus::Running {
            return;
        }
        let before = rec.clone();
        let live: HashSet<String> = self.s.view.nodes().into_iter().map(|n| n.node_id).collect();
        for sh in rec.shards.values_mut() {
            if sh.status == ShardStatus::Assigned
                && !sh.node_id.as_ref().is_some_and(|n| live.contains(n))
            {
                sh.status = ShardStatus::Pending;
            }
        }
        let nodes = self.eligible(&rec);
        let mut load = self.load();
        let pending: Vec<String> = rec
            .shards
            .iter()
            .filter(|(_, s)| s.status == ShardStatus::Pending)
            .map(|(k, _)| k.clone())
            .collect();
        rec.waiting = None;
        for key in pending {
            let Some(node) = self.pick(&nodes, &load) else {
                rec.waiting = Some(waiting_reason(&rec));
                break;
            };
            let Some(sh) = rec.shards.get(&key).cloned() else {
                continue;
            };
            match self.assign(&rec, &key, &sh, &node).await {
                Some(state) => {
                    *load.entry(node.clone()).or_default() += 1;
                    rec.shards.insert(key, state);
                }
                None => break,
            }
        }
        self.finish_if_done(&mut rec).await;
        if rec != before {
            self.save(rec, rev).await;
        }
    }

    async fn finish_if_done(&self, rec: &mut RunRecord) {
        if rec.status != RunStatus::Running {
            return;
        }
        let all_done = rec
            .shards
            .values()
            .all(|s| matches!(s.status, ShardStatus::Completed | ShardStatus::Failed));
        if !all_done {
            return;
        }
        let failed = rec.shards.values().any(|s| s.status == ShardStatus::Failed);
        rec.status = if failed {
            RunStatus::Failed
        } else {
            RunStatus::Completed
        };
        rec.finished_at = Some(now_rfc3339());
        rec.waiting = None;
        publish_audit(
            &self.s.js,
            &self.s.subjects,
            if failed {
                "run.failed"
            } else {
                "run.completed"
            },
            None,
            Some(&rec.run_id),
            json!({"total_shards": rec.shards.len()}),
        )
        .await;
    }

    /// A node reported a shard finished: check its stored result.
    async fn shard_done(&mut self, run_id: &str, key: &str) {
        let Some((mut rec, rev)) = self.runs.get(run_id).cloned() else {
            return;
        };
        if !self.apply_result(&mut rec, key).await {
            return;
        }
        self.finish_if_done(&mut rec).await;
        self.save(rec, rev).await;
    }

    /// Marks a shard done if its result is stored; true if it changed.
    async fn apply_result(&self, rec: &mut RunRecord, key: &str) -> bool {
        let task_id = rec.task_id(key);
        let Some(sh) = rec.shards.get_mut(key) else {
            return false;
        };
        if matches!(sh.status, ShardStatus::Completed | ShardStatus::Failed) {
            return false;
        }
        let Some(res) = read_result(&self.s.results, &self.s.subjects, &task_id).await else {
            return false;
        };
        sh.status = if res.status == TaskStatus::Completed {
            ShardStatus::Completed
        } else {
            ShardStatus::Failed
        };
        sh.result = res.result;
        if let Some(n) = res.node_id {
            sh.node_id = Some(n.clone());
            publish_audit_once(
                &self.s.js,
                &self.s.subjects,
                "shard.completed",
                Some(&n),
                Some(&rec.run_id),
                json!({"shard_key": key, "status": res.status}),
                &task_id,
            )
            .await;
        }
        true
    }

    /// Checks stored results of every unfinished shard (reports lost while
    /// no coordinator led).
    async fn sweep_results(&mut self) {
        let ids = self.running_ids();
        for id in ids {
            let Some((mut rec, rev)) = self.runs.get(&id).cloned() else {
                continue;
            };
            let keys: Vec<String> = rec
                .shards
                .iter()
                .filter(|(_, s)| {
                    s.status == ShardStatus::Assigned || s.status == ShardStatus::Pending
                })
                .map(|(k, _)| k.clone())
                .collect();
            let mut changed = false;
            for k in keys {
                changed |= self.apply_result(&mut rec, &k).await;
            }
            if changed {
                self.finish_if_done(&mut rec).await;
                self.save(rec, rev).await;
            }
        }
    }

    async fn on_node_event(&mut self, ev: DiscoveryEvent) {
        match ev {
            DiscoveryEvent::Left { node_id, reason } => {
                self.health.remove(&node_id);
                let kind = match reason {
                    crate::store::discovery::LeaveReason::Expired => "node.expired",
                    crate::store::discovery::LeaveReason::Deleted => "node.removed",
                };
                publish_audit(
                    &self.s.js,
                    &self.s.subjects,
                    kind,
                    Some(&node_id),
                    None,
                    json!({}),
                )
                .await;
                self.forget_node(&node_id).await;
                self.reconcile_all().await;
            }
            DiscoveryEvent::Joined(d) => {
                if let Some(info) = d.info {
                    self.health.insert(info.node_id.clone(), info.health);
                    self.reconcile_all().await;
                    if info.health == Health::Healthy {
                        self.rebalance(Some(&info.node_id)).await;
                    }
                }
            }
            DiscoveryEvent::Updated(d) => {
                let Some(info) = d.info else { return };
                let prev = self.health.insert(info.node_id.clone(), info.health);
                if prev != Some(info.health) {
                    match info.health {
                        Health::Draining => self.move_unstarted(&info.node_id, None).await,
                        Health::Healthy => {
                            self.reconcile_all().await;
                            self.rebalance(Some(&info.node_id)).await;
                        }
                    };
                }
            }
        }
    }

    /// Removes a vanished node's shard messages and consumer.
    async fn forget_node(&self, node_id: &str) {
        if let Ok(stream) = self.s.js.get_stream(self.s.subjects.shards_stream()).await {
            let _ = stream.purge().filter(self.s.subjects.shards(node_id)).await;
            let _ = stream
                .delete_consumer(&self.s.subjects.shard_consumer(node_id))
                .await;
        }
    }

    /// Task ids a node runs now (asked over control).
    async fn running_on(&self, node_id: &str) -> Option<HashSet<String>> {
        let m = tokio::time::timeout(
            Duration::from_secs(1),
            self.s
                .client
                .request(self.s.subjects.ctl(node_id, "status"), "".into()),
        )
        .await
        .ok()?
        .ok()?;
        let r: ControlReply<NodeStatus> = serde_json::from_slice(&m.payload).ok()?;
        Some(r.body.running_tasks.into_iter().collect())
    }

    /// Moves shards assigned to `from` that have not started; at most
    /// `limit` (all if None), to `to` (or any eligible node if None).
    /// Returns how many moved.
    async fn move_unstarted_to(
        &mut self,
        from: &str,
        limit: Option<usize>,
        to: Option<&str>,
    ) -> usize {
        let Some(running) = self.running_on(from).await else {
            return 0;
        };
        let Ok(stream) = self.s.js.get_stream(self.s.subjects.shards_stream()).await else {
            return 0;
        };
        let mut moved = 0;
        let ids: Vec<String> = self.runs.keys().cloned().collect();
        for id in ids {
            let Some((mut rec, rev)) = self.runs.get(&id).cloned() else {
                continue;
            };
            if rec.status != RunStatus::Running {
                continue;
            }
            let mut changed = false;
            let keys: Vec<String> = rec.shards.keys().cloned().collect();
            for key in keys {
                if limit.is_some_and(|l| moved >= l) {
                    break;
                }
                let task_id = rec.task_id(&key);
                let Some(sh) = rec.shards.get(&key).cloned() else {
                    continue;
                };
                if sh.status != ShardStatus::Assigned
                    || sh.node_id.as_deref() != Some(from)
                    || running.contains(&task_id)
                {
                    continue;
                }
                if let Some(new_state) = self.move_one(&rec, &key, &sh, &stream, from, to).await {
                    rec.shards.insert(key, new_state);
                    moved += 1;
                    changed = true;
                }
            }
            if changed {
                self.save(rec, rev).await;
            }
        }
        moved
    }

    /// Moves one not-started shard off `from` (to `to`, or the least loaded
    /// eligible node, or back to pending): deletes its waiting assignment
    /// message first, so a shard that has started is never moved.
    async fn move_one(
        &mut self,
        rec: &RunRecord,
        key: &str,
        sh: &ShardState,
        stream: &async_nats::jetstream::stream::Stream,
        from: &str,
        to: Option<&str>,
    ) -> Option<ShardState> {
        let seq = sh.seq?;
        // Rebalance names the target, which must meet this run's
        // requirements; a drain picks the least loaded eligible
        // node (or leaves it pending).
        let nodes: Vec<NodeInfo> = self
            .eligible(rec)
            .into_iter()
            .filter(|n| n.node_id != from)
            .collect();
        let target = match to {
            Some(node) if nodes.iter().any(|n| n.node_id == node) => Some(node.to_string()),
            Some(_) => return None,
            None => {
                let load = self.load();
                self.pick(&nodes, &load)
            }
        };
        // Only a message still waiting can be deleted: then it has
        // not started.
        if !matches!(stream.delete_message(seq).await, Ok(true)) {
            return None;
        }
        let pending = ShardState {
            status: ShardStatus::Pending,
            ..sh.clone()
        };
        let new_state = match &target {
            Some(node) => match self
                .publish_assignment(rec, key, node, sh.attempt + 1)
                .await
            {
                Ok(seq) => ShardState {
                    status: ShardStatus::Assigned,
                    node_id: Some(node.to_string()),
                    attempt: sh.attempt + 1,
                    seq: Some(seq),
                    result: Value::Null,
                },
                Err(_) => pending,
            },
            None => pending,
        };
        publish_audit(
            &self.s.js,
            &self.s.subjects,
            "shard.reassigned",
            new_state.node_id.as_deref(),
            Some(&rec.run_id),
            json!({"shard_key": key, "from": from, "reason": if to.is_some() { "rebalance" } else { "drain" }}),
        )
        .await;
        Some(new_state)
    }

    async fn move_unstarted(&mut self, from: &str, limit: Option<usize>) {
        self.move_unstarted_to(from, limit, None).await;
        self.reconcile_all().await;
    }

    /// Moves not-started shards from the most loaded nodes toward `target`
    /// (or toward the least loaded node) until loads differ by at most one.
    async fn rebalance(&mut self, target: Option<&str>) -> usize {
        let mut total = 0;
        for _ in 0..64 {
            let load = self.load();
            let nodes: Vec<NodeInfo> = self
                .s
                .view
                .nodes()
                .into_iter()
                // Static entries (max_concurrency 0) run nothing.
                .filter(|n| {
                    n.health == Health::Healthy
                        && n.role != Role::Supervisor
                        && n.max_concurrency > 0
                })
                .collect();
            if nodes.len() < 2 {
                break;
            }
            let l = |n: &str| load.get(n).copied().unwrap_or(0);
            let Some(max) = nodes
                .iter()
                .max_by_key(|n| (l(&n.node_id), n.node_id.clone()))
            else {
                break;
            };
            let to = match target {
                Some(t) if nodes.iter().any(|n| n.node_id == t) => t.to_string(),
                _ => match nodes
                    .iter()
                    .min_by_key(|n| (l(&n.node_id), n.node_id.clone()))
                {
                    Some(n) => n.node_id.clone(),
                    None => break,
                },
            };
            if max.node_id == to || l(&max.node_id) <= l(&to) + 1 {
                break;
            }
            let from = max.node_id.clone();
            let moved = self.move_unstarted_to(&from, Some(1), Some(&to)).await;
            if moved == 0 {
                break;
            }
            total += moved;
        }
        total
    }
}

/// Why a run's pending shards wait.
fn waiting_reason(rec: &RunRecord) -> String {
    if rec.spec.requirements.capabilities.is_empty() {
        format!(
            "waiting for a healthy node with handler {:?}",
            rec.spec.task_type
        )
    } else {
        format!(
            "waiting for a healthy node with handler {:?} and capabilities {:?}",
            rec.spec.task_type, rec.spec.requirements.capabilities
        )
    }
}
