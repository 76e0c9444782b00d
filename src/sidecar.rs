//! The HTTP sidecar (contract §9): a stateless axum server for legacy REST
//! callers. Every call becomes NATS requests to nodes (`P.ctl.*`,
//! `P.event.*`) or to the `weave-api` service, with a per-request timeout.
//!
//! Status codes: 400 for invalid JSON or fields (the body names the field),
//! 401 without the right bearer token when `--auth-token` is set, 404 for
//! unknown nodes, processes, tasks and runs, 409 for a state conflict
//! (process stopped, task already finished), 413 for bodies over the limit,
//! 503 when NATS is unreachable or nobody answers in time. Bad input never
//! gives 500.
//!
//! Agents (`/agents/register`) are the one thing a sidecar keeps: each
//! registered agent gets a bridge — an in-process node named after the
//! agent, serving the queue `agent-<agent_id>` with an `http` handler that
//! POSTs each task to the agent's endpoint. The bridge keeps the agent in
//! discovery while the agent re-registers or heartbeats
//! (`POST /agents/{id}/heartbeat`) within `agent_ttl`; after that it shuts
//! down and the agent leaves discovery like a node.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{DefaultBodyLimit, MatchedPath, Path, Query, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use bytes::Bytes;
use prometheus::{Encoder, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry};
use serde::Deserialize;
use serde_json::{json, Map, Value};
use subtle::ConstantTimeEq;

use crate::client::Client;
use crate::config::{HandlerSpec, NodeConfig};
use crate::error::{Error, ErrorKind};
use crate::shutdown::Shutdown;
use crate::wire::protocol::{
    now_rfc3339, parse_object, Health, Priority, SubmitRequest, TaskEnvelope,
};
use crate::wire::subjects::validate_id;
use crate::worker::{Node, NodeHandle};

/// How a sidecar runs.
#[derive(Debug, Clone)]
pub struct SidecarConfig {
    /// Listen address.
    pub listen: String,
    /// Subject prefix.
    pub prefix: String,
    /// Node served by the root per-node routes.
    pub node: Option<String>,
    /// Bearer token required on every route when set.
    pub auth_token: Option<String>,
    /// Bound on each NATS request.
    pub request_timeout: Duration,
    /// Largest request body.
    pub body_limit: usize,
    /// Allow cross-origin requests from anywhere (off by default).
    pub cors: bool,
    /// How long a registered agent stays without a heartbeat.
    pub agent_ttl: Duration,
}

impl Default for SidecarConfig {
    fn default() -> Self {
        SidecarConfig {
            listen: "127.0.0.1:9100".into(),
            prefix: crate::wire::subjects::DEFAULT_PREFIX.into(),
            node: None,
            auth_token: None,
            request_timeout: Duration::from_secs(5),
            body_limit: 1024 * 1024,
            cors: false,
            agent_ttl: Duration::from_secs(30),
        }
    }
}

/// A running sidecar.
pub struct SidecarHandle {
    /// The bound address.
    pub local_addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl SidecarHandle {
    /// Resolves once the server has stopped.
    pub async fn wait(self) {
        let _ = self.task.await;
    }
}

struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    nats_latency: HistogramVec,
    nodes: IntGaugeVec,
    pending: IntGaugeVec,
}

impl Metrics {
    fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new(
                "jetweave_sidecar_requests_total",
                "HTTP requests by route and status",
            ),
            &["method", "route", "status"],
        )?;
        let nats_latency = HistogramVec::new(
            prometheus::HistogramOpts::new(
                "jetweave_sidecar_nats_request_seconds",
                "Latency of NATS requests made by the sidecar",
            )
            .buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
            ]),
            &["target"],
        )?;
        let nodes = IntGaugeVec::new(
            Opts::new("jetweave_nodes", "Live nodes by health"),
            &["health"],
        )?;
        let pending = IntGaugeVec::new(
            Opts::new("jetweave_queue_pending", "Tasks waiting per queue"),
            &["queue"],
        )?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(nats_latency.clone()))?;
        registry.register(Box::new(nodes.clone()))?;
        registry.register(Box::new(pending.clone()))?;
        Ok(Metrics {
            registry,
            requests,
            nats_latency,
            nodes,
            pending,
        })
    }
}

struct Bridge {
    node: NodeHandle,
    last_seen: Instant,
    registered_at: String,
}

struct App {
    cfg: SidecarConfig,
    client: Client,
    metrics: Metrics,
    agents: Mutex<HashMap<String, Bridge>>,
    shutdown: Shutdown,
}

type Shared = Arc<App>;

/// An HTTP error: status plus a JSON body naming the problem.
struct ApiError(StatusCode, Value);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(self.1)).into_response()
    }
}

fn err(status: StatusCode, code: &str, message: impl Into<String>) -> ApiError {
    ApiError(
        status,
        json!({"ok": false, "status": "error", "error": message.into(), "code": code}),
    )
}

