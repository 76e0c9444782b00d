//! The `jetweave` binary: parses the command line and runs one command.
//! Errors are printed as one line and exit with status 1 (usage errors: 2).

mod cli;
mod up;

use clap::Parser;
use cli::{ops, AuthCommand, Cli, Command, CoordinatorArgs, NodeArgs, SidecarArgs, UpArgs};
use jetweave::protocol::Role;
use jetweave::{Coordinator, CoordinatorConfig, Node, Shutdown};

/// mimalloc instead of glibc malloc: a node allocates and frees a few
/// dozen small buffers per task, and glibc's malloc and free (with its
/// fastbin consolidation) were a fifth of a node's CPU per task.
/// Built without transparent huge pages (`no_thp`): with them an idle
/// node's RSS was 23 MiB instead of 14.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn init_tracing(quiet: bool) {
    let default = if quiet { "warn" } else { "info" };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

/// SIGTERM and SIGINT, listened to from the first line of `main` so a
/// signal that arrives while a node is still starting is not fatal.
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> std::io::Result<Self> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Signals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
        })
    }

    /// Resolves on the next SIGTERM or SIGINT.
    async fn recv(&mut self) {
        tokio::select! {
            _ = self.term.recv() => {}
            _ = self.int.recv() => {}
        }
    }
}

async fn run_node(cli: &Cli, args: &NodeArgs, signals: &mut Signals) -> anyhow::Result<()> {
    let mut cfg = args.to_config(&cli.global.prefix)?;
    cfg.traces = cli.global.otlp_endpoint.is_some();
    let deadline = args.deadline()?;
    let client = cli
        .global
        .nats()?
        .connect(&format!("jetweave node {}", cfg.node_id))
        .await?;
    let shutdown = Shutdown::new();
    // Supervisor and hybrid nodes also run a coordinator.
    let coordinator = if matches!(cfg.role, Role::Supervisor | Role::Hybrid) {
        let mut c = CoordinatorConfig::new();
        c.id = cfg.node_id.clone();
        c.prefix = cfg.prefix.clone();
        c.node_ttl = cfg.node_ttl;
        Some(Coordinator::start(client.clone(), c, shutdown.child()).await?)
    } else {
        None
    };
    let node_id = cfg.node_id.clone();
    let prefix = cfg.prefix.clone();
    let start = start_node(cfg, &client, &shutdown, signals, deadline).await;
    let Some(node) = start? else {
        shutdown.trigger();
        if let Some(c) = coordinator {
            c.wait().await;
        }
        return Ok(());
    };
    let sidecar = match &args.http {
        Some(listen) => {
            let sc = jetweave::sidecar::SidecarConfig {
                listen: listen.clone(),
                prefix,
                node: Some(node_id),
                ..Default::default()
            };
            Some(jetweave::sidecar::serve(client, sc, shutdown.child()).await?)
        }
        None => None,
    };
    let metrics = match &args.metrics {
        Some(addr) => Some(cli::node_metrics::serve(addr, node.clone(), shutdown.child()).await?),
        None => None,
    };
    tokio::select! {
        _ = signals.recv() => {
            tracing::info!("signal received: shutting down");
            node.shutdown(deadline).await;
        }
        _ = node.wait() => {}
    }
    shutdown.trigger();
    if let Some(c) = coordinator {
        c.wait().await;
    }
    if let Some(s) = sidecar {
        s.wait().await;
    }
    if let Some(m) = metrics {
        let _ = m.await;
    }
    Ok(())
}

