//! Flow control on the node (contract §15; design in docs/flow-control.md).
//!
//! Before a task's handler starts, the node finds the limits that match
//! its queue and type (a local copy of `P-limits`, kept by a watch) and, for
//! the task's `limit_key`:
//! - takes a running slot: one of the keys `run.<limit>.<key>.<i>`,
//!   `i < max_running`, in `P-limit-state`, written by compare-and-set on
//!   the key's revision (so one slot has one holder) with a per-key TTL of
//!   `node_ttl` that the heartbeat refreshes (a dead node's slots come back
//!   when their TTL runs out);
//! - takes a token: the key `rate.<limit>.<key>` holds the bucket's GCRA
//!   "theoretical arrival time", advanced by `1 / per_second` per start,
//!   by compare-and-set; a start is allowed while it stays within
//!   `burst / per_second` of now.
//!
//! A local copy of `P-limit-state` (another watch) tells which slot is free
//! and the bucket's revision, so a take is one round trip when the copy is
//! current, none when the limit is known to be full. A task that matches
//! no limit costs nothing. A task held back goes back to its queue (see
//! `attempt::hold_back`) and says `throttled_by` to `tasks.get`.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, kv};
use bytes::Bytes;
use futures::StreamExt;
use serde_json::json;
use tokio_util::task::TaskTracker;

use crate::config::MAX_LISTED;
use crate::error::Error;
use crate::shutdown::Shutdown;
use crate::store::limits::{
    limit_state_bucket, limits_bucket, parse_spec, put_if, read_key, release,
};
use crate::wire::protocol::{now_rfc3339, LimitSpec, DEFAULT_LIMIT_KEY};
use crate::wire::subjects::{limit_rate_key, limit_slot_key, parse_limit_slot_key, Subjects};

/// How long a task held back by a full running limit waits before it is
/// looked at again (plus up to as much jitter). Short, so that a slot given
/// back or a limit deleted frees waiting tasks within 1 s.
const RUNNING_RETRY: Duration = Duration::from_millis(250);
/// Bound on any hold-back wait (limit changes apply within 1 s).
const MAX_WAIT: Duration = Duration::from_millis(750);
/// Held-back tasks are reported as throttled for this long.
const THROTTLED_FOR: Duration = Duration::from_secs(2);

/// The slots one admitted task holds; give them back with
/// [`Limits::give_back`] when its handler ends.
#[derive(Debug, Default)]
pub(crate) struct Taken {
    slots: Vec<String>,
}

/// Whether a task may start now.
pub(crate) enum Admission {
    Go(Taken),
    /// Held back by `limit_id`; look again after `wait`.
    Wait {
        limit_id: String,
        wait: Duration,
    },
}

/// A slot this node holds: its revision and task.
struct Held {
    rev: u64,
    value: Bytes,
}

/// The node's copy of `P-limit-state`.
#[derive(Default)]
struct StateCopy {
    /// Last known revision and value (`None`: a marker) of each key.
    keys: HashMap<String, (u64, Option<Bytes>)>,
    /// Held slot indices by (limit id, limit key).
    held: HashMap<(String, String), BTreeSet<u32>>,
    /// Slot indices this node is taking right now (so that its concurrent
    /// takers try different slots instead of racing for one).
    taking: HashMap<(String, String), BTreeSet<u32>>,
}

impl StateCopy {
    /// Records a key's revision and value, unless an older revision.
    fn set(&mut self, key: &str, rev: u64, value: Option<Bytes>) {
        let newer = self
            .keys
            .get(key)
            .is_none_or(|(r, _)| *r <= rev || rev == 0);
        if !newer {
            return;
        }
        if let Some((limit, k, i)) = parse_limit_slot_key(key) {
            let set = self.held.entry((limit.into(), k.into())).or_default();
            if value.is_some() {
                set.insert(i);
            } else {
                set.remove(&i);
            }
        }
        self.keys.insert(key.to_string(), (rev, value));
    }

