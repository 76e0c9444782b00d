//! Wire types: every JSON payload that crosses NATS (contract §1–§8).
//!
//! Fields are snake_case, timestamps RFC 3339 UTC strings (`*_at`),
//! durations seconds as numbers (`*_s`). Unknown fields are ignored on
//! input so newer senders can talk to older nodes; missing optional fields
//! take their documented defaults.

mod control;
mod dlq;
mod limit;
mod pool;
mod run;
mod schedule;
pub use control::*;
pub use dlq::*;
pub use limit::*;
pub use pool::*;
pub use run::*;
pub use schedule::*;

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use super::ids::{validate_id, validate_task_id};
use crate::error::{Error, ErrorCode};

/// The current time as an RFC 3339 UTC string.
pub fn now_rfc3339() -> String {
    format_rfc3339(OffsetDateTime::now_utc())
}

/// Formats a timestamp as RFC 3339 UTC.
pub fn format_rfc3339(t: OffsetDateTime) -> String {
    t.to_offset(time::UtcOffset::UTC)
        .format(&Rfc3339)
        .unwrap_or_else(|_| "1970-01-01T00:00:00Z".to_string())
}

/// Parses an RFC 3339 timestamp.
pub fn parse_rfc3339(s: &str) -> Result<OffsetDateTime, Error> {
    OffsetDateTime::parse(s, &Rfc3339).map_err(|e| {
        Error::invalid(
            ErrorCode::InvalidValue,
            format!("invalid timestamp {s:?}: {e} (want RFC 3339)"),
        )
    })
}

/// Parses a JSON object from a message body with a clear error.
pub fn parse_object<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, Error> {
    // The common case, an object that fits `T`, parses straight into it
    // (going through a `Value` first built a map of every field: a task's
    // envelope was a fifth of a node's allocations per task). Anything else
    // takes the two steps below, which tell bad JSON from a bad field.
    let first = body.iter().find(|b| !b.is_ascii_whitespace());
    if first == Some(&b'{') {
        if let Ok(t) = serde_json::from_slice(body) {
            return Ok(t);
        }
    }
    let value: Value = if body.iter().all(|b| b.is_ascii_whitespace()) {
        Value::Object(Map::new())
    } else {
        serde_json::from_slice(body).map_err(|e| {
            Error::invalid(
                ErrorCode::InvalidJson,
                format!("body is not valid JSON: {e}"),
            )
        })?
    };
    if !value.is_object() {
        return Err(Error::invalid(
            ErrorCode::InvalidJson,
            "body must be a JSON object",
        ));
    }
    serde_json::from_value(value)
        .map_err(|e| Error::invalid(ErrorCode::InvalidValue, format!("invalid field: {e}")))
}

/// The body of a request without fields: empty or `{}`. Parsed with
/// [`parse_object`], anything else (bad JSON, an array, `null`, an unknown
/// field) is an error and the request is not carried out.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NoFields {}

/// The `{"ok": false, "error", "code"}` reply.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ErrorReply {
    /// Always `false`.
    pub ok: bool,
    /// Human-readable reason.
    pub error: String,
    /// Machine-readable code.
    pub code: String,
}

impl From<&Error> for ErrorReply {
    fn from(e: &Error) -> Self {
        ErrorReply {
            ok: false,
            error: e.reason(),
            code: e.code(),
        }
    }
}

/// A node's role.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Runs tasks and shards.
    #[default]
    Worker,
    /// Runs the coordinator only.
    Supervisor,
    /// Runs both.
    Hybrid,
}

impl Role {
    /// Wire form.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Worker => "worker",
            Role::Supervisor => "supervisor",
            Role::Hybrid => "hybrid",
        }
    }
}

impl std::str::FromStr for Role {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        match s {
            "worker" => Ok(Role::Worker),
            "supervisor" => Ok(Role::Supervisor),
            "hybrid" => Ok(Role::Hybrid),
            other => Err(Error::invalid(
                ErrorCode::InvalidValue,
                format!("invalid role {other:?}: want worker, supervisor or hybrid"),
            )),
        }
    }
}

/// A node's health.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Health {
    /// Takes new work.
    #[default]
    Healthy,
    /// Finishes what it runs and takes nothing new.
    Draining,
}

