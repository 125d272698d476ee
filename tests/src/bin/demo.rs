//! `cargo xtask demo`: the fast path at work. For each mode, builds a client,
//! an edge and three home servers in network namespaces, pins three client
//! ports to one home server each, leaves a fourth unknown, sends datagrams
//! and shows where every one of them went. Tears everything down; exits
//! non-zero if anything went astray.

use std::{net::SocketAddr, process::ExitCode, time::Duration};

use redirector_tests::{
    privileged,
    topology::{Attach, CLIENT, SERVICE, Topology, echo, home_listen_address, receive, socket_in},
};

const PER_CLIENT: usize = 100;
const HOMES: usize = 3;
const WAIT: Duration = Duration::from_secs(5);

fn run_mode(mode: &'static str) -> bool {
    println!("\n== {mode} mode: client → edge (XDP, native) → home servers ==");
    let mut topology = Topology::new(mode, Attach::Native, HOMES);
    let pinned: Vec<(SocketAddr, usize)> =
        (0..HOMES).map(|home| (format!("{CLIENT}:{}", 5060 + home).parse().unwrap(), home)).collect();
    let unknown: SocketAddr = format!("{CLIENT}:5099").parse().unwrap();
    let edge_socket = socket_in(&topology.edge, SERVICE);
    let homes: Vec<_> = topology.homes.iter().map(|ns| socket_in(ns, home_listen_address(mode))).collect();
    let clients: Vec<_> = pinned.iter().map(|(addr, _)| socket_in(&topology.client, &addr.to_string())).collect();
    let stranger = socket_in(&topology.client, &unknown.to_string());
    topology.start(&pinned);
    println!("redirector run attached to the edge; pinned {}", describe(&pinned));

    let echoes: Vec<_> = homes.into_iter().map(|socket| echo(socket, PER_CLIENT, WAIT)).collect();
    for (i, client) in clients.iter().chain([&stranger]).enumerate() {
        for n in 0..PER_CLIENT {
            client.send_to(format!("REGISTER #{n} from client {i}").as_bytes(), SERVICE).unwrap();
        }
    }
    let answered: Vec<usize> = echoes.into_iter().map(|h| h.join().unwrap()).collect();
    let replies: Vec<usize> = clients.iter().map(|c| receive(c, PER_CLIENT, WAIT).len()).collect();
    let first_contact = receive(&edge_socket, PER_CLIENT, WAIT).len();

    println!("{:<22} {:>10} {:>14} {:>18}", "client", "sent", "home answered", "replies at client");
    for (home, ((addr, _), (got, back))) in pinned.iter().zip(answered.iter().zip(&replies)).enumerate() {
        println!("{:<22} {:>10} {:>14} {:>18}", format!("{addr} → home{home}"), PER_CLIENT, got, back);
    }
    println!("{:<22} {:>10} {:>14} {:>18}", format!("{unknown} (unknown)"), PER_CLIENT, "-", "-");
    println!("first contact at the edge's own socket (would go to the SIP daemon): {first_contact}");
    let (stopped, detached) = topology.stop_edge();
    println!("SIGTERM: exited cleanly {stopped}, XDP detached {detached}");
    let ok =
        answered.iter().chain(&replies).all(|&n| n == PER_CLIENT) && first_contact == PER_CLIENT && stopped && detached;
    println!("{}", if ok { "all datagrams went where they belong" } else { "SOME DATAGRAMS WENT ASTRAY" });
    ok
}

fn describe(pinned: &[(SocketAddr, usize)]) -> String {
    pinned.iter().map(|(addr, home)| format!("{addr}→home{home}")).collect::<Vec<_>>().join(", ")
}

fn main() -> ExitCode {
    if !privileged() {
        return ExitCode::FAILURE;
    }
    let results: Vec<bool> = ["dsr", "nat"].into_iter().map(run_mode).collect();
    println!("\nnamespaces removed");
    if results.iter().all(|&ok| ok) { ExitCode::SUCCESS } else { ExitCode::FAILURE }
}
