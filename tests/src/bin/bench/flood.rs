//! Section 3c: known clients while a flood of new AORs runs. Issue #13's
//! goal: with REGISTERs of new random AORs pouring in from 100,000 spoofed
//! source addresses, known clients' first contacts and their fast-path
//! traffic keep at least 0.9× the rate they get without the flood, in the
//! same run.
//!
//! One edge (`redirector run`, dsr, skb, section 3's namespaces) serves
//! every phase. Known clients bring a fixed offered load, as real clients
//! do: the storm after an outage (known AORs from new addresses, section
//! 3's generator, paced) and one installed client's datagrams forwarded by
//! XDP to home0 (section 2's generator, paced, counted on home0). Each
//! round measures both without a flood, then during each of `FLOODS`; the
//! ratio is what they got with a flood over what they got without.
//!
//! A flood: one thread sending REGISTERs of new random AORs, at a given
//! rate or as fast as the kernel takes them, each from one of 100,000
//! addresses of 198.18.0.0/15 (391 /24s) that the client namespace owns by
//! an AnyIP route. The edge's admission limits are set tight here, so that what the
//! flood may store (per /24: the burst plus the rate over the time it
//! ran) is small and checked against what the daemon counted.

use std::{
    net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use redirector_tests::topology::{CLIENT, SERVICE, Topology, socket_in};

use crate::{
    first_contact::{self, Load, Outcome},
    mmsg::{self, BATCH, Outgoing, Pace},
    report::{Row, Section, median_by, median_ratio},
    throughput,
};

/// The flood's sources: `SOURCES` addresses of this prefix.
const FLOOD_PREFIX: &str = "198.18.0.0/15";
const FLOOD_BASE: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 0);
const SOURCES: u32 = 100_000;
/// The /24s they fall in.
const PREFIXES: u32 = SOURCES.div_ceil(256);
/// A step through the sources coprime with `SOURCES` and just above a /24,
/// so consecutive requests come from different prefixes and every address
/// is used once per cycle.
const SOURCE_STRIDE: u64 = 257;
const FLOOD_PORT: u16 = 5091;
const MAX_FLOOD: u64 = 100_000_000;

/// The edge's admission limits in this section (per /24).
const PER_PREFIX: f64 = 1.0;
const BURST: f64 = 10.0;
/// First-contact datagrams a second a prefix throttled in the kernel still
/// passes up.
const THROTTLED: u32 = 10;

/// The known clients' offered loads: a storm of re-registrations and one
/// busy installed client, each well below what the edge does without a
/// flood (sections 2 and 3), so that without it all of it is served.
const STORM_PACE: f64 = 10_000.0;
const FAST_PATH_PACE: f64 = 20_000.0;
/// The floods each round runs: one that the edge refuses in full on these
/// two cores (it refused about 50,000 a second on its share of them while
/// the generator took the other), and one as fast as the generator goes.
const FLOODS: [(&str, Pace); 2] =
    [("during a flood of 20000 req/s", Pace::PerSecond(20_000.0)), ("during a flood at full speed", Pace::Flat)];
/// Time for the flood to reach its steady state before a measurement, and
/// for the edge to drain its queues after one.
const SETTLE: Duration = Duration::from_millis(300);

const STORM: &str = "known AORs from new addresses (storm)";
const FAST_PATH: &str = "fast path of an installed client";

/// The edge and the known clients' sockets.
struct Bench {
    topology: Topology,
    /// The storm's generator (sends from `first_contact`'s client prefix).
    storm: UdpSocket,
    /// The installed client, pinned to home0.
    client: UdpSocket,
    /// home0's socket at the service address (dsr delivers there).
    home: UdpSocket,
}

impl Bench {
    fn start(known: u64) -> Self {
        let mut topology = first_contact::first_contact_topology();
        first_contact::own_prefix(&topology, FLOOD_PREFIX);
        let storm = first_contact::generator_socket(&topology);
        first_contact::seed(&topology, known);
        let client = socket_in(&topology.client, &format!("{CLIENT}:5060"));
        let home = socket_in(&topology.homes[0], SERVICE);
        topology.extra_config = format!(
            "{}[stats]\ninterval = 0.1\n[limits]\nnew_clients_per_prefix = {PER_PREFIX}\nnew_clients_burst = {BURST}\n\
             throttled_datagrams = {THROTTLED}\n",
            first_contact::QUIET_EDGE
        );
        topology.start(&[(SocketAddr::new(CLIENT.into(), 5060), 0)]);
        Self { topology, storm, client, home }
    }