impl Health {
    /// Wire form.
    pub fn as_str(self) -> &'static str {
        match self {
            Health::Healthy => "healthy",
            Health::Draining => "draining",
        }
    }
}

/// What a worker is doing (seed 003): `idle` when nothing runs on it,
/// `busy` when something does (next to `health`, which says whether it
/// takes work).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum WorkerState {
    /// Nothing running.
    #[default]
    Idle,
    /// At least one task, shard or event running.
    Busy,
}

impl WorkerState {
    /// `busy` when anything runs.
    pub fn of(active_tasks: u32) -> Self {
        if active_tasks > 0 {
            WorkerState::Busy
        } else {
            WorkerState::Idle
        }
    }
}

/// The discovery entry of a node (contract §1), the value under the node id
/// in the `P-nodes` KV bucket.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct NodeInfo {
    /// The node id.
    pub node_id: String,
    /// worker, supervisor or hybrid.
    pub role: Role,
    /// Host name of the machine.
    pub hostname: String,
    /// Process id.
    pub pid: u32,
    /// HTTP URL of the node's sidecar, if any.
    pub url: Option<String>,
    /// Queues served.
    pub queues: Vec<String>,
    /// Capabilities offered to runs.
    pub capabilities: Vec<String>,
    /// Task slots.
    pub max_concurrency: u32,
    /// healthy or draining.
    pub health: Health,
    /// Tasks and shards running now.
    pub active_tasks: u32,
    /// When the node started.
    pub started_at: String,
    /// When the entry was last refreshed.
    pub last_heartbeat_at: String,
    /// `idle` or `busy` (added to the contract's fields).
    #[serde(default)]
    pub state: WorkerState,
    /// Seconds since the node started (added).
    #[serde(default)]
    pub uptime_s: f64,
    /// Healthy with a free slot: it would take a task now (added).
    #[serde(default)]
    pub available: bool,
    /// Free-form; jetweave puts `handlers` (task types) here.
    #[serde(default)]
    pub metadata: Map<String, Value>,
}

impl NodeInfo {
    /// Seconds since its last heartbeat (`None` when the time does not parse).
    pub fn heartbeat_age_s(&self) -> Option<f64> {
        let t = parse_rfc3339(&self.last_heartbeat_at).ok()?;
        Some((OffsetDateTime::now_utc() - t).as_seconds_f64().max(0.0))
    }

    /// The task types this node has handlers for (from `metadata.handlers`).
    pub fn handlers(&self) -> Vec<String> {
        self.metadata
            .get("handlers")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Whether this node may have a handler for `task_type`: listed, or
    /// the list was cut short (`metadata.handlers_more`: the entry lists
    /// at most 32 task types).
    pub fn may_handle(&self, task_type: &str) -> bool {
        self.metadata.contains_key("handlers_more")
            || self.handlers().iter().any(|h| h == task_type)
    }
}

/// A heartbeat (contract §2) on `P.node.<id>.heartbeat`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Heartbeat {
    /// The node id.
    pub node_id: String,
    /// healthy or draining.
    pub health: Health,
    /// Tasks and shards running now.
    pub active_tasks: u32,
    /// Task slots.
    pub max_concurrency: u32,
    /// Queues served.
    pub queues: Vec<String>,
    /// Tasks completed since start.
    pub completed: u64,
    /// Task attempts failed since start.
    pub failed: u64,
    /// When this heartbeat was sent.
    pub last_heartbeat_at: String,
    /// `idle` or `busy` (added to the contract's fields).
    #[serde(default)]
    pub state: WorkerState,
    /// Seconds since the node started (added).
    #[serde(default)]
    pub uptime_s: f64,
    /// Healthy with a free slot (added).
    #[serde(default)]
    pub available: bool,
    /// Free-form; jetweave puts `running_by_queue` here.
    #[serde(default)]
    pub metadata: Map<String, Value>,
}

/// An event injected into a process (contract §4). Unknown fields are
/// rejected (`invalid_value`): a misspelt `payload` must not run the
/// handler with nothing.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct EventRequest {
    /// Caller's id for the trigger.
    #[serde(default)]
    pub trigger_id: Option<String>,
    /// Caller's kind of trigger.
    #[serde(default)]
    pub trigger_type: Option<String>,
    /// Handed to the process's handler as the task payload.
    #[serde(default)]
    pub payload: Value,
    /// Free-form.
    #[serde(default)]
    pub metadata: Map<String, Value>,
}

