//! Section 2: forwarding throughput over veth, client → edge → home server,
//! one small SIP datagram after another, for every forwarder on the same
//! topology: redirector's XDP fast path (dsr and nat, native and skb), the
//! kernel's own L4 forwarding (nftables DNAT, the baseline), Kamailio's
//! stateless `forward()` and redirector's own user-space proxy path, and
//! the same datagram from a source on no fast path, as an upstream proxy
//! sends it, routed by its AOR in the kernel (`AORS`, dsr); and
//! the physical limit of an XDP forwarder on these links: `redirector_limit`
//! (next hop's MACs written, `XDP_TX`, nothing else), native, which
//! redirector's native cases are also shown against (goal: 0.95×).
//!
//! Native XDP_TX over veth needs an XDP program on the peer, so the native
//! cases run with pass-through programs on every bridge port, which puts
//! those veths in their NAPI mode and changes the cost of every hop. The
//! baseline is therefore measured twice, on plain links and on links set up
//! as for native XDP, and each case is compared with the baseline on the
//! same links.
//!
//! Generator: sendmmsg from one socket in the client namespace, 64
//! datagrams a call, as fast as the kernel takes them, bounded by a count
//! and a time. On veth most of the forwarding work runs in the sending
//! CPU's softirq, so the generator and the path under test share the cost
//! of every packet: what a forwarder saves shows as more packets per
//! second, diluted by the generator's own constant cost. Receiver:
//! recvmmsg on the home server, counting what arrives (the edge's health
//! pings aside); rate = datagrams / (last arrival − first arrival).