/// The HTTP status of an error, from its kind.
fn http_status(kind: ErrorKind) -> StatusCode {
    match kind {
        ErrorKind::Invalid | ErrorKind::Config => StatusCode::BAD_REQUEST,
        ErrorKind::NotFound => StatusCode::NOT_FOUND,
        ErrorKind::Conflict => StatusCode::CONFLICT,
        ErrorKind::NoResponders | ErrorKind::Timeout | ErrorKind::Unavailable => {
            StatusCode::SERVICE_UNAVAILABLE
        }
        ErrorKind::Internal => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        err(http_status(e.kind()), &e.code(), e.reason())
    }
}

type ApiResult = Result<Response, ApiError>;

/// Nobody answering a node's subject means there is no such node (404).
fn unknown_node_if_silent(e: Error, node: &str) -> ApiError {
    if e.kind() == ErrorKind::NoResponders {
        err(
            StatusCode::NOT_FOUND,
            "unknown_node",
            format!("unknown node {node:?}"),
        )
    } else {
        ApiError::from(e)
    }
}

fn ok(v: Value) -> ApiResult {
    Ok(Json(v).into_response())
}

fn parse_body<T: serde::de::DeserializeOwned>(body: &Bytes) -> Result<T, ApiError> {
    parse_object(body).map_err(ApiError::from)
}

impl App {
    async fn timed<T>(
        &self,
        target: &str,
        f: impl std::future::Future<Output = Result<T, Error>>,
    ) -> Result<T, Error> {
        if self.client.nats().connection_state() != async_nats::connection::State::Connected {
            return Err(Error::nats("NATS is not reachable"));
        }
        let t0 = Instant::now();
        let r = tokio::time::timeout(self.cfg.request_timeout, f).await;
        self.metrics
            .nats_latency
            .with_label_values(&[target])
            .observe(t0.elapsed().as_secs_f64());
        r.unwrap_or_else(|_| {
            Err(Error::Timeout(format!(
                "no answer from {target} within {:?}",
                self.cfg.request_timeout
            )))
        })
    }

    /// A control request to a node; no responders (the kind) is 404 unknown node.
    async fn ctl(&self, node: &str, verb: &str, body: Value) -> Result<Value, ApiError> {
        validate_id("node id", node).map_err(ApiError::from)?;
        let r = self
            .timed("node", self.client.control(node, verb, &body))
            .await;
        r.map_err(|e| unknown_node_if_silent(e, node))
    }

    async fn api(&self, endpoint: &str, body: Value) -> Result<Value, ApiError> {
        let subject = self.client.subjects().api(endpoint);
        self.timed("api", self.client.request::<Value>(subject, &body))
            .await
            .map_err(ApiError::from)
    }
}

/// Starts the sidecar; it stops when `shutdown` triggers.
pub async fn serve(
    nats: async_nats::Client,
    cfg: SidecarConfig,
    shutdown: Shutdown,
) -> Result<SidecarHandle, Error> {
    let listener = tokio::net::TcpListener::bind(&cfg.listen)
        .await
        .map_err(|e| Error::Config(format!("cannot listen on {}: {e}", cfg.listen)))?;
    let local_addr = listener.local_addr()?;
    let app = Arc::new(App {
        client: Client::new(nats, &cfg.prefix)?.with_timeout(cfg.request_timeout),
        metrics: Metrics::new().map_err(|e| Error::Config(e.to_string()))?,
        agents: Mutex::new(HashMap::new()),
        shutdown: shutdown.clone(),
        cfg,
    });
    let router = router(app.clone());
    // The reaper ends with the shutdown; the server task waits for it, so
    // `SidecarHandle::wait` returns when both have ended.
    let reaper = tokio::spawn(reap_agents(app.clone()));
    let sd = shutdown.clone();
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, router)
            .with_graceful_shutdown(async move { sd.wait().await })
            .await;
        let _ = reaper.await;
        let bridges: Vec<NodeHandle> = app
            .agents
            .lock()
            .map(|mut a| a.drain().map(|(_, b)| b.node).collect())
            .unwrap_or_default();
        for b in bridges {
            b.shutdown(Duration::from_secs(5)).await;
        }
    });
    tracing::info!(%local_addr, "sidecar listening");
    Ok(SidecarHandle { local_addr, task })
}

fn node_routes() -> Router<Shared> {
    Router::new()
        .route("/health", get(health))
        .route("/status", get(status))
        .route("/processes", get(processes))
        .route("/processes/{name}/status", get(process_status))
        .route("/processes/{name}/{verb}", post(process_verb))
}

