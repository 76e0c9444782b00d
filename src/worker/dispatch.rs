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
//! priority goes first. When every consumer is empty it subscribes to the
//! queue's subjects as a doorbell (core NATS, only while idle) and sleeps
//! until a task is published or a short poll interval passes (retries and
//! redeliveries become available without a publish).
//!
//! ## One attempt
//! Running tasks send progress acks every `ack_wait / 3`, so a long task on
//! a live node is never redelivered, while a dead node's task comes back
//! after `ack_wait`. The delivery count is the attempt number. A failed
//! attempt is NAKed with its backoff; the last one is dead-lettered by the
//! node (copy to `P_DLQ`, then `Term`), because `max_deliver` alone would
//! leave the message stuck in a work-queue stream.
//!
//! ## JetStream writes per task
//! Exactly two stored writes on the success path: the submit itself and the
//! terminal result, plus the ack (which removes the message). The result is
//! published with `Nats-Expected-Last-Subject-Sequence: 0`, so the server
//! keeps only the first terminal result even when an attempt runs twice
//! (lost ack, redelivery): no status writes per state change. `running`
//! and `queued` are answered by asking nodes and reading the stream when
//! someone calls `tasks.get`, not by writing them down.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer, kv, AckKind};
use futures::StreamExt;
use serde_json::Value;
use tokio::sync::OwnedSemaphorePermit;
use tokio_util::sync::CancellationToken;

use super::{CancelReason, Running, Shared};
use crate::error::Error;
use crate::handler::{HandlerError, ShardInfo, TaskContext};
use crate::store::results::store_result;
use crate::store::tasks::schedule;
use crate::store::{cancels_bucket, task_consumer};
use crate::wire::protocol::json_body;
use crate::wire::protocol::{
    now_rfc3339, parse_object, parse_rfc3339, shard_task_id, DeadLetter, Health, Priority,
    ShardAssignment, ShardDone, TaskEnvelope, TaskResult, TaskStatus,
};
use crate::wire::subjects::{decode_key, validate_task_id};

/// Bound on one fetch round trip.
const FETCH_TIMEOUT: Duration = Duration::from_secs(2);
/// How long an idle dispatcher sleeps between polls.
const IDLE_POLL: Duration = Duration::from_millis(250);
/// How long a saturated dispatcher waits for more free slots before a fetch.
const SATURATED_GATHER: Duration = Duration::from_millis(1);

/// Keeps the node's set of cancelled task ids current and cancels the
/// running ones at once.
pub(crate) async fn start_cancel_watch(s: &Arc<Shared>) -> Result<(), Error> {
    let store = cancels_bucket(&s.js, &s.subjects, s.replicas).await?;
    let mut watch = store.watch_with_history(">").await.map_err(Error::nats)?;
    let s = s.clone();
    tokio::spawn(async move {
        loop {
            let entry = tokio::select! {
                _ = s.shutdown.wait() => break,
                e = watch.next() => e,
            };
            let Some(Ok(entry)) = entry else { break };
            let task_id = decode_key(&entry.key);
            if entry.operation != kv::Operation::Put {
                // Aged out (24 h): forget it.
                if let Ok(mut c) = s.cancelled.lock() {
                    c.remove(&task_id);
                }
                continue;
            }
            if let Ok(r) = s.running.lock() {
                if let Some(t) = r.get(&task_id) {
                    if let Ok(mut reason) = t.reason.lock() {
                        reason.get_or_insert(CancelReason::User);
                    }
                    t.cancel.cancel();
                }
            }
            if let Ok(mut c) = s.cancelled.lock() {
                c.insert(task_id);
            }
        }
    });
    Ok(())
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
    fn label(&self) -> &str {
        match self {
            Source::Queue(q) => q,
            Source::Shards => SHARDS_LABEL,
        }
    }
}

/// DLQ queue name of dead shards.
pub const SHARDS_LABEL: &str = "shards";

