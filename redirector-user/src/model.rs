//! The concepts every layer shares, each defined once: how clients are
//! forwarded, how the program is attached, how first contact answers, and a
//! home server with its state. Config parses them, the core decides with
//! them, the kernel layer writes them to maps and the CLI shows them.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ForwardingMode {
    /// IPIP / IPv6-in-IPv6 to the home server, which answers the client directly.
    Dsr,
    /// Rewrite to the home server; replies come back through the edge.
    Nat,
}

/// How the program is attached; `native` needs driver support (veth has it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum AttachMode {
    #[default]
    Native,
    Skb,
}

/// How first contact answers a request. A SUBSCRIBE is always proxied
/// (the edge must see the watcher's dialog).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Policy {
    /// Redirect only what user agents follow: a request straight from its
    /// client (one Via value) gets a 302, except REGISTER, which is proxied
    /// (most user agents report a 302 to REGISTER as a failed
    /// registration); forwarded requests are proxied. Every direct client
    /// is put on the fast path, so its next requests skip the daemon.
    #[default]
    Auto,
    /// The design's 302 by Via: redirect every request with one Via value,
    /// REGISTER included, proxy the others. For clients that follow 3xx for
    /// REGISTER and can reach the home servers directly.
    ByVia,
    /// Redirect everything (the response goes back along the Vias).
    Redirect,
    /// Proxy everything.
    Proxy,
}

/// A home server's state: the operator's (config, drain / undrain), or the
/// effective one once the health checks' verdict is applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ServerState {
    Active,
    /// Takes no new clients; the ones it has stay until moved.
    Draining,
    Down,
    /// Being removed (`redirector servers remove`): takes no new clients,
    /// its clients are moved away, then its slot is retired.
    Removing,
}

/// Where a request came straight from: the client's socket, the service
/// address:port it sent to, whether its top Via asked for `rport` (RFC
/// 3581). What the fast path needs to take over from first contact.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Origin {
    pub client: SocketAddr,
    pub service: SocketAddr,
    pub asks_rport: bool,
}

/// A home server as the operator defines it: a config's `[[servers]]`
/// entry, or what `redirector servers add` / `set` make of one. What the
/// store keeps of the pool, and what config reloads are compared by.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServerSpec {
    pub name: String,
    pub ipv4: Option<Ipv4Addr>,
    pub ipv6: Option<Ipv6Addr>,
    pub port: u16,
    pub state: ServerState,
    pub weight: f64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct HomeServer {
    pub name: String,
    /// Slot in the kernel's SERVERS map.
    pub index: u32,
    pub ipv4: Option<Ipv4Addr>,
    pub ipv6: Option<Ipv6Addr>,
    pub port: u16,
    /// The operator's state (config, drain / undrain).
    pub state: ServerState,
    /// The health checks' verdict; an unhealthy server counts as down.
    pub healthy: bool,
    pub weight: f64,
}

impl HomeServer {
    /// `spec` in SERVERS slot `index`, healthy until the health checks
    /// say otherwise.
    pub fn new(spec: ServerSpec, index: u32) -> Self {
        let ServerSpec { name, ipv4, ipv6, port, state, weight } = spec;
        Self { name, index, ipv4, ipv6, port, state, healthy: true, weight }
    }

    /// What the operator defined of it.
    pub fn spec(&self) -> ServerSpec {
        ServerSpec {
            name: self.name.clone(),
            ipv4: self.ipv4,
            ipv6: self.ipv6,
            port: self.port,
            state: self.state,
            weight: self.weight,
        }
    }

    /// What the kernel and first contact act on.
    pub fn effective_state(&self) -> ServerState {
        if self.healthy { self.state } else { ServerState::Down }
    }

    /// May take new clients.
    pub fn accepts_new(&self) -> bool {
        self.effective_state() == ServerState::Active
    }

    /// The server's SIP address in the family of `peer`.
    pub fn address_for(&self, peer: SocketAddr) -> Option<SocketAddr> {
        match peer {
            SocketAddr::V4(_) => self.ipv4.map(|ip| SocketAddr::new(ip.into(), self.port)),
            SocketAddr::V6(_) => self.ipv6.map(|ip| SocketAddr::new(ip.into(), self.port)),
        }
    }

    /// Its address, IPv4 first.
    pub fn any_address(&self) -> Option<SocketAddr> {
        let v4 = self.ipv4.map(|ip| SocketAddr::new(ip.into(), self.port));
        v4.or(self.ipv6.map(|ip| SocketAddr::new(ip.into(), self.port)))
    }

    /// One of its addresses is `ip`.
    pub fn has_address(&self, ip: std::net::IpAddr) -> bool {
        self.ipv4.is_some_and(|v4| ip == v4) || self.ipv6.is_some_and(|v6| ip == v6)
    }
}
