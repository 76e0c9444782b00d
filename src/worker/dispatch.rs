//! Task work queues on JetStream (contract §5).
//!
//! ## Resources
//! `P_TASKS` (work-queue retention) holds `P.tasks.<queue>.<priority>`; each
//! (queue, priority) has one durable pull consumer shared by every node
//! serving the queue (non-overlapping filters, as work-queue streams
//! require). `P_RESULTS` holds one terminal [`TaskResult`] per task,
//! `P_DLQ` dead letters, `P_EVENTS` the audit log, and the `P-cancels` KV
//! bucket cancel requests.
//!
//! ## Dispatch
//! A node has `concurrency` slots shared by its queues. Its dispatcher
//! takes as many free slots as it can and fetches at most that many
//! messages, trying `critical`, `high`, `normal`, `low` in turn: it never
//! pulls work it has no slot for (no prefetch starvation), and higher
//! priority goes first. When its consumers are empty and it has a free
//! slot for each, it leaves a pull request for one message waiting on each
//! at the server (see [`super::long_poll`]): a task published, retried or
//! redelivered then goes straight to an idle node, and an idle node asks
//! each consumer twice a minute rather than polling. When its slots are
//! taken (running tasks, or another queue's dispatcher holding them) it
//! waits for them, first in line, before it asks; only a node with fewer
//! slots than consumers looks again every 250 ms instead.
//!
//! Under load (a fetch filled every free slot) the dispatcher *streams*
//! the consumer that had messages: it keeps requests for its free slots
//! waiting there, each holding the slots its messages will run in, and
//! asks again as slots free (see [`super::long_poll`]). Each consumer of
//! higher priority keeps a request for one message waiting meanwhile; a
//! message from one of them ends the stream, so the next fetch round
//! takes the higher priority first. The stream also ends when its
//! consumer runs dry (a request expires short).
//!
//! A slot is a running handler: it frees once the handler returns, and the
//! result's write and the ack go on beside the next task, up to
//! `concurrency` of them (`NodeState::concluding`). Short tasks then do
//! not wait out their results' round trips, and the server sees larger
//! batches (its CPU per echo task fell from 21–23 µs to 19–20 µs).
//!
//! ## One attempt
//! See [`super::attempt`]: running tasks send progress acks every
//! `ack_wait / 4`, so a long task on a live node is never redelivered,
//! while a dead node's task comes back after `ack_wait`.
//!
//! ## JetStream writes per task
//! Exactly two stored writes on the success path: the submit itself and the
//! terminal result, plus the ack (which removes the message). The result is
//! published with `Nats-Expected-Last-Subject-Sequence: 0`, so the server
//! keeps only the first terminal result even when an attempt runs twice
//! (lost ack, redelivery): no status writes per state change. `running`
//! and `queued` are answered by asking nodes and reading the stream when
//! someone calls `tasks.get`, not by writing them down. A failed attempt
//! costs one more write (its count in `P-attempts`, so lost leases are not
//! counted as attempts) and a redelivery one KV read; a task that never
//! fails never touches that bucket.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{consumer, kv};
use futures::StreamExt;
use tokio::sync::OwnedSemaphorePermit;

use super::attempt::run_task;
use super::long_poll::{self, hand_back, LongPolls, Reply, CHECK_EVERY};
use super::task_message::TaskMessage;
use super::{CancelReason, NodeState};
use crate::error::Error;
use crate::store::{cancels_bucket, task_consumer};
use crate::wire::protocol::{Health, Priority};
use crate::wire::subjects::decode_key;

/// Bound on one fetch round trip.
const FETCH_TIMEOUT: Duration = Duration::from_secs(2);
/// How long an idle dispatcher whose pull requests could not be left
/// waiting sleeps before it looks again.
const IDLE_POLL: Duration = Duration::from_millis(250);
/// How long a request asked for under load waits at the server: one that
/// ends with messages still owed means its consumer ran dry.
const CREDIT_EXPIRY: Duration = Duration::from_millis(100);
/// How long a saturated dispatcher waits for more free slots before a fetch.
const SATURATED_GATHER: Duration = Duration::from_millis(1);