    fn get(&self, key: &str) -> (u64, Option<Bytes>) {
        self.keys.get(key).cloned().unwrap_or((0, None))
    }

    /// Slots of `limit`/`key` held or being taken now (any index: slots
    /// above a lowered `max_running` count too), and the lowest index below
    /// `max` that is neither.
    fn free_slot(&self, limit: &str, key: &str, max: u32) -> (usize, Option<u32>) {
        let id = (limit.to_string(), key.to_string());
        let (held, taking) = (self.held.get(&id), self.taking.get(&id));
        let n = held.map_or(0, BTreeSet::len) + taking.map_or(0, BTreeSet::len);
        let used =
            |i: &u32| held.is_some_and(|h| h.contains(i)) || taking.is_some_and(|t| t.contains(i));
        (n, (0..max).find(|i| !used(i)))
    }

    /// Marks the lowest free slot below `max` as being taken, if the limit
    /// is not full; returns its index and last known revision.
    fn start_taking(&mut self, limit: &str, key: &str, max: u32) -> Option<(u32, u64)> {
        let (n, free) = self.free_slot(limit, key, max);
        let i = free.filter(|_| n < max as usize)?;
        let id = (limit.to_string(), key.to_string());
        self.taking.entry(id).or_default().insert(i);
        Some((i, self.get(&limit_slot_key(limit, key, i)).0))
    }

    fn done_taking(&mut self, limit: &str, key: &str, i: u32) {
        if let Some(t) = self.taking.get_mut(&(limit.to_string(), key.to_string())) {
            t.remove(&i);
        }
    }
}