/// Reply to an injected event.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct EventInjected {
    /// Always `injected`.
    pub status: String,
    /// Id of the event, also in the outcome.
    pub event_id: String,
    /// The process it went to.
    pub process: String,
}

/// Outcome of an injected event on `P.events.process.<node>.<process>`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct EventOutcome {
    /// Id from the injection reply.
    pub event_id: String,
    /// completed or failed.
    pub status: String,
    /// Handler result.
    pub result: Value,
    /// Handler error.
    pub error: Option<String>,
    /// The node.
    #[serde(default)]
    pub node_id: String,
    /// The process.
    #[serde(default)]
    pub process: String,
    /// The trigger id of the event, if given.
    #[serde(default)]
    pub trigger_id: Option<String>,
}

/// An audit log entry on `P.events.<kind>` (stream `P_EVENTS`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct AuditEvent {
    /// e.g. `node.joined`, `shard.assigned`.
    pub kind: String,
    /// When it happened.
    pub at: String,
    /// The node concerned, if any.
    #[serde(default)]
    pub node_id: Option<String>,
    /// The run concerned, if any.
    #[serde(default)]
    pub run_id: Option<String>,
    /// Details.
    #[serde(default)]
    pub details: Value,
}

/// A named process's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProcessState {
    /// Accepts events.
    Running,
    /// Refuses events.
    Stopped,
    /// Its handler is missing or it crashed; refuses events.
    Failed,
}

/// A process as reported by `processes` and the process verbs.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ProcessInfo {
    /// The process name.
    pub name: String,
    /// running, stopped or failed.
    pub state: ProcessState,
    /// A new id every time the process starts.
    pub process_id: String,
    /// The handler type its events run.
    pub handler: String,
    /// Events handled since the process started.
    pub events_handled: u64,
}

/// Task priority, the last token of a task subject.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default, PartialOrd, Ord,
)]
#[serde(rename_all = "snake_case")]
pub enum Priority {
    /// Dispatched first.
    Critical,
    /// Second.
    High,
    /// The default.
    #[default]
    Normal,
    /// Last.
    Low,
}

impl Priority {
    /// Highest first.
    pub const ALL: [Priority; 4] = [
        Priority::Critical,
        Priority::High,
        Priority::Normal,
        Priority::Low,
    ];

    /// Wire form.
    pub fn as_str(self) -> &'static str {
        match self {
            Priority::Critical => "critical",
            Priority::High => "high",
            Priority::Normal => "normal",
            Priority::Low => "low",
        }
    }
}

impl std::str::FromStr for Priority {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        match s {
            "critical" => Ok(Priority::Critical),
            "high" => Ok(Priority::High),
            "normal" => Ok(Priority::Normal),
            "low" => Ok(Priority::Low),
            other => Err(Error::invalid(
                ErrorCode::InvalidValue,
                format!("invalid priority {other:?}: want critical, high, normal or low"),
            )),
        }
    }
}

/// Default attempts per task.
pub const DEFAULT_MAX_ATTEMPTS: u32 = 3;

/// The body of a task message (contract §5).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct TaskEnvelope {
    /// The handler name (required).
    #[serde(rename = "type")]
    pub task_type: String,
    /// Task id; else `Nats-Msg-Id`, else `P_TASKS-<seq>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// Handed to the handler.
    #[serde(default)]
    pub payload: Value,
    /// Free-form.
    #[serde(default)]
    pub metadata: Map<String, Value>,
    /// Bound on one attempt, seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_s: Option<f64>,
    /// Attempts before the task is dead (default 3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_attempts: Option<u32>,
    /// Delay before retry n (the last value repeats).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backoff_s: Option<Vec<f64>>,
    /// Not to start before this RFC 3339 time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_before: Option<String>,
    /// The key flow-control limits count this task under (contract §15;
    /// absent: `_`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit_key: Option<String>,
    /// Fire and forget (Celery's `ignore_result`): a completed task stores
    /// no result, one JetStream write less per task. Failures still end in
    /// a stored `dead`/`timeout` result and a dead letter. Without a stored
    /// result a task whose ack was lost may run again (at least once), and
    /// `tasks.get` knows it only while it is queued or running.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub ignore_result: bool,
}

