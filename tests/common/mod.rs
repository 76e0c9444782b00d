//! Shared test harness: real `nats-server` processes (JetStream on, temp
//! store, random loopback port) that tests can kill and restart, nodes
//! in-process or as the built binary, and waiting on events with deadlines.
#![allow(dead_code)]

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Once};
use std::time::{Duration, Instant};

use jetweave::{Node, NodeConfig, NodeHandle, Shutdown};

static INSTALL: Once = Once::new();

/// The nats-server binary: `NATS_SERVER_BIN`, else `.tools/bin/nats-server`
/// (installed by `scripts/install-nats-server.sh` on first use), else PATH.
pub fn nats_server_bin() -> PathBuf {
    if let Ok(p) = std::env::var("NATS_SERVER_BIN") {
        return PathBuf::from(p);
    }
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let local = root.join(".tools/bin/nats-server");
    INSTALL.call_once(|| {
        if !local.exists() {
            let st = Command::new("bash")
                .arg(root.join("scripts/install-nats-server.sh"))
                .status()
                .expect("run install-nats-server.sh");
            assert!(st.success(), "install-nats-server.sh failed");
        }
    });
    if local.exists() {
        local
    } else {
        PathBuf::from("nats-server")
    }
}

/// A free loopback port.
/// CPU seconds (user + system) process `pid` has used so far; 0 when
/// unknown. Benchmarks read it before and after a phase.
pub fn cpu_seconds(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            let f: Vec<&str> = s.rsplit(')').next()?.split_whitespace().collect();
            Some((f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?) / 100.0)
        })
        .unwrap_or(0.0)
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// Blocks until something listens on loopback `port` (10 s at most).
fn wait_for_port(port: u16) {
    assert!(port_opens(port, None), "nats-server did not start");
}

/// Whether something listens on loopback `port` within 10 s; false at
/// once if `child` exits first (e.g. its port was taken meanwhile).
fn port_opens(port: u16, mut child: Option<&mut Child>) -> bool {
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        let exited = child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(Some(_))));
        if exited || Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    true
}

/// How many servers [`NatsServer::start`] runs: `JETWEAVE_TEST_CLUSTER`
/// (e.g. `3`: the suite on a 3-server cluster with R3 streams), else 1.
pub fn test_cluster_size() -> usize {
    std::env::var("JETWEAVE_TEST_CLUSTER")
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .filter(|n| *n > 1)
        .unwrap_or(1)
}

/// A real nats-server with JetStream — or, when `JETWEAVE_TEST_CLUSTER=N`
/// is set, a cluster of N that stands in for it: [`NatsServer::url`] names
/// every member, [`NatsServer::kill`] and [`NatsServer::restart`] act on
/// the whole cluster. Servers started with extra flags (auth, TLS, a
/// config) are always single.
pub struct NatsServer {
    child: Option<Child>,
    pub port: u16,
    dir: tempfile::TempDir,
    extra: Vec<String>,
    cluster: Option<NatsCluster>,
}

impl NatsServer {
    pub fn start() -> Self {
        let n = test_cluster_size();
        if n == 1 {
            return Self::start_with(&[]);
        }
        let cluster = NatsCluster::spawn(n);
        NatsServer {
            child: None,
            port: cluster.servers[0].port,
            dir: tempfile::tempdir().expect("tempdir"),
            extra: Vec::new(),
            cluster: Some(cluster),
        }
    }

    /// A single server with extra command-line flags (auth, TLS); tried
    /// again on a new port if its port was taken before it bound it.
    pub fn start_with(extra: &[&str]) -> Self {
        (0..3)
            .find_map(|_| Self::try_start_with(extra))
            .expect("nats-server did not start")
    }

    /// Like [`Self::start_with`], once: `None` if the server exited
    /// before it listened (a port of its flags or config was taken).
    pub fn try_start_with(extra: &[&str]) -> Option<Self> {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut s = NatsServer {
            child: None,
            port: free_port(),
            dir,
            extra: extra.iter().map(|a| a.to_string()).collect(),
            cluster: None,
        };
        s.spawn_checked().then_some(s)
    }

