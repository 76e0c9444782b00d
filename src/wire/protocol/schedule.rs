//! Periodic tasks (contract §12): the bodies of `P.api.schedules.*`.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::Priority;

/// `P.api.schedules.create` request: exactly one of `every_s` and `cron`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ScheduleCreate {
    /// The schedule's id (`[A-Za-z0-9_-]{1,64}`); creating it again replaces it.
    pub schedule_id: String,
    /// Fire every this many whole seconds (>= 1).
    #[serde(default)]
    pub every_s: Option<u64>,
    /// Or on this cron expression: six fields, seconds first
    /// (`sec min hour day month weekday`), as the NATS server reads it.
    #[serde(default)]
    pub cron: Option<String>,
    /// The task type (handler name).
    #[serde(rename = "type")]
    pub task_type: String,
    /// The task payload.
    #[serde(default)]
    pub payload: Value,
    /// Queue (default `default`).
    #[serde(default)]
    pub queue: Option<String>,
    /// Priority (default `normal`).
    #[serde(default)]
    pub priority: Option<Priority>,
    /// Task metadata (`schedule_id` is added).
    #[serde(default)]
    pub metadata: Map<String, Value>,
}

/// One schedule as `create` and `list` show it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ScheduleInfo {
    /// The schedule's id.
    pub schedule_id: String,
    /// Its period, when it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub every_s: Option<u64>,
    /// Its cron expression, when it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cron: Option<String>,
    /// The task type it fires.
    #[serde(rename = "type")]
    pub task_type: String,
    /// The queue it fires onto.
    pub queue: String,
    /// The priority it fires at.
    pub priority: Priority,
    /// When it fires next (null when it cannot be told).
    pub next_at: Option<String>,
}

/// `P.api.schedules.delete` request.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ScheduleRef {
    /// The schedule's id.
    pub schedule_id: String,
}
