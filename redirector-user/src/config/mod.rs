//! The daemon's TOML configuration: parsed with serde, then validated so
//! that every problem is reported with the field it is in.

use std::{
    collections::HashSet,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    ops::RangeInclusive,
    path::{Path, PathBuf},
};

use serde::Deserialize;

pub use crate::model::{AttachMode, ForwardingMode, Policy, ServerState};
use crate::model::{HomeServer, ServerSpec};

/// Where the daemon serves its control API unless `[control] socket` says otherwise.
pub const DEFAULT_SOCKET: &str = "/run/redirector/control.sock";
/// How many watcher subscriptions an edge keeps by default.
pub const DEFAULT_WATCHER_CAPACITY: usize = 100_000;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("config file {path} is not valid: {source}")]
    Parse { path: PathBuf, source: Box<toml::de::Error> },
    #[error("config field `{field}`: {problem}")]
    Invalid { field: String, problem: String },
}

/// One validation step: the first problem it finds.
type Check = fn(&Config) -> Result<(), ConfigError>;

fn invalid(field: impl Into<String>, problem: impl Into<String>) -> ConfigError {
    ConfigError::Invalid { field: field.into(), problem: problem.into() }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The edge interface the XDP program is attached to.
    pub interface: String,
    pub mode: ForwardingMode,
    #[serde(default)]
    pub attach: AttachMode,
    pub service: Service,
    #[serde(default)]
    pub edge: Edge,
    pub servers: Vec<Server>,
    #[serde(default)]
    pub clients: Vec<Client>,
    #[serde(default)]
    pub sip: Sip,
    #[serde(default)]
    pub control: Control,
    #[serde(default)]
    pub health: Health,
    #[serde(default)]
    pub fast_path: FastPathSettings,
    #[serde(default)]
    pub rebalance: Rebalance,
    #[serde(default)]
    pub watchers: WatchersSettings,
    #[serde(default)]
    pub stats: StatsSettings,
    #[serde(default)]
    pub http: HttpSettings,
    #[serde(default)]
    pub documents: DocumentSettings,
    #[serde(default)]
    pub log: LogSettings,
    #[serde(default)]
    pub limits: LimitsSettings,
    #[serde(default)]
    pub store: StoreSettings,
    #[serde(default)]
    pub probe: ProbeSettings,
}

/// Client-driven home selection (`redirector_ebpf::probe`): probes to the
/// service addresses at `port` are answered in XDP for the pool, and a
/// REGISTER's cookie picks a new AOR's home.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProbeSettings {
    /// The UDP port probes are sent to (on the service addresses and on
    /// each home); absent: probes are off and cookies are not read.
    pub port: Option<u16>,
    /// A file holding the secret shared by the edges and the homes' `redirector
    /// decap`: 32 hex digits (16 bytes).
    pub secret_file: Option<PathBuf>,
    /// Seconds a period key is used; a cookie is good for one more period.
    #[serde(default = "default_probe_period")]
    pub period: u64,
    /// Seconds between the state messages the leading edge sends each home
    /// besides those sent at once when the pool changes, so that a lost
    /// one heals (`probe::state`).
    #[serde(default = "default_state_every")]
    pub state_every: f64,
}

impl Default for ProbeSettings {
    fn default() -> Self {
        Self { port: None, secret_file: None, period: default_probe_period(), state_every: default_state_every() }
    }
}

fn default_probe_period() -> u64 {
    300
}

fn default_state_every() -> f64 {
    5.0
}

/// Where assignments are kept, and their upkeep.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreSettings {
    /// Seconds without a sighting (a first contact or a fast-path packet)
    /// after which a client's assignment is removed; 0 keeps them forever.
    #[serde(default = "default_expire_after")]
    pub expire_after: f64,
    /// `redb`: this edge alone, in `sip.database`. `etcd`: shared by every
    /// edge configured with the same `endpoints` and `prefix`.
    #[serde(default)]
    pub backend: Backend,
    /// etcd's client URLs, e.g. `["http://10.0.0.1:2379", …]`.
    #[serde(default)]
    pub endpoints: Vec<String>,
    /// Every key of this pool starts with it: one prefix per pool.
    #[serde(default = "default_prefix")]
    pub prefix: String,
    /// This edge's name among the pool's edges; the host name if unset.
    #[serde(default)]
    pub edge: Option<String>,
    /// etcd authentication: the user, and a file holding its password.
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// TLS to etcd (`https://` endpoints): the CA that signed the members'
    /// certificates, and this edge's own certificate and key if the
    /// cluster asks for client certificates.
    #[serde(default)]
    pub ca: Option<PathBuf>,
    #[serde(default)]
    pub cert: Option<PathBuf>,
    #[serde(default)]
    pub key: Option<PathBuf>,
    /// Seconds an etcd request may take before it counts as failed (new
    /// clients then get 503).
    #[serde(default = "default_store_timeout")]
    pub timeout: f64,
    /// With the etcd backend: this edge's local copy of the shared store,
    /// so that a restart reads only what changed meanwhile, and starts
    /// while etcd is out of reach. `etcd-replica.redb` next to
    /// `sip.database` if unset.
    #[serde(default)]
    pub replica: Option<PathBuf>,
    /// The most operations one etcd transaction may hold: the members'
    /// `--max-txn-ops` (etcd's default, 128, unless they run with more).
    /// New AORs take one compare and one put each, so a batch of them is
    /// one transaction (one raft entry) when this is at least twice the
    /// batch.
    #[serde(default = "default_max_txn_ops")]
    pub max_txn_ops: usize,
}

