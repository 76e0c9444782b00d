//! The library API for submitters and operators: a thin typed layer over
//! the `weave-api` service, the result stream and the control subjects.
//!
//! ```no_run
//! # async fn demo() -> Result<(), jetweave::Error> {
//! use std::time::Duration;
//! use jetweave::client::Client;
//! use jetweave::protocol::{SubmitRequest, TaskEnvelope};
//!
//! let nats = async_nats::connect("nats://127.0.0.1:4222").await.map_err(jetweave::Error::nats)?;
//! let client = Client::new(nats, "weave")?;
//! let req = SubmitRequest {
//!     envelope: TaskEnvelope::new("echo", serde_json::json!({"hi": 1})),
//!     ..Default::default()
//! };
//! let submitted = client.submit(&req).await?;
//! let result = client.wait(&submitted.task_id, Duration::from_secs(10)).await?;
//! assert_eq!(result.result, serde_json::json!({"hi": 1}));
//! # Ok(()) }
//! ```

use std::time::Duration;

use async_nats::jetstream;
use futures::StreamExt;
use serde::de::DeserializeOwned;
use serde_json::{json, Value};

use crate::error::Error;
use crate::wire::protocol::{
    ClusterStatus, DlqList, LimitInfo, LimitList, LimitSpec, NodeInfo, PoolStatus, Priority,
    ScaleReply, ScheduleCreate, ScheduleInfo, SubmitReply, SubmitRequest, TaskInfo, TaskResult,
};
use crate::wire::subjects::{micro_ping, validate_id, validate_task_id, Subjects, POOL_SERVICE};

/// How long API requests wait for an answer.
const API_TIMEOUT: Duration = Duration::from_secs(10);

/// A jetweave client.
#[derive(Clone)]
pub struct Client {
    nats: async_nats::Client,
    js: jetstream::Context,
    subjects: Subjects,
    timeout: Duration,
}

impl Client {
    /// A client on an existing NATS connection.
    pub fn new(nats: async_nats::Client, prefix: &str) -> Result<Self, Error> {
        Ok(Client {
            js: jetstream::new(nats.clone()),
            nats,
            subjects: Subjects::new(prefix)?,
            timeout: API_TIMEOUT,
        })
    }

    /// The same client with another request timeout (default 10 s).
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// How many task messages were ever published to the task stream
    /// (its last sequence).
    pub async fn tasks_published(&self) -> Result<u64, Error> {
        let mut stream = self
            .js
            .get_stream(self.subjects.tasks_stream())
            .await
            .map_err(Error::nats_source)?;
        Ok(stream
            .info()
            .await
            .map_err(Error::nats_source)?
            .state
            .last_sequence)
    }

    /// Task counts kept by the streams themselves (so every sidecar and
    /// every restart agrees): tasks published, terminal results stored,
    /// dead letters.
    pub async fn durable_counts(&self) -> Result<DurableCounts, Error> {
        let info = |name: String| async move {
            let mut s = self.js.get_stream(name).await.map_err(Error::nats_source)?;
            Ok::<_, Error>(s.info().await.map_err(Error::nats_source)?.state.clone())
        };
        let tasks = info(self.subjects.tasks_stream()).await?;
        let results = info(self.subjects.results_stream()).await?;
        let dlq = info(self.subjects.dlq_stream()).await?;
        Ok(DurableCounts {
            published: tasks.last_sequence,
            results: results.messages,
            dead: dlq.messages,
        })
    }

    /// Tasks not yet delivered in `queue`, by priority (its consumers'
    /// `num_pending`; a priority nobody consumes yet counts 0).
    pub async fn queue_pending(&self, queue: &str) -> Result<Vec<(Priority, u64)>, Error> {
        let depth = self.queue_depth(queue).await?;
        Ok(depth.into_iter().map(|d| (d.priority, d.pending)).collect())
    }

    /// Tasks of `queue` waiting and delivered-but-unacknowledged (running,
    /// or waiting on a limit), by priority, from its consumers; a priority
    /// nobody consumes yet counts 0.
    pub async fn queue_depth(&self, queue: &str) -> Result<Vec<QueueDepth>, Error> {
        let stream = self
            .js
            .get_stream(self.subjects.tasks_stream())
            .await
            .map_err(Error::nats_source)?;
        let mut out = Vec::new();
        for priority in Priority::ALL {
            let name = self.subjects.task_consumer(queue, priority);
            let (pending, running) = match stream.consumer_info(&name).await {
                Ok(i) => (i.num_pending, i.num_ack_pending as u64),
                Err(_) => (0, 0),
            };
            out.push(QueueDepth {
                priority,
                pending,
                running,
            });
        }
        Ok(out)
    }

