//! Section 3: first-contact rate, REGISTER → 302 answered per second, for
//! redirector's daemon (durable assignment, 302, fast-path install) and
//! Kamailio answering every REGISTER with `sl_send_reply("302")` and a
//! Contact at a home server, on the same namespaces and cores.
//!
//! Generator: purpose-built, not SIPp. A first contact is a client the edge
//! has not seen; redirector puts every client that got a 302 on the fast
//! path, so a SIPp socket (one source address) meets first contact once,
//! and SIPp's socket-per-call mode reuses ports the kernel already
//! forwards. So every REGISTER here comes from an address of its own: the
//! client namespace owns 100.64.0.0/10 through an AnyIP route, and one
//! socket sends each REGISTER from its own source (IP_PKTINFO) by
//! sendmmsg, a window of `WINDOW` unanswered at most, and counts the
//! answers by recvmmsg.
//!
//! The storm after an outage: every phone registers again at once, each
//! from a new source address, with an AOR the edge already knows (its
//! database is seeded with them before it starts). Kamailio's stateless 302
//! is the same whether it knows the AOR or not, so both cases are compared
//! with the one Kamailio run.
//!
//! Cross-check of the generator: Kamailio driven by `sipp_load::PROCESSES`
//! SIPp processes as well (it answers every REGISTER alike, so SIPp can
//! drive it), against the same Kamailio driven by the purpose-built one.

