//! Connecting to NATS: URL and credentials, and a bounded wait for a server
//! that is not up yet.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::error::Error;

/// Default NATS URL.
pub const DEFAULT_NATS_URL: &str = "nats://127.0.0.1:4222";

/// How to reach NATS (contract: "Processes and flags").
#[derive(Debug, Clone)]
pub struct NatsOptions {
    /// Server URL(s), comma separated.
    pub url: String,
    /// Credentials file.
    pub creds: Option<PathBuf>,
    /// User name (with `password`).
    pub user: Option<String>,
    /// Password.
    pub password: Option<String>,
    /// Token.
    pub token: Option<String>,
    /// CA certificate to trust.
    pub tls_ca: Option<PathBuf>,
    /// Client certificate.
    pub tls_cert: Option<PathBuf>,
    /// Client key.
    pub tls_key: Option<PathBuf>,
    /// Require TLS.
    pub tls_required: bool,
    /// How long to keep trying the first connection.
    pub connect_wait: Duration,
}

impl Default for NatsOptions {
    fn default() -> Self {
        NatsOptions {
            url: DEFAULT_NATS_URL.to_string(),
            creds: None,
            user: None,
            password: None,
            token: None,
            tls_ca: None,
            tls_cert: None,
            tls_key: None,
            tls_required: false,
            connect_wait: Duration::from_secs(10),
        }
    }
}

impl NatsOptions {
    /// Options for `url` with everything else default.
    pub fn new(url: impl Into<String>) -> Self {
        NatsOptions {
            url: url.into(),
            ..Default::default()
        }
    }

    async fn options(&self, name: &str) -> Result<async_nats::ConnectOptions, Error> {
        let mut o = async_nats::ConnectOptions::new()
            .name(name)
            .connection_timeout(Duration::from_secs(2))
            .request_timeout(Some(Duration::from_secs(10)));
        if let Some(c) = &self.creds {
            o = o
                .credentials_file(c)
                .await
                .map_err(|e| Error::Config(format!("credentials file {}: {e}", c.display())))?;
        }
        if let (Some(u), Some(p)) = (&self.user, &self.password) {
            o = o.user_and_password(u.clone(), p.clone());
        }
        if let Some(t) = &self.token {
            o = o.token(t.clone());
        }
        if let Some(ca) = &self.tls_ca {
            o = o.add_root_certificates(ca.clone());
        }
        if let (Some(c), Some(k)) = (&self.tls_cert, &self.tls_key) {
            o = o.add_client_certificate(c.clone(), k.clone());
        }
        if self.tls_required {
            o = o.require_tls(true);
        }
        Ok(o)
    }

    /// Connects, retrying with backoff for up to `connect_wait` while saying
    /// what it waits for; then fails with a one-line error. Once connected,
    /// the client reconnects on its own.
    pub async fn connect(&self, name: &str) -> Result<async_nats::Client, Error> {
        let addrs = self
            .url
            .split(',')
            .map(str::trim)
            .filter(|u| !u.is_empty())
            .map(|u| {
                u.parse::<async_nats::ServerAddr>()
                    .map_err(|e| Error::Config(format!("invalid NATS URL {u:?}: {e}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        if addrs.is_empty() {
            return Err(Error::Config("no NATS URL given".into()));
        }
        let deadline = Instant::now() + self.connect_wait;
        let mut delay = Duration::from_millis(100);
        let mut warned = false;
        loop {
            let opts = self.options(name).await?;
            match opts.connect(addrs.clone()).await {
                Ok(c) => return Ok(c),
                Err(e)
                    if matches!(
                        e.kind(),
                        async_nats::ConnectErrorKind::AuthorizationViolation
                            | async_nats::ConnectErrorKind::Authentication
                    ) =>
                {
                    // Waiting does not fix credentials: say so at once.
                    return Err(Error::nats(format!(
                        "NATS at {} refused the credentials ({e}): check --token, \
                         --user/--password or --creds",
                        self.url
                    )));
                }
                Err(e) => {
                    if Instant::now() + delay > deadline {
                        return Err(Error::nats(format!(
                            "cannot reach NATS at {} after {:?}: {e}",
                            self.url, self.connect_wait
                        )));
                    }
                    if !warned {
                        tracing::warn!(url = %self.url, error = %e, "waiting for NATS");
                        warned = true;
                    }
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(1));
                }
            }
        }
    }
}

/// Replicas for the JetStream resources jetweave creates: 1 on a single
/// server; on a cluster, 3 when the cluster can place them, else as many
/// as it can. The client's INFO lists only the cluster members known when
/// it connected (a process started while the cluster forms would see one),
/// so the cluster is asked instead: a throwaway memory stream is created
/// with 3, then 2 replicas, and deleted.
pub async fn replicas_for(client: &async_nats::Client) -> usize {
    let info = client.server_info();
    if info.cluster.as_deref().is_none_or(|c| c.is_empty()) {
        return 1;
    }
    let js = async_nats::jetstream::new(client.clone());
    let name = format!("JETWEAVE_REPLICAS_PROBE_{}", uuid::Uuid::new_v4().simple());
    for n in [3, 2] {
        let cfg = async_nats::jetstream::stream::Config {
            name: name.clone(),
            subjects: vec![format!("_jetweave.probe.{name}")],
            storage: async_nats::jetstream::stream::StorageType::Memory,
            num_replicas: n,
            max_messages: 1,
            ..Default::default()
        };
        if js.create_stream(cfg).await.is_ok() {
            let _ = js.delete_stream(&name).await;
            return n;
        }
    }
    info.connect_urls.len().clamp(1, 3)
}