/// Starts the node. A start that fails because NATS or JetStream is out of
/// reach (a server restarting, a site's leaf link down) is tried again
/// every 0.5..5 s until it works or a signal comes; other errors end it.
/// A signal during a start lets it finish starting (at most 10 s) and then
/// stops it the usual way, so what it registered is removed; `None` then.
async fn start_node(
    cfg: jetweave::NodeConfig,
    client: &async_nats::Client,
    shutdown: &Shutdown,
    signals: &mut Signals,
    deadline: std::time::Duration,
) -> anyhow::Result<Option<jetweave::NodeHandle>> {
    let mut pause = std::time::Duration::from_millis(500);
    loop {
        let start = Node::new(cfg.clone()).start(client.clone(), shutdown.clone());
        tokio::pin!(start);
        let started = tokio::select! {
            n = &mut start => n,
            _ = signals.recv() => {
                tracing::info!("signal received while starting");
                match tokio::time::timeout(std::time::Duration::from_secs(10), &mut start).await {
                    Ok(Ok(n)) => n.shutdown(deadline).await,
                    Ok(Err(_)) => {}
                    Err(_) => tracing::warn!("the start did not finish within 10 s: exiting"),
                }
                return Ok(None);
            }
        };
        match started {
            Ok(n) => return Ok(Some(n)),
            Err(e) if e.kind() == jetweave::error::ErrorKind::Unavailable => {
                tracing::warn!(error = %e, ?pause, "node could not start; trying again");
                tokio::select! {
                    _ = tokio::time::sleep(pause) => {}
                    _ = signals.recv() => return Ok(None),
                }
                pause = (pause * 2).min(std::time::Duration::from_secs(5));
            }
            Err(e) => return Err(anyhow::Error::new(e).context("node failed to start")),
        }
    }
}

async fn run_coordinator(
    cli: &Cli,
    args: &CoordinatorArgs,
    signals: &mut Signals,
) -> anyhow::Result<()> {
    let cfg = args.to_config(&cli.global.prefix)?;
    let client = cli
        .global
        .nats()?
        .connect(&format!("jetweave coordinator {}", cfg.id))
        .await?;
    let shutdown = Shutdown::new();
    let c = Coordinator::start(client.clone(), cfg, shutdown.clone()).await?;
    signals.recv().await;
    tracing::info!("signal received: shutting down");
    shutdown.trigger();
    c.wait().await;
    jetweave::connect::flush_briefly(&client).await;
    Ok(())
}

async fn run_sidecar(cli: &Cli, args: &SidecarArgs, signals: &mut Signals) -> anyhow::Result<()> {
    let cfg = args.to_config(&cli.global.prefix)?;
    let client = cli.global.nats()?.connect("jetweave sidecar").await?;
    let shutdown = Shutdown::new();
    let handle = jetweave::sidecar::serve(client.clone(), cfg, shutdown.clone()).await?;
    eprintln!(
        "sidecar listening on {}://{}",
        handle.scheme, handle.local_addr
    );
    signals.recv().await;
    shutdown.trigger();
    handle.wait().await;
    Ok(())
}

async fn run_pool(
    cli: &Cli,
    args: &cli::pool::PoolArgs,
    signals: &mut Signals,
) -> anyhow::Result<()> {
    let cfg = args.to_config(&cli.global)?;
    let client = cli
        .global
        .nats()?
        .connect(&format!("jetweave pool {}", cfg.pool_id))
        .await?;
    let shutdown = Shutdown::new();
    let pool = jetweave::pool::start(client.clone(), cfg, shutdown.clone()).await?;
    signals.recv().await;
    tracing::info!("signal received: draining every worker");
    shutdown.trigger();
    pool.wait().await;
    jetweave::connect::flush_briefly(&client).await;
    Ok(())
}

async fn run_up(cli: &Cli, args: &UpArgs, signals: &mut Signals) -> anyhow::Result<()> {
    let opts = up::UpOptions {
        data_dir: args.data_dir.clone(),
        nats_port: args.nats_port,
        monitor_port: args.monitor_port,
        http: args.http.clone(),
        prefix: cli.global.prefix.clone(),
        secure: args.secure,
        traces: cli.global.otlp_endpoint.is_some(),
    };
    up::run(opts, signals.recv()).await?;
    Ok(())
}

fn run_auth_init(cli: &Cli, args: &cli::auth::AuthInitArgs) -> anyhow::Result<()> {
    let users = cli::auth::init(args, &cli.global.prefix)?;
    let dir = args.dir.display();
    println!("wrote {dir}/auth.conf and a seed file per user:");
    for u in &users {
        println!("  {dir}/{u}.nk");
    }
    println!(
        "include it in nats-server.conf (include \"{dir}/auth.conf\"), reload the server \
         (nats-server --signal reload), and start each part with --nkey {dir}/<user>.nk"
    );
    Ok(())
}