impl TaskEnvelope {
    /// A task of `task_type` with `payload`.
    pub fn new(task_type: impl Into<String>, payload: Value) -> Self {
        TaskEnvelope {
            task_type: task_type.into(),
            payload,
            ..Default::default()
        }
    }

    /// Checks every field; the error names the bad one.
    pub fn validate(&self) -> Result<(), Error> {
        let bad = |m: String| Err(Error::invalid(ErrorCode::InvalidValue, m));
        if self.task_type.is_empty() {
            return bad("field `type` is required (the handler name)".into());
        }
        if self.task_type.len() > 128 {
            return bad("field `type` is longer than 128 bytes".into());
        }
        if let Some(id) = &self.id {
            validate_task_id(id)?;
        }
        if let Some(t) = self.timeout_s {
            if !(t.is_finite() && t > 0.0) {
                return bad(format!("field `timeout_s` must be > 0, got {t}"));
            }
        }
        if self.max_attempts == Some(0) {
            return bad("field `max_attempts` must be >= 1".into());
        }
        if let Some(b) = &self.backoff_s {
            if b.iter().any(|v| !(v.is_finite() && *v >= 0.0)) {
                return bad("field `backoff_s` must hold numbers >= 0".into());
            }
        }
        if let Some(nb) = &self.not_before {
            parse_rfc3339(nb)?;
        }
        if let Some(k) = &self.limit_key {
            validate_limit_name("limit_key", k)?;
        }
        Ok(())
    }

    /// Attempts allowed.
    pub fn max_attempts(&self) -> u32 {
        self.max_attempts.unwrap_or(DEFAULT_MAX_ATTEMPTS).max(1)
    }

    /// The per-attempt timeout.
    pub fn timeout(&self) -> Option<Duration> {
        self.timeout_s
            .filter(|t| t.is_finite() && *t > 0.0)
            .map(|t| Duration::from_secs_f64(t.min(1e9)))
    }

    /// Delay before the retry that follows failed attempt `attempt` (1-based):
    /// `backoff_s[attempt-1]` (the last value repeats), else exponential
    /// (1 s, 2 s, 4 s ... up to 60 s) with ±20 % jitter.
    pub fn backoff(&self, attempt: u32) -> Duration {
        match &self.backoff_s {
            Some(b) if !b.is_empty() => {
                let i = (attempt.max(1) as usize - 1).min(b.len() - 1);
                Duration::from_secs_f64(b[i].clamp(0.0, 86_400.0))
            }
            _ => {
                let base = 2f64.powi(attempt.saturating_sub(1).min(6) as i32).min(60.0);
                let jitter = 0.8 + fastrand::f64() * 0.4;
                Duration::from_secs_f64(base * jitter)
            }
        }
    }
}

/// A submit request to `P.api.tasks.submit`: an envelope plus where to queue it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct SubmitRequest {
    /// The task.
    #[serde(flatten)]
    pub envelope: TaskEnvelope,
    /// Queue (default `default`).
    #[serde(default)]
    pub queue: Option<String>,
    /// Priority (default `normal`).
    #[serde(default)]
    pub priority: Option<Priority>,
}

impl SubmitRequest {
    /// Every field a submit request may have (the envelope's and `queue`,
    /// `priority`); `tasks.submit` rejects others, so that a misspelt
    /// `max_attempts` is an error instead of a silent default. (Task
    /// messages published straight on `P.tasks.*` stay open to extra
    /// fields from other producers.)
    pub const FIELDS: &'static [&'static str] = &[
        "type",
        "id",
        "payload",
        "metadata",
        "timeout_s",
        "max_attempts",
        "backoff_s",
        "not_before",
        "limit_key",
        "ignore_result",
        "queue",
        "priority",
    ];

    /// Parses a `tasks.submit` body strictly (see [`Self::FIELDS`]).
    pub fn parse_strict(body: &[u8]) -> Result<Self, Error> {
        let v: Map<String, Value> = parse_object(body)?;
        if let Some(k) = v.keys().find(|k| !Self::FIELDS.contains(&k.as_str())) {
            return Err(Error::invalid(
                ErrorCode::InvalidValue,
                format!("unknown field {k:?} in a submit request"),
            ));
        }
        serde_json::from_value(Value::Object(v))
            .map_err(|e| Error::invalid(ErrorCode::InvalidValue, format!("invalid field: {e}")))
    }

    /// The queue, `default` if not given.
    pub fn queue(&self) -> &str {
        self.queue.as_deref().unwrap_or("default")
    }
    /// Checks the envelope and the queue.
    pub fn validate(&self) -> Result<(), Error> {
        validate_id("queue", self.queue())?;
        self.envelope.validate()
    }
}

