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
//! Agents (`/agents/register`): the registration is kept in the `P-agents`
//! KV bucket with a per-key TTL of `agent_ttl`, refreshed by the agent's
//! re-registrations and heartbeats (`POST /agents/{id}/heartbeat`) on any
//! sidecar. Each registered agent gets a bridge — an in-process node named
//! after the agent, serving the queue `agent-<agent_id>` with an `http`
//! handler that POSTs each task to the agent's endpoint — on one sidecar;
//! when that sidecar dies another takes the bridge over, and when the
//! registration expires the bridge stops and its queued tasks move to
//! another capable agent (see `bridges`).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{DefaultBodyLimit, MatchedPath, Path, Query, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
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

mod agents;
pub mod balance;
mod bridges;
mod egress;
mod error;
mod follow;
mod listen;
mod metrics;
mod routes;
mod tally;
mod ui;

use agents::*;
pub use egress::AgentAllow;
use error::*;
use metrics::*;
use routes::*;

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
    /// Serve HTTPS with this PEM certificate (chain) and `tls_key`.
    pub tls_cert: Option<std::path::PathBuf>,
    /// The PEM private key of `tls_cert`.
    pub tls_key: Option<std::path::PathBuf>,
    /// Where registered agents' endpoints may point (see [`AgentAllow`]).
    pub agent_allow: AgentAllow,
    /// How `POST /tasks/submit` picks an agent (see [`balance`]).
    pub agent_strategy: balance::Strategy,
    /// Hosts that run no node, put in discovery at start (`[[static_node]]`).
    pub static_nodes: Vec<crate::store::discovery::StaticNode>,
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
            tls_cert: None,
            tls_key: None,
            agent_allow: AgentAllow::default(),
            agent_strategy: balance::Strategy::default(),
            static_nodes: vec![],
        }
    }
}

/// A running sidecar.
pub struct SidecarHandle {
    /// The bound address.
    pub local_addr: SocketAddr,
    /// `http` or `https`.
    pub scheme: &'static str,
    task: tokio::task::JoinHandle<()>,
}

impl SidecarHandle {
    /// Resolves once the server has stopped.
    pub async fn wait(self) {
        let _ = self.task.await;
    }
}

struct Bridge {
    node: NodeHandle,
}

struct App {
    cfg: SidecarConfig,
    client: Client,
    metrics: Metrics,
    agents: Mutex<HashMap<String, Bridge>>,
    /// Registrations in `P-agents`.
    registry: bridges::Registry,
    /// The round-robin strategy's turn.
    turn: std::sync::atomic::AtomicUsize,
    shutdown: Shutdown,
    /// What the dashboard pages are fed.
    feed: ui::Feed,
}

type AppState = Arc<App>;

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
    let tls = listen::tls_config(&cfg).await?;
    if !cfg.static_nodes.is_empty() {
        let subjects = crate::wire::subjects::Subjects::new(&cfg.prefix)?;
        let ttl = Duration::from_secs(5);
        let d = crate::store::discovery::KvDiscovery::open(nats.clone(), &subjects, ttl, 0).await?;
        for n in &cfg.static_nodes {
            d.put_static(n, Default::default()).await?;
        }
    }
    let scheme = if tls.is_some() { "https" } else { "http" };
    let app = Arc::new(App {
        client: Client::new(nats.clone(), &cfg.prefix)?.with_timeout(cfg.request_timeout),
        metrics: Metrics::new().map_err(|e| Error::Config(e.to_string()))?,
        agents: Mutex::new(HashMap::new()),
        registry: bridges::Registry::open(nats.clone(), &cfg).await?,
        turn: std::sync::atomic::AtomicUsize::new(0),
        shutdown: shutdown.clone(),
        feed: ui::Feed::new(),
        cfg,
    });
    let router = router(app.clone());
    // The loops (bridges, result tally) end with the shutdown; the server
    // task waits for them, so `SidecarHandle::wait` returns when all have
    // ended.
    let loops = tokio_util::task::TaskTracker::new();
    loops.spawn(bridges::keep_bridges(app.clone()));
    loops.spawn(tally::keep_tally(app.clone()));
    loops.spawn(ui::keep_events(app.clone()));
    loops.spawn(ui::keep_snapshots(app.clone()));
    loops.close();
    let sd = shutdown.clone();
    let task = tokio::spawn(async move {
        listen::serve_until(listener, router, tls, sd).await;
        loops.wait().await;
        let bridges: Vec<NodeHandle> = app
            .agents
            .lock()
            .map(|mut a| a.drain().map(|(_, b)| b.node).collect())
            .expect("agents poisoned");
        for b in bridges {
            b.shutdown(Duration::from_secs(5)).await;
        }
    });
    tracing::info!(%local_addr, scheme, "sidecar listening");
    Ok(SidecarHandle {
        local_addr,
        scheme,
        task,
    })
}

fn node_routes() -> Router<AppState> {
    Router::new()
        .route("/status", get(status))
        .route("/processes", get(processes))
        .route("/processes/{name}/status", get(process_status))
        .route("/processes/{name}/{verb}", post(process_verb))
}

fn router(app: AppState) -> Router {
    let mut r = Router::new()
        .route("/agents/register", post(agent_register))
        .route("/agents/discover", post(agent_discover))
        .route("/agents/{id}/heartbeat", post(agent_heartbeat))
        .route("/tasks/submit", post(tasks_submit))
        .route("/tasks/status", get(tasks_status))
        .route("/tasks/{id}", get(task_get))
        .route("/tasks/{id}/result", get(task_result))
        .route("/tasks/{id}/cancel", post(task_cancel))
        .route("/health", get(health))
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
        .route("/dlq", get(dlq_list))
        .route("/dlq/{id}/requeue", post(dlq_requeue))
        .route("/limits", get(limits_list))
        .route("/limits/{id}", put(limits_put).delete(limits_delete))
        .route("/metrics", get(metrics))
        .route("/ui", get(ui::ui_page))
        .route("/ui/stream", get(ui::ui_stream))
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

async fn auth_and_count(State(app): State<AppState>, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "unmatched".into());
    let method = req.method().to_string();
    // The dashboard page holds no data (see `ui`): a browser loads it
    // without a token, and it asks for one.
    let open = route == "/ui";
    let resp = match &app.cfg.auth_token {
        Some(token) if !open && !authorized(req.headers(), token) => err(
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
        dlq_list,
        dlq_requeue,
        limits_list,
        limits_put,
        limits_delete,
        metrics,
        ui::ui_page,
        ui::ui_stream,
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
