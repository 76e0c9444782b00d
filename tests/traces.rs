//! W3C trace context and OTLP export (contract §14), from outside: a
//! `jetweave node` process with `--otlp-endpoint` pointing at a small
//! OTLP/HTTP collector in this test; tasks carry `traceparent` as a
//! message header, in `metadata`, or get one from the client library or
//! the sidecar; exec and http handlers report what they were handed.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use serde_json::{json, Value};

/// An OTLP/HTTP (JSON) collector: every span it received.
#[derive(Clone, Default)]
struct Collector {
    spans: Arc<Mutex<Vec<Value>>>,
}

impl Collector {
    async fn start() -> (Self, String) {
        let c = Collector::default();
        let store = c.spans.clone();
        let app = axum::Router::new().route(
            "/v1/traces",
            axum::routing::post(move |body: axum::body::Bytes| async move {
                let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                let mut spans = store.lock().unwrap();
                for rs in v["resourceSpans"].as_array().into_iter().flatten() {
                    for ss in rs["scopeSpans"].as_array().into_iter().flatten() {
                        spans.extend(ss["spans"].as_array().into_iter().flatten().cloned());
                    }
                }
                axum::Json(json!({}))
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        (c, url)
    }

    /// The spans of `trace_id` once `names` have all arrived.
    async fn trace(&self, trace_id: &str, names: &[&str]) -> Vec<Value> {
        wait_for(
            &format!("spans {names:?} of trace {trace_id}"),
            Duration::from_secs(20),
            || async {
                let spans: Vec<Value> = self
                    .spans
                    .lock()
                    .unwrap()
                    .iter()
                    .filter(|s| s["traceId"] == trace_id)
                    .cloned()
                    .collect();
                names
                    .iter()
                    .all(|n| spans.iter().any(|s| s["name"] == *n))
                    .then_some(spans)
            },
        )
        .await
    }
}

fn named<'a>(spans: &'a [Value], name: &str) -> &'a Value {
    spans.iter().find(|s| s["name"] == name).unwrap()
}

/// An http handler that answers with the `traceparent` header it got.
async fn header_echo() -> String {
    let app = axum::Router::new().route(
        "/",
        axum::routing::post(|headers: axum::http::HeaderMap| async move {
            let tp = headers
                .get("traceparent")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            axum::Json(json!({"tp": tp}))
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    url
}

/// A node config with an exec handler `tp` (prints `$TRACEPARENT`) and an
/// http handler `tph` (the header echo).
fn handlers_config(dir: &std::path::Path, http: &str) -> std::path::PathBuf {
    let path = dir.join("node.toml");
    let toml = format!(
        "[[handler]]\ntype = \"tp\"\nexec = [\"sh\", \"-c\", \"printf '{{\\\"tp\\\": \\\"%s\\\"}}' \\\"$TRACEPARENT\\\"\"]\n\
         [[handler]]\ntype = \"tph\"\nhttp = \"{http}\"\n"
    );
    std::fs::write(&path, toml).unwrap();
    path
}

fn parts(tp: &str) -> (String, String) {
    let p: Vec<&str> = tp.split('-').collect();
    assert_eq!(p.len(), 4, "{tp:?}");
    (p[1].to_string(), p[2].to_string())
}

#[tokio::test]
async fn a_tasks_trace_is_continued_by_the_node_and_handed_to_its_handlers() {
    let server = NatsServer::start();
    let _c = start_coordinator(&server, "c1").await;
    let (collector, otlp) = Collector::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = handlers_config(dir.path(), &header_echo().await);
    let config = config.to_str().unwrap();
    let url = server.url();
    let args = [
        "--nats-url",
        &url,
        "--otlp-endpoint",
        &otlp,
        "node",
        "--node-id",
        "n1",
        "--config",
        config,
        "--node-ttl",
        "2",
        "--heartbeat-interval",
        "0.5",
    ];
    let env = [("OTEL_BSP_SCHEDULE_DELAY", "100")];
    let _node = Proc::spawn_env(&args, &env);
    let api = api_client(&server).await;
    wait_for("n1 up", Duration::from_secs(15), || async {
        let nodes = api.nodes().await.ok()?;
        nodes.iter().any(|n| n.node_id == "n1").then_some(())
    })
    .await;

    // A traceparent header on the task message: the node's spans are in
    // that trace, under that span; the exec handler gets its own span's.
    let (trace, caller) = ("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7");
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("traceparent", format!("00-{trace}-{caller}-01").as_str());
    headers.insert("Nats-Msg-Id", "traced-1");
    let js = async_nats::jetstream::new(api.nats().clone());
    let body = json!({"id": "traced-1", "type": "tp", "payload": {}}).to_string();
    js.publish_with_headers("weave.tasks.default.normal", headers, body.into())
        .await
        .unwrap()
        .await
        .unwrap();
    let r = api.wait("traced-1", Duration::from_secs(20)).await.unwrap();
    let (t, handler_span) = parts(r.result["tp"].as_str().unwrap());
    assert_eq!(t, trace, "the exec handler is in the caller's trace");
    let spans = collector
        .trace(trace, &["task.attempt", "task.handler", "task.result"])
        .await;
    let attempt = named(&spans, "task.attempt");
    assert_eq!(attempt["parentSpanId"], caller);
    let handler = named(&spans, "task.handler");
    assert_eq!(handler["parentSpanId"], attempt["spanId"]);
    assert_eq!(
        handler["spanId"],
        handler_span.as_str(),
        "TRACEPARENT is the handler span"
    );
    assert_eq!(
        named(&spans, "task.result")["parentSpanId"],
        attempt["spanId"]
    );

    // metadata.traceparent, to an http handler: the header it gets.
    let (trace2, caller2) = ("11112222333344445555666677778888", "aaaabbbbccccdddd");
    let mut req = jetweave::protocol::SubmitRequest {
        envelope: jetweave::protocol::TaskEnvelope::new("tph", json!({})),
        ..Default::default()
    };
    req.envelope.metadata.insert(
        "traceparent".into(),
        json!(format!("00-{trace2}-{caller2}-01")),
    );
    let id = api.submit(&req).await.unwrap().task_id;
    let r = api.wait(&id, Duration::from_secs(20)).await.unwrap();
    let (t, handler_span) = parts(r.result["tp"].as_str().unwrap());
    assert_eq!(t, trace2);
    let spans = collector
        .trace(trace2, &["task.attempt", "task.handler"])
        .await;
    assert_eq!(named(&spans, "task.attempt")["parentSpanId"], caller2);
    assert_eq!(
        named(&spans, "task.handler")["spanId"],
        handler_span.as_str()
    );

    // No trace from the caller: the client library starts one.
    let req = jetweave::protocol::SubmitRequest {
        envelope: jetweave::protocol::TaskEnvelope::new("tp", json!({})),
        ..Default::default()
    };
    let id = api.submit(&req).await.unwrap().task_id;
    let r = api.wait(&id, Duration::from_secs(20)).await.unwrap();
    let (t, _) = parts(r.result["tp"].as_str().unwrap());
    collector
        .trace(&t, &["task.attempt", "task.handler", "task.result"])
        .await;
}

/// Without an OTLP endpoint nothing is exported and handlers get the
/// task's own traceparent; the sidecar continues a caller's trace.
#[tokio::test]
async fn without_otlp_handlers_get_the_tasks_own_traceparent() {
    let server = NatsServer::start();
    let _c = start_coordinator(&server, "c1").await;
    let mut cfg = node_config("n1");
    cfg.handlers.push(jetweave::config::HandlerSpec {
        task_type: "tph".into(),
        exec: None,
        http: Some(header_echo().await),
    });
    let _n = start_node(&server, cfg).await;
    let api = api_client(&server).await;
    let (_sc, base) = spawn_sidecar(&server, &[]).await;
    let http = reqwest::Client::new();
    let tp = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    let v: Value = http
        .post(format!("{base}/tasks/submit"))
        .header("traceparent", tp)
        .json(&json!({"task_data": {"type": "tph", "payload": {}}}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = v["task_id"].as_str().expect("task id").to_string();
    let r = api.wait(&id, Duration::from_secs(20)).await.unwrap();
    assert_eq!(r.result["tp"], tp, "handed on unchanged");
}