    /// The edge's UDP receive-buffer drops so far: datagrams the kernel
    /// threw away because the daemon's sockets were full.
    fn socket_drops(&self) -> u64 {
        let snmp = self.topology.edge.exec("cat", &["/proc/net/snmp"]);
        udp_counter(&String::from_utf8_lossy(&snmp.stdout), "RcvbufErrors")
    }

    /// First contact's and the kernel's counters (`stats --json`) once the
    /// edge has stopped moving them.
    fn settled_counters(&self) -> serde_json::Value {
        let mut previous = serde_json::Value::Null;
        for _ in 0..30 {
            let output = self.topology.cli(&["stats", "--json"]);
            assert!(output.status.success(), "stats --json: {}", String::from_utf8_lossy(&output.stderr));
            let stats: serde_json::Value = serde_json::from_slice(&output.stdout).expect("stats JSON");
            let settled = stats["first_contact"] == previous["first_contact"];
            previous = stats;
            if settled {
                break;
            }
            std::thread::sleep(SETTLE);
        }
        previous
    }
}

/// A counter of the `Udp:` lines of /proc/net/snmp (names, then values).
fn udp_counter(snmp: &str, name: &str) -> u64 {
    let mut lines = snmp.lines().filter(|line| line.starts_with("Udp:"));
    let (Some(names), Some(values)) = (lines.next(), lines.next()) else { return 0 };
    let index = names.split_whitespace().position(|n| n == name);
    index.and_then(|i| values.split_whitespace().nth(i)).and_then(|v| v.parse().ok()).unwrap_or(0)
}

/// The flood generator's thread.
struct Flood {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<(u64, f64)>>,
}

impl Flood {
    /// Starts flooding the service at `pace`; `seed` makes this flood's
    /// AORs its own.
    fn start(topology: &Topology, pace: Pace, limit: Duration, seed: u64) -> Self {
        let socket = socket_in(&topology.client, &format!("0.0.0.0:{FLOOD_PORT}"));
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        let thread = std::thread::spawn(move || flood(&socket, pace, limit, seed, &stopping));
        Self { stop, thread: Some(thread) }
    }

    /// Stops it; returns how many REGISTERs it sent, in how many seconds.
    fn stop(mut self) -> (u64, f64) {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.take().expect("running").join().expect("the flood thread")
    }
}