use std::{
    net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use redirector::{
    edge::rendezvous::{Candidate, choose},
    sip::Aor,
    store::{Assignment, AssignmentStore, RedbStore},
};
use redirector_tests::topology::{Attach, SERVICE, Topology, home_address, socket_in};

use crate::{
    cpu,
    mmsg::{self, BATCH, Inbox, Outgoing, Pace},
    peers::{Kamailio, KamailioRoute},
    report::{Row, Section, median_by, median_ratio},
    sipp_load,
};

const BASELINE: &str = "Kamailio sl_send_reply 302";
const OURS: &str = "redirector first contact 302, new AORs";
const STORM: &str = "redirector first contact 302, known AORs from new addresses (storm)";
const CANNED: &str = "generator ceiling: one thread answering a canned 302";
const SIPP: &str = "Kamailio sl_send_reply 302, driven by SIPp";
/// Requests in flight at most: enough that the durable commit's latency
/// (each new AOR waits for one fsync) does not bound the rate.
const WINDOW: u64 = 1024;
/// Client addresses, every one a source of one REGISTER.
const CLIENTS: &str = "100.64.0.0/10";
const MAX_REGISTERS: u64 = 1_000_000;
const GENERATOR_PORT: u16 = 5090;
/// An answer missing this long is lost and its window slot freed.
const LOST_AFTER: Duration = Duration::from_millis(500);

/// The edge's config beside its topology's: health checks an hour apart
/// (nobody answers them here) and no rebalancing, so nothing but first
/// contact runs.
pub const QUIET_EDGE: &str = "[health]\ninterval = 3600\n[rebalance]\nenabled = false\n";

/// Home servers of the topology, as the edge names them.
const HOMES: [&str; 3] = ["home0", "home1", "home2"];

fn aor(i: u64) -> String {
    format!("sip:u{i}@bench.example")
}

fn source(i: u64) -> Ipv4Addr {
    Ipv4Addr::from(0x6440_0000 + i as u32)
}

/// REGISTER number `i` of the generator: AOR u`i`, from its own address.
fn numbered_register(i: u64) -> Vec<u8> {
    register(&format!("u{i}"), SocketAddrV4::new(source(i), GENERATOR_PORT), i)
}

/// A REGISTER of `sip:{user}@bench.example` sent from `from`; `id` makes
/// its branch, tag and Call-ID unique.
pub fn register(user: &str, from: SocketAddrV4, id: u64) -> Vec<u8> {
    format!(
        "REGISTER sip:bench.example SIP/2.0\r\nVia: SIP/2.0/UDP {from};branch=z9hG4bK-fc{id};rport\r\n\
         Max-Forwards: 70\r\nTo: <sip:{user}@bench.example>\r\nFrom: <sip:{user}@bench.example>;tag=f{id}\r\n\
         Call-ID: fc{id}@bench\r\nCSeq: 1 REGISTER\r\nContact: <sip:{user}@{from}>\r\nExpires: 3600\r\n\
         Content-Length: 0\r\n\r\n"
    )
    .into_bytes()
}

/// The number of the REGISTER an answer is for, from its Call-ID
/// (`register` makes it `fc{id}@bench`).
fn number_of(answer: &[u8]) -> Option<u64> {
    const CALL_ID: &[u8] = b"\r\nCall-ID: fc";
    let at = answer.windows(CALL_ID.len()).position(|w| w == CALL_ID)? + CALL_ID.len();
    let digits = answer[at..].iter().take_while(|b| b.is_ascii_digit()).count();
    std::str::from_utf8(&answer[at..at + digits]).ok()?.parse().ok()
}

/// Gives the client namespace every address of `prefix` (an AnyIP route:
/// a socket there may send from any of them), routed back to it by the edge.
pub fn own_prefix(topology: &Topology, prefix: &str) {
    topology.client.ip(&format!("route add local {prefix} dev lo"));
    topology.edge.ip(&format!("route add {prefix} via {}", redirector_tests::topology::CLIENT));
}

#[derive(Default)]
pub struct Outcome {
    pub sent: u64,
    pub redirected: u64,
    pub other_answers: u64,
    pub lost: u64,
    pub seconds: f64,
    /// CPU time the answering processes used meanwhile, where known.
    pub cpu: Option<Duration>,
}

impl Outcome {
    pub fn rate(&self) -> f64 {
        self.redirected as f64 / self.seconds
    }

    /// Microseconds of the answerer's CPU per 302.
    pub fn cpu_per_answer(&self) -> Option<f64> {
        Some(self.per_answer(self.cpu?))
    }

    /// Microseconds of `cpu` per 302.
    pub fn per_answer(&self, cpu: Duration) -> f64 {
        cpu.as_secs_f64() * 1e6 / self.redirected.max(1) as f64
    }

    fn in_flight(&self) -> u64 {
        self.sent - self.redirected - self.other_answers - self.lost
    }
}

impl From<sipp_load::Counted> for Outcome {
    /// SIPp's statistics: calls that got their 302, and the failed ones
    /// (timed out or answered otherwise, which SIPp does not tell apart).
    fn from(counted: sipp_load::Counted) -> Self {
        Outcome {
            sent: counted.successful + counted.failed,
            redirected: counted.successful,
            other_answers: 0,
            lost: counted.failed,
            seconds: counted.seconds,
            cpu: None,
        }
    }
}

/// What `drive` sends: REGISTERs numbered from `first`, `max` at most, for
/// `limit` at most, at `pace`, with at most `window` unanswered.
pub struct Load {
    pub first: u64,
    pub max: u64,
    pub limit: Duration,
    pub pace: Pace,
    pub window: u64,
}

impl Load {
    /// As fast as answers come back, `WINDOW` in flight: the rate a
    /// first-contact answerer can sustain.
    pub fn closed(limit: Duration, max: u64) -> Self {
        Self { first: 1, max, limit, pace: Pace::Flat, window: WINDOW }
    }
}

/// Closed loop (open when paced with a window larger than the pace needs):
/// sends `load`'s REGISTERs and counts their answers.
pub fn drive(socket: &UdpSocket, load: &Load) -> Outcome {
    let SocketAddr::V4(service) = SERVICE.parse().unwrap() else { unreachable!("the service is IPv4") };
    socket.set_read_timeout(Some(Duration::from_millis(5))).unwrap();
    let mut inbox = Inbox::new();
    let mut outcome = Outcome::default();
    let start = Instant::now();
    let mut progress = start;
    while start.elapsed() < load.limit && outcome.sent < load.max {
        let room = (load.window - outcome.in_flight().min(load.window))
            .min(BATCH as u64)
            .min(load.max - outcome.sent)
            .min(load.pace.room(outcome.sent, start.elapsed()));
        let next = load.first + outcome.sent;
        let payloads: Vec<Vec<u8>> = (0..room).map(|k| numbered_register(next + k)).collect();
        let datagrams: Vec<Outgoing<'_>> = payloads
            .iter()
            .enumerate()
            .map(|(k, payload)| Outgoing { payload, to: service, from: Some(source(next + k as u64)) })
            .collect();
        outcome.sent += mmsg::send(socket, &datagrams).expect("sendmmsg") as u64;
        // An answer to an earlier load on the same socket is not this one's
        // (the canned 302 names no Call-ID: it always counts).
        let answers = inbox.receive(socket).expect("recvmmsg").filter(|a| number_of(a).is_none_or(|n| n >= load.first));
        for answer in answers {
            progress = Instant::now();
            if answer.starts_with(b"SIP/2.0 302 ") {
                outcome.redirected += 1;
            } else {
                outcome.other_answers += 1;
            }
        }
        if outcome.in_flight() > 0 && progress.elapsed() > LOST_AFTER {
            outcome.lost += outcome.in_flight();
            progress = Instant::now();
        }
    }
    outcome.seconds = start.elapsed().as_secs_f64();
    outcome
}

/// `drive`, with the CPU time the process trees of `answerers` used
/// meanwhile.
pub fn drive_measured(socket: &UdpSocket, load: &Load, answerers: &[u32]) -> Outcome {
    let before = cpu::trees_cpu(answerers);
    let mut outcome = drive(socket, load);
    let after = cpu::trees_cpu(answerers);
    outcome.cpu = before.zip(after).map(|(before, after)| after.saturating_sub(before));
    outcome
}

/// Stores AORs u1..=`count` in the edge's database before it starts, each
/// on the home rendezvous hashing gives it, in one transaction.
pub fn seed(topology: &Topology, count: u64) {
    let store = RedbStore::open(&topology.scratch("assignments.redb")).expect("the edge's database");
    let candidates: Vec<Candidate<'_>> = HOMES.iter().map(|name| Candidate { name, weight: 1.0 }).collect();
    let aors: Vec<Aor> = (1..=count).map(|i| Aor::from_canonical(aor(i))).collect();
    let refs: Vec<&Aor> = aors.iter().collect();
    store
        .update_many(&refs, None, &mut |aor, _| {
            let home = choose(aor.as_str(), &candidates).expect("three homes");
            Some(Assignment::new(aor.clone(), home.to_owned()))
        })
        .expect("seeding the edge's database");
}

/// Which edge answers a run.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Edge {
    Kamailio,
    /// redirector with an empty database.
    New,
    /// redirector whose database knows this many AORs already.
    Storm(u64),
    /// The cheapest edge there is: one thread answering every datagram with
    /// the same 302, to show where the generator's own ceiling lies.
    Canned,
}

