//! The `jetweave` command line (clap): process commands (`node`,
//! `coordinator`, `sidecar`, `up`) and operator commands ([`ops`]).
//!
//! Exit codes: 0 ok, 1 failure, 2 usage.

pub mod auth;
pub mod dlq;
pub mod limit;
pub mod node_metrics;
pub mod ops;
pub mod pool;
pub mod schedule;

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use jetweave::config::{secs, whole_secs, NodeConfig};
use jetweave::connect::NatsOptions;
use jetweave::error::Error;

/// jetweave: a NATS-native work fabric.
#[derive(Debug, Parser)]
#[command(name = "jetweave", version, about, long_about = None)]
pub struct Cli {
    /// Connection and naming options shared by every command.
    #[command(flatten)]
    pub global: Global,
    /// What to run.
    #[command(subcommand)]
    pub command: Command,
}

/// Options shared by every command.
#[derive(Debug, Args, Clone)]
pub struct Global {
    /// NATS server URL(s), comma separated.
    #[arg(long, global = true, env = "NATS_URL", default_value = jetweave::connect::DEFAULT_NATS_URL)]
    pub nats_url: String,
    /// NATS credentials file.
    #[arg(long, global = true, env = "NATS_CREDS")]
    pub creds: Option<PathBuf>,
    /// Nkey seed file (from `jetweave auth init`).
    #[arg(long, global = true, env = "NATS_NKEY")]
    pub nkey: Option<PathBuf>,
    /// NATS user (with --password).
    #[arg(long, global = true, env = "NATS_USER")]
    pub user: Option<String>,
    /// NATS password.
    #[arg(long, global = true, env = "NATS_PASSWORD")]
    pub password: Option<String>,
    /// NATS token.
    #[arg(long, global = true, env = "NATS_TOKEN")]
    pub token: Option<String>,
    /// CA certificate to trust for TLS to NATS.
    #[arg(long = "nats-tls-ca", global = true, env = "NATS_TLS_CA")]
    pub tls_ca: Option<PathBuf>,
    /// Client certificate for TLS to NATS.
    #[arg(long = "nats-tls-cert", global = true, env = "NATS_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// Client key for TLS to NATS.
    #[arg(long = "nats-tls-key", global = true, env = "NATS_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// Require TLS to NATS.
    #[arg(long = "nats-tls", global = true)]
    pub tls: bool,
    /// Subject prefix: every subject, stream and bucket name derives from it.
    #[arg(long, global = true, env = "JETWEAVE_PREFIX", default_value = jetweave::wire::subjects::DEFAULT_PREFIX)]
    pub prefix: String,
    /// How long to keep trying to reach NATS at start (seconds).
    #[arg(long, global = true, default_value = "10")]
    pub connect_wait: f64,
    /// Runtime threads of this process: 1 = a single-threaded runtime
    /// (everything on the main thread), 0 = one per core. A node,
    /// coordinator or sidecar mostly waits on NATS, HTTP and handler
    /// processes; on one thread the acks and results of tasks that finish
    /// together go out in one write and nothing crosses threads: a third
    /// less CPU per task than one worker of a multi-threaded runtime
    /// (BENCHMARKS.md). Raise it for CPU-heavy in-process handlers.
    #[arg(
        long,
        global = true,
        env = "JETWEAVE_WORKER_THREADS",
        default_value = "1"
    )]
    pub worker_threads: usize,
    /// Export traces (OTLP/HTTP) to this collector, e.g.
    /// http://localhost:4318: nodes make spans for every attempt, in the
    /// task's W3C trace. Unset: no spans at all.
    #[arg(long, global = true, env = "OTEL_EXPORTER_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,
}