/// Keeps the node's set of cancelled task ids current and cancels the
/// running ones at once.
pub(crate) async fn start_cancel_watch(s: &Arc<NodeState>) -> Result<(), Error> {
    let store = cancels_bucket(&s.js, &s.subjects, s.replicas).await?;
    let mut watch = crate::store::watch_all(&store).await?;
    let s = s.clone();
    let loops = s.loops.clone();
    loops.spawn(async move {
        loop {
            let entry = tokio::select! {
                _ = s.shutdown.wait() => break,
                e = watch.next() => e,
            };
            match entry {
                Some(Ok(entry)) => apply_cancel(&s, entry),
                // The watch's consumer was lost (a server died, it was
                // deleted): watch again; the replay re-reads every cancel.
                other => match rewatch(&s, &store, other.is_none()).await {
                    Some(w) => watch = w,
                    None => break,
                },
            }
        }
    });
    Ok(())
}

/// Re-creates the cancels watch with backoff; `None` when the node stops.
async fn rewatch(s: &NodeState, store: &kv::Store, ended: bool) -> Option<kv::Watch> {
    tracing::warn!(ended, "cancel watch lost; watching again");
    let mut delay = Duration::from_millis(100);
    loop {
        if let Ok(w) = store.watch_with_history(">").await {
            return Some(w);
        }
        tokio::select! {
            _ = s.shutdown.wait() => return None,
            _ = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(Duration::from_secs(2));
    }
}

/// One entry of `P-cancels`: a cancel request (cancel the task if it runs
/// here, and remember it) or its expiry (forget it).
fn apply_cancel(s: &NodeState, entry: kv::Entry) {
    let task_id = decode_key(&entry.key);
    if entry.operation != kv::Operation::Put {
        // Aged out (24 h): forget it.
        s.cancelled.lock().expect("lock poisoned").remove(&task_id);
        return;
    }
    if let Some(t) = s.running.lock().expect("lock poisoned").get(&task_id) {
        t.reason
            .lock()
            .expect("lock poisoned")
            .get_or_insert(CancelReason::User);
        t.cancel.cancel();
    }
    s.cancelled.lock().expect("lock poisoned").insert(task_id);
}

/// Where a dispatcher's messages come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Source {
    /// A task queue.
    Queue(String),
    /// This node's shard assignments.
    Shards,
}

impl Source {
    /// The label used for DLQ subjects and running counts.
    pub(super) fn label(&self) -> &str {
        match self {
            Source::Queue(q) => q,
            Source::Shards => SHARDS_LABEL,
        }
    }
}

/// DLQ queue name of dead shards.
pub(super) const SHARDS_LABEL: &str = "shards";

/// A dispatcher whose consumers exist, ready to be spawned.
pub(crate) type Ready = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

/// Prepares the dispatcher of one queue: its consumers are created here,
/// so a node that fails to start has taken no task yet.
pub(crate) async fn queue_dispatcher(s: &Arc<NodeState>, queue: &str) -> Result<Ready, Error> {
    let source = Source::Queue(queue.to_string());
    let consumers = open_consumers(s, &source).await?;
    Ok(Box::pin(dispatch_loop(s.clone(), source, consumers)))
}

/// Prepares the dispatcher of this node's shard assignments.
pub(crate) async fn shard_dispatcher(s: &Arc<NodeState>) -> Result<Ready, Error> {
    crate::store::ensure_shards_stream(&s.js, &s.subjects, s.replicas).await?;
    let consumers = open_consumers(s, &Source::Shards).await?;
    Ok(Box::pin(dispatch_loop(
        s.clone(),
        Source::Shards,
        consumers,
    )))
}
/// The durable consumers a dispatcher pulls from (created when missing:
/// also used to re-create them when they were deleted, e.g. the shard
/// consumer of a node the coordinator gave up on while it was paused).
async fn open_consumers(
    s: &NodeState,
    source: &Source,
) -> Result<Vec<consumer::PullConsumer>, Error> {
    let queue = match source {
        Source::Queue(q) => q,
        Source::Shards => return Ok(vec![shard_consumer(s).await?]),
    };
    let mut consumers = Vec::new();
    for p in Priority::ALL {
        consumers.push(task_consumer(&s.js, &s.subjects, queue, p, s.cfg.ack_wait).await?);
    }
    Ok(consumers)
}

