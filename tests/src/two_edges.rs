//! Two edges in front of one service address, with an etcd cluster they
//! can share their store through (issue #11), built on `Topology`.
//!
//! ```text
//!  client 10.77.0.2 ─┐  ECMP to the service, both families, hashed on L4
//!  edge 0 10.77.0.1 ─┤ e0 ──s0── ┐
//!  edge 1 10.77.0.3 ─┤ f0 ──s1── ┴─ store: etcd 10.78.0.1-3 (etcd.rs)
//!  homeN 10.77.0.1N ─┘ (br0, namespace "lan"; IPv6 as in topology.rs)
//! ```
//! Each edge has its own namespace, XDP interface, bpffs, config, control
//! socket and redb database; the service addresses of both families are on
//! both edges' lo. Both modes work: in dsr the homes' decapsulators accept
//! tunnels from either edge and answer clients directly. The attach mode
//! is skb: native would need pass
//! programs on every bridge port, which `prepare_edge` starts but which
//! cost a program load each on two shared cores.

use std::{
    net::{Ipv4Addr, Ipv6Addr, UdpSocket},
    process::Output,
};

use crate::{
    etcd::EtcdCluster,
    netns::NetNs,
    operator::cli_json,
    sip_pool::sipp_clients,
    topology::{
        Attach, CLIENT_STATION, EdgeHost, Family, Station, Topology, add_neighbours, edge_namespace, home_station,
        socket_in,
    },
};

pub const EDGE_B: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 3);
pub const EDGE_B_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x77, 0, 0, 0, 0, 0, 0x3);
const EDGE_B_STATION: Station = Station { v4: EDGE_B, v6: EDGE_B_V6, mac_tail: 0x03 };

/// The edges' names in the shared store (`[store] edge`).
pub const EDGE_NAMES: [&str; 2] = ["edge-a", "edge-b"];

/// Counters published often, for tests that read them (unless a test
/// configures `[stats]` itself).
const STATS_OFTEN: &str = "[stats]\ninterval = 0.1\n";

/// How many home servers the pool has.
pub const HOMES: usize = 3;

pub struct TwoEdges {
    /// Edge 1's daemon and files (first, so dropped first: its daemon is
    /// killed and its bpffs unmounted before its directory in the pool's
    /// scratch goes).
    edge_b: EdgeHost,
    edge_b_ns: NetNs,
    /// Dropped before `pool` releases the lock on end-to-end tests.
    pub etcd: EtcdCluster,
    /// The client, the homes and edge 0 (the topology's own edge).
    pub pool: Topology,
    /// Which edges are next hops of the client's routes to the service.
    routed: [bool; 2],
}

impl TwoEdges {
    /// The namespaces, links and etcd cluster (healthy), with both edges
    /// as next hops; no daemon runs yet (see `start_edge`). Registrars are
    /// started with `sip_pool::start_registrars(&mut two.pool, …)`.
    pub fn new(mode: &'static str) -> Self {
        let mut pool = Topology::new(mode, Attach::Skb, HOMES);
        pool.families = &[Family::V4, Family::V6];
        // First contact proxies REGISTERs, so they are answered through an edge.
        pool.first_contact = None;
        let edge_b_ns = edge_namespace(&pool.lan, "f", EDGE_B_STATION);
        add_neighbours(&edge_b_ns, "f0", &[CLIENT_STATION]);
        add_neighbours(&edge_b_ns, "f0", &(0..HOMES).map(home_station).collect::<Vec<_>>());
        add_neighbours(&pool.client, "c0", &[EDGE_B_STATION]);
        for (i, home) in pool.homes.iter().enumerate() {
            add_neighbours(home, &format!("h{i}0"), &[EDGE_B_STATION]);
        }
        pool.other_edges.push(EDGE_B_STATION);
        pool.prepare_edge();
        for family in ["ipv4", "ipv6"] {
            pool.client.sysctl(&format!("net.{family}.fib_multipath_hash_policy=1"));
        }
        let etcd = EtcdCluster::new();
        etcd.link(&pool.edge, 0);
        etcd.link(&edge_b_ns, 1);
        let edge_b = EdgeHost::new("f0", EDGE_B_STATION, &pool.scratch("edge-b"));
        let two = Self { edge_b, edge_b_ns, etcd, pool, routed: [true, true] };
        two.route_service();
        two
    }

    /// Edge `edge`'s namespace.
    pub fn ns(&self, edge: usize) -> &NetNs {
        match edge {
            0 => &self.pool.edge,
            1 => &self.edge_b_ns,
            _ => panic!("no edge {edge}"),
        }
    }

    /// Edge `edge`'s daemon and files; `operator::cli_ok` and friends take it.
    pub fn edge(&self, edge: usize) -> &EdgeHost {
        match edge {
            0 => &self.pool.edge_host,
            1 => &self.edge_b,
            _ => panic!("no edge {edge}"),
        }
    }

