//! `jetweave node --metrics ADDR`: the node's own Prometheus metrics at
//! `GET /metrics`, read from its status at scrape time (no NATS request,
//! nothing kept between scrapes). The cluster-wide families (§14) come
//! from a sidecar; these are what only the node knows between heartbeats.

use axum::extract::State;
use axum::response::IntoResponse;
use jetweave::protocol::NodeStatus;
use jetweave::{NodeHandle, Shutdown};
use prometheus::{Encoder, IntCounterVec, IntGaugeVec, Opts, Registry};

/// Serves `/metrics` on `addr` until `shutdown`; returns the server task.
pub async fn serve(
    addr: &str,
    node: NodeHandle,
    shutdown: Shutdown,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {addr} for --metrics: {e}"))?;
    tracing::info!(addr = %listener.local_addr()?, "node metrics on /metrics");
    let app = axum::Router::new()
        .route("/metrics", axum::routing::get(scrape))
        .with_state(node);
    Ok(tokio::spawn(async move {
        let stop = async move { shutdown.wait().await };
        if let Err(e) = axum::serve(listener, app)
            .with_graceful_shutdown(stop)
            .await
        {
            tracing::warn!(error = %e, "node metrics server ended");
        }
    }))
}

async fn scrape(State(node): State<NodeHandle>) -> axum::response::Response {
    let registry = match families(node.node_id(), &node.status(), node.health()) {
        Ok(r) => r,
        Err(e) => {
            return (axum::http::StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response()
        }
    };
    let mut buf = Vec::new();
    let enc = prometheus::TextEncoder::new();
    let _ = enc.encode(&registry.gather(), &mut buf);
    (
        [(
            axum::http::header::CONTENT_TYPE,
            enc.format_type().to_string(),
        )],
        buf,
    )
        .into_response()
}

fn gauge(r: &Registry, name: &str, help: &str, labels: &[&str]) -> prometheus::Result<IntGaugeVec> {
    let g = IntGaugeVec::new(Opts::new(name, help), labels)?;
    r.register(Box::new(g.clone()))?;
    Ok(g)
}

fn counter(r: &Registry, name: &str, help: &str) -> prometheus::Result<IntCounterVec> {
    let c = IntCounterVec::new(Opts::new(name, help), &["node"])?;
    r.register(Box::new(c.clone()))?;
    Ok(c)
}

/// The node's families, from one status reading.
fn families(
    id: &str,
    st: &NodeStatus,
    health: jetweave::protocol::Health,
) -> prometheus::Result<Registry> {
    let r = Registry::new();
    let one = [id];
    gauge(
        &r,
        "jetweave_node_active_tasks",
        "Tasks, shards and events running on this node",
        &["node"],
    )?
    .with_label_values(&one)
    .set(i64::from(st.active_tasks));
    gauge(
        &r,
        "jetweave_node_max_concurrency",
        "Task slots of this node",
        &["node"],
    )?
    .with_label_values(&one)
    .set(i64::from(st.max_concurrency));
    counter(
        &r,
        "jetweave_node_tasks_completed_total",
        "Tasks this node completed since it started",
    )?
    .with_label_values(&one)
    .inc_by(st.completed);
    counter(
        &r,
        "jetweave_node_attempts_failed_total",
        "Attempts that failed on this node since it started",
    )?
    .with_label_values(&one)
    .inc_by(st.failed);
    gauge(
        &r,
        "jetweave_node_health",
        "1 for this node's health",
        &["node", "health"],
    )?
    .with_label_values(&[id, health.as_str()])
    .set(1);
    let procs = gauge(
        &r,
        "jetweave_node_processes",
        "Named processes by state",
        &["node", "state"],
    )?;
    for p in &st.processes {
        let state = serde_json::to_value(p.state).ok();
        let state = state.as_ref().and_then(|v| v.as_str()).unwrap_or("unknown");
        procs.with_label_values(&[id, state]).inc();
    }
    Ok(r)
}
