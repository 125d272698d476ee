//! The kernel's route, neighbour and link tables over rtnetlink: how a
//! destination is reached (`Tables::resolve`, what `ip route get` and
//! `ip neigh` tell), and the changes to them (`Changes`).

use std::{
    io,
    net::IpAddr,
    os::fd::{AsRawFd, RawFd},
};

use netlink_packet_core::{NLM_F_DUMP, NLM_F_MULTIPART, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload};
use netlink_packet_route::{
    AddressFamily, RouteNetlinkMessage,
    link::{LinkAttribute, LinkMessage},
    neighbour::{NeighbourAddress, NeighbourAttribute, NeighbourMessage, NeighbourState},
    route::{RouteAddress, RouteAttribute, RouteFlags, RouteMessage, RouteMetric, RouteType},
};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};

pub type Mac = [u8; 6];

#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    #[error("rtnetlink: {what}: {source} (the hop keeper needs CAP_NET_ADMIN)")]
    Io { what: &'static str, source: io::Error },
    #[error("rtnetlink: the kernel refused a request: {0}")]
    Refused(io::Error),
    #[error("rtnetlink: a reply that does not parse: {0}")]
    Decode(String),
}

type Result<T, E = NetlinkError> = std::result::Result<T, E>;

fn io_error(what: &'static str) -> impl FnOnce(io::Error) -> NetlinkError {
    move |source| NetlinkError::Io { what, source }
}

/// How the kernel reaches a destination: the route's egress device and
/// MTU, and the neighbour packets go to (the gateway, or the destination
/// on-link) with its MAC if it is resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route {
    pub ifindex: u32,
    /// The largest IP packet the route takes.
    pub mtu: u32,
    pub src_mac: Mac,
    /// The gateway, or the destination itself.
    pub via: IpAddr,
    /// The neighbour's MAC while the kernel holds it valid.
    pub dst_mac: Option<Mac>,
}

/// A change to the kernel's tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// A neighbour's entry: its MAC while valid, `None` once it is not.
    Neighbour { ifindex: u32, address: IpAddr, mac: Option<Mac> },
    /// A route or link changed (or events were lost): anything may differ.
    Other,
}

/// A socket for requests to the route tables.
pub struct Tables {
    socket: Socket,
    buffer: Vec<u8>,
}

impl Tables {
    pub fn open() -> Result<Self> {
        let mut socket = Socket::new(NETLINK_ROUTE).map_err(io_error("opening a socket"))?;
        socket.bind_auto().map_err(io_error("binding a socket"))?;
        socket.connect(&SocketAddr::new(0, 0)).map_err(io_error("connecting a socket"))?;
        Ok(Self { socket, buffer: vec![0; 1 << 16] })
    }

    /// How the kernel routes a packet from `src` (if given) to `dst`;
    /// `None` when it does not route it out of an Ethernet device (no
    /// route, unreachable, local).
    pub fn resolve(&mut self, dst: IpAddr, src: Option<IpAddr>) -> Result<Option<Route>> {
        let Some(route) = self.route(dst, src)? else { return Ok(None) };
        let (ifindex, via, route_mtu) = route;
        let Some((src_mac, link_mtu)) = self.link(ifindex)? else { return Ok(None) };
        let dst_mac = self.neighbour(ifindex, via)?;
        let mtu = route_mtu.filter(|&mtu| mtu != 0).unwrap_or(link_mtu);
        Ok(Some(Route { ifindex, mtu, src_mac, via, dst_mac }))
    }

    /// `ip route get`: the egress device, the next hop and the route's MTU;
    /// `None` also for a multipath route, whose flows the FIB spreads over
    /// its next hops (one kept hop would send them all down one).
    fn route(&mut self, dst: IpAddr, src: Option<IpAddr>) -> Result<Option<(u32, IpAddr, Option<u32>)>> {
        let Some(matched) = self.get_route(dst, src, RouteFlags::FibMatch)? else { return Ok(None) };
        if matched.attributes.iter().any(|a| matches!(a, RouteAttribute::MultiPath(hops) if hops.len() > 1)) {
            return Ok(None);
        }
        Ok(self.get_route(dst, src, RouteFlags::empty())?.and_then(|route| next_hop(&route, dst)))
    }

    /// The unicast route the kernel answers for `dst` (from `src`):
    /// resolved for one packet, or with `FibMatch` the table entry itself.
    fn get_route(&mut self, dst: IpAddr, src: Option<IpAddr>, flags: RouteFlags) -> Result<Option<RouteMessage>> {
        let mut message = RouteMessage::default();
        message.header.address_family = family(dst);
        message.header.destination_prefix_length = if dst.is_ipv4() { 32 } else { 128 };
        message.header.flags = flags;
        message.attributes.push(RouteAttribute::Destination(RouteAddress::from(dst)));
        if let Some(src) = src {
            message.header.source_prefix_length = if src.is_ipv4() { 32 } else { 128 };
            message.attributes.push(RouteAttribute::Source(RouteAddress::from(src)));
        }
        let replies = match self.request(RouteNetlinkMessage::GetRoute(message), NLM_F_REQUEST) {
            Ok(replies) => replies,
            // No route (ENETUNREACH, EHOSTUNREACH…) is an answer, not a failure.
            Err(NetlinkError::Refused(_)) => return Ok(None),
            Err(error) => return Err(error),
        };
        Ok(replies.into_iter().find_map(|reply| match reply {
            RouteNetlinkMessage::NewRoute(route) if route.header.kind == RouteType::Unicast => Some(route),
            _ => None,
        }))
    }

