//! One attempt of a task or shard: **admit** (parse the message; skip a
//! cancelled, finished, delayed or over-delivered task; find the handler)
//! → **execute** (the handler, with progress acks, a timeout and cancel)
//! → **classify** (pure: what the outcome means for the task) → **settle**
//! (result, retry NAK, dead letter, or back to the queue).
//!
//! The delivery count is the attempt number. A failed attempt is NAKed
//! with its backoff; the last one is dead-lettered by the node (copy to
//! `P_DLQ`, then `Term`), because `max_deliver` alone would leave the
//! message stuck in a work-queue stream.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::header::{HeaderName, IntoHeaderName};
use async_nats::jetstream::{self, AckKind};
use serde_json::{json, Map, Value};
use tokio::sync::OwnedSemaphorePermit;
use tokio_util::sync::CancellationToken;

use super::dispatch::Source;
use super::limits::{Admission, Taken};
use super::spans::{AttemptSpans, TaskLabels};
use super::task_message::TaskMessage;
use super::{CancelReason, NodeState, Running};
use crate::error::Error;
use crate::handler::{invoke, HandlerError, HandlerFn, ShardInfo, TaskContext};
use crate::store::results::store_result;
use crate::store::tasks::schedule;
use crate::wire::protocol::{
    json_body, now_rfc3339, parse_object, parse_rfc3339, shard_task_id, DeadLetter, Health,
    Priority, ShardAssignment, ShardDone, TaskEnvelope, TaskResult, TaskStatus,
};
use crate::wire::subjects::validate_task_id;
use crate::wire::trace::{TraceParent, TRACEPARENT};

/// A delivered message that passed admission.
struct Delivery {
    queue: String,
    /// Handler attempts that failed before, plus this one.
    attempt: u32,
    /// Deliveries of this message (attempts plus lost leases).
    deliveries: u32,
    env: TaskEnvelope,
    task_id: String,
    shard: Option<ShardInfo>,
    msg: TaskMessage,
}

/// How an attempt ended.
#[derive(Debug)]
pub(super) enum Outcome {
    Done(Result<Value, HandlerError>),
    Cancelled(CancelReason),
    TimedOut(Duration),
}

/// What an outcome means for the task.
#[derive(Debug, PartialEq)]
pub(super) enum Verdict {
    /// Not the task's fault (the node is stopping): back to the queue now.
    Return,
    /// The lease is gone and another delivery owns the task: settle
    /// nothing (a NAK from a stale delivery must not disturb the live one).
    Abandon,
    /// A failed attempt with attempts left (its error): NAK after its backoff.
    Retry(String),
    /// The terminal result; `dead` ones also get a DLQ copy.
    Final {
        status: TaskStatus,
        result: Value,
        error: Option<String>,
        dead: bool,
    },
}

