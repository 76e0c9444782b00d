//! The `jetweave` binary: parses the command line and runs one command.
//! Errors are printed as one line and exit with status 1 (usage errors: 2).

use anyhow::Context;
use clap::Parser;
use jetweave::cli::{Cli, Command, CoordinatorArgs, NodeArgs};
use jetweave::protocol::Role;
use jetweave::{Coordinator, CoordinatorConfig, Node, Shutdown};

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
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
    let cfg = args.to_config(&cli.global.prefix)?;
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
    let node = Node::new(cfg)
        .start(client, shutdown.clone())
        .await
        .context("node failed to start")?;
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
    Ok(())
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
    let _ = client.flush().await;
    Ok(())
}

#[tokio::main]
async fn main() {
    let mut signals = match Signals::install() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("jetweave: cannot install signal handlers: {e}");
            std::process::exit(1);
        }
    };
    let cli = Cli::parse();
    init_tracing();
    let result = match &cli.command {
        Command::Node(args) => run_node(&cli, args, &mut signals).await,
        Command::Coordinator(args) => run_coordinator(&cli, args, &mut signals).await,
    };
    if let Err(e) = result {
        eprintln!("jetweave: {e:#}");
        std::process::exit(1);
    }
}