use std::{
    net::{SocketAddr, UdpSocket},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use aya::programs::XdpMode;
use redirector::kernel::loader::{DataPlane, DataPlaneError};
use redirector_ebpf::{FloorHop, LIMIT_PROGRAM};
use redirector_tests::topology::{
    Attach, CLIENT, SERVICE, Topology, edge_mac, home_address, home_mac, is_edge_ping, socket_in,
};

use crate::{
    mmsg::{self, BATCH, Inbox, Outgoing, Pace},
    peers::{self, Kamailio, KamailioRoute},
    report::{Row, Section, median_by, median_ratio},
};

const MAX_DATAGRAMS: u64 = 50_000_000;
/// Issue #12's goal for redirector's native cases, over the limit's rate.
const LIMIT_GOAL: f64 = 0.95;
/// Issue #12's goal for an upstream proxy's requests, over nftables DNAT's rate.
const AOR_GOAL: f64 = 0.9;

/// A REGISTER already forwarded by one proxy (two Via values): the one
/// datagram every forwarder treats alike. redirector's fast path forwards
/// it by the pinned source address; its first contact proxies it (a
/// forwarded request's source is never put on the fast path); Kamailio
/// parses and forwards it.
pub fn payload() -> Vec<u8> {
    format!(
        "REGISTER sip:bench.example SIP/2.0\r\n\
         Via: SIP/2.0/UDP {CLIENT}:5060;branch=z9hG4bK-b1;rport\r\n\
         Via: SIP/2.0/UDP 10.9.9.9:5060;branch=z9hG4bK-b0\r\n\
         Max-Forwards: 69\r\nTo: <sip:bench@bench.example>\r\nFrom: <sip:bench@bench.example>;tag=b\r\n\
         Call-ID: bench@{CLIENT}\r\nCSeq: 1 REGISTER\r\nContent-Length: 0\r\n\r\n"
    )
    .into_bytes()
}

#[derive(Clone, Copy, PartialEq)]
enum Forwarder {
    /// On links set up as for XDP in this mode (native: pass programs on
    /// the bridge ports).
    Nftables {
        links: Attach,
    },
    Xdp {
        mode: &'static str,
        attach: Attach,
    },
    /// dsr, the sender on no fast path: its requests are an upstream
    /// proxy's, routed by their AOR (assigned by one proxied first).
    XdpByAor {
        attach: Attach,
    },
    KamailioForward,
    UserSpaceProxy,
    /// `redirector_limit` on the edge, native, links as for native XDP.
    Limit,
}

impl Forwarder {
    /// Grouped by the baseline they are compared with.
    const ALL: [Forwarder; 11] = [
        Forwarder::Nftables { links: Attach::Skb },
        Forwarder::Xdp { mode: "dsr", attach: Attach::Skb },
        Forwarder::Xdp { mode: "nat", attach: Attach::Skb },
        Forwarder::XdpByAor { attach: Attach::Skb },
        Forwarder::KamailioForward,
        Forwarder::UserSpaceProxy,
        Forwarder::Nftables { links: Attach::Native },
        Forwarder::Limit,
        Forwarder::Xdp { mode: "dsr", attach: Attach::Native },
        Forwarder::Xdp { mode: "nat", attach: Attach::Native },
        Forwarder::XdpByAor { attach: Attach::Native },
    ];

    fn name(self) -> String {
        match self {
            Forwarder::Nftables { links: Attach::Skb } => "nftables DNAT (kernel L4)".into(),
            Forwarder::Nftables { links: Attach::Native } => "nftables DNAT, links as for native XDP".into(),
            Forwarder::Xdp { mode, attach } => format!("redirector XDP {mode} {}", attach.name()),
            Forwarder::XdpByAor { attach } => {
                format!("redirector XDP dsr {}, upstream proxy, routed by AOR", attach.name())
            }
            Forwarder::KamailioForward => "Kamailio forward() (stateless)".into(),
            Forwarder::UserSpaceProxy => "redirector user-space proxy".into(),
            Forwarder::Limit => "limit: XDP_TX with the next hop's MACs, native".into(),
        }
    }

    /// What this forwarder is compared with: the baseline on the same links.
    fn baseline(self) -> Forwarder {
        match self {
            Forwarder::Xdp { attach, .. } | Forwarder::XdpByAor { attach } | Forwarder::Nftables { links: attach } => {
                Forwarder::Nftables { links: attach }
            }
            Forwarder::Limit => Forwarder::Nftables { links: Attach::Native },
            // No XDP on the bridge ports.
            Forwarder::KamailioForward | Forwarder::UserSpaceProxy => Forwarder::Nftables { links: Attach::Skb },
        }
    }

    /// The topology, with this forwarder running on the edge.
    fn start(self) -> Result<Running, String> {
        let (mode, attach) = match self {
            Forwarder::Xdp { mode, attach } => (mode, attach),
            Forwarder::XdpByAor { attach } => ("dsr", attach),
            Forwarder::Nftables { links } => ("nat", links),
            Forwarder::KamailioForward | Forwarder::UserSpaceProxy => ("nat", Attach::Skb),
            // nat: no decapsulators; the frames keep the service address,
            // which the homes own on lo.
            Forwarder::Limit => ("nat", Attach::Native),
        };
        let mut topology = Topology::new(mode, attach, 1);
        topology.edge.sysctl("net.ipv4.conf.all.send_redirects=0");
        topology.edge.sysctl("net.ipv4.conf.e0.send_redirects=0");
        let home_listen = match self {
            Forwarder::Xdp { mode: "dsr", .. } | Forwarder::XdpByAor { .. } | Forwarder::Limit => SERVICE,
            _ => "0.0.0.0:5060",
        };
        let home = socket_in(&topology.homes[0], home_listen);
        let client = socket_in(&topology.client, &format!("{CLIENT}:5060"));
        let home_sip = format!("{}:5060", home_address(0));
        // Health checks nobody answers must not take the home server down
        // mid-run, nor may the rebalancer move anybody.
        topology.extra_config = "[health]\ninterval = 3600\n[rebalance]\nenabled = false\n".into();
        let (mut kamailio, mut limit) = (None, None);
        match self {
            Forwarder::Nftables { links } => {
                if links == Attach::Native {
                    // The pass programs alone (nat mode: no decapsulators).
                    topology.prepare_edge();
                }
                peers::nftables_dnat(&topology.edge, &home_sip)?
            }
            Forwarder::Xdp { .. } => topology.start(&[(format!("{CLIENT}:5060").parse().unwrap(), 0)]),
            Forwarder::KamailioForward => {
                let dir = topology.scratch("kamailio");
                kamailio = Some(Kamailio::start(&topology.edge, &dir, &KamailioRoute::Forward { home: &home_sip })?);
            }
            Forwarder::UserSpaceProxy => topology.start(&[]),
            Forwarder::XdpByAor { .. } => {
                topology.start(&[]);
                assign_by_proxy(&topology, &client)?;
            }
            Forwarder::Limit => {
                topology.prepare_edge();
                limit = Some(attach_limit(&topology)?);
            }
        }
        Ok(Running { _limit: limit, _kamailio: kamailio, home, client, topology, edge_daemon: self.edge_daemon() })
    }

    /// Whether `redirector run` is on the edge, and which of its counters
    /// says it handled the datagrams: the kernel's forwarded verdicts, or
    /// first contact's proxied requests.
    fn edge_daemon(self) -> Option<(&'static str, &'static str)> {
        match self {
            Forwarder::Xdp { .. } => Some(("verdicts", "forwarded")),
            Forwarder::XdpByAor { .. } => Some(("verdicts", "forwarded_by_aor")),
            Forwarder::UserSpaceProxy => Some(("first_contact", "proxied")),
            Forwarder::Nftables { .. } | Forwarder::KamailioForward | Forwarder::Limit => None,
        }
    }
}

/// The benchmark's AOR assigned, as first contact does it for a proxied
/// request: one sent, then the edge's count of proxied requests awaited
/// (the daemon routes the AOR in `AORS` before it proxies).
fn assign_by_proxy(topology: &Topology, client: &UdpSocket) -> Result<(), String> {
    client.send_to(&payload(), SERVICE).map_err(|e| format!("sending the first REGISTER: {e}"))?;
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let output = topology.cli(&["stats", "--json"]);
        let stats: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap_or_default();
        if stats["first_contact"]["proxied"].as_u64().unwrap_or(0) >= 1 {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err("the first REGISTER was not proxied within 5 s".into());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `redirector_limit` attached to the edge's `e0` in native mode, sending
/// every IPv4 frame to home0 (until the returned `DataPlane` is dropped).
fn attach_limit(topology: &Topology) -> Result<DataPlane, String> {
    let failed = |error: DataPlaneError| format!("the limit program: {error}");
    let mut dataplane = DataPlane::load_without_clients().map_err(failed)?;
    dataplane.load_limit(FloorHop { dst_mac: home_mac(0), src_mac: edge_mac() }).map_err(failed)?;
    let _inside = topology.edge.enter();
    dataplane.attach(LIMIT_PROGRAM, "e0", XdpMode::Driver).map_err(failed)?;
    Ok(dataplane)
}

/// Field order is drop order: the limit program and Kamailio stop before
/// their namespace goes.
struct Running {
    _limit: Option<DataPlane>,
    _kamailio: Option<Kamailio>,
    home: UdpSocket,
    client: UdpSocket,
    topology: Topology,
    edge_daemon: Option<(&'static str, &'static str)>,
}

impl Running {
    /// The edge daemon's count of what it handled (see `edge_daemon`). The
    /// daemon may serve statistics as a reading taken every so often, so
    /// this reads again (for a few seconds at most) until the count
    /// reaches `expected`.
    fn handled_by_edge(&self, expected: u64) -> Option<u64> {
        let (group, counter) = self.edge_daemon?;
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let output = self.topology.cli(&["stats", "--json"]);
            assert!(output.status.success(), "redirector stats: {}", String::from_utf8_lossy(&output.stderr));
            let stats: serde_json::Value = serde_json::from_slice(&output.stdout).expect("stats JSON");
            let handled = stats[group][counter].as_u64().unwrap_or_else(|| panic!("no {group}.{counter} in {stats}"));
            if handled >= expected || Instant::now() > deadline {
                return Some(handled);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

struct Outcome {
    sent: u64,
    received: u64,
    seconds: f64,
    /// What the edge daemon counted as handled by the path under test.
    handled_by_edge: Option<u64>,
}

impl Outcome {
    fn pps(&self) -> f64 {
        if self.seconds > 0.0 { self.received as f64 / self.seconds } else { 0.0 }
    }

    fn loss(&self) -> f64 {
        1.0 - self.received as f64 / self.sent.max(1) as f64
    }
}

fn measure(running: &Running, limit: Duration) -> Outcome {
    let stop = Arc::new(AtomicBool::new(false));
    let socket = running.home.try_clone().expect("cloning the home socket");
    let counter = count(socket, stop.clone(), |d| !is_edge_ping(d));
    let sent = blast(&running.client, &payload(), MAX_DATAGRAMS, limit, Pace::Flat);
    stop.store(true, Ordering::Relaxed);
    let (received, seconds) = counter.join().expect("counter thread");
    let handled_by_edge = running.handled_by_edge(received);
    // What arrived went the way under test (not, say, up to first contact
    // when the fast path was meant to forward it).
    if let Some(handled) = handled_by_edge {
        assert!(handled >= received, "the edge handled {handled} datagrams this way, the home server got {received}");
    }
    Outcome { sent, received, seconds, handled_by_edge }
}

/// Sends `payload` to the service at `pace` until `max` datagrams or
/// `limit` passed; returns how many the kernel took.
pub fn blast(socket: &UdpSocket, payload: &[u8], max: u64, limit: Duration, pace: Pace) -> u64 {
    let SocketAddr::V4(to) = SERVICE.parse().unwrap() else { unreachable!("the service is IPv4") };
    blast_to(socket, payload, to, max, limit, pace)
}

/// As `blast`, to `to`.
pub fn blast_to(
    socket: &UdpSocket,
    payload: &[u8],
    to: std::net::SocketAddrV4,
    max: u64,
    limit: Duration,
    pace: Pace,
) -> u64 {
    let batch: Vec<Outgoing<'_>> = (0..BATCH).map(|_| Outgoing { payload, to, from: None }).collect();
    let start = Instant::now();
    let mut sent = 0u64;
    while sent < max && start.elapsed() < limit {
        let room = pace.room(sent, start.elapsed()).min(max - sent).min(BATCH as u64) as usize;
        if room == 0 {
            std::thread::sleep(Duration::from_micros(200));
            continue;
        }
        sent += mmsg::send(socket, &batch[..room]).expect("sendmmsg") as u64;
    }
    sent
}

/// Counts the datagrams `counted` accepts until `stop` and a quiet read
/// timeout; returns the count and the seconds from the first to the last.
pub fn count(
    socket: UdpSocket,
    stop: Arc<AtomicBool>,
    counted: impl Fn(&[u8]) -> bool + Send + 'static,
) -> JoinHandle<(u64, f64)> {
    std::thread::spawn(move || {
        let mut inbox = Inbox::new();
        let (mut received, mut first, mut last) = (0u64, None, Instant::now());
        loop {
            let before = received;
            received += inbox.receive(&socket).expect("recvmmsg").filter(|d| counted(d)).count() as u64;
            if received > before {
                last = Instant::now();
                first.get_or_insert(last);
            } else if stop.load(Ordering::Relaxed) {
                break;
            }
        }
        (received, first.map_or(0.0, |first| (last - first).as_secs_f64()))
    })
}

pub fn run(quick: bool) -> Section {
    let (rounds, limit) = if quick { (1, Duration::from_secs(1)) } else { (3, Duration::from_secs(3)) };
    let mut section = Section::new(
        "throughput",
        format!(
            "2. Forwarding throughput client → edge → home over veth, {}-byte SIP datagrams, sendmmsg for {:?}, median of {rounds}",
            payload().len(),
            limit
        ),
    );
    let mut outcomes: Vec<Vec<Outcome>> = Forwarder::ALL.iter().map(|_| Vec::new()).collect();
    // Rounds interleave the forwarders so drift on a shared machine hits all alike.
    for _ in 0..rounds {
        for (forwarder, out) in Forwarder::ALL.iter().zip(&mut outcomes) {
            match forwarder.start() {
                Ok(running) => out.push(measure(&running, limit)),
                Err(why) => section.skip(format!("{}: {why}", forwarder.name())),
            }
        }
    }
    for (forwarder, out) in Forwarder::ALL.iter().zip(&outcomes) {
        let Some(outcome) = median_by(out.iter().collect(), |o| o.pps()) else { continue };
        let mut row = Row::new(forwarder.name(), outcome.pps(), "pkt/s")
            .raw("sent", outcome.sent as f64)
            .raw("received", outcome.received as f64)
            .raw("loss_pct", 100.0 * outcome.loss())
            .raw("seconds", outcome.seconds);
        if let Some(handled) = outcome.handled_by_edge {
            row = row.raw("handled_by_edge", handled as f64);
        }
        let baseline = forwarder.baseline();
        let index = Forwarder::ALL.iter().position(|f| *f == baseline).expect("the baseline is listed");
        if let Some(ratio) = median_ratio(out.iter().map(Outcome::pps), outcomes[index].iter().map(Outcome::pps)) {
            row = row.ratio(baseline.name(), ratio);
        }
        if matches!(forwarder, Forwarder::XdpByAor { .. }) {
            row = row.raw("goal_ratio", AOR_GOAL);
        }
        if matches!(
            forwarder,
            Forwarder::Xdp { attach: Attach::Native, .. } | Forwarder::XdpByAor { attach: Attach::Native }
        ) {
            let limit = Forwarder::ALL.iter().position(|f| *f == Forwarder::Limit).expect("the limit is listed");
            if let Some(ratio) = median_ratio(out.iter().map(Outcome::pps), outcomes[limit].iter().map(Outcome::pps)) {
                row = row.raw("x_limit", ratio).raw("goal_x_limit", LIMIT_GOAL);
            }
        }
        section.rows.push(row);
    }
    section.notes.push("ratio: received packets per second over nftables DNAT's on the same links in the same round; median of the rounds' ratios".into());
    section.notes.push(format!(
        "routed by AOR: the REGISTER from an address on no fast path, its AOR assigned by one proxied first; \
         goal_ratio: issue #12's goal over nftables DNAT ({AOR_GOAL}x)"
    ));
    section.notes.push(format!(
        "x_limit: redirector native over the limit program on the same links in the same round (median of the \
         rounds' ratios; goal >= {LIMIT_GOAL}x)"
    ));
    section.notes.push(
        "no loss means the sending core was the limit: on veth the whole path runs in the sender's softirq, \
         so packets per second is the inverse of the chain's per-packet cost"
            .into(),
    );
    section
}
