//! Sends what first contact forwards for clients on the fast path
//! (`Action::Encapsulate`, `Action::Translate`): whole IP packets, built by
//! `kernel::packets`, on raw sockets. `IPPROTO_RAW` sockets carry the
//! header we build and only send: unlike a raw UDP or IPIP socket, they
//! receive no copy of the host's incoming traffic.

use std::{
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    sync::atomic::{AtomicU32, Ordering},
};

use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use tokio::io::{Interest, unix::AsyncFd};
use tracing::warn;

use crate::{
    edge::first_contact::Action,
    kernel::packets::{PACKET_LIMIT, PacketError, encapsulated, encapsulation_overhead, udp_packets},
};

/// A raw socket per family the edge has an address of, with that address
/// (the source of dsr's outer headers and of nat's rewritten packets).
pub struct RawSockets {
    sockets: Vec<(IpAddr, Socket)>,
}

impl RawSockets {
    /// Needs CAP_NET_RAW.
    pub fn open(edge_v4: Option<Ipv4Addr>, edge_v6: Option<Ipv6Addr>) -> io::Result<Self> {
        let edges = [edge_v4.map(IpAddr::V4), edge_v6.map(IpAddr::V6)];
        let sockets =
            edges.into_iter().flatten().map(|edge| Ok((edge, raw_socket(edge)?))).collect::<io::Result<_>>()?;
        Ok(Self { sockets })
    }

    pub fn try_clone(&self) -> io::Result<Self> {
        let sockets = self.sockets.iter().map(|(edge, s)| Ok((*edge, s.try_clone()?))).collect::<io::Result<_>>()?;
        Ok(Self { sockets })
    }
}

fn raw_socket(edge: IpAddr) -> io::Result<Socket> {
    let socket =
        Socket::new(Domain::for_address(SocketAddr::new(edge, 0)), Type::RAW, Some(Protocol::from(libc::IPPROTO_RAW)))?;
    // IPPROTO_RAW implies it; said outright, as the packets depend on it.
    if edge.is_ipv4() {
        socket.set_header_included_v4(true)?;
    } else {
        socket.set_header_included_v6(true)?;
    }
    socket.set_nonblocking(true)?;
    Ok(socket)
}

fn registered(socket: Socket) -> io::Result<AsyncFd<Socket>> {
    // SAFETY: the socket owns its fd, which stays open and the same for as
    // long as the AsyncFd owns the socket.
    unsafe { AsyncFd::register_with_interest(socket, Interest::WRITABLE) }.map_err(|error| error.into_parts().1)
}

#[derive(Debug, thiserror::Error)]
enum RawError {
    #[error("the edge has no address of {home}'s family ([edge] ipv4 / ipv6) to send from")]
    NoEdgeAddress { home: IpAddr },
    #[error(transparent)]
    Packet(#[from] PacketError),
}

/// IP packets for a home server.
struct Outgoing {
    home: IpAddr,
    packets: Vec<Vec<u8>>,
}

/// The raw sockets, registered with the runtime.
pub struct RawSender {
    sockets: Vec<(IpAddr, AsyncFd<Socket>)>,
    /// IP identifications (fragments of one datagram share one).
    ids: AtomicU32,
}

impl RawSender {
    pub fn new(sockets: RawSockets) -> io::Result<Self> {
        let sockets =
            sockets.sockets.into_iter().map(|(edge, s)| Ok((edge, registered(s)?))).collect::<io::Result<_>>()?;
        Ok(Self { sockets, ids: AtomicU32::new(std::process::id().wrapping_mul(0x9e37_79b9)) })
    }

    /// Sends an `Encapsulate` or `Translate` (anything else is not ours);
    /// a failure is logged: the client retransmits, as after any loss.
    pub async fn send(&self, action: &Action) {
        let Outgoing { home, packets } = match self.packets(action) {
            Ok(Some(outgoing)) => outgoing,
            Ok(None) => return,
            Err(error) => {
                warn!(%error, "a fast-path client's passed-up datagram was not sent on");
                return;
            }
        };
        let Some(socket) = self.socket_for(home) else { return };
        let to = SockAddr::from(SocketAddr::new(home, 0));
        for packet in packets {
            if let Err(error) = socket.async_io(Interest::WRITABLE, |s| s.send_to(&packet, &to)).await {
                warn!(%home, %error, "sending a fast-path client's passed-up datagram failed");
                return;
            }
        }
    }

    /// The packets an action stands for, and the home they go to.
    fn packets(&self, action: &Action) -> Result<Option<Outgoing>, RawError> {
        let id = self.ids.fetch_add(1, Ordering::Relaxed);
        match action {
            Action::Encapsulate { client, service, home, bytes } => {
                let edge = self.edge_for(*home)?;
                let limit = PACKET_LIMIT - encapsulation_overhead(*home);
                let inner = udp_packets(*client, *service, bytes, id, limit)?;
                let outer = inner.iter().map(|packet| encapsulated(edge, *home, packet)).collect::<Result<_, _>>()?;
                Ok(Some(Outgoing { home: *home, packets: outer }))
            }
            Action::Translate { edge_port, home, bytes } => {
                let edge = SocketAddr::new(self.edge_for(home.ip())?, *edge_port);
                let packets = udp_packets(edge, *home, bytes, id, PACKET_LIMIT)?;
                Ok(Some(Outgoing { home: home.ip(), packets }))
            }
            _ => Ok(None),
        }
    }

    fn edge_for(&self, home: IpAddr) -> Result<IpAddr, RawError> {
        let found = self.sockets.iter().find(|(edge, _)| edge.is_ipv4() == home.is_ipv4());
        found.map(|(edge, _)| *edge).ok_or(RawError::NoEdgeAddress { home })
    }

    fn socket_for(&self, home: IpAddr) -> Option<&AsyncFd<Socket>> {
        self.sockets.iter().find(|(edge, _)| edge.is_ipv4() == home.is_ipv4()).map(|(_, socket)| socket)
    }
}
