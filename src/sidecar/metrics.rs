//! Prometheus metrics of the sidecar (`GET /metrics`).

use super::*;

pub(super) struct Metrics {
    pub(super) registry: Registry,
    pub(super) requests: IntCounterVec,
    pub(super) nats_latency: HistogramVec,
    pub(super) nodes: IntGaugeVec,
    pub(super) pending: IntGaugeVec,
    pub(super) dlq_depth: IntGaugeVec,
    pub(super) node_active: IntGaugeVec,
    pub(super) pool_workers: IntGaugeVec,
    pub(super) pool_desired: IntGaugeVec,
    pub(super) limit_running: IntGaugeVec,
    pub(super) limit_throttled: IntCounterVec,
    pub(super) tasks_total: IntCounterVec,
    pub(super) task_duration: HistogramVec,
    pub(super) task_retries: IntCounterVec,
    pub(super) heartbeat_age: prometheus::GaugeVec,
}

/// How long a scrape waits for pools to answer their service ping.
const POOL_PING_WAIT: Duration = Duration::from_millis(250);

/// A gauge family, registered.
fn gauge(
    r: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
) -> Result<IntGaugeVec, prometheus::Error> {
    let g = IntGaugeVec::new(Opts::new(name, help), labels)?;
    r.register(Box::new(g.clone()))?;
    Ok(g)
}

/// A float gauge family, registered.
fn float_gauge(
    r: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
) -> Result<prometheus::GaugeVec, prometheus::Error> {
    let g = prometheus::GaugeVec::new(Opts::new(name, help), labels)?;
    r.register(Box::new(g.clone()))?;
    Ok(g)
}

/// A counter family, registered.
fn counter(
    r: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
) -> Result<IntCounterVec, prometheus::Error> {
    let c = IntCounterVec::new(Opts::new(name, help), labels)?;
    r.register(Box::new(c.clone()))?;
    Ok(c)
}

/// Buckets of the sidecar's NATS request latency, in seconds.
const LATENCY_BUCKETS: [f64; 13] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

/// Buckets of task durations, in seconds.
const DURATION_BUCKETS: [f64; 14] = [
    0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
];

/// A histogram family, registered.
fn histogram(
    r: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
    buckets: &[f64],
) -> Result<HistogramVec, prometheus::Error> {
    let opts = prometheus::HistogramOpts::new(name, help).buckets(buckets.to_vec());
    let h = HistogramVec::new(opts, labels)?;
    r.register(Box::new(h.clone()))?;
    Ok(h)
}

/// The families counted from the result stream (see `tally`): finished
/// tasks, their durations, their retried attempts.
fn task_families(
    r: &Registry,
) -> Result<(IntCounterVec, HistogramVec, IntCounterVec), prometheus::Error> {
    let total = counter(
        r,
        "jetweave_tasks_total",
        "Finished tasks by queue, type and terminal status (from the result stream)",
        &["queue", "type", "status"],
    )?;
    let duration = histogram(
        r,
        "jetweave_task_duration_seconds",
        "Duration of the last attempt of each finished task (from the result stream)",
        &["queue", "type"],
        &DURATION_BUCKETS,
    )?;
    let retries = counter(
        r,
        "jetweave_task_retries_total",
        "Failed attempts of finished tasks (attempts - 1, from the result stream)",
        &["queue", "type"],
    )?;
    Ok((total, duration, retries))
}

impl Metrics {
    pub(super) fn new() -> Result<Self, prometheus::Error> {
        let r = Registry::new();
        let nats_latency = histogram(
            &r,
            "jetweave_sidecar_nats_request_seconds",
            "Latency of NATS requests made by the sidecar",
            &["target"],
            &LATENCY_BUCKETS,
        )?;
        let (tasks_total, task_duration, task_retries) = task_families(&r)?;
        Ok(Metrics {
            heartbeat_age: float_gauge(
                &r,
                "jetweave_node_heartbeat_age_seconds",
                "Seconds since each live node's last heartbeat (from discovery)",
                &["node"],
            )?,
            task_retries,
            tasks_total,
            task_duration,
            requests: counter(
                &r,
                "jetweave_sidecar_requests_total",
                "HTTP requests by route and status",
                &["method", "route", "status"],
            )?,
            nats_latency,
            nodes: gauge(&r, "jetweave_nodes", "Live nodes by health", &["health"])?,
            pending: gauge(
                &r,
                "jetweave_queue_pending",
                "Tasks waiting (not yet delivered) per queue and priority",
                &["queue", "priority"],
            )?,
            dlq_depth: gauge(
                &r,
                "jetweave_dlq_depth",
                "Dead letters held per queue",
                &["queue"],
            )?,
            node_active: gauge(
                &r,
                "jetweave_node_active_tasks",
                "Tasks, shards and events running per live node",
                &["node"],
            )?,
            pool_workers: gauge(
                &r,
                "jetweave_pool_workers",
                "Serving workers per pool",
                &["pool"],
            )?,
            pool_desired: gauge(
                &r,
                "jetweave_pool_desired",
                "Desired workers per pool",
                &["pool"],
            )?,
            limit_running: gauge(
                &r,
                "jetweave_limit_running",
                "Tasks whose handler runs now under each flow-control limit (all keys)",
                &["limit"],
            )?,
            limit_throttled: counter(
                &r,
                "jetweave_limit_throttled_total",
                "Tasks held back by each limit, summed over the live nodes' counters",
                &["limit"],
            )?,
            registry: r,
        })
    }
}