fn router(app: Shared) -> Router {
    let mut r = Router::new()
        .route("/agents/register", post(agent_register))
        .route("/agents/discover", post(agent_discover))
        .route("/agents/{id}/heartbeat", post(agent_heartbeat))
        .route("/tasks/submit", post(tasks_submit))
        .route("/tasks/status", get(tasks_status))
        .route("/tasks/{id}", get(task_get))
        .route("/tasks/{id}/result", get(task_result))
        .route("/tasks/{id}/cancel", post(task_cancel))
        .route("/cluster/status", get(cluster_status))
        .route("/nodes", get(nodes))
        .route("/nodes/{node}/drain", post(node_drain))
        .route("/nodes/{node}/resume", post(node_resume))
        .route("/nodes/{node}/health", get(health_of))
        .route("/nodes/{node}/status", get(status_of))
        .route("/nodes/{node}/processes", get(processes_of))
        .route(
            "/nodes/{node}/processes/{name}/status",
            get(process_status_of),
        )
        .route(
            "/nodes/{node}/processes/{name}/{verb}",
            post(process_verb_of),
        )
        .route("/runs", post(runs_create))
        .route("/runs/{id}", get(runs_get))
        .route("/metrics", get(metrics))
        .route("/openapi.json", get(openapi));
    if app.cfg.node.is_some() {
        r = r.merge(node_routes());
    }
    let mut r = r
        .fallback(|| async { err(StatusCode::NOT_FOUND, "not_found", "no such route") })
        .layer(middleware::from_fn_with_state(app.clone(), auth_and_count))
        .layer(DefaultBodyLimit::max(app.cfg.body_limit));
    if app.cfg.cors {
        r = r.layer(tower_http::cors::CorsLayer::permissive());
    }
    r.with_state(app)
}

async fn auth_and_count(State(app): State<Shared>, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "unmatched".into());
    let method = req.method().to_string();
    let resp = match &app.cfg.auth_token {
        Some(token) if !authorized(req.headers(), token) => err(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "missing or wrong bearer token",
        )
        .into_response(),
        _ => next.run(req).await,
    };
    // A body over the limit comes back as a plain 413; give it JSON.
    let resp = if resp.status() == StatusCode::PAYLOAD_TOO_LARGE {
        err(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            format!("request body is larger than {} bytes", app.cfg.body_limit),
        )
        .into_response()
    } else {
        resp
    };
    app.metrics
        .requests
        .with_label_values(&[&method, &route, resp.status().as_str()])
        .inc();
    resp
}

fn authorized(headers: &HeaderMap, token: &str) -> bool {
    let Some(v) = headers.get("authorization").and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let Some(given) = v.strip_prefix("Bearer ") else {
        return false;
    };
    given.as_bytes().ct_eq(token.as_bytes()).into()
}

fn this_node(app: &App) -> Result<String, ApiError> {
    app.cfg.node.clone().ok_or_else(|| {
        err(
            StatusCode::NOT_FOUND,
            "not_found",
            "this sidecar has no --node",
        )
    })
}

// ---- per-node routes ----------------------------------------------------

async fn health_impl(app: &App, node: &str) -> ApiResult {
    let s = app.ctl(node, "status", json!({})).await?;
    let running = s["processes"]
        .as_array()
        .map(|p| p.iter().filter(|p| p["state"] == "running").count())
        .unwrap_or(0);
    ok(json!({
        "status": s["health"],
        "node_id": s["node_id"],
        "process_count": running,
        "active_tasks": s["active_tasks"],
    }))
}

async fn status_impl(app: &App, node: &str) -> ApiResult {
    ok(app.ctl(node, "status", json!({})).await?)
}

