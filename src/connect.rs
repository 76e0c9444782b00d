//! Connecting to NATS: URL and credentials (an nkey seed among them), a
//! bounded wait for a server that is not up yet, and the permission
//! errors the server sends back (a denied publish is dropped by the
//! server, which tells the client with `-ERR`; [`permission_denied`] lets a
//! request that got no answer say why).

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
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
    /// Nkey seed file (`jetweave auth init` writes one per user). With it
    /// the client's inbox prefix is `_INBOX_<key id>` (see [`NkeySeed`]).
    pub nkey: Option<PathBuf>,
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
            nkey: None,
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
            .request_timeout(Some(Duration::from_secs(10)))
            .event_callback(|event| async move {
                if let async_nats::Event::ServerError(async_nats::ServerError::Other(e)) = event {
                    note_server_error(&e);
                }
            });
        if let Some(path) = &self.nkey {
            let seed = NkeySeed::read(path)?;
            o = o
                .custom_inbox_prefix(inbox_prefix(&seed.key_id()))
                .nkey(seed.seed);
        }
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
                         --user/--password, --creds or --nkey",
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

/// Flushes what `client` has buffered, waiting at most 2 s: at shutdown a
/// client whose server is gone would otherwise wait for a reconnection that
/// never comes (a process must still exit when NATS is down).
pub async fn flush_briefly(client: &async_nats::Client) {
    let _ = tokio::time::timeout(Duration::from_secs(2), client.flush()).await;
}

/// An nkey seed read from a file: the first word that starts with `SU`
/// (a user seed); lines starting with `#` are comments.
#[derive(Clone)]
pub struct NkeySeed {
    seed: String,
    public: String,
}

impl std::fmt::Debug for NkeySeed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "NkeySeed({})", self.public)
    }
}

impl NkeySeed {
    /// Reads and checks the seed in `path`.
    pub fn read(path: &Path) -> Result<NkeySeed, Error> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::Config(format!("nkey file {}: {e}", path.display())))?;
        let seed = text
            .lines()
            .filter(|l| !l.trim_start().starts_with('#'))
            .flat_map(str::split_whitespace)
            .find(|w| w.starts_with("SU"))
            .ok_or_else(|| {
                Error::Config(format!(
                    "nkey file {}: no user seed (SU...)",
                    path.display()
                ))
            })?;
        Self::parse(seed).map_err(|e| Error::Config(format!("nkey file {}: {e}", path.display())))
    }

    /// Checks a seed string.
    pub fn parse(seed: &str) -> Result<NkeySeed, Error> {
        let kp = nkeys::KeyPair::from_seed(seed)
            .map_err(|e| Error::Config(format!("not an nkey seed: {e}")))?;
        Ok(NkeySeed {
            seed: seed.to_string(),
            public: kp.public_key(),
        })
    }

    /// The public key (`U...`), as the server config names the user.
    pub fn public_key(&self) -> &str {
        &self.public
    }

    /// The short id that names this key's inbox prefix: the public key's
    /// first 16 characters.
    pub fn key_id(&self) -> String {
        key_id(&self.public)
    }
}

/// The short id of a public key: its first 16 characters.
pub fn key_id(public_key: &str) -> String {
    public_key.chars().take(16).collect()
}

/// `_INBOX_<id>`: the inbox prefix of a client with a key, so that no
/// other user may subscribe to its replies.
pub fn inbox_prefix(id: &str) -> String {
    format!("_INBOX_{id}")
}

/// Permission errors the server reported lately, newest last.
static DENIED: Mutex<VecDeque<(Instant, String)>> = Mutex::new(VecDeque::new());
const DENIED_KEPT: usize = 64;
const DENIED_FOR: Duration = Duration::from_secs(60);

fn note_server_error(e: &str) {
    if !e.to_ascii_lowercase().contains("permissions violation") {
        tracing::warn!(error = %e, "NATS server error");
        return;
    }
    tracing::warn!(error = %e, "NATS refused an operation");
    let mut d = DENIED.lock().unwrap_or_else(|p| p.into_inner());
    if d.len() == DENIED_KEPT {
        d.pop_front();
    }
    d.push_back((Instant::now(), e.to_string()));
}

/// The server's permission error for `subject`, if it sent one to a client
/// of this process since `since` (and within the last minute): a denied
/// publish is not an error of the publish call (the server drops it and
/// says so with `-ERR`), so a request that got no answer asks here why.
pub fn permission_denied(subject: &str, since: Instant) -> Option<String> {
    let quoted = format!("\"{subject}\"");
    let d = DENIED.lock().unwrap_or_else(|p| p.into_inner());
    d.iter()
        .rev()
        .take_while(|(at, _)| *at >= since && at.elapsed() < DENIED_FOR)
        .find(|(_, e)| e.contains(&quoted))
        .map(|(_, e)| e.clone())
}

/// Resolves with the server's permission error for `subject` once one
/// arrives after `since` (checked every 20 ms); race it against a request
/// so a denied one fails at once instead of timing out.
pub async fn denied(subject: &str, since: Instant) -> String {
    loop {
        if let Some(e) = permission_denied(subject, since) {
            return e;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
