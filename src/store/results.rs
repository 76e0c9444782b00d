//! Terminal task results in `P_RESULTS` (`P.results.<task_id>`, one per
//! task: the first write wins).

use async_nats::jetstream::{self, context::PublishErrorKind, stream};

use crate::error::Error;
use crate::wire::protocol::{json_body, TaskResult};
use crate::wire::subjects::Subjects;

/// Publishes a terminal result; `Ok(false)` if the task already had one.
pub async fn store_result(
    js: &jetstream::Context,
    subjects: &Subjects,
    r: &TaskResult,
) -> Result<bool, Error> {
    let body = json_body(r);
    let publish = jetstream::message::PublishMessage::build()
        .payload(body)
        .expected_last_subject_sequence(0);
    let ack = js
        .send_publish(subjects.result(&r.task_id), publish)
        .await
        .map_err(Error::nats_source)?;
    match ack.await {
        Ok(_) => Ok(true),
        Err(e) if e.kind() == PublishErrorKind::WrongLastSequence => Ok(false),
        Err(e) => Err(Error::nats_source(e)),
    }
}

/// Reads a task's terminal result, if it has one.
pub async fn read_result(
    results: &stream::Stream,
    subjects: &Subjects,
    task_id: &str,
) -> Option<TaskResult> {
    let m = results
        .direct_get_last_for_subject(subjects.result(task_id))
        .await
        .ok()?;
    serde_json::from_slice(&m.payload).ok()
}
