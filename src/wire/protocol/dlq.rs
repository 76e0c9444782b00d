//! Dead letters you can act on (contract §11): the bodies of
//! `P.api.dlq.list`, `P.api.dlq.requeue` and `P.api.dlq.purge`.

use serde::{Deserialize, Serialize};

/// `P.api.dlq.list` request.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct DlqListRequest {
    /// Only this queue's dead letters.
    #[serde(default)]
    pub queue: Option<String>,
    /// At most this many entries (default 100).
    #[serde(default)]
    pub limit: Option<usize>,
}

/// One dead letter as `dlq.list` shows it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct DlqEntry {
    /// The dead task.
    pub task_id: String,
    /// Its queue.
    pub queue: String,
    /// Its type (handler name).
    #[serde(rename = "type")]
    pub task_type: String,
    /// The last error.
    pub error: String,
    /// Attempts made.
    pub attempts: u32,
    /// When it died.
    pub dead_at: String,
}

/// `P.api.dlq.list` reply: oldest first.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct DlqList {
    /// Dead letters matching (all of them, not only those listed).
    pub total: u64,
    /// The oldest `limit` of them.
    pub entries: Vec<DlqEntry>,
}

/// `P.api.dlq.requeue` request: one task, or every entry of a queue.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct DlqRequeueRequest {
    /// The dead task to run again.
    #[serde(default)]
    pub task_id: Option<String>,
    /// With `all`: the queue whose dead letters all run again.
    #[serde(default)]
    pub queue: Option<String>,
    /// Requeue every entry of `queue`.
    #[serde(default)]
    pub all: bool,
}

/// `P.api.dlq.purge` request.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct DlqPurgeRequest {
    /// Only this queue's dead letters (absent: all).
    #[serde(default)]
    pub queue: Option<String>,
}
