//! The `weave-api` micro service (contract §6): every coordinator serves it
//! in one queue group, so any number can run and any one answers.
//!
//! It keeps no task state of its own. `tasks.get` reads the result stream,
//! asks the nodes whether one runs the task (`P.ctl.all.task_lookup`,
//! answered only by the node that has it), and reads the task stream for a
//! queued copy, in that order; `tasks.cancel` records the cancel in the
//! `P-cancels` bucket (nodes watch it), stores the `cancelled` result and
//! removes a queued copy from the stream.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, kv, stream};
use async_nats::service::ServiceExt;
use futures::StreamExt;
use serde::Deserialize;
use serde_json::{json, Value};

use super::CoordinatorState;
use crate::error::{Error, ErrorCode};
use crate::store::results::{read_result, store_result};
use crate::store::tasks::publish_task;
use crate::store::write_settled;
use crate::wire::protocol::{error_body, json_body};
use crate::wire::protocol::{
    now_rfc3339, parse_object, ClusterStatus, Health, NoFields, Priority, QueueStats, SubmitReply,
    SubmitRequest, TaskInfo, TaskRef, TaskResult, TaskStatus,
};
use crate::wire::subjects::{encode_key, validate_task_id, API_SERVICE};

/// How long `tasks.get` waits for a node to say it runs a task.
const LOOKUP_WAIT: Duration = Duration::from_millis(200);
/// Most queued messages `tasks.get` reads looking for a task.
const SCAN_LIMIT: u64 = 100_000;

/// Every endpoint: (name, subject suffix), subscribed in this order (the
/// test harness waits for the last one to answer on a cluster).
const ENDPOINTS: [(&str, &str); 18] = [
    ("tasks-submit", "tasks.submit"),
    ("tasks-get", "tasks.get"),
    ("tasks-cancel", "tasks.cancel"),
    ("nodes-list", "nodes.list"),
    ("nodes-register", "nodes.register"),
    ("nodes-unregister", "nodes.unregister"),
    ("cluster-status", "cluster.status"),
    ("runs-create", "runs.create"),
    ("runs-get", "runs.get"),
    ("dlq-list", "dlq.list"),
    ("dlq-requeue", "dlq.requeue"),
    ("dlq-purge", "dlq.purge"),
    ("schedules-create", "schedules.create"),
    ("schedules-list", "schedules.list"),
    ("schedules-delete", "schedules.delete"),
    ("limits-set", "limits.set"),
    ("limits-list", "limits.list"),
    ("limits-delete", "limits.delete"),
];

pub(super) async fn start(s: &Arc<CoordinatorState>) -> Result<(), Error> {
    let mut meta = std::collections::HashMap::new();
    meta.insert("coordinator_id".to_string(), s.id.clone());
    let service = s
        .client
        .service_builder()
        .description("jetweave API: tasks, nodes, cluster status, runs")
        .metadata(meta)
        .start(API_SERVICE, env!("CARGO_PKG_VERSION"))
        .await
        .map_err(|e| Error::nats(format!("cannot start {API_SERVICE}: {e}")))?;
    let mut eps = Vec::new();
    for (name, suffix) in ENDPOINTS {
        let ep = service
            .endpoint_builder()
            .name(name)
            .add(s.subjects.api(suffix))
            .await
            .map_err(Error::nats)?;
        eps.push(ep.map(move |r| (suffix, r)));
    }
    let mut all = futures::stream::select_all(eps);
    let s = s.clone();
    let loops = s.loops.clone();
    loops.spawn(async move {
        loop {
            tokio::select! {
                _ = s.shutdown.wait() => break,
                r = all.next() => {
                    let Some((suffix, req)) = r else { break };
                    let s2 = s.clone();
                    s.loops.spawn(async move {
                        let s = s2;
                        let out = route(&s, suffix, &req.message.payload).await;
                        let body = match out {
                            Ok(v) => json_body(&v),
                            Err(e) => error_body(&e),
                        };
                        let _ = req.respond(Ok(body)).await;
                    });
                }
            }
        }
        let _ = service.stop().await;
    });
    Ok(())
}

