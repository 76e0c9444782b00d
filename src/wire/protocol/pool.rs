//! Worker pools (contract §10): the `status` reply and the `scale` request
//! of `P.ctl.<pool_id>.<verb>`.

use serde::{Deserialize, Serialize};

/// `P.ctl.<pool_id>.status` reply.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PoolStatus {
    /// Always true (errors are error replies).
    pub ok: bool,
    /// The pool.
    pub pool_id: String,
    /// Node ids of its serving workers (not those draining away).
    pub workers: Vec<String>,
    /// `workers.len()`.
    pub worker_count: u32,
    /// Fewest workers.
    pub min: u32,
    /// Most workers.
    pub max: u32,
    /// How many workers it is heading for.
    pub desired: u32,
    /// Whether it scales on its own (`--no-auto-scale` makes it false).
    pub auto_scale: bool,
    /// Seconds until auto-scaling resumes after a manual `scale` (0 when
    /// none holds).
    pub manual_hold_s: f64,
    /// Tasks waiting on the pool's queues (the task consumers' `num_pending`).
    pub pending: u64,
    /// Tasks its workers run now (from their heartbeats).
    pub current_tasks: u64,
    /// Tasks its workers completed since the pool started.
    pub total_completed: u64,
}

/// `P.ctl.<pool_id>.scale` request.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ScaleRequest {
    /// The worker count wanted, within `[min, max]`.
    pub workers: u32,
}

/// `P.ctl.<pool_id>.scale` reply.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ScaleReply {
    /// Always true.
    pub ok: bool,
    /// The new desired count.
    pub desired: u32,
}
