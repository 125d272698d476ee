//! Section 4c, second part: from `redirector servers add` to the first
//! client datagram the kernel forwards to the new server. The edge starts
//! with home0 and home1 (home2 is left out of its config); a prober in the
//! client namespace makes new clients one after another, each from a port
//! of its own: a REGISTER for a new AOR (first contact, a 302 that installs
//! the socket), then one marked datagram from the same socket, which only
//! XDP can deliver to a home (the daemon redirects, it does not proxy, and
//! it drops what is not SIP). While it runs, home2 is added with a weight
//! far above the others', so nearly every new client after the add lands
//! there. Timed: just before the CLI runs → the first marker at home2.
//! Against it, from the same rounds: a new client's own REGISTER → its
//! marker at an existing server (first contact to fast path), which the
//! add's figure contains once, plus the wait for the prober's next client.

use std::{
    net::{SocketAddrV4, UdpSocket},
    sync::{
        atomic::{AtomicBool, Ordering},
        mpsc::{Receiver, Sender, channel},
    },
    thread::Scope,
    time::{Duration, Instant},
};

use redirector_tests::{
    netns::NetNs,
    operator::cli_ok,
    topology::{Attach, CLIENT, SERVICE, Topology, home_address, socket_in},
};

use crate::{
    first_contact::{QUIET_EDGE, register},
    report::{Row, Section, median_by, median_ratio},
};

/// The home the config leaves out and `servers add` brings in.
const NEW: usize = 2;
/// home0 and home1 have the default weight, 1: about 98 % of the new
/// clients after the add choose home2.
const WEIGHT: &str = "100";
/// Each prober client's port, one a client, unique over the whole run: a
/// port reused would already be on the fast path, to its old home.
const FIRST_PORT: u16 = 10_000;
const LAST_PORT: u16 = 60_000;
/// How long the round waits for the first client at home2 at most.
const ARRIVAL_LIMIT: Duration = Duration::from_secs(10);
/// After the prober stops: markers still in flight arrive within this.
const DRAIN: Duration = Duration::from_millis(300);
const MARKER: &str = "add-bench ";
/// A new client every millisecond at most: the wait for the prober's next
/// client after the add stays under a millisecond, and the prober leaves
/// the daemon most of the two cores.
const PACE: Duration = Duration::from_millis(1);
/// The prober's clients all come from one /24, standing in for many
/// networks: the per-prefix admission limit (100 new clients a second by
/// default) is raised out of the way. Section 3c measures it.
const LIMITS: &str = "[limits]\nnew_clients_per_prefix = 100000\nnew_clients_burst = 100000\n";

const BASELINE: &str = "new client: REGISTER → its next datagram at an existing server";
const ADD: &str = "servers add → first client datagram forwarded to the new server";

/// A prober client: its REGISTER, and its marker if it got a 302.
struct Probe {
    port: u16,
    /// When its REGISTER left.
    sent: Instant,
    redirected: bool,
}

/// A marker that reached a home (so the kernel forwarded it).
struct Arrival {
    home: usize,
    port: u16,
    at: Instant,
}

/// What one round measured, in milliseconds.
struct Round {
    /// Just before the CLI → the first marker at home2.
    add: f64,
    /// Just before the CLI → the CLI's answer.
    cli: f64,
    /// The first client at home2: its REGISTER → its marker there.
    first_client: f64,
    /// Median, over the clients made before the add, of REGISTER → marker.
    baseline: f64,
    baseline_clients: usize,
    /// Clients with a 302 whose marker reached no home.
    unforwarded: usize,
    /// Clients whose REGISTER left after the CLI started and before the
    /// first marker at home2: landed on an old server, and got no 302.
    elsewhere: usize,
    unanswered: usize,
}

/// Section 4c's rows for a server added at runtime.
pub fn measure(section: &mut Section, quick: bool) {
    let rounds = if quick { 3 } else { 9 };
    // Long enough for a few dozen clients to existing servers each round.
    let settle = if quick { Duration::from_millis(300) } else { Duration::from_secs(1) };
    let mut topology = Topology::new("dsr", Attach::Skb, 3);
    topology.unlisted_homes = 1;
    topology.extra_config = format!("{QUIET_EDGE}{LIMITS}");
    let homes: Vec<UdpSocket> = topology.homes.iter().map(|home| socket_in(home, SERVICE)).collect();
    topology.start(&[]);
    let stop = AtomicBool::new(false);
    let measured = std::thread::scope(|scope| {
        let arrivals = listen(scope, &homes, &stop);
        let measured = measure_rounds(&topology, &arrivals, rounds, settle);
        stop.store(true, Ordering::Relaxed);
        measured
    });
    let missed = measured.iter().filter(|r| r.is_none()).count();
    if missed > 0 {
        section.notes.push(format!("{missed} round(s) saw no client at home{NEW} within {ARRIVAL_LIMIT:?}"));
    }
    report(section, &measured.into_iter().flatten().collect::<Vec<_>>());
}

