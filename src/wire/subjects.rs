//! Every subject, stream, consumer, KV bucket and object-store name jetweave
//! uses, built from the prefix in one place (contract: Conventions).
//!
//! Nothing else in the crate writes a subject by hand: it asks a
//! [`Subjects`] value. The ids that become subject tokens are checked by
//! [`super::ids`] (re-exported here).
//!
//! ```
//! use jetweave::subjects::Subjects;
//! let s = Subjects::new("weave").unwrap();
//! assert_eq!(s.heartbeat("n1"), "weave.node.n1.heartbeat");
//! assert_eq!(s.tasks_stream(), "WEAVE_TASKS");
//! assert_eq!(s.nodes_bucket(), "weave-nodes");
//! ```

pub use super::ids::{decode_key, encode_key, validate_id, validate_task_id};
use super::protocol::Priority;
use crate::error::Error;

/// The default subject prefix.
pub const DEFAULT_PREFIX: &str = "weave";

/// Name of the NATS micro service every node registers.
pub const NODE_SERVICE: &str = "weave-node";
/// Name of the NATS micro service every worker pool registers.
pub const POOL_SERVICE: &str = "weave-pool";
/// Name of the NATS micro service every coordinator registers.
pub const API_SERVICE: &str = "weave-api";

/// Builds every name from the prefix `P`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subjects {
    prefix: String,
    upper: String,
}

impl Subjects {
    /// A subject map for `prefix` (`[A-Za-z0-9_-]{1,64}`).
    pub fn new(prefix: &str) -> Result<Self, Error> {
        validate_id("prefix", prefix)?;
        Ok(Subjects {
            prefix: prefix.to_string(),
            upper: prefix.to_uppercase().replace('-', "_"),
        })
    }

    /// The prefix itself.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    // ---- discovery and heartbeats -------------------------------------

    /// KV bucket holding one NodeInfo per live node: `P-nodes`.
    pub fn nodes_bucket(&self) -> String {
        format!("{}-nodes", self.prefix)
    }
    /// `P.node.<node_id>.heartbeat`.
    pub fn heartbeat(&self, node_id: &str) -> String {
        format!("{}.node.{}.heartbeat", self.prefix, node_id)
    }
    /// `P.node.*.heartbeat`: every node's heartbeats.
    pub fn heartbeat_all(&self) -> String {
        format!("{}.node.*.heartbeat", self.prefix)
    }

    // ---- control ------------------------------------------------------

    /// `P.ctl.<node_id>`: the group prefix of a node's control endpoints.
    pub fn ctl_group(&self, node_id: &str) -> String {
        format!("{}.ctl.{}", self.prefix, node_id)
    }
    /// `P.ctl.<node_id>.<verb>`.
    pub fn ctl(&self, node_id: &str, verb: &str) -> String {
        format!("{}.ctl.{}.{}", self.prefix, node_id, verb)
    }
    /// `P.ctl.all.<verb>`: broadcast to every live node.
    pub fn ctl_all(&self, verb: &str) -> String {
        format!("{}.ctl.all.{}", self.prefix, verb)
    }
    /// `P.ctl.<node_id>.process.<name>.<verb>`.
    pub fn ctl_process(&self, node_id: &str, name: &str, verb: &str) -> String {
        format!("{}.ctl.{}.process.{}.{}", self.prefix, node_id, name, verb)
    }
    /// `P.ctl.<node_id>.>`: everything addressed to one node.
    pub fn ctl_node_wildcard(&self, node_id: &str) -> String {
        format!("{}.ctl.{}.>", self.prefix, node_id)
    }
    /// `P.ctl.all.*`.
    pub fn ctl_all_wildcard(&self) -> String {
        format!("{}.ctl.all.*", self.prefix)
    }
    /// `P.ctl.all.task_lookup`: "is anyone running this task?" (internal).
    pub fn task_lookup(&self) -> String {
        self.ctl_all("task_lookup")
    }

    // ---- events -------------------------------------------------------

