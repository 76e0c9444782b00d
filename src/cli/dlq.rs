//! `jetweave dlq ls|requeue|purge` (contract §11).

use clap::{Args, Subcommand};
use jetweave::error::Error;
use jetweave::Client;

/// `jetweave dlq ...`.
#[derive(Debug, Subcommand)]
pub enum DlqCommand {
    /// List dead letters, oldest first.
    ///
    /// Example: jetweave dlq ls --queue default
    Ls(DlqLsArgs),
    /// Run a dead task again as a new task (or --all of a --queue).
    ///
    /// Example: jetweave dlq requeue 3f2a...   |   jetweave dlq requeue --all --queue default
    Requeue(DlqRequeueArgs),
    /// Delete dead letters (of --queue, else all).
    ///
    /// Example: jetweave dlq purge --queue default
    Purge(DlqQueueArgs),
}

/// `dlq ls` flags.
#[derive(Debug, Args)]
pub struct DlqLsArgs {
    /// Only this queue.
    #[arg(long)]
    pub queue: Option<String>,
    /// At most this many entries.
    #[arg(long, default_value = "100")]
    pub limit: usize,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// `dlq requeue` arguments.
#[derive(Debug, Args)]
pub struct DlqRequeueArgs {
    /// The dead task.
    #[arg(required_unless_present = "all")]
    pub task_id: Option<String>,
    /// Every dead letter of --queue.
    #[arg(long, requires = "queue", conflicts_with = "task_id")]
    pub all: bool,
    /// The queue (with --all).
    #[arg(long)]
    pub queue: Option<String>,
}

/// `dlq purge` flags.
#[derive(Debug, Args)]
pub struct DlqQueueArgs {
    /// Only this queue.
    #[arg(long)]
    pub queue: Option<String>,
}

/// Runs one `dlq` command.
pub async fn run(c: &Client, cmd: &DlqCommand) -> Result<(), Error> {
    match cmd {
        DlqCommand::Ls(a) => {
            let l = c.dlq_list(a.queue.as_deref(), Some(a.limit)).await?;
            if a.json {
                println!("{}", serde_json::to_string_pretty(&l)?);
                return Ok(());
            }
            println!(
                "{:<40} {:<12} {:<12} {:>8}  {:<30} ERROR",
                "TASK", "QUEUE", "TYPE", "ATTEMPTS", "DEAD AT"
            );
            for e in &l.entries {
                println!(
                    "{:<40} {:<12} {:<12} {:>8}  {:<30} {}",
                    e.task_id, e.queue, e.task_type, e.attempts, e.dead_at, e.error
                );
            }
            println!("{} of {} dead letters", l.entries.len(), l.total);
        }
        DlqCommand::Requeue(a) => {
            let v = match (&a.task_id, &a.queue) {
                (Some(id), _) => c.dlq_requeue(id).await?,
                (None, Some(q)) => c.dlq_requeue_all(q).await?,
                (None, None) => {
                    return Err(Error::Config("give a task id or --all --queue Q".into()))
                }
            };
            println!("{}", serde_json::to_string_pretty(&v)?);
        }
        DlqCommand::Purge(a) => {
            let v = c.dlq_purge(a.queue.as_deref()).await?;
            println!("{}", serde_json::to_string_pretty(&v)?);
        }
    }
    Ok(())
}
