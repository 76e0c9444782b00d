//! Dead letters you can act on (contract §11): `P.api.dlq.list`,
//! `P.api.dlq.requeue` and `P.api.dlq.purge` over the `P_DLQ` stream.
//!
//! A requeued task is a new task: id `<old id>-rq<dlq sequence>` (so a
//! retried requeue is de-duplicated by `Nats-Msg-Id`), fresh attempts, the
//! same type, payload, metadata, limits, queue and priority, and
//! `metadata.requeued_from` = the old id, which keeps its `dead` result.
//! The dead letter leaves the DLQ once the new task is stored.

use async_nats::jetstream::stream;
use serde_json::{json, Value};

use super::CoordinatorState;
use crate::error::{Error, ErrorCode};
use crate::store::tasks::publish_task;
use crate::wire::protocol::{
    DeadLetter, DlqEntry, DlqList, DlqListRequest, DlqPurgeRequest, DlqRequeueRequest, Priority,
    TaskEnvelope,
};
use crate::wire::subjects::validate_id;

/// Default `limit` of `dlq.list`.
const DEFAULT_LIMIT: usize = 100;

/// A stored dead letter and its sequence in `P_DLQ`.
struct Stored {
    seq: u64,
    dl: DeadLetter,
}

async fn dlq_stream(s: &CoordinatorState) -> Result<stream::Stream, Error> {
    s.js.get_stream(s.subjects.dlq_stream())
        .await
        .map_err(Error::nats_source)
}

/// The DLQ subject for `queue` (all queues when `None`).
fn filter(s: &CoordinatorState, queue: Option<&str>) -> Result<String, Error> {
    match queue {
        Some(q) => {
            validate_id("queue", q)?;
            Ok(s.subjects.dlq(q))
        }
        None => Ok(s.subjects.dlq_wildcard()),
    }
}

/// Every dead letter on `subject`, oldest first (unreadable ones skipped).
async fn read_all(dlq: &stream::Stream, subject: &str) -> Vec<Stored> {
    let mut out = Vec::new();
    let mut seq = 1;
    while let Ok(m) = dlq.direct_get_next_for_subject(subject, Some(seq)).await {
        seq = m.sequence + 1;
        if let Ok(dl) = serde_json::from_slice::<DeadLetter>(&m.payload) {
            out.push(Stored {
                seq: m.sequence,
                dl,
            });
        }
    }
    out
}

fn entry(st: &Stored) -> DlqEntry {
    DlqEntry {
        task_id: st.dl.task_id.clone().unwrap_or_default(),
        queue: st.dl.queue.clone(),
        task_type: st.dl.envelope["type"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
        error: st.dl.error.clone(),
        attempts: st.dl.attempts,
        dead_at: st.dl.dead_at.clone(),
    }
}

pub(super) async fn list(s: &CoordinatorState, r: DlqListRequest) -> Result<Value, Error> {
    let limit = r.limit.unwrap_or(DEFAULT_LIMIT);
    if limit == 0 {
        return Err(Error::invalid(
            ErrorCode::InvalidValue,
            "limit must be >= 1",
        ));
    }
    let subject = filter(s, r.queue.as_deref())?;
    let all = read_all(&dlq_stream(s).await?, &subject).await;
    let out = DlqList {
        total: all.len() as u64,
        entries: all.iter().take(limit).map(entry).collect(),
    };
    serde_json::to_value(out).map_err(Error::from)
}

pub(super) async fn requeue(s: &CoordinatorState, r: DlqRequeueRequest) -> Result<Value, Error> {
    let dlq = dlq_stream(s).await?;
    match (r.task_id, r.queue, r.all) {
        (Some(id), None, false) => {
            let all = read_all(&dlq, &s.subjects.dlq_wildcard()).await;
            let st = all
                .iter()
                .find(|st| st.dl.task_id.as_deref() == Some(id.as_str()))
                .ok_or_else(|| {
                    Error::invalid(
                        ErrorCode::NotFound,
                        format!("no dead letter for task {id:?}"),
                    )
                })?;
            let new = requeue_one(s, &dlq, st).await?;
            Ok(json!({"ok": true, "task_id": new, "requeued_from": id}))
        }
        (None, Some(q), true) => {
            let all = read_all(&dlq, &filter(s, Some(&q))?).await;
            for st in &all {
                requeue_one(s, &dlq, st).await?;
            }
            Ok(json!({"ok": true, "requeued": all.len()}))
        }
        _ => Err(Error::invalid(
            ErrorCode::InvalidValue,
            "give {\"task_id\"} or {\"queue\", \"all\": true}",
        )),
    }
}

/// Publishes the dead task again as a new task, then removes the letter.
async fn requeue_one(
    s: &CoordinatorState,
    dlq: &stream::Stream,
    st: &Stored,
) -> Result<String, Error> {
    let old = st.dl.task_id.clone().unwrap_or_default();
    let mut env: TaskEnvelope = serde_json::from_value(st.dl.envelope.clone()).map_err(|e| {
        Error::invalid(
            ErrorCode::InvalidValue,
            format!("dead letter of {old:?} holds no task envelope: {e}"),
        )
    })?;
    let stem: String = old.chars().take(180).collect();
    let new = format!("{stem}-rq{}", st.seq);
    env.id = Some(new.clone());
    env.not_before = None;
    env.metadata
        .insert("requeued_from".into(), Value::String(old));
    let priority = st.dl.priority.unwrap_or(Priority::Normal);
    publish_task(&s.js, &s.subjects, &st.dl.queue, priority, &env).await?;
    dlq.delete_message(st.seq)
        .await
        .map_err(Error::nats_source)?;
    Ok(new)
}

pub(super) async fn purge(s: &CoordinatorState, r: DlqPurgeRequest) -> Result<Value, Error> {
    let subject = filter(s, r.queue.as_deref())?;
    let purged = dlq_stream(s)
        .await?
        .purge()
        .filter(subject)
        .await
        .map_err(Error::nats_source)?
        .purged;
    Ok(json!({"ok": true, "purged": purged}))
}