async fn run_ops(cli: &Cli) -> anyhow::Result<()> {
    let nats = cli.global.nats()?.connect("jetweave cli").await?;
    let c = jetweave::Client::new(nats, &cli.global.prefix)?;
    match &cli.command {
        Command::Nodes(a) => ops::nodes(&c, a).await?,
        Command::Drain(a) => ops::target(&c, "drain", a).await?,
        Command::Resume(a) => ops::target(&c, "resume", a).await?,
        Command::Ping(a) => ops::target(&c, "ping", a).await?,
        Command::Submit(a) => ops::submit(&c, a).await?,
        Command::Task(a) => ops::task(&c, a).await?,
        Command::Cancel(a) => ops::cancel(&c, a).await?,
        Command::Run(a) => ops::run(&c, a).await?,
        Command::Events(a) => ops::events(&c, a).await?,
        Command::Checkpoints(a) => ops::checkpoints(&c, a).await?,
        Command::Status(a) => ops::status(&c, a).await?,
        Command::Pools(a) => cli::pool::pools(&c, a.json).await?,
        Command::Scale(a) => cli::pool::scale(&c, a).await?,
        Command::Dlq(cmd) => cli::dlq::run(&c, cmd).await?,
        Command::Schedule(cmd) => cli::schedule::run(&c, cmd).await?,
        Command::Limit(cmd) => cli::limit::run(&c, cmd).await?,
        _ => unreachable!("process commands are handled in main"),
    }
    Ok(())
}

fn main() {
    let cli = Cli::parse();
    // One thread (the default): a single-threaded runtime. Its scheduler
    // runs the woken tasks in order, so the connection's writer runs after
    // the tasks that finished together and sends their acks and results
    // in one write; a multi-threaded runtime runs it right after each
    // task (one `writev` per 1-2 tasks, BENCHMARKS.md).
    let mut runtime = match cli.global.worker_threads {
        1 => tokio::runtime::Builder::new_current_thread(),
        n => {
            let mut b = tokio::runtime::Builder::new_multi_thread();
            if n > 0 {
                b.worker_threads(n);
            }
            b
        }
    };
    match runtime.enable_all().build() {
        Ok(rt) => rt.block_on(run(cli)),
        Err(e) => {
            eprintln!("jetweave: cannot start the runtime: {e}");
            std::process::exit(1);
        }
    }
}

async fn run(cli: Cli) {
    let mut signals = match Signals::install() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("jetweave: cannot install signal handlers: {e}");
            std::process::exit(1);
        }
    };
    let process = matches!(
        cli.command,
        Command::Node(_) | Command::Coordinator(_) | Command::Sidecar(_) | Command::Pool(_)
    );
    init_tracing(!process);
    let traces = match (&cli.global.otlp_endpoint, &cli.command) {
        (Some(endpoint), Command::Node(_) | Command::Up(_)) => {
            match jetweave::telemetry::otlp(endpoint, "jetweave-node").await {
                Ok(t) => Some(t),
                Err(e) => {
                    eprintln!("jetweave: {e}");
                    std::process::exit(1);
                }
            }
        }
        _ => None,
    };
    let result = match &cli.command {
        Command::Node(args) => run_node(&cli, args, &mut signals).await,
        Command::Coordinator(args) => run_coordinator(&cli, args, &mut signals).await,
        Command::Sidecar(args) => run_sidecar(&cli, args, &mut signals).await,
        Command::Up(args) => run_up(&cli, args, &mut signals).await,
        Command::Pool(args) => run_pool(&cli, args, &mut signals).await,
        Command::Auth(AuthCommand::Init(args)) => run_auth_init(&cli, args),
        _ => run_ops(&cli).await,
    };
    if let Some(t) = traces {
        t.shutdown().await;
    }
    if let Err(e) = result {
        eprintln!("jetweave: {e:#}");
        std::process::exit(1);
    }
}
