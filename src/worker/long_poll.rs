//! Pull requests that wait at the server while a dispatcher is idle.
//!
//! An idle dispatcher leaves one pull request (one message, idle
//! heartbeats) waiting on each of its consumers, so a task that is
//! published, retried or redelivered goes straight to a node: no fetch
//! round trip and no polling. The replies of all of a dispatcher's
//! requests come to one subscription (`<inbox>.<consumer>.<request>`), so
//! a request costs one publish and no subscribe.
//!
//! ## Under load: credit requests
//! A dispatcher under load ([`super::dispatch`]) asks its busiest consumer
//! for as many messages as it has free slots, in requests that wait at the
//! server for 100 ms and hold those slots ("credit"): each message runs in
//! one of them, and what a request did not bring goes back when it ends.
//! Several such requests can wait at once, so messages flow as the node
//! frees slots, with no fetch round trip (and no subscription) per batch.
//!
//! ## Never more messages than free slots
//! An idle request holds no slot, so a dispatcher asks only while the
//! node has a free slot for each of its idle requests, and one idle
//! request brings at most one message. A message that still finds no free slot (the node filled
//! up after it asked) takes the next one that frees, waiting up to
//! `ack_wait / 2`, else goes back to the queue (a NAK without delay: the
//! server counts it as a delivery). A node that drains or stops drops its
//! inbox: the server skips requests nobody listens to, so nothing comes
//! to be handed back.
//!
//! ## Requests that are lost
//! A request lives at the consumer's leader. It is lost with that server
//! or with the client's connection, and the server says nothing; so each
//! request asks for idle heartbeats, and one that has not been heard from
//! for two of them (or has outlived its expiry), or that was sent before
//! the client reconnected, is given up and asked again. Should it still
//! bring a message, that message is run or handed back like any other.
//!
//! ## How long a request waits
//! [`expiry`]: 30 s while nothing runs on the node (an idle node asks
//! each consumer twice a minute), `0.7 × ack_wait` while something does:
//! a node paused mid-task must not still have a request waiting when its
//! own task comes back to the queue (at the earliest `3/4 ack_wait` after
//! the pause, as running tasks send progress acks every `ack_wait / 4`).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::consumer::{self, pull::BatchConfig};
use async_nats::jetstream::AckKind;
use async_nats::StatusCode;
use futures::StreamExt;
use tokio::sync::OwnedSemaphorePermit;

use super::dispatch::Source;
use super::task_message::TaskMessage;
use super::NodeState;
use crate::error::Error;

/// How long an idle node's requests wait at the server.
const IDLE_EXPIRY: Duration = Duration::from_secs(30);
/// Idle heartbeat of an idle node's requests: a lost request is noticed
/// within about two of them.
const IDLE_HEARTBEAT: Duration = Duration::from_secs(2);
/// Slack on top of the heartbeat and expiry deadlines.
const SLACK: Duration = Duration::from_millis(500);
/// How often the deadlines are checked while requests wait.
pub(super) const CHECK_EVERY: Duration = Duration::from_millis(250);

/// How long a new request on a consumer of `source` waits at the server,
/// and its idle heartbeat (see the module docs).
pub(super) fn expiry(s: &NodeState, source: &Source) -> (Duration, Duration) {
    let idle = s.slots.available_permits() as u32 >= s.cfg.concurrency;
    if idle || *source == Source::Shards {
        return (IDLE_EXPIRY, IDLE_HEARTBEAT);
    }
    let e = s
        .cfg
        .ack_wait
        .mul_f64(0.7)
        .clamp(Duration::from_millis(500), IDLE_EXPIRY);
    (e, (e * 2 / 5).min(IDLE_HEARTBEAT))
}

/// One request waiting at the server.
struct Request {
    id: u64,
    /// The consumer it waits on.
    consumer: usize,
    /// Messages it may still bring.
    left: u32,
    /// The slots it holds for them (credit requests only: an idle
    /// request holds none).
    slots: Option<OwnedSemaphorePermit>,
    asked: Instant,
    /// When the server was last heard from about it.
    seen: Instant,
    expires: Duration,
    heartbeat: Duration,
}

impl Request {
    fn overdue(&self, now: Instant) -> bool {
        let unheard = if self.heartbeat.is_zero() {
            false
        } else {
            now.duration_since(self.seen) > self.heartbeat * 2 + SLACK
        };
        unheard || now.duration_since(self.asked) > self.expires + SLACK * 4
    }
}

