//! Task handlers: what runs a task of a given `type`.
//!
//! A handler is an async function of a [`TaskContext`] and the task's
//! payload that returns a JSON result or a [`HandlerError`]. Every node has
//! the built-ins `echo`, `sleep`, `fail` and `count`; Rust code registers
//! more with [`Handlers::register`]; the config file adds `exec` (any
//! program: envelope on stdin, result on stdout) and `http` (POST the
//! envelope to a URL) handlers so any language can be a handler.

use std::collections::BTreeMap;
use std::future::Future;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use serde_json::{json, Map, Value};
use tokio::io::AsyncWriteExt;
use tokio_util::sync::CancellationToken;

use crate::config::HandlerSpec;
use crate::store::checkpoint::{CheckpointOwner, Checkpoints};
use crate::wire::protocol::CheckpointRecord;

/// Why an attempt failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HandlerError {
    /// The error recorded in the result.
    pub message: String,
    /// Retry it (the default) or fail the task at once (`status: failed`).
    pub retryable: bool,
}

impl HandlerError {
    /// A retryable failure.
    pub fn retry(message: impl Into<String>) -> Self {
        HandlerError {
            message: message.into(),
            retryable: true,
        }
    }
    /// A failure that is not retried: the task ends `failed`.
    pub fn fatal(message: impl Into<String>) -> Self {
        HandlerError {
            message: message.into(),
            retryable: false,
        }
    }
}

impl<E: std::fmt::Display> From<E> for HandlerError {
    fn from(e: E) -> Self {
        HandlerError::retry(e.to_string())
    }
}

/// The shard a task belongs to, for run shards.
#[derive(Debug, Clone, PartialEq)]
pub struct ShardInfo {
    /// The run.
    pub run_id: String,
    /// The iteration.
    pub iteration: u64,
    /// `slice:<start>:<end>` or `item:<i>`.
    pub shard_key: String,
}

impl ShardInfo {
    /// The half-open item range the key covers.
    pub fn items(&self) -> Option<(u64, u64)> {
        let parts: Vec<&str> = self.shard_key.split(':').collect();
        match parts.as_slice() {
            ["slice", a, b] => Some((a.parse().ok()?, b.parse().ok()?)),
            ["item", i] => {
                let i: u64 = i.parse().ok()?;
                Some((i, i + 1))
            }
            _ => None,
        }
    }
}

/// What a handler knows about the attempt it runs.
#[derive(Clone)]
pub struct TaskContext {
    /// The task id.
    pub task_id: String,
    /// The task type.
    pub task_type: String,
    /// 1 for the first attempt.
    pub attempt: u32,
    /// The node running it.
    pub node_id: String,
    /// Shard details, for run shards.
    pub shard: Option<ShardInfo>,
    /// The task's metadata.
    pub metadata: serde_json::Map<String, Value>,
    /// W3C trace context of this attempt's handler span (or, with the
    /// node's traces off, the task's own): exec handlers get it as
    /// `TRACEPARENT`, http handlers as the `traceparent` header.
    pub traceparent: Option<String>,
    cancel: CancellationToken,
    checkpoints: Option<Checkpoints>,
    extend: Option<tokio::sync::mpsc::UnboundedSender<std::time::Duration>>,
}

impl TaskContext {
    /// A context (for tests and for embedding).
    pub fn new(task_id: impl Into<String>, task_type: impl Into<String>, attempt: u32) -> Self {
        TaskContext {
            task_id: task_id.into(),
            task_type: task_type.into(),
            attempt,
            node_id: String::new(),
            shard: None,
            metadata: Default::default(),
            traceparent: None,
            cancel: CancellationToken::new(),
            checkpoints: None,
            extend: None,
        }
    }

    /// Where [`TaskContext::extend`] requests go (the attempt's runner).
    pub(crate) fn with_extend(
        mut self,
        tx: tokio::sync::mpsc::UnboundedSender<std::time::Duration>,
    ) -> Self {
        self.extend = Some(tx);
        self
    }