    /// Dead letters held in `P_DLQ`, by queue.
    pub async fn dlq_depth(&self) -> Result<Vec<(String, u64)>, Error> {
        let stream = self
            .js
            .get_stream(self.subjects.dlq_stream())
            .await
            .map_err(Error::nats_source)?;
        let mut info = stream
            .info_with_subjects(self.subjects.dlq_wildcard())
            .await
            .map_err(Error::nats_source)?;
        let mut out = Vec::new();
        while let Some(e) = info.next().await {
            let (subject, n) = e.map_err(Error::nats_source)?;
            let queue = subject.rsplit('.').next().unwrap_or_default().to_string();
            out.push((queue, n as u64));
        }
        out.sort();
        Ok(out)
    }

    /// The subject map.
    pub fn subjects(&self) -> &Subjects {
        &self.subjects
    }

    /// The NATS connection.
    pub fn nats(&self) -> &async_nats::Client {
        &self.nats
    }

    /// Sends a request and decodes a success reply; an error reply becomes
    /// [`Error::Remote`].
    pub async fn request<T: DeserializeOwned>(
        &self,
        subject: String,
        body: &Value,
    ) -> Result<T, Error> {
        let payload = serde_json::to_vec(body)?;
        let since = std::time::Instant::now();
        let request = tokio::time::timeout(
            self.timeout,
            self.nats.request(subject.clone(), payload.into()),
        );
        let msg = tokio::select! {
            r = request => r
                .map_err(|_| Error::Timeout(format!("no answer on {subject}")))?
                .map_err(|e| Error::from(e).context(&subject))?,
            reason = crate::connect::denied(&subject, since) => {
                return Err(Error::forbidden(&subject, &reason));
            }
        };
        let v: Value = serde_json::from_slice(&msg.payload)
            .map_err(|e| Error::nats(format!("{subject}: reply is not JSON: {e}")))?;
        if v.get("ok") == Some(&Value::Bool(false)) {
            return Err(Error::Remote {
                code: v["code"].as_str().unwrap_or("error").to_string(),
                message: v["error"].as_str().unwrap_or("error").to_string(),
            });
        }
        serde_json::from_value(v)
            .map_err(|e| Error::nats(format!("{subject}: unexpected reply: {e}")))
    }

    async fn api<T: DeserializeOwned>(&self, endpoint: &str, body: &Value) -> Result<T, Error> {
        self.request(self.subjects.api(endpoint), body).await
    }

    /// Submits a task through `weave-api` (`tasks.submit`). A task whose
    /// `metadata.traceparent` holds no valid W3C trace context gets a new
    /// trace there, which the node's spans and the handler continue.
    pub async fn submit(&self, req: &SubmitRequest) -> Result<SubmitReply, Error> {
        req.validate()?;
        let mut body = serde_json::to_value(req)?;
        if let Some(meta) = body.get_mut("metadata").and_then(Value::as_object_mut) {
            crate::wire::trace::TraceParent::ensure_in(meta);
        } else {
            let mut meta = serde_json::Map::new();
            crate::wire::trace::TraceParent::ensure_in(&mut meta);
            body["metadata"] = Value::Object(meta);
        }
        self.api("tasks.submit", &body).await
    }

    /// A task's status (`tasks.get`).
    pub async fn get(&self, task_id: &str) -> Result<TaskInfo, Error> {
        self.api("tasks.get", &json!({ "task_id": task_id })).await
    }

    /// Cancels a queued or running task (`tasks.cancel`).
    pub async fn cancel(&self, task_id: &str) -> Result<Value, Error> {
        self.api("tasks.cancel", &json!({ "task_id": task_id }))
            .await
    }

    /// The terminal result of a task, if it has one.
    pub async fn result(&self, task_id: &str) -> Result<Option<TaskResult>, Error> {
        validate_task_id(task_id)?;
        let stream = self
            .js
            .get_stream(self.subjects.results_stream())
            .await
            .map_err(Error::nats_source)?;
        Ok(crate::store::results::read_result(&stream, &self.subjects, task_id).await)
    }

