//! The kernel's route, neighbour and link tables over rtnetlink: how a
//! destination is reached (`Tables::resolve`, what `ip route get` and
//! `ip neigh` tell), and the changes to them (`Changes`).

use std::{
    collections::HashMap,
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    os::fd::{AsRawFd, RawFd},
};

use netlink_packet_core::{NLM_F_DUMP, NLM_F_MULTIPART, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload};
use netlink_packet_route::{
    AddressFamily, RouteNetlinkMessage,
    link::{LinkAttribute, LinkMessage},
    neighbour::{NeighbourAddress, NeighbourAttribute, NeighbourMessage, NeighbourState},
    route::{RouteAddress, RouteAttribute, RouteFlags, RouteHeader, RouteMessage, RouteMetric, RouteType},
    rule::{RuleAction, RuleAttribute, RuleMessage},
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

impl Route {
    /// The route out of `link` (its MAC and MTU) on `ifindex` to neighbour
    /// `via`; the route's own MTU, if set, bounds the packets it takes.
    pub fn through(link: (Mac, u32), ifindex: u32, via: IpAddr, route_mtu: Option<u32>, dst_mac: Option<Mac>) -> Self {
        let (src_mac, link_mtu) = link;
        let mtu = route_mtu.filter(|&mtu| mtu != 0).unwrap_or(link_mtu);
        Self { ifindex, mtu, src_mac, via, dst_mac }
    }
}

/// A route table's destination prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Prefix {
    pub address: IpAddr,
    pub len: u8,
}

impl Prefix {
    /// `address` alone.
    pub fn host(address: IpAddr) -> Self {
        Self { address, len: if address.is_ipv4() { 32 } else { 128 } }
    }

    pub fn contains(&self, address: IpAddr) -> bool {
        match (self.address, address) {
            (IpAddr::V4(net), IpAddr::V4(a)) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(self.len)).unwrap_or(0);
                u32::from(net) & mask == u32::from(a) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(a)) => {
                let mask = u128::MAX.checked_shl(128 - u32::from(self.len)).unwrap_or(0);
                u128::from(net) & mask == u128::from(a) & mask
            }
            _ => false,
        }
    }
}