    /// Says the handler is alive and needs `by` more: the attempt's
    /// timeout (the task's `timeout_s` or the node's `--task-timeout`) is
    /// pushed to at least `by` from now. An exec handler does the same by
    /// writing the line `jetweave:extend <seconds>` on stderr. (The lease
    /// itself is kept by the node while the handler runs.)
    pub fn extend(&self, by: std::time::Duration) {
        if let Some(tx) = &self.extend {
            let _ = tx.send(by);
        }
    }

    pub(crate) fn with_runtime(
        mut self,
        node_id: &str,
        cancel: CancellationToken,
        checkpoints: Option<Checkpoints>,
    ) -> Self {
        self.node_id = node_id.to_string();
        self.cancel = cancel;
        self.checkpoints = checkpoints;
        self
    }

    /// Resolves when the task is cancelled (or the attempt times out).
    pub async fn cancelled(&self) {
        self.cancel.cancelled().await
    }

    /// Has the task been cancelled?
    pub fn is_cancelled(&self) -> bool {
        self.cancel.is_cancelled()
    }

    /// Saves a checkpoint of this task (contract §8).
    pub async fn checkpoint(&self, payload: Value) -> Result<CheckpointRecord, HandlerError> {
        self.checkpoint_with(payload, Map::new()).await
    }

    /// Saves a checkpoint with `metadata` (kept in the record's `metadata`,
    /// e.g. `{"cursor": "2026-12-01", "model": "v3"}`) next to its payload.
    pub async fn checkpoint_with(
        &self,
        payload: Value,
        metadata: Map<String, Value>,
    ) -> Result<CheckpointRecord, HandlerError> {
        let cp = self
            .checkpoints
            .as_ref()
            .ok_or_else(|| HandlerError::retry("checkpoints are not available here"))?;
        cp.save(self, payload, metadata)
            .await
            .map_err(|e| HandlerError::retry(e.to_string()))
    }

    /// The latest readable checkpoint of this task, if any. A corrupt
    /// checkpoint is logged and skipped (the one before it is used), and a
    /// store that cannot be read means starting fresh, never an error loop.
    pub async fn latest_checkpoint(&self) -> Option<CheckpointRecord> {
        let cp = self.checkpoints.as_ref()?;
        match cp.latest(&self.task_id).await {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(task_id = %self.task_id, error = %e, "unreadable checkpoint; starting fresh");
                None
            }
        }
    }
}

impl From<&TaskContext> for CheckpointOwner {
    fn from(ctx: &TaskContext) -> Self {
        CheckpointOwner {
            task_id: ctx.task_id.clone(),
            run_id: ctx.shard.as_ref().map(|s| s.run_id.clone()),
            iteration: ctx.shard.as_ref().map(|s| s.iteration),
            shard_key: ctx.shard.as_ref().map(|s| s.shard_key.clone()),
            node_id: ctx.node_id.clone(),
        }
    }
}

/// The result of one attempt.
pub type HandlerResult = Result<Value, HandlerError>;

pub(crate) type HandlerFn =
    Arc<dyn Fn(TaskContext, Value) -> BoxFuture<'static, HandlerResult> + Send + Sync>;

/// Runs a handler; a panic inside it becomes a retryable `handler
/// panicked` failure of this attempt (or event), never a crash of the
/// caller's bookkeeping.
pub(crate) async fn invoke(handler: HandlerFn, ctx: TaskContext, payload: Value) -> HandlerResult {
    futures::FutureExt::catch_unwind(std::panic::AssertUnwindSafe(handler(ctx, payload)))
        .await
        .unwrap_or_else(|_| Err(HandlerError::retry("handler panicked")))
}

/// The handlers a node has, by task type.
#[derive(Clone, Default)]
pub struct Handlers {
    map: BTreeMap<String, HandlerFn>,
}