/// The rounds, each `None` if home2 saw no client within `ARRIVAL_LIMIT`.
fn measure_rounds(
    topology: &Topology,
    arrivals: &Receiver<Arrival>,
    rounds: usize,
    settle: Duration,
) -> Vec<Option<Round>> {
    let mut measured = Vec::new();
    let mut first = FIRST_PORT;
    for round in 0..rounds {
        if round > 0 {
            // Answered once its clients have moved and it has left the pool.
            cli_ok(topology, &["servers", "remove", &format!("home{NEW}")]);
        }
        let (result, next) = add_round(topology, arrivals, first, settle);
        measured.push(result);
        first = next;
        if first >= LAST_PORT {
            break;
        }
    }
    measured
}

/// A counting thread per home, each sending the markers it receives.
fn listen<'scope>(
    scope: &'scope Scope<'scope, '_>,
    homes: &'scope [UdpSocket],
    stop: &'scope AtomicBool,
) -> Receiver<Arrival> {
    let (sender, receiver) = channel();
    for (home, socket) in homes.iter().enumerate() {
        let sender: Sender<Arrival> = sender.clone();
        scope.spawn(move || {
            let mut buffer = [0u8; 2048];
            // The socket's read timeout (200 ms) bounds each wait for the stop.
            while !stop.load(Ordering::Relaxed) {
                if let Ok(length) = socket.recv(&mut buffer)
                    && let Some(port) = marked(&buffer[..length])
                {
                    let _ = sender.send(Arrival { home, port, at: Instant::now() });
                }
            }
        });
    }
    receiver
}

/// One round: the prober runs; after `settle`, home2 is added; the round
/// ends at the first marker there (or `ARRIVAL_LIMIT`). Returns the round
/// (none if home2 saw nothing) and the next free port.
fn add_round(topology: &Topology, arrivals: &Receiver<Arrival>, first: u16, settle: Duration) -> (Option<Round>, u16) {
    let stop = AtomicBool::new(false);
    std::thread::scope(|scope| {
        let prober = scope.spawn(|| probe(&topology.client, first, &stop));
        std::thread::sleep(settle);
        let start = Instant::now();
        let address = home_address(NEW).to_string();
        cli_ok(topology, &["servers", "add", &format!("home{NEW}"), "--ipv4", &address, "--weight", WEIGHT]);
        let answered = Instant::now();
        let mut seen = until_new_server(arrivals, start + ARRIVAL_LIMIT);
        stop.store(true, Ordering::Relaxed);
        let probes = prober.join().expect("the prober");
        seen.extend(std::iter::from_fn(|| arrivals.recv_timeout(DRAIN).ok()));
        // Markers of earlier rounds' clients are not this round's.
        seen.retain(|a| a.port >= first);
        let next = probes.last().map_or(first, |p| p.port + 1);
        let round = Round::of(&probes, &seen, start, answered);
        (round, next)
    })
}

/// The arrivals until the first one at the new server, or `deadline`.
fn until_new_server(arrivals: &Receiver<Arrival>, deadline: Instant) -> Vec<Arrival> {
    let mut seen = Vec::new();
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        let Ok(arrival) = arrivals.recv_timeout(left) else { break };
        let done = arrival.home == NEW;
        seen.push(arrival);
        if done {
            break;
        }
    }
    seen
}

/// New clients one after another from `first` on, until `stop`: each a
/// REGISTER for a new AOR, and once redirected, a marker from the same
/// socket. One at a time, so the daemon is never queued behind the prober,
/// and `PACE` apart at least.
fn probe(client: &NetNs, first: u16, stop: &AtomicBool) -> Vec<Probe> {
    let mut probes = Vec::new();
    let mut due = Instant::now();
    for port in first..LAST_PORT {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        std::thread::sleep(due.saturating_duration_since(Instant::now()));
        due = Instant::now() + PACE;
        let socket = socket_in(client, &format!("{CLIENT}:{port}"));
        let sent = Instant::now();
        let from = SocketAddrV4::new(CLIENT, port);
        let _ = socket.send_to(&register(&format!("add{port}"), from, u64::from(port)), SERVICE);
        let redirected = redirected(&socket);
        if redirected {
            let _ = socket.send_to(format!("{MARKER}{port}").as_bytes(), SERVICE);
        }
        probes.push(Probe { port, sent, redirected });
    }
    probes
}

