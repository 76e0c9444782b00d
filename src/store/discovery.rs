//! Discovery: which nodes are alive, and a stream of them joining and leaving.
//!
//! [`KvDiscovery`] keeps one [`NodeInfo`] per node in the `P-nodes` KV
//! bucket. Every write carries a per-key TTL (`node_ttl`), and the bucket has
//! limit markers, so a node that dies without a word is purged by the server
//! when its TTL runs out and every watcher receives a purge entry for it.
//! [`StaticDiscovery`] is a fixed `node_id -> url` map behind the same
//! [`Discovery`] trait. [`ClusterView`] is a live, in-memory copy of the
//! bucket kept current by a watch (no polling), used by nodes and the
//! coordinator.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use async_nats::jetstream::{self, kv};
use bytes::Bytes;
use futures::stream::BoxStream;
use futures::StreamExt;
use serde_json::{Map, Value};
use tokio::sync::broadcast;
use tokio_util::task::TaskTracker;

use super::open_bucket;
use crate::error::Error;
use crate::shutdown::Shutdown;
use crate::wire::protocol::{now_rfc3339, Health, NodeInfo, Role};
use crate::wire::subjects::Subjects;

/// A node as found by discovery.
#[derive(Debug, Clone, PartialEq)]
pub struct DiscoveredNode {
    /// The node id.
    pub node_id: String,
    /// Base URL of its HTTP API (trailing slashes stripped), if any.
    pub url: Option<String>,
    /// When it was found (RFC 3339).
    pub discovered_at: String,
    /// Free-form metadata.
    pub metadata: Map<String, Value>,
    /// The full entry, when the backend has one.
    pub info: Option<NodeInfo>,
}

/// A change seen by [`Discovery::watch`].
#[derive(Debug, Clone, PartialEq)]
pub enum DiscoveryEvent {
    /// A node appeared.
    Joined(DiscoveredNode),
    /// A known node refreshed or changed its entry.
    Updated(DiscoveredNode),
    /// A node went away.
    Left {
        /// The node id.
        node_id: String,
        /// `deleted` (clean shutdown) or `expired` (TTL ran out).
        reason: LeaveReason,
    },
}

/// Why a node left.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaveReason {
    /// It deleted its entry (clean shutdown or unregister).
    Deleted,
    /// Its TTL ran out.
    Expired,
}

/// What every discovery backend offers.
pub trait Discovery: Send + Sync {
    /// Every live node.
    fn discover(&self) -> impl Future<Output = Result<Vec<DiscoveredNode>, Error>> + Send;
    /// Makes a node discoverable.
    fn register(
        &self,
        node_id: &str,
        url: Option<&str>,
        metadata: Map<String, Value>,
    ) -> impl Future<Output = Result<(), Error>> + Send;
    /// Removes a node.
    fn unregister(&self, node_id: &str) -> impl Future<Output = Result<(), Error>> + Send;
    /// Joins and leaves from now on (a KV backend first replays the live
    /// nodes as `Joined`).
    fn watch(
        &self,
    ) -> impl Future<Output = Result<BoxStream<'static, DiscoveryEvent>, Error>> + Send;
}

fn strip_url(u: &str) -> String {
    u.trim_end_matches('/').to_string()
}

/// An entry of `P-nodes` as a NodeInfo, if it is one: it parses, and it
/// names the node of its key. Anything else (garbage written by hand, a
/// copy of another node's entry) is logged and ignored, never listed.
fn parse_entry(key: &str, value: &[u8]) -> Option<NodeInfo> {
    match serde_json::from_slice::<NodeInfo>(value) {
        Ok(info) if info.node_id == key => Some(info),
        Ok(info) => {
            tracing::warn!(key, node_id = %info.node_id, "ignoring a discovery entry for another node id");
            None
        }
        Err(e) => {
            tracing::warn!(key, error = %e, "ignoring a discovery entry that is not a NodeInfo");
            None
        }
    }
}

fn to_discovered(info: NodeInfo) -> DiscoveredNode {
    DiscoveredNode {
        node_id: info.node_id.clone(),
        url: info.url.as_deref().map(strip_url),
        discovered_at: now_rfc3339(),
        metadata: info.metadata.clone(),
        info: Some(info),
    }
}

/// A host known by its URL that runs no jetweave node (contract §1's
/// static discovery; `[[static_node]]` in a config file).
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
pub struct StaticNode {
    /// Its id (`[A-Za-z0-9_-]{1,64}`).
    pub node_id: String,
    /// Its URL (a trailing slash is stripped).
    pub url: String,
}

