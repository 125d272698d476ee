//! Section 7: several edges sharing their store through a three-member etcd
//! cluster (issue #11), on the namespaces of `two_edges` (nat).
//!
//! * 7a: first contact of new AORs with the etcd store against redb, the
//!   same generator, topology and edge config otherwise (section 3's).
//! * 7b: move convergence across edges: `assign` sent to edge A's control
//!   socket, until edge B's kernel map (read from its pinned CLIENTS map,
//!   every 100 µs) sends the client to its new home; p50 and p99.
//! * 7c: leader takeover: the leading edge is SIGKILLed; time until the
//!   other edge says it leads (polled every 10 ms).

use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use aya::maps::{HashMap, Map, MapData};
use redirector::{
    kernel::{loader::endpoint, pins::Pins},
    ops::{
        api::{Entry, Reply, Request, Route, Stats},
        control,
    },
};
use redirector_ebpf::{CLIENTS_MAP, ClientEntry, Endpoint};
use redirector_tests::{
    etcd::EtcdCluster,
    sip_pool::{Registrar, start_registrars},
    topology::home_index,
    two_edges::TwoEdges,
};

use crate::{
    cpu::trees_cpu,
    first_contact::{Load, Outcome, QUIET_EDGE, drive_measured, first_contact_topology, generator_socket},
    report::{Row, Section, median_by, median_ratio},
};

const REDB: &str = "redirector first contact 302, new AORs, redb store";
const ETCD: &str = "redirector first contact 302, new AORs, etcd store (3 members)";
const CONVERGENCE: &str = "move on edge A until edge B's kernel map follows";
const TAKEOVER: &str = "leader SIGKILLed until the other edge leads";

pub fn run(quick: bool) -> Vec<Section> {
    vec![first_contact(quick), across_edges(quick)]
}

/// 7a: new AORs a second with each store, median of the rounds.
fn first_contact(quick: bool) -> Section {
    let (rounds, limit) = if quick { (1, Duration::from_secs(2)) } else { (3, Duration::from_secs(5)) };
    let mut section = Section::new(
        "edges_first_contact",
        format!("7a. First contact of new AORs through etcd against redb, {limit:?}, median of {rounds}"),
    );
    let (mut redb, mut etcd) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        redb.push(first_contacts(None, limit));
        etcd.push(first_contacts(Some(&EtcdCluster::new()), limit));
    }
    for (name, outcomes) in [(REDB, &redb), (ETCD, &etcd)] {
        let Some((outcome, members_cpu, work)) = median_by(outcomes.iter().collect(), |(o, ..)| o.rate()) else {
            continue;
        };
        let mut row = Row::new(name, outcome.rate(), "302/s")
            .raw("sent", outcome.sent as f64)
            .raw("redirected", outcome.redirected as f64)
            .raw("lost", outcome.lost as f64);
        if let Some(edge_cpu) = outcome.cpu_per_answer() {
            row = row.raw("edge_cpu_us_per_302", edge_cpu);
        }
        if let Some(members_cpu) = members_cpu {
            row = row.raw("etcd_members_cpu_us_per_302", outcome.per_answer(*members_cpu));
        }
        for (&(_, column), count) in MEMBERS_WORK.iter().zip(work) {
            row = row.raw(column, count / outcome.redirected.max(1) as f64);
        }
        let rates = |outcomes: &[Run]| outcomes.iter().map(|(o, ..)| o.rate()).collect::<Vec<_>>();
        if let Some(ratio) = median_ratio(rates(outcomes), rates(&redb)) {
            row = row.ratio(REDB, ratio);
        }
        section.rows.push(row);
    }
    section.notes.push(
        "edge_cpu_us_per_302 / etcd_members_cpu_us_per_302: CPU time (user and system) of the edge daemon and of the three etcd members over the 302s sent; every process shares the same two cores".into(),
    );
    section.notes.push(
        "per_302 columns: what the three etcd members did per 302 sent, summed over them, from their /metrics (Txn requests are each handled by one member; puts, committed proposals, WAL fsyncs and watch events by each)".into(),
    );
    section.notes.push(
        "etcd: the new AORs of a batch are written unread, on the condition that they have no key, in one transaction (members and edge at max_txn_ops 1024, README's setting: 512 AORs); a write commits on a quorum (each member fsyncs) before any answer leaves".into(),
    );
    section
}

