//! Worker pools (contract §10): `jetweave pool` keeps between `min` and
//! `max` worker processes alive (node ids `<pool_id>-1`, `-2`, ...), grows
//! and shrinks with the backlog of its queues, replaces a worker that dies
//! (same id) and drains the ones it removes.
//!
//! One loop owns the pool's state and reacts to: control requests on
//! `P.ctl.<pool_id>.<verb>` (`status`, `scale`, `ping`; micro service
//! `weave-pool`), worker exits, the workers' heartbeats (running and
//! completed tasks) and a tick that reads the backlog — the task
//! consumers' `num_pending`, no write per task — makes at most one
//! auto-scaling step (the private `scaling` module) and brings the
//! processes to the desired count. Removing a worker sends it SIGTERM,
//! which for a `jetweave node` means drain and finish what it runs:
//! scaling never kills a task.
//!
//! The pool talks to its workers only through their processes (spawn,
//! SIGTERM, exit status) and their heartbeats; like the worker and the
//! coordinator it imports neither.

mod children;
mod scaling;

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use async_nats::service::ServiceExt;
use futures::StreamExt;
use tokio::sync::mpsc;
use tokio_util::task::TaskTracker;

use crate::error::{Error, ErrorCode};
use crate::shutdown::Shutdown;
use crate::wire::protocol::{
    error_body, json_body, parse_object, Heartbeat, NoFields, PoolStatus, Priority, ScaleReply,
    ScaleRequest,
};
use crate::wire::subjects::{validate_id, Subjects, POOL_SERVICE};

use children::Exit;
pub use children::{WorkerCommand, NODE_ID_PLACEHOLDER};
use scaling::{Policy, Scaler};

/// How a pool runs (the `jetweave pool` flags).
#[derive(Debug, Clone)]
pub struct PoolConfig {
    /// Pool id; workers are `<pool_id>-<k>`.
    pub pool_id: String,
    /// Subject prefix.
    pub prefix: String,
    /// Fewest workers (started at once).
    pub min: u32,
    /// Most workers.
    pub max: u32,
    /// One more worker while the backlog is above this.
    pub scale_up_threshold: u64,
    /// One fewer while the backlog is below this.
    pub scale_down_threshold: u64,
    /// At most one auto-scaling step per this long.
    pub cooldown: Duration,
    /// Scale on the backlog.
    pub auto_scale: bool,
    /// Queues the workers serve (the backlog is theirs).
    pub queues: Vec<String>,
    /// NATS URL handed to workers (`NATS_URL`).
    pub nats_url: String,
    /// How a worker is started.
    pub worker: WorkerCommand,
    /// Wait before replacing a worker that died.
    pub restart_delay: Duration,
    /// How long a manual `scale` holds before auto-scaling resumes.
    pub manual_hold: Duration,
}

impl PoolConfig {
    /// A pool `pool_id` running `worker`, with the contract's defaults.
    pub fn new(pool_id: impl Into<String>, worker: WorkerCommand) -> Self {
        PoolConfig {
            pool_id: pool_id.into(),
            prefix: crate::wire::subjects::DEFAULT_PREFIX.into(),
            min: 1,
            max: 8,
            scale_up_threshold: 10,
            scale_down_threshold: 2,
            cooldown: Duration::from_secs(5),
            auto_scale: true,
            queues: vec!["default".into()],
            nats_url: crate::connect::DEFAULT_NATS_URL.into(),
            worker,
            restart_delay: Duration::from_millis(500),
            manual_hold: Duration::from_secs(60),
        }
    }

    fn validate(&self) -> Result<(), Error> {
        validate_id("pool id", &self.pool_id)?;
        for q in &self.queues {
            validate_id("queue", q)?;
        }
        if self.min < 1 || self.min > self.max || self.max > 1000 {
            return Err(Error::invalid(
                ErrorCode::OutOfRange,
                format!(
                    "need 1 <= min <= max <= 1000, got {}..{}",
                    self.min, self.max
                ),
            ));
        }
        Ok(())
    }
}

/// A running pool.
pub struct PoolHandle {
    task: tokio::task::JoinHandle<()>,
}

impl PoolHandle {
    /// Resolves when the pool has stopped and every worker has exited.
    pub async fn wait(self) {
        let _ = self.task.await;
    }
}