/// The entry of something registered in discovery that runs no node: no
/// queues, no slots, no handlers.
fn entry_without_node(node_id: &str, url: Option<&str>, metadata: Map<String, Value>) -> NodeInfo {
    let now = now_rfc3339();
    NodeInfo {
        node_id: node_id.to_string(),
        role: Role::Worker,
        hostname: gethostname::gethostname().to_string_lossy().into_owned(),
        pid: std::process::id(),
        url: url.map(strip_url),
        queues: vec![],
        capabilities: vec![],
        max_concurrency: 0,
        health: Health::Healthy,
        active_tasks: 0,
        started_at: now.clone(),
        last_heartbeat_at: now,
        state: Default::default(),
        uptime_s: 0.0,
        available: true,
        metadata,
    }
}

/// Discovery in the `P-nodes` JetStream KV bucket with per-key TTLs.
#[derive(Clone)]
pub struct KvDiscovery {
    js: jetstream::Context,
    store: kv::Store,
    ttl: Duration,
}

impl KvDiscovery {
    /// Opens (or creates) the bucket. `ttl` is the TTL of every entry
    /// written through this handle (whole seconds).
    pub async fn open(
        client: async_nats::Client,
        subjects: &Subjects,
        ttl: Duration,
        replicas: usize,
    ) -> Result<Self, Error> {
        let js = jetstream::new(client);
        let store = open_bucket(
            &js,
            kv::Config {
                bucket: subjects.nodes_bucket(),
                description: "jetweave node discovery (per-key TTL)".into(),
                history: 1,
                storage: jetstream::stream::StorageType::File,
                num_replicas: replicas.max(1),
                // Limit markers make the server tell watchers when a key's
                // TTL runs out; they are kept this long.
                limit_markers: Some(Duration::from_secs(60)),
                ..Default::default()
            },
        )
        .await?;
        Ok(KvDiscovery {
            js,
            store,
            ttl: Duration::from_secs(ttl.as_secs().max(1)),
        })
    }

    /// Writes `info` with this handle's TTL. `create_with_ttl` is not used:
    /// on a key whose last entry is a delete marker it writes without TTL,
    /// so a node that re-registered would never expire.
    pub async fn put_info(&self, info: &NodeInfo) -> Result<u64, Error> {
        let body = serde_json::to_vec(info)?;
        self.put_raw(&info.node_id, body.into()).await
    }

    async fn put_raw(&self, key: &str, body: Bytes) -> Result<u64, Error> {
        let prefix = self.store.put_prefix.as_ref().unwrap_or(&self.store.prefix);
        let subject = format!("{prefix}{key}");
        let ack = self
            .js
            .send_publish(
                subject,
                jetstream::message::PublishMessage::build()
                    .payload(body)
                    .ttl(self.ttl),
            )
            .await
            .map_err(Error::nats_source)?
            .await
            .map_err(Error::nats_source)?;
        Ok(ack.sequence)
    }

    /// Writes a static node's entry **without** a TTL (it has no
    /// heartbeat): listed until [`KvDiscovery::delete`]. It runs nothing
    /// (`max_concurrency` 0, no handlers, `available` false) and says
    /// `metadata.static = true`.
    pub async fn put_static(
        &self,
        node: &StaticNode,
        metadata: Map<String, Value>,
    ) -> Result<(), Error> {
        crate::wire::subjects::validate_id("node id", &node.node_id)?;
        if !(node.url.starts_with("http://") || node.url.starts_with("https://")) {
            return Err(Error::invalid(
                crate::error::ErrorCode::InvalidValue,
                format!("url must be http(s)://..., got {:?}", node.url),
            ));
        }
        let mut metadata = metadata;
        metadata.insert("static".into(), Value::Bool(true));
        let mut info = entry_without_node(&node.node_id, Some(&node.url), metadata);
        (info.hostname, info.pid, info.available) = (String::new(), 0, false);
        let body = serde_json::to_vec(&info)?;
        self.store
            .put(&node.node_id, body.into())
            .await
            .map_err(Error::nats_source)?;
        Ok(())
    }

    /// One node's entry.
    pub async fn get(&self, node_id: &str) -> Result<Option<NodeInfo>, Error> {
        match self.store.get(node_id).await.map_err(Error::nats_source)? {
            Some(b) => Ok(parse_entry(node_id, &b)),
            None => Ok(None),
        }
    }

    /// Every live entry, parsed (unparseable entries are skipped).
    pub async fn nodes(&self) -> Result<Vec<NodeInfo>, Error> {
        let mut keys = self.store.keys().await.map_err(Error::nats_source)?;
        let mut out = Vec::new();
        while let Some(k) = keys.next().await {
            let Ok(k) = k else { continue };
            if let Some(info) = self.get(&k).await? {
                out.push(info);
            }
        }
        out.sort_by(|a, b| a.node_id.cmp(&b.node_id));
        Ok(out)
    }

