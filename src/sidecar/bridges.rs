//! Agents kept in NATS (seed 001): registrations live in the `P-agents` KV
//! bucket with a per-key TTL of `--agent-ttl`, refreshed by the agent's
//! heartbeats on any sidecar, so an agent outlives the sidecar it
//! registered with. Every sidecar runs [`keep_bridges`], once a second:
//! - starts the bridge node of each registered agent that has no live
//!   bridge (a node id has one live node, so the first sidecar to start it
//!   serves it, and another takes over when that sidecar dies);
//! - stops the bridges of agents whose registration expired, and moves the
//!   tasks still queued for them to another agent with the capabilities the
//!   task asked for, or to the `agents-pending` queue;
//! - hands tasks waiting in `agents-pending` (no live agent had their
//!   capabilities when they were submitted) to an agent that has them.
//!
//! A moved task is the same envelope (same id) re-published on the new
//! queue with `Nats-Msg-Id` `moved-<sequence>` (two sidecars moving the
//! same message store it once), then deleted from the old one.

use std::collections::HashSet;

use async_nats::jetstream::{self, kv};
use futures::StreamExt;
use serde::Serialize;

use super::*;
use crate::wire::protocol::NodeInfo;
use crate::wire::subjects::Subjects;

/// Where agent tasks wait for an agent with their capabilities.
pub(super) const PENDING_QUEUE: &str = "agents-pending";

/// A registration as stored in `P-agents`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct AgentRecord {
    #[serde(flatten)]
    pub(super) req: RegisterRequest,
    pub(super) registered_at: String,
}

/// The `P-agents` bucket.
pub(super) struct Registry {
    js: jetstream::Context,
    store: kv::Store,
    subjects: Subjects,
    ttl: Duration,
    /// `P-nodes`, read directly: bridges do not depend on a coordinator.
    discovery: crate::store::discovery::KvDiscovery,
}

impl Registry {
    pub(super) async fn open(nats: async_nats::Client, cfg: &SidecarConfig) -> Result<Self, Error> {
        let subjects = Subjects::new(&cfg.prefix)?;
        let js = jetstream::new(nats.clone());
        let replicas = crate::store::replicas_for(&nats, &subjects).await;
        let store = crate::store::agents_bucket(&js, &subjects, replicas).await?;
        let ttl = Duration::from_secs(cfg.agent_ttl.as_secs_f64().ceil().max(1.0) as u64);
        let discovery = crate::store::discovery::KvDiscovery::open(
            nats,
            &subjects,
            Duration::from_secs(5),
            replicas,
        )
        .await?;
        Ok(Registry {
            js,
            store,
            subjects,
            ttl,
            discovery,
        })
    }

    /// Writes (or refreshes) a registration with the TTL.
    pub(super) async fn put(&self, rec: &AgentRecord) -> Result<(), Error> {
        let prefix = self.store.put_prefix.as_ref().unwrap_or(&self.store.prefix);
        let m = jetstream::message::PublishMessage::build()
            .payload(serde_json::to_vec(rec)?.into())
            .ttl(self.ttl);
        self.js
            .send_publish(format!("{prefix}{}", rec.req.agent_id), m)
            .await
            .map_err(Error::nats_source)?
            .await
            .map_err(Error::nats_source)?;
        Ok(())
    }

    /// Whether a live node (a bridge, on any sidecar) has this agent's id.
    pub(super) async fn bridged(&self, agent_id: &str) -> Result<bool, Error> {
        Ok(self.discovery.get(agent_id).await?.is_some())
    }

    pub(super) async fn get(&self, agent_id: &str) -> Result<Option<AgentRecord>, Error> {
        let v = self.store.get(agent_id).await.map_err(Error::nats_source)?;
        Ok(v.and_then(|b| serde_json::from_slice(&b).ok()))
    }

    async fn all(&self) -> Result<Vec<AgentRecord>, Error> {
        let mut keys = self.store.keys().await.map_err(Error::nats_source)?;
        let mut out = Vec::new();
        while let Some(k) = keys.next().await {
            let k = k.map_err(Error::nats_source)?;
            if let Some(r) = self.get(&k).await? {
                out.push(r);
            }
        }
        Ok(out)
    }
}

/// Starts this sidecar's bridge for `rec` unless a live node has its id.
pub(super) async fn start_bridge(app: &App, rec: &AgentRecord) -> Result<(), Error> {
    let url = rec.req.endpoints.http.clone().unwrap_or_default();
    let cfg = bridge_config(app, &rec.req, &url);
    let nats = app.client.nats().clone();
    let node = Node::new(cfg).start(nats, app.shutdown.child()).await?;
    app.agents
        .lock()
        .expect("agents poisoned")
        .insert(rec.req.agent_id.clone(), Bridge { node });
    Ok(())
}

