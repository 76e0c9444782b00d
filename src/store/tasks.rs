//! Publishing tasks onto their queues in `P_TASKS`, now or (as message
//! schedules) later. A publish that no stream answers yet (a cluster
//! electing the stream's leader) is sent again for a while (see
//! `write_settled` in the parent module).

use async_nats::jetstream;
use async_nats::HeaderMap;

use super::write_settled;
use crate::error::Error;
use crate::wire::protocol::{format_rfc3339, json_body, parse_rfc3339, Priority, TaskEnvelope};
use crate::wire::subjects::Subjects;

/// Publishes a delayed task as a message schedule that fires onto the
/// task subject at `not_before` (no polling).
pub async fn schedule(
    js: &jetstream::Context,
    subjects: &Subjects,
    queue: &str,
    priority: Priority,
    env: &TaskEnvelope,
) -> Result<(), Error> {
    let id = env.id.clone().unwrap_or_default();
    let at = env
        .not_before
        .as_deref()
        .map(parse_rfc3339)
        .transpose()?
        .unwrap_or_else(time::OffsetDateTime::now_utc);
    let mut headers = HeaderMap::new();
    headers.insert(
        "Nats-Schedule",
        format!("@at {}", format_rfc3339(at)).as_str(),
    );
    headers.insert(
        "Nats-Schedule-Target",
        subjects.task(queue, priority).as_str(),
    );
    let m = jetstream::message::PublishMessage::build()
        .payload(json_body(env))
        .headers(headers);
    publish_settled(js, subjects.delayed(queue, priority, &id), m).await?;
    Ok(())
}

/// Publishes `m` and waits for its ack, sending it again while no stream
/// answers ([`write_settled`]).
async fn publish_settled(
    js: &jetstream::Context,
    subject: String,
    m: jetstream::message::PublishMessage,
) -> Result<jetstream::publish::PublishAck, Error> {
    write_settled(|| async { js.send_publish(subject.clone(), m.clone()).await?.await })
        .await
        .map_err(Error::nats_source)
}

/// Publishes a task on its queue (used by the API and the client): with
/// `Nats-Msg-Id` = task id so a re-submit within the window is a no-op.
/// Returns whether it was a duplicate.
pub async fn publish_task(
    js: &jetstream::Context,
    subjects: &Subjects,
    queue: &str,
    priority: Priority,
    env: &TaskEnvelope,
) -> Result<bool, Error> {
    let id = env.id.clone().unwrap_or_default();
    let delayed = env
        .not_before
        .as_deref()
        .map(parse_rfc3339)
        .transpose()?
        .map(|t| t > time::OffsetDateTime::now_utc() + time::Duration::seconds(1))
        .unwrap_or(false);
    if delayed {
        schedule(js, subjects, queue, priority, env).await?;
        return Ok(false);
    }
    let m = jetstream::message::PublishMessage::build()
        .payload(json_body(env))
        .message_id(id);
    let ack = publish_settled(js, subjects.task(queue, priority), m).await?;
    Ok(ack.duplicate)
}
