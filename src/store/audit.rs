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
    match js.publish(subjects.audit(kind), body.into()).await {
        Ok(ack) => {
            if let Err(e) = ack.await {
                tracing::warn!(kind, error = %e, "audit event not stored");
            }
        }
        Err(e) => tracing::warn!(kind, error = %e, "audit event not published"),
    }
}