    /// Waits for a task's terminal result as stored in the result stream:
    /// subscribes to `P.results.<task_id>` (a publish there wakes it up to
    /// read the stream), reads the stream (so a result stored before the
    /// call is found too), and reads it again every second so a result
    /// published while the connection was down is not missed.
    pub async fn wait(&self, task_id: &str, timeout: Duration) -> Result<TaskResult, Error> {
        validate_task_id(task_id)?;
        let deadline = tokio::time::Instant::now() + timeout;
        let mut sub = self
            .nats
            .subscribe(self.subjects.result(task_id))
            .await
            .map_err(Error::nats_source)?;
        loop {
            // A failed or lost read (e.g. while reconnecting) is retried.
            if let Ok(Ok(Some(r))) =
                tokio::time::timeout(Duration::from_secs(1), self.result(task_id)).await
            {
                return Ok(r);
            }
            let now = tokio::time::Instant::now();
            if now >= deadline {
                return Err(Error::Timeout(format!(
                    "no result for task {task_id} within {timeout:?}"
                )));
            }
            let recheck = (now + Duration::from_secs(1)).min(deadline);
            if let Ok(Some(_)) = tokio::time::timeout_at(recheck, sub.next()).await {
                // A published result says "look now", it is not the answer:
                // when two attempts finish, the one the stream refused (the
                // first stored result wins) is delivered to subscribers too.
                // The stored one is read (a replica may lag a moment).
                if let Some(r) = self.stored_result_soon(task_id).await {
                    return Ok(r);
                }
            }
        }
    }