async fn shard_consumer(s: &NodeState) -> Result<consumer::PullConsumer, Error> {
    let name = s.subjects.shard_consumer(&s.cfg.node_id);
    let config = consumer::pull::Config {
        durable_name: Some(name),
        description: Some(format!("jetweave shards of {}", s.cfg.node_id)),
        filter_subject: s.subjects.shards(&s.cfg.node_id),
        ack_policy: consumer::AckPolicy::Explicit,
        ack_wait: s.cfg.ack_wait,
        max_deliver: -1,
        ..Default::default()
    };
    crate::store::durable_consumer(&s.js, &s.subjects.shards_stream(), config).await
}

/// One dispatcher: takes free slots, fetches at most that many messages
/// (highest priority first) and starts an attempt for each; leaves pull
/// requests waiting at the server while idle ([`LongPolls`]).
struct Dispatcher {
    s: Arc<NodeState>,
    source: Source,
    consumers: Vec<consumer::PullConsumer>,
    /// The requests waiting while idle; `None` until its inbox is
    /// subscribed (then the dispatcher polls every [`IDLE_POLL`]).
    polls: Option<LongPolls>,
    health: tokio::sync::watch::Receiver<Health>,
    saturated: bool,
    batch_min: usize,
    /// A fetch or a request failed: re-open the consumers before the next
    /// round.
    reopen: std::sync::atomic::AtomicBool,
    /// The client every message's ack goes through (shared: see
    /// [`TaskMessage`]).
    acks: Arc<async_nats::Client>,
}

/// What happened while streaming ([`Dispatcher::stream`]).
enum Streamed {
    /// Free slots to ask for messages for.
    Slots(OwnedSemaphorePermit),
    Reply(Reply),
    /// Time to look for lost requests.
    Check,
}

/// What ended a wait.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Woke {
    Go,
    Stop,
}

async fn dispatch_loop(s: Arc<NodeState>, source: Source, consumers: Vec<consumer::PullConsumer>) {
    let mut d = Dispatcher {
        health: s.health.subscribe(),
        acks: Arc::new(s.client.clone()),
        batch_min: (s.cfg.concurrency as usize / 4).clamp(1, 64),
        s,
        source,
        consumers,
        polls: None,
        saturated: false,
        reopen: Default::default(),
    };
    d.run().await;
    d.let_go().await;
}

/// The next reply of `polls`, or never when there are none.
async fn next_reply(polls: &mut Option<LongPolls>) -> Reply {
    match polls {
        Some(p) if p.any() => p.next().await,
        _ => std::future::pending().await,
    }
}

impl Dispatcher {
    fn stopping(&self) -> bool {
        self.s.shutdown.is_triggered() || self.s.stop_requested.is_triggered()
    }

    /// Healthy (not draining) and not stopping.
    fn takes_work(&self) -> bool {
        *self.health.borrow() == Health::Healthy && !self.stopping()
    }

    async fn run(&mut self) {
        while !self.stopping() {
            if *self.health.borrow_and_update() == Health::Draining {
                // Unsubscribing ends the waiting requests: the server
                // skips a request nobody listens to (no NAK, no delivery).
                self.let_go().await;
                match self.wait_health().await {
                    Woke::Stop => break,
                    Woke::Go => continue,
                }
            }
            let first = tokio::select! {
                p = self.s.slots.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
                r = next_reply(&mut self.polls) => { self.on_reply(r).await; continue }
                _ = self.s.shutdown.wait() => break,
                _ = self.health.changed() => continue,
            };
            self.reopen_if_asked().await;
            let permits = self.gather(first).await;
            let wanted = permits.num_permits();
            let (got, last) = self.fetch_round(permits).await;
            self.saturated = got == wanted && got > 0;
            // Replies that came meanwhile (the slots are back now).
            while let Some(r) = self.polls.as_mut().and_then(LongPolls::try_next) {
                self.on_reply(r).await;
            }
            if self.saturated {
                self.stream(last).await;
            }
            if got > 0 {
                continue;
            }
            if let Woke::Stop = self.idle().await {
                break;
            }
        }
    }

