//! Typed control replies (contract §3): every reply is `{"ok": true,
//! "node_id", "health", ...}` plus what the verb adds.

use serde::{Deserialize, Serialize};

use super::{Health, ProcessInfo, Role};

/// A control reply: the common fields and the verb's own.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ControlReply<T> {
    /// Always true (errors are error replies).
    pub ok: bool,
    /// The answering node.
    pub node_id: String,
    /// Its health at the time of the reply.
    pub health: Health,
    /// What the verb adds.
    #[serde(flatten)]
    pub body: T,
}

/// The `status` verb's fields.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct NodeStatus {
    /// worker, supervisor or hybrid.
    pub role: Role,
    /// Tasks running now.
    pub active_tasks: u32,
    /// Its slots.
    pub max_concurrency: u32,
    /// Queues it serves.
    pub queues: Vec<String>,
    /// Its capabilities.
    pub capabilities: Vec<String>,
    /// Task types it handles.
    pub handlers: Vec<String>,
    /// Tasks completed since start.
    pub completed: u64,
    /// Failed attempts since start.
    pub failed: u64,
    /// When it started.
    pub started_at: String,
    /// Its named processes.
    pub processes: Vec<ProcessInfo>,
    /// Ids of the tasks (and shards) it runs now.
    pub running_tasks: Vec<String>,
}