/// Runs one delivery of a task or shard message.
pub(super) async fn run_task(
    s: Arc<NodeState>,
    source: Source,
    msg: TaskMessage,
    slot: OwnedSemaphorePermit,
) {
    // The stages are boxed: a spawned future is moved several times on its
    // way into the runtime, and one state machine holding all of them was
    // 9 KiB (perf: memmove was 13 % of the node's CPU under load).
    let Some((mut d, handler, taken)) = Box::pin(admit(&s, &source, msg)).await else {
        return;
    };
    let started_at = now_rfc3339();
    let mut spans = attempt_spans(&s, &d);
    let t0 = Instant::now();
    let traceparent = spans.handler_traceparent();
    // The handler owns its input: nothing after it reads the payload or
    // metadata (a DLQ copy keeps the message's own bytes), so they move
    // instead of being copied per attempt.
    let input = HandlerInput {
        payload: std::mem::take(&mut d.env.payload),
        metadata: std::mem::take(&mut d.env.metadata),
        traceparent,
    };
    let outcome = Box::pin(execute(&s, &d, handler, &started_at, input)).await;
    let duration = t0.elapsed().as_secs_f64();
    spans.handler_ended(outcome_error(&outcome).as_deref());
    // The limits count running handlers: the slots go back now, and so
    // does the node's slot once the attempt may conclude (see
    // `NodeState::concluding`).
    s.limits.give_back(taken).await;
    let _concluding = place_to_conclude(&s, &d.msg).await;
    drop(slot);
    let verdict = classify(outcome, d.attempt, d.env.max_attempts());
    let failed_attempt = match &verdict {
        Verdict::Retry(_) => true,
        Verdict::Final { status, .. } => {
            !matches!(status, TaskStatus::Completed | TaskStatus::Cancelled)
        }
        Verdict::Return | Verdict::Abandon => false,
    };
    if failed_attempt {
        s.failed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
    let (label, error) = verdict_label(&verdict);
    Box::pin(conclude(&s, d, verdict, Some(started_at), duration)).await;
    spans.ended(label, error.as_deref());
}

/// A place among the attempts that conclude (`NodeState::concluding`).
/// They may all be waiting out a results stream outage: the lease is
/// renewed meanwhile, so that the task is not handed to another node
/// while its handler's outcome waits here.
async fn place_to_conclude(s: &NodeState, msg: &TaskMessage) -> Option<OwnedSemaphorePermit> {
    if let Ok(p) = s.concluding.clone().try_acquire_owned() {
        return Some(p);
    }
    let every = (s.cfg.ack_wait / 4).max(Duration::from_millis(150));
    let place = s.concluding.clone().acquire_owned();
    tokio::pin!(place);
    loop {
        tokio::select! {
            p = &mut place => return p.ok(),
            _ = tokio::time::sleep(every) => {
                let _ = msg.ack_with(AckKind::Progress).await;
            }
        }
    }
}

/// The attempt's spans, in the trace the task carries.
fn attempt_spans(s: &NodeState, d: &Delivery) -> AttemptSpans {
    let header = header(&d.msg, TRACEPARENT_HEADER);
    let incoming = TraceParent::of_task(header.as_deref(), &d.env.metadata);
    let labels = TaskLabels {
        task_id: &d.task_id,
        task_type: &d.env.task_type,
        queue: &d.queue,
        attempt: d.attempt,
        node_id: &s.cfg.node_id,
    };
    AttemptSpans::start(s.cfg.traces, incoming, &labels)
}

/// The error of an attempt that did not succeed (for its span).
fn outcome_error(o: &Outcome) -> Option<String> {
    match o {
        Outcome::Done(Ok(_)) => None,
        Outcome::Done(Err(e)) => Some(e.message.clone()),
        Outcome::Cancelled(r) => Some(format!("cancelled ({r:?})")),
        Outcome::TimedOut(d) => Some(format!("timed out after {:.3} s", d.as_secs_f64())),
    }
}

/// What a verdict is called on the attempt's span, and its error.
fn verdict_label(v: &Verdict) -> (&'static str, Option<String>) {
    match v {
        Verdict::Return => ("returned", None),
        Verdict::Abandon => ("abandoned", None),
        Verdict::Retry(e) => ("retry", Some(e.clone())),
        Verdict::Final { status, error, .. } => (status.as_str(), error.clone()),
    }
}

/// What an outcome means, given the attempt number (pure).
pub(super) fn classify(outcome: Outcome, attempt: u32, max_attempts: u32) -> Verdict {
    let last = attempt >= max_attempts;
    let fail = |status, error: String| {
        if last {
            Verdict::Final {
                status,
                result: Value::Null,
                error: Some(error),
                dead: true,
            }
        } else {
            Verdict::Retry(error)
        }
    };
    match outcome {
        Outcome::Done(Ok(v)) => Verdict::Final {
            status: TaskStatus::Completed,
            result: v,
            error: None,
            dead: false,
        },
        Outcome::Done(Err(e)) if !e.retryable => Verdict::Final {
            status: TaskStatus::Failed,
            result: Value::Null,
            error: Some(e.message),
            dead: false,
        },
        Outcome::Done(Err(e)) => fail(TaskStatus::Dead, e.message),
        Outcome::TimedOut(d) => fail(
            TaskStatus::Timeout,
            format!("timed out after {:.3} s", d.as_secs_f64()),
        ),
        Outcome::Cancelled(CancelReason::Timeout) => fail(TaskStatus::Timeout, "timed out".into()),
        Outcome::Cancelled(CancelReason::User) => Verdict::Final {
            status: TaskStatus::Cancelled,
            result: Value::Null,
            error: Some("cancelled".into()),
            dead: false,
        },
        Outcome::Cancelled(CancelReason::Shutdown) => Verdict::Return,
        Outcome::Cancelled(CancelReason::LeaseLost) => Verdict::Abandon,
    }
}

/// Settles the message as the verdict says.
async fn conclude(
    s: &NodeState,
    d: Delivery,
    verdict: Verdict,
    started: Option<String>,
    duration: f64,
) {
    let (status, result, error, dead) = match verdict {
        Verdict::Return => return settle(&d.msg, AckKind::Nak(None)).await,
        Verdict::Abandon => return,
        Verdict::Retry(error) => {
            count_failed(s, &d, false).await;
            let delay = d.env.backoff(d.attempt);
            let details = json!({"task_id": d.task_id, "queue": d.queue, "type": d.env.task_type,
                "attempt": d.attempt, "error": error, "retry_in_s": delay.as_secs_f64()});
            s.audit_once(
                "task.failed",
                details,
                &format!("{}:{}", d.task_id, d.attempt),
            )
            .await;
            tracing::debug!(task_id = %d.task_id, attempt = d.attempt, ?delay, "attempt failed; retrying");
            return settle(&d.msg, AckKind::Nak(Some(delay))).await;
        }
        Verdict::Final {
            status,
            result,
            error,
            dead,
        } => (status, result, error, dead),
    };
    count_failed(s, &d, true).await;
    if dead {
        let err = error.unwrap_or_default();
        let buried = dead_end(s, &d, &err, d.attempt, status, started).await;
        term_or_return(&d.msg, buried).await;
        return notify_shard_done(s, d.shard, d.task_id).await;
    }
    if status == TaskStatus::Completed {
        s.completed
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if d.env.ignore_result {
            // Fire and forget: no result to store, the ack ends it.
            settle(&d.msg, AckKind::Ack).await;
            return notify_shard_done(s, d.shard, d.task_id).await;
        }
    }
    let r = task_result(s, &d, status, result, error, d.attempt, started, duration);
    match store_durably(s, &d.msg, &r).await {
        Ok(_) => {
            settle(&d.msg, AckKind::Ack).await;
            notify_shard_done(s, d.shard, d.task_id).await;
        }
        Err(e) => {
            tracing::warn!(task_id = %d.task_id, error = %e, "result not stored; task goes back to the queue");
            settle(&d.msg, AckKind::Nak(Some(Duration::from_secs(1)))).await;
        }
    }
}

/// How long a finished attempt keeps trying to store its result (a stream
/// leader election takes seconds) before the task goes back to the queue.
const STORE_PATIENCE: Duration = Duration::from_secs(30);

/// Runs `f` until it succeeds, retrying with backoff for up to
/// `STORE_PATIENCE` across a brief outage of a stream (a server failover)
/// and keeping the message's lease with progress acks meanwhile: an
/// outage is not the task's fault and must not use one of its attempts.
async fn durably<T, F, Fut>(msg: &TaskMessage, what: &str, mut f: F) -> Result<T, Error>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, Error>>,
{
    let deadline = Instant::now() + STORE_PATIENCE;
    let mut delay = Duration::from_millis(100);
    loop {
        match f().await {
            Ok(v) => return Ok(v),
            Err(e) if Instant::now() + delay < deadline => {
                tracing::warn!(error = %e, ?delay, "{what} not stored yet; retrying");
                let _ = msg.ack_with(AckKind::Progress).await;
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(2));
            }
            Err(e) => return Err(e),
        }
    }
}

