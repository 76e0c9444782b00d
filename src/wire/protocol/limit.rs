//! Flow control (contract §15): the bodies of `P.api.limits.*` and the
//! limit specs kept in the `P-limits` KV bucket.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::error::{Error, ErrorCode};
use crate::wire::ids::validate_id;

/// The key a task without `limit_key` counts under.
pub const DEFAULT_LIMIT_KEY: &str = "_";

/// Checks a limit id or limit key: `[A-Za-z0-9_-]{1,64}`, else
/// `invalid_value` (as §15 says for every invalid limit field).
pub fn validate_limit_name(what: &str, value: &str) -> Result<(), Error> {
    validate_id(what, value).map_err(|e| Error::invalid(ErrorCode::InvalidValue, e.reason()))
}

/// `P.api.limits.set` request (and, with its defaults filled in, the value
/// stored under `limit_id` in `P-limits`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct LimitSpec {
    /// The limit's id (`[A-Za-z0-9_-]{1,64}`); setting it again changes it.
    pub limit_id: String,
    /// Only tasks of this queue (absent: any queue).
    #[serde(default)]
    pub queue: Option<String>,
    /// Only tasks of this type (absent: any type).
    #[serde(default, rename = "type")]
    pub task_type: Option<String>,
    /// At most this many tasks of one key run at once, cluster-wide (>= 1).
    #[serde(default)]
    pub max_running: Option<u32>,
    /// At most this many starts per second per key (> 0), token bucket.
    #[serde(default)]
    pub per_second: Option<f64>,
    /// The bucket's size (>= 1; default: the ceiling of `per_second`).
    #[serde(default)]
    pub burst: Option<u32>,
}

impl LimitSpec {
    /// Checks every field and fills in `burst`; the error (`invalid_value`)
    /// names the bad field.
    pub fn validated(mut self) -> Result<Self, Error> {
        let bad = |m: String| Err(Error::invalid(ErrorCode::InvalidValue, m));
        validate_limit_name("limit_id", &self.limit_id)?;
        if let Some(q) = &self.queue {
            validate_limit_name("queue", q)?;
        }
        if let Some(t) = &self.task_type {
            if t.is_empty() || t.len() > 128 {
                return bad("field `type` must be 1 to 128 bytes".into());
            }
        }
        if self.max_running.is_none() && self.per_second.is_none() {
            return bad("give max_running (an integer >= 1) or per_second (a number > 0)".into());
        }
        if self.max_running == Some(0) {
            return bad("field `max_running` must be >= 1".into());
        }
        if let Some(r) = self.per_second {
            if !(r.is_finite() && r > 0.0 && r <= 1e6) {
                return bad(format!("field `per_second` must be > 0, got {r}"));
            }
            if self.burst == Some(0) {
                return bad("field `burst` must be >= 1".into());
            }
            self.burst = Some(self.burst.unwrap_or(r.ceil() as u32).max(1));
        } else if self.burst.is_some() {
            return bad("field `burst` needs per_second".into());
        }
        Ok(self)
    }

    /// Whether the limit applies to a task of `queue` and `task_type`.
    pub fn matches(&self, queue: &str, task_type: &str) -> bool {
        self.queue.as_deref().is_none_or(|q| q == queue)
            && self.task_type.as_deref().is_none_or(|t| t == task_type)
    }
}

/// One limit as `P.api.limits.list` shows it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct LimitInfo {
    /// The limit's id.
    pub limit_id: String,
    /// Its queue, or null for any.
    pub queue: Option<String>,
    /// Its task type, or null for any.
    #[serde(rename = "type")]
    pub task_type: Option<String>,
    /// Concurrency cap per key, or null.
    pub max_running: Option<u32>,
    /// Starts per second per key, or null.
    pub per_second: Option<f64>,
    /// Token bucket size, or null.
    pub burst: Option<u32>,
    /// Tasks of this limit whose handler runs now, by `limit_key`.
    pub running: BTreeMap<String, u32>,
}

/// `P.api.limits.list` reply.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct LimitList {
    /// Every limit, by id.
    pub limits: Vec<LimitInfo>,
}

/// `P.api.limits.delete` request.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct LimitRef {
    /// The limit's id.
    pub limit_id: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(v: serde_json::Value) -> Result<LimitSpec, Error> {
        serde_json::from_value::<LimitSpec>(v)
            .map_err(|e| Error::invalid(ErrorCode::InvalidValue, e.to_string()))?
            .validated()
    }

    #[test]
    fn limits_are_checked_and_burst_defaults_to_the_rate_ceiling() {
        use serde_json::json;
        let s = spec(json!({"limit_id": "api", "per_second": 2.5})).expect("valid");
        assert_eq!(s.burst, Some(3));
        let s = spec(json!({"limit_id": "db", "max_running": 2, "type": "q"})).expect("valid");
        assert!(s.matches("default", "q") && s.matches("other", "q"));
        assert!(!s.matches("default", "r"));
        for bad in [
            json!({"limit_id": "x"}),
            json!({"limit_id": "x", "max_running": 0}),
            json!({"limit_id": "x", "per_second": 0}),
            json!({"limit_id": "x", "per_second": -1}),
            json!({"limit_id": "x", "per_second": 1, "burst": 0}),
            json!({"limit_id": "x", "max_running": 1, "burst": 2}),
            json!({"limit_id": "a.b", "max_running": 1}),
            json!({"limit_id": "x", "max_running": 1, "queue": "a b"}),
        ] {
            let e = spec(bad.clone()).expect_err(&bad.to_string());
            assert_eq!(e.code(), "invalid_value", "{bad}");
        }
    }
}