/// The loop described in the module doc; ends with the sidecar.
pub(super) async fn keep_bridges(app: AppState) {
    let mut known: HashSet<String> = HashSet::new();
    loop {
        tokio::select! {
            _ = app.shutdown.wait() => break,
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
        if let Err(e) = keep_once(&app, &mut known).await {
            tracing::debug!(error = %e, "agent bridges not checked this round");
        }
    }
}

async fn keep_once(app: &App, known: &mut HashSet<String>) -> Result<(), Error> {
    let regs = app.registry.all().await?;
    let ids: HashSet<String> = regs.iter().map(|r| r.req.agent_id.clone()).collect();
    let gone: Vec<String> = known.difference(&ids).cloned().collect();
    *known = ids.clone();
    let stale: Vec<(String, NodeHandle)> = {
        let mut a = app.agents.lock().expect("agents poisoned");
        let ids_here: Vec<String> = a.keys().filter(|k| !ids.contains(*k)).cloned().collect();
        ids_here
            .into_iter()
            .filter_map(|k| a.remove(&k).map(|b| (k, b.node)))
            .collect()
    };
    for (id, node) in stale {
        tracing::info!(agent_id = %id, "agent registration expired; stopping its bridge");
        node.shutdown(Duration::from_secs(5)).await;
    }
    for id in gone {
        move_tasks(app, &agent_queue(&id), Some(&id)).await?;
    }
    for rec in regs {
        let id = &rec.req.agent_id;
        let here = app.agents.lock().expect("agents poisoned").contains_key(id);
        if !here && !app.registry.bridged(id).await? {
            // Another sidecar may be starting it too: the node id check
            // lets one win.
            tokio::time::sleep(Duration::from_millis(fastrand::u64(0..300))).await;
            if let Err(e) = start_bridge(app, &rec).await {
                tracing::debug!(agent_id = %id, error = %e, "bridge not started here");
            }
        }
    }
    move_tasks(app, PENDING_QUEUE, None).await
}

/// The capabilities an agent task asked for (kept in its metadata).
fn wanted(env: &TaskEnvelope) -> Vec<String> {
    env.metadata
        .get("requirements")
        .and_then(|r| r.get("capabilities"))
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// Live, healthy agents with `caps` (not `exclude`).
pub(super) fn capable<'a>(
    nodes: &'a [NodeInfo],
    caps: &[String],
    exclude: Option<&str>,
) -> Vec<&'a NodeInfo> {
    nodes
        .iter()
        .filter(|n| {
            n.health == Health::Healthy && n.metadata.get("agent").is_some_and(|v| v == "true")
        })
        .filter(|n| Some(n.node_id.as_str()) != exclude)
        .filter(|n| caps.iter().all(|c| n.capabilities.contains(c)))
        .collect()
}

/// Moves the tasks queued on `from` to an agent that has their
/// capabilities (or, for an agent's own queue, to `agents-pending`).
async fn move_tasks(app: &App, from: &str, exclude: Option<&str>) -> Result<(), Error> {
    let s = &app.registry.subjects;
    let js = &app.registry.js;
    let stream = js
        .get_stream(s.tasks_stream())
        .await
        .map_err(Error::nats_source)?;
    let mut nodes: Option<Vec<NodeInfo>> = None;
    for p in Priority::ALL {
        let subject = s.task(from, p);
        let mut seq = 0;
        while let Ok(m) = stream
            .direct_get_next_for_subject(subject.as_str(), Some(seq + 1))
            .await
        {
            seq = m.sequence;
            let Ok(env) = serde_json::from_slice::<TaskEnvelope>(&m.payload) else {
                continue;
            };
            if nodes.is_none() {
                nodes = Some(app.registry.discovery.nodes().await?);
            }
            let all = nodes.as_deref().unwrap_or_default();
            let choice = super::balance::pick(
                app.cfg.agent_strategy,
                &capable(all, &wanted(&env), exclude),
                &app.turn,
            );
            let target = match choice {
                Some(a) => agent_queue(&a.node_id),
                None if from == PENDING_QUEUE => continue,
                None => PENDING_QUEUE.to_string(),
            };
            let msg = jetstream::message::PublishMessage::build()
                .payload(m.payload.clone())
                .message_id(format!("moved-{seq}"));
            js.send_publish(s.task(&target, p), msg)
                .await
                .map_err(Error::nats_source)?
                .await
                .map_err(Error::nats_source)?;
            let _ = stream.delete_message(seq).await;
            tracing::info!(task_id = ?env.id, from, to = %target, "agent task moved");
        }
    }
    Ok(())
}