    /// The cluster standing in for this server, if any.
    pub fn cluster(&self) -> Option<&NatsCluster> {
        self.cluster.as_ref()
    }

    fn spawn(&mut self) {
        assert!(self.spawn_checked(), "nats-server did not start");
    }

    /// Starts the process; false if it did not listen on its port.
    fn spawn_checked(&mut self) -> bool {
        let mut child = Command::new(nats_server_bin())
            .args([
                "-js",
                "-a",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-sd",
            ])
            .arg(self.dir.path())
            .args(&self.extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start nats-server");
        let listening = port_opens(self.port, Some(&mut child));
        eprintln!(
            "nats-server pid {} on port {}: {}",
            child.id(),
            self.port,
            if listening { "listening" } else { "exited" }
        );
        self.child = Some(child);
        listening
    }

    pub fn url(&self) -> String {
        match &self.cluster {
            Some(c) => c.urls(),
            None => format!("nats://127.0.0.1:{}", self.port),
        }
    }

    /// A server that runs `auth.conf` from `jetweave auth init --dir
    /// auth_dir` (anonymous refused) and logs to a file that
    /// [`NatsServer::violations`] reads.
    pub fn start_secured(auth_dir: &std::path::Path) -> Self {
        let conf = auth_dir.join("server.conf");
        std::fs::write(&conf, "include \"auth.conf\"\n").expect("server.conf");
        let log = auth_dir.join("server.log");
        Self::start_with(&["-c", conf.to_str().unwrap(), "-l", log.to_str().unwrap()])
    }

    /// The permission violations a server started with
    /// [`NatsServer::start_secured`] logged so far: `(kind, subject)`, e.g.
    /// `("Publish", "weave.ctl.n2.drain")`.
    pub fn violations(auth_dir: &std::path::Path) -> Vec<(String, String)> {
        let log = std::fs::read_to_string(auth_dir.join("server.log")).unwrap_or_default();
        log.lines()
            .filter_map(|l| {
                let (_, rest) = l
                    .split_once(" - Publish Violation - Subject \"")
                    .map(|(a, r)| (a, ("Publish", r)))
                    .or_else(|| {
                        l.split_once(" - Subscription Violation - Subject \"")
                            .map(|(a, r)| (a, ("Subscription", r)))
                    })?;
                let subject = rest.1.split('"').next()?;
                Some((rest.0.to_string(), subject.to_string()))
            })
            .collect()
    }

    /// The server's process id while it runs.
    pub fn pid(&self) -> Option<u32> {
        if let Some(c) = &self.cluster {
            return c.servers[0].child.as_ref().map(|c| c.id());
        }
        self.child.as_ref().map(|c| c.id())
    }

    /// SIGKILL the server (every member of a cluster).
    pub fn kill(&mut self) {
        if let Some(c) = &mut self.cluster {
            c.servers.iter_mut().for_each(ClusterMember::kill);
        }
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Start again on the same port and store (a cluster: all members,
    /// back once JetStream is healthy on each).
    pub fn restart(&mut self) {
        self.kill();
        match &mut self.cluster {
            Some(c) => {
                c.servers.iter_mut().for_each(ClusterMember::spawn);
                c.wait_healthy();
            }
            None => self.spawn(),
        }
    }

    /// A client; retries briefly while the server finishes starting.
    pub async fn client(&self) -> async_nats::Client {
        if let Some(c) = &self.cluster {
            return c.client().await;
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match async_nats::connect(self.url()).await {
                Ok(c) => return c,
                Err(e) if Instant::now() < deadline => {
                    eprintln!("connect retry: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => panic!("connect: {e}"),
            }
        }
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A node config with fast test timings.
pub fn node_config(node_id: &str) -> NodeConfig {
    let mut c = NodeConfig::new(node_id);
    c.node_ttl = Duration::from_secs(2);
    c.heartbeat_interval = Duration::from_millis(500);
    c.ack_wait = Duration::from_secs(2);
    c
}

/// A node running in this process.
pub struct TestNode {
    pub handle: NodeHandle,
    pub shutdown: Shutdown,
}

pub async fn start_node(server: &NatsServer, cfg: NodeConfig) -> TestNode {
    start_node_with(server, Node::new(cfg)).await
}

pub async fn start_node_with(server: &NatsServer, node: Node) -> TestNode {
    let client = server.client().await;
    let shutdown = Shutdown::new();
    let handle = node
        .start(client, shutdown.clone())
        .await
        .expect("node start");
    TestNode { handle, shutdown }
}

/// The built `jetweave` binary as a child process (killed on drop).
pub struct Proc {
    pub child: Child,
}

impl Proc {
    pub fn spawn(args: &[&str]) -> Self {
        Self::spawn_env(args, &[])
    }

    /// Like `spawn`, with extra environment variables.
    pub fn spawn_env(args: &[&str], env: &[(&str, &str)]) -> Self {
        let child = Command::new(jetweave_bin())
            .args(args)
            // JETWEAVE_CHILD_LOG sets the children's log filter (debugging).
            .env(
                "RUST_LOG",
                std::env::var("JETWEAVE_CHILD_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn jetweave");
        Proc { child }
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn signal(&self, sig: i32) {
        unsafe {
            libc::kill(self.pid(), sig);
        }
    }

    /// Waits for the exit status up to `d`.
    pub fn wait_exit(&mut self, d: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + d;
        loop {
            if let Ok(Some(st)) = self.child.try_wait() {
                return Some(st);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Polls `f` until it returns `Some`, or panics after `d` naming `what`.
/// On a test cluster (`JETWEAVE_TEST_CLUSTER`) the deadline is doubled:
/// three servers with R3 streams on two cores create resources and elect
/// leaders several times slower (a first node start: ~6 s instead of
/// 0.3 s). Bounds a test asserts itself are not scaled.
pub async fn wait_for<T, F, Fut>(what: &str, d: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let d = if test_cluster_size() > 1 { d * 2 } else { d };
    let deadline = Instant::now() + d;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Sends a request and parses the JSON reply.
pub async fn req(client: &async_nats::Client, subject: &str, body: &[u8]) -> serde_json::Value {
    let m = tokio::time::timeout(
        Duration::from_secs(5),
        client.request(subject.to_string(), body.to_vec().into()),
    )
    .await
    .unwrap_or_else(|_| panic!("request to {subject} timed out"))
    .unwrap_or_else(|e| panic!("request to {subject}: {e}"));
    serde_json::from_slice(&m.payload).expect("reply is JSON")
}

/// A coordinator running in this process.
pub struct TestCoordinator {
    pub coordinator: jetweave::Coordinator,
    pub shutdown: Shutdown,
}

pub async fn start_coordinator(server: &NatsServer, id: &str) -> TestCoordinator {
    let mut cfg = jetweave::CoordinatorConfig::new();
    cfg.id = id.to_string();
    cfg.lease_ttl = Duration::from_secs(2);
    cfg.node_ttl = Duration::from_secs(2);
    let shutdown = Shutdown::new();
    let coordinator = jetweave::Coordinator::start(server.client().await, cfg, shutdown.clone())
        .await
        .expect("coordinator start");
    // On a cluster, the API's subscriptions reach the other servers a
    // moment later: wait until a client answers from here (a request with
    // no responder yet fails at once). Not fatal: a standby may not answer.
    // `limits.delete` is the last endpoint subscribed (subscriptions reach
    // the other servers in order), and `{}` only gets an error from it.
    // Asked on every server: interest reaches each one on its own.
    let mut clients = vec![server.client().await];
    if let Some(c) = server.cluster() {
        for m in &c.servers {
            let url = format!("nats://127.0.0.1:{}", m.port);
            clients.extend(async_nats::connect(url).await.ok());
        }
    }
    let _ = tokio::time::timeout(Duration::from_secs(10), async {
        let last = "weave.api.limits.delete";
        for client in &clients {
            for subject in ["weave.api.cluster.status", "weave.api.nodes.list", last] {
                while client.request(subject, "{}".into()).await.is_err() {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    })
    .await;
    TestCoordinator {
        coordinator,
        shutdown,
    }
}

/// A jetweave client on the server.
pub async fn api_client(server: &NatsServer) -> jetweave::Client {
    jetweave::Client::new(server.client().await, "weave").expect("client")
}

/// A `jetweave node` process with fast test timings (node_ttl 2 s,
/// heartbeat 0.5 s, ack_wait 2 s), returned once it is in discovery.
pub async fn spawn_node_proc(server: &NatsServer, node_id: &str) -> Proc {
    spawn_node_proc_with(server, node_id, &[]).await
}

/// Like [`spawn_node_proc`], with extra `jetweave node` flags.
pub async fn spawn_node_proc_with(server: &NatsServer, node_id: &str, extra: &[&str]) -> Proc {
    spawn_node_at(&server.url(), node_id, extra).await
}

/// A `jetweave node` process on NATS `url` (one URL or several, comma
/// separated; a proxy's), returned once it is in discovery.
pub async fn spawn_node_at(url: &str, node_id: &str, extra: &[&str]) -> Proc {
    let node = spawn_node_unwaited(url, node_id, extra);
    let addrs: Vec<async_nats::ServerAddr> = url
        .split(',')
        .map(|u| u.parse().expect("server address"))
        .collect();
    let client = async_nats::connect(addrs).await.expect("connect");
    let d = jetweave::discovery::KvDiscovery::open(
        client,
        &jetweave::subjects::Subjects::new("weave").expect("prefix"),
        Duration::from_secs(2),
        1,
    )
    .await
    .expect("discovery");
    wait_for(
        &format!("node {node_id} registered"),
        Duration::from_secs(15),
        || async { d.get(node_id).await.ok().flatten() },
    )
    .await;
    node
}

/// A `jetweave node` process with the fast test timings, returned at once
/// (not waiting for it to register).
pub fn spawn_node_unwaited(url: &str, node_id: &str, extra: &[&str]) -> Proc {
    let mut args = vec![
        "--nats-url",
        url,
        "node",
        "--node-id",
        node_id,
        "--node-ttl",
        "2",
        "--heartbeat-interval",
        "0.5",
        "--ack-wait",
        "2",
    ];
    args.extend_from_slice(extra);
    Proc::spawn(&args)
}

/// Publishes a task (or any body) to a stream subject through JetStream,
/// with `Nats-Msg-Id` when `id` is given; returns the stream sequence.
pub async fn publish_task(
    client: &async_nats::Client,
    subject: &str,
    id: Option<&str>,
    body: serde_json::Value,
) -> u64 {
    use async_nats::jetstream::context::PublishErrorKind;
    let js = async_nats::jetstream::new(client.clone());
    let body = bytes::Bytes::from(body.to_string());
    // A stream created a moment ago on a cluster may have no leader yet:
    // the publish finds no responder (nothing stored) and is sent again.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut m = async_nats::jetstream::message::PublishMessage::build().payload(body.clone());
        if let Some(id) = id {
            m = m.message_id(id);
        }
        let ack = js
            .send_publish(subject.to_string(), m)
            .await
            .expect("publish");
        match ack.await {
            Ok(a) => return a.sequence,
            Err(e) if e.kind() == PublishErrorKind::StreamNotFound && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("publish ack: {e}"),
        }
    }
}

/// Every message stored in `stream` on subjects matching `filter`, oldest
/// first, as (subject, JSON body).
pub async fn stored(
    client: &async_nats::Client,
    stream: &str,
    filter: &str,
) -> Vec<(String, serde_json::Value)> {
    use futures::StreamExt;
    let js = async_nats::jetstream::new(client.clone());
    let Ok(mut st) = js.get_stream(stream).await else {
        return Vec::new();
    };
    let Ok(info) = st.info().await else {
        return Vec::new();
    };
    if info.state.messages == 0 {
        return Vec::new();
    }
    let consumer = st
        .create_consumer(async_nats::jetstream::consumer::pull::OrderedConfig {
            filter_subject: filter.to_string(),
            ..Default::default()
        })
        .await
        .expect("ordered consumer");
    let mut out = Vec::new();
    let mut msgs = consumer.messages().await.expect("messages");
    while let Ok(Some(Ok(m))) = tokio::time::timeout(Duration::from_millis(300), msgs.next()).await
    {
        let pending = m.info().map(|i| i.pending).unwrap_or(0);
        let v = serde_json::from_slice(&m.payload).unwrap_or(serde_json::Value::Null);
        out.push((m.subject.to_string(), v));
        if pending == 0 {
            break;
        }
    }
    out
}

/// Deletes every consumer of `stream` on the server (as when the server
/// holding them dies); returns how many there were.
pub async fn delete_consumers(client: &async_nats::Client, stream: &str) -> usize {
    use futures::StreamExt;
    let js = async_nats::jetstream::new(client.clone());
    let stream = js.get_stream(stream).await.expect("stream");
    let names: Vec<String> = stream
        .consumer_names()
        .filter_map(|n| async { n.ok() })
        .collect()
        .await;
    for n in &names {
        stream.delete_consumer(n).await.expect("delete consumer");
    }
    names.len()
}

/// Audit events of `kind` (e.g. `node.draining`) stored in WEAVE_EVENTS.
pub async fn audit_events(client: &async_nats::Client, kind: &str) -> Vec<serde_json::Value> {
    stored(client, "WEAVE_EVENTS", &format!("weave.events.{kind}"))
        .await
        .into_iter()
        .map(|(_, v)| v)
        .collect()
}

/// The KV entry of a node, parsed.
pub async fn node_entry(client: &async_nats::Client, node_id: &str) -> Option<serde_json::Value> {
    let js = async_nats::jetstream::new(client.clone());
    let kv = js.get_key_value("weave-nodes").await.ok()?;
    let v = kv.get(node_id).await.ok()??;
    serde_json::from_slice(&v).ok()
}

/// Parses an RFC 3339 timestamp from a JSON field.
pub fn ts(v: &serde_json::Value) -> time::OffsetDateTime {
    time::OffsetDateTime::parse(
        v.as_str().expect("timestamp string"),
        &time::format_description::well_known::Rfc3339,
    )
    .expect("RFC 3339 timestamp")
}

/// Publishes a `sleep` task of `ms` on the default queue and waits until
/// node `node_id` runs it.
pub async fn run_sleep_task(client: &async_nats::Client, node_id: &str, task_id: &str, ms: u64) {
    publish_task(
        client,
        "weave.tasks.default.normal",
        Some(task_id),
        serde_json::json!({"type": "sleep", "payload": {"ms": ms}}),
    )
    .await;
    wait_for(
        &format!("{task_id} running on {node_id}"),
        Duration::from_secs(5),
        || async {
            // The node may register a moment before its service answers.
            let subject = format!("weave.ctl.{node_id}.status");
            let m = client.request(subject, "".into()).await.ok()?;
            let st: serde_json::Value = serde_json::from_slice(&m.payload).ok()?;
            st["running_tasks"]
                .as_array()?
                .iter()
                .any(|t| t == task_id)
                .then_some(())
        },
    )
    .await;
}

/// Every reply to one request on `subject` that arrives within `window`
/// of the last one (for subjects many answer: `$SRV.PING`, broadcasts).
pub async fn replies(
    client: &async_nats::Client,
    subject: &str,
    window: Duration,
) -> Vec<serde_json::Value> {
    use futures::StreamExt;
    let inbox = client.new_inbox();
    let mut sub = client.subscribe(inbox.clone()).await.expect("subscribe");
    client
        .publish_with_reply(subject.to_string(), inbox, "".into())
        .await
        .expect("publish");
    let mut out = Vec::new();
    while let Ok(Some(m)) = tokio::time::timeout(window, sub.next()).await {
        out.push(serde_json::from_slice(&m.payload).unwrap_or(serde_json::Value::Null));
    }
    out
}

/// A cluster of `nats-server`s (JetStream on, R3 streams) on loopback,
/// named `s1`, `s2`, ...; each can be killed and restarted.
pub struct NatsCluster {
    pub servers: Vec<ClusterMember>,
    dir: tempfile::TempDir,
}

/// One server of a [`NatsCluster`].
pub struct ClusterMember {
    pub name: String,
    pub port: u16,
    pub monitor_port: u16,
    conf: PathBuf,
    child: Option<Child>,
}

impl NatsCluster {
    /// Starts `n` servers and waits until JetStream has a meta leader.
    pub async fn start(n: usize) -> Self {
        let c = Self::spawn(n);
        let client = c.client().await;
        let js = async_nats::jetstream::new(client);
        wait_for(
            "a JetStream meta leader",
            Duration::from_secs(30),
            || async { js.query_account().await.ok() },
        )
        .await;
        c
    }

    /// Starts `n` servers and blocks until each says JetStream is healthy
    /// (`/healthz` on its monitoring port). A free port may be taken by
    /// another process before the server binds it: then all start again
    /// on new ports.
    pub fn spawn(n: usize) -> Self {
        for _ in 0..3 {
            if let Some(c) =
                Self::try_spawn(n).filter(|c| c.healthy_within(Duration::from_secs(20)))
            {
                return c;
            }
        }
        panic!("a {n}-server cluster did not start");
    }

    fn try_spawn(n: usize) -> Option<Self> {
        let dir = tempfile::tempdir().expect("tempdir");
        let ports: Vec<[u16; 3]> = (0..n)
            .map(|_| [free_port(), free_port(), free_port()])
            .collect();
        let routes: Vec<String> = ports
            .iter()
            .map(|[_, c, _]| format!("nats-route://127.0.0.1:{c}"))
            .collect();
        // A name of its own: a port that another test's cluster took a
        // moment ago and listed in its routes must not merge the two (both
        // have an `s1`), which left a cluster unhealthy for 20 s in CI.
        let cluster_name = format!("chaos-{:08x}", fastrand::u32(..));
        let mut servers = Vec::new();
        for (i, [port, cport, mport]) in ports.iter().enumerate() {
            let name = format!("s{}", i + 1);
            let store = dir.path().join(&name);
            let conf = dir.path().join(format!("{name}.conf"));
            let text = format!(
                "server_name: {name}\nlisten: 127.0.0.1:{port}\nhttp: 127.0.0.1:{mport}\n\
                 cluster {{ name: {cluster_name}, listen: 127.0.0.1:{cport}, routes: [{}] }}\n\
                 jetstream {{ store_dir: \"{}\" }}\n",
                routes.join(", "),
                store.display()
            );
            std::fs::write(&conf, text).expect("write server config");
            let mut m = ClusterMember {
                name,
                port: *port,
                monitor_port: *mport,
                conf,
                child: None,
            };
            m.start_process();
            servers.push(m);
        }
        for m in &mut servers {
            let port = m.port;
            if !port_opens(port, m.child.as_mut()) {
                return None;
            }
        }
        Some(NatsCluster { servers, dir })
    }

    /// Blocks until every running member answers `/healthz` with 200
    /// (JetStream up and current), 30 s at most.
    pub fn wait_healthy(&self) {
        assert!(
            self.healthy_within(Duration::from_secs(30)),
            "cluster not healthy"
        );
    }

    /// Whether every running member answers `/healthz` with 200 within `d`.
    fn healthy_within(&self, d: Duration) -> bool {
        let deadline = Instant::now() + d;
        for m in self.servers.iter().filter(|m| m.child.is_some()) {
            while !m.healthy() {
                if Instant::now() > deadline {
                    eprintln!("{} not healthy after {d:?}", m.name);
                    return false;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        true
    }

    /// Every server's URL, comma separated (what a client is given).
    pub fn urls(&self) -> String {
        self.servers
            .iter()
            .map(|m| format!("nats://127.0.0.1:{}", m.port))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// A client that knows every server.
    pub async fn client(&self) -> async_nats::Client {
        let urls: Vec<async_nats::ServerAddr> = self
            .urls()
            .split(',')
            .map(|u| u.parse().expect("server address"))
            .collect();
        // Not `retry_on_initial_connect`: that returns before the first
        // INFO, and jetweave reads the cluster from it.
        async_nats::ConnectOptions::new()
            .connect(urls)
            .await
            .expect("connect to the cluster")
    }

    /// The index of the server called `name`.
    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.servers.iter().position(|m| m.name == name)
    }

    /// SIGKILL server `i`.
    pub fn kill(&mut self, i: usize) {
        self.servers[i].kill();
    }

    /// Start server `i` again on its port and store.
    pub fn restart(&mut self, i: usize) {
        self.servers[i].kill();
        self.servers[i].spawn();
    }

    /// The directory the servers keep their stores in.
    pub fn dir(&self) -> &std::path::Path {
        self.dir.path()
    }
}

impl ClusterMember {
    fn spawn(&mut self) {
        self.start_process();
        wait_for_port(self.port);
    }

    fn start_process(&mut self) {
        let child = Command::new(nats_server_bin())
            .arg("-c")
            .arg(&self.conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start nats-server");
        self.child = Some(child);
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// `GET /healthz` answers 200.
    fn healthy(&self) -> bool {
        http_get(self.monitor_port, "/healthz").is_some()
    }
}

impl Drop for ClusterMember {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A loopback TCP proxy in front of a NATS server that a test can pause:
/// while paused no byte passes in either direction (connections stay open,
/// as in a network partition that drops packets), and on resume what was
/// held flows on.
pub struct Proxy {
    pub port: u16,
    accepted: Arc<std::sync::atomic::AtomicUsize>,
    gate: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    pub async fn start(upstream: u16) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind proxy");
        let port = listener.local_addr().expect("proxy address").port();
        let (gate, _) = tokio::sync::watch::channel(false);
        let g = gate.clone();
        let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let count = accepted.clone();
        let task = tokio::spawn(async move {
            while let Ok((down, _)) = listener.accept().await {
                count.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Ok(up) = tokio::net::TcpStream::connect(("127.0.0.1", upstream)).await else {
                    continue;
                };
                let (dr, dw) = down.into_split();
                let (ur, uw) = up.into_split();
                tokio::spawn(pipe(dr, uw, g.subscribe()));
                tokio::spawn(pipe(ur, dw, g.subscribe()));
            }
        });
        Proxy {
            port,
            accepted,
            gate,
            task,
        }
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> usize {
        self.accepted.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Holds every byte until [`Proxy::resume`].
    pub fn pause(&self) {
        self.gate.send_replace(true);
    }

    pub fn resume(&self) {
        self.gate.send_replace(false);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn pipe(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut paused: tokio::sync::watch::Receiver<bool>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        while *paused.borrow_and_update() {
            if paused.changed().await.is_err() {
                return;
            }
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

/// Runs the `jetweave` CLI off the runtime's thread (a coordinator or node
/// of the test running on that thread must answer meanwhile).
pub async fn jw_async(args: &[&str]) -> std::process::Output {
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        Command::new(jetweave_bin())
            .args(&args)
            .output()
            .expect("run jetweave")
    })
    .await
    .expect("CLI thread")
}

/// A raw request to `weave.api.<endpoint>`, its reply as JSON (errors too).
pub async fn api_raw(
    c: &jetweave::Client,
    endpoint: &str,
    body: serde_json::Value,
) -> serde_json::Value {
    let m = c
        .nats()
        .request(format!("weave.api.{endpoint}"), body.to_string().into())
        .await
        .expect("reply");
    serde_json::from_slice(&m.payload).expect("JSON reply")
}

/// The built `jetweave`: tests and benches get the path from cargo;
/// examples use the release build.
pub fn jetweave_bin() -> &'static str {
    option_env!("CARGO_BIN_EXE_jetweave").unwrap_or(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/target/release/jetweave"
    ))
}

/// A hub server that accepts leaf node connections, and the leaf servers
/// of sites joined to it (deploy/leaf on loopback). The hub's JetStream is
/// domain `hub`; the leaf servers run none and map `$JS.API.>` to
/// `$JS.hub.API.>` and `$KV.>` to `$JS.hub.API.$KV.>` (a leaf link denies
/// `$KV.>` between domains), so their clients use the hub's streams and
/// buckets with no `--js-domain` to give.
pub struct Hub {
    pub server: NatsServer,
    leaf_port: u16,
    monitor_port: u16,
    dir: tempfile::TempDir,
}

impl Hub {
    /// Starts the hub, on new ports if one was taken before it bound it.
    pub fn start() -> Self {
        (0..3)
            .find_map(|_| Self::try_start())
            .expect("the hub did not start")
    }

    fn try_start() -> Option<Self> {
        let dir = tempfile::tempdir().expect("tempdir");
        let (leaf_port, monitor_port) = (free_port(), free_port());
        let conf = dir.path().join("hub.conf");
        let text =
            format!("leafnodes {{ listen: 127.0.0.1:{leaf_port} }}\njetstream {{ domain: hub }}\n");
        std::fs::write(&conf, text).expect("hub config");
        let c = conf.to_str().expect("utf-8 path");
        let server = NatsServer::try_start_with(&["-c", c, "-m", &monitor_port.to_string()])?;
        Some(Hub {
            server,
            leaf_port,
            monitor_port,
            dir,
        })
    }

    /// A leaf server for site `name`, linked to the hub (returned once the
    /// hub sees its link).
    pub fn site(&self, name: &str) -> LeafServer {
        let before = self.leafs();
        let mut leaf = LeafServer {
            name: name.to_string(),
            port: free_port(),
            hub_leaf_port: self.leaf_port,
            conf: self.dir.path().join(format!("{name}.conf")),
            child: None,
        };
        leaf.write_conf(false);
        let child = Command::new(nats_server_bin())
            .arg("-c")
            .arg(&leaf.conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start leaf server");
        leaf.child = Some(child);
        wait_for_port(leaf.port);
        self.wait_leafs(before + 1);
        leaf
    }

    /// Leaf links the hub has now (`/leafz`).
    pub fn leafs(&self) -> usize {
        http_get(self.monitor_port, "/leafz")
            .and_then(|body| serde_json::from_str::<serde_json::Value>(&body).ok())
            .and_then(|v| v["leafnodes"].as_u64())
            .unwrap_or(0) as usize
    }

    /// Blocks until the hub has `n` leaf links (15 s at most).
    pub fn wait_leafs(&self, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(15);
        while self.leafs() != n {
            assert!(Instant::now() < deadline, "hub never had {n} leaf links");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// One site's leaf server (see [`Hub`]).
pub struct LeafServer {
    pub name: String,
    pub port: u16,
    hub_leaf_port: u16,
    conf: PathBuf,
    child: Option<Child>,
}

impl LeafServer {
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    fn write_conf(&self, disabled: bool) {
        let text = format!(
            "server_name: {}\nlisten: 127.0.0.1:{}\n\
             mappings: {{ \"$JS.API.>\": \"$JS.hub.API.>\", \"$KV.>\": \"$JS.hub.API.$KV.>\" }}\n\
             leafnodes {{ reconnect: 1, remotes: [ {{ url: \"nats-leaf://127.0.0.1:{}\", disabled: {disabled} }} ] }}\n",
            self.name, self.port, self.hub_leaf_port
        );
        std::fs::write(&self.conf, text).expect("leaf config");
    }

    /// Stops (`disabled: true`, reload) or starts again the leaf server's
    /// remote: the link to the hub goes down or comes back while the
    /// server and its clients stay up.
    pub fn set_link(&self, up: bool) {
        self.write_conf(!up);
        let pid = self.child.as_ref().expect("leaf server running").id();
        unsafe {
            libc::kill(pid as i32, libc::SIGHUP);
        }
    }
}

impl Drop for LeafServer {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The body of `GET path` on loopback `port` when it answers 200.
fn http_get(port: u16, path: &str) -> Option<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    let req = format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n");
    s.write_all(req.as_bytes()).ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    let (head, body) = out.split_once("\r\n\r\n")?;
    (head.split_whitespace().nth(1) == Some("200")).then(|| body.to_string())
}

/// A `jetweave sidecar` process on a free loopback port with `extra`
/// flags, returned (with its base URL) once it answers HTTP.
#[allow(dead_code)]
pub async fn spawn_sidecar(server: &NatsServer, extra: &[&str]) -> (Proc, String) {
    let listen = format!("127.0.0.1:{}", free_port());
    let url = server.url();
    let mut args = vec!["--nats-url", &url, "sidecar", "--listen", &listen];
    args.extend_from_slice(extra);
    let proc = Proc::spawn(&args);
    let base = format!("http://{listen}");
    let http = reqwest::Client::new();
    // `/ui` answers without a token, so this works with --auth-token too.
    wait_for("sidecar up", Duration::from_secs(15), || async {
        http.get(format!("{base}/ui")).send().await.ok().map(|_| ())
    })
    .await;
    (proc, base)
}