impl Handlers {
    /// The built-ins: `echo`, `sleep`, `fail`, `count`.
    pub fn builtin() -> Self {
        let mut h = Handlers::default();
        h.register("echo", |_ctx, payload| async move { Ok(payload) });
        h.register("sleep", sleep_handler);
        h.register("fail", fail_handler);
        h.register("count", count_handler);
        h
    }

    /// Registers (or replaces) the handler for `task_type`.
    ///
    /// ```
    /// use jetweave::handler::Handlers;
    /// let mut h = Handlers::builtin();
    /// h.register("double", |_ctx, payload| async move {
    ///     let n = payload.as_i64().unwrap_or(0);
    ///     Ok(serde_json::json!(n * 2))
    /// });
    /// assert!(h.types().contains(&"double".to_string()));
    /// ```
    pub fn register<F, Fut>(&mut self, task_type: impl Into<String>, f: F)
    where
        F: Fn(TaskContext, Value) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = HandlerResult> + Send + 'static,
    {
        self.map
            .insert(task_type.into(), Arc::new(move |c, p| Box::pin(f(c, p))));
    }

    /// Adds the config file's external handlers.
    pub fn register_specs(&mut self, specs: &[HandlerSpec]) {
        for s in specs {
            if let Some(cmd) = s.exec.clone() {
                let cmd = Arc::new(cmd);
                self.register(s.task_type.clone(), move |ctx, payload| {
                    let cmd = cmd.clone();
                    async move { exec_handler(&cmd, ctx, payload).await }
                });
            } else if let Some(url) = s.http.clone() {
                let client = reqwest::Client::new();
                let url = Arc::new(url);
                self.register(s.task_type.clone(), move |ctx, payload| {
                    let (client, url) = (client.clone(), url.clone());
                    async move { http_handler(&client, &url, ctx, payload).await }
                });
            }
        }
    }

    /// The handler for `task_type`.
    pub(crate) fn get(&self, task_type: &str) -> Option<HandlerFn> {
        self.map.get(task_type).cloned()
    }

    /// Every registered type.
    pub fn types(&self) -> Vec<String> {
        self.map.keys().cloned().collect()
    }
}

async fn sleep_handler(ctx: TaskContext, payload: Value) -> HandlerResult {
    let ms = payload
        .get("ms")
        .and_then(Value::as_u64)
        .ok_or_else(|| HandlerError::fatal("sleep needs payload {\"ms\": N} with N >= 0"))?;
    tokio::select! {
        _ = tokio::time::sleep(Duration::from_millis(ms)) => Ok(json!({"slept_ms": ms})),
        _ = ctx.cancelled() => Err(HandlerError::retry("cancelled")),
    }
}

async fn fail_handler(ctx: TaskContext, payload: Value) -> HandlerResult {
    let times = payload.get("times").and_then(Value::as_i64).unwrap_or(-1);
    if times < 0 || i64::from(ctx.attempt) <= times {
        Err(HandlerError::retry("planned failure"))
    } else {
        Ok(json!({"attempts": ctx.attempt}))
    }
}

/// Walks the shard's items one by one, checkpointing after each, and
/// resumes from the latest checkpoint. For a queue task the range is
/// `payload.items` (default 10) starting at 0.
async fn count_handler(ctx: TaskContext, payload: Value) -> HandlerResult {
    let item_ms = payload.get("item_ms").and_then(Value::as_u64).unwrap_or(0);
    let (start, end) = match &ctx.shard {
        Some(s) => s
            .items()
            .ok_or_else(|| HandlerError::fatal(format!("bad shard key {}", s.shard_key)))?,
        None => (
            0,
            payload.get("items").and_then(Value::as_u64).unwrap_or(10),
        ),
    };
    let resumed_from = ctx
        .latest_checkpoint()
        .await
        .and_then(|c| c.payload.get("done").and_then(Value::as_u64))
        .unwrap_or(0)
        .min(end.saturating_sub(start));
    let mut done = resumed_from;
    while start + done < end {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(item_ms)) => {}
            _ = ctx.cancelled() => return Err(HandlerError::retry("cancelled")),
        }
        done += 1;
        ctx.checkpoint(json!({"done": done})).await?;
    }
    Ok(json!({"items": done, "resumed_from": resumed_from}))
}