/// The node's view of the limits and the slots it holds.
pub(crate) struct Limits {
    js: jetstream::Context,
    specs_store: kv::Store,
    state: kv::Store,
    node_id: String,
    ttl: Duration,
    specs: RwLock<BTreeMap<String, LimitSpec>>,
    cache: Mutex<StateCopy>,
    held: Mutex<HashMap<String, Held>>,
    throttled: Mutex<HashMap<String, (String, Instant)>>,
    throttled_total: Mutex<BTreeMap<String, u64>>,
    /// One token taker per bucket on this node at a time (each take needs
    /// the revision the one before it wrote).
    buckets: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl Limits {
    /// Opens both buckets and reads every limit (so the node starts with
    /// them applied); [`Limits::start`] then keeps both copies current.
    pub(crate) async fn open(
        js: &jetstream::Context,
        subjects: &Subjects,
        replicas: usize,
        node_id: &str,
        ttl: Duration,
    ) -> Result<Arc<Self>, Error> {
        let specs_store = limits_bucket(js, subjects, replicas).await?;
        let state = limit_state_bucket(js, subjects, replicas).await?;
        let limits = Arc::new(Limits {
            js: js.clone(),
            specs_store,
            state,
            node_id: node_id.to_string(),
            ttl: Duration::from_secs(ttl.as_secs().max(1)),
            specs: RwLock::new(BTreeMap::new()),
            cache: Mutex::new(StateCopy::default()),
            held: Mutex::new(HashMap::new()),
            throttled: Mutex::new(HashMap::new()),
            throttled_total: Mutex::new(BTreeMap::new()),
            buckets: Mutex::new(HashMap::new()),
        });
        let mut keys = limits
            .specs_store
            .keys()
            .await
            .map_err(Error::nats_source)?;
        while let Some(k) = keys.next().await {
            let k = k.map_err(Error::nats_source)?;
            if let Ok(Some(v)) = limits.specs_store.get(&k).await {
                limits.apply_spec(&k, Some(&v));
            }
        }
        Ok(limits)
    }

    /// Starts the two watches (owned by `loops`, ended by `shutdown`).
    pub(crate) fn start(self: &Arc<Self>, shutdown: &Shutdown, loops: &TaskTracker) {
        let me = self.clone();
        loops.spawn(watch_loop(
            self.specs_store.clone(),
            shutdown.clone(),
            move |e| {
                me.apply_spec(
                    &e.key,
                    (e.operation == kv::Operation::Put).then_some(&e.value),
                )
            },
        ));
        let me = self.clone();
        loops.spawn(watch_loop(self.state.clone(), shutdown.clone(), move |e| {
            let v = (e.operation == kv::Operation::Put).then_some(e.value);
            me.remember(&e.key, e.revision, v);
        }));
    }

    fn apply_spec(&self, limit_id: &str, value: Option<&Bytes>) {
        let mut specs = self.specs.write().expect("limits poisoned");
        match value.and_then(|v| parse_spec(v)) {
            Some(spec) => specs.insert(limit_id.to_string(), spec),
            None => specs.remove(limit_id),
        };
    }

    fn remember(&self, key: &str, rev: u64, value: Option<Bytes>) {
        let mut c = self.cache.lock().expect("limit cache poisoned");
        c.set(key, rev, value);
    }

    fn cached(&self, key: &str) -> (u64, Option<Bytes>) {
        self.cache.lock().expect("limit cache poisoned").get(key)
    }

    /// The limits a task of `queue` and `task_type` counts against.
    fn matching(&self, queue: &str, task_type: &str) -> Vec<LimitSpec> {
        let specs = self.specs.read().expect("limits poisoned");
        if specs.is_empty() {
            return Vec::new();
        }
        specs
            .values()
            .filter(|s| s.matches(queue, task_type))
            .cloned()
            .collect()
    }

    /// Whether any limit matches tasks of `queue` and `task_type`.
    pub(crate) fn applies_to(&self, queue: &str, task_type: &str) -> bool {
        let specs = self.specs.read().expect("limits poisoned");
        specs.values().any(|s| s.matches(queue, task_type))
    }

    /// Takes what the task needs to start now, or says why it waits.
    pub(crate) async fn admit(
        &self,
        queue: &str,
        task_type: &str,
        limit_key: Option<&str>,
        task_id: &str,
    ) -> Admission {
        let specs = self.matching(queue, task_type);
        if specs.is_empty() {
            return Admission::Go(Taken::default());
        }
        let key = limit_key.unwrap_or(DEFAULT_LIMIT_KEY);
        let mut taken = Taken::default();
        for spec in specs.iter().filter(|s| s.max_running.is_some()) {
            let max = spec.max_running.unwrap_or(1);
            match self.take_slot(&spec.limit_id, key, max, task_id).await {
                Some(slot) => taken.slots.push(slot),
                None => {
                    self.give_back(taken).await;
                    let jitter = RUNNING_RETRY.mul_f64(fastrand::f64());
                    return self.held_back(task_id, &spec.limit_id, RUNNING_RETRY + jitter);
                }
            }
        }
        for spec in &specs {
            let (Some(rate), Some(burst)) = (spec.per_second, spec.burst) else {
                continue;
            };
            if let Err(wait) = self.take_token(&spec.limit_id, key, rate, burst).await {
                self.give_back(taken).await;
                return self.held_back(task_id, &spec.limit_id, wait);
            }
        }
        self.throttled
            .lock()
            .expect("throttled poisoned")
            .remove(task_id);
        Admission::Go(taken)
    }

    fn held_back(&self, task_id: &str, limit_id: &str, wait: Duration) -> Admission {
        {
            let mut t = self.throttled.lock().expect("throttled poisoned");
            if t.len() > 10_000 {
                t.retain(|_, (_, at)| at.elapsed() < THROTTLED_FOR);
            }
            t.insert(task_id.to_string(), (limit_id.to_string(), Instant::now()));
        }
        *self
            .throttled_total
            .lock()
            .expect("throttled poisoned")
            .entry(limit_id.to_string())
            .or_default() += 1;
        Admission::Wait {
            limit_id: limit_id.to_string(),
            wait: wait.clamp(Duration::from_millis(10), MAX_WAIT),
        }
    }

    /// One free slot of `limit`/`key` taken by compare-and-set, or `None`
    /// when every slot is held (or NATS fails: waiting is the safe side).
    async fn take_slot(&self, limit: &str, key: &str, max: u32, task_id: &str) -> Option<String> {
        let value: Bytes = serde_json::to_vec(&json!({
            "node_id": self.node_id, "task_id": task_id, "at": now_rfc3339(),
        }))
        .ok()?
        .into();
        for _ in 0..3 {
            let (i, rev) = self
                .cache
                .lock()
                .expect("limit cache poisoned")
                .start_taking(limit, key, max)?;
            let k = limit_slot_key(limit, key, i);
            let put = put_if(&self.js, &self.state, &k, value.clone(), self.ttl, rev).await;
            self.cache
                .lock()
                .expect("limit cache poisoned")
                .done_taking(limit, key, i);
            match put {
                Ok(Some(new)) => {
                    self.remember(&k, new, Some(value.clone()));
                    let h = Held { rev: new, value };
                    self.held
                        .lock()
                        .expect("held poisoned")
                        .insert(k.clone(), h);
                    return Some(k);
                }
                Ok(None) => self.reread(&k).await?,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot take a limit slot; the task waits");
                    return None;
                }
            }
        }
        None
    }

