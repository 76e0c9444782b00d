//! `jetweave up`: a whole local cluster for trying jetweave out — the pinned
//! nats-server with `nats-server.conf`, a coordinator, one hybrid node with
//! the built-in handlers and an example `exec` handler, and the HTTP
//! sidecar — stopped together by Ctrl-C.
//!
//! Only nats-server is a child process (it is sent SIGTERM on Ctrl-C and
//! dies with us through `PR_SET_PDEATHSIG` if we are killed); everything
//! else runs in this process under one [`Shutdown`].

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use jetweave::config::{HandlerSpec, NodeConfig, ProcessSpec};
use jetweave::error::Error;
use jetweave::shutdown::Shutdown;
use jetweave::wire::protocol::Role;

/// What `jetweave up` starts.
#[derive(Debug, Clone)]
pub struct UpOptions {
    /// Where the server's store and the lock file live.
    pub data_dir: PathBuf,
    /// NATS client port.
    pub nats_port: u16,
    /// NATS monitoring port.
    pub monitor_port: u16,
    /// Sidecar listen address.
    pub http: String,
    /// Subject prefix.
    pub prefix: String,
    /// Least privilege: keys in `data_dir/auth`, no anonymous connections,
    /// each part connected as its own role.
    pub secure: bool,
    /// Spans for the local node's attempts (`--otlp-endpoint` is set).
    pub traces: bool,
}

impl UpOptions {
    fn auth_dir(&self) -> PathBuf {
        self.data_dir.join("auth")
    }

    /// The seed file of `user` when secure.
    fn nkey(&self, user: &str) -> Option<PathBuf> {
        self.secure
            .then(|| self.auth_dir().join(format!("{user}.nk")))
    }

    /// Connects as `user` (its key when secure).
    async fn connect(&self, url: &str, user: &str) -> Result<async_nats::Client, Error> {
        let mut nats = jetweave::connect::NatsOptions::new(url);
        nats.nkey = self.nkey(user);
        nats.connect(&format!("jetweave up ({user})")).await
    }
}

/// The server config `jetweave up` runs: `nats-server.conf` (when there)
/// and, when secure, the generated users (`include auth/auth.conf`, next
/// to it in the data directory).
fn server_config(opts: &UpOptions) -> Result<Option<PathBuf>, Error> {
    let base = Path::new("nats-server.conf");
    if !opts.secure {
        return Ok(base.exists().then(|| base.to_path_buf()));
    }
    crate::cli::auth::init(
        &crate::cli::auth::AuthInitArgs {
            dir: opts.auth_dir(),
            nodes: vec![LOCAL_NODE.into()],
            pools: vec![],
            rotate: vec![],
        },
        &opts.prefix,
    )?;
    let mut conf = match std::fs::read_to_string(base) {
        Ok(text) => text,
        Err(_) => "jetstream {}\n".to_string(),
    };
    conf.push_str("\n# Added by `jetweave up --secure`: one user per role, no anonymous.\ninclude \"auth/auth.conf\"\n");
    let path = opts.data_dir.join("nats-server.secure.conf");
    std::fs::write(&path, conf)?;
    Ok(Some(path))
}

/// The local node's id.
const LOCAL_NODE: &str = "local";

/// The nats-server binary: `NATS_SERVER_BIN`, else `.tools/bin/nats-server`
/// in this directory or above, else the install script is run, else PATH.
pub fn find_nats_server() -> Result<PathBuf, Error> {
    if let Ok(p) = std::env::var("NATS_SERVER_BIN") {
        return Ok(PathBuf::from(p));
    }
    let cwd = std::env::current_dir()?;
    for dir in cwd.ancestors() {
        let p = dir.join(".tools/bin/nats-server");
        if p.exists() {
            return Ok(p);
        }
        let script = dir.join("scripts/install-nats-server.sh");
        if script.exists() {
            let st = Command::new("bash").arg(&script).status()?;
            if st.success() && p.exists() {
                return Ok(p);
            }
        }
    }
    which("nats-server").ok_or_else(|| {
        Error::Config(
            "nats-server not found: run scripts/install-nats-server.sh or set NATS_SERVER_BIN"
                .into(),
        )
    })
}

fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(name))
            .find(|p| p.is_file())
    })
}

/// A lock file holding our pid: a second `jetweave up` says so.
struct Lock(PathBuf);

impl Lock {
    fn take(dir: &Path) -> Result<Lock, Error> {
        std::fs::create_dir_all(dir)?;
        let path = dir.join("up.pid");
        if let Ok(text) = std::fs::read_to_string(&path) {
            if let Ok(pid) = text.trim().parse::<i32>() {
                // Signal 0: is that process alive?
                let alive = unsafe { libc::kill(pid, 0) } == 0;
                if alive && pid != std::process::id() as i32 {
                    return Err(Error::Config(format!(
                        "jetweave up is already running (pid {pid}, lock {}); stop it with Ctrl-C in its terminal or `kill {pid}`",
                        path.display()
                    )));
                }
            }
        }
        std::fs::write(&path, std::process::id().to_string())?;
        Ok(Lock(path))
    }
}

impl Drop for Lock {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// The nats-server child; SIGTERM and wait on drop.
struct Server(Child);

impl Server {
    fn start(bin: &Path, opts: &UpOptions) -> Result<Server, Error> {
        let store = opts.data_dir.join("nats");
        std::fs::create_dir_all(&store)?;
        let mut cmd = Command::new(bin);
        match server_config(opts)? {
            Some(conf) => cmd.arg("-c").arg(conf),
            None => cmd.arg("-js"),
        };
        cmd.args([
            "-a",
            "127.0.0.1",
            "-p",
            &opts.nats_port.to_string(),
            "-m",
            &opts.monitor_port.to_string(),
            "-sd",
        ])
        .arg(&store)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(
            opts.data_dir.join("nats-server.log"),
        )?);
        // Its own process group: Ctrl-C in the terminal reaches only us,
        // and we stop the server after the node has drained through it.
        // It still dies with us if we are killed.
        use std::os::unix::process::CommandExt;
        cmd.process_group(0);
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                Ok(())
            });
        }
        let child = cmd.spawn()?;
        let server = Server(child);
        let deadline = Instant::now() + Duration::from_secs(15);
        while std::net::TcpStream::connect(("127.0.0.1", opts.nats_port)).is_err() {
            if Instant::now() > deadline {
                return Err(Error::Config(format!(
                    "nats-server did not start; see {}",
                    opts.data_dir.join("nats-server.log").display()
                )));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(server)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        unsafe {
            libc::kill(self.0.id() as i32, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs the local cluster until `stop` resolves.
pub async fn run(
    opts: UpOptions,
    stop: impl std::future::Future<Output = ()>,
) -> Result<(), Error> {
    let _lock = Lock::take(&opts.data_dir)?;
    if std::net::TcpStream::connect(("127.0.0.1", opts.nats_port)).is_ok() {
        return Err(Error::Config(format!(
            "port {} is in use (another NATS server?); pick another with --nats-port",
            opts.nats_port
        )));
    }
    let bin = find_nats_server()?;
    let server = Server::start(&bin, &opts)?;
    let url = format!("nats://127.0.0.1:{}", opts.nats_port);
    let shutdown = Shutdown::new();

    let mut ccfg = jetweave::coordinator::CoordinatorConfig::new();
    ccfg.id = "local-coordinator".into();
    ccfg.prefix = opts.prefix.clone();
    let client = opts.connect(&url, "coordinator").await?;
    let coordinator =
        jetweave::coordinator::Coordinator::start(client.clone(), ccfg, shutdown.child()).await?;

    let cfg = local_node_config(&opts);
    let node_client = opts.connect(&url, &format!("node-{LOCAL_NODE}")).await?;
    let node = jetweave::worker::Node::new(cfg)
        .start(node_client.clone(), shutdown.clone())
        .await?;

    let sidecar_cfg = jetweave::sidecar::SidecarConfig {
        listen: opts.http.clone(),
        prefix: opts.prefix.clone(),
        node: Some(LOCAL_NODE.into()),
        ..Default::default()
    };
    let sidecar_client = opts.connect(&url, "sidecar").await?;
    let sidecar = jetweave::sidecar::serve(sidecar_client, sidecar_cfg, shutdown.child()).await?;

    print_banner(&opts, &url, sidecar.local_addr);

    stop.await;
    println!("stopping...");
    node.shutdown(Duration::from_secs(10)).await;
    shutdown.trigger();
    coordinator.wait().await;
    sidecar.wait().await;
    jetweave::connect::flush_briefly(&client).await;
    jetweave::connect::flush_briefly(&node_client).await;
    drop(client);
    drop(server);
    println!("stopped.");
    Ok(())
}

/// The local node: hybrid (worker + coordinator), the example handler if
/// it is there, and a `watcher` process for event injection.
fn local_node_config(opts: &UpOptions) -> NodeConfig {
    let mut cfg = NodeConfig::new(LOCAL_NODE);
    cfg.prefix = opts.prefix.clone();
    cfg.role = Role::Hybrid;
    cfg.url = Some(format!("http://{}", opts.http));
    cfg.traces = opts.traces;
    let example = Path::new("examples/handlers/wordcount.py");
    if example.exists() {
        cfg.handlers.push(HandlerSpec {
            task_type: "wordcount".into(),
            exec: Some(vec!["python3".into(), example.display().to_string()]),
            http: None,
        });
    }
    cfg.processes.push(ProcessSpec::new("watcher", "echo"));
    cfg
}

/// What is running and what to try.
fn print_banner(opts: &UpOptions, url: &str, http: std::net::SocketAddr) {
    let p = &opts.prefix;
    let (nats_auth, jw_auth, secure) = match opts.nkey("operator") {
        Some(key) => {
            let inbox = jetweave::connect::NkeySeed::read(&key)
                .map(|s| jetweave::connect::inbox_prefix(&s.key_id()))
                .unwrap_or_default();
            let key = key.display();
            (
                format!(" --nkey {key} --inbox-prefix {inbox}"),
                format!(" --nkey {key}"),
                format!(
                    "  secure      anonymous refused; one key per role in {}\n              \
                     (operator: export NATS_NKEY={key})\n",
                    opts.auth_dir().display()
                ),
            )
        }
        None => Default::default(),
    };
    println!(
        r#"
jetweave is up.
  NATS        {url}   (monitoring http://127.0.0.1:{mon})
  sidecar     http://{http}   (OpenAPI: http://{http}/openapi.json)
  dashboard   http://{http}/ui
  node        local (hybrid: worker + coordinator), processes: watcher
  data        {data}
{secure}
Try, with the nats CLI:
  nats -s {url}{nats_auth} req {p}.api.tasks.submit '{{"type": "echo", "payload": {{"hello": "world"}}}}'
  nats -s {url}{nats_auth} sub '{p}.results.>'
  nats -s {url}{nats_auth} req {p}.ctl.local.status ''
  nats -s {url}{nats_auth} kv ls {p}-nodes
  nats -s {url}{nats_auth} req {p}.event.local.watcher '{{"payload": {{"ping": 1}}}}'

or curl:
  curl -s http://{http}/health
  curl -s -X POST http://{http}/tasks/submit -H 'content-type: application/json' -d '{{"task_data": {{"type": "wordcount", "payload": {{"text": "to be or not to be"}}}}}}'
  curl -s http://{http}/cluster/status

or the CLI:
  jetweave --nats-url {url}{jw_auth} submit echo --payload '{{"x": 1}}' --wait
  jetweave --nats-url {url}{jw_auth} nodes

Ctrl-C stops everything.
"#,
        mon = opts.monitor_port,
        http = http,
        data = opts.data_dir.display(),
    );
}