/// How long the last beat of an exited worker may lag its exit.
const DEPARTED_GRACE: Duration = Duration::from_secs(2);

/// One worker slot `k` (node id `<pool_id>-<k>`).
#[derive(Debug)]
struct Slot {
    pid: u32,
    generation: u64,
    alive: bool,
    /// Sent SIGTERM by a scale-down: draining away.
    retiring: bool,
    /// Dead, to be started again then.
    restart_at: Option<Instant>,
    active: u64,
    completed: u64,
}

/// Starts the pool: its service, its `min` workers and its loop, which
/// ends with `shutdown` after every worker has drained and exited.
pub async fn start(
    client: async_nats::Client,
    cfg: PoolConfig,
    shutdown: Shutdown,
) -> Result<PoolHandle, Error> {
    cfg.validate()?;
    let subjects = Subjects::new(&cfg.prefix)?;
    let mut meta = HashMap::new();
    meta.insert("pool_id".to_string(), cfg.pool_id.clone());
    let service = client
        .service_builder()
        .description("jetweave worker pool: status and scale")
        .metadata(meta)
        .start(POOL_SERVICE, env!("CARGO_PKG_VERSION"))
        .await
        .map_err(|e| Error::nats(format!("cannot start {POOL_SERVICE} service: {e}")))?;
    let endpoint = service
        .endpoint_builder()
        .name("control")
        .add(subjects.ctl_node_wildcard(&cfg.pool_id))
        .await
        .map_err(Error::nats)?;
    let beats = client
        .subscribe(subjects.heartbeat_all())
        .await
        .map_err(Error::nats_source)?;
    client.flush().await.map_err(Error::nats_source)?;
    let (exits_tx, exits) = mpsc::unbounded_channel();
    let mut pool = PoolLoop::new(client, cfg, subjects, exits_tx);
    pool.reconcile(Instant::now());
    let task = tokio::spawn(async move {
        pool.run(endpoint, beats, exits, &shutdown).await;
        let _ = service.stop().await;
    });
    Ok(PoolHandle { task })
}

struct PoolLoop {
    cfg: PoolConfig,
    subjects: Subjects,
    js: async_nats::jetstream::Context,
    scaler: Scaler,
    slots: BTreeMap<u32, Slot>,
    /// Completed tasks of worker processes that have exited.
    carried: u64,
    /// Workers that exited lately: their last beat may still be on its way
    /// (node id, completed, when to fold it into `carried`).
    departed: Vec<(String, u64, Instant)>,
    pending: u64,
    generation: u64,
    exits_tx: mpsc::UnboundedSender<Exit>,
    /// The exit watchers.
    watchers: TaskTracker,
}

impl PoolLoop {
    fn new(
        client: async_nats::Client,
        cfg: PoolConfig,
        subjects: Subjects,
        exits_tx: mpsc::UnboundedSender<Exit>,
    ) -> Self {
        let scaler = Scaler::new(Policy {
            min: cfg.min,
            max: cfg.max,
            up: cfg.scale_up_threshold,
            down: cfg.scale_down_threshold,
            cooldown: cfg.cooldown,
            auto: cfg.auto_scale,
            hold: cfg.manual_hold,
        });
        PoolLoop {
            js: async_nats::jetstream::new(client),
            cfg,
            subjects,
            scaler,
            slots: BTreeMap::new(),
            carried: 0,
            departed: Vec::new(),
            pending: 0,
            generation: 0,
            exits_tx,
            watchers: TaskTracker::new(),
        }
    }

