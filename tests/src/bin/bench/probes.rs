//! Section 6: probe answers per second (client-driven home selection,
//! issue #14) from the home-side XDP responder (`redirector decap
//! --probe-port`) against the user-space responder of the same protocol
//! (`redirector probe-responder`, tokio), on the same home, link and
//! client, in the same run.
//!
//! Topology: the namespace pool's client and one home on the bridge (no
//! edge daemon). The home runs both responders at once: XDP at one port
//! (skb mode), tokio at another, which the XDP program passes up. Load:
//! sendmmsg of 48-byte probes from one client socket as fast as the kernel
//! takes them for a fixed time; answers counted by recvmmsg on the same
//! socket; rate = answers / (last answer − first). On two shared cores the
//! generator, the softirq and the responder compete, so the ratio is the
//! figure, not the absolute rate.

use std::{
    net::{SocketAddr, SocketAddrV4},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use redirector_ebpf::probe::{PROBE_LEN, parse_answer, probe};
use redirector_tests::topology::{Attach, CLIENT, Topology, home_address, redirector_binary, socket_in};

use crate::{
    mmsg::Pace,
    report::{Row, Section, median_by, median_ratio},
    throughput::{blast_to, count},
};

const XDP_PORT: u16 = 5099;
const TOKIO_PORT: u16 = 5098;
const SECRET: &str = "0123456789abcdef0123456789abcdef";
const MAX_PROBES: u64 = 50_000_000;

#[derive(Clone, Copy)]
struct Outcome {
    sent: u64,
    answered: u64,
    seconds: f64,
}

impl Outcome {
    fn rate(&self) -> f64 {
        if self.seconds > 0.0 { self.answered as f64 / self.seconds } else { 0.0 }
    }
}

pub fn run(quick: bool) -> Section {
    let (rounds, limit) = if quick { (1, Duration::from_secs(1)) } else { (3, Duration::from_secs(3)) };
    let mut section = Section::new(
        "probes",
        format!("6. Probe answers per second, {PROBE_LEN}-byte probes by sendmmsg for {limit:?}, median of {rounds}"),
    );
    let mut topology = Topology::new("dsr", Attach::Skb, 1);
    let secret = topology.scratch("probe.secret");
    std::fs::write(&secret, SECRET).expect("writing the probe secret");
    let secret = secret.to_str().expect("a UTF-8 path").to_owned();
    let xdp = ["--probe-port", &XDP_PORT.to_string(), "--probe-secret", &secret].map(String::from);
    topology.decap_args = vec![xdp.to_vec()];
    topology.prepare_edge();
    let listen = SocketAddr::new(home_address(0).into(), TOKIO_PORT).to_string();
    let tokio = ["probe-responder", "--listen", &listen, "--secret", &secret].map(String::from);
    let responder = topology.spawn_in_home(0, &tokio);
    topology.adopt(responder);
    let client = socket_in(&topology.client, &format!("{CLIENT}:0"));
    let targets =
        [("XDP responder (redirector decap)", XDP_PORT), ("tokio responder (redirector probe-responder)", TOKIO_PORT)];
    for (name, port) in targets {
        if !answers(&topology, port) {
            section.skip(format!("{name}: no answer to a probe"));
            return section;
        }
    }
    let mut outcomes = vec![Vec::new(); targets.len()];
    for _ in 0..rounds {
        for ((_, port), out) in targets.iter().zip(&mut outcomes) {
            out.push(measure(&client, *port, limit));
        }
    }
    for ((name, _), out) in targets.iter().zip(&outcomes) {
        let Some(outcome) = median_by(out.clone(), Outcome::rate) else { continue };
        let ratio = median_ratio(out.iter().map(Outcome::rate), outcomes[1].iter().map(Outcome::rate));
        let row = Row::new(*name, outcome.rate(), "answers/s")
            .raw("sent", outcome.sent as f64)
            .raw("answered", outcome.answered as f64)
            .raw("seconds", outcome.seconds);
        section.rows.push(match ratio {
            Some(ratio) => row.ratio(targets[1].0, ratio),
            None => row,
        });
    }
    section.notes.push(
        "ratio: answers per second over the tokio responder's in the same round; median of the rounds' ratios".into(),
    );
    section.notes.push("both on one home (skb-mode XDP on its veth), probed from one client socket; sent beside answered shows what was dropped".into());
    section
}

/// Whether the responder at `port` answers one probe (bounded wait: it
/// may still be starting).
fn answers(topology: &Topology, port: u16) -> bool {
    let server = SocketAddr::new(home_address(0).into(), port).to_string();
    let binary = redirector_binary();
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(20) {
        let args = ["probe", "--servers", &server, "--timeout", "200"];
        if topology.client.command(binary.to_str().unwrap(), &args).output().is_ok_and(|o| o.status.success()) {
            return true;
        }
    }
    false
}

fn measure(client: &std::net::UdpSocket, port: u16, limit: Duration) -> Outcome {
    let stop = Arc::new(AtomicBool::new(false));
    let counter =
        count(client.try_clone().expect("cloning the client socket"), stop.clone(), |d| parse_answer(d).is_some());
    let to = SocketAddrV4::new(home_address(0), port);
    let sent = blast_to(client, &probe(7), to, MAX_PROBES, limit, Pace::Flat);
    stop.store(true, Ordering::Relaxed);
    let (answered, seconds) = counter.join().expect("counter thread");
    Outcome { sent, answered, seconds }
}