/// Reply to a submit.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SubmitReply {
    /// The task id.
    pub task_id: String,
    /// The queue.
    pub queue: String,
    /// The priority.
    pub priority: Priority,
    /// True when the id was submitted before within the duplicate window.
    #[serde(default)]
    pub duplicate: bool,
}

/// Status of a task.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskStatus {
    /// Waiting in the stream.
    Queued,
    /// A node runs it.
    Running,
    /// Done.
    Completed,
    /// Failed (not retried).
    Failed,
    /// Out of attempts; copied to the DLQ.
    Dead,
    /// Cancelled.
    Cancelled,
    /// The last attempt timed out.
    Timeout,
    /// Never seen.
    Unknown,
}

impl TaskStatus {
    /// Is this a final state?
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            TaskStatus::Completed
                | TaskStatus::Failed
                | TaskStatus::Dead
                | TaskStatus::Cancelled
                | TaskStatus::Timeout
        )
    }
    /// Wire form.
    pub fn as_str(self) -> &'static str {
        match self {
            TaskStatus::Queued => "queued",
            TaskStatus::Running => "running",
            TaskStatus::Completed => "completed",
            TaskStatus::Failed => "failed",
            TaskStatus::Dead => "dead",
            TaskStatus::Cancelled => "cancelled",
            TaskStatus::Timeout => "timeout",
            TaskStatus::Unknown => "unknown",
        }
    }
}

/// The terminal result of a task on `P.results.<task_id>` (contract §5).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TaskResult {
    /// The task id.
    pub task_id: String,
    /// completed, failed, dead, cancelled or timeout.
    pub status: TaskStatus,
    /// Handler result.
    pub result: Value,
    /// Last error.
    pub error: Option<String>,
    /// Attempts made.
    pub attempts: u32,
    /// Node of the last attempt.
    pub node_id: Option<String>,
    /// When the last attempt started.
    pub started_at: Option<String>,
    /// When the task ended.
    pub finished_at: String,
    /// Duration of the last attempt.
    pub duration_s: f64,
    /// Deliveries that ended without a handler outcome: leases lost to a
    /// node that died, paused or was cut off (and hand-backs to a node with
    /// the handler). They do not use attempts; an extension of §5, 0 when
    /// absent.
    #[serde(default)]
    pub lost_leases: u32,
    /// The task's queue (an extension of §5, for metrics by queue; absent
    /// in results written without it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue: Option<String>,
    /// The task's type (an extension of §5, like `queue`).
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub task_type: Option<String>,
}

/// A dead-lettered task on `P.dlq.<queue>`: the envelope plus why.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DeadLetter {
    /// The task id (if one could be determined).
    pub task_id: Option<String>,
    /// The queue.
    pub queue: String,
    /// The envelope as received (a string if it was not JSON).
    pub envelope: Value,
    /// The last error.
    pub error: String,
    /// Attempts made.
    pub attempts: u32,
    /// Node that dead-lettered it.
    pub node_id: String,
    /// When.
    pub dead_at: String,
    /// The priority it was queued at (absent in dead letters filed before
    /// it was recorded: `normal`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<Priority>,
}

/// `P.api.tasks.get` / `tasks.cancel` request (unknown fields rejected).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TaskRef {
    /// The task id.
    pub task_id: String,
}

/// `P.api.tasks.get` reply: the status plus the result when terminal.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TaskInfo {
    /// The task id.
    pub task_id: String,
    /// Status.
    pub status: TaskStatus,
    /// The terminal result, when there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<TaskResult>,
    /// Node running it, when running.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_id: Option<String>,
    /// Queue, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue: Option<String>,
    /// The limit holding a queued task back, while one does (contract §15).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub throttled_by: Option<String>,
}

