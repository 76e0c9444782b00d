//! Pull requests that wait at the server while a dispatcher is idle.
//!
//! An idle dispatcher keeps one pull request (one message, [`long_poll`]
//! long, idle heartbeats) waiting on each of its consumers, so a task
//! published, retried or redelivered goes straight to the node: no
//! doorbell, no fetch round trip, and no polling (an idle node asks the
//! server once per consumer per [`long_poll`], 3.5 s by default). Each
//! waiting request is a task of its own; when its message comes it takes
//! a free slot (waiting up to [`SLOT_WAIT`] for one) and runs it — or,
//! when the node has no free slot, drains or stops, hands the message
//! straight back (a NAK without delay) so it is never held without a
//! slot — and then wakes the dispatcher to look for more.
//!
//! A request is lost with its server: async-nats notices only when its
//! expiry has long passed, so a reconnection of the client ends it at
//! once (and the dispatcher asks again). A deleted consumer answers the
//! request with an error: the dispatcher re-creates its consumers.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{consumer, AckKind};
use futures::StreamExt;
use tokio::sync::Notify;

use super::attempt::run_task;
use super::dispatch::Source;
use super::NodeState;
use crate::wire::protocol::Health;

/// How long a waiting pull request on a task queue stays at the server:
/// `0.7 × ack_wait`, within 0.5..30 s (3.5 s with the default `ack_wait`
/// of 5 s). A paused node's waiting requests still take messages until
/// they expire; the paused node's own tasks come back to the queue
/// `3/4 ack_wait` after the pause at the earliest (its last progress ack
/// was at most `ack_wait / 4` before it), by when its requests have
/// expired, so those tasks go to a live node.
pub(super) fn long_poll(ack_wait: Duration, source: &Source) -> Duration {
    match source {
        // Only this node's assignments arrive there; a paused node's
        // shards are moved by the coordinator (to other subjects).
        Source::Shards => SHARDS_LONG_POLL,
        Source::Queue(_) => {
            let e = ack_wait.mul_f64(0.7);
            e.clamp(Duration::from_millis(500), Duration::from_secs(30))
        }
    }
}

/// How long a waiting request for this node's shard assignments stays.
const SHARDS_LONG_POLL: Duration = Duration::from_secs(30);

/// How often a waiting request checks whether its client reconnected.
const RECONNECT_CHECK: Duration = Duration::from_millis(200);

/// What a dispatcher shares with its waiting requests.
#[derive(Clone)]
pub(super) struct Waiting {
    /// A request is waiting on the consumer.
    pub waiting: Arc<AtomicBool>,
    /// A message came (or a request ended): look for more.
    pub arrived: Arc<Notify>,
    /// A request failed: re-create the consumers.
    pub reopen: Arc<AtomicBool>,
}

/// What ended one waiting request.
enum Ended {
    Message(Box<async_nats::jetstream::Message>),
    Expired,
    Lost,
    Failed,
    Shutdown,
}

/// Keeps a request waiting on `c` until a message comes or the node can
/// take none (busy, draining, stopping), asking again when one expires.
pub(super) async fn wait_on(
    s: Arc<NodeState>,
    source: Source,
    c: consumer::PullConsumer,
    w: Waiting,
) {
    let expires = long_poll(s.cfg.ack_wait, &source);
    loop {
        let asked = std::time::Instant::now();
        match one_request(&s, &source, &c).await {
            Ended::Message(msg) => {
                take(&s, &source, *msg).await;
                break;
            }
            Ended::Expired if can_take(&s) => {
                // A request the server ended long before its expiry must
                // not turn this into a busy loop.
                if asked.elapsed() < expires / 2 {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                continue;
            }
            Ended::Failed => {
                w.reopen.store(true, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(200)).await;
                break;
            }
            Ended::Shutdown => {
                w.waiting.store(false, Ordering::Relaxed);
                return;
            }
            Ended::Expired | Ended::Lost => break,
        }
    }
    w.waiting.store(false, Ordering::Relaxed);
    w.arrived.notify_one();
}

/// One pull request for one message, waiting up to [`long_poll`].
async fn one_request(s: &NodeState, source: &Source, c: &consumer::PullConsumer) -> Ended {
    let connects = || s.client.statistics().connects.load(Ordering::Relaxed);
    let before = connects();
    let expires = long_poll(s.cfg.ack_wait, source);
    let request = c
        .batch()
        .max_messages(1)
        .expires(expires)
        // Idle heartbeats must come more often than half the expiry.
        .heartbeat(expires * 2 / 5)
        .messages();
    let mut batch = match tokio::time::timeout(Duration::from_secs(2), request).await {
        Ok(Ok(b)) => b,
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "long poll not sent");
            return Ended::Failed;
        }
        Err(_) => return Ended::Lost,
    };
    let mut tick = tokio::time::interval(RECONNECT_CHECK);
    loop {
        tokio::select! {
            m = batch.next() => return match m {
                Some(Ok(msg)) => Ended::Message(Box::new(msg)),
                None => Ended::Expired,
                Some(Err(e)) => {
                    tracing::debug!(error = %e, "long poll failed");
                    Ended::Failed
                }
            },
            _ = tick.tick() => if connects() != before {
                return Ended::Lost;
            },
            _ = s.shutdown.wait() => return Ended::Shutdown,
        }
    }
}

/// Whether the node takes work now: healthy, not stopping, a free slot.
fn can_take(s: &NodeState) -> bool {
    s.health() == Health::Healthy
        && !s.stop_requested.is_triggered()
        && !s.shutdown.is_triggered()
        && s.slots.available_permits() > 0
}

/// How long a message that came while every slot was taken waits for one
/// (the dispatcher holds the free slots during its fetch round and gives
/// back the ones it did not use) before it goes back to the queue.
const SLOT_WAIT: Duration = Duration::from_millis(50);

/// Runs the message in a free slot, or hands it straight back.
async fn take(s: &Arc<NodeState>, source: &Source, msg: async_nats::jetstream::Message) {
    let permit = tokio::time::timeout(SLOT_WAIT, s.slots.clone().acquire_owned()).await;
    match permit {
        Ok(Ok(p)) if s.health() == Health::Healthy && !s.stop_requested.is_triggered() => {
            let (s2, source) = (s.clone(), source.clone());
            s.work.spawn(run_task(s2, source, msg, p));
        }
        _ => {
            let _ = msg.ack_with(AckKind::Nak(None)).await;
        }
    }
}
