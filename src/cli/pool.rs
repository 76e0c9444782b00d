//! `jetweave pool`, `jetweave pools` and `jetweave scale` (contract §10).

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use jetweave::config::{secs, whole_secs};
use jetweave::error::Error;
use jetweave::pool::{PoolConfig, WorkerCommand, NODE_ID_PLACEHOLDER};
use jetweave::Client;

use super::Global;

/// A worker removed by scaling may take this long to finish its tasks: a
/// year, that is never killed by scaling.
const WORKER_DRAIN_DEADLINE: &str = "31536000";

/// `jetweave pool` flags.
#[derive(Debug, Args, Clone)]
pub struct PoolArgs {
    /// Pool id; its workers are <pool_id>-1, -2, ...
    #[arg(long, env = "JETWEAVE_POOL_ID")]
    pub pool_id: String,
    /// Fewest workers (started at once).
    #[arg(long, default_value = "1")]
    pub min: u32,
    /// Most workers.
    #[arg(long, default_value = "8")]
    pub max: u32,
    /// Add a worker while more tasks than this wait.
    #[arg(long, default_value = "10")]
    pub scale_up_threshold: u64,
    /// Remove a worker while fewer tasks than this wait.
    #[arg(long, default_value = "2")]
    pub scale_down_threshold: u64,
    /// Seconds between two auto-scaling steps.
    #[arg(long, default_value = "5")]
    pub cooldown: f64,
    /// Keep the worker count where `scale` puts it.
    #[arg(long)]
    pub no_auto_scale: bool,
    /// Queues the workers serve, comma separated.
    #[arg(long, value_delimiter = ',', default_value = "default")]
    pub queues: Vec<String>,
    /// Task slots per worker.
    #[arg(long, default_value = "8")]
    pub concurrency: u32,
    /// Workers' discovery TTL in whole seconds.
    #[arg(long, default_value = "5")]
    pub node_ttl: f64,
    /// Workers' heartbeat period in seconds.
    #[arg(long, default_value = "1")]
    pub heartbeat_interval: f64,
    /// Workers' TOML config file (handlers, processes).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Run this command as each worker instead of `jetweave node` (the
    /// rest of the line; `{node_id}` is replaced; env JETWEAVE_NODE_ID,
    /// NATS_URL, JETWEAVE_QUEUES).
    #[arg(long, num_args = 1.., allow_hyphen_values = true)]
    pub worker_cmd: Vec<String>,
}

impl PoolArgs {
    /// The pool config; `g` gives the connection flags the default worker
    /// (`jetweave node`) is started with.
    pub fn to_config(&self, g: &Global) -> Result<PoolConfig, Error> {
        let worker = match self.worker_cmd.split_first() {
            Some((program, args)) => WorkerCommand {
                program: program.into(),
                args: args.to_vec(),
                env: nkey_env(g),
            },
            None => self.node_command(g)?,
        };
        let mut c = PoolConfig::new(self.pool_id.clone(), worker);
        c.prefix = g.prefix.clone();
        c.nats_url = g.nats_url.clone();
        c.min = self.min;
        c.max = self.max;
        c.scale_up_threshold = self.scale_up_threshold;
        c.scale_down_threshold = self.scale_down_threshold;
        c.cooldown = secs("--cooldown", self.cooldown)?;
        c.auto_scale = !self.no_auto_scale;
        c.queues = self
            .queues
            .iter()
            .filter(|q| !q.is_empty())
            .cloned()
            .collect();
        Ok(c)
    }

