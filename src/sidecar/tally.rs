//! Terminal task counts and durations for `/metrics`
//! (`jetweave_tasks_total{queue,type,status}`,
//! `jetweave_task_duration_seconds{queue,type}`), derived from the result
//! stream: one result per task is already stored there, so counting costs
//! no JetStream write per task. Each sidecar reads the stream from its
//! first message with an ordered consumer and then follows it, so counts
//! survive a sidecar restart and two sidecars agree (both count what the
//! stream holds: the results of the last 7 days, its max age).
//!
//! The reading survives a server restart, the consumer's deletion and a
//! pause, and counts nothing twice (see `follow`). Cost: one pull request
//! every 2 s per sidecar while idle, and decoding each result once per
//! sidecar.

use super::follow::{follow, From};
use super::*;
use crate::wire::protocol::TaskResult;

/// Follows the result stream from its first message until the sidecar
/// stops.
pub(super) async fn keep_tally(app: AppState) {
    let subjects = app.client.subjects().clone();
    let a = app.clone();
    let each = move |_: &str, payload: &[u8]| record(&a.metrics, payload);
    let (stream, filter) = (subjects.results_stream(), subjects.results_wildcard());
    follow(app, stream, filter, From::First, each).await
}

/// Adds one stored result to the counts (an unparseable one is skipped).
fn record(metrics: &Metrics, payload: &[u8]) {
    let Ok(r) = serde_json::from_slice::<TaskResult>(payload) else {
        return;
    };
    let queue = r.queue.as_deref().unwrap_or("unknown");
    let task_type = r.task_type.as_deref().unwrap_or("unknown");
    metrics
        .tasks_total
        .with_label_values(&[queue, task_type, r.status.as_str()])
        .inc();
    metrics
        .task_duration
        .with_label_values(&[queue, task_type])
        .observe(r.duration_s.max(0.0));
    metrics
        .task_retries
        .with_label_values(&[queue, task_type])
        .inc_by(u64::from(r.attempts.saturating_sub(1)));
}