    /// Ends the waiting requests: hands back what already came for them
    /// and drops the inbox, so that the server skips them from now on.
    async fn let_go(&mut self) {
        let Some(mut polls) = self.polls.take() else {
            return;
        };
        while let Some(r) = polls.try_next() {
            if let Reply::Message(msg, _) = r {
                hand_back(&msg, "the node drains or stops").await;
            }
        }
    }

    /// While draining: wait for a health change or a stop.
    async fn wait_health(&mut self) -> Woke {
        tokio::select! {
            _ = self.s.shutdown.wait() => Woke::Stop,
            _ = self.s.stop_requested.wait() => Woke::Stop,
            r = self.health.changed() => if r.is_err() { Woke::Stop } else { Woke::Go },
        }
    }

    /// Re-creates the consumers if a fetch or a request failed, for at
    /// most [`FETCH_TIMEOUT`]. Replies keep being served meanwhile: after a
    /// cluster restarts, the JetStream API can take seconds to answer,
    /// while the requests still waiting on the other consumers bring tasks
    /// (a task waited over 7 s behind a reopen in the 3-server test pass).
    async fn reopen_if_asked(&mut self) {
        if !self
            .reopen
            .swap(false, std::sync::atomic::Ordering::Relaxed)
        {
            return;
        }
        let (s, source) = (self.s.clone(), self.source.clone());
        let mut open = std::pin::pin!(async move { open_consumers(&s, &source).await });
        // A JetStream API request sent as a server restarts may get no
        // answer until it times out (10 s): give up after a fetch's bound
        // and try again on the next round, asking with the consumers as
        // they were meanwhile (requests name a consumer, not a handle).
        let mut bound = std::pin::pin!(tokio::time::sleep(FETCH_TIMEOUT));
        let opened = loop {
            tokio::select! {
                r = &mut open => break r,
                r = next_reply(&mut self.polls) => { self.on_reply(r).await; }
                _ = &mut bound => {
                    tracing::warn!("consumers not reopened yet; trying again");
                    self.reopen.store(true, std::sync::atomic::Ordering::Relaxed);
                    return;
                }
                _ = self.s.shutdown.wait() => return,
            }
        };
        match opened {
            Ok(c) => {
                self.polls = self.polls.take().map(|p| p.with_consumers(&c));
                self.consumers = c;
            }
            Err(e) => tracing::warn!(error = %e, "cannot reopen the consumers yet"),
        }
    }

    /// One reply for the waiting requests: a message runs in a free slot
    /// (or goes straight back to the queue when there is none, or the
    /// node drains or stops).
    async fn on_reply(&mut self, r: Reply) -> bool {
        match r {
            Reply::Message(msg, slot) => {
                if !self.takes_work() {
                    hand_back(&msg, "the node drains or stops").await;
                } else {
                    match slot.map_or_else(|| self.s.slots.clone().try_acquire_owned(), Ok) {
                        Ok(p) => self.start(*msg, p),
                        Err(_) => self.start_when_free(*msg),
                    }
                }
                true
            }
            Reply::Ended { failed } => {
                if failed {
                    self.reopen
                        .store(true, std::sync::atomic::Ordering::Relaxed);
                }
                true
            }
            Reply::Quiet => false,
            Reply::Closed => {
                self.polls = None;
                true
            }
        }
    }

    /// A message that came while every slot was taken (another
    /// dispatcher's fetch round holds the free slots for a moment, or the
    /// node filled up after it asked): it takes the next slot that frees
    /// (first in line), waiting up to `ack_wait / 2`, else goes back to the
    /// queue. Handing back is the last resort: the server counts it as a
    /// delivery, and a task's deliveries are bounded.
    fn start_when_free(&self, msg: TaskMessage) {
        let (s, source) = (self.s.clone(), self.source.clone());
        let patience = self.s.cfg.ack_wait / 2;
        self.s.work.spawn(async move {
            let slot = tokio::time::timeout(patience, s.slots.clone().acquire_owned()).await;
            match slot {
                Ok(Ok(p)) if s.health() == Health::Healthy && !s.stop_requested.is_triggered() => {
                    Box::pin(run_task(s, source, msg, p)).await
                }
                _ => hand_back(&msg, "no free slot").await,
            }
        });
    }

