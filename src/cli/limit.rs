//! `jetweave limit set|ls|rm` (contract §15).

use clap::{Args, Subcommand};
use jetweave::error::Error;
use jetweave::protocol::LimitSpec;
use jetweave::Client;

/// `jetweave limit ...`.
#[derive(Debug, Subcommand)]
pub enum LimitCommand {
    /// Set (or change) a limit: per `limit_key`, at most --max-running
    /// tasks at once and/or --per-second starts (bucket of --burst).
    ///
    /// Example: jetweave limit set openai --type chat --max-running 4 --per-second 10
    Set(SetArgs),
    /// List the limits and what runs under them now, by key.
    ///
    /// Example: jetweave limit ls --json
    Ls(LsArgs),
    /// Delete a limit: its waiting tasks start within 1 s.
    ///
    /// Example: jetweave limit rm openai
    Rm(RmArgs),
}

/// `limit set` flags.
#[derive(Debug, Args)]
pub struct SetArgs {
    /// The limit's id.
    pub limit_id: String,
    /// Only tasks of this queue (default: any).
    #[arg(long)]
    pub queue: Option<String>,
    /// Only tasks of this type (default: any).
    #[arg(long = "type")]
    pub task_type: Option<String>,
    /// At most N tasks of one key run at once, cluster-wide.
    #[arg(long)]
    pub max_running: Option<u32>,
    /// At most R starts per second per key.
    #[arg(long)]
    pub per_second: Option<f64>,
    /// Token bucket size (default: the ceiling of --per-second).
    #[arg(long)]
    pub burst: Option<u32>,
}

/// `limit ls` flags.
#[derive(Debug, Args)]
pub struct LsArgs {
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// `limit rm` arguments.
#[derive(Debug, Args)]
pub struct RmArgs {
    /// The limit's id.
    pub limit_id: String,
}

fn or_any<T: ToString>(v: &Option<T>) -> String {
    v.as_ref().map_or_else(|| "*".into(), T::to_string)
}

/// Runs one `limit` command.
pub async fn run(c: &Client, cmd: &LimitCommand) -> Result<(), Error> {
    match cmd {
        LimitCommand::Set(a) => {
            let spec = LimitSpec {
                limit_id: a.limit_id.clone(),
                queue: a.queue.clone(),
                task_type: a.task_type.clone(),
                max_running: a.max_running,
                per_second: a.per_second,
                burst: a.burst,
            };
            let v = c.limit_set(&spec).await?;
            println!("{}", serde_json::to_string_pretty(&v)?);
        }
        LimitCommand::Ls(a) => {
            let l = c.limits().await?;
            if a.json {
                println!("{}", serde_json::to_string_pretty(&l)?);
                return Ok(());
            }
            println!(
                "{:<16} {:<10} {:<14} {:>11} {:>10} {:>6}  RUNNING",
                "LIMIT", "QUEUE", "TYPE", "MAX_RUNNING", "PER_SECOND", "BURST"
            );
            for l in &l {
                let running: Vec<String> =
                    l.running.iter().map(|(k, n)| format!("{k}={n}")).collect();
                println!(
                    "{:<16} {:<10} {:<14} {:>11} {:>10} {:>6}  {}",
                    l.limit_id,
                    or_any(&l.queue),
                    or_any(&l.task_type),
                    or_any(&l.max_running),
                    or_any(&l.per_second),
                    or_any(&l.burst),
                    if running.is_empty() {
                        "-".into()
                    } else {
                        running.join(" ")
                    }
                );
            }
        }
        LimitCommand::Rm(a) => {
            let v = c.limit_delete(&a.limit_id).await?;
            println!("{}", serde_json::to_string_pretty(&v)?);
        }
    }
    Ok(())
}