impl Global {
    /// The NATS options these flags describe.
    pub fn nats(&self) -> Result<NatsOptions, Error> {
        Ok(NatsOptions {
            url: self.nats_url.clone(),
            creds: self.creds.clone(),
            nkey: self.nkey.clone(),
            user: self.user.clone(),
            password: self.password.clone(),
            token: self.token.clone(),
            tls_ca: self.tls_ca.clone(),
            tls_cert: self.tls_cert.clone(),
            tls_key: self.tls_key.clone(),
            tls_required: self.tls,
            connect_wait: secs("--connect-wait", self.connect_wait)?,
        })
    }
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a worker node.
    ///
    /// Example: jetweave node --node-id n1 --queues default,gpu --concurrency 8
    Node(NodeArgs),
    /// Run a coordinator: the weave-api service and (when leading) shard
    /// assignment. Any number may run; one leads.
    ///
    /// Example: jetweave coordinator --id c1 --lease-ttl 5
    Coordinator(CoordinatorArgs),
    /// Run the HTTP sidecar for REST callers.
    ///
    /// Example: jetweave sidecar --listen 127.0.0.1:9100 --node n1 --auth-token s3cret
    Sidecar(SidecarArgs),
    /// Start a whole local cluster: NATS server, coordinator, a hybrid node
    /// and the sidecar. Ctrl-C stops it all.
    ///
    /// Example: jetweave up
    Up(UpArgs),
    /// List live nodes (table, or --json); --watch redraws on changes.
    ///
    /// Example: jetweave nodes --watch
    Nodes(ops::NodesArgs),
    /// Drain a node (or --all): it finishes its work and takes no more.
    ///
    /// Example: jetweave drain n1
    Drain(ops::TargetArgs),
    /// Resume a drained node (or --all).
    ///
    /// Example: jetweave resume --all
    Resume(ops::TargetArgs),
    /// Ping a node (or --all) and show the round trip.
    ///
    /// Example: jetweave ping --all
    Ping(ops::TargetArgs),
    /// Submit a task; --wait prints its result.
    ///
    /// Example: jetweave submit echo --payload '{"x": 1}' --priority high --wait
    Submit(ops::SubmitArgs),
    /// Show a task's status and result.
    ///
    /// Example: jetweave task 3f2a...
    Task(ops::TaskArgs),
    /// Cancel a queued or running task.
    ///
    /// Example: jetweave cancel 3f2a...
    Cancel(ops::TaskArgs),
    /// Create runs and show their progress.
    #[command(subcommand)]
    Run(ops::RunCommand),
    /// Show the audit log (WEAVE_EVENTS); --follow keeps tailing it.
    ///
    /// Example: jetweave events --since 10m --follow
    Events(ops::EventsArgs),
    /// List a task's checkpoints, oldest first.
    ///
    /// Example: jetweave checkpoints run1:0:slice:0:25
    Checkpoints(ops::TaskArgs),
    /// Cluster summary: nodes, leader, queues, runs.
    ///
    /// Example: jetweave status --json
    Status(ops::JsonArgs),
    /// Run a worker pool: min..max `jetweave node` processes (or
    /// --worker-cmd), scaled on the backlog of their queues.
    ///
    /// Example: jetweave pool --pool-id p1 --min 1 --max 6 --concurrency 4
    Pool(pool::PoolArgs),
    /// List the live worker pools (table, or --json).
    ///
    /// Example: jetweave pools --json
    Pools(ops::JsonArgs),
    /// Set a pool's worker count (held 60 s before auto-scaling resumes).
    ///
    /// Example: jetweave scale p1 4
    Scale(pool::ScaleArgs),
    /// Periodic tasks kept by the NATS server: create, ls, rm.
    #[command(subcommand)]
    Schedule(schedule::ScheduleCommand),
    /// Dead letters: list, requeue, purge.
    #[command(subcommand)]
    Dlq(dlq::DlqCommand),
    /// Keyed concurrency and rate limits, cluster-wide: set, ls, rm.
    #[command(subcommand)]
    Limit(limit::LimitCommand),
    /// Least privilege: NATS users, keys and permissions per role.
    #[command(subcommand)]
    Auth(AuthCommand),
}