    /// The stored result, read up to 10 times 20 ms apart.
    async fn stored_result_soon(&self, task_id: &str) -> Option<TaskResult> {
        for _ in 0..10 {
            let read = tokio::time::timeout(Duration::from_secs(1), self.result(task_id)).await;
            if let Ok(Ok(Some(r))) = read {
                return Some(r);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        None
    }

    /// Live nodes (`nodes.list`).
    pub async fn nodes(&self) -> Result<Vec<NodeInfo>, Error> {
        #[derive(serde::Deserialize)]
        struct Nodes {
            nodes: Vec<NodeInfo>,
        }
        Ok(self.api::<Nodes>("nodes.list", &json!({})).await?.nodes)
    }

    /// Cluster summary (`cluster.status`).
    pub async fn cluster_status(&self) -> Result<ClusterStatus, Error> {
        self.api("cluster.status", &json!({})).await
    }

    /// Creates a run (`runs.create`).
    pub async fn create_run(&self, spec: &Value) -> Result<Value, Error> {
        self.api("runs.create", spec).await
    }

    /// A run's state (`runs.get`).
    pub async fn get_run(&self, run_id: &str) -> Result<Value, Error> {
        self.api("runs.get", &json!({ "run_id": run_id })).await
    }

    /// Waits until a run is no longer `running`, calling `progress` with
    /// (completed, total) whenever it changes.
    pub async fn wait_run(
        &self,
        run_id: &str,
        timeout: Duration,
        mut progress: impl FnMut(u64, u64),
    ) -> Result<Value, Error> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut last = None;
        loop {
            let run = self.get_run(run_id).await?;
            let done = run["completed_shards"].as_u64().unwrap_or(0);
            let total = run["total_shards"].as_u64().unwrap_or(0);
            if last != Some(done) {
                progress(done, total);
                last = Some(done);
            }
            if run["status"] != "running" {
                return Ok(run);
            }
            if tokio::time::Instant::now() > deadline {
                return Err(Error::Timeout(format!(
                    "run {run_id} still running after {timeout:?}"
                )));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Sends a control verb to one node (`P.ctl.<node>.<verb>`).
    pub async fn control(&self, node_id: &str, verb: &str, body: &Value) -> Result<Value, Error> {
        crate::wire::subjects::validate_id("node id", node_id)?;
        self.request(self.subjects.ctl(node_id, verb), body).await
    }

    /// Sends a control verb to every live node and gathers the replies
    /// that arrive within `wait`.
    pub async fn broadcast(&self, verb: &str, wait: Duration) -> Result<Vec<Value>, Error> {
        self.scatter(self.subjects.ctl_all(verb), "{}", wait).await
    }

    /// The live worker pools (contract §10): every `weave-pool` service
    /// answering a ping within `wait`, then each pool's `status`.
    pub async fn pools(&self, wait: Duration) -> Result<Vec<PoolStatus>, Error> {
        let pings = self.scatter(micro_ping(POOL_SERVICE), "", wait).await?;
        let ids: std::collections::BTreeSet<&str> = pings
            .iter()
            .filter_map(|v| v["metadata"]["pool_id"].as_str())
            .collect();
        let mut out = Vec::new();
        for id in ids {
            out.push(self.pool_status(id).await?);
        }
        Ok(out)
    }

    /// Publishes `body` on `subject` and gathers the JSON replies that
    /// arrive within `wait` (any number of responders); a publish the
    /// server refuses is [`Error::forbidden`] at once.
    async fn scatter(
        &self,
        subject: String,
        body: &str,
        wait: Duration,
    ) -> Result<Vec<Value>, Error> {
        let inbox = self.nats.new_inbox();
        let mut sub = self
            .nats
            .subscribe(inbox.clone())
            .await
            .map_err(Error::nats_source)?;
        let since = std::time::Instant::now();
        self.nats
            .publish_with_reply(subject.clone(), inbox, body.to_string().into())
            .await
            .map_err(Error::nats_source)?;
        let mut out = Vec::new();
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            tokio::select! {
                m = tokio::time::timeout_at(deadline, sub.next()) => match m {
                    Ok(Some(m)) => {
                        if let Ok(v) = serde_json::from_slice(&m.payload) {
                            out.push(v);
                        }
                    }
                    _ => return Ok(out),
                },
                reason = crate::connect::denied(&subject, since) => {
                    return Err(Error::forbidden(&subject, &reason));
                }
            }
        }
    }

    /// A pool's `status` (`P.ctl.<pool_id>.status`).
    pub async fn pool_status(&self, pool_id: &str) -> Result<PoolStatus, Error> {
        validate_id("pool id", pool_id)?;
        self.request(self.subjects.ctl(pool_id, "status"), &json!({}))
            .await
    }

    /// Sets a pool's worker count (`P.ctl.<pool_id>.scale`).
    pub async fn scale(&self, pool_id: &str, workers: u32) -> Result<ScaleReply, Error> {
        validate_id("pool id", pool_id)?;
        self.request(
            self.subjects.ctl(pool_id, "scale"),
            &json!({"workers": workers}),
        )
        .await
    }

    /// Dead letters, oldest first (contract §11, `dlq.list`).
    pub async fn dlq_list(
        &self,
        queue: Option<&str>,
        limit: Option<usize>,
    ) -> Result<DlqList, Error> {
        self.api("dlq.list", &json!({"queue": queue, "limit": limit}))
            .await
    }

    /// Runs a dead task again as a new task (`dlq.requeue`); the reply
    /// names the new id and the old.
    pub async fn dlq_requeue(&self, task_id: &str) -> Result<Value, Error> {
        self.api("dlq.requeue", &json!({"task_id": task_id})).await
    }

    /// Requeues every dead letter of `queue` (`dlq.requeue` with `all`).
    pub async fn dlq_requeue_all(&self, queue: &str) -> Result<Value, Error> {
        self.api("dlq.requeue", &json!({"queue": queue, "all": true}))
            .await
    }

    /// Deletes the dead letters of `queue` (all when `None`).
    pub async fn dlq_purge(&self, queue: Option<&str>) -> Result<Value, Error> {
        self.api("dlq.purge", &json!({"queue": queue})).await
    }

    /// Creates (or replaces) a periodic task (contract §12,
    /// `schedules.create`); the reply has `next_at`.
    pub async fn schedule_create(&self, spec: &ScheduleCreate) -> Result<Value, Error> {
        self.api("schedules.create", &serde_json::to_value(spec)?)
            .await
    }

    /// Every schedule (`schedules.list`).
    pub async fn schedules(&self) -> Result<Vec<ScheduleInfo>, Error> {
        #[derive(serde::Deserialize)]
        struct List {
            schedules: Vec<ScheduleInfo>,
        }
        let l: List = self.api("schedules.list", &json!({})).await?;
        Ok(l.schedules)
    }

    /// Deletes a schedule (`schedules.delete`): no firing after it returns.
    pub async fn schedule_delete(&self, schedule_id: &str) -> Result<Value, Error> {
        self.api("schedules.delete", &json!({"schedule_id": schedule_id}))
            .await
    }

    /// Sets (or changes) a flow-control limit (contract §15, `limits.set`).
    pub async fn limit_set(&self, spec: &LimitSpec) -> Result<Value, Error> {
        self.api("limits.set", &serde_json::to_value(spec)?).await
    }

    /// Every limit with its running tasks by key (`limits.list`).
    pub async fn limits(&self) -> Result<Vec<LimitInfo>, Error> {
        let l: LimitList = self.api("limits.list", &json!({})).await?;
        Ok(l.limits)
    }

    /// Deletes a limit (`limits.delete`); its waiting tasks start within 1 s.
    pub async fn limit_delete(&self, limit_id: &str) -> Result<Value, Error> {
        self.api("limits.delete", &json!({"limit_id": limit_id}))
            .await
    }
}

/// One priority of a queue (see [`Client::queue_depth`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct QueueDepth {
    /// The priority.
    pub priority: Priority,
    /// Tasks not yet delivered.
    pub pending: u64,
    /// Tasks delivered and not yet acknowledged (running).
    pub running: u64,
}

/// Task counts read from the streams (see [`Client::durable_counts`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DurableCounts {
    /// Messages ever stored in `P_TASKS` (its last sequence): submits,
    /// delayed tasks, retries re-published by hold-backs.
    pub published: u64,
    /// Terminal results in `P_RESULTS` (any status; 7-day retention).
    pub results: u64,
    /// Dead letters in `P_DLQ` (30-day retention).
    pub dead: u64,
}
