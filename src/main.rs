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

/// Resolves on the first SIGTERM or SIGINT.
async fn termination() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        std::future::pending::<()>().await;
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}

async fn run_node(cli: &Cli, args: &NodeArgs) -> anyhow::Result<()> {
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
        _ = termination() => {
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

async fn run_coordinator(cli: &Cli, args: &CoordinatorArgs) -> anyhow::Result<()> {
    let cfg = args.to_config(&cli.global.prefix)?;
    let client = cli
        .global
        .nats()?
        .connect(&format!("jetweave coordinator {}", cfg.id))
        .await?;
    let shutdown = Shutdown::new();
    let c = Coordinator::start(client.clone(), cfg, shutdown.clone()).await?;
    termination().await;
    tracing::info!("signal received: shutting down");
    shutdown.trigger();
    c.wait().await;
    let _ = client.flush().await;
    Ok(())
}

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    init_tracing();
    let result = match &cli.command {
        Command::Node(args) => run_node(&cli, args).await,
        Command::Coordinator(args) => run_coordinator(&cli, args).await,
    };
    if let Err(e) = result {
        eprintln!("jetweave: {e:#}");
        std::process::exit(1);
    }
}
