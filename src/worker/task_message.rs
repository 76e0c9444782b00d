//! A message from a task or shard queue, settled through its ack subject.
//!
//! async-nats's `jetstream::Message` carries its own JetStream context,
//! cloned for every message: the clone copies the API prefix and the
//! client's request sender allocates a new future, three allocations and
//! a dozen shared counters touched per task (a malloc probe on the
//! throughput bench). A dispatcher's messages share one client instead.

use std::ops::Deref;
use std::sync::Arc;

use async_nats::jetstream::AckKind;

/// A delivered message and the client its ack goes through. Reads as the
/// plain message (subject, headers, payload).
pub(super) struct TaskMessage {
    msg: async_nats::Message,
    client: Arc<async_nats::Client>,
}

/// What a message's ack subject says about its delivery (ADR-15).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct DeliveryInfo {
    /// How many times the consumer delivered it, this time included.
    pub delivered: u64,
    /// Its sequence in the stream.
    pub stream_sequence: u64,
}

impl TaskMessage {
    pub(super) fn new(msg: async_nats::Message, client: Arc<async_nats::Client>) -> Self {
        TaskMessage { msg, client }
    }

    /// The delivery count and stream sequence; `None` when the message has
    /// no JetStream ack subject.
    pub(super) fn info(&self) -> Option<DeliveryInfo> {
        parse_ack_subject(self.msg.reply.as_deref()?)
    }

    /// Acks, NAKs, terms or extends the message (a publish to its ack
    /// subject, as `jetstream::Message::ack_with` does).
    pub(super) async fn ack_with(&self, kind: AckKind) -> Result<(), async_nats::Error> {
        let Some(reply) = self.msg.reply.clone() else {
            return Err("not a JetStream message: no ack subject".into());
        };
        self.client.publish(reply, kind.into()).await?;
        Ok(())
    }
}

impl Deref for TaskMessage {
    type Target = async_nats::Message;

    fn deref(&self) -> &async_nats::Message {
        &self.msg
    }
}

/// `$JS.ACK.<stream>.<consumer>.<delivered>.<stream seq>.<consumer seq>.
/// <timestamp>.<pending>`, or the newer form with `<domain>.<account hash>`
/// before the stream and possibly more tokens after (ADR-15).
fn parse_ack_subject(reply: &str) -> Option<DeliveryInfo> {
    let rest = reply.strip_prefix("$JS.ACK.")?;
    let mut tokens = [""; 9];
    let mut n = 0;
    for t in rest.split('.') {
        if let Some(slot) = tokens.get_mut(n) {
            *slot = t;
        }
        n += 1;
    }
    let base = match n {
        7 => 0,
        n if n >= 9 => 2,
        _ => return None,
    };
    Some(DeliveryInfo {
        delivered: tokens[base + 2].parse().ok()?,
        stream_sequence: tokens[base + 3].parse().ok()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_ack_subject_forms_parse() {
        let v1 = "$JS.ACK.WEAVE_TASKS.q-normal.3.1042.998.1733190000000000000.12";
        assert_eq!(
            parse_ack_subject(v1),
            Some(DeliveryInfo {
                delivered: 3,
                stream_sequence: 1042
            })
        );
        let v2 = "$JS.ACK.hub.ACCHASH.WEAVE_TASKS.q-normal.1.7.7.1733190000000000000.0.x9Yz";
        assert_eq!(
            parse_ack_subject(v2),
            Some(DeliveryInfo {
                delivered: 1,
                stream_sequence: 7
            })
        );
    }

    #[test]
    fn other_subjects_do_not() {
        for bad in [
            "not.an.ack.subject",
            "$JS.ACK.S.C.1.2.3",
            "$JS.ACK.S.C.x.2.3.4.5",
            "$JS.ACK.S.C.1.2.3.4.5.6",
            "",
        ] {
            assert_eq!(parse_ack_subject(bad), None, "{bad}");
        }
    }
}