    /// Deletes a node's entry (watchers see a delete).
    pub async fn delete(&self, node_id: &str) -> Result<(), Error> {
        self.store.delete(node_id).await.map_err(Error::nats_source)
    }
}

impl Discovery for KvDiscovery {
    async fn discover(&self) -> Result<Vec<DiscoveredNode>, Error> {
        Ok(self.nodes().await?.into_iter().map(to_discovered).collect())
    }

    async fn register(
        &self,
        node_id: &str,
        url: Option<&str>,
        metadata: Map<String, Value>,
    ) -> Result<(), Error> {
        crate::wire::subjects::validate_id("node id", node_id)?;
        let info = entry_without_node(node_id, url, metadata);
        self.put_info(&info).await.map(|_| ())
    }

    async fn unregister(&self, node_id: &str) -> Result<(), Error> {
        self.delete(node_id).await
    }

    async fn watch(&self) -> Result<BoxStream<'static, DiscoveryEvent>, Error> {
        let watch = self
            .store
            .watch_with_history(">")
            .await
            .map_err(Error::nats_source)?;
        let mut known = std::collections::HashSet::new();
        // The stream ends at the first error (its consumer was lost), so
        // the caller can watch again rather than wait on a dead watch.
        let watch = watch.take_while(|e| futures::future::ready(e.is_ok()));
        let s = watch.filter_map(move |entry| {
            let ev = match entry {
                Ok(e) => match e.operation {
                    kv::Operation::Put => match parse_entry(&e.key, &e.value).ok_or(()) {
                        Ok(info) => {
                            let d = to_discovered(info);
                            if known.insert(e.key.clone()) {
                                Some(DiscoveryEvent::Joined(d))
                            } else {
                                Some(DiscoveryEvent::Updated(d))
                            }
                        }
                        Err(_) => None,
                    },
                    kv::Operation::Delete | kv::Operation::Purge => {
                        if known.remove(&e.key) {
                            Some(DiscoveryEvent::Left {
                                node_id: e.key.clone(),
                                reason: if e.operation == kv::Operation::Purge {
                                    LeaveReason::Expired
                                } else {
                                    LeaveReason::Deleted
                                },
                            })
                        } else {
                            None
                        }
                    }
                },
                Err(_) => None,
            };
            futures::future::ready(ev)
        });
        Ok(s.boxed())
    }
}

/// A fixed `node_id -> url` map (trailing slashes stripped), for
/// fixed-topology deployments and tests.
#[derive(Clone)]
pub struct StaticDiscovery {
    nodes: Arc<RwLock<BTreeMap<String, String>>>,
    tx: broadcast::Sender<DiscoveryEvent>,
}

impl StaticDiscovery {
    /// A map of node ids to URLs.
    pub fn new<I, K, V>(nodes: I) -> Self
    where
        I: IntoIterator<Item = (K, V)>,
        K: Into<String>,
        V: AsRef<str>,
    {
        let (tx, _) = broadcast::channel(256);
        StaticDiscovery {
            nodes: Arc::new(RwLock::new(
                nodes
                    .into_iter()
                    .map(|(k, v)| (k.into(), strip_url(v.as_ref())))
                    .collect(),
            )),
            tx,
        }
    }

    fn node(node_id: &str, url: &str) -> DiscoveredNode {
        DiscoveredNode {
            node_id: node_id.to_string(),
            url: Some(url.to_string()),
            discovered_at: now_rfc3339(),
            metadata: Map::new(),
            info: None,
        }
    }
}

impl Discovery for StaticDiscovery {
    async fn discover(&self) -> Result<Vec<DiscoveredNode>, Error> {
        let nodes = self.nodes.read().expect("static discovery poisoned");
        Ok(nodes.iter().map(|(k, v)| Self::node(k, v)).collect())
    }

    async fn register(
        &self,
        node_id: &str,
        url: Option<&str>,
        metadata: Map<String, Value>,
    ) -> Result<(), Error> {
        crate::wire::subjects::validate_id("node id", node_id)?;
        let url = strip_url(url.unwrap_or_default());
        let fresh = {
            let mut nodes = self.nodes.write().expect("static discovery poisoned");
            nodes.insert(node_id.to_string(), url.clone()).is_none()
        };
        let mut d = Self::node(node_id, &url);
        d.metadata = metadata;
        let _ = self.tx.send(if fresh {
            DiscoveryEvent::Joined(d)
        } else {
            DiscoveryEvent::Updated(d)
        });
        Ok(())
    }

    async fn unregister(&self, node_id: &str) -> Result<(), Error> {
        let removed = {
            let mut nodes = self.nodes.write().expect("static discovery poisoned");
            nodes.remove(node_id).is_some()
        };
        if removed {
            let _ = self.tx.send(DiscoveryEvent::Left {
                node_id: node_id.to_string(),
                reason: LeaveReason::Deleted,
            });
        }
        Ok(())
    }

