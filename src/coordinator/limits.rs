//! `P.api.limits.*` (contract §15): limits are kept in the `P-limits` KV
//! bucket, one key per limit id; every node watches it and enforces them
//! (see docs/flow-control.md). `list` counts the running slots held in
//! `P-limit-state` now.

use std::collections::BTreeMap;

use futures::StreamExt;
use serde_json::{json, Value};

use super::CoordinatorState;
use crate::error::{Error, ErrorCode};
use crate::store::limits::{limit_state_bucket, limits_bucket, parse_spec};
use crate::store::write_settled;
use crate::wire::protocol::{LimitInfo, LimitList, LimitRef, LimitSpec};
use crate::wire::subjects::parse_limit_slot_key;

/// `limits.set`: checks the limit and stores it (replacing one with the
/// same id).
pub(super) async fn set(s: &CoordinatorState, spec: LimitSpec) -> Result<Value, Error> {
    let spec = spec.validated()?;
    let store = limits_bucket(&s.js, &s.subjects, s.cfg.replicas).await?;
    let body = serde_json::to_vec(&spec)?;
    let body = bytes::Bytes::from(body);
    write_settled(|| store.put(&spec.limit_id, body.clone()))
        .await
        .map_err(Error::nats_source)?;
    Ok(json!({"ok": true, "limit_id": spec.limit_id}))
}

/// `limits.list`: every limit with its running tasks by key.
pub(super) async fn list(s: &CoordinatorState) -> Result<Value, Error> {
    let store = limits_bucket(&s.js, &s.subjects, s.cfg.replicas).await?;
    let running = running_by_limit(s).await?;
    let mut limits = Vec::new();
    let mut keys = store.keys().await.map_err(Error::nats_source)?;
    while let Some(k) = keys.next().await {
        let k = k.map_err(Error::nats_source)?;
        let Ok(Some(v)) = store.get(&k).await else {
            continue;
        };
        let Some(spec) = parse_spec(&v) else { continue };
        limits.push(LimitInfo {
            running: running.get(&spec.limit_id).cloned().unwrap_or_default(),
            limit_id: spec.limit_id,
            queue: spec.queue,
            task_type: spec.task_type,
            max_running: spec.max_running,
            per_second: spec.per_second,
            burst: spec.burst,
        });
    }
    limits.sort_by(|a, b| a.limit_id.cmp(&b.limit_id));
    Ok(serde_json::to_value(LimitList { limits })?)
}

/// Held running slots: limit id -> limit key -> count.
pub(crate) async fn running_by_limit(
    s: &CoordinatorState,
) -> Result<BTreeMap<String, BTreeMap<String, u32>>, Error> {
    let state = limit_state_bucket(&s.js, &s.subjects, s.cfg.replicas).await?;
    let mut out: BTreeMap<String, BTreeMap<String, u32>> = BTreeMap::new();
    let mut keys = state.keys().await.map_err(Error::nats_source)?;
    while let Some(k) = keys.next().await {
        let k = k.map_err(Error::nats_source)?;
        if let Some((limit, key, _)) = parse_limit_slot_key(&k) {
            *out.entry(limit.to_string())
                .or_default()
                .entry(key.to_string())
                .or_default() += 1;
        }
    }
    Ok(out)
}

/// `limits.delete`: removes a limit (its waiting tasks start within 1 s).
pub(super) async fn delete(s: &CoordinatorState, r: LimitRef) -> Result<Value, Error> {
    crate::wire::protocol::validate_limit_name("limit_id", &r.limit_id)?;
    let store = limits_bucket(&s.js, &s.subjects, s.cfg.replicas).await?;
    let exists = store
        .get(&r.limit_id)
        .await
        .map_err(Error::nats_source)?
        .is_some();
    if !exists {
        return Err(Error::invalid(
            ErrorCode::NotFound,
            format!("no limit {:?}", r.limit_id),
        ));
    }
    write_settled(|| store.delete(&r.limit_id))
        .await
        .map_err(Error::nats_source)?;
    Ok(json!({"ok": true, "limit_id": r.limit_id}))
}
