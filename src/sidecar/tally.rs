//! Terminal task counts and durations for `/metrics`
//! (`jetweave_tasks_total{queue,type,status}`,
//! `jetweave_task_duration_seconds{queue,type}`), derived from the result
//! stream: one result per task is already stored there, so counting costs
//! no JetStream write per task. Each sidecar reads the stream from its
//! first message with an ordered consumer and then follows it, so counts
//! survive a sidecar restart and two sidecars agree (both count what the
//! stream holds: the results of the last 7 days, its max age).
//!
//! The consumer is re-created from the next sequence whenever it fails (a
//! server restart, the consumer deleted, a pause), so nothing is counted
//! twice or skipped. Cost: one pull request every 2 s per sidecar while
//! idle, and decoding each result once per sidecar.

use async_nats::jetstream::{self, consumer};
use futures::StreamExt;

use super::*;
use crate::wire::protocol::TaskResult;

/// Follows the result stream until the sidecar stops.
pub(super) async fn keep_tally(app: AppState) {
    let mut next = 1u64;
    loop {
        if let Err(e) = follow(&app, &mut next).await {
            tracing::warn!(error = %e, next, "result tally interrupted; reading on");
        }
        tokio::select! {
            _ = app.shutdown.wait() => return,
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
    }
}

/// Counts results from stream sequence `next` on; returns at shutdown
/// (Ok) or when the consumer fails.
async fn follow(app: &App, next: &mut u64) -> Result<(), Error> {
    let subjects = crate::wire::subjects::Subjects::new(&app.cfg.prefix)?;
    let js = jetstream::new(app.client.nats().clone());
    let stream = js
        .get_stream(subjects.results_stream())
        .await
        .map_err(Error::nats_source)?;
    // Our own ordered reading: an ephemeral consumer from `next`, idle
    // heartbeats every second, so a consumer lost with its server (or
    // deleted) is noticed in ~2 s and made again from `next`. (The
    // library's ordered consumer notices only after 30 s.)
    let config = consumer::pull::Config {
        filter_subject: subjects.results_wildcard(),
        deliver_policy: consumer::DeliverPolicy::ByStartSequence {
            start_sequence: *next,
        },
        ack_policy: consumer::AckPolicy::None,
        inactive_threshold: Duration::from_secs(10),
        memory_storage: true,
        num_replicas: 1,
        ..Default::default()
    };
    let c = stream
        .create_consumer(config)
        .await
        .map_err(Error::nats_source)?;
    let mut msgs = c
        .stream()
        .heartbeat(Duration::from_secs(1))
        .expires(Duration::from_secs(2))
        .messages()
        .await
        .map_err(Error::nats_source)?;
    loop {
        let m = tokio::select! {
            _ = app.shutdown.wait() => return Ok(()),
            m = msgs.next() => m,
        };
        let m = match m {
            Some(Ok(m)) => m,
            Some(Err(e)) => return Err(Error::nats_source(e)),
            None => return Err(Error::nats("result consumer ended")),
        };
        let seq = m.info().map_err(Error::nats)?.stream_sequence;
        if seq >= *next {
            record(&app.metrics, &m.payload);
            *next = seq + 1;
        }
    }
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
}