/// What one reply on the inbox meant.
pub(super) enum Reply {
    /// A task (or shard) message, with the slot its request held for it
    /// if it did: run it in that slot, or in a free one, or hand it back.
    Message(Box<TaskMessage>, Option<OwnedSemaphorePermit>),
    /// A request ended before it brought all it asked for (expired: its
    /// consumer ran dry; or refused); `failed` when the consumer may be
    /// gone and should be re-created.
    Ended { failed: bool },
    /// A heartbeat, or news about a request already given up.
    Quiet,
    /// The subscription ended (the client closed).
    Closed,
}

/// The waiting requests of one dispatcher.
pub(super) struct LongPolls {
    sub: async_nats::Subscriber,
    inbox: String,
    /// The client the messages' acks go through.
    acks: Arc<async_nats::Client>,
    /// The consumers' filter subjects: a message's subject names the
    /// consumer (and so the request) it came for.
    filters: Vec<String>,
    /// Oldest first: a consumer fills its waiting requests in order.
    waiting: Vec<Request>,
    next_id: u64,
    /// The client's connection count when the requests were sent.
    connects: u64,
}

impl LongPolls {
    /// Subscribes the dispatcher's inbox.
    pub(super) async fn new(
        client: &async_nats::Client,
        acks: &Arc<async_nats::Client>,
        consumers: &[consumer::PullConsumer],
    ) -> Result<Self, Error> {
        let inbox = client.new_inbox();
        let sub = client
            .subscribe(format!("{inbox}.>"))
            .await
            .map_err(Error::nats_source)?;
        Ok(LongPolls {
            sub,
            inbox,
            acks: acks.clone(),
            filters: Vec::new(),
            waiting: Vec::new(),
            next_id: 0,
            connects: client.statistics().connects.load(Ordering::Relaxed),
        }
        .with_consumers(consumers))
    }

    /// Follows a new set of consumers (re-created): every request is
    /// given up (replies still coming are handled as for lost ones).
    pub(super) fn with_consumers(mut self, consumers: &[consumer::PullConsumer]) -> Self {
        self.filters = consumers
            .iter()
            .map(|c| c.cached_info().config.filter_subject.clone())
            .collect();
        self.waiting.clear();
        self
    }

    /// Whether a request waits on consumer `i`.
    pub(super) fn waits(&self, i: usize) -> bool {
        self.waiting.iter().any(|r| r.consumer == i)
    }

    /// Whether any request waits.
    pub(super) fn any(&self) -> bool {
        !self.waiting.is_empty()
    }

    /// Messages the waiting idle requests may bring (they hold no slot).
    pub(super) fn unbacked(&self) -> usize {
        self.waiting
            .iter()
            .filter(|r| r.slots.is_none())
            .map(|r| r.left as usize)
            .sum()
    }

    /// Slots held by the credit requests waiting on consumer `i`.
    pub(super) fn credit(&self, i: usize) -> usize {
        self.waiting
            .iter()
            .filter(|r| r.consumer == i)
            .filter_map(|r| r.slots.as_ref())
            .map(OwnedSemaphorePermit::num_permits)
            .sum()
    }

    /// Leaves a request for one message waiting on consumer `i`; it holds
    /// no slot (see the module docs).
    pub(super) async fn ask(
        &mut self,
        c: &consumer::PullConsumer,
        i: usize,
        (expires, heartbeat): (Duration, Duration),
    ) -> Result<(), Error> {
        self.send(c, i, None, expires, heartbeat).await
    }

    /// Leaves a request waiting on consumer `i` for as many messages as
    /// `slots` holds, each of which runs in one of them.
    pub(super) async fn ask_credit(
        &mut self,
        c: &consumer::PullConsumer,
        i: usize,
        slots: OwnedSemaphorePermit,
        expires: Duration,
    ) -> Result<(), Error> {
        self.send(c, i, Some(slots), expires, Duration::ZERO).await
    }

    async fn send(
        &mut self,
        c: &consumer::PullConsumer,
        i: usize,
        slots: Option<OwnedSemaphorePermit>,
        expires: Duration,
        heartbeat: Duration,
    ) -> Result<(), Error> {
        self.next_id += 1;
        let id = self.next_id;
        let left = slots.as_ref().map_or(1, |p| p.num_permits() as u32);
        let config = BatchConfig {
            batch: left as usize,
            expires: Some(expires),
            idle_heartbeat: heartbeat,
            ..Default::default()
        };
        let reply = format!("{}.{i}.{id}", self.inbox);
        c.request_batch(config, reply.into())
            .await
            .map_err(Error::nats_source)?;
        let now = Instant::now();
        self.waiting.push(Request {
            id,
            consumer: i,
            left,
            slots,
            asked: now,
            seen: now,
            expires,
            heartbeat,
        });
        Ok(())
    }