/// Per-queue counts in the cluster status.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct QueueStats {
    /// Waiting in the stream (not delivered).
    pub pending: u64,
    /// Running on nodes.
    pub running: u64,
}

/// `P.api.cluster.status` reply.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct ClusterStatus {
    /// Live nodes.
    pub total_nodes: u64,
    /// Healthy nodes.
    pub healthy_nodes: u64,
    /// Draining nodes.
    pub draining_nodes: u64,
    /// Processes hosted by live nodes.
    pub total_processes: u64,
    /// The leading coordinator's id.
    pub leader: Option<String>,
    /// Per queue.
    pub queues: BTreeMap<String, QueueStats>,
    /// Runs by status.
    #[serde(default)]
    pub runs: BTreeMap<String, u64>,
}

/// A checkpoint (contract §8).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CheckpointRecord {
    /// Unique id.
    pub checkpoint_id: String,
    /// The task it belongs to.
    pub task_id: String,
    /// The run, for shards.
    pub run_id: Option<String>,
    /// The iteration, for shards.
    pub iteration: Option<u64>,
    /// The shard key, for shards.
    pub shard_key: Option<String>,
    /// The node that saved it.
    pub node_id: String,
    /// When.
    pub created_at: String,
    /// The handler's state.
    pub payload: Value,
    /// Free-form.
    #[serde(default)]
    pub metadata: Map<String, Value>,
}

/// A wire type as a message body.
pub(crate) fn json_body(v: &impl serde::Serialize) -> Bytes {
    serde_json::to_vec(v).unwrap_or_default().into()
}

