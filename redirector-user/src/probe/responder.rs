//! A probe responder in user space over tokio: the same protocol and
//! answers as the XDP responders, for hosts that cannot run them and as the
//! benchmark's baseline. Like `decap`, it answers only while the edge's
//! state messages (`super::state`) say its server is active. `delay` holds
//! each answer back (the namespace test makes slow servers with it, this
//! kernel having no netem).

use std::{net::SocketAddr, sync::Arc, time::Duration};

use redirector_ebpf::probe::{PROBE_LEN, answer, is_probe};
use tokio::net::UdpSocket;

use super::{Keys, address, state::Follower};
use crate::store::{unix_ms, unix_seconds};

/// Answers probes on `socket` (bound to a specific address, the server's
/// identity) until an I/O error.
pub async fn serve(socket: UdpSocket, keys: Keys, delay: Duration) -> std::io::Result<()> {
    let socket = Arc::new(socket);
    let local = socket.local_addr()?;
    let mut follower = Follower::new(&keys, &[local.ip()]);
    let mut buffer = [0u8; 2048];
    loop {
        let (len, from) = socket.recv_from(&mut buffer).await?;
        let Some(reply) = reply(&buffer[..len], local, from, &keys) else {
            follower.heed(&buffer[..len], unix_ms());
            continue;
        };
        if !follower.answering() {
            continue;
        }
        if delay.is_zero() {
            socket.send_to(&reply, from).await?;
            continue;
        }
        let socket = socket.clone();
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            let _ = socket.send_to(&reply, from).await;
        });
    }
}

/// The answer to `datagram` if it is a well-formed probe.
fn reply(datagram: &[u8], local: SocketAddr, from: SocketAddr, keys: &Keys) -> Option<[u8; PROBE_LEN]> {
    let mut bytes: [u8; PROBE_LEN] = datagram.try_into().ok()?;
    if !is_probe(&bytes) {
        return None;
    }
    let config = keys.config_at(unix_seconds(), local.port(), true);
    answer(&mut bytes, &config, &address(local.ip()), &address(from.ip()));
    Some(bytes)
}