    /// `P.event.<node_id>.<process>`: inject an event into a process.
    pub fn event(&self, node_id: &str, process: &str) -> String {
        format!("{}.event.{}.{}", self.prefix, node_id, process)
    }
    /// `P.event.<node_id>.*`.
    pub fn event_node_wildcard(&self, node_id: &str) -> String {
        format!("{}.event.{}.*", self.prefix, node_id)
    }
    /// `P.events.process.<node_id>.<process>`: outcomes of injected events.
    pub fn event_outcome(&self, node_id: &str, process: &str) -> String {
        format!("{}.events.process.{}.{}", self.prefix, node_id, process)
    }
    /// `P.events.<kind...>`: audit log entries, e.g. `node.joined`.
    pub fn audit(&self, kind: &str) -> String {
        format!("{}.events.{}", self.prefix, kind)
    }
    /// `P.events.>`.
    pub fn events_wildcard(&self) -> String {
        format!("{}.events.>", self.prefix)
    }
    /// Stream `P_EVENTS`.
    pub fn events_stream(&self) -> String {
        format!("{}_EVENTS", self.upper)
    }

    // ---- tasks --------------------------------------------------------

    /// Stream `P_TASKS` (work-queue retention).
    pub fn tasks_stream(&self) -> String {
        format!("{}_TASKS", self.upper)
    }
    /// `P.tasks.<queue>.<priority>`.
    pub fn task(&self, queue: &str, priority: Priority) -> String {
        format!("{}.tasks.{}.{}", self.prefix, queue, priority.as_str())
    }
    /// `P.tasks.<queue>.*`.
    pub fn task_queue_wildcard(&self, queue: &str) -> String {
        format!("{}.tasks.{}.*", self.prefix, queue)
    }
    /// `P.tasks.>`.
    pub fn tasks_wildcard(&self) -> String {
        format!("{}.tasks.>", self.prefix)
    }
    /// `P.tasks.*.<priority>` for each priority: what `P_TASKS` stores, so
    /// that a publish on an unknown priority (or with a dotted queue name)
    /// is refused by the server (no stream answers) instead of being
    /// acknowledged and never consumed.
    pub fn task_subjects(&self) -> Vec<String> {
        crate::wire::protocol::Priority::ALL
            .iter()
            .map(|p| format!("{}.tasks.*.{}", self.prefix, p.as_str()))
            .collect()
    }
    /// `P.delayed.>`: where a delayed task waits as a message schedule.
    pub fn delayed_wildcard(&self) -> String {
        format!("{}.delayed.>", self.prefix)
    }
    /// `P.delayed.<queue>.<priority>.<encoded task id>`.
    pub fn delayed(&self, queue: &str, priority: Priority, task_id: &str) -> String {
        format!(
            "{}.delayed.{}.{}.{}",
            self.prefix,
            queue,
            priority.as_str(),
            encode_key(task_id)
        )
    }
    /// `P.delayed.schedule.<schedule_id>`: where a periodic task's message
    /// schedule is kept (one token fewer than a delayed task's subject).
    pub fn schedule(&self, schedule_id: &str) -> String {
        format!("{}.delayed.schedule.{}", self.prefix, schedule_id)
    }
    /// `P.delayed.schedule.*`: every periodic task's schedule.
    pub fn schedules_wildcard(&self) -> String {
        format!("{}.delayed.schedule.*", self.prefix)
    }
    /// `P.delayed.*.*.*`: delayed tasks only (not schedules).
    pub fn delayed_tasks_wildcard(&self) -> String {
        format!("{}.delayed.*.*.*", self.prefix)
    }
    /// Durable consumer shared by every node serving `queue` at `priority`.
    pub fn task_consumer(&self, queue: &str, priority: Priority) -> String {
        format!("tasks_{}_{}", queue, priority.as_str())
    }
    /// Stream `P_RESULTS`.
    pub fn results_stream(&self) -> String {
        format!("{}_RESULTS", self.upper)
    }
    /// `P.results.<task_id>`.
    pub fn result(&self, task_id: &str) -> String {
        format!("{}.results.{}", self.prefix, task_id)
    }
    /// `P.results.>`.
    pub fn results_wildcard(&self) -> String {
        format!("{}.results.>", self.prefix)
    }
    /// Stream `P_DLQ`.
    pub fn dlq_stream(&self) -> String {
        format!("{}_DLQ", self.upper)
    }
    /// `P.dlq.<queue>`.
    pub fn dlq(&self, queue: &str) -> String {
        format!("{}.dlq.{}", self.prefix, queue)
    }
    /// `P.dlq.>`.
    pub fn dlq_wildcard(&self) -> String {
        format!("{}.dlq.>", self.prefix)
    }
    /// KV bucket `P-attempts`: failed-attempt counts of tasks being retried.
    pub fn attempts_bucket(&self) -> String {
        format!("{}-attempts", self.prefix)
    }
    /// KV bucket `P-cancels`: cancel requests, watched by every node.
    pub fn cancels_bucket(&self) -> String {
        format!("{}-cancels", self.prefix)
    }
    /// KV bucket `P-agents`: agents registered through a sidecar (per-key
    /// TTL), so any sidecar can serve their bridges.
    pub fn agents_bucket(&self) -> String {
        format!("{}-agents", self.prefix)
    }
    /// KV bucket `P-limits`: flow-control limits by id, watched by every
    /// node (contract §15).
    pub fn limits_bucket(&self) -> String {
        format!("{}-limits", self.prefix)
    }
    /// KV bucket `P-limit-state`: running slots and token buckets of the
    /// limits, per key, with per-key TTLs (see [`limit_slot_key`]).
    pub fn limit_state_bucket(&self) -> String {
        format!("{}-limit-state", self.prefix)
    }

