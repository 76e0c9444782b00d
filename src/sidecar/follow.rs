//! Reading a stream in order, from a sequence on, for as long as the
//! sidecar runs: the result tally and the dashboard's event log both read
//! this way.
//!
//! Each reading is an ephemeral consumer (no acks, memory, one replica)
//! from the next sequence, with idle heartbeats every second, so a
//! consumer lost with its server, deleted, or left behind by a paused
//! process is noticed in ~2 s and made again from where the last one
//! stopped: nothing is seen twice or skipped. (The library's ordered
//! consumer notices only after 30 s.) Cost: one pull request every 2 s
//! per reader while idle.

use async_nats::jetstream::{self, consumer};
use futures::StreamExt;

use super::*;

/// Where a reading starts.
pub(super) enum From {
    /// The stream's first message.
    First,
    /// The last `n` messages the stream holds when the reading starts.
    Last(u64),
}

/// Calls `each(subject, payload)` for every message of `stream` matching
/// `filter`, in order, from `from` on, until the shutdown.
pub(super) async fn follow(
    app: AppState,
    stream: String,
    filter: String,
    from: From,
    mut each: impl FnMut(&str, &[u8]),
) {
    let mut next = None;
    loop {
        if let Err(e) = read(&app, &stream, &filter, &from, &mut next, &mut each).await {
            tracing::warn!(stream, error = %e, ?next, "stream reading interrupted; reading on");
        }
        tokio::select! {
            _ = app.shutdown.wait() => return,
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
    }
}

/// One consumer's reading; returns at shutdown (Ok) or when it fails.
async fn read(
    app: &App,
    stream: &str,
    filter: &str,
    from: &From,
    next: &mut Option<u64>,
    each: &mut impl FnMut(&str, &[u8]),
) -> Result<(), Error> {
    let js = jetstream::new(app.client.nats().clone());
    let mut s = js.get_stream(stream).await.map_err(Error::nats_source)?;
    let start = match (*next, from) {
        (Some(n), _) => n,
        (None, From::First) => 1,
        (None, From::Last(k)) => {
            let last = s
                .info()
                .await
                .map_err(Error::nats_source)?
                .state
                .last_sequence;
            last.saturating_sub(*k) + 1
        }
    };
    let config = consumer::pull::Config {
        filter_subject: filter.to_string(),
        deliver_policy: consumer::DeliverPolicy::ByStartSequence {
            start_sequence: start,
        },
        ack_policy: consumer::AckPolicy::None,
        inactive_threshold: Duration::from_secs(10),
        memory_storage: true,
        num_replicas: 1,
        ..Default::default()
    };
    let c = s
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
    *next = Some(start);
    loop {
        let m = tokio::select! {
            _ = app.shutdown.wait() => return Ok(()),
            m = msgs.next() => m,
        };
        let m = match m {
            Some(Ok(m)) => m,
            Some(Err(e)) => return Err(Error::nats_source(e)),
            None => return Err(Error::nats("stream consumer ended")),
        };
        let seq = m.info().map_err(Error::nats)?.stream_sequence;
        if next.is_none_or(|n| seq >= n) {
            each(m.subject.as_str(), &m.payload);
            *next = Some(seq + 1);
        }
    }
}
