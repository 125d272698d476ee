//! Section 4c: the pool changed without an outage. First, the forwarding
//! gap across a restart of the daemon (here); then the time from
//! `servers add` to the first client forwarded to the new server
//! (`server_add`), on a topology of its own after this one is gone.
//!
//! The restart: a client pinned to home0 in the edge's config sends numbered datagrams at a fixed
//! rate, forwarded by XDP and counted at home0, while `redirector run` is
//! killed with SIGKILL and started again. Pinned (the daemon's behaviour):
//! the kernel forwards throughout. Against it, in the same run: the same
//! restart with the pins removed after the kill (`redirector detach`), as a
//! daemon whose fast path dies with it would leave the edge.

use std::{
    collections::BTreeSet,
    net::{SocketAddr, UdpSocket},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use redirector_tests::topology::{Attach, CLIENT, SERVICE, Topology, socket_in};

use crate::{
    report::{Row, Section},
    server_add,
};

/// Datagrams a second the client sends.
const RATE: u32 = 5_000;
const CLIENT_PORT: u16 = 5090;
/// From the kill to the restart: what a supervisor's restart delay and the
/// daemon's start take together, roughly.
const DOWN: Duration = Duration::from_millis(2_000);

/// What one restart cost the client.
struct Gap {
    sent: u32,
    received: usize,
    /// The longest run of datagrams that never arrived.
    longest: u32,
}

impl Gap {
    fn lost(&self) -> u32 {
        self.sent - self.received as u32
    }

    fn longest_ms(&self) -> f64 {
        f64::from(self.longest) * 1000.0 / f64::from(RATE)
    }
}

pub fn run(quick: bool) -> Section {
    let mut section = Section::new(
        "4c",
        format!(
            "The pool changed without an outage: kill -9 and restart of the daemon ({RATE} datagrams/s, \
             down {DOWN:?}); a server added at runtime"
        ),
    );
    measure_restart(&mut section, quick);
    // After the restart's topology is dropped: one topology at a time.
    server_add::measure(&mut section, quick);
    section
}

/// The restart rows: pinned, and with the pins removed after the kill.
fn measure_restart(section: &mut Section, quick: bool) {
    let mut topology = Topology::new("dsr", Attach::Skb, 2);
    topology.extra_config = "[health]\ninterval = 3600\n".into();
    let home = socket_in(&topology.homes[0], SERVICE);
    home.set_read_timeout(Some(Duration::from_millis(200))).expect("a read timeout");
    topology.start(&[(SocketAddr::new(CLIENT.into(), CLIENT_PORT), 0)]);
    let client = socket_in(&topology.client, &format!("{CLIENT}:{CLIENT_PORT}"));
    let settle = if quick { Duration::from_millis(300) } else { Duration::from_secs(1) };
    let pinned = measure(&mut topology, &client, &home, settle, false);
    let unpinned = measure(&mut topology, &client, &home, settle, true);
    section.rows.push(
        Row::new("datagrams lost across the restart, pinned", f64::from(pinned.lost()), "datagrams")
            .raw("sent", f64::from(pinned.sent))
            .raw("longest_gap_ms", pinned.longest_ms()),
    );
    section.rows.push(
        Row::new(
            "datagrams lost across the restart, pins removed after the kill",
            f64::from(unpinned.lost()),
            "datagrams",
        )
        .raw("sent", f64::from(unpinned.sent))
        .raw("longest_gap_ms", unpinned.longest_ms()),
    );
    section.notes.push(format!(
        "goal: 0 lost pinned; the second row is the same restart with the fast path gone for the downtime \
         ({DOWN:?} plus the daemon's start), the old behaviour"
    ));
}

/// Streams from `client` while the daemon is killed, (`unpin`: its pins
/// removed,) and restarted; counts what reached home0.
fn measure(topology: &mut Topology, client: &UdpSocket, home: &UdpSocket, settle: Duration, unpin: bool) -> Gap {
    let stop = Arc::new(AtomicBool::new(false));
    let receiver = count(home.try_clone().expect("a second handle"), stop.clone());
    let sender = stream(client.try_clone().expect("a second handle"), stop.clone());
    std::thread::sleep(settle);
    topology.kill_edge();
    if unpin {
        let (detached, _) = topology.detach_edge();
        assert!(detached, "redirector detach failed");
    }
    std::thread::sleep(DOWN);
    topology.run_edge();
    std::thread::sleep(settle);
    stop.store(true, Ordering::Relaxed);
    let sent = sender.join().expect("the sender");
    let received = receiver.join().expect("the receiver");
    let longest = longest_missing_run(&received, sent);
    Gap { sent, received: received.len(), longest }
}

/// Sends datagram 0, 1, 2… at `RATE` until `stop`; returns how many.
fn stream(socket: UdpSocket, stop: Arc<AtomicBool>) -> JoinHandle<u32> {
    std::thread::spawn(move || {
        let start = Instant::now();
        let mut sent = 0u32;
        while !stop.load(Ordering::Relaxed) {
            let due = start + Duration::from_secs_f64(f64::from(sent) / f64::from(RATE));
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
            let _ = socket.send_to(format!("restart-bench {sent}").as_bytes(), SERVICE);
            sent += 1;
        }
        sent
    })
}

/// The sequence numbers arriving on `socket` until `stop` and a quiet read.
fn count(socket: UdpSocket, stop: Arc<AtomicBool>) -> JoinHandle<BTreeSet<u32>> {
    std::thread::spawn(move || {
        let mut seen = BTreeSet::new();
        let mut buffer = [0u8; 256];
        loop {
            match socket.recv(&mut buffer) {
                Ok(length) => seen.extend(sequence(&buffer[..length])),
                Err(_) if stop.load(Ordering::Relaxed) => return seen,
                Err(_) => {}
            }
        }
    })
}

fn sequence(datagram: &[u8]) -> Option<u32> {
    std::str::from_utf8(datagram).ok()?.strip_prefix("restart-bench ")?.parse().ok()
}

fn longest_missing_run(received: &BTreeSet<u32>, sent: u32) -> u32 {
    let (mut longest, mut run) = (0, 0);
    for n in 0..sent {
        run = if received.contains(&n) { 0 } else { run + 1 };
        longest = longest.max(run);
    }
    longest
}