/// What the etcd members did during a run, from their `/metrics`: the
/// series summed over the members, and the column it is reported in (per
/// 302).
const MEMBERS_WORK: [(&str, &str); 5] = [
    (
        r#"grpc_server_handled_total{grpc_code="OK",grpc_method="Txn",grpc_service="etcdserverpb.KV",grpc_type="unary"}"#,
        "txns_per_302",
    ),
    ("etcd_mvcc_put_total", "member_puts_per_302"),
    ("etcd_server_proposals_committed_total", "member_proposals_per_302"),
    ("etcd_disk_wal_fsync_duration_seconds_count", "member_fsyncs_per_302"),
    ("etcd_debugging_mvcc_events_total", "watch_events_per_302"),
];

/// A run's outcome, the etcd members' CPU time meanwhile, and their work
/// (`MEMBERS_WORK`, none with redb).
type Run = (Outcome, Option<Duration>, Vec<f64>);

/// Section 3's closed-loop run of new AORs against one edge, on `etcd`'s
/// cluster if given.
fn first_contacts(etcd: Option<&EtcdCluster>, limit: Duration) -> Run {
    let mut topology = first_contact_topology();
    let socket = generator_socket(&topology);
    topology.extra_config = QUIET_EDGE.into();
    if let Some(etcd) = etcd {
        etcd.link(&topology.edge, 0);
        let endpoints: Vec<String> = etcd.endpoints().iter().map(|url| format!("\"{url}\"")).collect();
        topology.extra_config += &format!(
            "[store]\nbackend = \"etcd\"\nendpoints = [{}]\nprefix = \"/bench/\"\nmax_txn_ops = {}\n",
            endpoints.join(", "),
            redirector_tests::etcd::MAX_TXN_OPS
        );
    }
    topology.start(&[]);
    let members = etcd.map(EtcdCluster::pids).unwrap_or_default();
    let series: Vec<&str> = MEMBERS_WORK.iter().map(|(series, _)| *series).collect();
    let work = || etcd.map(|etcd| etcd.metrics(&series)).unwrap_or_default();
    let (before, work_before) = (trees_cpu(&members), work());
    let edge: Vec<u32> = topology.edge_pid().into_iter().collect();
    let outcome = drive_measured(&socket, &Load::closed(limit, 1_000_000), &edge);
    let members_cpu = before.zip(trees_cpu(&members)).map(|(before, after)| after.saturating_sub(before));
    let work = work().iter().zip(work_before).map(|(after, before)| after - before).collect();
    (outcome, members_cpu, work)
}

/// 7b and 7c on one pair of edges.
fn across_edges(quick: bool) -> Section {
    let moves = if quick { 100 } else { 1_000 };
    let mut section =
        Section::new("edges_convergence", format!("7b–c. Several edges through etcd: {moves} moves, a leader's death"));
    let mut two = TwoEdges::new("nat");
    start_registrars(&mut two.pool, Registrar::Kamailio);
    for edge in 0..2 {
        let store = two.etcd_store(edge);
        two.start_edge(edge, &store);
    }
    if !two.register("bench", 32, 7400) {
        section.skip("not every client registered through the edges".into());
        return section;
    }
    let clients = on_fast_path(&two, 1);
    if clients.is_empty() {
        section.skip("no client took edge B's fast path".into());
        return section;
    }
    let mut times = convergence(&two, &clients, moves);
    times.sort();
    let at = |q: f64| times[((times.len() - 1) as f64 * q).round() as usize].as_secs_f64() * 1e3;
    section.rows.push(Row::new(format!("{CONVERGENCE}, p50"), at(0.5), "ms").raw("moves", times.len() as f64));
    section.rows.push(Row::new(format!("{CONVERGENCE}, p99"), at(0.99), "ms").raw("goal_ms", 100.0));
    section.rows.push(
        Row::new(TAKEOVER, takeover(&mut two).as_secs_f64() * 1e3, "ms")
            .raw("lease_ms", redirector::store::LEADER_LEASE as f64 * 1e3),
    );
    section.notes.push(
        "convergence is timed from the control request to edge A (the commit to etcd included) to edge B's pinned CLIENTS entry naming the new home's slot".into(),
    );
    section
}