async fn route(s: &Arc<CoordinatorState>, endpoint: &str, body: &[u8]) -> Result<Value, Error> {
    match endpoint {
        "tasks.submit" => submit(s, body).await,
        "tasks.get" => {
            let r: TaskRef = parse_object(body)?;
            to_value(get_task(s, &r.task_id).await?)
        }
        "tasks.cancel" => cancel(s, body).await,
        "nodes.list" => {
            parse_object::<NoFields>(body)?;
            Ok(json!({"nodes": s.view.nodes()}))
        }
        "cluster.status" => {
            parse_object::<NoFields>(body)?;
            to_value(cluster_status(s).await?)
        }
        "nodes.register" => register_node(s, body).await,
        "nodes.unregister" => unregister_node(s, body).await,
        "runs.create" => super::runs::create(s, body).await,
        "runs.get" => super::runs::get(s, body).await,
        "dlq.list" => super::dlq::list(s, parse_object(body)?).await,
        "dlq.requeue" => super::dlq::requeue(s, parse_object(body)?).await,
        "dlq.purge" => super::dlq::purge(s, parse_object(body)?).await,
        "schedules.create" => super::schedules::create(s, parse_object(body)?).await,
        "schedules.list" => {
            parse_object::<NoFields>(body)?;
            super::schedules::list(s).await
        }
        "schedules.delete" => super::schedules::delete(s, parse_object(body)?).await,
        "limits.set" => super::limits::set(s, parse_object(body)?).await,
        "limits.list" => {
            parse_object::<NoFields>(body)?;
            super::limits::list(s).await
        }
        "limits.delete" => super::limits::delete(s, parse_object(body)?).await,
        other => Err(Error::invalid(
            ErrorCode::UnknownVerb,
            format!("unknown endpoint {other}"),
        )),
    }
}

fn to_value(v: impl serde::Serialize) -> Result<Value, Error> {
    serde_json::to_value(v).map_err(|e| Error::invalid(ErrorCode::Internal, e.to_string()))
}

async fn submit(s: &CoordinatorState, body: &[u8]) -> Result<Value, Error> {
    let mut req = SubmitRequest::parse_strict(body)?;
    req.validate()?;
    let id = req
        .envelope
        .id
        .clone()
        .unwrap_or_else(|| uuid::Uuid::new_v4().simple().to_string());
    req.envelope.id = Some(id.clone());
    let queue = req.queue().to_string();
    let priority = req.priority.unwrap_or_default();
    check_room(s, &queue).await?;
    let duplicate = publish_task(&s.js, &s.subjects, &queue, priority, &req.envelope).await?;
    to_value(SubmitReply {
        task_id: id,
        queue,
        priority,
        duplicate,
    })
}

/// `nodes.register {"node_id", "url", "metadata"?}`: a host that cannot
/// run a node is listed in discovery until `nodes.unregister`.
async fn register_node(s: &CoordinatorState, body: &[u8]) -> Result<Value, Error> {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Register {
        node_id: String,
        url: String,
        #[serde(default)]
        metadata: serde_json::Map<String, Value>,
    }
    let r: Register = parse_object(body)?;
    if let Some(live) = s.view.nodes().into_iter().find(|n| n.node_id == r.node_id) {
        if live.metadata.get("static") != Some(&Value::Bool(true)) {
            return Err(Error::invalid(
                ErrorCode::AlreadyExists,
                format!("a live node is {:?}", r.node_id),
            ));
        }
    }
    let node = crate::store::discovery::StaticNode {
        node_id: r.node_id.clone(),
        url: r.url,
    };
    s.discovery.put_static(&node, r.metadata).await?;
    Ok(json!({"ok": true, "node_id": r.node_id}))
}

/// `nodes.unregister {"node_id"}`: removes a registered (static) node.
async fn unregister_node(s: &CoordinatorState, body: &[u8]) -> Result<Value, Error> {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Unregister {
        node_id: String,
    }
    let r: Unregister = parse_object(body)?;
    crate::wire::subjects::validate_id("node id", &r.node_id)?;
    match s.discovery.get(&r.node_id).await? {
        None => Err(Error::invalid(
            ErrorCode::UnknownNode,
            format!("no node {:?}", r.node_id),
        )),
        Some(n) if n.metadata.get("static") != Some(&Value::Bool(true)) => Err(Error::invalid(
            ErrorCode::InvalidValue,
            format!(
                "{:?} is a live node, not a registered one: drain or shut it down",
                r.node_id
            ),
        )),
        Some(_) => {
            s.discovery.delete(&r.node_id).await?;
            Ok(json!({"ok": true, "node_id": r.node_id}))
        }
    }
}

/// Refuses a submit to a queue that holds its `max_pending` tasks already
/// (waiting or running: a work queue keeps a task until it is acked). One
/// stream-info request per submit, and only for bounded queues.
async fn check_room(s: &CoordinatorState, queue: &str) -> Result<(), Error> {
    let Some(&max) = s.cfg.max_pending.get(queue) else {
        return Ok(());
    };
    let filter = format!("{}.tasks.{queue}.*", s.subjects.prefix());
    let mut info = s
        .tasks
        .info_with_subjects(&filter)
        .await
        .map_err(Error::nats_source)?;
    let mut held = 0u64;
    while let Some(entry) = info.next().await {
        let (_, n) = entry.map_err(Error::nats_source)?;
        held += n as u64;
    }
    if held >= max {
        return Err(Error::invalid(
            ErrorCode::QueueFull,
            format!("queue {queue:?} holds {held} tasks, its max_pending is {max}; retry later"),
        ));
    }
    Ok(())
}