/// Whether the socket's answer (within its 200 ms read timeout) is a 302.
fn redirected(socket: &UdpSocket) -> bool {
    let mut buffer = [0u8; 2048];
    socket.recv(&mut buffer).is_ok_and(|length| buffer[..length].starts_with(b"SIP/2.0 302 "))
}

/// The prober port a marker names.
fn marked(datagram: &[u8]) -> Option<u16> {
    std::str::from_utf8(datagram).ok()?.strip_prefix(MARKER)?.parse().ok()
}

fn ms(from: Instant, to: Instant) -> f64 {
    to.saturating_duration_since(from).as_secs_f64() * 1000.0
}

impl Round {
    fn of(probes: &[Probe], seen: &[Arrival], start: Instant, answered: Instant) -> Option<Self> {
        let first_new = seen.iter().filter(|a| a.home == NEW).min_by_key(|a| a.at)?;
        let arrival = |probe: &Probe| seen.iter().find(|a| a.port == probe.port);
        let latencies: Vec<f64> =
            probes.iter().filter(|p| p.sent < start).filter_map(|p| arrival(p).map(|a| ms(p.sent, a.at))).collect();
        let racing: Vec<&Probe> = probes.iter().filter(|p| p.sent >= start && p.sent < first_new.at).collect();
        let first_sent = probes.iter().find(|p| p.port == first_new.port).map(|p| p.sent);
        Some(Self {
            add: ms(start, first_new.at),
            cli: ms(start, answered),
            first_client: first_sent.map_or(f64::NAN, |sent| ms(sent, first_new.at)),
            baseline_clients: latencies.len(),
            baseline: median_by(latencies, |l| *l).unwrap_or(f64::NAN),
            unforwarded: probes.iter().filter(|p| p.redirected && arrival(p).is_none()).count(),
            elsewhere: racing.iter().filter(|p| arrival(p).is_some_and(|a| a.home != NEW)).count(),
            unanswered: racing.iter().filter(|p| !p.redirected).count(),
        })
    }
}

/// Medians over the rounds, the rounds' add figures in a note.
fn report(section: &mut Section, rounds: &[Round]) {
    let median = |value: fn(&Round) -> f64| median_by(rounds.iter().map(value).collect(), |v| *v).unwrap_or(f64::NAN);
    let baseline = median(|r| r.baseline);
    section.rows.push(
        Row::new(BASELINE, baseline, "ms")
            .against(BASELINE, baseline)
            .raw("rounds", rounds.len() as f64)
            .raw("clients", rounds.iter().map(|r| r.baseline_clients).sum::<usize>() as f64),
    );
    let ratio = median_ratio(rounds.iter().map(|r| r.add), rounds.iter().map(|r| r.baseline)).unwrap_or(f64::NAN);
    let adds: Vec<f64> = rounds.iter().map(|r| r.add).collect();
    section.rows.push(
        Row::new(ADD, median(|r| r.add), "ms")
            .ratio(BASELINE, ratio)
            .raw("rounds", rounds.len() as f64)
            .raw("min_ms", adds.iter().copied().fold(f64::INFINITY, f64::min))
            .raw("max_ms", adds.iter().copied().fold(0.0, f64::max))
            .raw("cli_ms", median(|r| r.cli))
            .raw("first_client_ms", median(|r| r.first_client))
            .raw("unforwarded", rounds.iter().map(|r| r.unforwarded).sum::<usize>() as f64),
    );
    let each: Vec<String> = rounds
        .iter()
        .map(|r| format!("{:.1} (cli {:.1}, {} elsewhere, {} unanswered)", r.add, r.cli, r.elsewhere, r.unanswered))
        .collect();
    section.notes.push(format!(
        "servers add (weight {WEIGHT} beside two of weight 1), per round in ms: {}; cli_ms: until the CLI answered, \
         first_client_ms: the new server's first client, its REGISTER → its datagram there",
        each.join(", ")
    ));
}