    async fn reread(&self, key: &str) -> Option<()> {
        let (rev, v) = read_key(&self.state, key).await.ok()?;
        self.remember(key, rev, v);
        Some(())
    }

    /// A token of `limit`/`key`'s bucket, or how long until there is one.
    async fn take_token(
        &self,
        limit: &str,
        key: &str,
        rate: f64,
        burst: u32,
    ) -> Result<(), Duration> {
        let k = limit_rate_key(limit, key);
        let interval = 1.0 / rate;
        let tolerance = burst as f64 * interval;
        let ttl = Duration::from_secs(tolerance.ceil() as u64 + 1);
        let lock = {
            let mut b = self.buckets.lock().expect("buckets poisoned");
            if b.len() > 10_000 {
                b.retain(|_, l| Arc::strong_count(l) > 1);
            }
            b.entry(k.clone()).or_default().clone()
        };
        let _one_at_a_time = lock.lock().await;
        for _ in 0..3 {
            let (rev, v) = self.cached(&k);
            let tat: f64 = v
                .and_then(|b| std::str::from_utf8(&b).ok()?.parse().ok())
                .unwrap_or(0.0);
            let now = unix_now();
            let next = tat.max(now) + interval;
            if next - now > tolerance + 1e-6 {
                return Err(Duration::from_secs_f64(next - tolerance - now));
            }
            let body = Bytes::from(format!("{next:.6}"));
            match put_if(&self.js, &self.state, &k, body.clone(), ttl, rev).await {
                Ok(Some(new)) => {
                    self.remember(&k, new, Some(body));
                    return Ok(());
                }
                Ok(None) => {
                    self.reread(&k).await.ok_or(MAX_WAIT)?;
                }
                Err(_) => return Err(MAX_WAIT),
            }
        }
        Err(Duration::from_millis(20))
    }

    /// Gives back the slots an admitted task held (its handler ended).
    pub(crate) async fn give_back(&self, taken: Taken) {
        for k in taken.slots {
            let Some(h) = self.held.lock().expect("held poisoned").remove(&k) else {
                continue;
            };
            match release(&self.state, &k, h.rev).await {
                Ok(()) => self.remember(&k, 0, None),
                Err(e) => {
                    tracing::warn!(key = %k, error = %e, "limit slot not given back; it expires with its TTL")
                }
            }
        }
    }

