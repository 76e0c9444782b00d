//! Node configuration: the TOML file (`--config`), overridden by flags and
//! environment variables (the CLI applies those on top of [`NodeConfig`]).
//!
//! ```toml
//! [node]
//! node_id = "n1"
//! queues = ["default"]
//! concurrency = 8
//! [[handler]]
//! type = "resize"
//! exec = ["python3", "resize.py"]
//! [[process]]
//! name = "watcher"
//! handler = "echo"
//! autostart = true
//! ```

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

use crate::error::{Error, ErrorCode};
use crate::wire::protocol::Role;
use crate::wire::subjects::validate_id;

/// An external handler declared in the config file.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct HandlerSpec {
    /// The task type it handles.
    #[serde(rename = "type")]
    pub task_type: String,
    /// A command: the envelope as JSON on stdin, the result as JSON on stdout.
    #[serde(default)]
    pub exec: Option<Vec<String>>,
    /// A URL the envelope is POSTed to; a 2xx JSON body is the result.
    #[serde(default)]
    pub http: Option<String>,
}

/// A named process hosted by the node.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ProcessSpec {
    /// The process name.
    pub name: String,
    /// The handler type its events run.
    pub handler: String,
    /// Start with the node (default true).
    #[serde(default = "yes")]
    pub autostart: bool,
    /// Inject an event every this many seconds while the process runs.
    #[serde(default)]
    pub every_s: Option<f64>,
    /// Or on this cron expression (five fields, minute first, as crontab;
    /// or six, seconds first).
    #[serde(default)]
    pub cron: Option<String>,
    /// The payload of the events a trigger injects (default null).
    #[serde(default)]
    pub payload: serde_json::Value,
}

/// When a process's trigger fires.
#[derive(Debug, Clone)]
pub enum Trigger {
    /// Every period.
    Every(Duration),
    /// On a cron schedule.
    Cron(Box<cron::Schedule>),
}

impl Trigger {
    /// How long from now until it fires next.
    pub fn next_in(&self) -> Duration {
        match self {
            Trigger::Every(d) => *d,
            Trigger::Cron(s) => s
                .upcoming(chrono::Utc)
                .next()
                .and_then(|t| (t - chrono::Utc::now()).to_std().ok())
                .unwrap_or(Duration::from_secs(60)),
        }
    }

    /// `every` or `cron`, as the events it injects name their trigger.
    pub fn kind(&self) -> &'static str {
        match self {
            Trigger::Every(_) => "every",
            Trigger::Cron(_) => "cron",
        }
    }
}

impl ProcessSpec {
    /// A process bound to `handler`, started with the node, no trigger.
    pub fn new(name: impl Into<String>, handler: impl Into<String>) -> Self {
        ProcessSpec {
            name: name.into(),
            handler: handler.into(),
            autostart: true,
            every_s: None,
            cron: None,
            payload: serde_json::Value::Null,
        }
    }

    /// Its trigger, if it has one; an error for an invalid one.
    pub fn trigger(&self) -> Result<Option<Trigger>, Error> {
        match (self.every_s, self.cron.as_deref()) {
            (None, None) => Ok(None),
            (Some(_), Some(_)) => Err(Error::Config(format!(
                "process {:?}: give every_s or cron, not both",
                self.name
            ))),
            (Some(s), None) => {
                if !(s.is_finite() && s >= 0.1) {
                    return Err(Error::Config(format!(
                        "process {:?}: every_s must be >= 0.1, got {s}",
                        self.name
                    )));
                }
                Ok(Some(Trigger::Every(Duration::from_secs_f64(s))))
            }
            (None, Some(c)) => {
                let fields = c.split_whitespace().count();
                // crontab's five fields (minute first) get second 0.
                let six = if fields == 5 {
                    format!("0 {c}")
                } else {
                    c.to_string()
                };
                let sched = <cron::Schedule as std::str::FromStr>::from_str(&six).map_err(|e| {
                    Error::Config(format!("process {:?}: invalid cron {c:?}: {e}", self.name))
                })?;
                Ok(Some(Trigger::Cron(Box::new(sched))))
            }
        }
    }
}

fn yes() -> bool {
    true
}

/// Most queues, capabilities or metadata keys a node may have (each list
/// travels in every heartbeat and discovery entry).
pub const MAX_LISTED: usize = 32;
/// Longest metadata key, in bytes.
pub const MAX_METADATA_KEY: usize = 64;
/// Longest metadata value, in bytes.
pub const MAX_METADATA_VALUE: usize = 256;

