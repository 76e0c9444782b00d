//! The audit log: `P.events.<kind>` entries stored in `P_EVENTS`.

use async_nats::jetstream;
use serde_json::Value;

use crate::wire::protocol::{now_rfc3339, AuditEvent};
use crate::wire::subjects::Subjects;

/// Publishes an audit event (best effort: logged, never fatal).
pub async fn publish_audit(
    js: &jetstream::Context,
    subjects: &Subjects,
    kind: &str,
    node_id: Option<&str>,
    run_id: Option<&str>,
    details: Value,
) {
    send(js, subjects, kind, node_id, run_id, details, None).await
}

/// Publishes an audit event that happens once per `once_key` (e.g. a
/// shard's completion): its `Nats-Msg-Id` is `<kind>:<once_key>`, so a
/// second report within the stream's duplicate window — a new leader
/// reconciling what the old one recorded just before it died — is not
/// stored twice.
pub async fn publish_audit_once(
    js: &jetstream::Context,
    subjects: &Subjects,
    kind: &str,
    node_id: Option<&str>,
    run_id: Option<&str>,
    details: Value,
    once_key: &str,
) {
    let id = format!("{kind}:{once_key}");
    send(js, subjects, kind, node_id, run_id, details, Some(id)).await
}

async fn send(
    js: &jetstream::Context,
    subjects: &Subjects,
    kind: &str,
    node_id: Option<&str>,
    run_id: Option<&str>,
    details: Value,
    msg_id: Option<String>,
) {
    let ev = AuditEvent {
        kind: kind.to_string(),
        at: now_rfc3339(),
        node_id: node_id.map(str::to_string),
        run_id: run_id.map(str::to_string),
        details,
    };
    let Ok(body) = serde_json::to_vec(&ev) else {
        return;
    };
    let mut m = jetstream::message::PublishMessage::build().payload(body.into());
    if let Some(id) = msg_id {
        m = m.message_id(id);
    }
    match js.send_publish(subjects.audit(kind), m).await {
        Ok(ack) => {
            if let Err(e) = ack.await {
                tracing::warn!(kind, error = %e, "audit event not stored");
            }
        }
        Err(e) => tracing::warn!(kind, error = %e, "audit event not published"),
    }
}
