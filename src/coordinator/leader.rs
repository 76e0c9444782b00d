//! Leader election through a lease key in the `P-leader` KV bucket.
//!
//! The lease is the key `coordinator` holding the leader's id, written with
//! a per-key TTL (`lease_ttl`). The leader renews it every `lease_ttl / 3`
//! with `Nats-Expected-Last-Subject-Sequence` = its last revision, so a
//! stale leader's renewal is rejected. A standby checks every 250 ms: when
//! the key is gone (TTL purge marker, delete) it writes its own id with the
//! marker's sequence as the expected one, so exactly one standby wins.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use async_nats::jetstream::{self, kv};
use serde_json::json;
use tokio::sync::watch;
use tokio_util::task::TaskTracker;

use crate::error::Error;
use crate::shutdown::Shutdown;
use crate::wire::protocol::now_rfc3339;
use crate::wire::subjects::Subjects;

const KEY: &str = "coordinator";
const STANDBY_POLL: Duration = Duration::from_millis(250);
const READ_TIMEOUT: Duration = Duration::from_millis(500);

#[derive(Default)]
struct State {
    /// Our last revision of the key while we lead.
    revision: Option<u64>,
    /// Who leads, as last seen.
    current: Option<String>,
}

/// The lease handle of one coordinator.
#[derive(Clone)]
pub struct Leader {
    id: String,
    ttl: Duration,
    store: kv::Store,
    state: Arc<RwLock<State>>,
    changed: watch::Sender<bool>,
}

impl Leader {
    pub(crate) async fn open(
        js: &jetstream::Context,
        subjects: &Subjects,
        id: &str,
        ttl: Duration,
        replicas: usize,
    ) -> Result<Self, Error> {
        let store = crate::store::open_bucket(
            js,
            kv::Config {
                bucket: subjects.leader_bucket(),
                description: "jetweave coordinator leader lease".into(),
                history: 1,
                num_replicas: replicas.max(1),
                storage: jetstream::stream::StorageType::File,
                limit_markers: Some(Duration::from_secs(60)),
                ..Default::default()
            },
        )
        .await?;
        let (changed, _) = watch::channel(false);
        Ok(Leader {
            id: id.to_string(),
            ttl,
            store,
            state: Arc::default(),
            changed,
        })
    }

    /// Does this coordinator lead?
    pub fn is_leader(&self) -> bool {
        self.state
            .read()
            .map(|s| s.revision.is_some())
            .unwrap_or(false)
    }

    /// The leading coordinator's id, as last seen.
    pub fn current(&self) -> Option<String> {
        self.state.read().expect("lock poisoned").current.clone()
    }

    /// Changes of our leadership (true = we lead).
    pub fn subscribe(&self) -> watch::Receiver<bool> {
        self.changed.subscribe()
    }

    fn subject(&self) -> String {
        let prefix = self.store.put_prefix.as_ref().unwrap_or(&self.store.prefix);
        format!("{prefix}{KEY}")
    }

    async fn write(&self, js: &jetstream::Context, expected: u64) -> Result<u64, Error> {
        let body =
            serde_json::to_vec(&json!({"coordinator_id": self.id, "renewed_at": now_rfc3339()}))
                .unwrap_or_default();
        let ack = js
            .send_publish(
                self.subject(),
                jetstream::message::PublishMessage::build()
                    .payload(body.into())
                    .ttl(self.ttl)
                    .expected_last_subject_sequence(expected),
            )
            .await
            .map_err(Error::nats_source)?
            .await
            .map_err(Error::nats_source)?;
        Ok(ack.sequence)
    }

    fn set(&self, revision: Option<u64>, current: Option<String>) {
        let was = self.is_leader();
        {
            let mut s = self.state.write().expect("lock poisoned");
            s.revision = revision;
            s.current = current;
        }
        let now = revision.is_some();
        if was != now {
            tracing::info!(id = %self.id, leader = now, "leadership changed");
            let _ = self.changed.send(now);
        }
    }

    /// One step: renew if we lead, else try to take a free lease.
    async fn step(&self, js: &jetstream::Context) {
        let ours = self.state.read().expect("lock poisoned").revision;
        if let Some(rev) = ours {
            match self.write(js, rev).await {
                Ok(r) => self.set(Some(r), Some(self.id.clone())),
                Err(e) => {
                    tracing::warn!(error = %e, "lost the leader lease");
                    self.set(None, None);
                }
            }
            return;
        }
        // Who holds it? Read the last message of the key, markers included,
        // from the stream leader (a replica a moment behind would name an
        // old sequence, and the write below would be refused).
        // A read the server leaves unanswered (seen once on a cluster, at
        // the moment the lease expired) must cost one poll, not the
        // client's 5 s request timeout.
        let stream = &self.store.stream;
        let subject = self.subject();
        let read = stream.get_last_raw_message_by_subject(&subject);
        let Ok(last) = tokio::time::timeout(READ_TIMEOUT, read).await else {
            tracing::debug!("lease read unanswered; trying again");
            return;
        };
        match last {
            Ok(m) => {
                let op = m
                    .headers
                    .get("KV-Operation")
                    .map(|v| v.as_str().to_string());
                let marker = m.headers.get("Nats-Marker-Reason").is_some();
                if op.is_some() || marker || m.payload.is_empty() {
                    // Deleted, purged or expired: free.
                    if let Ok(r) = self.write(js, m.sequence).await {
                        self.set(Some(r), Some(self.id.clone()));
                    }
                } else {
                    let holder = serde_json::from_slice::<serde_json::Value>(&m.payload)
                        .ok()
                        .and_then(|v| v["coordinator_id"].as_str().map(str::to_string));
                    self.set(None, holder);
                }
            }
            Err(e) if e.kind() == jetstream::stream::LastRawMessageErrorKind::NoMessageFound => {
                // Never written.
                if let Ok(r) = self.write(js, 0).await {
                    self.set(Some(r), Some(self.id.clone()));
                }
            }
            Err(e) => tracing::debug!(error = %e, "lease not read; trying again"),
        }
    }

    pub(crate) fn spawn(self, shutdown: Shutdown, js: jetstream::Context, tracker: &TaskTracker) {
        tracker.spawn(async move {
            loop {
                self.step(&js).await;
                let wait = if self.is_leader() {
                    self.ttl / 3
                } else {
                    STANDBY_POLL
                };
                tokio::select! {
                    _ = shutdown.wait() => break,
                    _ = tokio::time::sleep(wait) => {}
                }
            }
        });
    }

    /// Gives the lease up (clean shutdown), so a standby takes over at once.
    pub(crate) async fn release(&self, _js: &jetstream::Context) {
        let rev = self.state.read().expect("lock poisoned").revision;
        if let Some(rev) = rev {
            let _ = self.store.delete_expect_revision(KEY, Some(rev)).await;
            self.set(None, None);
        }
    }
}
