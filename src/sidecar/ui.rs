//! The live dashboard (contract §14). `GET /ui` serves one page embedded
//! in the binary (`assets/ui.html`: HTML, CSS and plain JavaScript, no
//! build step); `GET /ui/stream` feeds it server-sent events: a `snapshot`
//! of the cluster every second (nodes, queues, runs, dead letters, leader,
//! finished-task counts) and every audit-log `event` as it is stored.
//!
//! One feed per sidecar, however many pages are open: a loop builds the
//! snapshot once a second while at least one page listens (from the
//! `weave-api` service, the task consumers' counts and the DLQ), and one
//! reading of `P_EVENTS` follows the audit log (see `follow`); both are
//! broadcast to every open page. Pages never talk to NATS. The page's
//! buttons call the REST routes (`/nodes/{id}/drain`, `/resume`,
//! `/dlq/{id}/requeue`).
//!
//! Auth: the page itself holds no data and is served without a token, so
//! a browser can load it; its stream and its buttons go through the
//! token-checked routes with the token the page asks for once (on a 401)
//! and keeps in the browser's `localStorage`.

use std::collections::VecDeque;
use std::convert::Infallible;

use axum::response::sse::{Event, KeepAlive, Sse};
use futures::StreamExt;
use prometheus::core::Collector;
use tokio::sync::broadcast;

use super::follow::{follow, From};
use super::*;

/// Audit events a newly opened page gets at once.
const RECENT_EVENTS: usize = 100;
/// Runs the dashboard shows (the most recently active).
const RECENT_RUNS: usize = 10;
/// Dead letters the dashboard lists (oldest first).
const DLQ_SHOWN: usize = 50;
/// An audit event larger than this is shown without its details.
const MAX_EVENT_BYTES: usize = 4096;

/// One server-sent event, shared by every page's stream.
#[derive(Clone)]
struct Frame {
    kind: &'static str,
    data: Arc<str>,
}

/// What the pages are fed (one per sidecar).
pub(super) struct Feed {
    tx: broadcast::Sender<Frame>,
    recent: Mutex<VecDeque<Frame>>,
    runs: Mutex<VecDeque<String>>,
    last: Mutex<Option<(Instant, Frame)>>,
}

impl Feed {
    pub(super) fn new() -> Self {
        Feed {
            tx: broadcast::channel(256).0,
            recent: Mutex::default(),
            runs: Mutex::default(),
            last: Mutex::default(),
        }
    }

    /// What a page opened now is sent first: the recent events and the
    /// last snapshot if it is fresh.
    fn opening(&self) -> Vec<Frame> {
        let mut out: Vec<Frame> = lock(&self.recent).iter().cloned().collect();
        if let Some((at, f)) = lock(&self.last).as_ref() {
            if at.elapsed() < Duration::from_secs(2) {
                out.push(f.clone());
            }
        }
        out
    }