    fn start(&self, msg: TaskMessage, permit: OwnedSemaphorePermit) {
        let (s, source) = (self.s.clone(), self.source.clone());
        // Boxed: the runtime moves a spawned future several times.
        self.s
            .work
            .spawn(Box::pin(run_task(s, source, msg, permit)));
    }

    /// Every free slot (up to 256), starting with `first`, as one permit:
    /// taking and giving back slots one by one cost an idle node's
    /// round ~500 semaphore operations. Under full load, gather a few
    /// freed slots before fetching, so one fetch round trip brings a batch
    /// rather than a single task; idle or lightly loaded nodes fetch at
    /// once (no added latency).
    async fn gather(&self, mut first: OwnedSemaphorePermit) -> OwnedSemaphorePermit {
        if self.saturated && self.s.slots.available_permits() + 1 < self.batch_min {
            tokio::time::sleep(SATURATED_GATHER).await;
        }
        let more = self.s.slots.available_permits().min(255) as u32;
        if more > 0 {
            if let Ok(p) = self.s.slots.clone().try_acquire_many_owned(more) {
                first.merge(p);
            }
        }
        first
    }

    /// Fetches from each consumer in priority order until the permits are
    /// used; starts an attempt per message, each with one of them. A
    /// consumer with a request waiting has nothing to fetch (the request
    /// would have taken it). Returns how many started, and the last
    /// consumer that had messages.
    async fn fetch_round(&mut self, mut permits: OwnedSemaphorePermit) -> (usize, usize) {
        if let Some(p) = self.polls.as_mut() {
            p.forget_lost(&self.s.client);
        }
        let (mut got, mut last) = (0usize, 0usize);
        for (i, c) in self.consumers.iter().enumerate() {
            if permits.num_permits() == 0 {
                break;
            }
            if self.polls.as_ref().is_some_and(|p| p.waits(i)) {
                continue;
            }
            if !self.takes_work() {
                break;
            }
            let Some(msgs) = self.fetch(c, permits.num_permits()).await else {
                break;
            };
            for msg in msgs {
                // A drain or stop that came during the fetch: nothing new
                // starts once it has been answered.
                if !self.takes_work() {
                    hand_back(&msg, "the node drains or stops").await;
                    continue;
                }
                let Some(permit) = permits.split(1) else {
                    break;
                };
                (got, last) = (got + 1, i);
                self.start(msg, permit);
            }
        }
        (got, last)
    }

    /// One bounded fetch: a fetch answered by nobody (the server
    /// restarting, a lost request) must not stall the dispatcher. Messages
    /// cut off by the bound come back after ack_wait.
    async fn fetch(&self, c: &consumer::PullConsumer, want: usize) -> Option<Vec<TaskMessage>> {
        let fetched = tokio::time::timeout(FETCH_TIMEOUT, async {
            let mut out = Vec::with_capacity(want);
            let mut batch = c.fetch().max_messages(want).messages().await?;
            while let Some(m) = batch.next().await {
                match m {
                    Ok(msg) => out.push(TaskMessage::new(msg.message, self.acks.clone())),
                    Err(e) if out.is_empty() => return Err(e),
                    Err(_) => break,
                }
            }
            Ok::<_, async_nats::Error>(out)
        })
        .await;
        let queue = self.source.label();
        match fetched {
            Ok(Ok(msgs)) => Some(msgs),
            Ok(Err(e)) => {
                // The consumer may be gone (deleted, lost with a server):
                // have it re-created before the next round.
                tracing::warn!(queue = %queue, error = %e, "fetch failed; reopening the consumers");
                self.reopen
                    .store(true, std::sync::atomic::Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(200)).await;
                None
            }
            Err(_) => {
                tracing::warn!(queue = %queue, "fetch timed out");
                None
            }
        }
    }

