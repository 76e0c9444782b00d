//! Where registered agents' endpoints may point. A registration names a URL
//! the sidecar will POST tasks to, so an open sidecar would be a proxy to
//! any host its network reaches (a cloud metadata service, an admin port).
//! [`AgentAllow`] limits it: by default to loopback and private ranges;
//! with `--agent-allow` to the CIDRs, addresses and host names given.

use std::net::IpAddr;

use ipnet::IpNet;

use crate::error::{Error, ErrorCode};

/// The allow-list of agent endpoint hosts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentAllow {
    nets: Vec<IpNet>,
    hosts: Vec<String>,
    any: bool,
}

/// Loopback and private ranges (RFC 1918, RFC 4193): the default.
const DEFAULT_NETS: &[&str] = &[
    "127.0.0.0/8",
    "::1/128",
    "10.0.0.0/8",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "fc00::/7",
];

impl Default for AgentAllow {
    fn default() -> Self {
        AgentAllow {
            nets: DEFAULT_NETS.iter().filter_map(|n| n.parse().ok()).collect(),
            hosts: Vec::new(),
            any: false,
        }
    }
}

impl AgentAllow {
    /// Parses `--agent-allow` entries: CIDRs (`10.1.0.0/16`), addresses,
    /// host names (`agents.internal`, `*.agents.internal`) or `*` (any
    /// host). An empty list is the default.
    ///
    /// ```
    /// use jetweave::sidecar::AgentAllow;
    /// assert!(AgentAllow::parse(&["10.1.0.0/16".into(), "agents.internal".into()]).is_ok());
    /// assert!(AgentAllow::parse(&["not a host!".into()]).is_err());
    /// ```
    pub fn parse(entries: &[String]) -> Result<AgentAllow, Error> {
        let entries: Vec<&str> = entries
            .iter()
            .map(|e| e.trim())
            .filter(|e| !e.is_empty())
            .collect();
        if entries.is_empty() {
            return Ok(AgentAllow::default());
        }
        let mut a = AgentAllow {
            nets: Vec::new(),
            hosts: Vec::new(),
            any: false,
        };
        for e in entries {
            if e == "*" {
                a.any = true;
            } else if let Ok(net) = e.parse::<IpNet>() {
                a.nets.push(net);
            } else if let Ok(ip) = e.parse::<IpAddr>() {
                a.nets.push(IpNet::from(ip));
            } else if is_host_pattern(e) {
                a.hosts.push(e.to_ascii_lowercase());
            } else {
                return Err(Error::Config(format!(
                    "--agent-allow {e:?}: not a CIDR, address or host name"
                )));
            }
        }
        Ok(a)
    }

    /// Checks an agent's endpoint URL: its host must be allowed by name,
    /// or every address it resolves to must be in an allowed range.
    pub async fn check(&self, url: &str) -> Result<(), Error> {
        let refused = |why: String| Error::invalid(ErrorCode::InvalidValue, why);
        let parsed = reqwest::Url::parse(url)
            .map_err(|e| refused(format!("endpoints.http {url:?}: {e}")))?;
        let host = parsed
            .host_str()
            .ok_or_else(|| refused(format!("endpoints.http {url:?} has no host")))?
            .to_ascii_lowercase();
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        if let Ok(ip) = bare.parse::<IpAddr>() {
            return self.check_ips(url, &[ip]);
        }
        if self.any || self.hosts.iter().any(|h| host_matches(h, &host)) {
            return Ok(());
        }
        let port = parsed.port_or_known_default().unwrap_or(80);
        let ips: Vec<IpAddr> = tokio::net::lookup_host((host.as_str(), port))
            .await
            .map_err(|e| {
                refused(format!(
                    "endpoints.http host {host:?} does not resolve: {e}"
                ))
            })?
            .map(|a| a.ip())
            .collect();
        self.check_ips(url, &ips)
    }

    fn check_ips(&self, url: &str, ips: &[IpAddr]) -> Result<(), Error> {
        match ips
            .iter()
            .find(|ip| !self.any && !self.nets.iter().any(|n| n.contains(*ip)))
        {
            None if !ips.is_empty() => Ok(()),
            None => Err(Error::invalid(
                ErrorCode::InvalidValue,
                format!("endpoints.http {url:?}: no address"),
            )),
            Some(ip) => Err(Error::invalid(
                ErrorCode::NotAllowed,
                format!(
                    "endpoints.http {url:?}: {ip} is not an allowed agent address \
                     (the sidecar's --agent-allow; default loopback and private ranges)"
                ),
            )),
        }
    }
}

fn is_host_pattern(e: &str) -> bool {
    let name = e.strip_prefix("*.").unwrap_or(e);
    !name.is_empty()
        && name
            .split('.')
            .all(|l| !l.is_empty() && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'))
}

fn host_matches(pattern: &str, host: &str) -> bool {
    match pattern.strip_prefix("*.") {
        Some(suffix) => host.ends_with(&format!(".{suffix}")),
        None => pattern == host,
    }
}
