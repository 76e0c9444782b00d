//! How the agent coordinator picks an agent for a task (seed 001):
//! `--agent-strategy` `least_connections` (default), `round_robin`,
//! `random` or `weighted`, each tempered by the agent's health score.
//!
//! Health score, in `[0.05, 1]`, from what the agent's discovery entry says:
//! - missed beats: the entry's age against the bridge's 1 s heartbeat
//!   (`1 / (1 + missed)`);
//! - failures: `0.2 + 0.8 × (1 - failed / (completed + failed + 1))`.
//!
//! Latency is not scored yet (nodes do not report handler times).

use std::str::FromStr;
use std::sync::atomic::{AtomicUsize, Ordering};

use serde_json::Value;

use crate::error::{Error, ErrorCode};
use crate::wire::protocol::NodeInfo;

/// An agent-selection strategy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Strategy {
    /// The agent with the fewest running tasks per unit of health.
    #[default]
    LeastConnections,
    /// Each healthy agent in turn (agents scoring under 0.5 are skipped
    /// while others score higher).
    RoundRobin,
    /// At random, in proportion to health.
    Random,
    /// At random, in proportion to capacity (slots) times health.
    Weighted,
}

impl Strategy {
    /// The wire name (`/tasks/status` reports it).
    pub fn as_str(self) -> &'static str {
        match self {
            Strategy::LeastConnections => "least_connections",
            Strategy::RoundRobin => "round_robin",
            Strategy::Random => "random",
            Strategy::Weighted => "weighted",
        }
    }
}

impl FromStr for Strategy {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        match s {
            "least_connections" => Ok(Strategy::LeastConnections),
            "round_robin" => Ok(Strategy::RoundRobin),
            "random" => Ok(Strategy::Random),
            "weighted" => Ok(Strategy::Weighted),
            other => Err(Error::invalid(
                ErrorCode::InvalidValue,
                format!("unknown agent strategy {other:?}: least_connections, round_robin, random or weighted"),
            )),
        }
    }
}

/// An agent's health score in `[0.05, 1]` (see the module doc).
pub fn health_score(n: &NodeInfo) -> f64 {
    let age = n.heartbeat_age_s().unwrap_or(0.0);
    let missed = (age - 1.0).max(0.0);
    let count = |k: &str| n.metadata.get(k).and_then(Value::as_u64).unwrap_or(0) as f64;
    let (done, failed) = (count("completed"), count("failed"));
    let success = 1.0 - failed / (done + failed + 1.0);
    ((1.0 / (1.0 + missed)) * (0.2 + 0.8 * success)).clamp(0.05, 1.0)
}

/// Picks one of `candidates` (already filtered for health and
/// capabilities); `turn` is the sidecar's round-robin counter.
pub fn pick<'a>(
    strategy: Strategy,
    candidates: &[&'a NodeInfo],
    turn: &AtomicUsize,
) -> Option<&'a NodeInfo> {
    let mut c: Vec<(&NodeInfo, f64)> = candidates.iter().map(|n| (*n, health_score(n))).collect();
    c.sort_by(|a, b| a.0.node_id.cmp(&b.0.node_id));
    match strategy {
        Strategy::LeastConnections => c
            .iter()
            .min_by(|a, b| {
                let load = |x: &(&NodeInfo, f64)| f64::from(x.0.active_tasks + 1) / x.1;
                load(a).total_cmp(&load(b))
            })
            .map(|x| x.0),
        Strategy::RoundRobin => {
            let good: Vec<_> = c.iter().filter(|x| x.1 >= 0.5).collect();
            let pool: Vec<_> = if good.is_empty() {
                c.iter().collect()
            } else {
                good
            };
            let i = turn.fetch_add(1, Ordering::Relaxed);
            pool.get(i % pool.len().max(1)).map(|x| x.0)
        }
        Strategy::Random => weighted_draw(&c, |x| x.1),
        Strategy::Weighted => weighted_draw(&c, |x| f64::from(x.0.max_concurrency.max(1)) * x.1),
    }
}

fn weighted_draw<'a>(
    c: &[(&'a NodeInfo, f64)],
    weight: impl Fn(&(&'a NodeInfo, f64)) -> f64,
) -> Option<&'a NodeInfo> {
    let total: f64 = c.iter().map(&weight).sum();
    let mut x = fastrand::f64() * total;
    for item in c {
        x -= weight(item);
        if x <= 0.0 {
            return Some(item.0);
        }
    }
    c.last().map(|x| x.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::protocol::{now_rfc3339, Health, Role};

    fn agent(id: &str, active: u32, slots: u32, failed: u64, age_s: i64) -> NodeInfo {
        let at = time::OffsetDateTime::now_utc() - time::Duration::seconds(age_s);
        let mut metadata = serde_json::Map::new();
        metadata.insert("completed".into(), serde_json::json!(10));
        metadata.insert("failed".into(), serde_json::json!(failed));
        NodeInfo {
            node_id: id.into(),
            role: Role::Worker,
            hostname: "h".into(),
            pid: 1,
            url: None,
            queues: vec![],
            capabilities: vec![],
            max_concurrency: slots,
            health: Health::Healthy,
            active_tasks: active,
            started_at: now_rfc3339(),
            last_heartbeat_at: crate::wire::protocol::format_rfc3339(at),
            state: Default::default(),
            uptime_s: 0.0,
            available: true,
            metadata,
        }
    }

    #[test]
    fn strategies_pick_as_documented() {
        let turn = AtomicUsize::new(0);
        let (a, b) = (agent("a", 3, 4, 0, 0), agent("b", 1, 4, 0, 0));
        let both = [&a, &b];
        let pick_id = |s| pick(s, &both, &turn).map(|n| n.node_id.clone());
        assert_eq!(pick_id(Strategy::LeastConnections).as_deref(), Some("b"));
        let rr: Vec<String> = (0..4)
            .filter_map(|_| pick_id(Strategy::RoundRobin))
            .collect();
        assert_eq!(rr, ["a", "b", "a", "b"]);
        // A failing, silent agent scores low and loses least_connections
        // even when idle; weighted favours capacity.
        let sick = agent("sick", 0, 4, 40, 6);
        assert!(health_score(&sick) < 0.1, "{}", health_score(&sick));
        assert!(health_score(&b) > 0.9);
        let with_sick = [&sick, &b];
        assert_eq!(
            pick(Strategy::LeastConnections, &with_sick, &turn)
                .unwrap()
                .node_id,
            "b"
        );
        let big = agent("big", 0, 100, 0, 0);
        let small = agent("small", 0, 1, 0, 0);
        let n = (0..200)
            .filter(|_| {
                pick(Strategy::Weighted, &[&big, &small], &turn)
                    .unwrap()
                    .node_id
                    == "big"
            })
            .count();
        assert!(n > 180, "big picked {n}/200");
        assert!("fastest".parse::<Strategy>().is_err());
        assert_eq!(
            "round_robin".parse::<Strategy>().unwrap().as_str(),
            "round_robin"
        );
    }
}