/// Everything a node needs to run.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeConfig {
    /// Subject prefix.
    pub prefix: String,
    /// The node id.
    pub node_id: String,
    /// worker, supervisor or hybrid.
    pub role: Role,
    /// Queues served.
    pub queues: Vec<String>,
    /// Capabilities offered to runs.
    pub capabilities: Vec<String>,
    /// Task slots.
    pub concurrency: u32,
    /// Heartbeat period.
    pub heartbeat_interval: Duration,
    /// Discovery entry TTL (whole seconds).
    pub node_ttl: Duration,
    /// Ack wait of task consumers (whole seconds).
    pub ack_wait: Duration,
    /// Sidecar URL advertised in discovery.
    pub url: Option<String>,
    /// External handlers.
    pub handlers: Vec<HandlerSpec>,
    /// Hosted processes.
    pub processes: Vec<ProcessSpec>,
    /// Free-form metadata in NodeInfo.
    pub metadata: BTreeMap<String, String>,
    /// Checkpoints kept per task.
    pub checkpoints_keep: usize,
    /// Bound on one attempt of a task that sets no `timeout_s` (none by
    /// default: such a task may run as long as it keeps its lease).
    pub task_timeout: Option<Duration>,
    /// Make OpenTelemetry spans for every attempt (`task.attempt`,
    /// `task.handler`, `task.result`) in the task's trace, through the
    /// global tracer provider (see [`crate::telemetry`]). Off by default:
    /// no span is made and handlers get the task's own `traceparent`.
    pub traces: bool,
}

/// The `[[static_node]]` tables of a config file (`node_id`, `url`): hosts
/// that run no jetweave node, listed in discovery by the coordinator and
/// the sidecar that read the file. Other tables are ignored here.
pub fn static_nodes_from_file(
    path: &Path,
) -> Result<Vec<crate::store::discovery::StaticNode>, Error> {
    #[derive(Deserialize)]
    struct File {
        #[serde(default)]
        static_node: Vec<crate::store::discovery::StaticNode>,
    }
    let text = std::fs::read_to_string(path)
        .map_err(|e| Error::Config(format!("cannot read {}: {e}", path.display())))?;
    let f: File =
        toml::from_str(&text).map_err(|e| Error::Config(format!("{}: {e}", path.display())))?;
    for n in &f.static_node {
        validate_id("static_node node_id", &n.node_id)?;
    }
    Ok(f.static_node)
}

impl NodeConfig {
    /// Defaults for `node_id`.
    pub fn new(node_id: impl Into<String>) -> Self {
        NodeConfig {
            prefix: crate::wire::subjects::DEFAULT_PREFIX.to_string(),
            node_id: node_id.into(),
            role: Role::Worker,
            queues: vec!["default".to_string()],
            capabilities: vec![],
            concurrency: 8,
            heartbeat_interval: Duration::from_secs(1),
            node_ttl: Duration::from_secs(5),
            ack_wait: Duration::from_secs(5),
            url: None,
            handlers: vec![],
            processes: vec![],
            metadata: BTreeMap::new(),
            checkpoints_keep: 10,
            task_timeout: None,
            traces: false,
        }
    }

