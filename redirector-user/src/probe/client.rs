//! The client side over tokio, for `redirector probe` and for softphones
//! written in Rust: `probe(servers, timeout)` sends one probe to each
//! server at once and returns the report of `select::Selection`.

use std::{
    io::Read,
    net::{Ipv4Addr, Ipv6Addr, SocketAddr},
    time::{Duration, Instant},
};

use tokio::net::UdpSocket;

use super::select::{Report, Selection};

#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("no servers to probe: name at least one ADDRESS:PORT")]
    NoServers,
    #[error("{what}: {source}")]
    Io { what: String, source: std::io::Error },
}

/// Probes `servers` concurrently (one tag) and waits until each has
/// answered or `timeout` has passed.
pub async fn probe(servers: &[SocketAddr], timeout: Duration) -> Result<Report, ProbeError> {
    if servers.is_empty() {
        return Err(ProbeError::NoServers);
    }
    let v4 = bind_if(servers.iter().any(SocketAddr::is_ipv4), Ipv4Addr::UNSPECIFIED.into()).await?;
    let v6 = bind_if(servers.iter().any(SocketAddr::is_ipv6), Ipv6Addr::UNSPECIFIED.into()).await?;
    let mut selection = Selection::new(random_tag()?, servers.to_vec(), Instant::now());
    let probe = selection.probe();
    for &server in servers {
        let socket = if server.is_ipv4() { &v4 } else { &v6 };
        let socket = socket.as_ref().expect("bound for every family probed");
        socket.send_to(&probe, server).await.map_err(io(format!("sending the probe to {server}")))?;
    }
    let deadline = tokio::time::Instant::now() + timeout;
    let mut buffer = [0u8; 64];
    let mut spare = [0u8; 64];
    while !selection.complete() {
        let received = tokio::select! {
            received = receive(v4.as_ref(), &mut buffer) => received,
            received = receive(v6.as_ref(), &mut spare) => received.map(|(len, from)| {
                buffer[..len].copy_from_slice(&spare[..len]);
                (len, from)
            }),
            () = tokio::time::sleep_until(deadline) => break,
        };
        let (len, from) = received.map_err(io("receiving answers".into()))?;
        selection.on_datagram(from, &buffer[..len], Instant::now());
    }
    Ok(selection.report())
}

async fn bind_if(needed: bool, address: std::net::IpAddr) -> Result<Option<UdpSocket>, ProbeError> {
    if !needed {
        return Ok(None);
    }
    let socket = UdpSocket::bind(SocketAddr::new(address, 0)).await.map_err(io(format!("binding {address}")))?;
    Ok(Some(socket))
}

/// A datagram from `socket`; never, without one.
async fn receive(socket: Option<&UdpSocket>, buffer: &mut [u8]) -> std::io::Result<(usize, SocketAddr)> {
    match socket {
        Some(socket) => socket.recv_from(buffer).await,
        None => std::future::pending().await,
    }
}

/// A tag no one can guess, so no one can answer for a server not probed.
fn random_tag() -> Result<u64, ProbeError> {
    let mut bytes = [0u8; 8];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut random| random.read_exact(&mut bytes))
        .map_err(io("reading /dev/urandom for the probe's tag".into()))?;
    Ok(u64::from_ne_bytes(bytes))
}

fn io(what: String) -> impl FnOnce(std::io::Error) -> ProbeError {
    move |source| ProbeError::Io { what, source }
}
