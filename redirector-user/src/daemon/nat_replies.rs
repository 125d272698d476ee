//! nat: home servers' replies to clients' edge ports that the program
//! passed up because they came as IP fragments (rule 3 of `xdp/mod.rs`),
//! once the kernel reassembled them. No UDP socket can be bound to each of
//! the thousands of edge ports, so a raw UDP socket per family sees them,
//! with a classic BPF filter that keeps only datagrams to the nat port
//! range: it gets no copy of any other traffic. (Having no UDP socket on
//! that port, the kernel also answers such a datagram with an ICMP port
//! unreachable, which an unconnected UDP socket, as a registrar's is,
//! never sees.)

use std::{io, mem::MaybeUninit, net::IpAddr, ops::RangeInclusive};

use socket2::{Domain, Protocol, Socket, Type};
use tokio::io::{Interest, unix::AsyncFd};

use super::{Result, sockets::send, tasks::Context};
use crate::{edge::first_contact::Action, kernel::packets::received_udp};

/// A raw UDP socket of `edge`'s family seeing only datagrams to `ports`.
pub fn open(edge: IpAddr, ports: &RangeInclusive<u16>) -> io::Result<Socket> {
    let domain = if edge.is_ipv4() { Domain::IPV4 } else { Domain::IPV6 };
    let socket = Socket::new(domain, Type::RAW, Some(Protocol::UDP))?;
    socket.attach_filter(&port_filter(edge.is_ipv4(), ports))?;
    socket.set_nonblocking(true)?;
    Ok(socket)
}

/// Accepts a datagram whose UDP destination port is in `ports`. An IPv4
/// raw socket's filter sees the IP header first, an IPv6 one's the UDP
/// header.
fn port_filter(ipv4: bool, ports: &RangeInclusive<u16>) -> Vec<libc::sock_filter> {
    let op = |code: u32, k: u32, jt: u8, jf: u8| libc::sock_filter { code: code as u16, jt, jf, k };
    let mut filter = if ipv4 {
        // X = the IP header's length; A = the halfword at X + 2.
        vec![
            op(libc::BPF_LDX | libc::BPF_B | libc::BPF_MSH, 0, 0, 0),
            op(libc::BPF_LD | libc::BPF_H | libc::BPF_IND, 2, 0, 0),
        ]
    } else {
        vec![op(libc::BPF_LD | libc::BPF_H | libc::BPF_ABS, 2, 0, 0)]
    };
    filter.extend([
        // Below the range: to the last instruction (drop).
        op(libc::BPF_JMP | libc::BPF_JGE | libc::BPF_K, u32::from(*ports.start()), 0, 2),
        // Above it: drop; else accept.
        op(libc::BPF_JMP | libc::BPF_JGT | libc::BPF_K, u32::from(*ports.end()), 1, 0),
        op(libc::BPF_RET | libc::BPF_K, u32::MAX, 0, 0),
        op(libc::BPF_RET | libc::BPF_K, 0, 0, 0),
    ]);
    filter
}

/// Registers a socket from `open` with the runtime.
pub fn registered(socket: Socket) -> io::Result<AsyncFd<Socket>> {
    // SAFETY: the socket owns its fd, which stays open and the same for as
    // long as the AsyncFd owns the socket.
    unsafe { AsyncFd::register_with_interest(socket, Interest::READABLE) }.map_err(|error| error.into_parts().1)
}

/// Relays each reply first contact accepts to its client.
pub async fn serve(socket: AsyncFd<Socket>, context: Context) -> Result<()> {
    let mut buffer = vec![MaybeUninit::<u8>::uninit(); 65_535];
    loop {
        let (len, from) = socket
            .async_io(Interest::READABLE, |s| s.recv_from(&mut buffer))
            .await
            .map_err(super::io("receiving nat replies on a raw socket"))?;
        // SAFETY: `recv_from` initialised the first `len` bytes.
        let bytes = unsafe { std::slice::from_raw_parts(buffer.as_ptr().cast::<u8>(), len) };
        let (Some(from), Some(udp)) = (from.as_socket(), received_udp(bytes, from.is_ipv4())) else { continue };
        let home = std::net::SocketAddr::new(from.ip(), udp.source_port);
        for action in context.core.on_nat_reply(udp.payload, home, udp.destination_port) {
            if let Action::Relay { to, bytes, from } = action {
                send(context.senders.service_for(from, to), &bytes, to).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs a classic BPF filter over `packet` the way the kernel does for
    /// the instructions `port_filter` uses; whether it accepts.
    fn accepts(filter: &[libc::sock_filter], packet: &[u8]) -> bool {
        let (mut a, mut x, mut pc) = (0u32, 0u32, 0usize);
        let half = |at: usize| u32::from(u16::from_be_bytes([packet[at], packet[at + 1]]));
        loop {
            let op = filter[pc];
            pc += 1;
            match u32::from(op.code) {
                c if c == libc::BPF_LDX | libc::BPF_B | libc::BPF_MSH => x = u32::from(packet[op.k as usize] & 0xf) * 4,
                c if c == libc::BPF_LD | libc::BPF_H | libc::BPF_IND => a = half((x + op.k) as usize),
                c if c == libc::BPF_LD | libc::BPF_H | libc::BPF_ABS => a = half(op.k as usize),
                c if c == libc::BPF_JMP | libc::BPF_JGE | libc::BPF_K => {
                    pc += usize::from(if a >= op.k { op.jt } else { op.jf })
                }
                c if c == libc::BPF_JMP | libc::BPF_JGT | libc::BPF_K => {
                    pc += usize::from(if a > op.k { op.jt } else { op.jf })
                }
                c if c == libc::BPF_RET | libc::BPF_K => return op.k != 0,
                other => panic!("unexpected instruction {other:#x}"),
            }
        }
    }

    #[test]
    fn the_filter_keeps_datagrams_to_the_nat_ports_only() {
        let ports = 20000..=32767;
        for (ipv4, header) in [(true, vec![0x46; 24]), (false, Vec::new())] {
            let filter = port_filter(ipv4, &ports);
            for (port, kept) in
                [(19999, false), (20000, true), (25000, true), (32767, true), (32768, false), (5060, false)]
            {
                let mut packet = header.clone();
                packet.extend_from_slice(&5060u16.to_be_bytes());
                packet.extend_from_slice(&u16::to_be_bytes(port));
                packet.extend_from_slice(&[0; 4]);
                assert_eq!(accepts(&filter, &packet), kept, "ipv4 {ipv4}, port {port}");
            }
        }
    }
}