/// How a table's route reaches the destinations of its prefix, as far as
/// one kept hop may stand for them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reach {
    /// Through one gateway out of one device: every destination's next hop.
    Gateway { ifindex: u32, gateway: IpAddr, mtu: Option<u32> },
    /// On-link out of `ifindex`: each destination is its own next hop.
    OnLink { ifindex: u32, mtu: Option<u32> },
    /// Anything else (multipath, local, unreachable, a nexthop object, a
    /// tunnel, a dead link): the FIB decides each packet.
    Fib,
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
        let Some((ifindex, via, route_mtu)) = self.route(dst, src)? else { return Ok(None) };
        let Some(link) = self.link(ifindex)? else { return Ok(None) };
        let dst_mac = self.neighbour(ifindex, via)?;
        Ok(Some(Route::through(link, ifindex, via, route_mtu, dst_mac)))
    }

    /// The prefixes the kernel routes `family`'s destinations by, each with
    /// how its lowest-metric route reaches them; `None` when the
    /// destination alone does not decide (a policy rule beyond the default
    /// local, main and default lookups, a route in the default table, a
    /// route by TOS or by source), so no prefix may stand for its addresses.
    pub fn prefixes(&mut self, family: AddressFamily) -> Result<Option<Vec<(Prefix, Reach)>>> {
        if !self.default_rules_only(family)? {
            return Ok(None);
        }
        let mut message = RouteMessage::default();
        message.header.address_family = family;
        let replies = self.request(RouteNetlinkMessage::GetRoute(message), NLM_F_REQUEST | NLM_F_DUMP)?;
        let mut best: HashMap<Prefix, (u32, Reach)> = HashMap::new();
        for reply in replies {
            let RouteNetlinkMessage::NewRoute(route) = reply else { continue };
            let table = table_of(&route);
            if table != u32::from(RouteHeader::RT_TABLE_MAIN) && table != RT_TABLE_LOCAL {
                if table == RT_TABLE_DEFAULT {
                    return Ok(None);
                }
                continue;
            }
            if route.header.tos != 0 || route.header.source_prefix_length != 0 {
                return Ok(None);
            }
            let Some(prefix) = prefix_of(&route) else { continue };
            // The local table is looked up first: whatever it holds is the kernel's own.
            let (metric, reach) =
                if table == RT_TABLE_LOCAL { (0, Reach::Fib) } else { (priority_of(&route), reach_of(&route)) };
            if best.get(&prefix).is_none_or(|(kept, _)| metric < *kept) {
                best.insert(prefix, (metric, reach));
            }
        }
        Ok(Some(best.into_iter().map(|(prefix, (_, reach))| (prefix, reach)).collect()))
    }

    /// Whether `family`'s policy rules are the kernel's defaults alone:
    /// lookups in the local, main and default tables, by nothing else.
    fn default_rules_only(&mut self, family: AddressFamily) -> Result<bool> {
        let mut message = RuleMessage::default();
        message.header.family = family;
        let replies = self.request(RouteNetlinkMessage::GetRule(message), NLM_F_REQUEST | NLM_F_DUMP)?;
        Ok(replies.iter().all(|reply| match reply {
            RouteNetlinkMessage::NewRule(rule) => is_default_rule(rule),
            _ => true,
        }))
    }

    /// The valid neighbours of `family`: device, address and MAC.
    pub fn neighbours(&mut self, family: AddressFamily) -> Result<Vec<(u32, IpAddr, Mac)>> {
        let mut message = NeighbourMessage::default();
        message.header.family = family;
        let replies = self.request(RouteNetlinkMessage::GetNeighbour(message), NLM_F_REQUEST | NLM_F_DUMP)?;
        Ok(replies
            .iter()
            .filter_map(|reply| match reply {
                RouteNetlinkMessage::NewNeighbour(neighbour) => match neighbour_change(neighbour, false)? {
                    Change::Neighbour { ifindex, address, mac } => Some((ifindex, address, mac?)),
                    Change::Other => None,
                },
                _ => None,
            })
            .collect())
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
    pub fn link(&mut self, ifindex: u32) -> Result<Option<(Mac, u32)>> {
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

const RT_TABLE_LOCAL: u32 = 255;
const RT_TABLE_DEFAULT: u32 = 253;

fn table_of(route: &RouteMessage) -> u32 {
    let table = route.attributes.iter().find_map(|a| if let RouteAttribute::Table(t) = a { Some(*t) } else { None });
    table.unwrap_or(u32::from(route.header.table))
}

fn priority_of(route: &RouteMessage) -> u32 {
    route.attributes.iter().find_map(|a| if let RouteAttribute::Priority(p) = a { Some(*p) } else { None }).unwrap_or(0)
}

fn prefix_of(route: &RouteMessage) -> Option<Prefix> {
    let len = route.header.destination_prefix_length;
    let address = route.attributes.iter().find_map(|a| match a {
        RouteAttribute::Destination(RouteAddress::Inet(v4)) => Some(IpAddr::V4(*v4)),
        RouteAttribute::Destination(RouteAddress::Inet6(v6)) => Some(IpAddr::V6(*v6)),
        _ => None,
    });
    match (address, route.header.address_family) {
        (Some(address), _) => Some(Prefix { address, len }),
        // A default route has no destination attribute.
        (None, AddressFamily::Inet) if len == 0 => Some(Prefix { address: Ipv4Addr::UNSPECIFIED.into(), len }),
        (None, AddressFamily::Inet6) if len == 0 => Some(Prefix { address: Ipv6Addr::UNSPECIFIED.into(), len }),
        _ => None,
    }
}

/// A main-table route's `Reach`: a plain unicast route through at most one
/// gateway on a live link, else the FIB's.
fn reach_of(route: &RouteMessage) -> Reach {
    let dead = route.header.flags.intersects(RouteFlags::Dead | RouteFlags::Linkdown);
    if route.header.kind != RouteType::Unicast || dead {
        return Reach::Fib;
    }
    let (mut ifindex, mut gateway, mut mtu) = (None, None, None);
    for attribute in &route.attributes {
        match attribute {
            RouteAttribute::Oif(index) => ifindex = Some(*index),
            RouteAttribute::Gateway(RouteAddress::Inet(v4)) => gateway = Some(IpAddr::V4(*v4)),
            RouteAttribute::Gateway(RouteAddress::Inet6(v6)) => gateway = Some(IpAddr::V6(*v6)),
            RouteAttribute::Metrics(metrics) => {
                mtu = metrics.iter().find_map(|m| if let RouteMetric::Mtu(mtu) = m { Some(*mtu) } else { None });
            }
            RouteAttribute::MultiPath(_)
            | RouteAttribute::Via(_)
            | RouteAttribute::Encap(_)
            | RouteAttribute::EncapType(_)
            | RouteAttribute::NewDestination(_)
            | RouteAttribute::Other(_) => return Reach::Fib,
            _ => {}
        }
    }
    match (ifindex, gateway) {
        (Some(ifindex), Some(gateway)) => Reach::Gateway { ifindex, gateway, mtu },
        (Some(ifindex), None) => Reach::OnLink { ifindex, mtu },
        (None, _) => Reach::Fib,
    }
}

/// One of the kernel's default rules: a lookup in the local, main or
/// default table, selecting by nothing.
fn is_default_rule(rule: &RuleMessage) -> bool {
    let header = &rule.header;
    let table = rule.attributes.iter().find_map(|a| if let RuleAttribute::Table(t) = a { Some(*t) } else { None });
    let table = table.unwrap_or(u32::from(header.table));
    // The kernel sends a suppress_prefixlength of -1 (none) with every rule.
    let selects_nothing = rule.attributes.iter().all(|a| {
        matches!(
            a,
            RuleAttribute::Table(_)
                | RuleAttribute::Priority(_)
                | RuleAttribute::Protocol(_)
                | RuleAttribute::SuppressPrefixLen(u32::MAX)
        )
    });
    header.action == RuleAction::ToTable
        && header.src_len == 0
        && header.dst_len == 0
        && header.tos == 0
        && selects_nothing
        && [RT_TABLE_LOCAL, u32::from(RouteHeader::RT_TABLE_MAIN), RT_TABLE_DEFAULT].contains(&table)
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