    /// Reads a TOML file on top of the defaults.
    pub fn from_file(path: &Path) -> Result<Self, Error> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::Config(format!("cannot read {}: {e}", path.display())))?;
        Self::from_toml(&text).map_err(|e| Error::Config(format!("{}: {e}", path.display())))
    }

    /// Parses TOML text on top of the defaults.
    pub fn from_toml(text: &str) -> Result<Self, Error> {
        #[derive(Deserialize, Default)]
        #[serde(deny_unknown_fields)]
        struct NodeTable {
            node_id: Option<String>,
            prefix: Option<String>,
            role: Option<String>,
            queues: Option<Vec<String>>,
            capabilities: Option<Vec<String>>,
            concurrency: Option<u32>,
            heartbeat_interval: Option<f64>,
            node_ttl: Option<f64>,
            ack_wait: Option<f64>,
            url: Option<String>,
            metadata: Option<BTreeMap<String, String>>,
            checkpoints_keep: Option<usize>,
            task_timeout_s: Option<f64>,
        }
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct File {
            #[serde(default)]
            node: NodeTable,
            #[serde(default)]
            handler: Vec<HandlerSpec>,
            #[serde(default)]
            process: Vec<ProcessSpec>,
            /// Read by the coordinator and sidecar (see [`static_nodes_from_file`]).
            #[serde(default)]
            #[allow(dead_code)]
            static_node: Vec<crate::store::discovery::StaticNode>,
        }
        let f: File = toml::from_str(text).map_err(|e| Error::Config(e.to_string()))?;
        let n = f.node;
        let mut c = NodeConfig::new(n.node_id.unwrap_or_default());
        if let Some(p) = n.prefix {
            c.prefix = p;
        }
        if let Some(r) = n.role {
            c.role = r.parse()?;
        }
        if let Some(q) = n.queues {
            c.queues = q;
        }
        if let Some(v) = n.capabilities {
            c.capabilities = v;
        }
        if let Some(v) = n.concurrency {
            c.concurrency = v;
        }
        if let Some(v) = n.heartbeat_interval {
            c.heartbeat_interval = secs("heartbeat_interval", v)?;
        }
        if let Some(v) = n.node_ttl {
            c.node_ttl = whole_secs("node_ttl", v)?;
        }
        if let Some(v) = n.ack_wait {
            c.ack_wait = whole_secs("ack_wait", v)?;
        }
        c.url = n.url;
        c.metadata = n.metadata.unwrap_or_default();
        if let Some(k) = n.checkpoints_keep {
            c.checkpoints_keep = k;
        }
        if let Some(v) = n.task_timeout_s {
            c.task_timeout = Some(secs("task_timeout_s", v)?);
        }
        c.handlers = f.handler;
        c.processes = f.process;
        Ok(c)
    }

    /// What a node puts in its heartbeat and discovery entry stays small
    /// whatever it is configured with (every watcher gets every entry on
    /// every beat): at most [`MAX_LISTED`] queues, capabilities and
    /// metadata keys, metadata keys and values of at most
    /// [`MAX_METADATA_KEY`] and [`MAX_METADATA_VALUE`] bytes.
    fn check_entry_bounds(&self) -> Result<(), Error> {
        for (what, n) in [
            ("queues", self.queues.len()),
            ("capabilities", self.capabilities.len()),
            ("metadata keys", self.metadata.len()),
        ] {
            if n > MAX_LISTED {
                return Err(Error::Config(format!(
                    "at most {MAX_LISTED} {what}, got {n} (they travel in every heartbeat)"
                )));
            }
        }
        if let Some(c) = self
            .capabilities
            .iter()
            .find(|c| c.len() > MAX_METADATA_KEY)
        {
            return Err(Error::Config(format!(
                "capability {c:?} is longer than {MAX_METADATA_KEY} bytes"
            )));
        }
        for (k, v) in &self.metadata {
            if k.len() > MAX_METADATA_KEY || v.len() > MAX_METADATA_VALUE {
                return Err(Error::Config(format!(
                    "metadata {k:?}: keys are at most {MAX_METADATA_KEY} bytes and values \
                     {MAX_METADATA_VALUE} (they travel in every heartbeat)"
                )));
            }
        }
        Ok(())
    }

    /// Checks every value; the error names the bad one.
    pub fn validate(&self) -> Result<(), Error> {
        validate_id("prefix", &self.prefix)?;
        validate_id("node id", &self.node_id)?;
        self.check_entry_bounds()?;
        if self.queues.is_empty() && self.role != Role::Supervisor {
            return Err(Error::Config("at least one queue is required".into()));
        }
        for q in &self.queues {
            validate_id("queue", q)?;
        }
        if self.concurrency == 0 || self.concurrency > 10_000 {
            return Err(Error::Config(format!(
                "concurrency must be 1..=10000, got {}",
                self.concurrency
            )));
        }
        if self.heartbeat_interval < Duration::from_millis(50) {
            return Err(Error::Config("heartbeat_interval must be >= 0.05 s".into()));
        }
        if self.node_ttl.as_secs() < 1 || self.node_ttl.subsec_nanos() != 0 {
            return Err(Error::Config(
                "node_ttl must be a whole number of seconds >= 1".into(),
            ));
        }
        if self.node_ttl <= self.heartbeat_interval {
            return Err(Error::Config(format!(
                "node_ttl ({:?}) must be longer than heartbeat_interval ({:?})",
                self.node_ttl, self.heartbeat_interval
            )));
        }
        for p in &self.processes {
            validate_id("process name", &p.name)?;
            p.trigger()?;
        }
        if self.ack_wait.as_secs() < 1 {
            return Err(Error::Config("ack_wait must be >= 1 s".into()));
        }
        if let Some(u) = &self.url {
            if !(u.starts_with("http://") || u.starts_with("https://")) {
                return Err(Error::Config(format!(
                    "url {u:?} must start with http(s)://"
                )));
            }
        }
        for h in &self.handlers {
            if h.task_type.is_empty() {
                return Err(Error::Config("handler type must not be empty".into()));
            }
            match (&h.exec, &h.http) {
                (Some(cmd), None) if !cmd.is_empty() => {}
                (None, Some(url)) if url.starts_with("http://") || url.starts_with("https://") => {}
                _ => {
                    return Err(Error::Config(format!(
                        "handler {:?} needs exactly one of exec = [cmd, args..] or http = \"http://...\"",
                        h.task_type
                    )))
                }
            }
        }
        let mut seen = std::collections::BTreeSet::new();
        for p in &self.processes {
            validate_id("process name", &p.name)?;
            if !seen.insert(&p.name) {
                return Err(Error::Config(format!(
                    "process {:?} declared twice",
                    p.name
                )));
            }
        }
        Ok(())
    }

    /// The URL with trailing slashes stripped.
    pub fn normalized_url(&self) -> Option<String> {
        self.url
            .as_ref()
            .map(|u| u.trim_end_matches('/').to_string())
    }
}