    /// A link's MAC and MTU; `None` for a device without a MAC.
    fn link(&mut self, ifindex: u32) -> Result<Option<(Mac, u32)>> {
        let mut message = LinkMessage::default();
        message.header.index = ifindex;
        let replies = self.request(RouteNetlinkMessage::GetLink(message), NLM_F_REQUEST)?;
        Ok(replies.into_iter().find_map(|reply| match reply {
            RouteNetlinkMessage::NewLink(link) => {
                let mac = link.attributes.iter().find_map(|a| match a {
                    LinkAttribute::Address(bytes) => Mac::try_from(bytes.as_slice()).ok(),
                    _ => None,
                })?;
                let mtu = link.attributes.iter().find_map(|a| match a {
                    LinkAttribute::Mtu(mtu) => Some(*mtu),
                    _ => None,
                })?;
                Some((mac, mtu))
            }
            _ => None,
        }))
    }

    /// The MAC of `address` on `ifindex`, if the kernel holds it valid.
    fn neighbour(&mut self, ifindex: u32, address: IpAddr) -> Result<Option<Mac>> {
        let mut message = NeighbourMessage::default();
        message.header.family = family(address);
        let replies = self.request(RouteNetlinkMessage::GetNeighbour(message), NLM_F_REQUEST | NLM_F_DUMP)?;
        Ok(replies.iter().find_map(|reply| match reply {
            RouteNetlinkMessage::NewNeighbour(neighbour) => match neighbour_change(neighbour, false) {
                Some(Change::Neighbour { ifindex: at, address: of, mac }) if at == ifindex && of == address => mac,
                _ => None,
            },
            _ => None,
        }))
    }

    /// Sends `message` and reads every reply to it.
    fn request(&mut self, message: RouteNetlinkMessage, flags: u16) -> Result<Vec<RouteNetlinkMessage>> {
        let mut header = NetlinkHeader::default();
        header.flags = flags;
        let mut request = NetlinkMessage::new(header, NetlinkPayload::from(message));
        request.finalize();
        let mut bytes = vec![0; request.buffer_len()];
        request.serialize(&mut bytes);
        self.socket.send(&bytes, 0).map_err(io_error("sending a request"))?;
        let mut replies = Vec::new();
        loop {
            let size = self.socket.recv(&mut &mut self.buffer[..], 0).map_err(io_error("reading a reply"))?;
            let mut more = false;
            for message in parse(&self.buffer[..size])? {
                more |= message.header.flags & NLM_F_MULTIPART != 0;
                match message.payload {
                    NetlinkPayload::InnerMessage(reply) => replies.push(reply),
                    NetlinkPayload::Done(_) => return Ok(replies),
                    NetlinkPayload::Error(error) if error.code.is_some() => {
                        return Err(NetlinkError::Refused(io::Error::from_raw_os_error(-error.raw_code())));
                    }
                    _ => {}
                }
            }
            if !more {
                return Ok(replies);
            }
        }
    }
}

/// The route's egress device, next hop (its gateway, else `dst`) and MTU.
fn next_hop(route: &RouteMessage, dst: IpAddr) -> Option<(u32, IpAddr, Option<u32>)> {
    let mut hop = (None, dst, None);
    for attribute in &route.attributes {
        match attribute {
            RouteAttribute::Oif(ifindex) => hop.0 = Some(*ifindex),
            RouteAttribute::Gateway(RouteAddress::Inet(gateway)) => hop.1 = IpAddr::V4(*gateway),
            RouteAttribute::Gateway(RouteAddress::Inet6(gateway)) => hop.1 = IpAddr::V6(*gateway),
            RouteAttribute::Metrics(metrics) => {
                hop.2 = metrics.iter().find_map(|m| if let RouteMetric::Mtu(mtu) = m { Some(*mtu) } else { None });
            }
            _ => {}
        }
    }
    Some((hop.0?, hop.1, hop.2))
}

/// The messages in one datagram.
fn parse(mut bytes: &[u8]) -> Result<Vec<NetlinkMessage<RouteNetlinkMessage>>> {
    let mut messages = Vec::new();
    while !bytes.is_empty() {
        let message = NetlinkMessage::<RouteNetlinkMessage>::deserialize(bytes)
            .map_err(|error| NetlinkError::Decode(error.to_string()))?;
        let length = message.header.length as usize;
        messages.push(message);
        // Messages are 4-byte aligned within a datagram.
        let next = length.next_multiple_of(4);
        if length == 0 || next > bytes.len() {
            break;
        }
        bytes = &bytes[next..];
    }
    Ok(messages)
}