    async fn watch(&self) -> Result<BoxStream<'static, DiscoveryEvent>, Error> {
        let rx = self.tx.subscribe();
        Ok(tokio_stream_from(rx))
    }
}

fn tokio_stream_from(
    rx: broadcast::Receiver<DiscoveryEvent>,
) -> BoxStream<'static, DiscoveryEvent> {
    futures::stream::unfold(rx, |mut rx| async move {
        loop {
            match rx.recv().await {
                Ok(ev) => return Some((ev, rx)),
                Err(broadcast::error::RecvError::Lagged(_)) => continue,
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    })
    .boxed()
}

/// A live in-memory copy of the `P-nodes` bucket, updated from a KV watch.
#[derive(Clone, Default)]
pub struct ClusterView {
    nodes: Arc<RwLock<BTreeMap<String, NodeInfo>>>,
    events: Option<broadcast::Sender<DiscoveryEvent>>,
}

impl ClusterView {
    /// Starts watching; returns once the current entries are loaded. The
    /// watch loop runs on `tracker` and ends with `shutdown`.
    pub async fn start(
        discovery: &KvDiscovery,
        shutdown: Shutdown,
        tracker: &TaskTracker,
    ) -> Result<Self, Error> {
        let (tx, _) = broadcast::channel(1024);
        let view = ClusterView {
            nodes: Arc::default(),
            events: Some(tx),
        };
        // Load the current state first so callers see it at once.
        for info in discovery.nodes().await? {
            {
                let mut n = view.nodes.write().expect("lock poisoned");
                n.insert(info.node_id.clone(), info);
            }
        }
        // At start a busy or electing cluster may time the watch out.
        let unavailable = |e: &Error| e.kind() == crate::error::ErrorKind::Unavailable;
        let mut stream = super::settle(|| discovery.watch(), unavailable).await?;
        let v = view.clone();
        let d = discovery.clone();
        tracker.spawn(async move {
            loop {
                tokio::select! {
                    _ = shutdown.wait() => break,
                    ev = stream.next() => match ev {
                        Some(ev) => v.apply(ev),
                        None => match v.resync(&d, &shutdown).await {
                            Some(s) => stream = s,
                            None => break,
                        },
                    },
                }
            }
        });
        Ok(view)
    }

    /// The watch ended (its consumer was lost with a server, or deleted):
    /// watch again with backoff, and report nodes that left meanwhile as
    /// expired (the new watch replays the ones still there). `None` on
    /// shutdown.
    async fn resync(
        &self,
        d: &KvDiscovery,
        shutdown: &Shutdown,
    ) -> Option<BoxStream<'static, DiscoveryEvent>> {
        tracing::warn!("discovery watch lost; watching again");
        let mut delay = Duration::from_millis(100);
        loop {
            if let (Ok(nodes), Ok(stream)) = (d.nodes().await, d.watch().await) {
                let live: std::collections::HashSet<String> =
                    nodes.into_iter().map(|n| n.node_id).collect();
                let gone: Vec<String> = self
                    .nodes
                    .read()
                    .expect("lock poisoned")
                    .keys()
                    .filter(|k| !live.contains(*k))
                    .cloned()
                    .collect();
                for node_id in gone {
                    self.apply(DiscoveryEvent::Left {
                        node_id,
                        reason: LeaveReason::Expired,
                    });
                }
                return Some(stream);
            }
            tokio::select! {
                _ = shutdown.wait() => return None,
                _ = tokio::time::sleep(delay) => {}
            }
            delay = (delay * 2).min(Duration::from_secs(2));
        }
    }

    fn apply(&self, ev: DiscoveryEvent) {
        {
            let mut n = self.nodes.write().expect("lock poisoned");
            match &ev {
                DiscoveryEvent::Joined(d) | DiscoveryEvent::Updated(d) => {
                    if let Some(info) = &d.info {
                        n.insert(d.node_id.clone(), info.clone());
                    }
                }
                DiscoveryEvent::Left { node_id, .. } => {
                    n.remove(node_id);
                }
            }
        }
        if let Some(tx) = &self.events {
            let _ = tx.send(ev);
        }
    }

    /// Every live node.
    pub fn nodes(&self) -> Vec<NodeInfo> {
        self.nodes
            .read()
            .map(|n| n.values().cloned().collect())
            .unwrap_or_default()
    }

    /// One node.
    pub fn get(&self, node_id: &str) -> Option<NodeInfo> {
        self.nodes
            .read()
            .expect("lock poisoned")
            .get(node_id)
            .cloned()
    }

    /// Changes from now on.
    pub fn subscribe(&self) -> Option<broadcast::Receiver<DiscoveryEvent>> {
        self.events.as_ref().map(|t| t.subscribe())
    }
}