impl Default for StoreSettings {
    fn default() -> Self {
        Self {
            expire_after: default_expire_after(),
            backend: Backend::default(),
            endpoints: Vec::new(),
            prefix: default_prefix(),
            edge: None,
            username: None,
            password_file: None,
            ca: None,
            cert: None,
            key: None,
            timeout: default_store_timeout(),
            replica: None,
            max_txn_ops: default_max_txn_ops(),
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    #[default]
    Redb,
    Etcd,
}

fn default_prefix() -> String {
    "/redirector/default/".into()
}

/// Operations etcd takes in one transaction unless its members are started
/// with more (`--max-txn-ops`).
pub const ETCD_MAX_TXN_OPS: usize = 128;

fn default_max_txn_ops() -> usize {
    ETCD_MAX_TXN_OPS
}

fn default_store_timeout() -> f64 {
    2.0
}

/// 30 days.
fn default_expire_after() -> f64 {
    2_592_000.0
}

/// The shortest `store.expire_after` other than 0 (never): a walk over the
/// store starts at most once a second.
const SHORTEST_EXPIRY: f64 = 1.0;

/// The longest `limits.throttle_for`: a prefix throttled by mistake (a
/// carrier's NAT whose users all registered at once) recovers within it.
const MAX_THROTTLE_FOR: f64 = 3600.0;

/// Who may become a new client: anyone who reaches the service address can
/// name any AOR, and each new one is a durable assignment.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsSettings {
    /// New clients a second per source prefix (IPv4 /24, IPv6 /64); past
    /// it they get 503 with Retry-After. Known clients are never limited.
    #[serde(default = "default_new_clients_per_prefix")]
    pub new_clients_per_prefix: f64,
    /// How many new clients a prefix may bring in at once.
    #[serde(default = "default_new_clients_burst")]
    pub new_clients_burst: f64,
    /// Assignments the store may hold; new clients past it get 503.
    #[serde(default = "default_max_assignments")]
    pub max_assignments: u64,
    /// A prefix refused for its rate is throttled in the kernel for this
    /// long (seconds, renewed while it keeps being refused): its datagrams
    /// to first contact past `throttled_datagrams` a second are dropped
    /// before they reach the daemon. Clients on the fast path pass.
    #[serde(default = "default_throttle_for")]
    pub throttle_for: f64,
    /// Datagrams a second a throttled prefix may still send to first
    /// contact (its known clients' new sockets, its new clients' retries).
    #[serde(default = "default_throttled_datagrams")]
    pub throttled_datagrams: u32,
}

impl Default for LimitsSettings {
    fn default() -> Self {
        Self {
            new_clients_per_prefix: default_new_clients_per_prefix(),
            new_clients_burst: default_new_clients_burst(),
            max_assignments: default_max_assignments(),
            throttle_for: default_throttle_for(),
            throttled_datagrams: default_throttled_datagrams(),
        }
    }
}

fn default_new_clients_per_prefix() -> f64 {
    100.0
}

fn default_new_clients_burst() -> f64 {
    1000.0
}

fn default_max_assignments() -> u64 {
    10_000_000
}

fn default_throttle_for() -> f64 {
    10.0
}

fn default_throttled_datagrams() -> u32 {
    200
}

/// SUBSCRIBE dialogs kept to notify watchers when their client moves.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WatchersSettings {
    /// Most subscriptions kept; beyond it the oldest is dropped (counted).
    #[serde(default = "default_watcher_capacity")]
    pub capacity: usize,
}

impl Default for WatchersSettings {
    fn default() -> Self {
        Self { capacity: default_watcher_capacity() }
    }
}

fn default_watcher_capacity() -> usize {
    DEFAULT_WATCHER_CAPACITY
}

/// The statistics stream: how often the kernel counters are sampled, and
/// where (if anywhere) they are served in Prometheus text format.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StatsSettings {
    /// Seconds between samples.
    #[serde(default = "default_stats_interval")]
    pub interval: f64,
    /// `address:port` of the Prometheus endpoint (`GET /metrics`); off when absent.
    #[serde(default)]
    pub prometheus: Option<SocketAddr>,
}

impl Default for StatsSettings {
    fn default() -> Self {
        Self { interval: default_stats_interval(), prometheus: None }
    }
}

/// The HTTP listener: the status page, the routing table and `/metrics`.
/// Off unless `listen` is set; everything but `/metrics` asks for the
/// bearer token in `token_file`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpSettings {
    #[serde(default)]
    pub listen: Option<SocketAddr>,
    /// A file holding the bearer token (its first line).
    #[serde(default)]
    pub token_file: Option<PathBuf>,
}

/// Per-client configuration documents (`GET /config/{aor}` on the HTTP
/// listener, and `ua-profile` SUBSCRIBEs at the service addresses):
/// rendered from `template` (see `ops::documents`); off when absent.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DocumentSettings {
    #[serde(default)]
    pub template: Option<PathBuf>,
    /// Seconds a ua-profile subscription is granted when its SUBSCRIBE has
    /// no Expires, and the most granted (RFC 6080 suggests a day).
    #[serde(default = "default_max_expires")]
    pub max_expires: u32,
    /// A shorter (non-zero) Expires gets `423 Interval Too Brief`.
    #[serde(default = "default_min_expires")]
    pub min_expires: u32,
    /// ua-profile subscriptions kept at most; the oldest go first.
    #[serde(default = "default_watcher_capacity")]
    pub capacity: usize,
}

impl Default for DocumentSettings {
    fn default() -> Self {
        Self {
            template: None,
            max_expires: default_max_expires(),
            min_expires: default_min_expires(),
            capacity: default_watcher_capacity(),
        }
    }
}

fn default_max_expires() -> u32 {
    86_400
}

fn default_min_expires() -> u32 {
    60
}

fn default_stats_interval() -> f64 {
    1.0
}

/// Rebalancing on skewed fast-path load (see `rebalance`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rebalance {
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Seconds between load samples.
    #[serde(default = "default_rebalance_interval")]
    pub interval: f64,
    /// Act when the busiest server (per unit of weight) exceeds this many
    /// times the mean…
    #[serde(default = "default_trigger")]
    pub trigger: f64,
    /// …and move clients until it is under this many times the mean.
    #[serde(default = "default_settle")]
    pub settle: f64,
    /// Moves per round at most.
    #[serde(default = "default_max_moves")]
    pub max_moves: usize,
    /// Samples in a row the skew must show before anything moves.
    #[serde(default = "default_sustain")]
    pub sustain: u32,
    /// Samples to rest after moving.
    #[serde(default = "default_cooldown")]
    pub cooldown: u32,
    /// Below this many packets/s in all, nothing is balanced.
    #[serde(default = "default_min_rate")]
    pub min_rate: f64,
}