/// Where a task is now.
pub(super) async fn get_task(s: &CoordinatorState, task_id: &str) -> Result<TaskInfo, Error> {
    validate_task_id(task_id)?;
    let info = |status, result: Option<TaskResult>, node_id, queue| TaskInfo {
        task_id: task_id.to_string(),
        status,
        result,
        node_id,
        queue,
        throttled_by: None,
    };
    if let Some(r) = read_result(&s.results, &s.subjects, task_id).await {
        return Ok(info(r.status, Some(r), None, None));
    }
    if let Some(v) = lookup_running(s, task_id).await {
        let node = v["node_id"].as_str().map(str::to_string);
        let queue = v["queue"].as_str().map(str::to_string);
        // A node that holds the task back on a limit says so (§15).
        if let Some(limit) = v["throttled_by"].as_str() {
            let mut i = info(TaskStatus::Queued, None, None, queue);
            i.throttled_by = Some(limit.to_string());
            return Ok(i);
        }
        return Ok(info(TaskStatus::Running, None, node, queue));
    }
    if let Some((_, queue)) = find_queued(s, task_id).await? {
        return Ok(info(TaskStatus::Queued, None, None, Some(queue)));
    }
    // It may have finished while we looked.
    if let Some(r) = read_result(&s.results, &s.subjects, task_id).await {
        return Ok(info(r.status, Some(r), None, None));
    }
    Ok(info(TaskStatus::Unknown, None, None, None))
}

async fn lookup_running(s: &CoordinatorState, task_id: &str) -> Option<Value> {
    let body = json_body(&json!({ "task_id": task_id }));
    let m = tokio::time::timeout(
        LOOKUP_WAIT,
        s.client.request(s.subjects.task_lookup(), body),
    )
    .await
    .ok()?
    .ok()?;
    serde_json::from_slice(&m.payload).ok()
}

#[derive(Deserialize)]
struct IdOnly {
    #[serde(default)]
    id: Option<String>,
}

/// Finds a queued (or delayed) copy of a task: its stream sequence and queue.
async fn find_queued(s: &CoordinatorState, task_id: &str) -> Result<Option<(u64, String)>, Error> {
    let queue_of = |subject: &str| -> String {
        let prefix_len = s.subjects.prefix().split('.').count();
        subject
            .split('.')
            .nth(prefix_len + 1)
            .unwrap_or_default()
            .to_string()
    };
    // Default ids name their sequence.
    let default_prefix = format!("{}-", s.subjects.tasks_stream());
    if let Some(seq) = task_id
        .strip_prefix(&default_prefix)
        .and_then(|n| n.parse::<u64>().ok())
    {
        return Ok(s
            .tasks
            .direct_get(seq)
            .await
            .ok()
            .map(|m| (m.sequence, queue_of(&m.subject))));
    }
    let info = s.tasks.get_info().await.map_err(Error::nats_source)?;
    let (first, last) = (info.state.first_sequence, info.state.last_sequence);
    let mut seq = first.max(last.saturating_sub(SCAN_LIMIT));
    while seq <= last && info.state.messages > 0 {
        let m = match s.tasks.direct_get_next_for_subject(">", Some(seq)).await {
            Ok(m) => m,
            Err(_) => break,
        };
        let by_header = m
            .headers
            .get("Nats-Msg-Id")
            .map(|v| v.as_str() == task_id)
            .unwrap_or(false);
        let by_body = || {
            serde_json::from_slice::<IdOnly>(&m.payload)
                .ok()
                .and_then(|i| i.id)
                .is_some_and(|i| i == task_id)
        };
        if by_header || by_body() {
            return Ok(Some((m.sequence, queue_of(&m.subject))));
        }
        seq = m.sequence + 1;
    }
    Ok(None)
}

async fn cancels(s: &CoordinatorState) -> Result<kv::Store, Error> {
    crate::store::cancels_bucket(&s.js, &s.subjects, s.cfg.replicas).await
}