/// `jetweave auth ...`.
#[derive(Debug, Subcommand)]
pub enum AuthCommand {
    /// Write DIR/auth.conf (include it in nats-server.conf) and one nkey
    /// seed file per user: coordinator, sidecar, submitter, operator and
    /// node-<id> for each node (and pool worker).
    ///
    /// Example: jetweave auth init --dir auth --nodes n1,n2 --pools p1:8
    Init(auth::AuthInitArgs),
}

/// `jetweave sidecar` flags.
#[derive(Debug, Args, Clone)]
pub struct SidecarArgs {
    /// Address to listen on.
    #[arg(
        long,
        default_value = "127.0.0.1:9100",
        env = "JETWEAVE_SIDECAR_LISTEN"
    )]
    pub listen: String,
    /// Node served by the root per-node routes (/health, /processes, ...).
    #[arg(long, env = "JETWEAVE_SIDECAR_NODE")]
    pub node: Option<String>,
    /// Require `Authorization: Bearer <token>` on every route.
    #[arg(long, env = "JETWEAVE_AUTH_TOKEN")]
    pub auth_token: Option<String>,
    /// Per-request NATS timeout in seconds.
    #[arg(long, default_value = "5")]
    pub request_timeout: f64,
    /// Largest request body in bytes.
    #[arg(long, default_value = "1048576")]
    pub body_limit: usize,
    /// Allow cross-origin requests from any origin.
    #[arg(long)]
    pub cors: bool,
    /// Seconds a registered agent stays without a heartbeat.
    #[arg(long, default_value = "30")]
    pub agent_ttl: f64,
    /// Serve HTTPS with this PEM certificate (with --tls-key).
    #[arg(long = "tls-cert", env = "JETWEAVE_SIDECAR_TLS_CERT")]
    pub https_cert: Option<PathBuf>,
    /// The PEM private key of --tls-cert.
    #[arg(long = "tls-key", env = "JETWEAVE_SIDECAR_TLS_KEY")]
    pub https_key: Option<PathBuf>,
    /// Where registered agents' endpoints may point: CIDRs, addresses,
    /// host names (*.suffix) or * for any, comma separated. Default:
    /// loopback and private ranges only.
    #[arg(long, env = "JETWEAVE_AGENT_ALLOW", value_delimiter = ',')]
    pub agent_allow: Vec<String>,
    /// How POST /tasks/submit picks an agent: least_connections,
    /// round_robin, random or weighted (by capacity), each tempered by the
    /// agent's health score.
    #[arg(
        long,
        env = "JETWEAVE_AGENT_STRATEGY",
        default_value = "least_connections"
    )]
    pub agent_strategy: String,
    /// A TOML file whose [[static_node]] tables (node_id, url) are put in
    /// discovery at start.
    #[arg(long, env = "JETWEAVE_CONFIG")]
    pub config: Option<PathBuf>,
}

impl SidecarArgs {
    /// The sidecar config these flags describe.
    pub fn to_config(&self, prefix: &str) -> Result<jetweave::sidecar::SidecarConfig, Error> {
        if let Some(n) = &self.node {
            jetweave::wire::subjects::validate_id("node id", n)?;
        }
        Ok(jetweave::sidecar::SidecarConfig {
            listen: self.listen.clone(),
            prefix: prefix.to_string(),
            node: self.node.clone(),
            auth_token: self.auth_token.clone().filter(|t| !t.is_empty()),
            request_timeout: secs("--request-timeout", self.request_timeout)?,
            body_limit: self.body_limit,
            cors: self.cors,
            agent_ttl: secs("--agent-ttl", self.agent_ttl)?,
            tls_cert: self.https_cert.clone(),
            tls_key: self.https_key.clone(),
            agent_allow: jetweave::sidecar::AgentAllow::parse(&self.agent_allow)?,
            agent_strategy: self.agent_strategy.parse()?,
            static_nodes: match &self.config {
                Some(p) => jetweave::config::static_nodes_from_file(p)?,
                None => vec![],
            },
        })
    }
}