    // ---- API ----------------------------------------------------------

    /// `P.api`: group prefix of the `weave-api` service.
    pub fn api_group(&self) -> String {
        format!("{}.api", self.prefix)
    }
    /// `P.api.<endpoint>`, e.g. `tasks.submit`.
    pub fn api(&self, endpoint: &str) -> String {
        format!("{}.api.{}", self.prefix, endpoint)
    }

    // ---- runs, shards, checkpoints --------------------------------------

    /// Stream `P_SHARDS`.
    pub fn shards_stream(&self) -> String {
        format!("{}_SHARDS", self.upper)
    }
    /// `P.shards.<node_id>`.
    pub fn shards(&self, node_id: &str) -> String {
        format!("{}.shards.{}", self.prefix, node_id)
    }
    /// `P.shards.>`.
    pub fn shards_wildcard(&self) -> String {
        format!("{}.shards.>", self.prefix)
    }
    /// Durable consumer a node reads its shards with.
    pub fn shard_consumer(&self, node_id: &str) -> String {
        format!("shards_{}", node_id)
    }
    /// `P.shard_done`: a node reports a finished shard to the coordinator.
    pub fn shard_done(&self) -> String {
        format!("{}.ctl.coordinator.shard_done", self.prefix)
    }
    /// `P.ctl.coordinator.rebalance`.
    pub fn rebalance(&self) -> String {
        format!("{}.ctl.coordinator.rebalance", self.prefix)
    }
    /// KV bucket `P-runs`.
    pub fn runs_bucket(&self) -> String {
        format!("{}-runs", self.prefix)
    }
    /// KV bucket `P-leader` (the coordinator lease).
    pub fn leader_bucket(&self) -> String {
        format!("{}-leader", self.prefix)
    }
    /// Object store `P-checkpoints`.
    pub fn checkpoints_store(&self) -> String {
        format!("{}-checkpoints", self.prefix)
    }
    /// KV bucket `P-checkpoint-index`: per task, the names of its kept
    /// checkpoints (so `latest` and pruning never list the object store).
    pub fn checkpoint_index_bucket(&self) -> String {
        format!("{}-checkpoint-index", self.prefix)
    }
    /// Stream `P_REPLICAS_PROBE`: a throwaway stream that asks a cluster how
    /// many replicas it can place (created and deleted at once).
    pub fn replicas_probe_stream(&self) -> String {
        format!("{}_REPLICAS_PROBE", self.upper)
    }
    /// The probe stream's one subject.
    pub fn replicas_probe(&self) -> String {
        format!("_{}.replicas_probe", self.prefix)
    }

    // ---- NATS's own names for jetweave's resources ----------------------

