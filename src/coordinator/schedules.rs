//! Periodic tasks without a beat process (contract §12): each schedule is
//! one JetStream message schedule in `P_TASKS` on
//! `P.delayed.schedule.<schedule_id>`, with `Nats-Schedule` (`@every Ns` or
//! a six-field cron) and `Nats-Schedule-Target` = the task subject. The
//! server fires it, so it survives every restart and fires once per tick
//! however many coordinators run; each firing is a normal task (no id of
//! its own: its id is `P_TASKS-<sequence>`) whose metadata names the
//! schedule. Creating an id again replaces it; deleting purges the subject.

use std::str::FromStr;

use async_nats::jetstream::{self, stream};
use async_nats::HeaderMap;
use serde_json::{json, Value};
use time::OffsetDateTime;

use super::CoordinatorState;
use crate::error::{Error, ErrorCode};
use crate::wire::protocol::{
    format_rfc3339, json_body, ScheduleCreate, ScheduleInfo, ScheduleRef, TaskEnvelope,
};
use crate::wire::subjects::validate_id;

const SCHEDULE: &str = "Nats-Schedule";
const TARGET: &str = "Nats-Schedule-Target";

fn invalid(m: impl Into<String>) -> Error {
    Error::invalid(ErrorCode::InvalidValue, m)
}

/// The `Nats-Schedule` value of a request.
fn spec(r: &ScheduleCreate) -> Result<String, Error> {
    match (r.every_s, &r.cron) {
        (Some(n), None) if n >= 1 => Ok(format!("@every {n}s")),
        (None, Some(c)) if !c.trim().is_empty() => Ok(c.trim().to_string()),
        _ => Err(invalid(
            "give exactly one of every_s (whole seconds >= 1) and cron \
             (six fields, seconds first: sec min hour day month weekday)",
        )),
    }
}

pub(super) async fn create(s: &CoordinatorState, r: ScheduleCreate) -> Result<Value, Error> {
    validate_id("schedule_id", &r.schedule_id)?;
    let queue = r.queue.clone().unwrap_or_else(|| "default".into());
    validate_id("queue", &queue)?;
    if r.task_type.trim().is_empty() {
        return Err(invalid("type is required"));
    }
    let spec = spec(&r)?;
    let priority = r.priority.unwrap_or_default();
    let mut env = TaskEnvelope::new(r.task_type.clone(), r.payload.clone());
    env.metadata = r.metadata.clone();
    env.metadata
        .insert("schedule_id".into(), Value::String(r.schedule_id.clone()));
    let subject = s.subjects.schedule(&r.schedule_id);
    let last = s
        .tasks
        .direct_get_last_for_subject(subject.as_str())
        .await
        .ok()
        .map(|m| m.sequence);
    let mut headers = HeaderMap::new();
    headers.insert(SCHEDULE, spec.as_str());
    headers.insert(TARGET, s.subjects.task(&queue, priority).as_str());
    let m = jetstream::message::PublishMessage::build()
        .payload(json_body(&env))
        .headers(headers)
        .expected_last_subject_sequence(last.unwrap_or(0));
    let ack =
        s.js.send_publish(subject.clone(), m)
            .await
            .map_err(Error::nats_source)?;
    if let Err(e) = ack.await {
        // The server checks the pattern (10189) and the compare-and-set.
        return Err(invalid(format!(
            "schedule {} not stored: {e}",
            r.schedule_id
        )));
    }
    if last.is_some() {
        let _ = s.tasks.purge().filter(subject).keep(1).await;
    }
    let info = ScheduleInfo {
        schedule_id: r.schedule_id.clone(),
        every_s: r.every_s,
        cron: r.cron.clone(),
        task_type: r.task_type,
        queue,
        priority,
        next_at: next_at(&spec, OffsetDateTime::now_utc()),
    };
    Ok(json!({"ok": true, "schedule_id": info.schedule_id, "next_at": info.next_at}))
}

/// When a schedule stored at `since` fires next (best effort; `None` for
/// a cron expression this parser does not read).
fn next_at(spec: &str, since: OffsetDateTime) -> Option<String> {
    let now = OffsetDateTime::now_utc();
    if let Some(n) = spec
        .strip_prefix("@every ")
        .and_then(|d| d.strip_suffix('s'))
    {
        let every = n.parse::<i64>().ok()?.max(1);
        let elapsed = (now - since).whole_seconds().max(0);
        let next = since + time::Duration::seconds((elapsed / every + 1) * every);
        return format_rfc3339(next).into();
    }
    let sched = cron::Schedule::from_str(spec).ok()?;
    let next = sched.upcoming(chrono::Utc).next()?;
    OffsetDateTime::from_unix_timestamp(next.timestamp())
        .ok()
        .map(format_rfc3339)
}

/// `{"schedules": [...]}`: every stored schedule, oldest first.
pub(super) async fn list(s: &CoordinatorState) -> Result<Value, Error> {
    Ok(json!({"schedules": read_all(&s.tasks, s).await}))
}

async fn read_all(tasks: &stream::Stream, s: &CoordinatorState) -> Vec<ScheduleInfo> {
    let mut out = Vec::new();
    let mut seq = 1;
    let filter = s.subjects.schedules_wildcard();
    while let Ok(m) = tasks
        .direct_get_next_for_subject(filter.as_str(), Some(seq))
        .await
    {
        seq = m.sequence + 1;
        let header = |k: &str| m.headers.get(k).map(|v| v.as_str().to_string());
        let (Some(spec), Some(target)) = (header(SCHEDULE), header(TARGET)) else {
            continue;
        };
        let env: TaskEnvelope = match serde_json::from_slice(&m.payload) {
            Ok(e) => e,
            Err(_) => continue,
        };
        let mut t = target.rsplit('.');
        let priority = t.next().and_then(|p| p.parse().ok()).unwrap_or_default();
        let queue = t.next().unwrap_or_default().to_string();
        let every_s = spec
            .strip_prefix("@every ")
            .and_then(|d| d.strip_suffix('s'))
            .and_then(|n| n.parse().ok());
        let since = OffsetDateTime::from_unix_timestamp(m.time.unix_timestamp())
            .unwrap_or_else(|_| OffsetDateTime::now_utc());
        out.push(ScheduleInfo {
            schedule_id: m.subject.rsplit('.').next().unwrap_or_default().to_string(),
            every_s,
            cron: every_s.is_none().then(|| spec.clone()),
            task_type: env.task_type,
            queue,
            priority,
            next_at: next_at(&spec, since),
        });
    }
    out
}

pub(super) async fn delete(s: &CoordinatorState, r: ScheduleRef) -> Result<Value, Error> {
    validate_id("schedule_id", &r.schedule_id)?;
    let purged = s
        .tasks
        .purge()
        .filter(s.subjects.schedule(&r.schedule_id))
        .await
        .map_err(Error::nats_source)?
        .purged;
    if purged == 0 {
        return Err(Error::invalid(
            ErrorCode::NotFound,
            format!("no schedule {:?}", r.schedule_id),
        ));
    }
    Ok(json!({"ok": true}))
}