    /// Under load, on consumer `i` (the highest priority with messages):
    /// keeps requests for the free slots waiting at the server, each
    /// holding the slots its messages will run in, and asks again as
    /// slots free, so that messages flow without a fetch round trip per
    /// batch and the server sends as they come. Each consumer of higher
    /// priority keeps a request for one message waiting. A message from
    /// one of them, a request that ends short (its consumer ran dry, or
    /// refused), a lost request, a drain or a stop ends the stream once
    /// what was asked for has come or expired.
    async fn stream(&mut self, i: usize) {
        if !self.ask_higher(i).await {
            return;
        }
        let chunk = self.batch_min as u32;
        let start = tokio::time::Instant::now() + CHECK_EVERY;
        let mut check = tokio::time::interval_at(start, CHECK_EVERY);
        let mut ending = false;
        loop {
            let Some(polls) = self.polls.as_mut() else {
                return;
            };
            if ending && polls.credit(i) == 0 {
                return;
            }
            let slots = &self.s.slots;
            let event = tokio::select! {
                p = slots.clone().acquire_many_owned(chunk), if !ending => match p {
                    Ok(p) => Streamed::Slots(p),
                    Err(_) => return,
                },
                r = polls.next() => Streamed::Reply(r),
                _ = check.tick() => Streamed::Check,
                _ = self.s.shutdown.wait() => return,
                _ = self.s.stop_requested.wait() => return,
                _ = self.health.changed() => return,
            };
            ending |= self.streamed(event, i).await;
        }
    }

    /// Handles one event of [`Self::stream`]; true when the stream ends.
    async fn streamed(&mut self, event: Streamed, i: usize) -> bool {
        let Some(polls) = self.polls.as_mut() else {
            return true;
        };
        match event {
            Streamed::Slots(p) => {
                let asked = polls.ask_credit(&self.consumers[i], i, p, CREDIT_EXPIRY);
                if let Err(e) = asked.await {
                    tracing::warn!(error = %e, "cannot ask for messages; fetching instead");
                    return true;
                }
                false
            }
            Streamed::Check => polls.forget_lost(&self.s.client),
            Streamed::Reply(r) => {
                let own = |m: &TaskMessage| {
                    *m.subject == self.consumers[i].cached_info().config.filter_subject
                };
                let end = match &r {
                    Reply::Message(m, _) => !own(m),
                    Reply::Ended { .. } | Reply::Closed => true,
                    Reply::Quiet => false,
                };
                self.on_reply(r).await;
                end
            }
        }
    }

    /// Leaves a request for one message waiting on each consumer of
    /// higher priority than `i` that has none; false when that failed.
    async fn ask_higher(&mut self, i: usize) -> bool {
        if !self.subscribe_inbox().await {
            return false;
        }
        let Some(polls) = self.polls.as_mut() else {
            return false;
        };
        let expiry = long_poll::expiry(&self.s, &self.source);
        for (j, c) in self.consumers.iter().enumerate().take(i) {
            if polls.waits(j) {
                continue;
            }
            if let Err(e) = polls.ask(c, j, expiry).await {
                tracing::warn!(error = %e, "cannot leave a pull request waiting");
                return false;
            }
        }
        true
    }