    /// `jetweave node` with the pool's node flags and connection flags.
    fn node_command(&self, g: &Global) -> Result<WorkerCommand, Error> {
        whole_secs("--node-ttl", self.node_ttl)?;
        secs("--heartbeat-interval", self.heartbeat_interval)?;
        let mut args = connection_args(g);
        args.extend(
            [
                "node",
                "--node-id",
                NODE_ID_PLACEHOLDER,
                "--queues",
                &self.queues.join(","),
                "--concurrency",
                &self.concurrency.to_string(),
                "--node-ttl",
                &self.node_ttl.to_string(),
                "--heartbeat-interval",
                &self.heartbeat_interval.to_string(),
                "--shutdown-deadline",
                WORKER_DRAIN_DEADLINE,
            ]
            .map(String::from),
        );
        if let Some(c) = &self.config {
            args.extend(["--config".into(), c.display().to_string()]);
        }
        Ok(WorkerCommand {
            program: std::env::current_exe()?,
            args,
            env: nkey_env(g),
        })
    }
}

/// With `--nkey DIR/<file>`, worker `<id>` uses `DIR/node-<id>.nk` (what
/// `jetweave auth init --pools` writes).
fn nkey_env(g: &Global) -> Vec<(String, String)> {
    let Some(dir) = g.nkey.as_ref().and_then(|k| k.parent()) else {
        return Vec::new();
    };
    let key = dir.join(format!("node-{NODE_ID_PLACEHOLDER}.nk"));
    vec![("NATS_NKEY".into(), key.display().to_string())]
}

/// The connection flags a child `jetweave` needs (its key comes by env).
fn connection_args(g: &Global) -> Vec<String> {
    let mut a = vec![
        "--nats-url".to_string(),
        g.nats_url.clone(),
        "--prefix".into(),
        g.prefix.clone(),
        "--connect-wait".into(),
        g.connect_wait.to_string(),
    ];
    let flags = [
        ("--creds", g.creds.as_ref().map(|p| p.display().to_string())),
        ("--user", g.user.clone()),
        ("--password", g.password.clone()),
        ("--token", g.token.clone()),
        (
            "--nats-tls-ca",
            g.tls_ca.as_ref().map(|p| p.display().to_string()),
        ),
        (
            "--nats-tls-cert",
            g.tls_cert.as_ref().map(|p| p.display().to_string()),
        ),
        (
            "--nats-tls-key",
            g.tls_key.as_ref().map(|p| p.display().to_string()),
        ),
    ];
    for (flag, v) in flags {
        if let Some(v) = v {
            a.extend([flag.to_string(), v]);
        }
    }
    if g.tls {
        a.push("--nats-tls".into());
    }
    a
}

/// `jetweave scale` arguments.
#[derive(Debug, Args, Clone)]
pub struct ScaleArgs {
    /// The pool.
    pub pool_id: String,
    /// Workers wanted (within the pool's [min, max]).
    pub workers: u32,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// `jetweave pools`: a table of the live pools, or `--json`.
pub async fn pools(c: &Client, json: bool) -> Result<(), Error> {
    let pools = c.pools(Duration::from_millis(500)).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&pools)?);
        return Ok(());
    }
    println!(
        "{:<16} {:>7} {:>7} {:>5} {:>5} {:>5} {:>8} {:>8} {:>10}",
        "POOL", "WORKERS", "DESIRED", "MIN", "MAX", "AUTO", "PENDING", "RUNNING", "COMPLETED"
    );
    for p in &pools {
        println!(
            "{:<16} {:>7} {:>7} {:>5} {:>5} {:>5} {:>8} {:>8} {:>10}",
            p.pool_id,
            p.worker_count,
            p.desired,
            p.min,
            p.max,
            if p.auto_scale { "on" } else { "off" },
            p.pending,
            p.current_tasks,
            p.total_completed
        );
    }
    if pools.is_empty() {
        println!("no pool answered");
    }
    Ok(())
}

/// `jetweave scale <pool> <N>`.
pub async fn scale(c: &Client, a: &ScaleArgs) -> Result<(), Error> {
    let r = c.scale(&a.pool_id, a.workers).await?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        println!("{}: desired {} workers", a.pool_id, r.desired);
    }
    Ok(())
}