    async fn run(
        &mut self,
        mut endpoint: async_nats::service::endpoint::Endpoint,
        mut beats: async_nats::Subscriber,
        mut exits: mpsc::UnboundedReceiver<Exit>,
        shutdown: &Shutdown,
    ) {
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.wait() => break,
                Some(req) = endpoint.next() => self.on_request(req).await,
                Some(e) = exits.recv() => self.on_exit(e, false),
                Some(m) = beats.next() => self.on_heartbeat(&m.payload),
                _ = tick.tick() => self.on_tick().await,
            }
        }
        self.stop_all(&mut exits).await;
    }

    fn node_id(&self, slot: u32) -> String {
        format!("{}-{slot}", self.cfg.pool_id)
    }

    async fn on_tick(&mut self) {
        let now = Instant::now();
        if let Some(p) = self.read_pending().await {
            self.pending = p;
        }
        self.fold_departed(now);
        if let Some(d) = self.scaler.tick(self.pending, now) {
            tracing::info!(pool = %self.cfg.pool_id, pending = self.pending, desired = d, "auto-scaling");
        }
        self.reconcile(now);
    }

    /// Tasks waiting on the pool's queues: the sum of the task consumers'
    /// `num_pending` (a missing consumer has none). `None` when NATS did
    /// not answer within a second (the last figure stays).
    async fn read_pending(&self) -> Option<u64> {
        let read = async {
            let stream = self
                .js
                .get_stream(self.subjects.tasks_stream())
                .await
                .ok()?;
            let mut total = 0;
            for q in &self.cfg.queues {
                for p in Priority::ALL {
                    let name = self.subjects.task_consumer(q, p);
                    if let Ok(info) = stream.consumer_info(&name).await {
                        total += info.num_pending;
                    }
                }
            }
            Some(total)
        };
        tokio::time::timeout(Duration::from_secs(1), read)
            .await
            .ok()
            .flatten()
    }
}

impl PoolLoop {
    /// Brings the worker processes to the desired count: starts the
    /// lowest free slots, retires the highest ones (SIGTERM: they drain),
    /// and restarts the dead ones whose delay has passed.
    fn reconcile(&mut self, now: Instant) {
        let desired = self.scaler.desired() as usize;
        let serving = || self.slots.values().filter(|s| !s.retiring).count();
        let mut count = serving();
        while count < desired {
            let Some(k) = (1..=self.cfg.max).find(|k| !self.slots.contains_key(k)) else {
                break;
            };
            self.start_worker(k, now);
            count += 1;
        }
        while count > desired {
            let Some((&k, _)) = self.slots.iter().rev().find(|(_, s)| !s.retiring) else {
                break;
            };
            self.retire(k);
            count -= 1;
        }
        let due: Vec<u32> = self
            .slots
            .iter()
            .filter(|(_, s)| !s.alive && !s.retiring && s.restart_at.is_some_and(|t| t <= now))
            .map(|(&k, _)| k)
            .collect();
        for k in due {
            self.start_worker(k, now);
        }
    }

    fn start_worker(&mut self, k: u32, now: Instant) {
        self.generation += 1;
        let id = self.node_id(k);
        let env = [
            ("NATS_URL", self.cfg.nats_url.clone()),
            ("JETWEAVE_QUEUES", self.cfg.queues.join(",")),
            ("JETWEAVE_PREFIX", self.cfg.prefix.clone()),
        ];
        let r = children::spawn(
            &self.cfg.worker,
            &env,
            &id,
            k,
            self.generation,
            self.exits_tx.clone(),
            &self.watchers,
        );
        let slot = match r {
            Ok(pid) => {
                tracing::info!(pool = %self.cfg.pool_id, worker = %id, pid, "worker started");
                Slot {
                    pid,
                    generation: self.generation,
                    alive: true,
                    retiring: false,
                    restart_at: None,
                    active: 0,
                    completed: 0,
                }
            }
            Err(e) => {
                tracing::error!(pool = %self.cfg.pool_id, error = %e, "worker did not start");
                Slot {
                    pid: 0,
                    generation: self.generation,
                    alive: false,
                    retiring: false,
                    restart_at: Some(now + Duration::from_secs(2)),
                    active: 0,
                    completed: 0,
                }
            }
        };
        self.slots.insert(k, slot);
    }

    fn retire(&mut self, k: u32) {
        let Some(s) = self.slots.get_mut(&k) else {
            return;
        };
        if s.alive {
            tracing::info!(pool = %self.cfg.pool_id, slot = k, "scaling down: draining worker");
            children::terminate(s.pid);
            s.retiring = true;
        } else {
            self.slots.remove(&k);
        }
    }

    /// A worker process ended: forget it if it was retiring (or the pool
    /// stops), else start it again (same id) after the restart delay.
    fn on_exit(&mut self, e: Exit, stopping: bool) {
        let node_id = self.node_id(e.slot);
        let Some(s) = self.slots.get_mut(&e.slot) else {
            return;
        };
        if s.generation != e.generation {
            return;
        }
        let grace = Instant::now() + DEPARTED_GRACE;
        self.departed.push((node_id, s.completed, grace));
        s.alive = false;
        s.active = 0;
        s.completed = 0;
        if s.retiring || stopping {
            self.slots.remove(&e.slot);
            return;
        }
        tracing::warn!(pool = %self.cfg.pool_id, slot = e.slot, status = %e.status, "worker died; replacing it");
        s.restart_at = Some(Instant::now() + self.cfg.restart_delay);
    }