    /// Subscribes the dispatcher's inbox if it is not; false if that failed.
    async fn subscribe_inbox(&mut self) -> bool {
        if self.polls.is_none() {
            match LongPolls::new(&self.s.client, &self.acks, &self.consumers).await {
                Ok(p) => self.polls = Some(p),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot subscribe the dispatcher's inbox");
                    return false;
                }
            }
        }
        true
    }

    /// Idle: leave a request waiting on every consumer that has none,
    /// then wait until a reply brings a message or ends a request, a
    /// request is lost, the health changes or the node stops. When not
    /// every consumer has one (too few free slots, or a request not sent),
    /// look again after [`IDLE_POLL`].
    async fn idle(&mut self) -> Woke {
        let asked = match self.ask_all().await {
            Asked::Woke(w) => return w,
            a => a,
        };
        let every = if asked == Asked::Yes {
            CHECK_EVERY
        } else {
            IDLE_POLL
        };
        let mut check = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        loop {
            tokio::select! {
                r = next_reply(&mut self.polls) => if self.on_reply(r).await {
                    return Woke::Go;
                },
                _ = check.tick() => {
                    let client = &self.s.client;
                    if asked != Asked::Yes || self.polls.as_mut().is_some_and(|p| p.forget_lost(client)) {
                        return Woke::Go;
                    }
                }
                _ = self.s.shutdown.wait() => return Woke::Stop,
                _ = self.s.stop_requested.wait() => return Woke::Stop,
                _ = self.health.changed() => return Woke::Go,
            }
        }
    }

    /// Leaves a request waiting on every consumer that has none, once the
    /// node has a free slot for each (so that what comes for them finds
    /// one). While running handlers hold the slots that would take, it
    /// asks on as many as there are free slots, in priority order, and
    /// polls the others ([`Asked::Partly`]).
    async fn ask_all(&mut self) -> Asked {
        if !self.subscribe_inbox().await {
            return Asked::Failed;
        }
        let mut budget = match self.free_slots(self.consumers.len() as u32).await {
            Ok(()) => usize::MAX,
            Err(Asked::Partly) => self.s.slots.available_permits(),
            Err(a) => return a,
        };
        let Some(polls) = self.polls.as_mut() else {
            return Asked::Failed;
        };
        budget = budget.saturating_sub(polls.unbacked());
        let expiry = long_poll::expiry(&self.s, &self.source);
        for (i, c) in self.consumers.iter().enumerate() {
            if polls.waits(i) {
                continue;
            }
            if budget == 0 {
                return Asked::Partly;
            }
            budget -= 1;
            if let Err(e) = polls.ask(c, i, expiry).await {
                tracing::warn!(error = %e, "cannot leave a pull request waiting");
                return Asked::Failed;
            }
        }
        Asked::Yes
    }

    /// Waits for `need` free slots, serving replies meanwhile. Another
    /// dispatcher may hold the free slots: for a fetch round trip, or as
    /// credit while it streams a busy queue. The semaphore is fair, so this
    /// wait is served before that dispatcher asks again; a bounded wait
    /// (20 ms) followed by a 250 ms poll made an idle queue beside a busy
    /// one wait ~250 ms on a loaded 3-server cluster.
    ///
    /// Slots held by running handlers may not come back for as long as a
    /// task runs: then (checked first, and every [`IDLE_POLL`]) it gives
    /// up with [`Asked::Partly`]. Waiting for them left a partly busy
    /// 4-slot node's queue unasked until its last task ended (in the
    /// partition chaos test, tasks moved off a cut node waited ~1 s more).
    ///
    /// They go back at once: an idle request holds no slot, and
    /// [`long_poll::expiry`] counts them as free.
    async fn free_slots(&mut self, need: u32) -> Result<(), Asked> {
        if self.handlers_hold(need) {
            return Err(Asked::Partly);
        }
        let free = self.s.slots.clone().acquire_many_owned(need);
        tokio::pin!(free);
        let start = tokio::time::Instant::now() + IDLE_POLL;
        let mut check = tokio::time::interval_at(start, IDLE_POLL);
        loop {
            tokio::select! {
                p = &mut free => return p.map(drop).map_err(|_| Asked::Woke(Woke::Stop)),
                r = next_reply(&mut self.polls) => if self.on_reply(r).await {
                    return Err(Asked::Woke(Woke::Go));
                },
                _ = check.tick() => if self.handlers_hold(need) {
                    return Err(Asked::Partly);
                },
                _ = self.s.shutdown.wait() => return Err(Asked::Woke(Woke::Stop)),
                _ = self.s.stop_requested.wait() => return Err(Asked::Woke(Woke::Stop)),
                _ = self.health.changed() => return Err(Asked::Woke(Woke::Go)),
            }
        }
    }

    /// Whether the running handlers leave fewer than `need` of the node's
    /// slots to the dispatchers.
    fn handlers_hold(&self, need: u32) -> bool {
        let running = self.s.active.load(std::sync::atomic::Ordering::Relaxed);
        self.s.cfg.concurrency.saturating_sub(running) < need
    }
}

/// Whether [`Dispatcher::ask_all`] left its requests waiting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Asked {
    Yes,
    /// Running handlers hold the slots a request per consumer needs (or
    /// the node has fewer slots than consumers): the consumers of highest
    /// priority have one each, the others are polled.
    Partly,
    /// The wait for free slots ended otherwise (a reply started a task,
    /// the health changed, the node stops).
    Woke(Woke),
    /// No inbox, or a request not sent.
    Failed,
}
