//! The control API's wire types: requests, replies and what they carry.
//! JSON lines, one object per line (see `control`).

use std::{
    collections::BTreeMap,
    net::{Ipv4Addr, Ipv6Addr, SocketAddr},
};

use serde::{Deserialize, Serialize};

use crate::{
    edge::routes::RouteVersion,
    model::{ServerSpec, ServerState},
};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "snake_case")]
pub enum Request {
    Stats,
    Servers,
    Clients {
        server: String,
    },
    Assign {
        aor: String,
        server: String,
    },
    Drain {
        server: String,
    },
    Undrain {
        server: String,
    },
    Routes,
    /// The routing table with its version, or (`since`) what changed after
    /// a version (see `edge::routes`).
    RouteTable {
        #[serde(default)]
        since: Option<RouteVersion>,
    },
    /// The last moves, newest first, with why each was made.
    RecentMoves,
    /// One AOR's route (none if it has no assignment).
    RouteOf {
        aor: String,
    },
    /// One AOR's configuration document (none without an assignment or
    /// `[documents] template`).
    Document {
        aor: String,
    },
    Rebalance {
        dry_run: bool,
    },
    /// An AOR's entries on the fast path, as the kernel holds them.
    Entries {
        aor: String,
    },
    /// The daemon itself: pid, uptime, store.
    Status,
    /// A home server joins the pool (`redirector servers add`).
    AddServer {
        server: ServerSpec,
    },
    /// A home server's clients move away, then it leaves the pool; answered
    /// once they have.
    RemoveServer {
        server: String,
    },
    /// A home server's weight or state changes (`redirector servers set`).
    SetServer {
        server: String,
        #[serde(default)]
        weight: Option<f64>,
        #[serde(default)]
        state: Option<ServerState>,
    },
    /// The config's `[[servers]]`, reread (SIGHUP): what the config changed
    /// since it was last applied is applied.
    ReloadServers {
        servers: Vec<ServerSpec>,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reply {
    Stats(Stats),
    Servers(Vec<ServerStatus>),
    Clients(Vec<Client>),
    Moves(Vec<Move>),
    Server(ServerStatus),
    Routes(Vec<Route>),
    Document(Option<crate::edge::profiles::Document>),
    RouteTable(RouteTable),
    RecentMoves(Vec<RecentMove>),
    Plan(Vec<PlannedMove>),
    Entries(Vec<Entry>),
    Status(DaemonStatus),
    Reloaded(Reloaded),
    Error(String),
}

/// What a reload of the config's `[[servers]]` did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reloaded {
    /// One line per change made.
    pub changed: Vec<String>,
    /// One line per change refused (tried again at the next reload).
    pub refused: Vec<String>,
}

/// The running daemon, as `redirector status` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DaemonStatus {
    pub pid: u32,
    pub uptime_seconds: u64,
    /// The assignment database's path.
    pub store: String,
    pub assignments: u64,
    /// Bytes of kernel memory the program's maps take.
    pub kernel_memory: u64,
}

/// An AOR assigned to a server, as `redirector clients` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Client {
    pub aor: String,
    /// When it was last seen (a first contact or a fast-path packet), in
    /// seconds since the Unix epoch.
    pub last_seen: u64,
}

/// A client address on the fast path: where the kernel sends it, and what
/// it saw of it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub client: SocketAddr,
    /// The home server's slot in the kernel's SERVERS map.
    pub server: u32,
    pub packets: u64,
}

/// One client moved from one home server to another.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Move {
    pub aor: String,
    pub from: String,
    pub to: String,
    pub generation: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServerStatus {
    pub name: String,
    /// The operator's state.
    pub state: ServerState,
    /// The health checks' verdict.
    pub healthy: bool,
    pub ipv4: Option<Ipv4Addr>,
    pub ipv6: Option<Ipv6Addr>,
    pub port: u16,
    pub weight: f64,
    /// Assignments in the database.
    pub clients: u64,
    /// What the fast path sent it.
    pub packets: u64,
    pub bytes: u64,
    /// Fast-path rates over the statistics stream's last interval.
    #[serde(default)]
    pub packets_per_second: Option<f64>,
    #[serde(default)]
    pub bytes_per_second: Option<f64>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Stats {
    /// Seconds since the previous reading (0 for the first).
    #[serde(default)]
    pub interval: f64,
    pub servers: Vec<ServerStatus>,
    /// The kernel's verdict counters.
    pub verdicts: BTreeMap<String, u64>,
    /// What first contact did.
    pub first_contact: BTreeMap<String, u64>,
    /// What was done for watchers.
    #[serde(default)]
    pub watchers: BTreeMap<String, u64>,
    /// What was done with clients' ua-profile subscriptions.
    #[serde(default)]
    pub profiles: BTreeMap<String, u64>,
    /// A shared store (etcd): what this edge saw of it, and `leading` (1
    /// while this edge makes the pool's decisions). Empty with redb.
    #[serde(default)]
    pub store: BTreeMap<String, u64>,
    /// Bytes of kernel memory the program's maps take.
    #[serde(default)]
    pub kernel_memory: u64,
}

/// A move made, when and why (a drain, a failover, an operator's assign,
/// rebalancing), for the status page.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecentMove {
    /// Seconds since the Unix epoch.
    pub at: u64,
    pub aor: String,
    pub from: String,
    pub to: String,
    pub why: String,
}

/// A move the rebalancer would make (or made).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlannedMove {
    pub aor: String,
    pub from: String,
    pub to: String,
    /// The client's fast-path packets per second.
    pub rate: f64,
}

/// One row of the assignment table, as clients or other tools would use it
/// to go straight to the owner.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Route {
    pub aor: String,
    pub server: String,
    pub address: Option<SocketAddr>,
    pub generation: u64,
}

/// The routing table at `version`: whole, or with `since` what changed
/// after that version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteTable {
    pub version: RouteVersion,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<RouteVersion>,
    /// `since` is of another daemon run or older than the edge remembers:
    /// fetch the whole table (`routes` and `removed` are then empty).
    #[serde(default)]
    pub reload: bool,
    /// Every route, or with `since` those that changed.
    pub routes: Vec<Route>,
    /// With `since`: AORs whose assignment is gone.
    #[serde(default)]
    pub removed: Vec<String>,
}