    fn on_heartbeat(&mut self, payload: &[u8]) {
        let Ok(hb) = serde_json::from_slice::<Heartbeat>(payload) else {
            return;
        };
        let Some(k) = hb
            .node_id
            .strip_prefix(&format!("{}-", self.cfg.pool_id))
            .and_then(|k| k.parse::<u32>().ok())
        else {
            return;
        };
        // A late last beat of an exited process (its count only grows).
        if let Some(d) = self
            .departed
            .iter_mut()
            .find(|(id, c, _)| *id == hb.node_id && hb.completed >= *c)
        {
            d.1 = hb.completed;
            return;
        }
        if let Some(s) = self.slots.get_mut(&k).filter(|s| s.alive) {
            s.active = u64::from(hb.active_tasks);
            s.completed = hb.completed;
        }
    }

    /// Folds departed workers whose grace has passed into `carried`.
    fn fold_departed(&mut self, now: Instant) {
        let (done, keep): (Vec<_>, Vec<_>) = self
            .departed
            .drain(..)
            .partition(|(_, _, until)| *until <= now);
        self.carried += done.iter().map(|(_, c, _)| c).sum::<u64>();
        self.departed = keep;
    }

    /// SIGTERM to every worker, then wait until all have exited.
    async fn stop_all(&mut self, exits: &mut mpsc::UnboundedReceiver<Exit>) {
        for s in self.slots.values().filter(|s| s.alive) {
            children::terminate(s.pid);
        }
        self.slots.retain(|_, s| s.alive);
        while !self.slots.is_empty() {
            match exits.recv().await {
                Some(e) => self.on_exit(e, true),
                None => break,
            }
        }
        self.watchers.close();
        self.watchers.wait().await;
    }
}

impl PoolLoop {
    async fn on_request(&mut self, req: async_nats::service::Request) {
        let subject = req.message.subject.to_string();
        let verb = subject.rsplit('.').next().unwrap_or_default();
        let outcome = match verb {
            "status" => {
                parse_object::<NoFields>(&req.message.payload).map(|_| json_body(&self.status()))
            }
            "ping" => parse_object::<NoFields>(&req.message.payload)
                .map(|_| json_body(&serde_json::json!({"ok": true, "pool_id": self.cfg.pool_id}))),
            "scale" => self.scale(&req.message.payload),
            _ => Err(Error::invalid(
                ErrorCode::UnknownVerb,
                format!("unknown pool verb on {subject} (status, scale, ping)"),
            )),
        };
        let body = outcome.unwrap_or_else(|e| error_body(&e));
        if let Err(e) = req.respond(Ok(body)).await {
            tracing::debug!(error = %e, "could not reply");
        }
    }

    fn scale(&mut self, payload: &[u8]) -> Result<bytes::Bytes, Error> {
        let r: ScaleRequest = parse_object(payload)?;
        let now = Instant::now();
        let desired = self.scaler.set(r.workers, now)?;
        tracing::info!(pool = %self.cfg.pool_id, desired, "scaled by request");
        self.reconcile(now);
        Ok(json_body(&ScaleReply { ok: true, desired }))
    }

    fn status(&self) -> PoolStatus {
        let live: Vec<(&u32, &Slot)> = self
            .slots
            .iter()
            .filter(|(_, s)| s.alive && !s.retiring)
            .collect();
        let p = self.scaler.policy();
        PoolStatus {
            ok: true,
            pool_id: self.cfg.pool_id.clone(),
            workers: live.iter().map(|(k, _)| self.node_id(**k)).collect(),
            worker_count: live.len() as u32,
            min: p.min,
            max: p.max,
            desired: self.scaler.desired(),
            auto_scale: p.auto,
            manual_hold_s: self.scaler.hold_left(Instant::now()).as_secs_f64(),
            pending: self.pending,
            current_tasks: self.slots.values().map(|s| s.active).sum(),
            total_completed: self.carried
                + self.departed.iter().map(|(_, c, _)| c).sum::<u64>()
                + self.slots.values().map(|s| s.completed).sum::<u64>(),
        }
    }
}