/// Stores the terminal result durably (see [`durably`]).
async fn store_durably(s: &NodeState, msg: &TaskMessage, r: &TaskResult) -> Result<bool, Error> {
    durably(msg, "result", || store_result(&s.js, &s.subjects, r)).await
}

/// Parses the message and decides whether it runs here now. Every
/// message that does not run is settled here.
async fn admit(
    s: &NodeState,
    source: &Source,
    msg: TaskMessage,
) -> Option<(Delivery, HandlerFn, Taken)> {
    let Some(info) = msg.info() else {
        settle(&msg, AckKind::Term).await;
        return None;
    };
    let (deliveries, seq) = (info.delivered.max(1) as u32, info.stream_sequence);
    let queue = source.label().to_string();
    let (env, task_id, shard) = match parse_message(s, source, &msg, seq) {
        Ok(v) => v,
        Err((id, reason)) => {
            let d = Delivery {
                queue,
                attempt: 1,
                deliveries,
                env: TaskEnvelope::default(),
                task_id: id,
                shard: None,
                msg,
            };
            let buried = dead_end(s, &d, &reason, 1, TaskStatus::Dead, None).await;
            term_or_return(&d.msg, buried).await;
            return None;
        }
    };
    // Only failed attempts are counted (in `P-attempts`); a redelivery
    // after a lost lease is not an attempt. The first delivery reads
    // nothing.
    let failed = if deliveries > 1 {
        failed_attempts(s, &task_id).await
    } else {
        0
    };
    let d = Delivery {
        queue,
        attempt: failed + 1,
        deliveries,
        env,
        task_id,
        shard,
        msg,
    };
    report_redelivery(s, &d).await;
    if skip_cancelled(s, &d).await || skip_finished(s, &d).await || defer_delayed(s, &d).await {
        return None;
    }
    if let Some(reason) = over_the_limit(&d) {
        let buried = dead_end(s, &d, &reason, failed, TaskStatus::Dead, None).await;
        term_or_return(&d.msg, buried).await;
        return None;
    }
    let Some(h) = s.handlers.get(&d.env.task_type) else {
        no_handler(s, &d).await;
        return None;
    };
    if d.shard.is_some() {
        return Some((d, h, Taken::default()));
    }
    let key = d.env.limit_key.as_deref();
    match s
        .limits
        .admit(&d.queue, &d.env.task_type, key, &d.task_id)
        .await
    {
        Admission::Go(taken) => Some((d, h, taken)),
        Admission::Wait { limit_id, wait } => {
            hold_back(s, &d, &limit_id, wait).await;
            None
        }
    }
}

