//! Which next hops the keeper keeps for nat replies (`REPLY_HOPS`, an LPM
//! trie the program matches a client's address in, as the kernel matches
//! its routes): one entry per route prefix, so the clients behind one
//! gateway share its hop, and one per on-link client the kernel has a
//! neighbour for. A prefix no kept hop may stand for is an entry all the
//! same, left to the FIB, so that a shorter prefix never answers for it.

use std::net::IpAddr;

use super::netlink::{Mac, Prefix, Reach};

/// What one `REPLY_HOPS` entry stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Planned {
    /// The neighbour `via` out of `ifindex`, with its MAC if it is resolved.
    Hop { ifindex: u32, via: IpAddr, mtu: Option<u32>, mac: Option<Mac> },
    /// The FIB routes each packet.
    Fib,
}

/// The entries for the kernel's `prefixes` (of both families) and valid
/// `neighbours`, at most `capacity` of them. Every prefix must fit, or a
/// shorter one would answer for the addresses of one left out: then
/// nothing is kept and the FIB routes every reply. On-link clients fill
/// what room is left; one left out is the FIB's, by its prefix's entry.
pub fn plan(
    prefixes: &[(Prefix, Reach)],
    neighbours: &[(u32, IpAddr, Mac)],
    capacity: usize,
) -> Vec<(Prefix, Planned)> {
    if prefixes.len() > capacity {
        return Vec::new();
    }
    let mac_of = |ifindex: u32, address: IpAddr| {
        neighbours.iter().find(|(at, of, _)| *at == ifindex && *of == address).map(|(_, _, mac)| *mac)
    };
    let mut planned: Vec<(Prefix, Planned)> = prefixes
        .iter()
        .map(|&(prefix, reach)| match reach {
            Reach::Gateway { ifindex, gateway, mtu } => {
                (prefix, Planned::Hop { ifindex, via: gateway, mtu, mac: mac_of(ifindex, gateway) })
            }
            Reach::OnLink { .. } | Reach::Fib => (prefix, Planned::Fib),
        })
        .collect();
    for &(ifindex, address, mac) in neighbours {
        if planned.len() == capacity {
            break;
        }
        let host = Prefix::host(address);
        if let Some(Reach::OnLink { ifindex: out, mtu }) = longest_match(prefixes, address)
            && out == ifindex
            && !planned.iter().any(|(prefix, _)| *prefix == host)
        {
            planned.push((host, Planned::Hop { ifindex, via: address, mtu, mac: Some(mac) }));
        }
    }
    planned
}

/// The reach of the longest of `prefixes` holding `address`.
fn longest_match(prefixes: &[(Prefix, Reach)], address: IpAddr) -> Option<Reach> {
    prefixes.iter().filter(|(prefix, _)| prefix.contains(address)).max_by_key(|(prefix, _)| prefix.len).map(|p| p.1)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GATEWAY_MAC: Mac = [2, 0, 0, 0, 0, 0xfe];
    const CLIENT_MAC: Mac = [2, 0, 0, 0, 0, 0x02];

    fn prefix(text: &str) -> Prefix {
        let (address, len) = text.split_once('/').unwrap();
        Prefix { address: address.parse().unwrap(), len: len.parse().unwrap() }
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    fn table() -> Vec<(Prefix, Reach)> {
        vec![
            (prefix("0.0.0.0/0"), Reach::Gateway { ifindex: 2, gateway: ip("10.0.0.254"), mtu: None }),
            (prefix("10.0.0.0/24"), Reach::OnLink { ifindex: 2, mtu: None }),
            (prefix("10.0.0.128/25"), Reach::Fib),
            (prefix("10.0.0.1/32"), Reach::Fib),
        ]
    }

    #[test]
    fn gateways_and_on_link_clients_get_hops_and_the_rest_the_fib() {
        let neighbours = [
            (2, ip("10.0.0.254"), GATEWAY_MAC),
            (2, ip("10.0.0.2"), CLIENT_MAC),
            (3, ip("10.0.0.3"), CLIENT_MAC),
            (2, ip("10.0.0.130"), CLIENT_MAC),
            (2, ip("10.0.0.1"), CLIENT_MAC),
        ];
        let planned = plan(&table(), &neighbours, 16);
        let gateway = Planned::Hop { ifindex: 2, via: ip("10.0.0.254"), mtu: None, mac: Some(GATEWAY_MAC) };
        let client = Planned::Hop { ifindex: 2, via: ip("10.0.0.2"), mtu: None, mac: Some(CLIENT_MAC) };
        assert_eq!(
            planned,
            [
                (prefix("0.0.0.0/0"), gateway),
                (prefix("10.0.0.0/24"), Planned::Fib),
                (prefix("10.0.0.128/25"), Planned::Fib),
                (prefix("10.0.0.1/32"), Planned::Fib),
                (prefix("10.0.0.2/32"), client),
            ],
            "a neighbour on another device, under a more specific route, or with a route of its own is no on-link client"
        );
    }

    #[test]
    fn every_prefix_fits_or_nothing_is_kept() {
        let neighbours = [(2, ip("10.0.0.2"), CLIENT_MAC), (2, ip("10.0.0.3"), CLIENT_MAC)];
        assert_eq!(plan(&table(), &neighbours, 5).len(), 5, "on-link clients fill the room left");
        assert_eq!(plan(&table(), &neighbours, 4).len(), 4, "none is left out of the prefixes");
        assert!(plan(&table(), &neighbours, 3).is_empty(), "a prefix left out would let a shorter one answer");
        let unresolved = plan(&table(), &[], 16);
        assert_eq!(unresolved[0].1, Planned::Hop { ifindex: 2, via: ip("10.0.0.254"), mtu: None, mac: None });
    }
}