/// `jetweave up` flags.
#[derive(Debug, Args, Clone)]
pub struct UpArgs {
    /// Where the NATS store, logs and the lock file go.
    #[arg(long, default_value = ".jetweave")]
    pub data_dir: PathBuf,
    /// NATS client port.
    #[arg(long, default_value = "4222")]
    pub nats_port: u16,
    /// NATS monitoring port.
    #[arg(long, default_value = "8222")]
    pub monitor_port: u16,
    /// Sidecar listen address.
    #[arg(long, default_value = "127.0.0.1:9100")]
    pub http: String,
    /// Least privilege: generate keys (DATA_DIR/auth), refuse anonymous
    /// connections, and run each part with its own role's key.
    #[arg(long)]
    pub secure: bool,
}

/// `jetweave coordinator` flags.
#[derive(Debug, Args, Clone)]
pub struct CoordinatorArgs {
    /// Coordinator id (default: random).
    #[arg(long, env = "JETWEAVE_COORDINATOR_ID")]
    pub id: Option<String>,
    /// Leader lease TTL in whole seconds.
    #[arg(long, default_value = "5")]
    pub lease_ttl: f64,
    /// Shard assignment strategy: least_loaded or round_robin.
    #[arg(long, default_value = "least_loaded")]
    pub assign: String,
    /// Most shards one run may have.
    #[arg(long, default_value = "100000")]
    pub max_shards: u64,
    /// Bound queues: QUEUE=N,... — tasks.submit answers queue_full while
    /// the queue holds N tasks (waiting or running).
    #[arg(long, env = "JETWEAVE_MAX_PENDING", value_delimiter = ',')]
    pub max_pending: Vec<String>,
    /// A TOML file whose [[static_node]] tables (node_id, url) are put in
    /// discovery at start.
    #[arg(long, env = "JETWEAVE_CONFIG")]
    pub config: Option<PathBuf>,
}

impl CoordinatorArgs {
    /// The coordinator config these flags describe.
    pub fn to_config(
        &self,
        prefix: &str,
    ) -> Result<jetweave::coordinator::CoordinatorConfig, Error> {
        let mut c = jetweave::coordinator::CoordinatorConfig::new();
        if let Some(id) = &self.id {
            c.id = id.clone();
        }
        c.prefix = prefix.to_string();
        c.lease_ttl = whole_secs("--lease-ttl", self.lease_ttl)?;
        c.strategy = self.assign.parse()?;
        c.max_shards = self.max_shards;
        if let Some(p) = &self.config {
            c.static_nodes = jetweave::config::static_nodes_from_file(p)?;
        }
        for item in self.max_pending.iter().filter(|s| !s.is_empty()) {
            let (q, n) = item
                .split_once('=')
                .and_then(|(q, n)| Some((q, n.parse::<u64>().ok()?)))
                .ok_or_else(|| {
                    Error::Config(format!("--max-pending wants QUEUE=N, got {item:?}"))
                })?;
            jetweave::wire::subjects::validate_id("queue", q)?;
            c.max_pending.insert(q.to_string(), n);
        }
        jetweave::wire::subjects::validate_id("coordinator id", &c.id)?;
        Ok(c)
    }
}

