//! Pull requests that wait at the server while a dispatcher is idle.
//!
//! An idle dispatcher leaves one pull request (one message, idle
//! heartbeats) waiting on each of its consumers, so a task that is
//! published, retried or redelivered goes straight to a node: no fetch
//! round trip and no polling. The replies of all of a dispatcher's
//! requests come to one subscription (`<inbox>.<consumer>.<request>`), so
//! a request costs one publish and no subscribe.
//!
//! ## Never more messages than free slots
//! A request holds no slot, so a dispatcher asks only while the node has
//! a free slot for each of its requests, and one request brings at most
//! one message. A message that still finds no free slot (the node filled
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
use std::time::{Duration, Instant};

use async_nats::jetstream::consumer::{self, pull::BatchConfig};
use async_nats::jetstream::{self, AckKind};
use async_nats::StatusCode;
use futures::StreamExt;

use super::dispatch::Source;
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
    asked: Instant,
    /// When the server was last heard from about it.
    seen: Instant,
    expires: Duration,
    heartbeat: Duration,
}

impl Request {
    fn overdue(&self, now: Instant) -> bool {
        now.duration_since(self.seen) > self.heartbeat * 2 + SLACK
            || now.duration_since(self.asked) > self.expires + SLACK * 4
    }
}

/// What one reply on the inbox meant.
pub(super) enum Reply {
    /// A task (or shard) message: run it in a free slot or hand it back.
    Message(Box<jetstream::Message>),
    /// A request ended without a message (expired, refused); `failed`
    /// when the consumer may be gone and should be re-created.
    Ended { failed: bool },
    /// A heartbeat, or news about a request already given up.
    Quiet,
    /// The subscription ended (the client closed).
    Closed,
}

/// The waiting requests of one dispatcher, one slot per consumer.
pub(super) struct LongPolls {
    sub: async_nats::Subscriber,
    inbox: String,
    /// The context the messages' acks go through.
    js: jetstream::Context,
    /// The consumers' filter subjects: a message's subject names the
    /// consumer (and so the request) it came for.
    filters: Vec<String>,
    waiting: Vec<Option<Request>>,
    next_id: u64,
    /// The client's connection count when the requests were sent.
    connects: u64,
}

impl LongPolls {
    /// Subscribes the dispatcher's inbox.
    pub(super) async fn new(
        client: &async_nats::Client,
        js: &jetstream::Context,
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
            js: js.clone(),
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
        self.waiting = consumers.iter().map(|_| None).collect();
        self
    }

    /// Whether a request waits on consumer `i`.
    pub(super) fn waits(&self, i: usize) -> bool {
        self.waiting.get(i).is_some_and(Option::is_some)
    }

    /// Whether any request waits.
    pub(super) fn any(&self) -> bool {
        self.waiting.iter().any(Option::is_some)
    }

    /// Leaves a request for one message waiting on consumer `i`.
    pub(super) async fn ask(
        &mut self,
        c: &consumer::PullConsumer,
        i: usize,
        (expires, heartbeat): (Duration, Duration),
    ) -> Result<(), Error> {
        self.next_id += 1;
        let id = self.next_id;
        let config = BatchConfig {
            batch: 1,
            expires: Some(expires),
            idle_heartbeat: heartbeat,
            ..Default::default()
        };
        let reply = format!("{}.{i}.{id}", self.inbox);
        c.request_batch(config, reply.into())
            .await
            .map_err(Error::nats_source)?;
        let now = Instant::now();
        if let Some(w) = self.waiting.get_mut(i) {
            *w = Some(Request {
                id,
                asked: now,
                seen: now,
                expires,
                heartbeat,
            });
        }
        Ok(())
    }

    /// Gives up the requests that are overdue or were sent before the
    /// client reconnected; returns whether any was.
    pub(super) fn forget_lost(&mut self, client: &async_nats::Client) -> bool {
        let connects = client.statistics().connects.load(Ordering::Relaxed);
        let reconnected = connects != self.connects;
        self.connects = connects;
        let now = Instant::now();
        let mut lost = false;
        for w in &mut self.waiting {
            if w.as_ref().is_some_and(|r| reconnected || r.overdue(now)) {
                *w = None;
                lost = true;
            }
        }
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
            // A message: its subject names its consumer.
            if let Some(i) = self.filters.iter().position(|f| *f == *msg.subject) {
                self.waiting[i] = None;
            }
            return Reply::Message(Box::new(jetstream::Message {
                message: msg,
                context: self.js.clone(),
            }));
        };
        let Some((i, id)) = parse_reply(&msg.subject, &self.inbox) else {
            return Reply::Quiet;
        };
        let Some(slot) = self.waiting.get_mut(i) else {
            return Reply::Quiet;
        };
        if slot.as_ref().is_none_or(|r| r.id != id) {
            return Reply::Quiet;
        }
        if status == StatusCode::IDLE_HEARTBEAT {
            if let Some(r) = slot.as_mut() {
                r.seen = Instant::now();
            }
            return Reply::Quiet;
        }
        *slot = None;
        let failed = status != StatusCode::TIMEOUT;
        if failed {
            tracing::debug!(%status, description = ?msg.description, "waiting pull request refused");
        }
        Reply::Ended { failed }
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
pub(super) async fn hand_back(msg: &jetstream::Message, why: &str) {
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
