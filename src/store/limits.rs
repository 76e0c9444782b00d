//! Flow-control state in NATS (contract §15; design in
//! docs/flow-control.md):
//! - `P-limits`: one key per limit id, the [`LimitSpec`] as JSON. The API
//!   writes it; every node watches it.
//! - `P-limit-state`: per limit and limit key, the running slots
//!   (`run.<limit>.<key>.<i>`, `i < max_running`, each held by one task,
//!   with a per-key TTL its node refreshes with its heartbeat) and the token
//!   bucket (`rate.<limit>.<key>`, the GCRA "theoretical arrival time").
//!   Every write is a compare-and-set on the key's last revision, so two
//!   nodes never take the same slot or the same token.

use std::time::Duration;

use async_nats::jetstream::{self, context::PublishErrorKind, kv};
use bytes::Bytes;

use super::{bucket_config, open_bucket};
use crate::error::Error;
use crate::wire::protocol::LimitSpec;
use crate::wire::subjects::Subjects;

/// How long a given-back slot's marker stays (then the key is gone).
pub const RELEASED_MARKER_TTL: Duration = Duration::from_secs(60);

/// Opens (or creates) `P-limits`.
pub async fn limits_bucket(
    js: &jetstream::Context,
    subjects: &Subjects,
    replicas: usize,
) -> Result<kv::Store, Error> {
    let c = bucket_config(
        subjects.limits_bucket(),
        "jetweave flow-control limits",
        replicas,
        None,
        false,
    );
    open_bucket(js, c).await
}

/// Opens (or creates) `P-limit-state`: per-key TTLs need limit markers; an
/// hour's max age clears markers and idle token buckets (a bucket that
/// aged out is full, which is what an absent key means).
pub async fn limit_state_bucket(
    js: &jetstream::Context,
    subjects: &Subjects,
    replicas: usize,
) -> Result<kv::Store, Error> {
    let c = bucket_config(
        subjects.limit_state_bucket(),
        "jetweave running slots and token buckets of the limits (per-key TTL)",
        replicas,
        Some(Duration::from_secs(3600)),
        true,
    );
    open_bucket(js, c).await
}

/// Parses a limit as stored (`None` when unreadable).
pub fn parse_spec(value: &[u8]) -> Option<LimitSpec> {
    serde_json::from_slice::<LimitSpec>(value)
        .ok()
        .and_then(|s| s.validated().ok())
}

/// Writes `value` under `key` with a per-key `ttl` if the key's last
/// revision is still `expected` (0: the key has no message). `Ok(Some(rev))`
/// with the new revision, `Ok(None)` when someone else wrote first.
pub async fn put_if(
    js: &jetstream::Context,
    store: &kv::Store,
    key: &str,
    value: Bytes,
    ttl: Duration,
    expected: u64,
) -> Result<Option<u64>, Error> {
    let prefix = store.put_prefix.as_ref().unwrap_or(&store.prefix);
    let m = jetstream::message::PublishMessage::build()
        .payload(value)
        .ttl(Duration::from_secs(ttl.as_secs().max(1)))
        .expected_last_subject_sequence(expected);
    let ack = js
        .send_publish(format!("{prefix}{key}"), m)
        .await
        .map_err(Error::nats_source)?;
    match ack.await {
        Ok(a) => Ok(Some(a.sequence)),
        Err(e) if e.kind() == PublishErrorKind::WrongLastSequence => Ok(None),
        Err(e) => Err(Error::nats_source(e)),
    }
}

/// The last revision of `key` (0 when it has no message) and its value
/// when it holds one (not a delete or purge marker).
pub async fn read_key(store: &kv::Store, key: &str) -> Result<(u64, Option<Bytes>), Error> {
    match store.entry(key).await.map_err(Error::nats_source)? {
        None => Ok((0, None)),
        Some(e) if e.operation == kv::Operation::Put => Ok((e.revision, Some(e.value))),
        Some(e) => Ok((e.revision, None)),
    }
}

/// Gives a slot back if this holder still has it (revision `rev`): a purge
/// marker that itself expires after [`RELEASED_MARKER_TTL`].
pub async fn release(store: &kv::Store, key: &str, rev: u64) -> Result<(), Error> {
    store
        .purge_expect_revision_with_ttl(key, rev, RELEASED_MARKER_TTL)
        .await
        .map_err(Error::nats_source)
}