impl Drop for Flood {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Sends new-AOR REGISTERs at `pace` until `stop`, `limit` or `MAX_FLOOD`.
fn flood(socket: &UdpSocket, pace: Pace, limit: Duration, seed: u64, stop: &AtomicBool) -> (u64, f64) {
    let SocketAddr::V4(service) = SERVICE.parse().unwrap() else { unreachable!("the service is IPv4") };
    let mut random = seed | 1;
    let start = Instant::now();
    let mut sent = 0u64;
    while !stop.load(Ordering::Relaxed) && start.elapsed() < limit && sent < MAX_FLOOD {
        let room = pace.room(sent, start.elapsed()).min(BATCH as u64);
        if room == 0 {
            std::thread::sleep(Duration::from_micros(200));
            continue;
        }
        let sources: Vec<Ipv4Addr> = (0..room).map(|k| flood_source(sent + k)).collect();
        let payloads: Vec<Vec<u8>> = sources
            .iter()
            .enumerate()
            .map(|(k, &from)| {
                let user = format!("f{:016x}", next_random(&mut random));
                first_contact::register(&user, SocketAddrV4::new(from, FLOOD_PORT), seed + sent + k as u64)
            })
            .collect();
        let datagrams: Vec<Outgoing<'_>> = payloads
            .iter()
            .zip(&sources)
            .map(|(payload, &from)| Outgoing { payload, to: service, from: Some(from) })
            .collect();
        sent += mmsg::send(socket, &datagrams).expect("sendmmsg") as u64;
    }
    (sent, start.elapsed().as_secs_f64())
}

/// The source of the flood's `n`th REGISTER: one of `SOURCES` addresses.
fn flood_source(n: u64) -> Ipv4Addr {
    let index = (n * SOURCE_STRIDE % u64::from(SOURCES)) as u32;
    Ipv4Addr::from(u32::from(FLOOD_BASE) + index)
}

/// xorshift64: new AORs without a dependency; not for anything secret.
fn next_random(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

/// What the known clients got in one phase.
struct Phase {
    storm: Outcome,
    /// The installed client's datagrams: sent, and received on home0.
    fast_sent: u64,
    fast_received: u64,
    seconds: f64,
    /// Datagrams the edge's full sockets dropped during the phase.
    socket_drops: u64,
    /// The flood that ran meanwhile, if any: REGISTERs sent, in seconds.
    flood: Option<(u64, f64)>,
}

impl Phase {
    fn storm_rate(&self) -> f64 {
        self.storm.rate()
    }

    fn fast_path_rate(&self) -> f64 {
        self.fast_received as f64 / self.seconds
    }

    fn storm_raw(&self, row: Row) -> Row {
        let storm = &self.storm;
        row.raw("sent", storm.sent as f64)
            .raw("redirected", storm.redirected as f64)
            .raw("other_answers", storm.other_answers as f64)
            .raw("unanswered", (storm.sent - storm.redirected - storm.other_answers) as f64)
            .raw("answered_pct", 100.0 * storm.redirected as f64 / storm.sent.max(1) as f64)
    }

    fn fast_path_raw(&self, row: Row) -> Row {
        row.raw("sent", self.fast_sent as f64).raw("received", self.fast_received as f64)
    }
}

/// The storm and the installed client for `limit`, side by side; the storm
/// sends REGISTERs numbered from `*next` on and advances it.
fn measure(bench: &Bench, limit: Duration, next: &mut u64) -> Phase {
    let drops = bench.socket_drops();
    let stop = Arc::new(AtomicBool::new(false));
    let payload = throughput::payload();
    // Only the installed client's datagrams: flood sources that were
    // admitted are on the fast path too, and some are home0's.
    let expected = payload.clone();
    let socket = bench.home.try_clone().expect("cloning home0's socket");
    let counter = throughput::count(socket, stop.clone(), move |d| d == expected);
    let max = storm_per_phase(limit);
    // Open loop: a window as large as the phase's count never fills.
    let load = Load { first: *next, max, limit, pace: Pace::PerSecond(STORM_PACE), window: max };
    let pace = Pace::PerSecond(FAST_PATH_PACE);
    let (storm, fast_sent) = std::thread::scope(|scope| {
        let fast = scope.spawn(|| throughput::blast(&bench.client, &payload, u64::MAX, limit, pace));
        let storm = first_contact::drive(&bench.storm, &load);
        (storm, fast.join().expect("the fast-path sender"))
    });
    stop.store(true, Ordering::Relaxed);
    let (fast_received, _) = counter.join().expect("home0's counter");
    *next += storm.sent;
    let seconds = limit.as_secs_f64();
    Phase { storm, fast_sent, fast_received, seconds, socket_drops: bench.socket_drops() - drops, flood: None }
}

/// The storm's REGISTERs in one phase, at most.
fn storm_per_phase(limit: Duration) -> u64 {
    (STORM_PACE * limit.as_secs_f64()) as u64 + BATCH as u64
}

/// The known clients measured while a flood runs at `pace`.
fn flooded(bench: &Bench, pace: Pace, limit: Duration, next: &mut u64) -> Phase {
    let flood = Flood::start(&bench.topology, pace, limit + 2 * SETTLE, *next);
    std::thread::sleep(SETTLE);
    let mut phase = measure(bench, limit, next);
    phase.flood = Some(flood.stop());
    // The edge drains what the flood queued before the next phase.
    std::thread::sleep(SETTLE);
    phase
}

pub fn run(quick: bool) -> Section {
    let (rounds, limit) = if quick { (1, Duration::from_secs(1)) } else { (3, Duration::from_secs(3)) };
    // Every storm REGISTER names a known AOR: more than the phases send.
    let phases = rounds as u64 * (1 + FLOODS.len() as u64);
    let known = phases * storm_per_phase(limit);
    let mut section = Section::new(
        "flood",
        format!(
            "3c. Known clients during a flood of new AORs from {SOURCES} spoofed sources ({PREFIXES} /24s), \
             {limit:?} per phase, median of {rounds}; goal ≥ 0.9"
        ),
    );
    let bench = Bench::start(known);
    let began = Instant::now();
    let mut next = 1;
    // phases[0]: no flood; phases[1 + k]: during FLOODS[k].
    let mut phases: Vec<Vec<Phase>> = (0..=FLOODS.len()).map(|_| Vec::new()).collect();
    for _ in 0..rounds {
        phases[0].push(measure(&bench, limit, &mut next));
        for (k, (_, pace)) in FLOODS.iter().enumerate() {
            phases[k + 1].push(flooded(&bench, *pace, limit, &mut next));
        }
    }
    let counters = bench.settled_counters();
    known_rows(&mut section, &phases);
    flood_rows(&mut section, &phases[1..], began.elapsed().as_secs_f64(), &counters);
    section.notes.push(format!(
        "known clients' offered load: storm {STORM_PACE} REGISTER/s, fast path {FAST_PATH_PACE} datagram/s; \
         ratio: with the flood over without, median of the rounds' ratios"
    ));
    section.notes.push(format!(
        "edge limits: [limits] new_clients_per_prefix = {PER_PREFIX}, new_clients_burst = {BURST}, \
         throttled_datagrams = {THROTTLED} (throttle_for: the default); \
         edge_drops: datagrams the daemon's full sockets dropped (before first contact or admission saw them)"
    ));
    section
}

/// A row of the known clients: what it is, and its rate and raw counts
/// in a phase.
struct Known {
    name: &'static str,
    unit: &'static str,
    rate: fn(&Phase) -> f64,
    raw: fn(&Phase, Row) -> Row,
}

const KNOWN: [Known; 2] = [
    Known { name: STORM, unit: "302/s", rate: Phase::storm_rate, raw: Phase::storm_raw },
    Known { name: FAST_PATH, unit: "pkt/s", rate: Phase::fast_path_rate, raw: Phase::fast_path_raw },
];

/// The storm's and the installed client's rows: without a flood, then
/// during each of `FLOODS`.
fn known_rows(section: &mut Section, phases: &[Vec<Phase>]) {
    let labels = std::iter::once("no flood").chain(FLOODS.iter().map(|(name, _)| *name));
    let calm = &phases[0];
    for known in &KNOWN {
        let reference = format!("{}, no flood", known.name);
        for (label, phases) in labels.clone().zip(phases) {
            let Some(phase) = median_by(phases.iter().collect(), |p| (known.rate)(p)) else { continue };
            let row = Row::new(format!("{}, {label}", known.name), (known.rate)(phase), known.unit)
                .raw("edge_drops", phase.socket_drops as f64);
            let mut row = (known.raw)(phase, row);
            if let Some(ratio) = median_ratio(phases.iter().map(known.rate), calm.iter().map(known.rate)) {
                row = row.ratio(reference.clone(), ratio);
            }
            section.rows.push(row);
        }
    }
}

/// What each flood sent and what the edge's full sockets dropped of it;
/// over all of them, what admission refused and what they stored against
/// what the limits allow in `seconds`.
fn flood_rows(section: &mut Section, flooded: &[Vec<Phase>], seconds: f64, counters: &serde_json::Value) {
    let counter = |name: &str| counters["first_contact"][name].as_u64().unwrap_or(0);
    let dropped_in_kernel = counters["verdicts"]["drop_throttled"].as_u64().unwrap_or(0);
    let mut total = 0;
    for ((name, _), phases) in FLOODS.iter().zip(flooded) {
        let (sent, flood_seconds) = phases.iter().filter_map(|p| p.flood).fold((0, 0.0), |a, f| (a.0 + f.0, a.1 + f.1));
        let drops: u64 = phases.iter().map(|p| p.socket_drops).sum();
        total += sent;
        section.rows.push(
            Row::new(format!("flood: {name}, sent"), sent as f64 / flood_seconds, "req/s")
                .raw("sent", sent as f64)
                .raw("seconds", flood_seconds)
                .raw("edge_drops", drops as f64)
                .raw("edge_drops_pct", 100.0 * drops as f64 / sent.max(1) as f64),
        );
    }
    section.rows.push(
        Row::new("flood: refused by admission (rate_limited)", counter("rate_limited") as f64, "requests")
            .against("every flood's REGISTERs sent", total as f64)
            .raw("over_capacity", counter("over_capacity") as f64)
            .raw("requests_read", counter("requests") as f64)
            .raw("prefixes_throttled", counter("prefixes_throttled") as f64),
    );
    section.rows.push(
        Row::new("flood: dropped in the kernel (drop_throttled)", dropped_in_kernel as f64, "datagrams")
            .against("every flood's REGISTERs sent", total as f64),
    );
    // Per /24: the burst, then the rate for as long as the section ran.
    let allowed = f64::from(PREFIXES) * (BURST + PER_PREFIX * seconds);
    section.rows.push(
        Row::new("flood: new AORs stored", counter("assigned") as f64, "AORs")
            .against("what the limits allow", allowed)
            .raw("allowed", allowed.floor())
            .raw("prefixes", f64::from(PREFIXES))
            .raw("sources", f64::from(SOURCES)),
    );
}
