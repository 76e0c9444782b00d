//! The agent-coordinator routes (seed 001): register, discover,
//! heartbeat, submit by capability, and status.

use super::*;

// ---- agent coordinator routes -------------------------------------------

#[derive(Debug, Clone, Deserialize, serde::Serialize)]
pub(super) struct Endpoints {
    pub(super) http: Option<String>,
}

#[derive(Debug, Clone, Deserialize, serde::Serialize)]
pub(super) struct RegisterRequest {
    pub(super) agent_id: String,
    #[serde(default)]
    agent_type: Option<String>,
    #[serde(default)]
    capabilities: Vec<String>,
    #[serde(default)]
    services: Vec<String>,
    pub(super) endpoints: Endpoints,
    #[serde(default)]
    metadata: Map<String, Value>,
}

/// Queue a registered agent's bridge serves.
pub(super) fn agent_queue(agent_id: &str) -> String {
    format!("agent-{agent_id}")
}

/// Task type of tasks sent to agents.
pub(super) const AGENT_TASK: &str = "agent";

#[utoipa::path(post, path = "/agents/register", tag = "agents", request_body(content = Object, content_type = "application/json", description = "JSON object"), responses((status = 200, description = "{status: success, message, agent_id, registered_at}"), (status = 400, description = "invalid JSON or fields"), (status = 401, description = "missing or wrong bearer token"), (status = 503, description = "NATS unreachable or no answer in time")))]
pub(super) async fn agent_register(State(app): State<AppState>, body: Bytes) -> ApiResult {
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
    app.cfg
        .agent_allow
        .check(&url)
        .await
        .map_err(ApiError::from)?;
    // The registration lives in NATS (any sidecar serves the bridge); a
    // re-registration keeps its first time and refreshes the TTL.
    let known = app.timed("kv", app.registry.get(&req.agent_id)).await?;
    let registered_at = known.map(|r| r.registered_at).unwrap_or_else(now_rfc3339);
    let rec = super::bridges::AgentRecord {
        req: req.clone(),
        registered_at: registered_at.clone(),
    };
    app.timed("kv", app.registry.put(&rec)).await?;
    let here = app
        .agents
        .lock()
        .expect("agents poisoned")
        .contains_key(&req.agent_id);
    if !here && !app.timed("kv", app.registry.bridged(&req.agent_id)).await? {
        app.timed("node", super::bridges::start_bridge(&app, &rec))
            .await?;
    }
    ok(json!({
        "status": "success",
        "message": format!("Agent {} registered successfully", req.agent_id),
        "agent_id": req.agent_id,
        "registered_at": registered_at,
    }))
}

/// The in-process node that bridges a registered agent.
pub(super) fn bridge_config(app: &App, req: &RegisterRequest, url: &str) -> NodeConfig {
    let mut cfg = NodeConfig::new(req.agent_id.clone());
    cfg.prefix = app.cfg.prefix.clone();
    cfg.queues = vec![agent_queue(&req.agent_id)];
    cfg.capabilities = req.capabilities.clone();
    cfg.url = Some(url.to_string());
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
        http: Some(url.to_string()),
    }];
    cfg
}

#[utoipa::path(post, path = "/agents/{id}/heartbeat", tag = "agents", params(("id" = String, Path, description = "agent id")), responses((status = 200, description = "{status: success}"), (status = 404, description = "agent not registered here"), (status = 401, description = "missing or wrong bearer token"), (status = 503, description = "NATS unreachable or no answer in time")))]
pub(super) async fn agent_heartbeat(
    State(app): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult {
    validate_id("agent_id", &id).map_err(ApiError::from)?;
    let rec = app.timed("kv", app.registry.get(&id)).await?;
    if let Some(rec) = rec {
        app.timed("kv", app.registry.put(&rec)).await?;
        ok(json!({"status": "success", "agent_id": id}))
    } else {
        Err(err(
            StatusCode::NOT_FOUND,
            "unknown_agent",
            format!("agent {id:?} is not registered here; register it again"),
        ))
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct DiscoverRequest {
    #[serde(default)]
    status: Option<String>,
    #[serde(default)]
    agent_type: Option<String>,
    #[serde(default)]
    capabilities: Vec<String>,
}

pub(super) fn agent_view(n: &crate::wire::protocol::NodeInfo) -> Value {
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
pub(super) async fn agent_discover(State(app): State<AppState>, body: Bytes) -> ApiResult {
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
pub(super) struct SubmitBody {
    task_data: Value,
    #[serde(default)]
    priority: Option<String>,
    #[serde(default)]
    requirements: crate::wire::protocol::Requirements,
}

#[utoipa::path(post, path = "/tasks/submit", tag = "agents", request_body(content = Object, content_type = "application/json", description = "JSON object"), responses((status = 200, description = "{status: success, task_id}"), (status = 400, description = "invalid JSON or fields"), (status = 503, description = "no agent or worker can take it"), (status = 401, description = "missing or wrong bearer token"), (status = 503, description = "NATS unreachable or no answer in time")))]
pub(super) async fn tasks_submit(
    State(app): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult {
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
    // The healthy agents with the capabilities; the strategy picks one.
    let caps = &b.requirements.capabilities;
    let capable = super::bridges::capable(&nodes, caps, None);
    let agent = super::balance::pick(app.cfg.agent_strategy, &capable, &app.turn);
    let task_type = b.task_data.get("type").and_then(Value::as_str);
    let (queue, mut envelope) = match (agent, task_type) {
        (Some(a), _) => (
            agent_queue(&a.node_id),
            TaskEnvelope::new(AGENT_TASK, b.task_data.clone()),
        ),
        // No agent can take it now, and it is not a worker task: it waits
        // for an agent with the capabilities to register.
        (None, t) if !caps.is_empty() || t.is_none() => (
            super::bridges::PENDING_QUEUE.to_string(),
            TaskEnvelope::new(AGENT_TASK, b.task_data.clone()),
        ),
        (None, t) => {
            let t = t.unwrap_or_default();
            let payload = b
                .task_data
                .get("payload")
                .cloned()
                .unwrap_or(b.task_data.clone());
            ("default".to_string(), TaskEnvelope::new(t, payload))
        }
    };
    envelope
        .metadata
        .insert("requirements".into(), json!({"capabilities": caps}));
    // The caller's trace goes on with the task (else the client starts one).
    let caller_trace = headers
        .get(crate::wire::trace::TRACEPARENT)
        .and_then(|v| v.to_str().ok())
        .and_then(crate::wire::trace::TraceParent::parse);
    if let Some(tp) = caller_trace {
        let tp = Value::String(tp.to_string());
        envelope
            .metadata
            .insert(crate::wire::trace::TRACEPARENT.into(), tp);
    }
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
pub(super) async fn tasks_status(State(app): State<AppState>) -> ApiResult {
    let nodes = app.timed("api", app.client.nodes()).await?;
    let counts = app.timed("api", app.client.durable_counts()).await?;
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
            "tasks_distributed": counts.published,
            "tasks_completed": counts.results,
            "tasks_failed": counts.dead,
            "load_balancer_stats": {
                "strategy": app.cfg.agent_strategy.as_str(),
                "active_agents": active.len(),
                "total_assignments": counts.published,
                "avg_agent_load": avg,
                "agent_health": active.iter().map(|n| (n.node_id.clone(), json!(super::balance::health_score(n)))).collect::<Map<String, Value>>(),
            }
        }
    }))
}
