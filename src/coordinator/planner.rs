//! Pure planning, no I/O: how a run splits into shards and how shards are
//! placed on nodes.

use serde::{Deserialize, Serialize};

use crate::error::{Error, ErrorCode};

/// How shards are placed on nodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum AssignStrategy {
    /// Fewest active tasks plus assigned shards first (default).
    #[default]
    LeastLoaded,
    /// In turn.
    RoundRobin,
}

impl std::str::FromStr for AssignStrategy {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        match s {
            "least_loaded" => Ok(AssignStrategy::LeastLoaded),
            "round_robin" => Ok(AssignStrategy::RoundRobin),
            o => Err(Error::Config(format!(
                "unknown assignment strategy {o:?}: use least_loaded or round_robin"
            ))),
        }
    }
}

/// The shard keys of a run: `slice:<start>:<end>` (half-open, by_slice and
/// by_dataset) or `item:<i>` (by_iteration).
pub fn plan_shards(
    strategy: &str,
    total_items: i64,
    shard_size: i64,
    max_shards: u64,
) -> Result<Vec<String>, Error> {
    let bad = |m: String| Err(Error::invalid(ErrorCode::InvalidValue, m));
    if total_items <= 0 {
        return bad(format!("total_items must be > 0, got {total_items}"));
    }
    let total = total_items as u64;
    let count = match strategy {
        "by_slice" | "by_dataset" => {
            if shard_size <= 0 {
                return bad(format!("shard_size must be > 0, got {shard_size}"));
            }
            total.div_ceil(shard_size as u64)
        }
        "by_iteration" => total,
        other => {
            return bad(format!(
                "unknown strategy {other:?}: use by_slice, by_dataset or by_iteration"
            ))
        }
    };
    if count > max_shards {
        return bad(format!(
            "run would have {count} shards, more than the maximum {max_shards}"
        ));
    }
    Ok(match strategy {
        "by_iteration" => (0..total).map(|i| format!("item:{i}")).collect(),
        _ => {
            let size = shard_size as u64;
            (0..count)
                .map(|i| {
                    let start = i * size;
                    format!("slice:{}:{}", start, (start + size).min(total))
                })
                .collect()
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn planner_makes_contiguous_slices_and_items() {
        assert_eq!(
            plan_shards("by_slice", 100, 25, 1000).unwrap(),
            ["slice:0:25", "slice:25:50", "slice:50:75", "slice:75:100"]
        );
        assert_eq!(
            plan_shards("by_dataset", 10, 4, 1000).unwrap(),
            ["slice:0:4", "slice:4:8", "slice:8:10"]
        );
        assert_eq!(
            plan_shards("by_iteration", 3, 0, 1000).unwrap(),
            ["item:0", "item:1", "item:2"]
        );
        assert!(plan_shards("by_slice", 10, 0, 1000).is_err());
        assert!(plan_shards("by_slice", 0, 1, 1000).is_err());
        assert!(plan_shards("by_slice", -5, 1, 1000).is_err());
        assert!(plan_shards("by_magic", 10, 1, 1000).is_err());
        assert!(plan_shards("by_iteration", 2000, 1, 1000).is_err());
        assert_eq!(
            crate::wire::protocol::shard_task_id("r", 0, "item:1"),
            "r:0:item:1"
        );
    }
}