async fn cancel(s: &CoordinatorState, body: &[u8]) -> Result<Value, Error> {
    let r: TaskRef = parse_object(body)?;
    let current = get_task(s, &r.task_id).await?;
    match current.status {
        TaskStatus::Unknown => {
            return Err(Error::invalid(
                ErrorCode::UnknownTask,
                format!("unknown task {:?}", r.task_id),
            ))
        }
        st if st.is_terminal() => {
            return Err(Error::invalid(
                ErrorCode::AlreadyFinished,
                format!("task {:?} already ended {}", r.task_id, st.as_str()),
            ))
        }
        _ => {}
    }
    // Nodes watch this bucket: a running attempt is cancelled at once, a
    // queued copy is skipped if a node picks it up before we remove it.
    let cancels = cancels(s).await?;
    let key = encode_key(&r.task_id);
    write_settled(|| cancels.put(&key, now_rfc3339().into()))
        .await
        .map_err(Error::nats_source)?;
    let result = TaskResult {
        task_id: r.task_id.clone(),
        status: TaskStatus::Cancelled,
        result: Value::Null,
        error: Some("cancelled".into()),
        attempts: 0,
        node_id: current.node_id.clone(),
        started_at: None,
        finished_at: now_rfc3339(),
        duration_s: 0.0,
        lost_leases: 0,
        queue: None,
        task_type: None,
    };
    if current.status == TaskStatus::Queued {
        // Ours is the only result: nobody ran it.
        if !write_settled(|| store_result(&s.js, &s.subjects, &result)).await? {
            return already_finished(s, &r.task_id).await;
        }
        if let Some((seq, _)) = find_queued(s, &r.task_id).await? {
            let _ = s.tasks.delete_message(seq).await;
        }
    } else {
        // Running: the node stores the result when the handler stops; wait
        // for it briefly so the reply says what happened.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
        loop {
            if let Some(res) = read_result(&s.results, &s.subjects, &r.task_id).await {
                if res.status != TaskStatus::Cancelled {
                    return already_finished(s, &r.task_id).await;
                }
                break;
            }
            if tokio::time::Instant::now() > deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    Ok(json!({
        "ok": true,
        "task_id": r.task_id,
        "status": "cancelled",
        "previous_status": current.status,
    }))
}

async fn already_finished(s: &CoordinatorState, task_id: &str) -> Result<Value, Error> {
    let st = read_result(&s.results, &s.subjects, task_id)
        .await
        .map(|r| r.status.as_str())
        .unwrap_or("finished");
    Err(Error::invalid(
        ErrorCode::AlreadyFinished,
        format!("task {task_id:?} already ended {st}"),
    ))
}

pub(super) async fn cluster_status(s: &CoordinatorState) -> Result<ClusterStatus, Error> {
    let nodes = s.view.nodes();
    let mut st = ClusterStatus {
        total_nodes: nodes.len() as u64,
        healthy_nodes: nodes.iter().filter(|n| n.health == Health::Healthy).count() as u64,
        draining_nodes: nodes
            .iter()
            .filter(|n| n.health == Health::Draining)
            .count() as u64,
        total_processes: nodes
            .iter()
            .filter_map(|n| n.metadata.get("processes").and_then(Value::as_u64))
            .sum(),
        leader: s.leader.current(),
        ..Default::default()
    };
    let mut queues: BTreeMap<String, QueueStats> = BTreeMap::new();
    for n in &nodes {
        for q in &n.queues {
            queues.entry(q.clone()).or_default();
        }
        if let Some(Value::Object(m)) = n.metadata.get("running_by_queue") {
            for (q, c) in m {
                queues.entry(q.clone()).or_default().running += c.as_u64().unwrap_or(0);
            }
        }
    }
    // Messages still in the work-queue stream per queue: queued plus the
    // running ones (acked messages are gone).
    let mut in_stream: BTreeMap<String, u64> = BTreeMap::new();
    let mut subjects = s
        .tasks
        .info_with_subjects(s.subjects.tasks_wildcard())
        .await
        .map_err(Error::nats_source)?;
    let prefix_len = s.subjects.prefix().split('.').count();
    while let Some(Ok((subject, count))) = subjects.next().await {
        let parts: Vec<&str> = subject.split('.').collect();
        if let (Some(q), Some(p)) = (parts.get(prefix_len + 1), parts.get(prefix_len + 2)) {
            if p.parse::<Priority>().is_ok() {
                *in_stream.entry(q.to_string()).or_default() += count as u64;
            }
        }
    }
    for (q, n) in in_stream {
        let e = queues.entry(q).or_default();
        e.pending = n.saturating_sub(e.running);
    }
    st.queues = queues;
    st.runs = super::runs::counts(s).await;
    Ok(st)
}

/// Opens the task stream handle.
pub(super) async fn tasks_stream(
    js: &jetstream::Context,
    subjects: &crate::wire::subjects::Subjects,
) -> Result<stream::Stream, Error> {
    crate::store::open_stream(js, &subjects.tasks_stream()).await
}
