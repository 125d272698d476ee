//! Section 4a: failover, from a home server's death (its registrar process
//! killed) to its client's datagrams being forwarded by the kernel to a
//! live home server, against the detection time the health checks are
//! configured for (interval × down_after).
//!
//! The edge daemon runs in this process (as in the failover test), so the
//! kernel's per-server counters can be read every millisecond; the client
//! sends a REGISTER every millisecond from the address its first contact
//! put on the fast path.

use std::{
    net::UdpSocket,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use redirector::ops::api::Route;
use redirector_tests::{
    sip_pool::{InProcessEdge, Registrar, start_registrars},
    topology::{Attach, CLIENT, SERVICE, Topology, receive, socket_in},
};

use crate::report::{Row, Section, median_by};

const INTERVAL: f64 = 0.1;
const DOWN_AFTER: u32 = 3;
const CLIENT_PORT: u16 = 5070;
const GIVE_UP: Duration = Duration::from_secs(10);

fn register() -> Vec<u8> {
    format!(
        "REGISTER sip:bench.example SIP/2.0\r\nVia: SIP/2.0/UDP {CLIENT}:{CLIENT_PORT};branch=z9hG4bK-fo;rport\r\n\
         Max-Forwards: 70\r\nTo: <sip:failover@bench.example>\r\nFrom: <sip:failover@bench.example>;tag=f\r\n\
         Call-ID: failover@bench\r\nCSeq: 1 REGISTER\r\nContact: <sip:failover@{CLIENT}:{CLIENT_PORT}>\r\n\
         Content-Length: 0\r\n\r\n"
    )
    .into_bytes()
}

struct Outcome {
    /// Kill → the daemon marks the server unhealthy.
    detected: Duration,
    /// Kill → the kernel forwards the client's datagram to the live server.
    forwarded: Duration,
}

/// Sends a REGISTER every millisecond until `stop`.
fn keep_sending(socket: UdpSocket, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let register = register();
        while !stop.load(Ordering::Relaxed) {
            let _ = socket.send_to(&register, SERVICE);
            std::thread::sleep(Duration::from_millis(1));
        }
    })
}

fn one_failover() -> Outcome {
    let mut topology = Topology::new("dsr", Attach::Native, 2);
    topology.extra_config =
        format!("[health]\ninterval = {INTERVAL}\ndown_after = {DOWN_AFTER}\n[rebalance]\nenabled = false\n");
    start_registrars(&mut topology, Registrar::Own);
    let edge = InProcessEdge::start(&mut topology, &[]);
    let client = socket_in(&topology.client, &format!("{CLIENT}:{CLIENT_PORT}"));
    client.send_to(&register(), SERVICE).expect("first REGISTER");
    let answer = receive(&client, 1, Duration::from_secs(5));
    assert!(answer.first().is_some_and(|(_, a)| a.starts_with(b"SIP/2.0 302 ")), "the first contact is redirected");
    let routes: Vec<Route> = edge.routes();
    let dead_name = routes[0].server.clone();
    let dead: usize = dead_name.trim_start_matches("home").parse().expect("homeN");
    let survivor = 1 - dead as u32;
    let server = |name: &str| edge.servers().into_iter().find(|s| s.name == name).expect("a configured server");
    let forwarded_to_survivor = || server(&format!("home{survivor}")).packets;
    let healthy = || server(&dead_name).healthy;

    let stop = Arc::new(AtomicBool::new(false));
    let sender = keep_sending(client.try_clone().expect("cloning the client socket"), stop.clone());
    std::thread::sleep(Duration::from_millis(50));
    let before = forwarded_to_survivor();
    topology.stop_registrar(dead);
    let killed = Instant::now();
    let mut detected = None;
    while forwarded_to_survivor() == before {
        assert!(killed.elapsed() < GIVE_UP, "no datagram reached the live server within {GIVE_UP:?}");
        if detected.is_none() && !healthy() {
            detected = Some(killed.elapsed());
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    let forwarded = killed.elapsed();
    stop.store(true, Ordering::Relaxed);
    sender.join().expect("sender thread");
    Outcome { detected: detected.unwrap_or(forwarded), forwarded }
}

pub fn run(quick: bool) -> Section {
    let rounds = if quick { 1 } else { 5 };
    let configured = INTERVAL * f64::from(DOWN_AFTER);
    let mut section = Section::new(
        "failover",
        format!("4a. Failover: home server killed → its client forwarded to a live one, median of {rounds}"),
    );
    let outcomes: Vec<Outcome> = (0..rounds).map(|_| one_failover()).collect();
    let outcome = median_by(outcomes, |o| o.forwarded.as_secs_f64()).expect("one round at least");
    let against = format!("health.interval × down_after = {INTERVAL} s × {DOWN_AFTER}");
    for (case, took) in
        [("kill → marked down", outcome.detected), ("kill → forwarded to the live server", outcome.forwarded)]
    {
        section.rows.push(Row::new(case, took.as_secs_f64() * 1e3, "ms").against(&against, configured * 1e3));
    }
    section.notes.push(
        "the client sends a REGISTER every millisecond; the kernel's per-server counter is read every millisecond"
            .into(),
    );
    section
}
