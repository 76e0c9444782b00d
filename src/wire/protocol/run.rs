//! Runs and shards on the wire (contract §7): the `runs.create` spec, the
//! run record kept in `P-runs`, the assignment message on
//! `P.shards.<node_id>` and a node's report of a finished shard.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

/// Requirements a node must meet to get a run's shards.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct Requirements {
    /// Every one of these capabilities.
    #[serde(default)]
    pub capabilities: Vec<String>,
}

/// A `runs.create` request (unknown fields rejected).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RunSpec {
    /// Run id (default: generated).
    #[serde(default)]
    pub run_id: Option<String>,
    /// The dataset.
    pub dataset_id: String,
    /// The iteration.
    #[serde(default)]
    pub iteration: u64,
    /// Items in the run.
    pub total_items: i64,
    /// Items per shard (by_slice, by_dataset).
    #[serde(default = "one")]
    pub shard_size: i64,
    /// by_slice, by_dataset or by_iteration.
    #[serde(default = "by_slice")]
    pub strategy: String,
    /// The handler of each shard.
    #[serde(rename = "type")]
    pub task_type: String,
    /// Handed to every shard.
    #[serde(default)]
    pub payload: Value,
    /// Free-form.
    #[serde(default)]
    pub metadata: Map<String, Value>,
    /// Node requirements.
    #[serde(default)]
    pub requirements: Requirements,
}

fn one() -> i64 {
    1
}
fn by_slice() -> String {
    "by_slice".into()
}

/// A run's state (`runs.get` `status`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    /// Shards are pending, assigned or running.
    Running,
    /// Every shard completed.
    Completed,
    /// Every shard ended and at least one failed.
    Failed,
}

impl RunStatus {
    /// The contract's word.
    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Running => "running",
            RunStatus::Completed => "completed",
            RunStatus::Failed => "failed",
        }
    }
}

/// Where a shard is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ShardStatus {
    /// Waiting for a node.
    Pending,
    /// Published to a node.
    Assigned,
    /// Done.
    Completed,
    /// Dead after its attempts.
    Failed,
}

/// One shard in a run record.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ShardState {
    /// pending, assigned, completed, failed.
    pub status: ShardStatus,
    /// The node it is (or was last) assigned to.
    pub node_id: Option<String>,
    /// Assignment count (1 for the first).
    pub attempt: u32,
    /// Stream sequence of its assignment message.
    #[serde(default)]
    pub seq: Option<u64>,
    /// The handler's result, when done.
    #[serde(default)]
    pub result: Value,
}

/// A run as stored in `P-runs`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RunRecord {
    /// The run id.
    pub run_id: String,
    /// The spec it was created from.
    pub spec: RunSpec,
    /// running, completed, failed.
    pub status: RunStatus,
    /// Why pending shards wait, if they do.
    #[serde(default)]
    pub waiting: Option<String>,
    /// When created.
    pub created_at: String,
    /// When it ended.
    #[serde(default)]
    pub finished_at: Option<String>,
    /// Shards by key.
    pub shards: BTreeMap<String, ShardState>,
}

impl RunRecord {
    /// The task id of one of its shards.
    pub fn task_id(&self, key: &str) -> String {
        shard_task_id(&self.run_id, self.spec.iteration, key)
    }

    /// The `runs.get` reply.
    pub fn summary(&self) -> Value {
        let assignments: BTreeMap<&String, &Option<String>> =
            self.shards.iter().map(|(k, s)| (k, &s.node_id)).collect();
        let completed = self
            .shards
            .values()
            .filter(|s| s.status == ShardStatus::Completed)
            .count();
        let failed = self
            .shards
            .values()
            .filter(|s| s.status == ShardStatus::Failed)
            .count();
        json!({
            "run_id": self.run_id,
            "status": self.status,
            "total_shards": self.shards.len(),
            "completed_shards": completed,
            "failed_shards": failed,
            "assignments": assignments,
            "waiting": self.waiting,
            "dataset_id": self.spec.dataset_id,
            "iteration": self.spec.iteration,
            "created_at": self.created_at,
            "finished_at": self.finished_at,
            "shards": self.shards,
        })
    }
}

/// The assignment message on `P.shards.<node_id>`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ShardAssignment {
    /// The run.
    pub run_id: String,
    /// The dataset.
    pub dataset_id: String,
    /// The iteration.
    pub iteration: u64,
    /// The shard key.
    pub shard_key: String,
    /// The node it is meant for.
    pub target_node: String,
    /// The run's strategy.
    pub strategy: String,
    /// The handler.
    #[serde(rename = "type")]
    pub task_type: String,
    /// The run's payload.
    pub payload: Value,
    /// The run's metadata.
    pub metadata: Map<String, Value>,
    /// Assignment count.
    pub attempt: u32,
    /// `<run_id>:<iteration>:<shard_key>`.
    #[serde(default)]
    pub task_id: String,
}

/// A node's report of a finished shard.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ShardDone {
    /// The shard's task id.
    pub task_id: String,
    /// The run.
    pub run_id: String,
    /// The shard key.
    pub shard_key: String,
    /// The node.
    pub node_id: String,
}

/// The task id of a shard: `<run_id>:<iteration>:<shard_key>`.
pub fn shard_task_id(run_id: &str, iteration: u64, key: &str) -> String {
    format!("{run_id}:{iteration}:{key}")
}