#[utoipa::path(get, path = "/metrics", tag = "cluster", responses((status = 200, description = "Prometheus text exposition"), (status = 401, description = "missing or wrong bearer token"), (status = 503, description = "NATS unreachable or no answer in time")))]
pub(super) async fn metrics(State(app): State<AppState>) -> Response {
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
        for q in st.queues.keys() {
            if let Ok(by) = app.client.queue_pending(q).await {
                for (p, n) in by {
                    let labels = [q.as_str(), p.as_str()];
                    app.metrics.pending.with_label_values(&labels).set(n as i64);
                }
            }
        }
    }
    queue_gauges(&app).await;
    pool_gauges(&app).await;
    limit_gauges(&app).await;
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

/// The pools' gauges, from their `status` (a pool gone is dropped).
async fn pool_gauges(app: &App) {
    let Ok(Ok(pools)) =
        tokio::time::timeout(app.cfg.request_timeout, app.client.pools(POOL_PING_WAIT)).await
    else {
        return;
    };
    app.metrics.pool_workers.reset();
    app.metrics.pool_desired.reset();
    for p in pools {
        let id = [p.pool_id.as_str()];
        app.metrics
            .pool_workers
            .with_label_values(&id)
            .set(i64::from(p.worker_count));
        app.metrics
            .pool_desired
            .with_label_values(&id)
            .set(i64::from(p.desired));
    }
}

/// The limits' running slots (from `weave-limit-state`) and hold-backs
/// (the live nodes' counters in their discovery entries).
async fn limit_gauges(app: &App) {
    let wait = app.cfg.request_timeout;
    if let Ok(Ok(limits)) = tokio::time::timeout(wait, app.client.limits()).await {
        app.metrics.limit_running.reset();
        for l in limits {
            let n: u32 = l.running.values().sum();
            app.metrics
                .limit_running
                .with_label_values(&[l.limit_id.as_str()])
                .set(i64::from(n));
        }
    }
    if let Ok(Ok(nodes)) = tokio::time::timeout(wait, app.client.nodes()).await {
        let mut total: std::collections::BTreeMap<String, u64> = Default::default();
        for n in nodes {
            if let Some(t) = n.metadata.get("throttled").and_then(Value::as_object) {
                for (limit, v) in t {
                    *total.entry(limit.clone()).or_default() += v.as_u64().unwrap_or(0);
                }
            }
        }
        app.metrics.limit_throttled.reset();
        for (limit, n) in total {
            app.metrics
                .limit_throttled
                .with_label_values(&[limit.as_str()])
                .inc_by(n);
        }
    }
}

/// Dead letters by queue (from the DLQ stream) and running tasks by node
/// (from discovery); gone queues and nodes are dropped.
async fn queue_gauges(app: &App) {
    let wait = app.cfg.request_timeout;
    if let Ok(Ok(depth)) = tokio::time::timeout(wait, app.client.dlq_depth()).await {
        app.metrics.dlq_depth.reset();
        for (q, n) in depth {
            app.metrics
                .dlq_depth
                .with_label_values(&[q.as_str()])
                .set(n as i64);
        }
    }
    if let Ok(Ok(nodes)) = tokio::time::timeout(wait, app.client.nodes()).await {
        app.metrics.node_active.reset();
        app.metrics.heartbeat_age.reset();
        for n in nodes.iter().filter(|n| n.max_concurrency > 0) {
            let id = [n.node_id.as_str()];
            app.metrics
                .node_active
                .with_label_values(&id)
                .set(i64::from(n.active_tasks));
            if let Some(age) = n.heartbeat_age_s() {
                app.metrics.heartbeat_age.with_label_values(&id).set(age);
            }
        }
    }
}