fn envelope_for_external(ctx: &TaskContext, payload: &Value) -> Value {
    json!({
        "id": ctx.task_id,
        "type": ctx.task_type,
        "attempt": ctx.attempt,
        "payload": payload,
        "metadata": ctx.metadata,
        "node_id": ctx.node_id,
    })
}

/// Runs a program: the envelope as JSON on stdin, the result as JSON on
/// stdout (empty stdout = `null`; non-JSON stdout = the text as a string),
/// non-zero exit = failure with stderr as the error; killed on cancel.
async fn exec_handler(cmd: &[String], ctx: TaskContext, payload: Value) -> HandlerResult {
    let (prog, args) = cmd
        .split_first()
        .ok_or_else(|| HandlerError::fatal("empty exec command"))?;
    let mut command = tokio::process::Command::new(prog);
    if let Some(tp) = &ctx.traceparent {
        command.env("TRACEPARENT", tp);
    }
    let mut child = command
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| HandlerError::retry(format!("cannot start {prog}: {e}")))?;
    let input = serde_json::to_vec(&envelope_for_external(&ctx, &payload))?;
    if let Some(mut stdin) = child.stdin.take() {
        // A program that does not read stdin is fine.
        let _ = stdin.write_all(&input).await;
        drop(stdin);
    }
    let stderr = tokio::spawn(read_stderr(child.stderr.take(), ctx.clone()));
    let out = tokio::select! {
        out = child.wait_with_output() => out.map_err(|e| HandlerError::retry(e.to_string()))?,
        // Dropping the future drops the child, which kills it.
        _ = ctx.cancelled() => return Err(HandlerError::retry("cancelled")),
    };
    if !out.status.success() {
        let err = stderr.await.unwrap_or_default().trim().to_string();
        return Err(HandlerError::retry(if err.is_empty() {
            format!("{prog} exited with {}", out.status)
        } else {
            err
        }));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let text = text.trim();
    if text.is_empty() {
        return Ok(Value::Null);
    }
    Ok(serde_json::from_str(text).unwrap_or_else(|_| Value::String(text.to_string())))
}

/// An exec handler's stderr: `jetweave:extend <seconds>` lines extend the
/// attempt ([`TaskContext::extend`]); the rest is kept as the error text.
async fn read_stderr(stderr: Option<tokio::process::ChildStderr>, ctx: TaskContext) -> String {
    use tokio::io::AsyncBufReadExt;
    let mut text = String::new();
    let Some(e) = stderr else { return text };
    let mut lines = tokio::io::BufReader::new(e).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        let secs = line
            .strip_prefix("jetweave:extend ")
            .and_then(|v| v.trim().parse::<f64>().ok())
            .filter(|s| s.is_finite() && *s > 0.0 && *s < 1e9);
        match secs {
            Some(s) => ctx.extend(std::time::Duration::from_secs_f64(s)),
            None if text.len() < 64 * 1024 => {
                text.push_str(&line);
                text.push('\n');
            }
            None => {}
        }
    }
    text
}

