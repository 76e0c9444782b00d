//! The dashboard (contract §14) in a real browser: headless Chromium
//! driven through ChromeDriver (`scripts/install-chromium.sh` installs
//! both; `scripts/test.sh` runs it when they are missing). The page must
//! show a node that joins and drop one that dies, drain a node on a click,
//! requeue a dead letter on a click, follow a run's shards and the event
//! log, and ask for the sidecar's token.
//!
//! `JETWEAVE_SCREENSHOTS=<dir>` saves the three views as PNG files there
//! (that is how docs/ui-*.png are made).

mod common;

use std::time::Duration;

use common::*;
use fantoccini::{Client as Browser, ClientBuilder, Locator};
use serde_json::{json, Value};

const TOKEN: &str = "ui-test-token";

/// ChromeDriver on a free port, killed on drop.
struct Driver {
    _proc: std::process::Child,
    url: String,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self._proc.kill();
        let _ = self._proc.wait();
    }
}

fn tool(env: &str, default: &str) -> String {
    let path = std::env::var(env).unwrap_or_else(|_| default.into());
    assert!(
        std::path::Path::new(&path).exists(),
        "{path} is missing: run scripts/install-chromium.sh (or set {env})"
    );
    path
}

async fn driver() -> Driver {
    let bin = tool("JETWEAVE_CHROMEDRIVER", "/usr/bin/chromedriver");
    let port = free_port();
    let proc = std::process::Command::new(bin)
        .arg(format!("--port={port}"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start chromedriver");
    let url = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    wait_for("chromedriver up", Duration::from_secs(20), || async {
        let r = http.get(format!("{url}/status")).send().await.ok()?;
        r.status().is_success().then_some(())
    })
    .await;
    Driver { _proc: proc, url }
}

/// A headless Chromium with a fresh profile and no background traffic
/// (this machine's network is closed).
async fn browser(d: &Driver, profile: &std::path::Path) -> Browser {
    let chromium = tool("JETWEAVE_CHROMIUM", "/usr/bin/chromium");
    let args = [
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--window-size=1500,1100",
        &format!("--user-data-dir={}", profile.display()),
    ];
    let caps = json!({"goog:chromeOptions": {"binary": chromium, "args": args}});
    let Value::Object(caps) = caps else {
        unreachable!()
    };
    let connector = hyper_util::client::legacy::connect::HttpConnector::new();
    ClientBuilder::new(connector)
        .capabilities(caps)
        .connect(&d.url)
        .await
        .expect("browser session")
}

async fn sidecar(server: &NatsServer) -> (Proc, String) {
    spawn_sidecar(server, &["--auth-token", TOKEN]).await
}

/// Waits until `css` matches (or, with `present` false, matches nothing).
async fn wait_css(b: &Browser, what: &str, css: &str, present: bool) {
    wait_for(what, Duration::from_secs(20), || async {
        let found = b.find_all(Locator::Css(css)).await.ok()?;
        (found.is_empty() != present).then_some(())
    })
    .await
}

async fn click(b: &Browser, css: &str) {
    b.find(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("{css}: {e}"))
        .click()
        .await
        .unwrap_or_else(|e| panic!("click {css}: {e}"));
}

/// A task that dies (two failed attempts) on `queue`.
async fn dead_letter(c: &jetweave::Client, id: &str) {
    publish_task(
        c.nats(),
        "weave.tasks.default.normal",
        Some(id),
        json!({"type": "fail", "payload": {"times": -1}, "max_attempts": 2, "backoff_s": [0.1]}),
    )
    .await;
    let r = c.wait(id, Duration::from_secs(20)).await.expect("dead");
    assert_eq!(r.status.as_str(), "dead");
}

/// The page's data is behind the token; the page itself is not.
async fn token_guards_the_data(base: &str) {
    let page = reqwest::get(format!("{base}/ui")).await.unwrap();
    assert_eq!(page.status(), 200);
    assert!(page.text().await.unwrap().contains("ui/stream"));
    let stream = reqwest::get(format!("{base}/ui/stream")).await.unwrap();
    assert_eq!(stream.status(), 401, "the stream needs the token");
}

async fn screenshot(b: &Browser, name: &str) {
    let Ok(dir) = std::env::var("JETWEAVE_SCREENSHOTS") else {
        return;
    };
    let png = b.screenshot().await.expect("screenshot");
    std::fs::write(format!("{dir}/ui-{name}.png"), png).expect("write screenshot");
}

#[tokio::test]
async fn the_dashboard_follows_nodes_drains_and_requeues_in_a_browser() {
    let server = NatsServer::start();
    let _c = start_coordinator(&server, "c1").await;
    let _n1 = start_node(&server, node_config("n1")).await;
    let api = api_client(&server).await;
    let (_sc, base) = sidecar(&server).await;
    token_guards_the_data(&base).await;

    let d = driver().await;
    let profile = tempfile::tempdir().unwrap();
    let b = browser(&d, profile.path()).await;
    b.goto(&format!("{base}/ui")).await.expect("open /ui");
    // No token yet: the page asks for one, then goes live.
    wait_css(&b, "token prompt", "#login:not([hidden])", true).await;
    screenshot(&b, "token").await;
    b.find(Locator::Css("#token"))
        .await
        .unwrap()
        .send_keys(TOKEN)
        .await
        .unwrap();
    click(&b, "#login-save").await;
    wait_css(&b, "n1 listed", "tr[data-node='n1']", true).await;

    // A node that joins is listed; one that dies is dropped.
    let mut n2 = spawn_node_proc(&server, "n2").await;
    wait_css(&b, "n2 listed", "tr[data-node='n2']", true).await;
    n2.kill9();
    wait_css(&b, "n2 dropped", "tr[data-node='n2']", false).await;

    // A run's shards, and a dead letter, show up.
    api.create_run(
        &json!({"run_id": "ui-run", "dataset_id": "ds", "total_items": 40,
        "shard_size": 10, "type": "count", "payload": {"item_ms": 20}}),
    )
    .await
    .unwrap();
    dead_letter(&api, "ui-dead").await;
    wait_css(&b, "run listed", "tr[data-run='ui-run']", true).await;
    wait_css(
        &b,
        "dead letter listed",
        "#dlq tr[data-task='ui-dead']",
        true,
    )
    .await;
    wait_css(&b, "event log", "#events li[data-kind='run.created']", true).await;
    screenshot(&b, "overview").await;

    // The requeue button runs the dead task again: it leaves the DLQ.
    click(&b, "button.requeue[data-task='ui-dead']").await;
    wait_for("ui-dead requeued", Duration::from_secs(10), || async {
        let l = api.dlq_list(None, None).await.ok()?;
        (!l.entries.iter().any(|e| e.task_id == "ui-dead")).then_some(())
    })
    .await;
    wait_css(&b, "ui-dead gone", "#dlq tr[data-task='ui-dead']", false).await;
    wait_css(
        &b,
        "run done",
        "tr[data-run='ui-run'] td:nth-child(4)",
        true,
    )
    .await;

    // The drain button drains the node; the page shows it draining.
    click(&b, "button.drain[data-node='n1']").await;
    wait_for("n1 draining", Duration::from_secs(10), || async {
        let nodes = api.nodes().await.ok()?;
        let n1 = nodes.iter().find(|n| n.node_id == "n1")?;
        (n1.health == jetweave::protocol::Health::Draining).then_some(())
    })
    .await;
    let draining = "tr[data-node='n1'][data-health='draining'] button.resume";
    wait_css(&b, "n1 shown draining", draining, true).await;
    screenshot(&b, "draining").await;
    let _ = b.close().await;
}

/// The server-sent events of `/ui/stream`, read as a client would.
struct SseReader {
    resp: reqwest::Response,
    buf: String,
}

impl SseReader {
    async fn open(url: &str) -> Self {
        let resp = reqwest::Client::new()
            .get(url)
            .bearer_auth(TOKEN)
            .send()
            .await
            .expect("open stream");
        assert_eq!(resp.status(), 200);
        let ct = resp.headers()["content-type"].to_str().unwrap().to_string();
        assert!(ct.starts_with("text/event-stream"), "{ct}");
        SseReader {
            resp,
            buf: String::new(),
        }
    }

    /// The next event with data: (event name, parsed data).
    async fn next(&mut self) -> Option<(String, Value)> {
        loop {
            if let Some(i) = self.buf.find("\n\n") {
                let block: String = self.buf.drain(..i + 2).collect();
                let kind = block.lines().find_map(|l| l.strip_prefix("event:"));
                let data: Vec<&str> = block
                    .lines()
                    .filter_map(|l| l.strip_prefix("data:"))
                    .map(|d| d.strip_prefix(' ').unwrap_or(d))
                    .collect();
                if let (Some(kind), false) = (kind, data.is_empty()) {
                    let v = serde_json::from_str(&data.join("\n")).expect("event data is JSON");
                    return Some((kind.trim().to_string(), v));
                }
                continue;
            }
            let chunk = self.resp.chunk().await.ok()??;
            self.buf.push_str(&String::from_utf8_lossy(&chunk));
        }
    }

    /// Reads until `f` holds for an event, within `d`.
    async fn until(&mut self, what: &str, d: Duration, f: impl Fn(&str, &Value) -> bool) {
        let found = tokio::time::timeout(d, async {
            while let Some((k, v)) = self.next().await {
                if f(&k, &v) {
                    return;
                }
            }
            panic!("{what}: the stream ended");
        })
        .await;
        assert!(found.is_ok(), "{what}: not within {d:?}");
    }
}

fn lists_node(kind: &str, v: &Value, node: &str) -> bool {
    kind == "snapshot"
        && v["nodes"]
            .as_array()
            .is_some_and(|ns| ns.iter().any(|n| n["node_id"] == node))
}

fn joined(kind: &str, v: &Value, node: &str) -> bool {
    kind == "event" && v["kind"] == "node.joined" && v["node_id"] == node
}

/// One feed per sidecar, fed from NATS: it goes on after its events
/// consumer is deleted and after the server restarts, without the page
/// reconnecting.
#[tokio::test]
async fn the_dashboard_stream_survives_a_lost_consumer_and_a_server_restart() {
    let mut server = NatsServer::start();
    let _c = start_coordinator(&server, "c1").await;
    let _n1 = start_node(&server, node_config("n1")).await;
    let (_sc, base) = sidecar(&server).await;
    let mut sse = SseReader::open(&format!("{base}/ui/stream")).await;
    let d = Duration::from_secs(20);
    sse.until("n1 joined", d, |k, v| joined(k, v, "n1")).await;
    sse.until("n1 listed", d, |k, v| lists_node(k, v, "n1"))
        .await;

    let client = server.client().await;
    assert!(delete_consumers(&client, "WEAVE_EVENTS").await >= 1);
    let _n2 = start_node(&server, node_config("n2")).await;
    sse.until("n2 joined after the consumer was deleted", d, |k, v| {
        joined(k, v, "n2")
    })
    .await;

    server.restart();
    let _n3 = start_node(&server, node_config("n3")).await;
    sse.until("n3 joined after a server restart", d, |k, v| {
        joined(k, v, "n3")
    })
    .await;
    sse.until("n3 listed", d, |k, v| lists_node(k, v, "n3"))
        .await;
}