/// Deliveries of one message a limit may hold back with a NAK before the
/// task is re-published as a new message: a NAK counts as a delivery, and
/// deliveries are bounded (see [`max_deliveries`]), so waiting on a limit
/// must not use them up; and a NAKed message stays pending on its consumer,
/// so a long throttled backlog is moved out of the way.
const NAKS_PER_HOLD: u32 = 2;

/// A task a limit holds back goes back to its queue without using an
/// attempt: NAKed with a short delay at first, then re-published as a
/// message schedule that fires after `wait` (a fresh message, at the tail
/// of its queue, so it holds back nothing behind it).
async fn hold_back(s: &NodeState, d: &Delivery, limit_id: &str, wait: Duration) {
    tracing::debug!(task_id = %d.task_id, limit_id, ?wait, "held back by a limit");
    if d.deliveries <= NAKS_PER_HOLD {
        return settle(&d.msg, AckKind::Nak(Some(wait))).await;
    }
    let mut env = d.env.clone();
    env.id = Some(d.task_id.clone());
    let at = time::OffsetDateTime::now_utc() + wait;
    env.not_before = Some(crate::wire::protocol::format_rfc3339(at));
    match schedule(&s.js, &s.subjects, &d.queue, priority_of(&d.msg), &env).await {
        Ok(()) => settle(&d.msg, AckKind::Ack).await,
        Err(e) => {
            tracing::warn!(error = %e, "cannot re-queue a held-back task; NAK instead");
            settle(&d.msg, AckKind::Nak(Some(wait))).await
        }
    }
}

fn priority_of(msg: &TaskMessage) -> Priority {
    msg.subject
        .rsplit('.')
        .next()
        .and_then(|p| p.parse::<Priority>().ok())
        .unwrap_or_default()
}

/// Audits a delivery that is not the first and not a retry of a failed
/// attempt: the task's lease expired (its node died, paused or was cut
/// off) or its node stopped and handed it back. Tasks a limit may have
/// held back (a NAK is a delivery too) are not reported: that would be a
/// write per hold-back.
async fn report_redelivery(s: &NodeState, d: &Delivery) {
    if d.deliveries <= d.attempt || d.shard.is_some() {
        return;
    }
    if s.limits.applies_to(&d.queue, &d.env.task_type) {
        return;
    }
    let details = json!({"task_id": d.task_id, "queue": d.queue, "type": d.env.task_type,
        "deliveries": d.deliveries, "failed_attempts": d.attempt - 1});
    let once = format!("{}:{}", d.task_id, d.deliveries);
    s.audit_once("task.redelivered", details, &once).await;
}

/// Deliveries allowed per task: attempts plus lost leases. A task whose
/// nodes keep dying under it (a poison task) still ends in the DLQ.
pub(super) fn max_deliveries(max_attempts: u32) -> u32 {
    (max_attempts * 3).max(10)
}

/// Why a delivery is not run at all: its attempts are used up, or it was
/// delivered too often (its nodes died or lost their leases).
fn over_the_limit(d: &Delivery) -> Option<String> {
    let max = d.env.max_attempts();
    if d.attempt > max {
        return Some(format!(
            "{} attempts failed, max_attempts {max}",
            d.attempt - 1
        ));
    }
    let limit = max_deliveries(max);
    (d.deliveries > limit).then(|| {
        format!(
            "delivered {} times, more than the {limit} allowed (its nodes died or lost their leases)",
            d.deliveries
        )
    })
}

/// Failed attempts of a task so far (0 when unknown or unreadable).
async fn failed_attempts(s: &NodeState, task_id: &str) -> u32 {
    let key = crate::wire::ids::encode_key(task_id);
    match s.attempts.get(&key).await {
        Ok(Some(v)) => std::str::from_utf8(&v)
            .ok()
            .and_then(|t| t.parse().ok())
            .unwrap_or(0),
        _ => 0,
    }
}

