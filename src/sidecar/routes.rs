//! Per-node routes (`/health`, `/processes/...`, also under
//! `/nodes/{node_id}/...`) and the native task, node and run routes.

use super::*;

// ---- per-node routes ----------------------------------------------------

pub(super) async fn health_impl(app: &App, node: &str) -> ApiResult {
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

pub(super) async fn status_impl(app: &App, node: &str) -> ApiResult {
    ok(app.ctl(node, "status", json!({})).await?)
}

pub(super) async fn processes_impl(app: &App, node: &str) -> ApiResult {
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

pub(super) async fn process_status_impl(app: &App, node: &str, name: &str) -> ApiResult {
    validate_id("process name", name).map_err(ApiError::from)?;
    let r = app
        .ctl(node, &format!("process.{name}.status"), json!({}))
        .await?;
    ok(r["process"].clone())
}

pub(super) async fn process_verb_impl(
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

#[utoipa::path(get, path = "/health", tag = "per-node", responses((status = 200, description = "{status, node_id, process_count}; on a sidecar without --node its own health: node_id null, total_nodes, healthy_nodes, leader"), (status = 404, description = "unknown node"), (status = 401, description = "missing or wrong bearer token"), (status = 503, description = "NATS unreachable or no answer in time")))]
pub(super) async fn health(State(app): State<AppState>) -> ApiResult {
    match app.cfg.node.clone() {
        Some(node) => health_impl(&app, &node).await,
        None => cluster_health(&app).await,
    }
}

/// `/health` of a sidecar without `--node`: the sidecar reaches NATS and
/// the API answers (else 503); what it sees of the cluster.
async fn cluster_health(app: &App) -> ApiResult {
    let st = app.client.cluster_status().await.map_err(ApiError::from)?;
    ok(json!({
        "status": "healthy",
        "node_id": null,
        "process_count": st.total_processes,
        "total_nodes": st.total_nodes,
        "healthy_nodes": st.healthy_nodes,
        "leader": st.leader,
    }))
}
#[utoipa::path(get, path = "/status", tag = "per-node", responses((status = 200, description = "the node's full status"), (status = 404, description = "unknown node"), (status = 401, description = "missing or wrong bearer token"), (status = 503, description = "NATS unreachable or no answer in time")))]
pub(super) async fn status(State(app): State<AppState>) -> ApiResult {
    status_impl(&app, &this_node(&app)?).await
}
#[utoipa::path(get, path = "/processes", tag = "per-node", responses((status = 200, description = "{node_id, processes: [{name, state, process_id}]}"), (status = 401, description = "missing or wrong bearer token"), (status = 503, description = "NATS unreachable or no answer in time")))]
pub(super) async fn processes(State(app): State<AppState>) -> ApiResult {
    processes_impl(&app, &this_node(&app)?).await
}
#[utoipa::path(get, path = "/processes/{name}/status", tag = "per-node", params(("name" = String, Path, description = "process name")), responses((status = 200, description = "the process"), (status = 404, description = "unknown process"), (status = 401, description = "missing or wrong bearer token"), (status = 503, description = "NATS unreachable or no answer in time")))]
pub(super) async fn process_status(
    State(app): State<AppState>,
    Path(name): Path<String>,
) -> ApiResult {
    process_status_impl(&app, &this_node(&app)?, &name).await
}
#[utoipa::path(post, path = "/processes/{name}/{verb}", tag = "per-node", params(("name" = String, Path, description = "process name"), ("verb" = String, Path, description = "start, stop, restart or event")), request_body(content = Object, content_type = "application/json", description = "JSON object"), responses((status = 200, description = "{status: started|stopped|restarted, name}"), (status = 202, description = "event: {status: injected, event_id, process}"), (status = 400, description = "invalid JSON or fields"), (status = 404, description = "unknown process"), (status = 409, description = "process stopped"), (status = 401, description = "missing or wrong bearer token"), (status = 503, description = "NATS unreachable or no answer in time")))]
pub(super) async fn process_verb(
    State(app): State<AppState>,
    Path((name, verb)): Path<(String, String)>,
    body: Bytes,
) -> ApiResult {
    process_verb_impl(&app, &this_node(&app)?, &name, &verb, body).await
}
#[utoipa::path(get, path = "/nodes/{node}/health", tag = "per-node", params(("node" = String, Path, description = "node id")), responses((status = 200, description = "{status, node_id, process_count}; on a sidecar without --node its own health: node_id null, total_nodes, healthy_nodes, leader"), (status = 404, description = "unknown node"), (status = 401, description = "missing or wrong bearer token"), (status = 503, description = "NATS unreachable or no answer in time")))]
pub(super) async fn health_of(State(app): State<AppState>, Path(node): Path<String>) -> ApiResult {
    health_impl(&app, &node).await
}
#[utoipa::path(get, path = "/nodes/{node}/status", tag = "per-node", params(("node" = String, Path, description = "node id")), responses((status = 200, description = "the node's full status"), (status = 404, description = "unknown node"), (status = 401, description = "missing or wrong bearer token"), (status = 503, description = "NATS unreachable or no answer in time")))]
pub(super) async fn status_of(State(app): State<AppState>, Path(node): Path<String>) -> ApiResult {
    status_impl(&app, &node).await
}
#[utoipa::path(get, path = "/nodes/{node}/processes", tag = "per-node", params(("node" = String, Path, description = "node id")), responses((status = 200, description = "{node_id, processes}"), (status = 404, description = "unknown node"), (status = 401, description = "missing or wrong bearer token"), (status = 503, description = "NATS unreachable or no answer in time")))]
pub(super) async fn processes_of(
    State(app): State<AppState>,
    Path(node): Path<String>,
) -> ApiResult {
    processes_impl(&app, &node).await
}
#[utoipa::path(get, path = "/nodes/{node}/processes/{name}/status", tag = "per-node", params(("node" = String, Path, description = "node id"), ("name" = String, Path, description = "process name")), responses((status = 200, description = "the process"), (status = 404, description = "unknown node or process"), (status = 401, description = "missing or wrong bearer token"), (status = 503, description = "NATS unreachable or no answer in time")))]
pub(super) async fn process_status_of(
    State(app): State<AppState>,
    Path((node, name)): Path<(String, String)>,
) -> ApiResult {
    process_status_impl(&app, &node, &name).await
}
#[utoipa::path(post, path = "/nodes/{node}/processes/{name}/{verb}", tag = "per-node", params(("node" = String, Path, description = "node id"), ("name" = String, Path, description = "process name"), ("verb" = String, Path, description = "start, stop, restart or event")), request_body(content = Object, content_type = "application/json", description = "JSON object"), responses((status = 200, description = "{status, name}"), (status = 202, description = "event injected"), (status = 400, description = "invalid JSON or fields"), (status = 404, description = "unknown node or process"), (status = 401, description = "missing or wrong bearer token"), (status = 503, description = "NATS unreachable or no answer in time")))]
pub(super) async fn process_verb_of(
    State(app): State<AppState>,
    Path((node, name, verb)): Path<(String, String, String)>,
    body: Bytes,
) -> ApiResult {
    process_verb_impl(&app, &node, &name, &verb, body).await
}

// ---- native routes ------------------------------------------------------

#[utoipa::path(get, path = "/tasks/{id}", tag = "tasks", params(("id" = String, Path, description = "task id")), responses((status = 200, description = "{task_id, status, result?}"), (status = 404, description = "unknown task"), (status = 401, description = "missing or wrong bearer token"), (status = 503, description = "NATS unreachable or no answer in time")))]
pub(super) async fn task_get(State(app): State<AppState>, Path(id): Path<String>) -> ApiResult {
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
pub(super) struct WaitQuery {
    wait_s: Option<f64>,
}

#[utoipa::path(get, path = "/tasks/{id}/result", tag = "tasks", params(("id" = String, Path, description = "task id")), responses((status = 200, description = "the terminal TaskResult"), (status = 202, description = "not finished yet"), (status = 400, description = "invalid wait_s"), (status = 404, description = "unknown task"), (status = 401, description = "missing or wrong bearer token"), (status = 503, description = "NATS unreachable or no answer in time")))]
pub(super) async fn task_result(
    State(app): State<AppState>,
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
pub(super) async fn task_cancel(State(app): State<AppState>, Path(id): Path<String>) -> ApiResult {
    ok(app.api("tasks.cancel", json!({"task_id": id})).await?)
}

#[utoipa::path(get, path = "/cluster/status", tag = "cluster", responses((status = 200, description = "{total_nodes, healthy_nodes, draining_nodes, total_processes, leader, queues}"), (status = 401, description = "missing or wrong bearer token"), (status = 503, description = "NATS unreachable or no answer in time")))]
pub(super) async fn cluster_status(State(app): State<AppState>) -> ApiResult {
    ok(app.api("cluster.status", json!({})).await?)
}

#[utoipa::path(get, path = "/nodes", tag = "cluster", responses((status = 200, description = "{nodes: [NodeInfo]}"), (status = 401, description = "missing or wrong bearer token"), (status = 503, description = "NATS unreachable or no answer in time")))]
pub(super) async fn nodes(State(app): State<AppState>) -> ApiResult {
    ok(app.api("nodes.list", json!({})).await?)
}

#[utoipa::path(post, path = "/nodes/{node}/drain", tag = "cluster", params(("node" = String, Path, description = "node id")), responses((status = 200, description = "{ok, node_id, health: draining}"), (status = 404, description = "unknown node"), (status = 401, description = "missing or wrong bearer token"), (status = 503, description = "NATS unreachable or no answer in time")))]
pub(super) async fn node_drain(
    State(app): State<AppState>,
    Path(node): Path<String>,
    body: Bytes,
) -> ApiResult {
    // The body goes to the node as it is (empty = `{}`): a malformed one
    // is refused there, and the node is not drained.
    let v: Value = parse_body(&body)?;
    ok(app.ctl(&node, "drain", v).await?)
}

#[utoipa::path(post, path = "/nodes/{node}/resume", tag = "cluster", params(("node" = String, Path, description = "node id")), responses((status = 200, description = "{ok, node_id, health: healthy}"), (status = 404, description = "unknown node"), (status = 401, description = "missing or wrong bearer token"), (status = 503, description = "NATS unreachable or no answer in time")))]
pub(super) async fn node_resume(
    State(app): State<AppState>,
    Path(node): Path<String>,
    body: Bytes,
) -> ApiResult {
    let v: Value = parse_body(&body)?;
    ok(app.ctl(&node, "resume", v).await?)
}

#[utoipa::path(post, path = "/runs", tag = "runs", request_body(content = Object, content_type = "application/json", description = "JSON object"), responses((status = 201, description = "the run"), (status = 400, description = "invalid run spec"), (status = 401, description = "missing or wrong bearer token"), (status = 503, description = "NATS unreachable or no answer in time")))]
pub(super) async fn runs_create(State(app): State<AppState>, body: Bytes) -> ApiResult {
    let spec: Value = parse_body(&body)?;
    let r = app.api("runs.create", spec).await?;
    Ok((StatusCode::CREATED, Json(r)).into_response())
}

#[utoipa::path(get, path = "/runs/{id}", tag = "runs", params(("id" = String, Path, description = "run id")), responses((status = 200, description = "{run_id, status, total_shards, completed_shards, assignments}"), (status = 404, description = "unknown run"), (status = 401, description = "missing or wrong bearer token"), (status = 503, description = "NATS unreachable or no answer in time")))]
pub(super) async fn runs_get(State(app): State<AppState>, Path(id): Path<String>) -> ApiResult {
    ok(app.api("runs.get", json!({"run_id": id})).await?)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct DlqQuery {
    queue: Option<String>,
    limit: Option<usize>,
}

#[utoipa::path(get, path = "/dlq", tag = "tasks", params(("queue" = Option<String>, Query, description = "only this queue"), ("limit" = Option<usize>, Query, description = "at most this many (default 100)")), responses((status = 200, description = "{total, entries: [{task_id, queue, type, error, attempts, dead_at}]} oldest first"), (status = 400, description = "invalid query"), (status = 401, description = "missing or wrong bearer token"), (status = 503, description = "NATS unreachable or no answer in time")))]
pub(super) async fn dlq_list(
    State(app): State<AppState>,
    q: Result<Query<DlqQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult {
    let Query(q) = q.map_err(|e| {
        err(
            StatusCode::BAD_REQUEST,
            "invalid_value",
            format!("invalid query: {e}"),
        )
    })?;
    ok(app
        .api("dlq.list", json!({"queue": q.queue, "limit": q.limit}))
        .await?)
}

#[utoipa::path(post, path = "/dlq/{id}/requeue", tag = "tasks", params(("id" = String, Path, description = "the dead task's id")), responses((status = 200, description = "{ok, task_id: NEW, requeued_from: OLD}"), (status = 404, description = "no dead letter for that task"), (status = 401, description = "missing or wrong bearer token"), (status = 503, description = "NATS unreachable or no answer in time")))]
pub(super) async fn dlq_requeue(State(app): State<AppState>, Path(id): Path<String>) -> ApiResult {
    ok(app.api("dlq.requeue", json!({"task_id": id})).await?)
}

#[utoipa::path(get, path = "/limits", tag = "limits", responses((status = 200, description = "{limits: [{limit_id, queue, type, max_running, per_second, burst, running: {limit_key: n}}]}"), (status = 401, description = "missing or wrong bearer token"), (status = 503, description = "NATS unreachable or no answer in time")))]
pub(super) async fn limits_list(State(app): State<AppState>) -> ApiResult {
    ok(app.api("limits.list", json!({})).await?)
}

#[utoipa::path(put, path = "/limits/{id}", tag = "limits", params(("id" = String, Path, description = "limit id")), request_body(content = Object, content_type = "application/json", description = "{queue?, type?, max_running?, per_second?, burst?}"), responses((status = 200, description = "{ok, limit_id}"), (status = 400, description = "invalid limit (code invalid_value)"), (status = 401, description = "missing or wrong bearer token"), (status = 503, description = "NATS unreachable or no answer in time")))]
pub(super) async fn limits_put(
    State(app): State<AppState>,
    Path(id): Path<String>,
    body: Bytes,
) -> ApiResult {
    let mut v: Value = parse_body(&body)?;
    let Some(fields) = v.as_object_mut() else {
        return Err(err(
            StatusCode::BAD_REQUEST,
            "invalid_json",
            "body must be a JSON object",
        ));
    };
    if fields.get("limit_id").is_some_and(|b| b != &json!(id)) {
        return Err(err(
            StatusCode::BAD_REQUEST,
            "invalid_value",
            "limit_id in the body differs from the path",
        ));
    }
    fields.insert("limit_id".into(), json!(id));
    ok(app.api("limits.set", v).await?)
}

#[utoipa::path(delete, path = "/limits/{id}", tag = "limits", params(("id" = String, Path, description = "limit id")), responses((status = 200, description = "{ok, limit_id}"), (status = 404, description = "no such limit"), (status = 401, description = "missing or wrong bearer token"), (status = 503, description = "NATS unreachable or no answer in time")))]
pub(super) async fn limits_delete(
    State(app): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult {
    ok(app.api("limits.delete", json!({"limit_id": id})).await?)
}