    /// Keeps an audit event (its run among the recent runs) and sends it.
    fn event(&self, payload: &[u8]) {
        let Ok(mut ev) = serde_json::from_slice::<Value>(payload) else {
            return;
        };
        if payload.len() > MAX_EVENT_BYTES {
            ev["details"] = json!({"omitted": format!("{} bytes", payload.len())});
        }
        if let Some(run) = ev["run_id"].as_str() {
            let mut runs = lock(&self.runs);
            runs.retain(|r| r != run);
            runs.push_front(run.to_string());
            runs.truncate(RECENT_RUNS);
        }
        let frame = Frame {
            kind: "event",
            data: ev.to_string().into(),
        };
        {
            let mut recent = lock(&self.recent);
            recent.push_back(frame.clone());
            while recent.len() > RECENT_EVENTS {
                recent.pop_front();
            }
        }
        let _ = self.tx.send(frame);
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// `GET /ui`: the page.
#[utoipa::path(get, path = "/ui", tag = "cluster", responses((status = 200, description = "the live dashboard (HTML); served without a token, it asks for one")))]
pub(super) async fn ui_page() -> Response {
    (
        [
            (axum::http::header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (axum::http::header::CACHE_CONTROL, "no-store"),
        ],
        include_str!("../../assets/ui.html"),
    )
        .into_response()
}

/// `GET /ui/stream`: the page's server-sent events, until the page goes
/// or the sidecar stops.
#[utoipa::path(get, path = "/ui/stream", tag = "cluster", responses((status = 200, description = "text/event-stream: `snapshot` every second ({at, leader, nodes, queues, runs, dlq, finished}), `event` per audit-log entry"), (status = 401, description = "missing or wrong bearer token")))]
pub(super) async fn ui_stream(State(app): State<AppState>) -> Response {
    let rx = app.feed.tx.subscribe();
    let opening = futures::stream::iter(app.feed.opening());
    let live = futures::stream::unfold(rx, |mut rx| async move {
        loop {
            match rx.recv().await {
                Ok(f) => return Some((f, rx)),
                Err(broadcast::error::RecvError::Lagged(_)) => continue,
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    });
    let sd = app.shutdown.clone();
    let frames = opening
        .chain(live)
        .take_until(async move { sd.wait().await })
        .map(|f| Ok::<_, Infallible>(Event::default().event(f.kind).data(&*f.data)));
    Sse::new(frames)
        .keep_alive(KeepAlive::default())
        .into_response()
}

/// Follows the audit log into the feed until the sidecar stops.
pub(super) async fn keep_events(app: AppState) {
    let subjects = app.client.subjects().clone();
    // Injected events' outcomes (`P.events.process.*`) share the stream;
    // they are not audit entries.
    let outcomes = subjects.audit("process.");
    let a = app.clone();
    let each = move |subject: &str, payload: &[u8]| {
        if !subject.starts_with(&outcomes) {
            a.feed.event(payload)
        }
    };
    let (stream, filter) = (subjects.events_stream(), subjects.events_wildcard());
    let from = From::Last(RECENT_EVENTS as u64 * 4);
    follow(app, stream, filter, from, each).await
}

/// Builds and sends a snapshot every second while a page listens.
pub(super) async fn keep_snapshots(app: AppState) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = app.shutdown.wait() => return,
            _ = tick.tick() => {}
        }
        if app.feed.tx.receiver_count() == 0 {
            continue;
        }
        let frame = Frame {
            kind: "snapshot",
            data: snapshot(&app).await.to_string().into(),
        };
        *lock(&app.feed.last) = Some((Instant::now(), frame.clone()));
        let _ = app.feed.tx.send(frame);
    }
}

/// The cluster as the page shows it; a part that cannot be read now is
/// `null` (the page says so) and the rest is still sent.
async fn snapshot(app: &App) -> Value {
    let (nodes, status, dlq) = tokio::join!(
        app.timed("api", app.client.nodes()),
        app.timed("api", app.client.cluster_status()),
        app.timed("api", app.client.dlq_list(None, Some(DLQ_SHOWN))),
    );
    let queues = match &status {
        Ok(st) => queues_view(app, st.queues.keys()).await,
        Err(_) => Value::Null,
    };
    json!({
        "at": now_rfc3339(),
        "leader": status.as_ref().ok().map(|s| s.leader.clone()),
        "nodes": nodes.ok().map(|n| n.iter().map(node_view).collect::<Vec<_>>()),
        "queues": queues,
        "runs": runs_view(app).await,
        "dlq": dlq.ok(),
        "finished": finished(app),
    })
}

fn node_view(n: &crate::wire::protocol::NodeInfo) -> Value {
    let age = n.heartbeat_age_s();
    json!({
        "node_id": n.node_id,
        "role": n.role,
        "hostname": n.hostname,
        "health": n.health,
        "state": n.state,
        "active_tasks": n.active_tasks,
        "max_concurrency": n.max_concurrency,
        "queues": n.queues,
        "heartbeat_age_s": age,
    })
}

/// Pending and running tasks per queue and priority.
async fn queues_view<'a>(app: &App, queues: impl Iterator<Item = &'a String>) -> Value {
    let mut out = Vec::new();
    for q in queues {
        if let Ok(depth) = app.timed("stream", app.client.queue_depth(q)).await {
            out.push(json!({"queue": q, "priorities": depth}));
        }
    }
    Value::Array(out)
}

/// The recent runs' progress (their shard maps left out).
async fn runs_view(app: &App) -> Value {
    let ids: Vec<String> = lock(&app.feed.runs).iter().cloned().collect();
    let mut out = Vec::new();
    for id in ids {
        if let Ok(r) = app.timed("api", app.client.get_run(&id)).await {
            let keep = [
                "run_id",
                "status",
                "total_shards",
                "completed_shards",
                "failed_shards",
                "created_at",
                "finished_at",
            ];
            out.push(
                keep.iter()
                    .map(|k| (k.to_string(), r[*k].clone()))
                    .collect(),
            );
        }
    }
    Value::Array(out)
}

/// Finished tasks by status and by queue, from the result tally (the
/// page turns two snapshots into rates).
fn finished(app: &App) -> Value {
    let mut by_status: std::collections::BTreeMap<String, u64> = Default::default();
    let mut by_queue: std::collections::BTreeMap<String, u64> = Default::default();
    for family in app.metrics.tasks_total.collect() {
        for m in family.get_metric() {
            let label = |name: &str| {
                m.get_label()
                    .iter()
                    .find(|l| l.name() == name)
                    .map(|l| l.value().to_string())
                    .unwrap_or_default()
            };
            let n = m.get_counter().get_value() as u64;
            *by_status.entry(label("status")).or_default() += n;
            *by_queue.entry(label("queue")).or_default() += n;
        }
    }
    json!({"by_status": by_status, "by_queue": by_queue})
}