/// Records a failed attempt (before the retry NAK); forgets the count once
/// the task has ended. Best effort: a lost write is bounded by
/// [`max_deliveries`].
async fn count_failed(s: &NodeState, d: &Delivery, ended: bool) {
    if ended && d.attempt <= 1 {
        return; // nothing was counted
    }
    let key = crate::wire::ids::encode_key(&d.task_id);
    if ended {
        let _ = s.attempts.delete(&key).await;
    } else if let Err(e) = s.attempts.put(&key, d.attempt.to_string().into()).await {
        tracing::warn!(task_id = %d.task_id, error = %e, "failed attempt not counted");
    }
}

/// A task cancelled before it started ends `cancelled` without running.
async fn skip_cancelled(s: &NodeState, d: &Delivery) -> bool {
    if !is_cancelled(s, &d.task_id) {
        return false;
    }
    let r = task_result(
        s,
        d,
        TaskStatus::Cancelled,
        Value::Null,
        Some("cancelled before it started".into()),
        d.attempt.saturating_sub(1),
        None,
        0.0,
    );
    let _ = store_result(&s.js, &s.subjects, &r).await;
    settle(&d.msg, AckKind::Ack).await;
    true
}

/// An earlier attempt finished but its ack was lost: just ack.
async fn skip_finished(s: &NodeState, d: &Delivery) -> bool {
    let done = d.deliveries > 1
        && s.results
            .direct_get_last_for_subject(s.subjects.result(&d.task_id))
            .await
            .is_ok();
    if done {
        settle(&d.msg, AckKind::Ack).await;
    }
    done
}

/// A task published with a future `not_before` becomes a message
/// schedule (not an attempt).
async fn defer_delayed(s: &NodeState, d: &Delivery) -> bool {
    let Some(Ok(t)) = d.env.not_before.as_deref().map(parse_rfc3339) else {
        return false;
    };
    let wait = t - time::OffsetDateTime::now_utc();
    if wait <= time::Duration::milliseconds(5) {
        return false;
    }
    let priority = priority_of(&d.msg);
    let mut env = d.env.clone();
    env.id = Some(d.task_id.clone());
    match schedule(&s.js, &s.subjects, &d.queue, priority, &env).await {
        Ok(()) => settle(&d.msg, AckKind::Ack).await,
        Err(e) => {
            tracing::warn!(error = %e, "cannot schedule delayed task; holding it with a NAK");
            let wait = Duration::try_from(wait).unwrap_or(Duration::from_secs(1));
            settle(&d.msg, AckKind::Nak(Some(wait))).await;
        }
    }
    true
}

/// No handler here: leave it to a live node that has one, or dead-letter
/// (never on a failed read of discovery: that task is held back too).
async fn no_handler(s: &NodeState, d: &Delivery) {
    let elsewhere = s.peers.nodes().await.is_none_or(|nodes| {
        nodes.iter().any(|n| {
            n.node_id != s.cfg.node_id
                && n.health == Health::Healthy
                && n.queues.contains(&d.queue)
                && n.may_handle(&d.env.task_type)
        })
    });
    if elsewhere {
        return settle(&d.msg, AckKind::Nak(Some(Duration::from_millis(500)))).await;
    }
    let reason = format!(
        "no live node handles task type {:?} on queue {:?}",
        d.env.task_type, d.queue
    );
    let buried = dead_end(s, d, &reason, d.attempt, TaskStatus::Dead, None).await;
    term_or_return(&d.msg, buried).await;
}

fn is_cancelled(s: &NodeState, task_id: &str) -> bool {
    s.cancelled
        .lock()
        .expect("cancelled set poisoned")
        .contains(task_id)
}

/// The node's record of a running task: registered on creation, removed
/// (with the active count) on drop, whatever way the attempt ends.
struct RunningGuard<'a> {
    s: &'a NodeState,
    task_id: &'a str,
    reason: Arc<Mutex<Option<CancelReason>>>,
}

impl<'a> RunningGuard<'a> {
    fn register(
        s: &'a NodeState,
        d: &'a Delivery,
        cancel: &CancellationToken,
        reason: &Arc<Mutex<Option<CancelReason>>>,
        started_at: &str,
    ) -> Self {
        let old = s.running.lock().expect("running set poisoned").insert(
            d.task_id.clone(),
            Running {
                queue: d.queue.clone(),
                cancel: cancel.clone(),
                reason: reason.clone(),
                started_at: started_at.to_string(),
            },
        );
        // The server redelivered a task this node still runs (its lease
        // lapsed while the node was paused or cut off): this delivery owns
        // it now, so the old attempt stops. One copy per node, ever.
        if let Some(old) = old {
            tracing::warn!(task_id = %d.task_id, "redelivered while running here; the stale attempt stops");
            old.reason
                .lock()
                .expect("cancel reason poisoned")
                .get_or_insert(CancelReason::LeaseLost);
            old.cancel.cancel();
        }
        s.active.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        RunningGuard {
            s,
            task_id: &d.task_id,
            reason: reason.clone(),
        }
    }
}