async fn processes_impl(app: &App, node: &str) -> ApiResult {
    let r = app.ctl(node, "processes", json!({})).await?;
    let procs: Vec<Value> = r["processes"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .map(|p| json!({"name": p["name"], "state": p["state"], "process_id": p["process_id"], "handler": p["handler"], "events_handled": p["events_handled"]}))
        .collect();
    ok(json!({"node_id": r["node_id"], "processes": procs}))
}

async fn process_status_impl(app: &App, node: &str, name: &str) -> ApiResult {
    validate_id("process name", name).map_err(ApiError::from)?;
    let r = app
        .ctl(node, &format!("process.{name}.status"), json!({}))
        .await?;
    ok(r["process"].clone())
}

async fn process_verb_impl(
    app: &App,
    node: &str,
    name: &str,
    verb: &str,
    body: Bytes,
) -> ApiResult {
    validate_id("process name", name).map_err(ApiError::from)?;
    match verb {
        "start" | "stop" | "restart" => {
            let r = app
                .ctl(node, &format!("process.{name}.{verb}"), json!({}))
                .await?;
            ok(
                json!({"status": r["status"], "name": name, "process_id": r["process_id"], "state": r["state"]}),
            )
        }
        "event" => {
            let ev: crate::wire::protocol::EventRequest = parse_body(&body)?;
            validate_id("node id", node).map_err(ApiError::from)?;
            let subject = app.client.subjects().event(node, name);
            let body = serde_json::to_value(&ev).unwrap_or(Value::Null);
            let r = app
                .timed("node", app.client.request::<Value>(subject, &body))
                .await
                .map_err(|e| unknown_node_if_silent(e, node))?;
            Ok((StatusCode::ACCEPTED, Json(r)).into_response())
        }
        other => Err(err(
            StatusCode::NOT_FOUND,
            "unknown_verb",
            format!("unknown process action {other:?}: use start, stop, restart or event"),
        )),
    }
}

#[utoipa::path(get, path = "/health", tag = "per-node", responses((status = 200, description = "{status, node_id, process_count}"), (status = 404, description = "unknown node"), (status = 401, description = "missing or wrong bearer token"), (status = 503, description = "NATS unreachable or no answer in time")))]
async fn health(State(app): State<Shared>) -> ApiResult {
    health_impl(&app, &this_node(&app)?).await
}
#[utoipa::path(get, path = "/status", tag = "per-node", responses((status = 200, description = "the node's full status"), (status = 404, description = "unknown node"), (status = 401, description = "missing or wrong bearer token"), (status = 503, description = "NATS unreachable or no answer in time")))]
async fn status(State(app): State<Shared>) -> ApiResult {
    status_impl(&app, &this_node(&app)?).await
}
#[utoipa::path(get, path = "/processes", tag = "per-node", responses((status = 200, description = "{node_id, processes: [{name, state, process_id}]}"), (status = 401, description = "missing or wrong bearer token"), (status = 503, description = "NATS unreachable or no answer in time")))]
async fn processes(State(app): State<Shared>) -> ApiResult {
    processes_impl(&app, &this_node(&app)?).await
}
#[utoipa::path(get, path = "/processes/{name}/status", tag = "per-node", params(("name" = String, Path, description = "process name")), responses((status = 200, description = "the process"), (status = 404, description = "unknown process"), (status = 401, description = "missing or wrong bearer token"), (status = 503, description = "NATS unreachable or no answer in time")))]
async fn process_status(State(app): State<Shared>, Path(name): Path<String>) -> ApiResult {
    process_status_impl(&app, &this_node(&app)?, &name).await
}
#[utoipa::path(post, path = "/processes/{name}/{verb}", tag = "per-node", params(("name" = String, Path, description = "process name"), ("verb" = String, Path, description = "start, stop, restart or event")), request_body(content = Object, content_type = "application/json", description = "JSON object"), responses((status = 200, description = "{status: started|stopped|restarted, name}"), (status = 202, description = "event: {status: injected, event_id, process}"), (status = 400, description = "invalid JSON or fields"), (status = 404, description = "unknown process"), (status = 409, description = "process stopped"), (status = 401, description = "missing or wrong bearer token"), (status = 503, description = "NATS unreachable or no answer in time")))]
async fn process_verb(
    State(app): State<Shared>,
    Path((name, verb)): Path<(String, String)>,
    body: Bytes,
) -> ApiResult {
    process_verb_impl(&app, &this_node(&app)?, &name, &verb, body).await
}
#[utoipa::path(get, path = "/nodes/{node}/health", tag = "per-node", params(("node" = String, Path, description = "node id")), responses((status = 200, description = "{status, node_id, process_count}"), (status = 404, description = "unknown node"), (status = 401, description = "missing or wrong bearer token"), (status = 503, description = "NATS unreachable or no answer in time")))]
async fn health_of(State(app): State<Shared>, Path(node): Path<String>) -> ApiResult {
    health_impl(&app, &node).await
}
#[utoipa::path(get, path = "/nodes/{node}/status", tag = "per-node", params(("node" = String, Path, description = "node id")), responses((status = 200, description = "the node's full status"), (status = 404, description = "unknown node"), (status = 401, description = "missing or wrong bearer token"), (status = 503, description = "NATS unreachable or no answer in time")))]
async fn status_of(State(app): State<Shared>, Path(node): Path<String>) -> ApiResult {
    status_impl(&app, &node).await
}
#[utoipa::path(get, path = "/nodes/{node}/processes", tag = "per-node", params(("node" = String, Path, description = "node id")), responses((status = 200, description = "{node_id, processes}"), (status = 404, description = "unknown node"), (status = 401, description = "missing or wrong bearer token"), (status = 503, description = "NATS unreachable or no answer in time")))]
async fn processes_of(State(app): State<Shared>, Path(node): Path<String>) -> ApiResult {
    processes_impl(&app, &node).await
}
#[utoipa::path(get, path = "/nodes/{node}/processes/{name}/status", tag = "per-node", params(("node" = String, Path, description = "node id"), ("name" = String, Path, description = "process name")), responses((status = 200, description = "the process"), (status = 404, description = "unknown node or process"), (status = 401, description = "missing or wrong bearer token"), (status = 503, description = "NATS unreachable or no answer in time")))]
async fn process_status_of(
    State(app): State<Shared>,
    Path((node, name)): Path<(String, String)>,
) -> ApiResult {
    process_status_impl(&app, &node, &name).await
}
#[utoipa::path(post, path = "/nodes/{node}/processes/{name}/{verb}", tag = "per-node", params(("node" = String, Path, description = "node id"), ("name" = String, Path, description = "process name"), ("verb" = String, Path, description = "start, stop, restart or event")), request_body(content = Object, content_type = "application/json", description = "JSON object"), responses((status = 200, description = "{status, name}"), (status = 202, description = "event injected"), (status = 400, description = "invalid JSON or fields"), (status = 404, description = "unknown node or process"), (status = 401, description = "missing or wrong bearer token"), (status = 503, description = "NATS unreachable or no answer in time")))]
async fn process_verb_of(
    State(app): State<Shared>,
    Path((node, name, verb)): Path<(String, String, String)>,
    body: Bytes,
) -> ApiResult {
    process_verb_impl(&app, &node, &name, &verb, body).await
}

// ---- native routes ------------------------------------------------------

#[utoipa::path(get, path = "/tasks/{id}", tag = "tasks", params(("id" = String, Path, description = "task id")), responses((status = 200, description = "{task_id, status, result?}"), (status = 404, description = "unknown task"), (status = 401, description = "missing or wrong bearer token"), (status = 503, description = "NATS unreachable or no answer in time")))]
async fn task_get(State(app): State<Shared>, Path(id): Path<String>) -> ApiResult {
    let v = app.api("tasks.get", json!({"task_id": id})).await?;
    if v["status"] == "unknown" {
        return Err(err(
            StatusCode::NOT_FOUND,
            "unknown_task",
            format!("unknown task {id:?}"),
        ));
    }
    ok(v)
}

#[derive(Deserialize)]
struct WaitQuery {
    wait_s: Option<f64>,
}

#[utoipa::path(get, path = "/tasks/{id}/result", tag = "tasks", params(("id" = String, Path, description = "task id")), responses((status = 200, description = "the terminal TaskResult"), (status = 202, description = "not finished yet"), (status = 400, description = "invalid wait_s"), (status = 404, description = "unknown task"), (status = 401, description = "missing or wrong bearer token"), (status = 503, description = "NATS unreachable or no answer in time")))]
async fn task_result(
    State(app): State<Shared>,
    Path(id): Path<String>,
    q: Result<Query<WaitQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult {
    let q = q.map_err(|e| {
        err(
            StatusCode::BAD_REQUEST,
            "invalid_value",
            format!("invalid query: {e}"),
        )
    })?;
    let wait = q.wait_s.unwrap_or(0.0);
    if !(wait.is_finite() && (0.0..=300.0).contains(&wait)) {
        return Err(err(
            StatusCode::BAD_REQUEST,
            "invalid_value",
            "wait_s must be between 0 and 300",
        ));
    }
    crate::wire::subjects::validate_task_id(&id).map_err(ApiError::from)?;
    if wait > 0.0 {
        if let Ok(r) = app.client.wait(&id, Duration::from_secs_f64(wait)).await {
            return ok(serde_json::to_value(r).unwrap_or(Value::Null));
        }
    }
    let info = app.api("tasks.get", json!({"task_id": id})).await?;
    match info["status"].as_str() {
        Some("unknown") => Err(err(
            StatusCode::NOT_FOUND,
            "unknown_task",
            format!("unknown task {id:?}"),
        )),
        Some("queued") | Some("running") => Ok((StatusCode::ACCEPTED, Json(info)).into_response()),
        _ => ok(info["result"].clone()),
    }
}

#[utoipa::path(post, path = "/tasks/{id}/cancel", tag = "tasks", params(("id" = String, Path, description = "task id")), responses((status = 200, description = "{ok, task_id, status: cancelled}"), (status = 404, description = "unknown task"), (status = 409, description = "already finished"), (status = 401, description = "missing or wrong bearer token"), (status = 503, description = "NATS unreachable or no answer in time")))]
async fn task_cancel(State(app): State<Shared>, Path(id): Path<String>) -> ApiResult {
    ok(app.api("tasks.cancel", json!({"task_id": id})).await?)
}

#[utoipa::path(get, path = "/cluster/status", tag = "cluster", responses((status = 200, description = "{total_nodes, healthy_nodes, draining_nodes, total_processes, leader, queues}"), (status = 401, description = "missing or wrong bearer token"), (status = 503, description = "NATS unreachable or no answer in time")))]
async fn cluster_status(State(app): State<Shared>) -> ApiResult {
    ok(app.api("cluster.status", json!({})).await?)
}

#[utoipa::path(get, path = "/nodes", tag = "cluster", responses((status = 200, description = "{nodes: [NodeInfo]}"), (status = 401, description = "missing or wrong bearer token"), (status = 503, description = "NATS unreachable or no answer in time")))]
async fn nodes(State(app): State<Shared>) -> ApiResult {
    ok(app.api("nodes.list", json!({})).await?)
}

#[utoipa::path(post, path = "/nodes/{node}/drain", tag = "cluster", params(("node" = String, Path, description = "node id")), responses((status = 200, description = "{ok, node_id, health: draining}"), (status = 404, description = "unknown node"), (status = 401, description = "missing or wrong bearer token"), (status = 503, description = "NATS unreachable or no answer in time")))]
async fn node_drain(State(app): State<Shared>, Path(node): Path<String>) -> ApiResult {
    ok(app.ctl(&node, "drain", json!({})).await?)
}

#[utoipa::path(post, path = "/nodes/{node}/resume", tag = "cluster", params(("node" = String, Path, description = "node id")), responses((status = 200, description = "{ok, node_id, health: healthy}"), (status = 404, description = "unknown node"), (status = 401, description = "missing or wrong bearer token"), (status = 503, description = "NATS unreachable or no answer in time")))]
async fn node_resume(State(app): State<Shared>, Path(node): Path<String>) -> ApiResult {
    ok(app.ctl(&node, "resume", json!({})).await?)
}

#[utoipa::path(post, path = "/runs", tag = "runs", request_body(content = Object, content_type = "application/json", description = "JSON object"), responses((status = 201, description = "the run"), (status = 400, description = "invalid run spec"), (status = 401, description = "missing or wrong bearer token"), (status = 503, description = "NATS unreachable or no answer in time")))]
async fn runs_create(State(app): State<Shared>, body: Bytes) -> ApiResult {
    let spec: Value = parse_body(&body)?;
    let r = app.api("runs.create", spec).await?;
    Ok((StatusCode::CREATED, Json(r)).into_response())
}

#[utoipa::path(get, path = "/runs/{id}", tag = "runs", params(("id" = String, Path, description = "run id")), responses((status = 200, description = "{run_id, status, total_shards, completed_shards, assignments}"), (status = 404, description = "unknown run"), (status = 401, description = "missing or wrong bearer token"), (status = 503, description = "NATS unreachable or no answer in time")))]
async fn runs_get(State(app): State<Shared>, Path(id): Path<String>) -> ApiResult {
    ok(app.api("runs.get", json!({"run_id": id})).await?)
}

#[utoipa::path(get, path = "/metrics", tag = "cluster", responses((status = 200, description = "Prometheus text exposition"), (status = 401, description = "missing or wrong bearer token"), (status = 503, description = "NATS unreachable or no answer in time")))]
async fn metrics(State(app): State<Shared>) -> Response {
    // Cluster gauges are read at scrape time (best effort).
    if let Ok(Ok(st)) =
        tokio::time::timeout(app.cfg.request_timeout, app.client.cluster_status()).await
    {
        app.metrics
            .nodes
            .with_label_values(&["healthy"])
            .set(st.healthy_nodes as i64);
        app.metrics
            .nodes
            .with_label_values(&["draining"])
            .set(st.draining_nodes as i64);
        for (q, s) in st.queues {
            app.metrics
                .pending
                .with_label_values(&[&q])
                .set(s.pending as i64);
        }
    }
    let mut buf = Vec::new();
    let enc = prometheus::TextEncoder::new();
    let _ = enc.encode(&app.metrics.registry.gather(), &mut buf);
    (
        [(
            axum::http::header::CONTENT_TYPE,
            enc.format_type().to_string(),
        )],
        buf,
    )
        .into_response()
}

// ---- agent coordinator routes -------------------------------------------

#[derive(Deserialize)]
struct Endpoints {
    http: Option<String>,
}

#[derive(Deserialize)]
struct RegisterRequest {
    agent_id: String,
    #[serde(default)]
    agent_type: Option<String>,
    #[serde(default)]
    capabilities: Vec<String>,
    #[serde(default)]
    services: Vec<String>,
    endpoints: Endpoints,
    #[serde(default)]
    metadata: Map<String, Value>,
}

/// Queue a registered agent's bridge serves.
fn agent_queue(agent_id: &str) -> String {
    format!("agent-{agent_id}")
}

/// Task type of tasks sent to agents.
const AGENT_TASK: &str = "agent";

#[utoipa::path(post, path = "/agents/register", tag = "agents", request_body(content = Object, content_type = "application/json", description = "JSON object"), responses((status = 200, description = "{status: success, message, agent_id, registered_at}"), (status = 400, description = "invalid JSON or fields"), (status = 401, description = "missing or wrong bearer token"), (status = 503, description = "NATS unreachable or no answer in time")))]
async fn agent_register(State(app): State<Shared>, body: Bytes) -> ApiResult {
    let req: RegisterRequest = parse_body(&body)?;
    validate_id("agent_id", &req.agent_id).map_err(ApiError::from)?;
    let url = req
        .endpoints
        .http
        .clone()
        .filter(|u| u.starts_with("http://") || u.starts_with("https://"))
        .ok_or_else(|| {
            err(
                StatusCode::BAD_REQUEST,
                "invalid_value",
                "endpoints.http must be an http(s):// URL",
            )
        })?;
    let existing = app.agents.lock().ok().and_then(|mut a| {
        a.get_mut(&req.agent_id).map(|b| {
            b.last_seen = Instant::now();
            b.registered_at.clone()
        })
    });
    let registered_at = match existing {
        Some(at) => at,
        None => {
            let mut cfg = NodeConfig::new(req.agent_id.clone());
            cfg.prefix = app.cfg.prefix.clone();
            cfg.queues = vec![agent_queue(&req.agent_id)];
            cfg.capabilities = req.capabilities.clone();
            cfg.url = Some(url.clone());
            cfg.concurrency = 16;
            cfg.metadata.insert("agent".into(), "true".into());
            cfg.metadata.insert(
                "agent_type".into(),
                req.agent_type.clone().unwrap_or_else(|| "worker".into()),
            );
            cfg.metadata
                .insert("services".into(), req.services.join(","));
            for (k, v) in &req.metadata {
                cfg.metadata.insert(
                    format!("agent.{k}"),
                    v.as_str()
                        .map(str::to_string)
                        .unwrap_or_else(|| v.to_string()),
                );
            }
            cfg.handlers = vec![HandlerSpec {
                task_type: AGENT_TASK.into(),
                exec: None,
                http: Some(url.clone()),
            }];
            let nats = app.client.nats().clone();
            let node = app
                .timed("node", Node::new(cfg).start(nats, app.shutdown.child()))
                .await?;
            let at = now_rfc3339();
            if let Ok(mut a) = app.agents.lock() {
                a.insert(
                    req.agent_id.clone(),
                    Bridge {
                        node,
                        last_seen: Instant::now(),
                        registered_at: at.clone(),
                    },
                );
            }
            at
        }
    };
    ok(json!({
        "status": "success",
        "message": format!("Agent {} registered successfully", req.agent_id),
        "agent_id": req.agent_id,
        "registered_at": registered_at,
    }))
}

#[utoipa::path(post, path = "/agents/{id}/heartbeat", tag = "agents", params(("id" = String, Path, description = "agent id")), responses((status = 200, description = "{status: success}"), (status = 404, description = "agent not registered here"), (status = 401, description = "missing or wrong bearer token"), (status = 503, description = "NATS unreachable or no answer in time")))]
async fn agent_heartbeat(State(app): State<Shared>, Path(id): Path<String>) -> ApiResult {
    let found = app
        .agents
        .lock()
        .ok()
        .and_then(|mut a| a.get_mut(&id).map(|b| b.last_seen = Instant::now()))
        .is_some();
    if found {
        ok(json!({"status": "success", "agent_id": id}))
    } else {
        Err(err(
            StatusCode::NOT_FOUND,
            "unknown_agent",
            format!("agent {id:?} is not registered here; register it again"),
        ))
    }
}

async fn reap_agents(app: Shared) {
    loop {
        tokio::select! {
            _ = app.shutdown.wait() => break,
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
        let expired: Vec<(String, NodeHandle)> = app
            .agents
            .lock()
            .map(|mut a| {
                let ids: Vec<String> = a
                    .iter()
                    .filter(|(_, b)| b.last_seen.elapsed() > app.cfg.agent_ttl)
                    .map(|(k, _)| k.clone())
                    .collect();
                ids.into_iter()
                    .filter_map(|id| a.remove(&id).map(|b| (id, b.node)))
                    .collect()
            })
            .unwrap_or_default();
        for (id, node) in expired {
            tracing::info!(agent_id = %id, "agent missed its heartbeats; unregistering");
            node.shutdown(Duration::from_secs(5)).await;
        }
    }
}

#[derive(Deserialize, Default)]
struct DiscoverRequest {
    #[serde(default)]
    status: Option<String>,
    #[serde(default)]
    agent_type: Option<String>,
    #[serde(default)]
    capabilities: Vec<String>,
}

fn agent_view(n: &crate::wire::protocol::NodeInfo) -> Value {
    let meta = |k: &str| {
        n.metadata
            .get(k)
            .and_then(Value::as_str)
            .map(str::to_string)
    };
    let services: Vec<String> = meta("services")
        .map(|s| {
            s.split(',')
                .filter(|x| !x.is_empty())
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default();
    json!({
        "agent_id": n.node_id,
        "agent_type": meta("agent_type").unwrap_or_else(|| n.role.as_str().to_string()),
        "capabilities": n.capabilities,
        "services": services,
        "endpoints": {"http": n.url},
        "status": if n.health == Health::Healthy { "active" } else { "draining" },
        "active_tasks": n.active_tasks,
        "last_heartbeat": n.last_heartbeat_at,
        "metadata": n.metadata,
    })
}

#[utoipa::path(post, path = "/agents/discover", tag = "agents", request_body(content = Object, content_type = "application/json", description = "JSON object"), responses((status = 200, description = "{status: success, agents, count}"), (status = 400, description = "invalid JSON or fields"), (status = 401, description = "missing or wrong bearer token"), (status = 503, description = "NATS unreachable or no answer in time")))]
async fn agent_discover(State(app): State<Shared>, body: Bytes) -> ApiResult {
    let f: DiscoverRequest = parse_body(&body)?;
    let nodes = app.timed("api", app.client.nodes()).await?;
    let agents: Vec<Value> = nodes
        .iter()
        .map(agent_view)
        .filter(|a| f.status.as_deref().is_none_or(|s| a["status"] == s))
        .filter(|a| f.agent_type.as_deref().is_none_or(|t| a["agent_type"] == t))
        .filter(|a| {
            f.capabilities.iter().all(|c| {
                a["capabilities"]
                    .as_array()
                    .is_some_and(|cs| cs.contains(&json!(c)))
            })
        })
        .collect();
    ok(json!({"status": "success", "agents": agents, "count": agents.len()}))
}

#[derive(Deserialize)]
struct SubmitBody {
    task_data: Value,
    #[serde(default)]
    priority: Option<String>,
    #[serde(default)]
    requirements: crate::wire::protocol::Requirements,
}

#[utoipa::path(post, path = "/tasks/submit", tag = "agents", request_body(content = Object, content_type = "application/json", description = "JSON object"), responses((status = 200, description = "{status: success, task_id}"), (status = 400, description = "invalid JSON or fields"), (status = 503, description = "no agent or worker can take it"), (status = 401, description = "missing or wrong bearer token"), (status = 503, description = "NATS unreachable or no answer in time")))]
async fn tasks_submit(State(app): State<Shared>, body: Bytes) -> ApiResult {
    let b: SubmitBody = parse_body(&body)?;
    if !b.task_data.is_object() {
        return Err(err(
            StatusCode::BAD_REQUEST,
            "invalid_value",
            "task_data must be a JSON object",
        ));
    }
    let priority: Priority = b
        .priority
        .as_deref()
        .unwrap_or("normal")
        .parse()
        .map_err(ApiError::from)?;
    let nodes = app.timed("api", app.client.nodes()).await?;
    // An agent (or node) with the capabilities, least busy first.
    let agent = nodes
        .iter()
        .filter(|n| {
            n.health == Health::Healthy && n.metadata.get("agent").is_some_and(|v| v == "true")
        })
        .filter(|n| {
            b.requirements
                .capabilities
                .iter()
                .all(|c| n.capabilities.contains(c))
        })
        .min_by_key(|n| (n.active_tasks, n.node_id.clone()));
    let (queue, envelope) = match agent {
        Some(a) => (
            agent_queue(&a.node_id),
            TaskEnvelope::new(AGENT_TASK, b.task_data.clone()),
        ),
        None => {
            let Some(t) = b.task_data.get("type").and_then(Value::as_str) else {
                return Err(err(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "no_agent",
                    format!("no active agent has capabilities {:?}, and task_data has no `type` for the worker nodes", b.requirements.capabilities),
                ));
            };
            let payload = b
                .task_data
                .get("payload")
                .cloned()
                .unwrap_or(b.task_data.clone());
            ("default".to_string(), TaskEnvelope::new(t, payload))
        }
    };
    let req = SubmitRequest {
        envelope,
        queue: Some(queue),
        priority: Some(priority),
    };
    let r = app.timed("api", app.client.submit(&req)).await?;
    ok(json!({
        "status": "success",
        "task_id": r.task_id,
        "agent_id": agent.map(|a| a.node_id.clone()),
        "queue": r.queue,
        "priority": r.priority,
    }))
}

#[utoipa::path(get, path = "/tasks/status", tag = "agents", responses((status = 200, description = "{status: success, stats}"), (status = 401, description = "missing or wrong bearer token"), (status = 503, description = "NATS unreachable or no answer in time")))]
async fn tasks_status(State(app): State<Shared>) -> ApiResult {
    let nodes = app.timed("api", app.client.nodes()).await?;
    let sum = |k: &str| -> u64 {
        nodes
            .iter()
            .filter_map(|n| n.metadata.get(k).and_then(Value::as_u64))
            .sum()
    };
    let distributed = app.timed("api", app.client.tasks_published()).await?;
    let active: Vec<_> = nodes
        .iter()
        .filter(|n| n.health == Health::Healthy)
        .collect();
    let avg = if active.is_empty() {
        0.0
    } else {
        active
            .iter()
            .map(|n| f64::from(n.active_tasks))
            .sum::<f64>()
            / active.len() as f64
    };
    ok(json!({
        "status": "success",
        "stats": {
            "tasks_distributed": distributed,
            "tasks_completed": sum("completed"),
            "tasks_failed": sum("failed"),
            "load_balancer_stats": {
                "strategy": "least_loaded",
                "active_agents": active.len(),
                "total_assignments": distributed,
                "avg_agent_load": avg,
            }
        }
    }))
}

/// The sidecar's OpenAPI document, generated from the route annotations.
#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "jetweave sidecar",
        description = "REST in front of the jetweave NATS API (contract section 9)."
    ),
    paths(
        health,
        status,
        processes,
        process_status,
        process_verb,
        health_of,
        status_of,
        processes_of,
        process_status_of,
        process_verb_of,
        task_get,
        task_result,
        task_cancel,
        cluster_status,
        nodes,
        node_drain,
        node_resume,
        runs_create,
        runs_get,
        metrics,
        agent_register,
        agent_heartbeat,
        agent_discover,
        tasks_submit,
        tasks_status
    )
)]
pub struct ApiDoc;

async fn openapi() -> Response {
    Json(<ApiDoc as utoipa::OpenApi>::openapi()).into_response()
}