/// Starts the dispatcher of one queue.
pub(crate) async fn start_dispatcher(s: &Arc<Shared>, queue: &str) -> Result<(), Error> {
    let mut consumers = Vec::new();
    for p in Priority::ALL {
        consumers.push(task_consumer(&s.js, &s.subjects, queue, p, s.cfg.ack_wait).await?);
    }
    let doorbell = s.subjects.task_queue_wildcard(queue);
    tokio::spawn(dispatch_loop(
        s.clone(),
        Source::Queue(queue.to_string()),
        consumers,
        doorbell,
    ));
    Ok(())
}

/// Starts the dispatcher of this node's shard assignments.
pub(crate) async fn start_shard_dispatcher(s: &Arc<Shared>) -> Result<(), Error> {
    crate::store::ensure_shards_stream(&s.js, &s.subjects, s.replicas).await?;
    let stream =
        s.js.get_stream(s.subjects.shards_stream())
            .await
            .map_err(Error::nats)?;
    let name = s.subjects.shard_consumer(&s.cfg.node_id);
    let consumer = stream
        .get_or_create_consumer(
            &name,
            consumer::pull::Config {
                durable_name: Some(name.clone()),
                description: Some(format!("jetweave shards of {}", s.cfg.node_id)),
                filter_subject: s.subjects.shards(&s.cfg.node_id),
                ack_policy: consumer::AckPolicy::Explicit,
                ack_wait: s.cfg.ack_wait,
                max_deliver: -1,
                ..Default::default()
            },
        )
        .await
        .map_err(|e| Error::nats(format!("cannot create consumer {name}: {e}")))?;
    let doorbell = s.subjects.shards(&s.cfg.node_id);
    tokio::spawn(dispatch_loop(
        s.clone(),
        Source::Shards,
        vec![consumer],
        doorbell,
    ));
    Ok(())
}

async fn dispatch_loop(
    s: Arc<Shared>,
    source: Source,
    consumers: Vec<consumer::PullConsumer>,
    doorbell_subject: String,
) {
    let queue = source.label().to_string();
    let mut health = s.health.subscribe();
    let mut doorbell: Option<async_nats::Subscriber> = None;
    let mut saturated = false;
    let batch_min = (s.cfg.concurrency as usize / 4).clamp(1, 64);
    loop {
        if s.shutdown.is_triggered() || s.stop_requested.is_triggered() {
            break;
        }
        if *health.borrow_and_update() == Health::Draining {
            doorbell = None;
            tokio::select! {
                _ = s.shutdown.wait() => break,
                _ = s.stop_requested.wait() => break,
                r = health.changed() => if r.is_err() { break },
            }
            continue;
        }
        let first = tokio::select! {
            p = s.slots.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
            _ = s.shutdown.wait() => break,
            _ = health.changed() => continue,
        };
        // Under full load, gather a few freed slots before fetching, so one
        // fetch round trip brings a batch rather than a single task. Idle
        // or lightly loaded nodes fetch at once (no added latency).
        if saturated && s.slots.available_permits() + 1 < batch_min {
            tokio::time::sleep(SATURATED_GATHER).await;
        }
        let mut permits = vec![first];
        while permits.len() < 256 {
            match s.slots.clone().try_acquire_owned() {
                Ok(p) => permits.push(p),
                Err(_) => break,
            }
        }
        let wanted = permits.len();
        let mut got = 0usize;
        for c in &consumers {
            if permits.is_empty() {
                break;
            }
            // A fetch answered by nobody (the server restarting, a lost
            // request) must not stall the dispatcher: bound it. Messages
            // cut off by the bound come back after ack_wait.
            let want = permits.len();
            let fetched = tokio::time::timeout(FETCH_TIMEOUT, async {
                let mut out = Vec::with_capacity(want);
                let mut batch = c.fetch().max_messages(want).messages().await?;
                while let Some(m) = batch.next().await {
                    match m {
                        Ok(msg) => out.push(msg),
                        Err(e) if out.is_empty() => return Err(e),
                        Err(_) => break,
                    }
                }
                Ok::<_, async_nats::Error>(out)
            })
            .await;
            let msgs = match fetched {
                Ok(Ok(msgs)) => msgs,
                Ok(Err(e)) => {
                    tracing::warn!(queue = %queue, error = %e, "fetch failed");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    break;
                }
                Err(_) => {
                    tracing::warn!(queue = %queue, "fetch timed out");
                    break;
                }
            };
            for msg in msgs {
                let Some(permit) = permits.pop() else { break };
                got += 1;
                s.work
                    .spawn(run_task(s.clone(), source.clone(), msg, permit));
            }
        }
        drop(permits);
        saturated = got == wanted && got > 0;
        if got > 0 {
            if saturated {
                // The doorbell would only add traffic.
                doorbell = None;
            }
            continue;
        }
        // Idle. Subscribe to the doorbell, then look once more before
        // sleeping, so a task published in between is not missed.
        if doorbell.is_none() {
            match s.client.subscribe(doorbell_subject.clone()).await {
                Ok(sub) => {
                    let _ = s.client.flush().await;
                    doorbell = Some(sub);
                    continue;
                }
                Err(e) => tracing::warn!(error = %e, "doorbell subscribe failed"),
            }
        }
        let ring = async {
            match doorbell.as_mut() {
                Some(d) => {
                    d.next().await;
                }
                None => std::future::pending::<()>().await,
            }
        };
        tokio::select! {
            _ = ring => {}
            _ = tokio::time::sleep(IDLE_POLL) => {}
            _ = s.shutdown.wait() => break,
            _ = s.stop_requested.wait() => break,
            _ = health.changed() => {}
        }
        // Swallow what else rang meanwhile; one fetch round serves it all.
        if let Some(d) = doorbell.as_mut() {
            while let Some(Some(_)) = futures::FutureExt::now_or_never(d.next()) {}
        }
    }
}