/// An error as the contract's error reply body.
pub(crate) fn error_body(e: &Error) -> Bytes {
    serde_json::to_vec(&ErrorReply::from(e))
        .unwrap_or_default()
        .into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// `v` serializes to exactly `wire` (the contract's field names and
    /// shapes, written out here by hand) and `wire` parses back to `v`: a
    /// renamed, dropped or retyped field fails.
    fn assert_wire<T>(v: T, wire: Value)
    where
        T: Serialize + serde::de::DeserializeOwned + PartialEq + std::fmt::Debug,
    {
        assert_eq!(serde_json::to_value(&v).unwrap(), wire);
        assert_eq!(serde_json::from_value::<T>(wire).unwrap(), v);
    }

    #[test]
    fn node_types_match_the_contract() {
        let at = "2026-01-02T03:04:05.000Z".to_string();
        let mut meta = Map::new();
        meta.insert("k".into(), json!("v"));
        assert_wire(
            NodeInfo {
                node_id: "n1".into(),
                role: Role::Hybrid,
                hostname: "h".into(),
                pid: 1,
                url: None,
                queues: vec!["default".into()],
                capabilities: vec!["gpu".into()],
                max_concurrency: 8,
                health: Health::Draining,
                active_tasks: 2,
                started_at: at.clone(),
                last_heartbeat_at: at.clone(),
                state: WorkerState::Busy,
                uptime_s: 12.5,
                available: false,
                metadata: meta.clone(),
            },
            json!({"node_id": "n1", "role": "hybrid", "hostname": "h", "pid": 1,
                "url": null, "queues": ["default"], "capabilities": ["gpu"],
                "max_concurrency": 8, "health": "draining", "active_tasks": 2,
                "started_at": at, "last_heartbeat_at": at, "state": "busy",
                "uptime_s": 12.5, "available": false, "metadata": {"k": "v"}}),
        );
        assert_wire(
            Heartbeat {
                node_id: "n1".into(),
                health: Health::Healthy,
                active_tasks: 1,
                max_concurrency: 4,
                queues: vec!["q".into()],
                completed: 5,
                failed: 6,
                last_heartbeat_at: at.clone(),
                state: WorkerState::Busy,
                uptime_s: 3.0,
                available: true,
                metadata: Map::new(),
            },
            json!({"node_id": "n1", "health": "healthy", "active_tasks": 1,
                "max_concurrency": 4, "queues": ["q"], "completed": 5, "failed": 6,
                "last_heartbeat_at": at, "state": "busy", "uptime_s": 3.0,
                "available": true, "metadata": {}}),
        );
    }

    #[test]
    fn task_types_match_the_contract() {
        let at = "2026-01-02T03:04:05.000Z".to_string();
        let mut meta = Map::new();
        meta.insert("k".into(), json!("v"));
        assert_wire(
            TaskEnvelope {
                task_type: "echo".into(),
                id: Some("a:b".into()),
                payload: json!({"x": 1}),
                metadata: meta.clone(),
                timeout_s: Some(1.5),
                max_attempts: Some(2),
                backoff_s: Some(vec![0.5]),
                not_before: Some(at.clone()),
                limit_key: Some("tenant-1".into()),
                ignore_result: true,
            },
            json!({"type": "echo", "id": "a:b", "payload": {"x": 1}, "metadata": {"k": "v"},
                "timeout_s": 1.5, "max_attempts": 2, "backoff_s": [0.5], "not_before": at,
                "limit_key": "tenant-1", "ignore_result": true}),
        );
        assert_wire(
            SubmitRequest {
                envelope: TaskEnvelope::new("echo", json!(1)),
                queue: Some("q".into()),
                priority: Some(Priority::High),
            },
            json!({"type": "echo", "payload": 1, "metadata": {}, "queue": "q", "priority": "high"}),
        );
        assert_wire(
            TaskResult {
                task_id: "t".into(),
                status: TaskStatus::Dead,
                result: Value::Null,
                error: Some("x".into()),
                attempts: 3,
                node_id: Some("n".into()),
                started_at: Some(at.clone()),
                finished_at: at.clone(),
                duration_s: 0.25,
                lost_leases: 2,
                queue: None,
                task_type: None,
            },
            json!({"task_id": "t", "status": "dead", "result": null, "error": "x",
                "attempts": 3, "node_id": "n", "started_at": at, "finished_at": at,
                "duration_s": 0.25, "lost_leases": 2}),
        );
    }

    #[test]
    fn submit_fields_are_every_field_and_only_those() {
        let full = SubmitRequest {
            envelope: TaskEnvelope {
                id: Some("a".into()),
                timeout_s: Some(1.0),
                max_attempts: Some(2),
                backoff_s: Some(vec![0.5]),
                not_before: Some("2026-01-02T03:04:05Z".into()),
                limit_key: Some("k".into()),
                ignore_result: true,
                ..TaskEnvelope::new("echo", json!(1))
            },
            queue: Some("q".into()),
            priority: Some(Priority::High),
        };
        let v = serde_json::to_value(&full).unwrap();
        let mut keys: Vec<&str> = v.as_object().unwrap().keys().map(|k| k.as_str()).collect();
        let mut fields = SubmitRequest::FIELDS.to_vec();
        keys.sort();
        fields.sort();
        assert_eq!(keys, fields);
        let body = serde_json::to_vec(&full).unwrap();
        assert_eq!(SubmitRequest::parse_strict(&body).unwrap(), full);
        let e = SubmitRequest::parse_strict(br#"{"type": "echo", "max_attemps": 5}"#).unwrap_err();
        assert!(e.to_string().contains("max_attemps"), "{e}");
    }

    #[test]
    fn event_cluster_and_checkpoint_types_match_the_contract() {
        let at = "2026-01-02T03:04:05.000Z".to_string();
        assert_wire(
            EventOutcome {
                event_id: "e".into(),
                status: "failed".into(),
                result: Value::Null,
                error: Some("boom".into()),
                node_id: "n".into(),
                process: "p".into(),
                trigger_id: None,
            },
            json!({"event_id": "e", "status": "failed", "result": null, "error": "boom",
                "node_id": "n", "process": "p", "trigger_id": null}),
        );
        assert_wire(
            EventInjected {
                status: "injected".into(),
                event_id: "e".into(),
                process: "p".into(),
            },
            json!({"status": "injected", "event_id": "e", "process": "p"}),
        );
        let mut queues = BTreeMap::new();
        queues.insert(
            "default".to_string(),
            QueueStats {
                pending: 1,
                running: 2,
            },
        );
        assert_wire(
            ClusterStatus {
                total_nodes: 3,
                healthy_nodes: 2,
                draining_nodes: 1,
                total_processes: 4,
                leader: Some("c1".into()),
                queues,
                runs: BTreeMap::new(),
            },
            json!({"total_nodes": 3, "healthy_nodes": 2, "draining_nodes": 1,
                "total_processes": 4, "leader": "c1",
                "queues": {"default": {"pending": 1, "running": 2}}, "runs": {}}),
        );
        assert_wire(
            CheckpointRecord {
                checkpoint_id: "c".into(),
                task_id: "r:0:item:1".into(),
                run_id: Some("r".into()),
                iteration: Some(0),
                shard_key: Some("item:1".into()),
                node_id: "n".into(),
                created_at: at.clone(),
                payload: json!({"done": 1}),
                metadata: Map::new(),
            },
            json!({"checkpoint_id": "c", "task_id": "r:0:item:1", "run_id": "r",
                "iteration": 0, "shard_key": "item:1", "node_id": "n", "created_at": at,
                "payload": {"done": 1}, "metadata": {}}),
        );
    }

    #[test]
    fn enum_words_match_the_contract() {
        let words = |v: Vec<Value>| {
            v.iter()
                .map(|w| w.as_str().unwrap().to_string())
                .collect::<Vec<_>>()
        };
        let statuses = [
            TaskStatus::Queued,
            TaskStatus::Running,
            TaskStatus::Completed,
            TaskStatus::Failed,
            TaskStatus::Dead,
            TaskStatus::Cancelled,
            TaskStatus::Timeout,
            TaskStatus::Unknown,
        ];
        let v: Vec<Value> = statuses
            .iter()
            .map(|s| serde_json::to_value(s).unwrap())
            .collect();
        assert_eq!(
            words(v),
            [
                "queued",
                "running",
                "completed",
                "failed",
                "dead",
                "cancelled",
                "timeout",
                "unknown"
            ]
        );
        for s in statuses {
            assert_eq!(serde_json::to_value(s).unwrap(), json!(s.as_str()));
        }
        let v: Vec<Value> = Priority::ALL
            .iter()
            .map(|p| serde_json::to_value(p).unwrap())
            .collect();
        assert_eq!(words(v), ["critical", "high", "normal", "low"]);
        for p in Priority::ALL {
            assert_eq!(p.as_str().parse::<Priority>().unwrap(), p);
        }
        let v: Vec<Value> = [Role::Worker, Role::Supervisor, Role::Hybrid]
            .iter()
            .map(|r| serde_json::to_value(r).unwrap())
            .collect();
        assert_eq!(words(v), ["worker", "supervisor", "hybrid"]);
        let v: Vec<Value> = [Health::Healthy, Health::Draining]
            .iter()
            .map(|h| serde_json::to_value(h).unwrap())
            .collect();
        assert_eq!(words(v), ["healthy", "draining"]);
        assert_eq!(TaskEnvelope::new("x", Value::Null).max_attempts(), 3);
    }

    #[test]
    fn bad_bodies_give_clear_errors() {
        let e = parse_object::<TaskEnvelope>(b"{nope").unwrap_err();
        assert_eq!(e.code(), "invalid_json");
        let e = parse_object::<TaskEnvelope>(b"[1,2]").unwrap_err();
        assert_eq!(e.code(), "invalid_json");
        let e = parse_object::<TaskEnvelope>(br#"{"type": 5}"#).unwrap_err();
        assert_eq!(e.code(), "invalid_value");
        assert!(e.reason().contains("invalid type"), "{}", e.reason());
        let env: TaskEnvelope = parse_object(br#"{"type": "echo", "max_attempts": 0}"#).unwrap();
        assert!(env.validate().is_err());
        let env: TaskEnvelope = parse_object(br#"{"type": "echo", "id": "a b"}"#).unwrap();
        assert!(env.validate().is_err());
    }

    #[test]
    fn backoff_uses_the_list_then_repeats_the_last() {
        let mut env = TaskEnvelope::new("x", Value::Null);
        env.backoff_s = Some(vec![0.1, 0.2]);
        assert_eq!(env.backoff(1), Duration::from_millis(100));
        assert_eq!(env.backoff(2), Duration::from_millis(200));
        assert_eq!(env.backoff(5), Duration::from_millis(200));
        env.backoff_s = None;
        let d = env.backoff(3).as_secs_f64();
        assert!((3.2..=4.8).contains(&d), "{d}");
    }
}