    fn parts(&mut self, edge: usize) -> (&NetNs, &mut EdgeHost) {
        match edge {
            0 => (&self.pool.edge, &mut self.pool.edge_host),
            1 => (&self.edge_b_ns, &mut self.edge_b),
            _ => panic!("no edge {edge}"),
        }
    }

    /// Edge `edge`'s address of `family`, its next hop from the client.
    pub fn address(&self, edge: usize, family: Family) -> std::net::IpAddr {
        [family.edge(), EDGE_B_STATION.address(family)][edge]
    }

    /// Edge `edge`'s config: every home server, health checks off unless
    /// `pool.extra_config` sets them, `store` (TOML, e.g. a `[store]`
    /// section) appended, and `STATS_OFTEN` unless either has `[stats]`.
    pub fn config(&self, edge: usize, store: &str) -> String {
        let mut text = self.pool.config_of(self.edge(edge), &[]) + store;
        if !text.contains("[stats]") {
            text += STATS_OFTEN;
        }
        text
    }

    /// A `[store]` section putting edge `edge` on this cluster, under the
    /// key prefix `/redirector/test/`.
    pub fn etcd_store(&self, edge: usize) -> String {
        let endpoints: Vec<String> = self.etcd.endpoints().iter().map(|url| format!("\"{url}\"")).collect();
        format!(
            "[store]\nbackend = \"etcd\"\nendpoints = [{}]\nprefix = \"/redirector/test/\"\nedge = \"{}\"\n",
            endpoints.join(", "),
            EDGE_NAMES[edge]
        )
    }

    /// Writes edge `edge`'s config (`config(edge, store)`) and runs it.
    pub fn start_edge(&mut self, edge: usize, store: &str) {
        std::fs::write(self.edge(edge).config_path(), self.config(edge, store)).expect("writing an edge config");
        self.run_edge(edge);
    }

    /// Runs edge `edge`'s daemon with its config as it is on disk, waits
    /// until it answers and is attached, and makes it a next hop again.
    pub fn run_edge(&mut self, edge: usize) {
        let (ns, host) = self.parts(edge);
        host.run(ns, &[]);
        self.routed[edge] = true;
        self.route_service();
    }

    /// SIGKILLs edge `edge`'s daemon and takes it out of the client's
    /// routes, as a router drops a dead edge: traffic goes to the other.
    pub fn kill_edge(&mut self, edge: usize) {
        self.parts(edge).1.kill();
        self.routed[edge] = false;
        self.route_service();
    }

    /// The client's routes to both service addresses over the routed edges.
    fn route_service(&self) {
        for family in [Family::V4, Family::V6] {
            let service = format!("{}/{}", family.service().ip(), family.host_prefix());
            let hops: String = (0..2)
                .filter(|&edge| self.routed[edge])
                .map(|edge| format!(" nexthop via {}", self.address(edge, family)))
                .collect();
            let route = if hops.is_empty() { format!("unreachable {service}") } else { format!("{service}{hops}") };
            self.pool.client.ip(&format!("route replace {route}"));
        }
    }

    /// Cuts edge `edge` off from etcd: everything in and out of its store
    /// link is dropped (a silent partition, not a link down).
    pub fn cut_store(&self, edge: usize) {
        let rules = format!(
            "add table inet rdr_cut; \
             add chain inet rdr_cut out {{ type filter hook output priority 0; }}; \
             add chain inet rdr_cut in {{ type filter hook input priority 0; }}; \
             add rule inet rdr_cut out oifname s{edge} drop; \
             add rule inet rdr_cut in iifname s{edge} drop"
        );
        self.ns(edge).exec("nft", &[&rules]);
    }

    /// Undoes `cut_store(edge)`.
    pub fn restore_store(&self, edge: usize) {
        self.ns(edge).exec("nft", &["delete table inet rdr_cut"]);
    }

    /// `redirector ARGS` against edge `edge`'s control socket.
    pub fn cli(&self, edge: usize, args: &[&str]) -> Output {
        self.edge(edge).cli(args)
    }

    /// A first-contact counter of edge `edge` (`redirector stats`).
    pub fn first_contact(&self, edge: usize, counter: &str) -> u64 {
        let stats: redirector::ops::api::Stats = cli_json(self.edge(edge), &["stats", "--json"]);
        stats.first_contact.get(counter).copied().unwrap_or_default()
    }

    /// A UDP socket bound to `address` in the client's namespace.
    pub fn socket_in_client(&self, address: &str) -> UdpSocket {
        socket_in(&self.pool.client, address)
    }

    /// `clients` SIPp clients over IPv4, each from its own port (from
    /// `first_port`: ECMP spreads them over the edges) and with its own AOR
    /// (`{prefix}{i}-…`), each REGISTER through the service address and
    /// answered 200 by its home through an edge. Whether all were.
    pub fn register(&self, prefix: &str, clients: u16, first_port: u16) -> bool {
        sipp_clients(&self.pool, "register_expect_200.xml", clients, first_port, prefix)
    }
}