/// What answers on the edge instead of redirector, if anything: held until
/// the run is over, and stopped before the topology goes.
struct Peer {
    kamailio: bool,
    /// The answering process, whose tree's CPU time is taken (none for
    /// the canned answerer, a thread of this process).
    pid: Vec<u32>,
    _running: Option<Box<dyn std::any::Any>>,
}

/// `Edge::Canned`'s thread.
struct Canned {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Canned {
    fn start(topology: &Topology) -> Self {
        let socket = socket_in(&topology.edge, SERVICE);
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        let thread = std::thread::spawn(move || {
            let answer = b"SIP/2.0 302 Moved Temporarily\r\nContent-Length: 0\r\n\r\n";
            let mut buf = [0u8; 2048];
            while !stopping.load(Ordering::Relaxed) {
                if let Ok((_, from)) = socket.recv_from(&mut buf) {
                    let _ = socket.send_to(answer, from);
                }
            }
        });
        Self { stop, thread: Some(thread) }
    }
}

impl Drop for Canned {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The namespaces of this section (dsr, skb mode: no XDP on the bridge
/// ports, the same links for every edge), the client owning `CLIENTS`.
pub fn first_contact_topology() -> Topology {
    let topology = Topology::new("dsr", Attach::Skb, HOMES.len());
    own_prefix(&topology, CLIENTS);
    topology
}

/// The generator's socket in the client namespace.
pub fn generator_socket(topology: &Topology) -> UdpSocket {
    socket_in(&topology.client, &format!("0.0.0.0:{GENERATOR_PORT}"))
}

/// The topology with the edge answering first contacts, and the
/// generator's socket; the Kamailio process if it is the one answering.
fn start(edge: Edge) -> Result<(Topology, Peer, UdpSocket), String> {
    let mut topology = first_contact_topology();
    let socket = generator_socket(&topology);
    if let Edge::Storm(known) = edge {
        seed(&topology, known);
    }
    match edge {
        Edge::Kamailio => {
            let home = format!("{}:5060", home_address(0));
            let route = KamailioRoute::Redirect { home: &home };
            let kamailio = Kamailio::start(&topology.edge, &topology.scratch("kamailio"), &route)?;
            let pid = vec![kamailio.pid()];
            Ok((topology, Peer { kamailio: true, pid, _running: Some(Box::new(kamailio)) }, socket))
        }
        Edge::Canned => {
            let canned = Canned::start(&topology);
            Ok((topology, Peer { kamailio: false, pid: Vec::new(), _running: Some(Box::new(canned)) }, socket))
        }
        Edge::New | Edge::Storm(_) => {
            topology.extra_config = QUIET_EDGE.into();
            topology.start(&[]);
            let pid = topology.edge_pid().into_iter().collect();
            Ok((topology, Peer { kamailio: false, pid, _running: None }, socket))
        }
    }
}

pub fn run(quick: bool) -> Section {
    let (rounds, limit) = if quick { (1, Duration::from_secs(2)) } else { (3, Duration::from_secs(5)) };
    // More than the storm can send in `limit`: every REGISTER is a known AOR.
    let known = if quick { 300_000 } else { 800_000 };
    let mut section = Section::new(
        "first_contact",
        format!("3. First contact: REGISTER → 302 answered per second, window {WINDOW}, {limit:?}, median of {rounds}"),
    );
    let mut outcomes = [Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new()];
    let edges = [(0, Edge::Kamailio), (1, Edge::New), (3, Edge::Storm(known)), (4, Edge::Canned)];
    for _ in 0..rounds {
        for (slot, edge) in edges {
            let max = if edge == Edge::Storm(known) { known } else { MAX_REGISTERS };
            match start(edge) {
                // The peer (if any) stops before its namespace goes.
                Ok((topology, peer, socket)) => {
                    outcomes[slot].push(drive_measured(&socket, &Load::closed(limit, max), &peer.pid));
                    if peer.kamailio {
                        match sipp_load::run(&topology, limit) {
                            Ok(counted) => outcomes[2].push(Outcome::from(counted)),
                            Err(why) => section.skip(format!("{SIPP}: {why}")),
                        }
                    }
                }
                Err(why) => section.skip(format!("{BASELINE}: {why}")),
            }
        }
    }
    let [baseline, ours, sipp, storm, canned] = &outcomes;
    let cases = [(BASELINE, baseline), (OURS, ours), (STORM, storm), (SIPP, sipp), (CANNED, canned)];
    for (name, out) in cases {
        let Some(outcome) = median_by(out.iter().collect(), |o| o.rate()) else { continue };
        let mut row = Row::new(name, outcome.rate(), "302/s")
            .raw("sent", outcome.sent as f64)
            .raw("redirected", outcome.redirected as f64)
            .raw("other_answers", outcome.other_answers as f64)
            .raw("lost", outcome.lost as f64)
            .raw("seconds", outcome.seconds);
        if let Some(cpu) = outcome.cpu_per_answer() {
            row = row.raw("cpu_us_per_302", cpu);
        }
        if let Some(ratio) = median_ratio(out.iter().map(Outcome::rate), baseline.iter().map(Outcome::rate)) {
            row = row.ratio(BASELINE, ratio);
        }
        section.rows.push(row);
    }
    section.notes.push(
        "redirector commits the new assignments of each batch of queued REGISTERs durably (one fsync) before answering any; Kamailio keeps no state".into(),
    );
    section.notes.push(
        "cpu_us_per_302: CPU time of the answering processes (all their threads and children; user and system, which includes sending the answers through the kernel) over the 302s they sent".into(),
    );
    section.notes.push(format!(
        "storm: the edge's database holds {known} AORs before it starts; each REGISTER names one of them from an address the edge has never seen"
    ));
    section
}