fn family(address: IpAddr) -> AddressFamily {
    if address.is_ipv4() { AddressFamily::Inet } else { AddressFamily::Inet6 }
}

/// A neighbour message as a `Change` (`deleted`: an RTM_DELNEIGH). The
/// MAC counts while the state is one the FIB uses (`NUD_VALID`).
fn neighbour_change(neighbour: &NeighbourMessage, deleted: bool) -> Option<Change> {
    let address = neighbour.attributes.iter().find_map(|a| match a {
        NeighbourAttribute::Destination(NeighbourAddress::Inet(v4)) => Some(IpAddr::V4(*v4)),
        NeighbourAttribute::Destination(NeighbourAddress::Inet6(v6)) => Some(IpAddr::V6(*v6)),
        _ => None,
    })?;
    let valid = matches!(
        neighbour.header.state,
        NeighbourState::Reachable
            | NeighbourState::Stale
            | NeighbourState::Delay
            | NeighbourState::Probe
            | NeighbourState::Permanent
            | NeighbourState::Noarp
    );
    let mac = neighbour.attributes.iter().find_map(|a| match a {
        NeighbourAttribute::LinkLayerAddress(bytes) => Mac::try_from(bytes.as_slice()).ok(),
        _ => None,
    });
    let mac = mac.filter(|_| valid && !deleted);
    Some(Change::Neighbour { ifindex: neighbour.header.ifindex, address, mac })
}

/// A socket subscribed to link, neighbour and route changes.
pub struct Changes {
    socket: Socket,
    buffer: Vec<u8>,
}

impl Changes {
    pub fn open() -> Result<Self> {
        let mut socket = Socket::new(NETLINK_ROUTE).map_err(io_error("opening a socket"))?;
        let groups = libc::RTMGRP_LINK | libc::RTMGRP_NEIGH | libc::RTMGRP_IPV4_ROUTE | libc::RTMGRP_IPV6_ROUTE;
        socket.bind(&SocketAddr::new(0, groups as u32)).map_err(io_error("subscribing to changes"))?;
        socket.set_non_blocking(true).map_err(io_error("making the change socket non-blocking"))?;
        Ok(Self { socket, buffer: vec![0; 1 << 16] })
    }

    /// The changes queued now, without waiting. Lost events (the socket's
    /// buffer overflowed) are reported as `Change::Other`.
    pub fn drain(&mut self) -> Result<Vec<Change>> {
        let mut changes = Vec::new();
        loop {
            let size = match self.socket.recv(&mut &mut self.buffer[..], 0) {
                Ok(size) => size,
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => return Ok(changes),
                Err(error) if error.raw_os_error() == Some(libc::ENOBUFS) => {
                    changes.push(Change::Other);
                    continue;
                }
                Err(source) => return Err(NetlinkError::Io { what: "reading changes", source }),
            };
            for message in parse(&self.buffer[..size])? {
                changes.extend(change(message.payload));
            }
        }
    }
}

impl AsRawFd for Changes {
    fn as_raw_fd(&self) -> RawFd {
        self.socket.as_raw_fd()
    }
}

fn change(payload: NetlinkPayload<RouteNetlinkMessage>) -> Option<Change> {
    match payload {
        NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewNeighbour(neighbour)) => {
            neighbour_change(&neighbour, false)
        }
        NetlinkPayload::InnerMessage(RouteNetlinkMessage::DelNeighbour(neighbour)) => {
            neighbour_change(&neighbour, true)
        }
        NetlinkPayload::InnerMessage(
            RouteNetlinkMessage::NewRoute(_)
            | RouteNetlinkMessage::DelRoute(_)
            | RouteNetlinkMessage::NewLink(_)
            | RouteNetlinkMessage::DelLink(_),
        ) => Some(Change::Other),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn neighbour(state: NeighbourState) -> NeighbourMessage {
        let mut message = NeighbourMessage::default();
        message.header.ifindex = 2;
        message.header.state = state;
        message.attributes.push(NeighbourAttribute::Destination(NeighbourAddress::Inet([10, 0, 0, 11].into())));
        message.attributes.push(NeighbourAttribute::LinkLayerAddress(vec![2, 0, 0, 0, 0, 0x11]));
        message
    }

    /// The MAC counts in the states the FIB uses, and not once the entry
    /// failed, is still being resolved, or was deleted.
    #[test]
    fn a_neighbour_has_a_mac_while_the_fib_would_use_it() {
        let mac = |state, deleted| match neighbour_change(&neighbour(state), deleted) {
            Some(Change::Neighbour { ifindex: 2, address, mac }) if address == IpAddr::from([10, 0, 0, 11]) => mac,
            other => panic!("not this neighbour's change: {other:?}"),
        };
        for state in [NeighbourState::Reachable, NeighbourState::Stale, NeighbourState::Permanent] {
            assert_eq!(mac(state, false), Some([2, 0, 0, 0, 0, 0x11]), "{state:?}");
        }
        for state in [NeighbourState::Failed, NeighbourState::Incomplete] {
            assert_eq!(mac(state, false), None, "{state:?}");
        }
        assert_eq!(mac(NeighbourState::Reachable, true), None, "deleted");
    }
}