/// POSTs the envelope to a URL: a 2xx JSON body is the result; anything
/// else is a failure naming the status and body.
async fn http_handler(
    client: &reqwest::Client,
    url: &str,
    ctx: TaskContext,
    payload: Value,
) -> HandlerResult {
    let mut req = client.post(url);
    if let Some(tp) = &ctx.traceparent {
        req = req.header("traceparent", tp);
    }
    let req = req.json(&envelope_for_external(&ctx, &payload)).send();
    let resp = tokio::select! {
        r = req => r.map_err(|e| HandlerError::retry(format!("POST {url}: {e}")))?,
        _ = ctx.cancelled() => return Err(HandlerError::retry("cancelled")),
    };
    let status = resp.status();
    let body = resp
        .text()
        .await
        .map_err(|e| HandlerError::retry(format!("POST {url}: {e}")))?;
    if !status.is_success() {
        return Err(HandlerError::retry(format!(
            "POST {url}: HTTP {status}: {}",
            body.chars().take(500).collect::<String>()
        )));
    }
    if body.trim().is_empty() {
        return Ok(Value::Null);
    }
    Ok(serde_json::from_str(&body).unwrap_or(Value::String(body)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn builtins_behave_as_the_contract_says() {
        let h = Handlers::builtin();
        let echo = h.get("echo").unwrap();
        assert_eq!(
            echo(TaskContext::new("t", "echo", 1), json!({"a": 1}))
                .await
                .unwrap(),
            json!({"a": 1})
        );
        let fail = h.get("fail").unwrap();
        for attempt in [1, 2] {
            let e = fail(TaskContext::new("t", "fail", attempt), json!({"times": 2}))
                .await
                .unwrap_err();
            assert_eq!(e.message, "planned failure");
            assert!(e.retryable, "a planned failure is retried");
        }
        assert_eq!(
            fail(TaskContext::new("t", "fail", 3), json!({"times": 2}))
                .await
                .unwrap(),
            json!({"attempts": 3})
        );
        let e = fail(TaskContext::new("t", "fail", 99), json!({"times": -1}))
            .await
            .unwrap_err();
        assert_eq!(e.message, "planned failure");
        let sleep = h.get("sleep").unwrap();
        let e = sleep(TaskContext::new("t", "sleep", 1), json!({"ms": "x"}))
            .await
            .unwrap_err();
        assert!(!e.retryable, "a bad payload is not retried");
        assert!(e.message.contains("ms"), "{}", e.message);
        let t0 = std::time::Instant::now();
        assert_eq!(
            sleep(TaskContext::new("t", "sleep", 1), json!({"ms": 120}))
                .await
                .unwrap(),
            json!({"slept_ms": 120})
        );
        assert!(t0.elapsed() >= Duration::from_millis(120));
        // Cancellable: a cancelled sleep ends at once.
        let cancel = CancellationToken::new();
        let ctx = TaskContext::new("t", "sleep", 1).with_runtime("n", cancel.clone(), None);
        let t0 = std::time::Instant::now();
        let run = tokio::spawn(sleep(ctx, json!({"ms": 60_000})));
        tokio::time::sleep(Duration::from_millis(50)).await;
        cancel.cancel();
        let e = run.await.unwrap().unwrap_err();
        assert_eq!(e.message, "cancelled");
        assert!(t0.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn shard_keys_give_item_ranges() {
        let s = |k: &str| ShardInfo {
            run_id: "r".into(),
            iteration: 0,
            shard_key: k.into(),
        };
        assert_eq!(s("slice:0:25").items(), Some((0, 25)));
        assert_eq!(s("item:7").items(), Some((7, 8)));
        assert_eq!(s("bogus").items(), None);
    }

    #[tokio::test]
    async fn exec_handler_reads_stdout_and_reports_stderr() {
        let ok = exec_handler(
            &[
                "sh".into(),
                "-c".into(),
                "cat >/dev/null; echo '{\"x\": 1}'".into(),
            ],
            TaskContext::new("t", "x", 1),
            Value::Null,
        )
        .await
        .unwrap();
        assert_eq!(ok, json!({"x": 1}));
        let err = exec_handler(
            &["sh".into(), "-c".into(), "echo boom >&2; exit 3".into()],
            TaskContext::new("t", "x", 1),
            Value::Null,
        )
        .await
        .unwrap_err();
        assert_eq!(err.message, "boom");
    }
}