/// `jetweave node` flags (each overrides the config file).
#[derive(Debug, Args, Clone, Default)]
pub struct NodeArgs {
    /// Node id ([A-Za-z0-9_-]{1,64}).
    #[arg(long, env = "JETWEAVE_NODE_ID")]
    pub node_id: Option<String>,
    /// worker, supervisor or hybrid.
    #[arg(long, env = "JETWEAVE_ROLE")]
    pub role: Option<String>,
    /// Queues to serve, comma separated.
    #[arg(long, env = "JETWEAVE_QUEUES", value_delimiter = ',')]
    pub queues: Option<Vec<String>>,
    /// Capabilities offered to runs, comma separated.
    #[arg(long, env = "JETWEAVE_CAPABILITIES", value_delimiter = ',')]
    pub capabilities: Option<Vec<String>>,
    /// Task slots.
    #[arg(long, env = "JETWEAVE_CONCURRENCY")]
    pub concurrency: Option<u32>,
    /// Heartbeat period in seconds.
    #[arg(long, env = "JETWEAVE_HEARTBEAT_INTERVAL")]
    pub heartbeat_interval: Option<f64>,
    /// Discovery entry TTL in whole seconds.
    #[arg(long, env = "JETWEAVE_NODE_TTL")]
    pub node_ttl: Option<f64>,
    /// Ack wait of the task consumers in whole seconds (a dead node's task
    /// is redelivered after it).
    #[arg(long, env = "JETWEAVE_ACK_WAIT")]
    pub ack_wait: Option<f64>,
    /// URL of this node's HTTP sidecar, advertised in discovery.
    #[arg(long, env = "JETWEAVE_URL")]
    pub url: Option<String>,
    /// Default bound in seconds on one attempt of a task that sets no
    /// `timeout_s` (default: none).
    #[arg(long, env = "JETWEAVE_TASK_TIMEOUT")]
    pub task_timeout: Option<f64>,
    /// TOML config file.
    #[arg(long, env = "JETWEAVE_CONFIG")]
    pub config: Option<PathBuf>,
    /// Upper bound on waiting for in-flight work at SIGTERM (seconds).
    #[arg(long, default_value = "30")]
    pub shutdown_deadline: f64,
    /// Also serve the HTTP sidecar for this node on this address
    /// (its per-node routes at the root); advertised as the node's url
    /// unless --url is given.
    #[arg(long, env = "JETWEAVE_HTTP")]
    pub http: Option<String>,
    /// Serve this node's own Prometheus metrics at GET /metrics on this
    /// address (active tasks, slots, completed and failed counts, health,
    /// processes); cluster-wide metrics come from a sidecar.
    #[arg(long, env = "JETWEAVE_METRICS")]
    pub metrics: Option<String>,
}

impl NodeArgs {
    /// The config file (if any) with these flags on top.
    pub fn to_config(&self, prefix: &str) -> Result<NodeConfig, Error> {
        let mut c = match &self.config {
            Some(p) => NodeConfig::from_file(p)?,
            None => NodeConfig::new(""),
        };
        c.prefix = prefix.to_string();
        if let Some(v) = &self.node_id {
            c.node_id = v.clone();
        }
        if c.node_id.is_empty() {
            return Err(Error::Config(
                "--node-id is required (or node_id in the config file)".into(),
            ));
        }
        if let Some(v) = &self.role {
            c.role = v.parse()?;
        }
        if let Some(v) = &self.queues {
            c.queues = v.iter().filter(|s| !s.is_empty()).cloned().collect();
        }
        if let Some(v) = &self.capabilities {
            c.capabilities = v.iter().filter(|s| !s.is_empty()).cloned().collect();
        }
        if let Some(v) = self.concurrency {
            c.concurrency = v;
        }
        if let Some(v) = self.heartbeat_interval {
            c.heartbeat_interval = secs("--heartbeat-interval", v)?;
        }
        if let Some(v) = self.node_ttl {
            c.node_ttl = whole_secs("--node-ttl", v)?;
        }
        if let Some(v) = self.ack_wait {
            c.ack_wait = whole_secs("--ack-wait", v)?;
        }
        if let Some(v) = self.task_timeout {
            c.task_timeout = Some(secs("--task-timeout", v)?);
        }
        if let Some(v) = &self.url {
            c.url = Some(v.clone());
        } else if let Some(h) = &self.http {
            c.url = Some(format!("http://{h}"));
        }
        c.validate()?;
        Ok(c)
    }

    /// The shutdown deadline.
    pub fn deadline(&self) -> Result<Duration, Error> {
        secs("--shutdown-deadline", self.shutdown_deadline)
    }
}
