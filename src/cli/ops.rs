//! Operator commands: what an operator types next to the `nats` CLI.
//! Every command that prints data takes `--json` for scripts; tables
//! otherwise, coloured only on a terminal.

use std::io::IsTerminal;
use std::time::Duration;

use async_nats::jetstream::{self, consumer};
use clap::{Args, Subcommand};
use futures::StreamExt;
use serde_json::{json, Value};

use jetweave::client::Client;
use jetweave::error::Error;
use jetweave::wire::protocol::{
    parse_rfc3339, NodeInfo, Priority, SubmitRequest, TaskEnvelope, TaskStatus,
};

/// `--json`.
#[derive(Debug, Args, Clone)]
pub struct JsonArgs {
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// `jetweave nodes`.
#[derive(Debug, Args, Clone)]
pub struct NodesArgs {
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Redraw on every join, leave and heartbeat.
    #[arg(long)]
    pub watch: bool,
}

/// A node id or `--all`.
#[derive(Debug, Args, Clone)]
pub struct TargetArgs {
    /// The node id.
    #[arg(required_unless_present = "all")]
    pub node: Option<String>,
    /// Every live node.
    #[arg(long, conflicts_with = "node")]
    pub all: bool,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// `jetweave submit`.
#[derive(Debug, Args, Clone)]
pub struct SubmitArgs {
    /// Task type (the handler name).
    pub task_type: String,
    /// Payload: JSON text, or @file.
    #[arg(long, default_value = "null")]
    pub payload: String,
    /// Queue.
    #[arg(long, default_value = "default")]
    pub queue: String,
    /// critical, high, normal or low.
    #[arg(long, default_value = "normal")]
    pub priority: String,
    /// Task id (de-duplicates re-submits).
    #[arg(long)]
    pub id: Option<String>,
    /// Attempts before the task is dead.
    #[arg(long)]
    pub max_attempts: Option<u32>,
    /// Per-attempt timeout in seconds.
    #[arg(long)]
    pub task_timeout: Option<f64>,
    /// The key flow-control limits count this task under (a tenant, a
    /// customer); see `jetweave limit`.
    #[arg(long)]
    pub limit_key: Option<String>,
    /// Fire and forget: store no result when the task completes (failures
    /// are still stored); cannot be combined with --wait.
    #[arg(long, conflicts_with = "wait")]
    pub ignore_result: bool,
    /// Wait for the result and print it.
    #[arg(long)]
    pub wait: bool,
    /// How long --wait waits, seconds.
    #[arg(long, default_value = "60")]
    pub timeout: f64,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// A task id.
#[derive(Debug, Args, Clone)]
pub struct TaskArgs {
    /// The task id.
    pub task_id: String,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// `jetweave run ...`.
#[derive(Debug, Subcommand, Clone)]
pub enum RunCommand {
    /// Create a run and follow its progress.
    ///
    /// Example: jetweave run create --dataset ds --total 100 --shard-size 25 --type count --payload '{"item_ms": 20}'
    Create(RunCreateArgs),
    /// Show a run.
    ///
    /// Example: jetweave run status r1
    Status(RunStatusArgs),
}

/// `jetweave run create`.
#[derive(Debug, Args, Clone)]
pub struct RunCreateArgs {
    /// Run id (default: generated).
    #[arg(long)]
    pub run_id: Option<String>,
    /// Dataset id.
    #[arg(long)]
    pub dataset: String,
    /// Iteration.
    #[arg(long, default_value = "0")]
    pub iteration: u64,
    /// Items in the run.
    #[arg(long)]
    pub total: i64,
    /// Items per shard.
    #[arg(long, default_value = "1")]
    pub shard_size: i64,
    /// by_slice, by_dataset or by_iteration.
    #[arg(long, default_value = "by_slice")]
    pub strategy: String,
    /// Shard handler.
    #[arg(long = "type")]
    pub task_type: String,
    /// Payload: JSON text, or @file.
    #[arg(long, default_value = "null")]
    pub payload: String,
    /// Required capabilities, comma separated.
    #[arg(long, value_delimiter = ',')]
    pub capabilities: Vec<String>,
    /// Return at once instead of following progress.
    #[arg(long)]
    pub no_wait: bool,
    /// How long to follow, seconds.
    #[arg(long, default_value = "3600")]
    pub timeout: f64,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// `jetweave run status`.
#[derive(Debug, Args, Clone)]
pub struct RunStatusArgs {
    /// The run id.
    pub run_id: String,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// `jetweave events`.
#[derive(Debug, Args, Clone)]
pub struct EventsArgs {
    /// Start this long ago: 30s, 10m, 2h, 1d.
    #[arg(long, default_value = "1h")]
    pub since: String,
    /// Keep printing new events.
    #[arg(long)]
    pub follow: bool,
    /// Print JSON lines.
    #[arg(long)]
    pub json: bool,
}

fn paint(code: &str, text: &str) -> String {
    if std::io::stdout().is_terminal() {
        format!("\x1b[{code}m{text}\x1b[0m")
    } else {
        text.to_string()
    }
}

fn print_json(v: &impl serde::Serialize) {
    println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
}

/// A JSON argument: text, or `@path` to read a file.
pub fn json_arg(s: &str) -> Result<Value, Error> {
    let text = match s.strip_prefix('@') {
        Some(path) => std::fs::read_to_string(path)
            .map_err(|e| Error::Config(format!("cannot read {path}: {e}")))?,
        None => s.to_string(),
    };
    serde_json::from_str(&text)
        .map_err(|e| Error::Config(format!("--payload is not valid JSON: {e}")))
}

/// Parses `30s`, `10m`, `2h`, `1d`.
pub fn parse_ago(s: &str) -> Result<Duration, Error> {
    let (n, unit) = s.split_at(s.trim_end_matches(char::is_alphabetic).len());
    let n: f64 = n
        .parse()
        .map_err(|_| Error::Config(format!("invalid duration {s:?}: use e.g. 30s, 10m, 2h")))?;
    let mult = match unit {
        "" | "s" => 1.0,
        "m" => 60.0,
        "h" => 3600.0,
        "d" => 86400.0,
        _ => return Err(Error::Config(format!("invalid duration unit in {s:?}"))),
    };
    jetweave::config::secs("--since", n * mult)
}

fn age(ts: &str) -> String {
    match parse_rfc3339(ts) {
        Ok(t) => {
            let d = time::OffsetDateTime::now_utc() - t;
            format!("{:.1}s", d.as_seconds_f64().max(0.0))
        }
        Err(_) => "?".into(),
    }
}

fn nodes_table(nodes: &[NodeInfo]) {
    println!(
        "{:<20} {:<10} {:<9} {:>9}  {:<24} {:>8}",
        "NODE", "ROLE", "HEALTH", "ACTIVE", "QUEUES", "LAST HB"
    );
    for n in nodes {
        let health = match n.health {
            jetweave::wire::protocol::Health::Healthy => paint("32", "healthy  "),
            jetweave::wire::protocol::Health::Draining => paint("33", "draining "),
        };
        println!(
            "{:<20} {:<10} {} {:>9}  {:<24} {:>8}",
            n.node_id,
            n.role.as_str(),
            health,
            format!("{}/{}", n.active_tasks, n.max_concurrency),
            n.queues.join(","),
            age(&n.last_heartbeat_at),
        );
    }
    if nodes.is_empty() {
        println!("(no live nodes)");
    }
}

/// `jetweave nodes`.
pub async fn nodes(c: &Client, a: &NodesArgs) -> Result<(), Error> {
    let list = c.nodes().await?;
    if a.json && a.watch {
        // One JSON document per line while watching.
        println!("{}", serde_json::to_string(&list).unwrap_or_default());
    } else if a.json {
        print_json(&list);
    } else {
        nodes_table(&list);
    }
    if !a.watch {
        return Ok(());
    }
    let d = jetweave::store::discovery::KvDiscovery::open(
        c.nats().clone(),
        c.subjects(),
        Duration::from_secs(5),
        1,
    )
    .await?;
    let view = jetweave::store::discovery::ClusterView::start(
        &d,
        jetweave::shutdown::Shutdown::new(),
        &tokio_util::task::TaskTracker::new(),
    )
    .await?;
    let mut rx = view
        .subscribe()
        .ok_or_else(|| Error::nats("no event channel"))?;
    while rx.recv().await.is_ok() {
        while rx.try_recv().is_ok() {}
        let list = view.nodes();
        if a.json {
            println!("{}", serde_json::to_string(&list).unwrap_or_default());
        } else {
            if std::io::stdout().is_terminal() {
                print!("\x1b[2J\x1b[H");
            }
            nodes_table(&list);
        }
    }
    Ok(())
}

/// `jetweave drain|resume|ping`.
pub async fn target(c: &Client, verb: &str, a: &TargetArgs) -> Result<(), Error> {
    let replies = if a.all {
        c.broadcast(verb, Duration::from_millis(800)).await?
    } else {
        let node = a.node.clone().unwrap_or_default();
        let t0 = std::time::Instant::now();
        let mut r = c
            .control(&node, verb, &json!({}))
            .await
            .map_err(|e| match e {
                e if e.kind() == jetweave::error::ErrorKind::NoResponders => Error::Config(
                    format!("node {node:?} does not answer; `jetweave nodes` lists the live ones"),
                ),
                e => e,
            })?;
        r["rtt_ms"] = json!(t0.elapsed().as_secs_f64() * 1000.0);
        vec![r]
    };
    if a.json {
        print_json(&replies);
        return Ok(());
    }
    if replies.is_empty() {
        println!("no node answered");
        return Err(Error::Timeout("no node answered".into()));
    }
    for r in &replies {
        let rtt = r["rtt_ms"]
            .as_f64()
            .map(|v| format!(" ({v:.2} ms)"))
            .unwrap_or_default();
        println!(
            "{:<20} {:<9} {}{rtt}",
            r["node_id"].as_str().unwrap_or("?"),
            verb,
            r["health"].as_str().unwrap_or("?")
        );
    }
    Ok(())
}

/// `jetweave submit`.
pub async fn submit(c: &Client, a: &SubmitArgs) -> Result<(), Error> {
    let mut env = TaskEnvelope::new(a.task_type.clone(), json_arg(&a.payload)?);
    env.id = a.id.clone();
    env.max_attempts = a.max_attempts;
    env.timeout_s = a.task_timeout;
    env.limit_key = a.limit_key.clone();
    env.ignore_result = a.ignore_result;
    let req = SubmitRequest {
        envelope: env,
        queue: Some(a.queue.clone()),
        priority: Some(a.priority.parse::<Priority>()?),
    };
    let r = c.submit(&req).await?;
    if !a.wait {
        if a.json {
            print_json(&r);
        } else {
            println!("{}", r.task_id);
        }
        return Ok(());
    }
    let res = c
        .wait(&r.task_id, jetweave::config::secs("--timeout", a.timeout)?)
        .await?;
    if a.json {
        print_json(&res);
    } else {
        println!(
            "task {} {} after {} attempt(s) on {}",
            res.task_id,
            res.status.as_str(),
            res.attempts,
            res.node_id.as_deref().unwrap_or("-")
        );
        if let Some(e) = &res.error {
            println!("error: {e}");
        }
        println!(
            "{}",
            serde_json::to_string_pretty(&res.result).unwrap_or_default()
        );
    }
    if res.status == TaskStatus::Completed {
        Ok(())
    } else {
        Err(Error::Remote {
            code: res.status.as_str().into(),
            message: format!("task ended {}", res.status.as_str()),
        })
    }
}

/// `jetweave task`.
pub async fn task(c: &Client, a: &TaskArgs) -> Result<(), Error> {
    let info = c.get(&a.task_id).await?;
    if a.json {
        print_json(&info);
    } else {
        println!("task    {}", info.task_id);
        println!("status  {}", info.status.as_str());
        if let Some(n) = &info.node_id {
            println!("node    {n}");
        }
        if let Some(r) = &info.result {
            println!(
                "attempts {}  duration {:.3}s  node {}",
                r.attempts,
                r.duration_s,
                r.node_id.as_deref().unwrap_or("-")
            );
            if let Some(e) = &r.error {
                println!("error   {e}");
            }
            println!("result  {}", r.result);
        }
    }
    if info.status == TaskStatus::Unknown {
        return Err(Error::Remote {
            code: "unknown_task".into(),
            message: format!("unknown task {:?}", a.task_id),
        });
    }
    Ok(())
}

/// `jetweave cancel`.
pub async fn cancel(c: &Client, a: &TaskArgs) -> Result<(), Error> {
    let r = c.cancel(&a.task_id).await?;
    if a.json {
        print_json(&r);
    } else {
        println!(
            "cancelled {} (was {})",
            a.task_id,
            r["previous_status"].as_str().unwrap_or("?")
        );
    }
    Ok(())
}

fn run_summary(r: &Value) {
    println!(
        "run {}  {}  {}/{} shards done{}",
        r["run_id"].as_str().unwrap_or("?"),
        r["status"].as_str().unwrap_or("?"),
        r["completed_shards"],
        r["total_shards"],
        r["waiting"]
            .as_str()
            .map(|w| format!("  ({w})"))
            .unwrap_or_default()
    );
    if let Some(a) = r["assignments"].as_object() {
        for (k, n) in a {
            println!("  {k:<24} {}", n.as_str().unwrap_or("-"));
        }
    }
}

/// `jetweave run ...`.
pub async fn run(c: &Client, cmd: &RunCommand) -> Result<(), Error> {
    match cmd {
        RunCommand::Status(a) => {
            let r = c.get_run(&a.run_id).await?;
            if a.json {
                print_json(&r);
            } else {
                run_summary(&r);
            }
            Ok(())
        }
        RunCommand::Create(a) => {
            let spec = json!({
                "run_id": a.run_id, "dataset_id": a.dataset, "iteration": a.iteration,
                "total_items": a.total, "shard_size": a.shard_size, "strategy": a.strategy,
                "type": a.task_type, "payload": json_arg(&a.payload)?,
                "requirements": {"capabilities": a.capabilities},
            });
            let created = c.create_run(&spec).await?;
            let run_id = created["run_id"].as_str().unwrap_or_default().to_string();
            if a.no_wait {
                if a.json {
                    print_json(&created);
                } else {
                    println!("{run_id}");
                }
                return Ok(());
            }
            let total = created["total_shards"].as_u64().unwrap_or(0);
            let bar = if a.json || !std::io::stderr().is_terminal() {
                indicatif::ProgressBar::hidden()
            } else {
                let b = indicatif::ProgressBar::new(total);
                if let Ok(style) = indicatif::ProgressStyle::with_template(
                    "{spinner} run {msg} [{bar:40}] {pos}/{len} shards ({elapsed})",
                ) {
                    b.set_style(style.progress_chars("=> "));
                }
                b.set_message(run_id.clone());
                b
            };
            let r = c
                .wait_run(
                    &run_id,
                    jetweave::config::secs("--timeout", a.timeout)?,
                    |done, _| bar.set_position(done),
                )
                .await?;
            bar.finish_and_clear();
            if a.json {
                print_json(&r);
            } else {
                run_summary(&r);
            }
            if r["status"] == "completed" {
                Ok(())
            } else {
                Err(Error::Remote {
                    code: "run_failed".into(),
                    message: format!("run {run_id} ended {}", r["status"]),
                })
            }
        }
    }
}

/// `jetweave events`.
pub async fn events(c: &Client, a: &EventsArgs) -> Result<(), Error> {
    let since = parse_ago(&a.since)?;
    let js = jetstream::new(c.nats().clone());
    let stream = js
        .get_stream(c.subjects().events_stream())
        .await
        .map_err(Error::nats_source)?;
    let start = time::OffsetDateTime::now_utc() - since;
    let consumer = stream
        .create_consumer(consumer::pull::OrderedConfig {
            deliver_policy: consumer::DeliverPolicy::ByStartTime { start_time: start },
            ..Default::default()
        })
        .await
        .map_err(Error::nats_source)?;
    let mut msgs = consumer.messages().await.map_err(Error::nats_source)?;
    loop {
        let next = if a.follow {
            msgs.next().await
        } else {
            match tokio::time::timeout(Duration::from_millis(500), msgs.next()).await {
                Ok(m) => m,
                Err(_) => break,
            }
        };
        let Some(Ok(m)) = next else { break };
        let v: Value = serde_json::from_slice(&m.payload).unwrap_or(Value::Null);
        if a.json {
            println!("{}", json!({"subject": m.subject.as_str(), "event": v}));
        } else {
            let at = v["at"].as_str().unwrap_or("");
            let kind = v["kind"]
                .as_str()
                .map(str::to_string)
                .unwrap_or_else(|| m.subject.to_string());
            let who = [v["node_id"].as_str(), v["run_id"].as_str()]
                .iter()
                .flatten()
                .cloned()
                .collect::<Vec<_>>()
                .join(" ");
            println!(
                "{at}  {:<20} {who:<20} {}",
                paint("36", &kind),
                v["details"]
            );
        }
    }
    Ok(())
}

/// `jetweave checkpoints`.
pub async fn checkpoints(c: &Client, a: &TaskArgs) -> Result<(), Error> {
    let cp = jetweave::store::checkpoint::Checkpoints::open(c.nats().clone(), c.subjects(), 10, 1)
        .await?;
    let all = cp.all(&a.task_id).await?;
    if a.json {
        print_json(&all);
    } else {
        if all.is_empty() {
            println!("no checkpoints for {}", a.task_id);
        }
        for r in all {
            let body = r.payload.to_string();
            let short: String = body.chars().take(60).collect();
            println!(
                "{}  {}  {:<12} {}",
                r.created_at, r.checkpoint_id, r.node_id, short
            );
        }
    }
    Ok(())
}

/// `jetweave status`.
pub async fn status(c: &Client, a: &JsonArgs) -> Result<(), Error> {
    let st = c.cluster_status().await?;
    if a.json {
        print_json(&st);
        return Ok(());
    }
    println!(
        "nodes {} (healthy {}, draining {})  processes {}  leader {}",
        st.total_nodes,
        st.healthy_nodes,
        st.draining_nodes,
        st.total_processes,
        st.leader.as_deref().unwrap_or("none")
    );
    println!("{:<20} {:>8} {:>8}", "QUEUE", "PENDING", "RUNNING");
    for (q, s) in &st.queues {
        println!("{q:<20} {:>8} {:>8}", s.pending, s.running);
    }
    if !st.runs.is_empty() {
        let runs: Vec<String> = st.runs.iter().map(|(k, v)| format!("{k} {v}")).collect();
        println!("runs: {}", runs.join(", "));
    }
    Ok(())
}