    /// Gives up the requests that are overdue or were sent before the
    /// client reconnected (their slots go back); returns whether any was.
    pub(super) fn forget_lost(&mut self, client: &async_nats::Client) -> bool {
        let connects = client.statistics().connects.load(Ordering::Relaxed);
        let reconnected = connects != self.connects;
        self.connects = connects;
        let now = Instant::now();
        let before = self.waiting.len();
        self.waiting.retain(|r| !(reconnected || r.overdue(now)));
        let lost = self.waiting.len() != before;
        if lost {
            tracing::info!(reconnected, "waiting pull request lost; asking again");
        }
        lost
    }

    /// The next reply on the inbox.
    pub(super) async fn next(&mut self) -> Reply {
        match self.sub.next().await {
            Some(msg) => self.reply(msg),
            None => Reply::Closed,
        }
    }

    /// A reply already received, if any (without waiting).
    pub(super) fn try_next(&mut self) -> Option<Reply> {
        futures::FutureExt::now_or_never(self.next())
    }

    fn reply(&mut self, msg: async_nats::Message) -> Reply {
        let Some(status) = msg.status.filter(|s| *s != StatusCode::OK) else {
            let slot = self.delivered(&msg.subject);
            let msg = TaskMessage::new(msg, self.acks.clone());
            return Reply::Message(Box::new(msg), slot);
        };
        let Some((_, id)) = parse_reply(&msg.subject, &self.inbox) else {
            return Reply::Quiet;
        };
        let Some(at) = self.waiting.iter().position(|r| r.id == id) else {
            return Reply::Quiet;
        };
        if status == StatusCode::IDLE_HEARTBEAT {
            self.waiting[at].seen = Instant::now();
            return Reply::Quiet;
        }
        // Ended: the slots it held for what did not come go back.
        self.waiting.remove(at);
        let failed = status != StatusCode::TIMEOUT;
        if failed {
            tracing::debug!(%status, description = ?msg.description, "waiting pull request refused");
        }
        Reply::Ended { failed }
    }

    /// A message came on `subject`: it counts against the oldest request
    /// of its consumer (a consumer fills its requests in order) and takes
    /// one of the slots that request holds.
    fn delivered(&mut self, subject: &str) -> Option<OwnedSemaphorePermit> {
        let i = self.filters.iter().position(|f| f == subject)?;
        let at = self.waiting.iter().position(|r| r.consumer == i)?;
        let r = &mut self.waiting[at];
        r.left = r.left.saturating_sub(1);
        let slot = match r.slots.as_mut() {
            Some(p) if p.num_permits() > 1 => p.split(1),
            Some(_) => r.slots.take(),
            None => None,
        };
        if r.left == 0 {
            self.waiting.remove(at);
        }
        slot
    }
}

/// `<inbox>.<consumer>.<request>` → (consumer, request).
fn parse_reply(subject: &str, inbox: &str) -> Option<(usize, u64)> {
    let rest = subject.strip_prefix(inbox)?.strip_prefix('.')?;
    let (i, id) = rest.split_once('.')?;
    Some((i.parse().ok()?, id.parse().ok()?))
}

/// Hands a message straight back to its queue: the node has no slot for
/// it (or is draining or stopping).
pub(super) async fn hand_back(msg: &TaskMessage, why: &str) {
    tracing::debug!(subject = %msg.subject, why, "message handed back to its queue");
    if let Err(e) = msg.ack_with(AckKind::Nak(None)).await {
        tracing::debug!(error = %e, "could not hand a message back; it returns after ack_wait");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_name_their_consumer_and_request() {
        assert_eq!(parse_reply("_INBOX.abc.2.17", "_INBOX.abc"), Some((2, 17)));
        assert_eq!(parse_reply("_INBOX.abcd.2.17", "_INBOX.abc"), None);
        assert_eq!(parse_reply("_INBOX.abc.x.17", "_INBOX.abc"), None);
        assert_eq!(parse_reply("P.tasks.q.normal", "_INBOX.abc"), None);
    }
}