    /// Every JetStream stream jetweave uses: its own streams and the
    /// streams behind its KV buckets and object store.
    pub fn all_streams(&self) -> Vec<String> {
        let mut v = vec![
            self.tasks_stream(),
            self.results_stream(),
            self.dlq_stream(),
            self.events_stream(),
            self.shards_stream(),
        ];
        v.extend(self.all_buckets().iter().map(|b| kv_stream(b)));
        v.push(object_stream(&self.checkpoints_store()));
        v
    }
    /// Every KV bucket jetweave uses.
    pub fn all_buckets(&self) -> Vec<String> {
        vec![
            self.nodes_bucket(),
            self.attempts_bucket(),
            self.cancels_bucket(),
            self.limits_bucket(),
            self.limit_state_bucket(),
            self.agents_bucket(),
            self.runs_bucket(),
            self.leader_bucket(),
            self.checkpoint_index_bucket(),
        ]
    }
}

/// Key of running slot `index` of a limit and limit key in
/// `P-limit-state`: `run.<limit_id>.<limit_key>.<index>`.
pub fn limit_slot_key(limit_id: &str, limit_key: &str, index: u32) -> String {
    format!("run.{limit_id}.{limit_key}.{index}")
}
/// Key of the token bucket of a limit and limit key in `P-limit-state`:
/// `rate.<limit_id>.<limit_key>`.
pub fn limit_rate_key(limit_id: &str, limit_key: &str) -> String {
    format!("rate.{limit_id}.{limit_key}")
}
/// The limit id, limit key and index of a slot key (inverse of
/// [`limit_slot_key`]).
pub fn parse_limit_slot_key(key: &str) -> Option<(&str, &str, u32)> {
    let mut t = key.split('.');
    match (t.next(), t.next(), t.next(), t.next(), t.next()) {
        (Some("run"), Some(l), Some(k), Some(i), None) => Some((l, k, i.parse().ok()?)),
        _ => None,
    }
}

/// `KV_<bucket>`: the stream behind a KV bucket.
pub fn kv_stream(bucket: &str) -> String {
    format!("KV_{bucket}")
}
/// `$KV.<bucket>.<key>`: where a KV put or delete is published.
pub fn kv_key(bucket: &str, key: &str) -> String {
    format!("$KV.{bucket}.{key}")
}
/// `OBJ_<store>`: the stream behind an object store.
pub fn object_stream(store: &str) -> String {
    format!("OBJ_{store}")
}
/// `$O.<store>.>`: the chunks and metadata of an object store.
pub fn object_subjects(store: &str) -> String {
    format!("$O.{store}.>")
}
/// `$JS.API.<tail>`: a JetStream API subject, e.g. `STREAM.INFO.WEAVE_TASKS`.
pub fn js_api(tail: &str) -> String {
    format!("$JS.API.{tail}")
}
/// `$JS.ACK.<stream>.<consumer>.>`: the acks of one consumer's messages.
pub fn js_ack(stream: &str, consumer: &str) -> String {
    format!("$JS.ACK.{stream}.{consumer}.>")
}
/// `$JS.FC.<stream>.>`: flow-control replies of push consumers (watches).
pub fn js_flow_control(stream: &str) -> String {
    format!("$JS.FC.{stream}.>")
}
/// `$SRV.PING.<service>`: every instance of a micro service answers.
pub fn micro_ping(service: &str) -> String {
    format!("$SRV.PING.{service}")
}
/// `$SRV.<verb>[.<service>[.<id>]]` for every verb and id of a micro
/// service named `service`: what it subscribes to.
pub fn micro_service(service: &str) -> Vec<String> {
    vec![
        "$SRV.*".to_string(),
        format!("$SRV.*.{service}"),
        format!("$SRV.*.{service}.*"),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_prefix() {
        let s = Subjects::new("acme-1").unwrap();
        assert_eq!(s.tasks_stream(), "ACME_1_TASKS");
        assert_eq!(s.nodes_bucket(), "acme-1-nodes");
        assert_eq!(
            s.task("default", Priority::Critical),
            "acme-1.tasks.default.critical"
        );
        assert_eq!(
            s.ctl_process("n1", "w", "start"),
            "acme-1.ctl.n1.process.w.start"
        );
        assert_eq!(s.checkpoints_store(), "acme-1-checkpoints");
        assert!(Subjects::new("we.ave").is_err());
    }
}