impl Drop for RunningGuard<'_> {
    fn drop(&mut self) {
        if let Ok(mut r) = self.s.running.lock() {
            // Only our own entry: a newer delivery may have replaced it.
            if r.get(self.task_id)
                .is_some_and(|e| Arc::ptr_eq(&e.reason, &self.reason))
            {
                r.remove(self.task_id);
            }
        }
        self.s
            .active
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Runs the handler under the attempt's timeout and cancel token, renewing
/// its lease with progress acks every `ack_wait / 4` (see [`Lease`]).
async fn execute(
    s: &NodeState,
    d: &Delivery,
    handler: HandlerFn,
    started_at: &str,
    input: HandlerInput,
) -> Outcome {
    let cancel = CancellationToken::new();
    let reason = Arc::new(Mutex::new(None));
    let _running = RunningGuard::register(s, d, &cancel, &reason, started_at);
    // A cancel that arrived between admission and the registration.
    if is_cancelled(s, &d.task_id) {
        reason
            .lock()
            .expect("cancel reason poisoned")
            .get_or_insert(CancelReason::User);
        cancel.cancel();
    }
    let (extend_tx, mut extend_rx) = tokio::sync::mpsc::unbounded_channel();
    let (ctx, payload) = handler_context(s, d, &cancel, extend_tx, input);
    // A handler that panics fails its attempt; it never takes the node's
    // bookkeeping (slot, running set) down with it.
    let run = invoke(handler, ctx, payload);
    tokio::pin!(run);
    // The task's own bound, else the node's default (`--task-timeout`;
    // not for run shards, which checkpoint and may run long).
    let default = s.cfg.task_timeout.filter(|_| d.shard.is_none());
    let deadline = d.env.timeout().or(default);
    let started = tokio::time::Instant::now();
    // No bound: a deadline so far away it never comes.
    let end = deadline.map_or(Duration::from_secs(100 * 365 * 86_400), |t| t);
    let timeout = tokio::time::sleep_until(started + end);
    tokio::pin!(timeout);
    let every = (s.cfg.ack_wait / 4).max(Duration::from_millis(150));
    let ticker = tokio::time::sleep(every); // (an `Interval` boxes its timer)
    tokio::pin!(ticker);
    let mut lease = Lease::new(s.cfg.ack_wait);
    let why = || {
        reason
            .lock()
            .expect("cancel reason poisoned")
            .unwrap_or(CancelReason::User)
    };
    loop {
        tokio::select! {
            biased;
            r = &mut run => {
                // A handler that gave up because it was cancelled reports
                // the cancel, not a failure.
                if r.is_err() && cancel.is_cancelled() {
                    return Outcome::Cancelled(why());
                }
                return Outcome::Done(r);
            }
            _ = cancel.cancelled() => return Outcome::Cancelled(why()),
            _ = &mut timeout => {
                reason.lock().expect("cancel reason poisoned").get_or_insert(CancelReason::Timeout);
                cancel.cancel();
                return Outcome::TimedOut(timeout.deadline() - started);
            }
            Some(by) = extend_rx.recv() => {
                // The handler needs longer: push a bounded attempt's end.
                let until = tokio::time::Instant::now() + by;
                if deadline.is_some() && until > timeout.deadline() {
                    timeout.as_mut().reset(until);
                }
            }
            _ = &mut ticker => {
                ticker.as_mut().reset(tokio::time::Instant::now() + every);
                if lease.lost() {
                    tracing::warn!(task_id = %d.task_id, "lease lost (paused or cut off from NATS); the attempt stops");
                    reason.lock().expect("cancel reason poisoned").get_or_insert(CancelReason::LeaseLost);
                    cancel.cancel();
                    return Outcome::Cancelled(why());
                }
                lease.renew(s, &d.msg, every).await;
            }
        }
    }
}

/// What the handler of this attempt is told.
fn handler_context(
    s: &NodeState,
    d: &Delivery,
    cancel: &CancellationToken,
    extend: tokio::sync::mpsc::UnboundedSender<Duration>,
    input: HandlerInput,
) -> (TaskContext, Value) {
    let mut ctx = TaskContext::new(d.task_id.clone(), d.env.task_type.clone(), d.attempt)
        .with_runtime(&s.cfg.node_id, cancel.clone(), s.checkpoints.clone())
        .with_extend(extend);
    ctx.metadata = input.metadata;
    ctx.shard = d.shard.clone();
    ctx.traceparent = input.traceparent;
    (ctx, input.payload)
}

/// What an attempt hands its handler, taken out of the delivery.
struct HandlerInput {
    payload: Value,
    metadata: Map<String, Value>,
    traceparent: Option<String>,
}

/// What a running attempt knows of its lease: when the server last
/// confirmed a progress ack. Renewals go every `ack_wait / 4` as requests,
/// which the server answers. Two renewals in a row unconfirmed (more than
/// `ack_wait / 2` since the last confirmation: the node was paused, or NATS
/// is cut off) and the attempt stops at the next tick, at most
/// `3/4 ack_wait` after the last renewal the server saw — before the server
/// hands the task to another node at `ack_wait` — so that one task does not
/// run on two nodes at once.
struct Lease {
    confirmed: Instant,
    ack_wait: Duration,
}

impl Lease {
    fn new(ack_wait: Duration) -> Self {
        Lease {
            confirmed: Instant::now(),
            ack_wait,
        }
    }

    fn lost(&self) -> bool {
        self.confirmed.elapsed() > self.ack_wait / 2
    }

    /// Sends a progress ack and waits up to `within` for the server.
    async fn renew(&mut self, s: &NodeState, msg: &TaskMessage, within: Duration) {
        let Some(reply) = msg.reply.clone() else {
            return;
        };
        let ack = s.client.request(reply, "+WPI".into());
        if let Ok(Ok(_)) = tokio::time::timeout(within, ack).await {
            self.confirmed = Instant::now();
        }
    }
}

/// The `traceparent` header's name, built once (a name given as a `&str`
/// is copied for every lookup).
const TRACEPARENT_HEADER: HeaderName = HeaderName::from_static(TRACEPARENT);

fn header(msg: &TaskMessage, name: impl IntoHeaderName) -> Option<String> {
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

/// Removes a dead-lettered message, or (when its dead letter or result
/// could not be stored) hands it back to try again later.
async fn term_or_return(msg: &TaskMessage, buried: bool) {
    let kind = if buried {
        AckKind::Term
    } else {
        AckKind::Nak(Some(Duration::from_secs(1)))
    };
    settle(msg, kind).await
}

async fn settle(msg: &TaskMessage, kind: AckKind) {
    if let Err(e) = msg.ack_with(kind).await {
        tracing::warn!(error = %e, "ack failed (the task will be redelivered)");
    }
}

/// Tells the coordinator a shard has its terminal result.
async fn notify_shard_done(s: &NodeState, shard: Option<ShardInfo>, task_id: String) {
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
    s: &NodeState,
    source: &Source,
    msg: &TaskMessage,
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
    // Only for a message that has no id of its own (rare: not built per task).
    let fallback_id = || format!("{}-{}", s.subjects.tasks_stream(), seq);
    let header_id = header(msg, async_nats::header::NATS_MESSAGE_ID);
    let env = parse_object::<TaskEnvelope>(&msg.payload)
        .and_then(|e| e.validate().map(|_| e))
        .map_err(|err| {
            let id = header_id
                .clone()
                .filter(|h| validate_task_id(h).is_ok())
                .unwrap_or_else(fallback_id);
            (id, format!("rejected task message: {}", err.reason()))
        })?;
    let task_id = match (&env.id, header_id) {
        (Some(id), _) => id.clone(),
        (None, Some(h)) if validate_task_id(&h).is_ok() => h,
        (None, Some(h)) => {
            return Err((
                fallback_id(),
                format!("rejected task message: Nats-Msg-Id {h:?} is not a valid task id"),
            ))
        }
        (None, None) => fallback_id(),
    };
    Ok((env, task_id, None))
}

/// Dead-letters a task (copy to `P_DLQ` with the error, the envelope as it
/// arrived) and records its terminal result; false if either could not be
/// stored (the caller hands the task back instead of dropping it).
async fn dead_end(
    s: &NodeState,
    d: &Delivery,
    error: &str,
    attempts: u32,
    status: TaskStatus,
    started_at: Option<String>,
) -> bool {
    let (task_id, queue) = (d.task_id.as_str(), d.queue.as_str());
    tracing::info!(task_id, queue, error, "task dead-lettered");
    let dl = DeadLetter {
        task_id: Some(task_id.to_string()),
        queue: queue.to_string(),
        envelope: raw_envelope(&d.msg.payload),
        error: error.to_string(),
        attempts,
        node_id: s.cfg.node_id.clone(),
        dead_at: now_rfc3339(),
        priority: d
            .msg
            .subject
            .rsplit('.')
            .next()
            .and_then(|p| p.parse().ok()),
    };
    // A retried dead-lettering (after a NAK) must not file it twice.
    let msg_id = format!("dlq-{task_id}-{attempts}");
    let body = json_body(&dl);
    let stored = durably(&d.msg, "dead letter", || async {
        let m = jetstream::message::PublishMessage::build()
            .payload(body.clone())
            .message_id(msg_id.as_str());
        s.js.send_publish(s.subjects.dlq(queue), m)
            .await
            .map_err(Error::nats_source)?
            .await
            .map_err(Error::nats_source)
    })
    .await;
    if let Err(e) = stored {
        tracing::error!(task_id, error = %e, "dead letter not stored; the task goes back to the queue");
        return false;
    }
    let r = task_result(
        s,
        d,
        status,
        Value::Null,
        Some(error.to_string()),
        attempts,
        started_at,
        0.0,
    );
    let stored = store_durably(s, &d.msg, &r).await.is_ok();
    if stored {
        let details = json!({"task_id": task_id, "queue": queue, "type": d.env.task_type,
            "attempts": attempts, "status": status, "error": error});
        s.audit_once("task.dead", details, task_id).await;
    }
    stored
}

/// A terminal result written by this node. Deliveries beyond the
/// attempts made are the leases this task lost.
#[allow(clippy::too_many_arguments)]
fn task_result(
    s: &NodeState,
    d: &Delivery,
    status: TaskStatus,
    result: Value,
    error: Option<String>,
    attempts: u32,
    started_at: Option<String>,
    duration_s: f64,
) -> TaskResult {
    TaskResult {
        task_id: d.task_id.clone(),
        status,
        result,
        error,
        attempts,
        node_id: Some(s.cfg.node_id.clone()),
        started_at,
        finished_at: now_rfc3339(),
        duration_s,
        lost_leases: d.deliveries.saturating_sub(d.attempt),
        queue: Some(d.queue.clone()),
        task_type: Some(d.env.task_type.clone()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn done(v: Result<Value, HandlerError>) -> Outcome {
        Outcome::Done(v)
    }

    #[test]
    fn classify_says_what_an_outcome_means() {
        let completed = classify(done(Ok(Value::from(1))), 1, 3);
        assert_eq!(
            completed,
            Verdict::Final {
                status: TaskStatus::Completed,
                result: Value::from(1),
                error: None,
                dead: false
            }
        );
        // A fatal error fails at once, whatever the attempts left.
        let v = classify(done(Err(HandlerError::fatal("bad input"))), 1, 3);
        assert!(
            matches!(
                v,
                Verdict::Final {
                    status: TaskStatus::Failed,
                    dead: false,
                    ..
                }
            ),
            "{v:?}"
        );
        // A retryable error retries until the last attempt, then is dead.
        assert_eq!(
            classify(done(Err(HandlerError::retry("x"))), 2, 3),
            Verdict::Retry("x".into())
        );
        let v = classify(done(Err(HandlerError::retry("x"))), 3, 3);
        assert_eq!(
            v,
            Verdict::Final {
                status: TaskStatus::Dead,
                result: Value::Null,
                error: Some("x".into()),
                dead: true
            }
        );
        // A timeout is a failure: retried, and `timeout` when it was the last.
        assert_eq!(
            classify(Outcome::TimedOut(Duration::from_secs(1)), 1, 2),
            Verdict::Retry("timed out after 1.000 s".into())
        );
        let v = classify(Outcome::TimedOut(Duration::from_millis(1500)), 2, 2);
        assert!(
            matches!(&v, Verdict::Final { status: TaskStatus::Timeout, dead: true, error: Some(e), .. } if e == "timed out after 1.500 s"),
            "{v:?}"
        );
        assert_eq!(
            classify(Outcome::Cancelled(CancelReason::Timeout), 1, 3),
            Verdict::Retry("timed out".into())
        );
        // A user's cancel is final; a shutdown is not the task's fault.
        let v = classify(Outcome::Cancelled(CancelReason::User), 1, 3);
        assert!(
            matches!(
                v,
                Verdict::Final {
                    status: TaskStatus::Cancelled,
                    dead: false,
                    ..
                }
            ),
            "{v:?}"
        );
        assert_eq!(
            classify(Outcome::Cancelled(CancelReason::Shutdown), 3, 3),
            Verdict::Return
        );
    }
}