    /// Refreshes the TTL of every slot this node holds (with the heartbeat).
    pub(crate) async fn refresh(&self) {
        let held: Vec<(String, u64, Bytes)> = {
            let h = self.held.lock().expect("held poisoned");
            h.iter()
                .map(|(k, v)| (k.clone(), v.rev, v.value.clone()))
                .collect()
        };
        for (k, rev, value) in held {
            match put_if(&self.js, &self.state, &k, value.clone(), self.ttl, rev).await {
                Ok(Some(new)) => {
                    if let Some(h) = self.held.lock().expect("held poisoned").get_mut(&k) {
                        h.rev = new;
                    }
                    self.remember(&k, new, Some(value));
                }
                Ok(None) => {
                    // It expired (the node was paused or cut off longer than
                    // its TTL) and may be someone else's now.
                    tracing::warn!(key = %k, "limit slot lost (expired); not refreshed");
                    self.held.lock().expect("held poisoned").remove(&k);
                }
                Err(e) => tracing::debug!(key = %k, error = %e, "limit slot not refreshed"),
            }
        }
    }

    /// The limit that held `task_id` back here lately, if one did.
    pub(crate) fn throttled_by(&self, task_id: &str) -> Option<String> {
        let t = self.throttled.lock().expect("throttled poisoned");
        t.get(task_id)
            .filter(|(_, at)| at.elapsed() < THROTTLED_FOR)
            .map(|(l, _)| l.clone())
    }

    /// Hold-backs so far, by limit (for the heartbeat's metadata).
    /// Tasks held back per limit since the node started: the
    /// [`MAX_LISTED`] limits with the most (the map travels in every
    /// discovery entry).
    pub(crate) fn throttled_counts(&self) -> BTreeMap<String, u64> {
        let all = self.throttled_total.lock().expect("throttled poisoned");
        if all.len() <= MAX_LISTED {
            return all.clone();
        }
        let mut by_count: Vec<(&String, &u64)> = all.iter().collect();
        by_count.sort_by(|a, b| b.1.cmp(a.1));
        by_count
            .into_iter()
            .take(MAX_LISTED)
            .map(|(k, v)| (k.clone(), *v))
            .collect()
    }
}

fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// Applies every entry of a bucket (its current keys first), watching again
/// with backoff when the watch's consumer is lost (a server died, it was
/// deleted, the node was paused), until `shutdown`.
async fn watch_loop(store: kv::Store, shutdown: Shutdown, apply: impl Fn(kv::Entry)) {
    let mut delay = Duration::from_millis(100);
    loop {
        let watch = tokio::select! {
            _ = shutdown.wait() => return,
            w = store.watch_with_history(">") => w,
        };
        match watch {
            Ok(mut w) => loop {
                let next = tokio::select! {
                    _ = shutdown.wait() => return,
                    e = w.next() => e,
                };
                match next {
                    Some(Ok(e)) => {
                        delay = Duration::from_millis(100);
                        apply(e)
                    }
                    other => {
                        tracing::warn!(ended = other.is_none(), bucket = %store.name, "limit watch lost; watching again");
                        break;
                    }
                }
            },
            Err(e) => tracing::debug!(error = %e, "limit watch not started"),
        }
        tokio::select! {
            _ = shutdown.wait() => return,
            _ = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(Duration::from_secs(2));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_state_copy_finds_the_lowest_free_slot_without_scanning_the_limit() {
        let mut c = StateCopy::default();
        let v = || Some(Bytes::from_static(b"{}"));
        assert_eq!(c.free_slot("db", "A", 100_000), (0, Some(0)));
        c.set("run.db.A.0", 1, v());
        c.set("run.db.A.1", 2, v());
        c.set("run.db.B.0", 3, v());
        assert_eq!(c.free_slot("db", "A", 100_000), (2, Some(2)));
        assert_eq!(c.free_slot("db", "A", 2), (2, None));
        // Given back (a purge marker): free again; an older event is ignored.
        c.set("run.db.A.0", 4, None);
        c.set("run.db.A.0", 1, v());
        assert_eq!(c.free_slot("db", "A", 2), (1, Some(0)));
        // A slot above a lowered max still counts.
        c.set("run.db.A.7", 5, v());
        assert_eq!(c.free_slot("db", "A", 2), (2, Some(0)));
        assert_eq!(c.get("run.db.A.0").0, 4);
    }
}