fn header(msg: &jetstream::Message, name: &str) -> Option<String> {
    msg.headers
        .as_ref()
        .and_then(|h| h.get(name))
        .map(|v| v.as_str().to_string())
}

fn raw_envelope(payload: &[u8]) -> Value {
    serde_json::from_slice(payload).unwrap_or_else(|_| {
        Value::String(
            String::from_utf8_lossy(&payload[..payload.len().min(64 * 1024)]).into_owned(),
        )
    })
}

async fn settle(msg: &jetstream::Message, kind: AckKind) {
    if let Err(e) = msg.ack_with(kind).await {
        tracing::warn!(error = %e, "ack failed (the task will be redelivered)");
    }
}

/// Outcome of one attempt.
enum Outcome {
    Done(Result<Value, HandlerError>),
    Cancelled(CancelReason),
    TimedOut(Duration),
}

/// Runs one delivery of a task or shard message.
async fn run_task(
    s: Arc<Shared>,
    source: Source,
    msg: jetstream::Message,
    _permit: OwnedSemaphorePermit,
) {
    let queue = source.label().to_string();
    let (attempt, seq) = match msg.info() {
        Ok(i) => (i.delivered.max(1) as u32, i.stream_sequence),
        Err(_) => {
            settle(&msg, AckKind::Term).await;
            return;
        }
    };
    let (env, task_id, shard) = match parse_message(&s, &source, &msg, seq) {
        Ok(v) => v,
        Err((id, reason)) => {
            let raw = raw_envelope(&msg.payload);
            dead_end(
                &s,
                &queue,
                &id,
                raw,
                &reason,
                attempt,
                TaskStatus::Dead,
                None,
            )
            .await;
            settle(&msg, AckKind::Term).await;
            return;
        }
    };

    let cancelled = s
        .cancelled
        .lock()
        .map(|c| c.contains(&task_id))
        .unwrap_or(false);
    if cancelled {
        let _ = publish_result(
            &s,
            &task_id,
            TaskStatus::Cancelled,
            Value::Null,
            Some("cancelled before it started".into()),
            attempt.saturating_sub(1),
            None,
            0.0,
        )
        .await;
        settle(&msg, AckKind::Ack).await;
        return;
    }
    if attempt > 1 && result_exists(&s, &task_id).await {
        // An earlier attempt finished but its ack was lost.
        settle(&msg, AckKind::Ack).await;
        return;
    }
    if let Some(nb) = &env.not_before {
        if let Ok(t) = parse_rfc3339(nb) {
            let wait = t - time::OffsetDateTime::now_utc();
            if wait > time::Duration::milliseconds(5) {
                let priority = msg
                    .subject
                    .rsplit('.')
                    .next()
                    .and_then(|p| p.parse::<Priority>().ok())
                    .unwrap_or_default();
                let mut env2 = env.clone();
                env2.id = Some(task_id.clone());
                match schedule(&s.js, &s.subjects, &queue, priority, &env2).await {
                    Ok(()) => settle(&msg, AckKind::Ack).await,
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot schedule delayed task; holding it with a NAK");
                        let d = Duration::try_from(wait).unwrap_or(Duration::from_secs(1));
                        settle(&msg, AckKind::Nak(Some(d))).await;
                    }
                }
                return;
            }
        }
    }
    if attempt > env.max_attempts() {
        let reason = format!("delivered {attempt} times, more than max_attempts {} (its nodes died or lost their acks)", env.max_attempts());
        dead_end(
            &s,
            &queue,
            &task_id,
            raw_envelope(&msg.payload),
            &reason,
            attempt - 1,
            TaskStatus::Dead,
            None,
        )
        .await;
        settle(&msg, AckKind::Term).await;
        return;
    }
    let Some(handler) = s.handlers.get(&env.task_type) else {
        let elsewhere = s.view.nodes().iter().any(|n| {
            n.node_id != s.cfg.node_id
                && n.health == Health::Healthy
                && n.queues.contains(&queue)
                && n.handlers().contains(&env.task_type)
        });
        if elsewhere {
            settle(&msg, AckKind::Nak(Some(Duration::from_millis(500)))).await;
        } else {
            let reason = format!(
                "no live node handles task type {:?} on queue {queue:?}",
                env.task_type
            );
            dead_end(
                &s,
                &queue,
                &task_id,
                raw_envelope(&msg.payload),
                &reason,
                attempt,
                TaskStatus::Dead,
                None,
            )
            .await;
            settle(&msg, AckKind::Term).await;
        }
        return;
    };

    // Run the attempt.
    let cancel = CancellationToken::new();
    let reason = Arc::new(std::sync::Mutex::new(None));
    let started_at = now_rfc3339();
    if let Ok(mut r) = s.running.lock() {
        r.insert(
            task_id.clone(),
            Running {
                queue: queue.clone(),
                cancel: cancel.clone(),
                reason: reason.clone(),
                started_at: started_at.clone(),
            },
        );
    }
    s.active.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    // A cancel that arrived between the check above and the registration.
    if s.cancelled
        .lock()
        .map(|c| c.contains(&task_id))
        .unwrap_or(false)
    {
        if let Ok(mut r) = reason.lock() {
            r.get_or_insert(CancelReason::User);
        }
        cancel.cancel();
    }
    let mut ctx = TaskContext::new(task_id.clone(), env.task_type.clone(), attempt).with_runtime(
        &s.cfg.node_id,
        cancel.clone(),
        s.checkpoints.clone(),
    );
    ctx.metadata = env.metadata.clone();
    ctx.shard = shard.clone();
    let t0 = Instant::now();
    let progress_every = (s.cfg.ack_wait / 3).max(Duration::from_millis(200));
    let outcome = {
        // A handler that panics fails its attempt; it never takes the
        // node's bookkeeping (slot, running set) down with it.
        let run = futures::FutureExt::catch_unwind(std::panic::AssertUnwindSafe(handler(
            ctx,
            env.payload.clone(),
        )));
        let run = futures::FutureExt::map(run, |r| {
            r.unwrap_or_else(|_| Err(HandlerError::retry("handler panicked")))
        });
        tokio::pin!(run);
        let deadline = env.timeout();
        let timeout = async {
            match deadline {
                Some(d) => tokio::time::sleep(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::pin!(timeout);
        let mut ticker =
            tokio::time::interval_at(tokio::time::Instant::now() + progress_every, progress_every);
        loop {
            tokio::select! {
                biased;
                r = &mut run => {
                    // A handler that gave up because it was cancelled
                    // reports the cancel, not a failure.
                    if r.is_err() && cancel.is_cancelled() {
                        let why = reason.lock().ok().and_then(|r| *r).unwrap_or(CancelReason::User);
                        break Outcome::Cancelled(why);
                    }
                    break Outcome::Done(r);
                }
                _ = cancel.cancelled() => {
                    let why = reason.lock().ok().and_then(|r| *r).unwrap_or(CancelReason::User);
                    break Outcome::Cancelled(why);
                }
                _ = &mut timeout => {
                    if let Ok(mut r) = reason.lock() { r.get_or_insert(CancelReason::Timeout); }
                    cancel.cancel();
                    break Outcome::TimedOut(deadline.unwrap_or_default());
                }
                _ = ticker.tick() => {
                    let _ = msg.ack_with(AckKind::Progress).await;
                }
            }
        }
    };
    let duration = t0.elapsed().as_secs_f64();
    if let Ok(mut r) = s.running.lock() {
        r.remove(&task_id);
    }
    s.active.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);

    let started = Some(started_at);
    let (status, result, error, retry) = match outcome {
        Outcome::Done(Ok(v)) => (TaskStatus::Completed, v, None, false),
        Outcome::Done(Err(e)) if !e.retryable => {
            (TaskStatus::Failed, Value::Null, Some(e.message), false)
        }
        Outcome::Done(Err(e)) => (TaskStatus::Dead, Value::Null, Some(e.message), true),
        Outcome::TimedOut(d) => (
            TaskStatus::Timeout,
            Value::Null,
            Some(format!("timed out after {:.3} s", d.as_secs_f64())),
            true,
        ),
        Outcome::Cancelled(CancelReason::User) => (
            TaskStatus::Cancelled,
            Value::Null,
            Some("cancelled".into()),
            false,
        ),
        Outcome::Cancelled(CancelReason::Timeout) => (
            TaskStatus::Timeout,
            Value::Null,
            Some("timed out".into()),
            true,
        ),
        Outcome::Cancelled(CancelReason::Shutdown) => {
            // Not the task's fault: back to the queue at once.
            settle(&msg, AckKind::Nak(None)).await;
            return;
        }
    };
    if status != TaskStatus::Completed && status != TaskStatus::Cancelled {
        s.failed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
    if retry && attempt < env.max_attempts() {
        let delay = env.backoff(attempt);
        tracing::debug!(task_id = %task_id, attempt, ?delay, error = ?error, "attempt failed; retrying");
        settle(&msg, AckKind::Nak(Some(delay))).await;
        return;
    }
    if retry {
        let err = error.unwrap_or_default();
        dead_end(
            &s,
            &queue,
            &task_id,
            raw_envelope(&msg.payload),
            &err,
            attempt,
            status,
            started,
        )
        .await;
        settle(&msg, AckKind::Term).await;
        notify_shard_done(&s, shard, task_id).await;
        return;
    }
    if status == TaskStatus::Completed {
        s.completed
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
    match publish_result(
        &s, &task_id, status, result, error, attempt, started, duration,
    )
    .await
    {
        Ok(()) => {
            settle(&msg, AckKind::Ack).await;
            notify_shard_done(&s, shard, task_id).await;
        }
        Err(e) => {
            tracing::warn!(task_id = %task_id, error = %e, "result not stored; task goes back to the queue");
            settle(&msg, AckKind::Nak(Some(Duration::from_secs(1)))).await;
        }
    }
}

/// Tells the coordinator a shard has its terminal result.
async fn notify_shard_done(s: &Shared, shard: Option<ShardInfo>, task_id: String) {
    if let Some(sh) = shard {
        let done = ShardDone {
            task_id,
            run_id: sh.run_id,
            shard_key: sh.shard_key,
            node_id: s.cfg.node_id.clone(),
        };
        let body = json_body(&done);
        let _ = s.client.publish(s.subjects.shard_done(), body).await;
    }
}

type Parsed = (TaskEnvelope, String, Option<ShardInfo>);

/// The envelope, task id and shard of a message, or the id to record and
/// the reason it is rejected.
fn parse_message(
    s: &Shared,
    source: &Source,
    msg: &jetstream::Message,
    seq: u64,
) -> Result<Parsed, (String, String)> {
    if *source == Source::Shards {
        let a: ShardAssignment = parse_object(&msg.payload).map_err(|e| {
            (
                format!("{}-{}", s.subjects.shards_stream(), seq),
                format!("rejected shard message: {}", e.reason()),
            )
        })?;
        let task_id = shard_task_id(&a.run_id, a.iteration, &a.shard_key);
        let env = TaskEnvelope {
            task_type: a.task_type,
            id: Some(task_id.clone()),
            payload: a.payload,
            metadata: a.metadata,
            ..Default::default()
        };
        let shard = ShardInfo {
            run_id: a.run_id,
            iteration: a.iteration,
            shard_key: a.shard_key,
        };
        return Ok((env, task_id, Some(shard)));
    }
    let fallback_id = format!("{}-{}", s.subjects.tasks_stream(), seq);
    let header_id = header(msg, "Nats-Msg-Id");
    let env = parse_object::<TaskEnvelope>(&msg.payload)
        .and_then(|e| e.validate().map(|_| e))
        .map_err(|err| {
            let id = header_id
                .clone()
                .filter(|h| validate_task_id(h).is_ok())
                .unwrap_or_else(|| fallback_id.clone());
            (id, format!("rejected task message: {}", err.reason()))
        })?;
    let task_id = match (&env.id, header_id) {
        (Some(id), _) => id.clone(),
        (None, Some(h)) if validate_task_id(&h).is_ok() => h,
        (None, Some(h)) => {
            return Err((
                fallback_id,
                format!("rejected task message: Nats-Msg-Id {h:?} is not a valid task id"),
            ))
        }
        (None, None) => fallback_id,
    };
    Ok((env, task_id, None))
}

/// Dead-letters a task (copy to `P_DLQ` with the error) and records its
/// terminal result.
#[allow(clippy::too_many_arguments)]
async fn dead_end(
    s: &Shared,
    queue: &str,
    task_id: &str,
    envelope: Value,
    error: &str,
    attempts: u32,
    status: TaskStatus,
    started_at: Option<String>,
) {
    tracing::info!(task_id, queue, error, "task dead-lettered");
    let dl = DeadLetter {
        task_id: Some(task_id.to_string()),
        queue: queue.to_string(),
        envelope,
        error: error.to_string(),
        attempts,
        node_id: s.cfg.node_id.clone(),
        dead_at: now_rfc3339(),
    };
    let body = json_body(&dl);
    match s.js.publish(s.subjects.dlq(queue), body).await {
        Ok(ack) => {
            if let Err(e) = ack.await {
                tracing::error!(error = %e, "dead letter not stored");
            }
        }
        Err(e) => tracing::error!(error = %e, "dead letter not published"),
    }
    let _ = publish_result(
        s,
        task_id,
        status,
        Value::Null,
        Some(error.to_string()),
        attempts,
        started_at,
        0.0,
    )
    .await;
}

/// Stores the terminal result unless the task already has one.
#[allow(clippy::too_many_arguments)]
async fn publish_result(
    s: &Shared,
    task_id: &str,
    status: TaskStatus,
    result: Value,
    error: Option<String>,
    attempts: u32,
    started_at: Option<String>,
    duration_s: f64,
) -> Result<(), Error> {
    let r = TaskResult {
        task_id: task_id.to_string(),
        status,
        result,
        error,
        attempts,
        node_id: Some(s.cfg.node_id.clone()),
        started_at,
        finished_at: now_rfc3339(),
        duration_s,
    };
    store_result(&s.js, &s.subjects, &r).await.map(|_| ())
}

async fn result_exists(s: &Shared, task_id: &str) -> bool {
    s.results
        .direct_get_last_for_subject(s.subjects.result(task_id))
        .await
        .is_ok()
}
