//! `jetweave schedule create|ls|rm` (contract §12).

use clap::{Args, Subcommand};
use jetweave::error::Error;
use jetweave::protocol::{Priority, ScheduleCreate};
use jetweave::Client;

/// `jetweave schedule ...`.
#[derive(Debug, Subcommand)]
pub enum ScheduleCommand {
    /// Create (or replace) a periodic task.
    ///
    /// Example: jetweave schedule create nightly --cron '0 0 3 * * *' --type report
    Create(CreateArgs),
    /// List the schedules.
    ///
    /// Example: jetweave schedule ls --json
    Ls(LsArgs),
    /// Delete a schedule: no firing after it returns.
    ///
    /// Example: jetweave schedule rm nightly
    Rm(RmArgs),
}

/// `schedule create` flags.
#[derive(Debug, Args)]
pub struct CreateArgs {
    /// The schedule's id.
    pub schedule_id: String,
    /// Fire every N whole seconds.
    #[arg(long, conflicts_with = "cron", required_unless_present = "cron")]
    pub every: Option<u64>,
    /// Or on a six-field cron expression (sec min hour day month weekday).
    #[arg(long)]
    pub cron: Option<String>,
    /// Task type.
    #[arg(long = "type")]
    pub task_type: String,
    /// Task payload (JSON).
    #[arg(long, default_value = "null")]
    pub payload: String,
    /// Queue.
    #[arg(long)]
    pub queue: Option<String>,
    /// Priority: critical, high, normal or low.
    #[arg(long)]
    pub priority: Option<String>,
}

/// `schedule ls` flags.
#[derive(Debug, Args)]
pub struct LsArgs {
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// `schedule rm` arguments.
#[derive(Debug, Args)]
pub struct RmArgs {
    /// The schedule's id.
    pub schedule_id: String,
}

/// Runs one `schedule` command.
pub async fn run(c: &Client, cmd: &ScheduleCommand) -> Result<(), Error> {
    match cmd {
        ScheduleCommand::Create(a) => {
            let payload = serde_json::from_str(&a.payload)
                .map_err(|e| Error::Config(format!("--payload is not JSON: {e}")))?;
            let priority = a
                .priority
                .as_deref()
                .map(str::parse::<Priority>)
                .transpose()?;
            let spec = ScheduleCreate {
                schedule_id: a.schedule_id.clone(),
                every_s: a.every,
                cron: a.cron.clone(),
                task_type: a.task_type.clone(),
                payload,
                queue: a.queue.clone(),
                priority,
                metadata: Default::default(),
            };
            let v = c.schedule_create(&spec).await?;
            println!("{}", serde_json::to_string_pretty(&v)?);
        }
        ScheduleCommand::Ls(a) => {
            let l = c.schedules().await?;
            if a.json {
                println!("{}", serde_json::to_string_pretty(&l)?);
                return Ok(());
            }
            println!(
                "{:<20} {:<20} {:<14} {:<12} NEXT",
                "SCHEDULE", "WHEN", "TYPE", "QUEUE"
            );
            for s in &l {
                let when = match (s.every_s, &s.cron) {
                    (Some(n), _) => format!("every {n}s"),
                    (None, Some(c)) => c.clone(),
                    _ => "-".into(),
                };
                let next = s.next_at.as_deref().unwrap_or("-");
                println!(
                    "{:<20} {:<20} {:<14} {:<12} {next}",
                    s.schedule_id, when, s.task_type, s.queue
                );
            }
        }
        ScheduleCommand::Rm(a) => {
            let v = c.schedule_delete(&a.schedule_id).await?;
            println!("{}", serde_json::to_string_pretty(&v)?);
        }
    }
    Ok(())
}