impl Default for Rebalance {
    fn default() -> Self {
        Self {
            enabled: true,
            interval: default_rebalance_interval(),
            trigger: default_trigger(),
            settle: default_settle(),
            max_moves: default_max_moves(),
            sustain: default_sustain(),
            cooldown: default_cooldown(),
            min_rate: default_min_rate(),
        }
    }
}

fn yes() -> bool {
    true
}

fn default_rebalance_interval() -> f64 {
    10.0
}

fn default_trigger() -> f64 {
    1.5
}

fn default_settle() -> f64 {
    1.1
}

fn default_max_moves() -> usize {
    10
}

fn default_sustain() -> u32 {
    2
}

fn default_cooldown() -> u32 {
    3
}

fn default_min_rate() -> f64 {
    10.0
}

/// The kernel's client entries.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FastPathSettings {
    /// Seconds without a packet after which a learned client leaves the fast
    /// path (its next packet is a first contact again). Its address and port
    /// may by then belong to another client. Config-pinned clients stay.
    #[serde(default = "default_idle_timeout")]
    pub idle_timeout: f64,
    /// Client entries the kernel maps hold (the LRU evicts beyond it; an
    /// evicted client meets first contact again). Preallocated at start:
    /// about 112 bytes each in dsr mode, 232 in nat mode.
    #[serde(default = "default_max_clients")]
    pub max_clients: u32,
    /// Where bpffs is (mounted there by the daemon if it is not). The XDP
    /// link and maps are pinned under `<bpffs>/redirector/<interface>/`, so
    /// the kernel keeps forwarding while the daemon is stopped or
    /// restarting, and the next daemon adopts them.
    #[serde(default = "default_bpffs")]
    pub bpffs: PathBuf,
}

impl Default for FastPathSettings {
    fn default() -> Self {
        Self { idle_timeout: default_idle_timeout(), max_clients: default_max_clients(), bpffs: default_bpffs() }
    }
}

fn default_bpffs() -> PathBuf {
    PathBuf::from(DEFAULT_BPFFS)
}

/// Where bpffs is mounted by convention.
pub const DEFAULT_BPFFS: &str = "/sys/fs/bpf";

fn default_max_clients() -> u32 {
    redirector_ebpf::MAX_CLIENTS
}

/// Bounds of `fast_path.max_clients`: below, a pool would churn through
/// first contact; above, the maps would take gigabytes of kernel memory
/// (the per-CPU `LOADS` alone take 8 bytes a client per possible CPU).
pub const MAX_CLIENTS_RANGE: std::ops::RangeInclusive<u32> = 1024..=(1 << 24);

/// What the daemon logs.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogSettings {
    /// A tracing filter: `info`, `debug`, `redirector=debug,info`…;
    /// `RUST_LOG` overrides it.
    #[serde(default = "default_log_level")]
    pub level: String,
}

impl Default for LogSettings {
    fn default() -> Self {
        Self { level: default_log_level() }
    }
}

fn default_log_level() -> String {
    "info".into()
}

fn default_idle_timeout() -> f64 {
    900.0
}

/// The local control API `redirector stats` and friends talk to.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Control {
    /// Unix socket, created root-only (mode 0600).
    #[serde(default = "default_control_socket")]
    pub socket: PathBuf,
}

impl Default for Control {
    fn default() -> Self {
        Self { socket: default_control_socket() }
    }
}

fn default_control_socket() -> PathBuf {
    PathBuf::from(DEFAULT_SOCKET)
}

/// First contact: how the daemon answers what the fast path passes up.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Sip {
    /// `auto` (proxy REGISTER, redirect other requests straight from their
    /// client, proxy forwarded ones), `by-via` (redirect every request with
    /// one Via), `redirect` or `proxy` for every request.
    #[serde(default)]
    pub first_contact: Policy,
    /// The embedded assignment database (redb), created if missing.
    #[serde(default = "default_database")]
    pub database: PathBuf,
    /// `Expires` of a 302, in seconds.
    #[serde(default = "default_redirect_expires")]
    pub redirect_expires: u32,
    /// `Retry-After` of a 503, in seconds.
    #[serde(default = "default_retry_after")]
    pub retry_after: u32,
    /// Where proxied requests (and health checks, and NOTIFYs) of its
    /// family leave from and home servers answer to; an edge address, not a
    /// service address. The edge has one such address per family it has an
    /// address of (`edge.ipv4`, `edge.ipv6`, port 5060); this one replaces
    /// the default of its family.
    pub proxy_address: Option<SocketAddr>,
}

impl Default for Sip {
    fn default() -> Self {
        Self {
            first_contact: Default::default(),
            database: default_database(),
            redirect_expires: default_redirect_expires(),
            retry_after: default_retry_after(),
            proxy_address: None,
        }
    }
}

fn default_database() -> PathBuf {
    PathBuf::from("/var/lib/redirector/assignments.redb")
}

fn default_redirect_expires() -> u32 {
    3600
}

fn default_retry_after() -> u32 {
    30
}

/// Health checks: SIP OPTIONS to every home server from the proxy address.
/// They also keep the kernel's neighbour entries for the servers resolved,
/// which the fast path's FIB lookups need.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Health {
    /// Seconds between checks (fractions allowed).
    #[serde(default = "default_health_interval")]
    pub interval: f64,
    /// Unanswered checks in a row before a server is marked down (its
    /// clients are then moved).
    #[serde(default = "default_down_after")]
    pub down_after: u32,
    /// Answered checks in a row before it is marked up again.
    #[serde(default = "default_up_after")]
    pub up_after: u32,
}

impl Default for Health {
    fn default() -> Self {
        Self { interval: default_health_interval(), down_after: default_down_after(), up_after: default_up_after() }
    }
}

fn default_health_interval() -> f64 {
    5.0
}