/// AORs with a kernel entry on edge `edge`, each with one of its clients.
fn on_fast_path(two: &TwoEdges, edge: usize) -> Vec<(Route, Endpoint)> {
    let socket = two.edge(edge).control_socket();
    let Reply::Routes(routes) = ask(&socket, Request::Routes) else { return Vec::new() };
    routes
        .into_iter()
        .filter_map(|route| {
            let Reply::Entries(entries) = ask(&socket, Request::Entries { aor: route.aor.clone() }) else {
                return None;
            };
            let Entry { client, .. } = *entries.first()?;
            Some((route, endpoint(client.ip(), client.port())))
        })
        .collect()
}

fn ask(socket: &Path, request: Request) -> Reply {
    control::request(socket, &request).unwrap_or_else(|error| panic!("asking the edge: {error}"))
}

/// Moves the clients round the homes `moves` times on edge A; each move's
/// time until edge B's kernel follows.
fn convergence(two: &TwoEdges, clients: &[(Route, Endpoint)], moves: usize) -> Vec<Duration> {
    let socket_a = two.edge(0).control_socket();
    let pinned = pinned_clients(two.edge(1).bpffs(), two.edge(1).interface);
    let mut homes: Vec<usize> = clients.iter().map(|(route, _)| home_index(&route.server)).collect();
    let mut times = Vec::with_capacity(moves);
    for n in 0..moves {
        let which = n % clients.len();
        let (route, client) = &clients[which];
        let to = (homes[which] + 1) % 3;
        let started = Instant::now();
        let request = Request::Assign { aor: route.aor.clone(), server: format!("home{to}") };
        if let Reply::Error(error) = ask(&socket_a, request) {
            panic!("moving {} on edge A: {error}", route.aor);
        }
        let follows = || pinned.get(client, 0).is_ok_and(|entry: ClientEntry| entry.server == to as u32);
        while !follows() {
            assert!(started.elapsed() < Duration::from_secs(10), "edge B never followed the move of {}", route.aor);
            std::thread::sleep(Duration::from_micros(100));
        }
        times.push(started.elapsed());
        homes[which] = to;
    }
    times
}

/// Edge B's pinned CLIENTS map, read from this process.
fn pinned_clients(bpffs: &Path, interface: &str) -> HashMap<MapData, Endpoint, ClientEntry> {
    let path: PathBuf = Pins::new(bpffs, interface).map(CLIENTS_MAP);
    let data = MapData::from_pin(&path).unwrap_or_else(|e| panic!("opening {}: {e}", path.display()));
    HashMap::try_from(Map::LruHashMap(data)).expect("CLIENTS is an LRU hash of endpoints")
}

/// Kills the leading edge; the time until the other one leads.
fn takeover(two: &mut TwoEdges) -> Duration {
    let leads = |two: &TwoEdges, edge: usize| {
        let Reply::Stats(stats) = ask(&two.edge(edge).control_socket(), Request::Stats) else { return false };
        let stats: Stats = stats;
        stats.store.get("leading") == Some(&1)
    };
    let leader = if leads(two, 0) { 0 } else { 1 };
    let started = Instant::now();
    two.kill_edge(leader);
    while !leads(two, 1 - leader) {
        assert!(started.elapsed() < Duration::from_secs(20), "no edge took the lead");
        std::thread::sleep(Duration::from_millis(10));
    }
    started.elapsed()
}