/// Seconds (fractions allowed) from a flag or file value.
pub fn secs(what: &str, v: f64) -> Result<Duration, Error> {
    if v.is_finite() && v > 0.0 && v < 1e9 {
        Ok(Duration::from_secs_f64(v))
    } else {
        Err(Error::invalid(
            ErrorCode::InvalidValue,
            format!("{what} must be a positive number of seconds, got {v}"),
        ))
    }
}

/// Whole seconds (JetStream TTLs): fractions are rejected, not truncated.
pub fn whole_secs(what: &str, v: f64) -> Result<Duration, Error> {
    if v.is_finite() && v >= 1.0 && v.fract() == 0.0 && v < 1e9 {
        Ok(Duration::from_secs(v as u64))
    } else {
        Err(Error::invalid(
            ErrorCode::InvalidValue,
            format!("{what} must be a whole number of seconds >= 1, got {v}"),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn process_triggers_are_checked() {
        let c = NodeConfig::from_toml(
            "[node]\nnode_id = \"n1\"\n[[process]]\nname = \"p\"\nhandler = \"echo\"\ncron = \"*/5 * * * *\"\n",
        )
        .expect("five-field cron");
        assert!(matches!(
            c.processes[0].trigger(),
            Ok(Some(Trigger::Cron(_)))
        ));
        let t = c.processes[0].trigger().unwrap().unwrap();
        assert!(t.next_in() <= Duration::from_secs(300));
        let bad = |f: fn(&mut ProcessSpec)| {
            let mut p = ProcessSpec::new("p", "echo");
            f(&mut p);
            let mut c = NodeConfig::new("n1");
            c.processes = vec![p];
            c.validate().is_err()
        };
        assert!(bad(|p| p.cron = Some("often".into())));
        assert!(bad(|p| p.every_s = Some(0.0)));
        assert!(bad(|p| {
            p.every_s = Some(1.0);
            p.cron = Some("* * * * *".into());
        }));
        assert!(!bad(|p| p.every_s = Some(2.0)));
    }

    #[test]
    fn parses_the_contract_example() {
        let c = NodeConfig::from_toml(
            r#"
[node]
node_id = "n1"
queues = ["default"]
concurrency = 8
[[handler]]
type = "resize"
exec = ["python3", "resize.py"]
[[process]]
name = "watcher"
handler = "echo"
autostart = true
"#,
        )
        .unwrap();
        assert_eq!(c.node_id, "n1");
        assert_eq!(c.handlers[0].exec.as_ref().unwrap()[0], "python3");
        assert_eq!(c.processes[0].name, "watcher");
        c.validate().unwrap();
    }

    #[test]
    fn rejects_bad_values() {
        assert!(NodeConfig::from_toml("[node]\nnode_ttl = 1.5").is_err());
        assert!(NodeConfig::from_toml("[node]\nbogus = 1").is_err());
        let mut c = NodeConfig::new("bad id");
        assert!(c.validate().is_err());
        c.node_id = "ok".into();
        c.validate().unwrap();
        c.concurrency = 0;
        assert!(c.validate().is_err());
        c.concurrency = 1;
        c.url = Some("http://h:9100//".into());
        assert_eq!(c.normalized_url().unwrap(), "http://h:9100");
    }
}