fn default_down_after() -> u32 {
    3
}

fn default_up_after() -> u32 {
    2
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Service {
    /// The service addresses (VIPs) clients send to.
    pub addresses: Vec<IpAddr>,
    #[serde(default = "default_ports")]
    pub ports: Vec<u16>,
}

fn default_ports() -> Vec<u16> {
    vec![5060]
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Edge {
    /// Source of dsr outer headers and of nat-rewritten packets.
    pub ipv4: Option<Ipv4Addr>,
    pub ipv6: Option<Ipv6Addr>,
    /// nat mode: the edge source ports handed to clients, `[first, last]`.
    #[serde(default = "default_nat_ports")]
    pub nat_ports: [u16; 2],
}

impl Default for Edge {
    fn default() -> Self {
        Self { ipv4: None, ipv6: None, nat_ports: default_nat_ports() }
    }
}

/// Below Linux's default ephemeral range (32768-60999), so the edge's own
/// outgoing connections never land on a port the fast path rewrites.
fn default_nat_ports() -> [u16; 2] {
    [20000, 32767]
}

impl Edge {
    pub fn nat_port_range(&self) -> RangeInclusive<u16> {
        self.nat_ports[0]..=self.nat_ports[1]
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Server {
    pub name: String,
    pub ipv4: Option<Ipv4Addr>,
    pub ipv6: Option<Ipv6Addr>,
    #[serde(default = "default_sip_port")]
    pub port: u16,
    #[serde(default = "default_state")]
    pub state: ServerState,
    /// Share of new clients relative to the other servers.
    #[serde(default = "default_weight")]
    pub weight: f64,
}

fn default_weight() -> f64 {
    1.0
}

fn default_sip_port() -> u16 {
    5060
}

fn default_state() -> ServerState {
    ServerState::Active
}

/// A client pinned to a home server before any first contact.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Client {
    /// The client's source address and port.
    pub address: SocketAddr,
    /// The `name` of its home server.
    pub server: String,
}

impl Config {
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.into(), source })?;
        Self::parse(&text).map_err(|err| match err {
            ConfigError::Parse { source, .. } => ConfigError::Parse { path: path.into(), source },
            other => other,
        })
    }

    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        let config = Self::parse_unchecked(text)?;
        config.validate()?;
        Ok(config)
    }

    /// The file read and parsed, not validated (see `problems`).
    pub fn load_unchecked(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.into(), source })?;
        Self::parse_unchecked(&text).map_err(|err| match err {
            ConfigError::Parse { source, .. } => ConfigError::Parse { path: path.into(), source },
            other => other,
        })
    }

    fn parse_unchecked(text: &str) -> Result<Self, ConfigError> {
        toml::from_str(text).map_err(|source| ConfigError::Parse { path: PathBuf::new(), source: Box::new(source) })
    }

    /// Every problem validation finds, each naming its field.
    pub fn problems(&self) -> Vec<ConfigError> {
        let checks: [Check; 14] = [
            Self::validate_interface,
            Self::validate_service,
            Self::validate_edge,
            Self::validate_servers,
            Self::validate_clients,
            Self::validate_intervals,
            Self::validate_rebalance,
            Self::validate_counts,
            Self::validate_sizes,
            Self::validate_limits,
            Self::validate_proxy,
            Self::validate_store,
            Self::validate_probe,
            Self::validate_http,
        ];
        checks.iter().filter_map(|check| check(self).err()).collect()
    }

    /// Index of the server called `name` in `servers` (its `SERVERS` slot).
    pub fn server_index(&self, name: &str) -> Option<u32> {
        self.servers.iter().position(|server| server.name == name).map(|index| index as u32)
    }

    /// The home servers as configured, each in the `SERVERS` slot of its
    /// index, healthy until the health checks say otherwise. (The daemon's
    /// pool is the store's, seeded and changed by `specs`: see
    /// `edge::servers`.)
    pub fn home_servers(&self) -> Vec<HomeServer> {
        self.specs().into_iter().zip(0..).map(|(spec, index)| HomeServer::new(spec, index)).collect()
    }

    /// The `[[servers]]` as the operator defined them.
    pub fn specs(&self) -> Vec<ServerSpec> {
        self.servers
            .iter()
            .map(|server| ServerSpec {
                name: server.name.clone(),
                ipv4: server.ipv4,
                ipv6: server.ipv6,
                port: server.port,
                state: server.state,
                weight: server.weight,
            })
            .collect()
    }

    fn validate(&self) -> Result<(), ConfigError> {
        self.problems().into_iter().next().map_or(Ok(()), Err)
    }

    fn validate_probe(&self) -> Result<(), ConfigError> {
        let Some(port) = self.probe.port else { return Ok(()) };
        if port == 0 || self.service.ports.contains(&port) {
            return Err(invalid("probe.port", format!("{port} must be a port other than 0 and the service's ports")));
        }
        if self.probe.secret_file.is_none() {
            return Err(invalid("probe.secret_file", "is needed with probe.port: a file of 32 hex digits"));
        }
        if self.probe.period == 0 {
            return Err(invalid("probe.period", "must be at least 1 second"));
        }
        if !(self.probe.state_every >= 0.1 && self.probe.state_every <= 3600.0) {
            return Err(invalid("probe.state_every", "must be between 0.1 and 3600 seconds"));
        }
        Ok(())
    }

    fn validate_interface(&self) -> Result<(), ConfigError> {
        if self.interface.is_empty() {
            return Err(invalid("interface", "must name the edge interface, e.g. \"eth0\""));
        }
        Ok(())
    }

    fn validate_intervals(&self) -> Result<(), ConfigError> {
        if !(self.health.interval.is_finite() && self.health.interval >= 0.05) {
            return Err(invalid(
                "health.interval",
                format!("{} is not a number of seconds >= 0.05", self.health.interval),
            ));
        }
        if !(self.fast_path.idle_timeout.is_finite() && self.fast_path.idle_timeout >= 0.1) {
            let value = self.fast_path.idle_timeout;
            return Err(invalid("fast_path.idle_timeout", format!("{value} is not a number of seconds >= 0.1")));
        }
        let expire_after = self.store.expire_after;
        if !(expire_after.is_finite() && (expire_after == 0.0 || expire_after >= SHORTEST_EXPIRY)) {
            return Err(invalid(
                "store.expire_after",
                format!(
                    "{expire_after} is not a number of seconds >= {SHORTEST_EXPIRY}, or 0 to never expire assignments"
                ),
            ));
        }
        if !(self.stats.interval.is_finite() && self.stats.interval >= 0.05) {
            return Err(invalid(
                "stats.interval",
                format!("{} is not a number of seconds >= 0.05", self.stats.interval),
            ));
        }
        Ok(())
    }

    fn validate_rebalance(&self) -> Result<(), ConfigError> {
        if self.rebalance.enabled && self.rebalance.interval < self.stats.interval {
            return Err(invalid(
                "rebalance.interval",
                format!(
                    "{} is shorter than stats.interval ({}): the stats task takes the load samples, so lower stats.interval",
                    self.rebalance.interval, self.stats.interval
                ),
            ));
        }
        let rebalance = &self.rebalance;
        if !(rebalance.interval >= 0.05 && rebalance.settle >= 1.0 && rebalance.trigger > rebalance.settle) {
            return Err(invalid(
                "rebalance",
                "needs interval >= 0.05 seconds and trigger > settle >= 1 (e.g. trigger = 1.5, settle = 1.1)",
            ));
        }
        Ok(())
    }

    /// Where an etcd edge keeps its local replica.
    pub fn replica(&self) -> PathBuf {
        self.store.replica.clone().unwrap_or_else(|| self.sip.database.with_file_name("etcd-replica.redb"))
    }

    fn validate_store(&self) -> Result<(), ConfigError> {
        let store = &self.store;
        if store.backend == Backend::Redb {
            return Ok(());
        }
        if store.endpoints.is_empty() {
            return Err(invalid(
                "store.endpoints",
                "the etcd backend needs the cluster's client URLs, e.g. [\"http://10.0.0.1:2379\"]",
            ));
        }
        if let Some(bad) = store.endpoints.iter().find(|e| !(e.starts_with("http://") || e.starts_with("https://"))) {
            return Err(invalid("store.endpoints", format!("\"{bad}\" is not an http:// or https:// URL")));
        }
        if !(store.prefix.starts_with('/') && store.prefix.ends_with('/') && store.prefix.len() > 1) {
            return Err(invalid(
                "store.prefix",
                format!("\"{}\" must start and end with /, e.g. \"/redirector/pool-a/\"", store.prefix),
            ));
        }
        if store.username.is_some() != store.password_file.is_some() {
            return Err(invalid("store.username", "etcd authentication needs both username and password_file"));
        }
        if store.cert.is_some() != store.key.is_some() {
            return Err(invalid("store.cert", "a client certificate needs both cert and key"));
        }
        if store.cert.is_some() && store.ca.is_none() {
            return Err(invalid("store.ca", "TLS to etcd needs the CA certificate (ca) as well"));
        }
        if !(store.timeout.is_finite() && (0.1..=60.0).contains(&store.timeout)) {
            return Err(invalid("store.timeout", format!("{} is not 0.1 to 60 seconds", store.timeout)));
        }
        if !(4..=1_000_000).contains(&store.max_txn_ops) {
            return Err(invalid("store.max_txn_ops", format!("{} is not 4 to 1000000", store.max_txn_ops)));
        }
        if self.replica() == self.sip.database {
            return Err(invalid(
                "store.replica",
                "must not be sip.database (a replica is overwritten from etcd); name another file",
            ));
        }
        Ok(())
    }

    fn validate_counts(&self) -> Result<(), ConfigError> {
        if self.watchers.capacity == 0 {
            return Err(invalid("watchers.capacity", "0: keep at least one subscription".to_owned()));
        }
        if self.documents.capacity == 0 {
            return Err(invalid("documents.capacity", "0: keep at least one subscription".to_owned()));
        }
        let documents = &self.documents;
        if documents.min_expires == 0 || documents.min_expires > documents.max_expires {
            let (min, max) = (documents.min_expires, documents.max_expires);
            return Err(invalid("documents.min_expires", format!("{min} is not between 1 and max_expires ({max})")));
        }
        if self.health.down_after == 0 || self.health.up_after == 0 {
            return Err(invalid("health", "down_after and up_after must be at least 1"));
        }
        Ok(())
    }

    fn validate_limits(&self) -> Result<(), ConfigError> {
        let limits = &self.limits;
        if !(limits.new_clients_per_prefix.is_finite() && limits.new_clients_per_prefix > 0.0) {
            let value = limits.new_clients_per_prefix;
            return Err(invalid("limits.new_clients_per_prefix", format!("{value} is not a rate above 0")));
        }
        if !(limits.new_clients_burst.is_finite() && limits.new_clients_burst >= 1.0) {
            return Err(invalid("limits.new_clients_burst", format!("{} is below 1", limits.new_clients_burst)));
        }
        if limits.max_assignments == 0 {
            return Err(invalid("limits.max_assignments", "0 would refuse every new client"));
        }
        if !(limits.throttle_for.is_finite() && (0.0..=MAX_THROTTLE_FOR).contains(&limits.throttle_for)) {
            let value = limits.throttle_for;
            return Err(invalid(
                "limits.throttle_for",
                format!("{value} is not 0 (never) to {MAX_THROTTLE_FOR} seconds"),
            ));
        }
        Ok(())
    }

    fn validate_sizes(&self) -> Result<(), ConfigError> {
        let max = self.fast_path.max_clients;
        if !MAX_CLIENTS_RANGE.contains(&max) {
            let (low, high) = (MAX_CLIENTS_RANGE.start(), MAX_CLIENTS_RANGE.end());
            return Err(invalid("fast_path.max_clients", format!("{max} is outside {low}..={high}")));
        }
        if let Err(error) = tracing_subscriber::EnvFilter::try_new(&self.log.level) {
            return Err(invalid("log.level", format!("{:?} is not a log filter ({error})", self.log.level)));
        }
        Ok(())
    }

    fn validate_http(&self) -> Result<(), ConfigError> {
        let Some(listen) = self.http.listen else {
            if self.http.token_file.is_some() {
                return Err(invalid("http.token_file", "set without http.listen: nothing would ask for it"));
            }
            return Ok(());
        };
        if self.http.token_file.is_none() {
            return Err(invalid(
                "http.token_file",
                "needed with http.listen: every endpoint but /metrics asks for its bearer token",
            ));
        }
        if self.stats.prometheus == Some(listen) {
            return Err(invalid(
                "stats.prometheus",
                format!("{listen} is http.listen too, which serves /metrics already: remove stats.prometheus"),
            ));
        }
        Ok(())
    }

    fn validate_proxy(&self) -> Result<(), ConfigError> {
        if self.proxy_addresses().is_empty() {
            return Err(invalid("sip.proxy_address", "needed when the edge has no address to default it from"));
        }
        Ok(())
    }

    /// The proxy addresses, one per family: `sip.proxy_address` for its
    /// family, the edge's own address on port 5060 for the others it has.
    pub fn proxy_addresses(&self) -> Vec<SocketAddr> {
        let explicit = self.sip.proxy_address;
        let edges = [self.edge.ipv4.map(IpAddr::V4), self.edge.ipv6.map(IpAddr::V6)];
        let defaults = edges
            .into_iter()
            .flatten()
            .filter(|ip| explicit.is_none_or(|proxy| proxy.is_ipv4() != ip.is_ipv4()))
            .map(|ip| SocketAddr::new(ip, 5060));
        explicit.into_iter().chain(defaults).collect()
    }

    fn validate_service(&self) -> Result<(), ConfigError> {
        if self.service.addresses.is_empty() {
            return Err(invalid("service.addresses", "must list at least one service address"));
        }
        if self.service.ports.is_empty() || self.service.ports.contains(&0) {
            return Err(invalid("service.ports", "must list at least one port, none of them 0"));
        }
        let count = self.service.addresses.len() * self.service.ports.len();
        if count > redirector_ebpf::MAX_SERVICES as usize {
            return Err(invalid(
                "service",
                format!("{count} address:port pairs; at most {} fit", redirector_ebpf::MAX_SERVICES),
            ));
        }
        Ok(())
    }

    fn validate_edge(&self) -> Result<(), ConfigError> {
        let families = self.service.addresses.iter().map(|a| a.is_ipv4());
        for is_v4 in families {
            if is_v4 && self.edge.ipv4.is_none() {
                return Err(invalid("edge.ipv4", "required: service.addresses has an IPv4 address"));
            }
            if !is_v4 && self.edge.ipv6.is_none() {
                return Err(invalid("edge.ipv6", "required: service.addresses has an IPv6 address"));
            }
        }
        let [first, last] = self.edge.nat_ports;
        if first == 0 || first > last {
            return Err(invalid(
                "edge.nat_ports",
                format!("[{first}, {last}] is not a range [first, last] of non-zero ports"),
            ));
        }
        if self.mode == ForwardingMode::Nat {
            for is_v4 in [true, false] {
                let count =
                    self.service.addresses.iter().filter(|a| a.is_ipv4() == is_v4).count() * self.service.ports.len();
                if count > 1 {
                    // A nat client's replies must come from the endpoint it
                    // talked to, and its entry records only one.
                    return Err(invalid("service", "nat mode supports one address:port per address family"));
                }
            }
        }
        Ok(())
    }

    fn validate_servers(&self) -> Result<(), ConfigError> {
        if self.servers.is_empty() {
            return Err(invalid("servers", "must list at least one home server"));
        }
        if self.servers.len() > redirector_ebpf::MAX_SERVERS as usize {
            return Err(invalid(
                "servers",
                format!("{} servers; at most {} fit", self.servers.len(), redirector_ebpf::MAX_SERVERS),
            ));
        }
        let mut names = HashSet::new();
        for (i, server) in self.servers.iter().enumerate() {
            if server.name.is_empty() {
                return Err(invalid(format!("servers[{i}].name"), "must not be empty"));
            }
            if !names.insert(server.name.as_str()) {
                return Err(invalid(
                    format!("servers[{i}].name"),
                    format!("\"{}\" is used by an earlier server", server.name),
                ));
            }
            if server.ipv4.is_none() && server.ipv6.is_none() {
                return Err(invalid(
                    format!("servers[{i}]"),
                    format!("server \"{}\" needs ipv4, ipv6 or both", server.name),
                ));
            }
            if server.port == 0 {
                return Err(invalid(format!("servers[{i}].port"), "must not be 0"));
            }
            if server.state == ServerState::Removing {
                return Err(invalid(
                    format!("servers[{i}].state"),
                    "\"removing\" is what `redirector servers remove` does: use active, draining or down",
                ));
            }
            if !(server.weight.is_finite() && server.weight > 0.0) {
                return Err(invalid(
                    format!("servers[{i}].weight"),
                    format!("{} is not a positive number", server.weight),
                ));
            }
        }
        Ok(())
    }

    fn validate_clients(&self) -> Result<(), ConfigError> {
        let mut seen = HashSet::new();
        for (i, client) in self.clients.iter().enumerate() {
            if self.server_index(&client.server).is_none() {
                let known: Vec<&str> = self.servers.iter().map(|s| s.name.as_str()).collect();
                return Err(invalid(
                    format!("clients[{i}].server"),
                    format!("no server named \"{}\" (known: {})", client.server, known.join(", ")),
                ));
            }
            if !seen.insert(client.address) {
                return Err(invalid(format!("clients[{i}].address"), format!("{} is listed twice", client.address)));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const VALID: &str = r#"
        interface = "edge0"
        mode = "dsr"
        [service]
        addresses = ["192.0.2.10", "2001:db8::10"]
        [edge]
        ipv4 = "10.0.0.1"
        ipv6 = "fd00::1"
        [[servers]]
        name = "home1"
        ipv4 = "10.0.0.11"
        [[servers]]
        name = "home2"
        ipv6 = "fd00::12"
        port = 5070
        state = "draining"
        [[clients]]
        address = "10.0.0.2:5060"
        server = "home2"
    "#;

    fn error_for(text: &str) -> String {
        Config::parse(text).unwrap_err().to_string()
    }

    #[test]
    fn an_etcd_store_is_checked_field_by_field_and_keeps_its_replica_apart() {
        let etcd = |rest: &str| format!("{VALID}[store]\nbackend = \"etcd\"\n{rest}");
        let endpoints = "endpoints = [\"http://10.0.0.1:2379\"]\n";
        assert!(error_for(&etcd("")).contains("store.endpoints"));
        assert!(error_for(&etcd("endpoints = [\"10.0.0.1:2379\"]\n")).contains("not an http://"));
        assert!(error_for(&etcd(&format!("{endpoints}prefix = \"pool\"\n"))).contains("store.prefix"));
        assert!(error_for(&etcd(&format!("{endpoints}username = \"edge\"\n"))).contains("password_file"));
        assert!(error_for(&etcd(&format!("{endpoints}max_txn_ops = 1\n"))).contains("store.max_txn_ops"));
        let config = Config::parse(&etcd(endpoints)).unwrap();
        assert_eq!(config.store.max_txn_ops, 128, "etcd's own default");
        assert_eq!(config.replica(), config.sip.database.with_file_name("etcd-replica.redb"));
        let database = config.sip.database.display().to_string();
        let same = error_for(&etcd(&format!("{endpoints}replica = \"{database}\"\n")));
        assert!(same.contains("store.replica") && same.contains("sip.database"), "{same}");
        let apart = Config::parse(&etcd(&format!("{endpoints}replica = \"/var/lib/r/copy.redb\"\n"))).unwrap();
        assert_eq!(apart.replica(), PathBuf::from("/var/lib/r/copy.redb"));
    }

    #[test]
    fn the_shipped_example_is_valid() {
        let example = include_str!("../../../redirector.example.toml");
        let config = Config::parse(example).unwrap();
        assert_eq!(config.servers.len(), 2);
    }

    #[test]
    fn expire_after_defaults_to_30_days_takes_0_for_never_and_refuses_the_rest() {
        assert_eq!(Config::parse(VALID).unwrap().store.expire_after, 2_592_000.0);
        let with = |value: &str| format!("{VALID}\n[store]\nexpire_after = {value}\n");
        assert_eq!(Config::parse(&with("0")).unwrap().store.expire_after, 0.0);
        assert_eq!(Config::parse(&with("5")).unwrap().store.expire_after, 5.0);
        for bad in ["0.5", "-1", "nan"] {
            let err = error_for(&with(bad));
            assert!(err.starts_with("config field `store.expire_after`: ") && err.contains("0 to never"), "{err}");
        }
    }

    #[test]
    fn probes_are_off_by_default_and_need_their_own_port_and_a_secret() {
        assert_eq!(Config::parse(VALID).unwrap().probe, ProbeSettings::default());
        let with = |probe: &str| format!("{VALID}\n[probe]\n{probe}\n");
        let on = Config::parse(&with("port = 5099\nsecret_file = \"/etc/redirector/probe.secret\"")).unwrap();
        assert_eq!((on.probe.port, on.probe.period, on.probe.state_every), (Some(5099), 300, 5.0));
        for (probe, field) in [
            ("port = 5060\nsecret_file = \"/s\"", "probe.port"),
            ("port = 0\nsecret_file = \"/s\"", "probe.port"),
            ("port = 5099", "probe.secret_file"),
            ("port = 5099\nsecret_file = \"/s\"\nperiod = 0", "probe.period"),
            ("port = 5099\nsecret_file = \"/s\"\nstate_every = 0", "probe.state_every"),
        ] {
            let err = error_for(&with(probe));
            assert!(err.starts_with(&format!("config field `{field}`: ")), "{probe}: {err}");
        }
    }

    #[test]
    fn valid_config_gets_defaults_and_indexes() {
        let config = Config::parse(VALID).unwrap();
        assert_eq!(config.service.ports, vec![5060]);
        assert_eq!(config.attach, AttachMode::Native);
        assert_eq!(config.edge.nat_port_range(), 20000..=32767);
        assert_eq!(config.servers[1].state, ServerState::Draining);
        assert_eq!(config.server_index("home2"), Some(1));
        assert_eq!(config.server_index("nope"), None);
        assert_eq!(config.sip.first_contact, crate::model::Policy::Auto);
        let proxies: Vec<SocketAddr> = vec!["10.0.0.1:5060".parse().unwrap(), "[fd00::1]:5060".parse().unwrap()];
        assert_eq!(config.proxy_addresses(), proxies, "one per family of the edge");
        assert_eq!(config.servers[0].weight, 1.0);
    }

    #[test]
    fn sip_section_and_weights_are_validated() {
        let by_via = format!("{VALID}\n[sip]\nfirst_contact = \"by-via\"\n");
        assert_eq!(Config::parse(&by_via).unwrap().sip.first_contact, crate::model::Policy::ByVia);
        let text = format!("{VALID}\n[sip]\nfirst_contact = \"proxy\"\nproxy_address = \"10.0.0.1:5070\"\n");
        let config = Config::parse(&text).unwrap();
        assert_eq!(config.sip.first_contact, crate::model::Policy::Proxy);
        let proxies: Vec<SocketAddr> = vec!["10.0.0.1:5070".parse().unwrap(), "[fd00::1]:5060".parse().unwrap()];
        assert_eq!(config.proxy_addresses(), proxies, "the explicit one replaces its family's default");
        let err = error_for(&VALID.replace("port = 5070", "port = 5070\nweight = 0"));
        assert_eq!(err, "config field `servers[1].weight`: 0 is not a positive number");
        let err = error_for(&format!("{VALID}\n[sip]\nfirst_contact = \"sometimes\"\n"));
        assert!(err.contains("sometimes"), "{err}");
    }

    #[test]
    fn unknown_server_names_the_field_and_the_known_servers() {
        let err = error_for(&VALID.replace("server = \"home2\"", "server = \"home9\""));
        assert_eq!(err, "config field `clients[0].server`: no server named \"home9\" (known: home1, home2)");
    }

    #[test]
    fn missing_edge_address_for_a_service_family_is_refused() {
        let err = error_for(&VALID.replace("ipv6 = \"fd00::1\"", ""));
        assert_eq!(err, "config field `edge.ipv6`: required: service.addresses has an IPv6 address");
    }

    #[test]
    fn duplicate_server_and_empty_lists_are_refused() {
        let err = error_for(&VALID.replace("name = \"home2\"", "name = \"home1\""));
        assert!(err.starts_with("config field `servers[1].name`"), "{err}");
        let err = error_for(&VALID.replace("addresses = [\"192.0.2.10\", \"2001:db8::10\"]", "addresses = []"));
        assert!(err.starts_with("config field `service.addresses`"), "{err}");
    }

    #[test]
    fn typos_and_bad_values_are_reported_with_their_key() {
        let err = error_for(&VALID.replace("mode = \"dsr\"", "mode = \"dssr\""));
        assert!(err.contains("mode") && err.contains("dssr"), "{err}");
        let err = error_for(&VALID.replace("interface = \"edge0\"", "interface = \"edge0\"\ninterfce = \"x\""));
        assert!(err.contains("interfce"), "{err}");
        let err = error_for(&VALID.replace("ipv4 = \"10.0.0.11\"", "ipv4 = \"10.0.0.300\""));
        assert!(err.contains("ipv4") && err.contains("10.0.0.300"), "{err}");
        let err = error_for(&format!("{VALID}[stats]\ninterval = 2\n[rebalance]\ninterval = 1\n"));
        assert!(err.contains("rebalance.interval") && err.contains("lower stats.interval"), "{err}");
        let err = error_for(&format!("{VALID}[watchers]\ncapacity = 0\n"));
        assert!(err.contains("watchers.capacity"), "{err}");
        let err = error_for(&format!("{VALID}[documents]\ncapacity = 0\n"));
        assert!(err.contains("documents.capacity"), "{err}");
        let err = error_for(&format!("{VALID}[documents]\nmin_expires = 600\nmax_expires = 60\n"));
        assert!(err.contains("documents.min_expires") && err.contains("max_expires (60)"), "{err}");
        let documents = Config::parse(&format!("{VALID}[documents]\ntemplate = \"/etc/p.xml\"\n")).unwrap().documents;
        assert_eq!((documents.max_expires, documents.min_expires, documents.capacity), (86_400, 60, 100_000));
        let err = error_for(&format!("{VALID}[stats]\nprometheus = \"localhost\"\n"));
        assert!(err.contains("prometheus"), "{err}");
    }

    #[test]
    fn http_needs_a_token_file_and_its_own_address() {
        let http = |lines: &str| format!("{VALID}[http]\n{lines}\n");
        let config = Config::parse(&http("listen = \"127.0.0.1:8080\"\ntoken_file = \"/etc/t\"")).unwrap();
        assert_eq!(config.http.listen, Some("127.0.0.1:8080".parse().unwrap()));
        let err = error_for(&http("listen = \"127.0.0.1:8080\""));
        assert!(err.contains("http.token_file") && err.contains("bearer token"), "{err}");
        let err = error_for(&http("token_file = \"/etc/t\""));
        assert!(err.contains("http.token_file") && err.contains("without http.listen"), "{err}");
        let both = format!(
            "{VALID}[stats]\nprometheus = \"127.0.0.1:8080\"\n[http]\nlisten = \"127.0.0.1:8080\"\ntoken_file = \"/t\"\n"
        );
        let err = error_for(&both);
        assert!(err.contains("stats.prometheus") && err.contains("remove"), "{err}");
        let apart = both.replace("prometheus = \"127.0.0.1:8080\"", "prometheus = \"127.0.0.1:9464\"");
        assert!(Config::parse(&apart).is_ok(), "the old key keeps serving /metrics on its own address");
    }

    #[test]
    fn every_problem_is_found_each_by_its_field() {
        let broken = VALID.replace("interface = \"edge0\"", "interface = \"\"")
            + "[health]\ndown_after = 0\n[watchers]\ncapacity = 0\n";
        let config = Config::parse_unchecked(&broken).unwrap();
        let fields: Vec<String> = config
            .problems()
            .into_iter()
            .map(|problem| match problem {
                ConfigError::Invalid { field, .. } => field,
                other => panic!("{other}"),
            })
            .collect();
        assert_eq!(fields, ["interface", "watchers.capacity"], "one problem per check, in order");
        let err = error_for(&format!("{VALID}[fast_path]\nmax_clients = 100\n"));
        assert!(err.contains("fast_path.max_clients") && err.contains("100"), "{err}");
        let err = error_for(&format!("{VALID}[log]\nlevel = \"redirector=verbose\"\n"));
        assert!(err.contains("log.level"), "{err}");
        assert!(Config::parse(VALID).unwrap().problems().is_empty());
    }

    #[test]
    fn nat_mode_takes_one_service_endpoint_per_family() {
        let nat = VALID.replace("mode = \"dsr\"", "mode = \"nat\"");
        assert!(Config::parse(&nat).is_ok());
        let err = error_for(&nat.replace("addresses = [", "ports = [5060, 5080]\naddresses = ["));
        assert_eq!(err, "config field `service`: nat mode supports one address:port per address family");
    }

    #[test]
    fn bad_nat_range_and_serverless_addresses_are_refused() {
        let err = error_for(&VALID.replace("ipv6 = \"fd00::1\"", "ipv6 = \"fd00::1\"\nnat_ports = [30000, 20000]"));
        assert!(err.starts_with("config field `edge.nat_ports`"), "{err}");
        let err = error_for(&VALID.replace("ipv4 = \"10.0.0.11\"", ""));
        assert!(err.starts_with("config field `servers[0]`"), "{err}");
    }
}
