//! The daemon's UDP sockets: every service and proxy address is bound once
//! per core with `SO_REUSEPORT`, so the kernel spreads datagrams over as
//! many first-contact cores (by source), each with a socket of its own.

use std::{net::SocketAddr, os::fd::AsRawFd, sync::Arc};

use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::UdpSocket;
use tracing::warn;

/// Room for bursts queued while a core waits for a group commit.
const RECEIVE_BUFFER: usize = 4 << 20;

/// Datagrams taken off a socket at once: what is already queued, so a
/// burst of first contacts shares one database commit (256 answered new
/// AORs about a quarter faster than 64 in the benchmark).
pub const BATCH: usize = 256;

/// `count` sockets bound to `address`, sharing it by `SO_REUSEPORT`.
pub fn bind_shared(address: SocketAddr, count: usize) -> std::io::Result<Vec<std::net::UdpSocket>> {
    (0..count.max(1))
        .map(|_| {
            let socket = Socket::new(Domain::for_address(address), Type::DGRAM, Some(Protocol::UDP))?;
            socket.set_reuse_port(true)?;
            socket.set_nonblocking(true)?;
            // The kernel caps this at net.core.rmem_max; less still works.
            let _ = socket.set_recv_buffer_size(RECEIVE_BUFFER);
            socket.bind(&address.into())?;
            Ok(socket.into())
        })
        .collect()
}

/// Tokio sockets sharing the bound ones.
pub fn registered(sockets: &[std::net::UdpSocket]) -> std::io::Result<Vec<Arc<UdpSocket>>> {
    sockets.iter().map(|s| Ok(Arc::new(UdpSocket::from_std(s.try_clone()?)?))).collect()
}

/// The sockets datagrams leave from, one per address, with their addresses.
#[derive(Clone)]
pub struct Senders {
    services: Vec<(SocketAddr, Arc<UdpSocket>)>,
    proxies: Vec<(SocketAddr, Arc<UdpSocket>)>,
}

impl Senders {
    pub fn new(services: &[Arc<UdpSocket>], proxies: &[Arc<UdpSocket>]) -> std::io::Result<Self> {
        Ok(Self { services: addressed(services)?, proxies: addressed(proxies)? })
    }

    /// The proxy socket of `to`'s family.
    pub fn proxy_for(&self, to: SocketAddr) -> Option<&Arc<UdpSocket>> {
        of_family(&self.proxies, to)
    }

    /// The proxy addresses, one per family.
    pub fn proxy_addresses(&self) -> Vec<SocketAddr> {
        self.proxies.iter().map(|(address, _)| *address).collect()
    }

    /// The service socket at `from`, else one of `to`'s family, else the
    /// proxy socket of that family.
    pub fn service_for(&self, from: Option<SocketAddr>, to: SocketAddr) -> Option<&Arc<UdpSocket>> {
        let at = from.filter(|from| from.is_ipv4() == to.is_ipv4());
        let exact = at.and_then(|at| self.services.iter().find(|(local, _)| *local == at).map(|(_, s)| s));
        exact.or_else(|| of_family(&self.services, to)).or_else(|| self.proxy_for(to))
    }
}

/// One socket per distinct address.
fn addressed(sockets: &[Arc<UdpSocket>]) -> std::io::Result<Vec<(SocketAddr, Arc<UdpSocket>)>> {
    let mut addressed: Vec<(SocketAddr, Arc<UdpSocket>)> = Vec::new();
    for socket in sockets {
        let local = socket.local_addr()?;
        if !addressed.iter().any(|(known, _)| *known == local) {
            addressed.push((local, socket.clone()));
        }
    }
    Ok(addressed)
}

fn of_family(sockets: &[(SocketAddr, Arc<UdpSocket>)], to: SocketAddr) -> Option<&Arc<UdpSocket>> {
    sockets.iter().find(|(local, _)| local.is_ipv4() == to.is_ipv4()).map(|(_, socket)| socket)
}

/// Sends, or says why it could not.
pub async fn send(from: Option<&Arc<UdpSocket>>, bytes: &[u8], to: SocketAddr) {
    let Some(socket) = from else {
        warn!(%to, "no socket of this family to send from");
        return;
    };
    send_all(socket, &[(to, bytes)]).await;
}

/// Sends every datagram, as many per system call as the kernel takes
/// (`sendmmsg`); one that fails is logged and skipped.
pub async fn send_all(socket: &UdpSocket, datagrams: &[(SocketAddr, &[u8])]) {
    let mut rest = datagrams;
    while let Some(&(to, _)) = rest.first() {
        let chunk = &rest[..rest.len().min(BATCH)];
        match send_chunk(socket, chunk).await {
            Ok(sent) => rest = &rest[sent.max(1)..],
            Err(error) => {
                warn!(%to, %error, "sending failed");
                rest = &rest[1..];
            }
        }
    }
}

/// One `sendmmsg` once the socket is writable; how many were sent.
async fn send_chunk(socket: &UdpSocket, chunk: &[(SocketAddr, &[u8])]) -> std::io::Result<usize> {
    let names: Vec<socket2::SockAddr> = chunk.iter().map(|(to, _)| socket2::SockAddr::from(*to)).collect();
    loop {
        socket.writable().await?;
        let sent = socket.try_io(tokio::io::Interest::WRITABLE, || {
            let mut iovecs: Vec<libc::iovec> = chunk
                .iter()
                .map(|(_, bytes)| libc::iovec { iov_base: bytes.as_ptr() as *mut _, iov_len: bytes.len() })
                .collect();
            let mut headers: Vec<libc::mmsghdr> = names
                .iter()
                .zip(iovecs.iter_mut())
                .map(|(name, iovec)| {
                    // SAFETY: all-zero is a valid mmsghdr (null pointers, zero lengths).
                    let mut header: libc::mmsghdr = unsafe { std::mem::zeroed() };
                    header.msg_hdr.msg_name = name.as_ptr() as *mut _;
                    header.msg_hdr.msg_namelen = name.len();
                    header.msg_hdr.msg_iov = iovec;
                    header.msg_hdr.msg_iovlen = 1;
                    header
                })
                .collect();
            // SAFETY: every header points at a name, an iovec and bytes that
            // outlive the call; the count is the headers' length.
            let sent = unsafe { libc::sendmmsg(socket.as_raw_fd(), headers.as_mut_ptr(), headers.len() as u32, 0) };
            if sent < 0 { Err(std::io::Error::last_os_error()) } else { Ok(sent as usize) }
        });
        match sent {
            Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => continue,
            other => return other,
        }
    }
}

/// Bytes one batch takes at most (and keeps between batches): a burst of
/// large datagrams does not leave every socket holding a 16 MB buffer.
const BATCH_BYTES: usize = 1 << 20;

/// Datagrams one `recvmmsg` takes at most, each into a buffer that holds
/// the largest: the buffers are touched (made resident) only as far as
/// datagrams fill them.
const SLOTS: usize = 32;
const SLOT_BYTES: usize = 65_535;

/// Datagrams received together, kept in one buffer reused batch after
/// batch: receiving allocates nothing once it has grown.
pub struct Received {
    bytes: Vec<u8>,
    datagrams: Vec<(std::ops::Range<usize>, SocketAddr)>,
    slots: Vec<u8>,
}

impl Received {
    pub fn new() -> Self {
        Self { bytes: Vec::new(), datagrams: Vec::with_capacity(BATCH), slots: vec![0; SLOTS * SLOT_BYTES] }
    }

    /// Waits for a datagram, then takes whatever else is queued (up to
    /// `BATCH`), `SLOTS` per system call. An error after the first datagram
    /// is left for the next wait to report, so no datagram already taken is
    /// lost.
    pub async fn receive(&mut self, socket: &UdpSocket) -> std::io::Result<()> {
        self.bytes.clear();
        self.bytes.shrink_to(BATCH_BYTES);
        self.datagrams.clear();
        loop {
            socket.readable().await?;
            match socket.try_io(tokio::io::Interest::READABLE, || self.take_queued(socket.as_raw_fd())) {
                Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => continue,
                other => return other,
            }
        }
    }

    /// What is queued, one `recvmmsg` after another; `WouldBlock` if
    /// nothing is.
    fn take_queued(&mut self, fd: std::os::fd::RawFd) -> std::io::Result<()> {
        while self.datagrams.len() < BATCH && self.bytes.len() < BATCH_BYTES {
            match self.take_some(fd, SLOTS.min(BATCH - self.datagrams.len())) {
                Ok(taken) if taken < SLOTS => break,
                Ok(_) => {}
                Err(error) if self.datagrams.is_empty() => return Err(error),
                Err(_) => break,
            }
        }
        Ok(())
    }

    /// One `recvmmsg` of at most `count` datagrams, kept; how many.
    fn take_some(&mut self, fd: std::os::fd::RawFd, count: usize) -> std::io::Result<usize> {
        // SAFETY: all-zero is a valid sockaddr_storage and mmsghdr.
        let mut names: [libc::sockaddr_storage; SLOTS] = unsafe { std::mem::zeroed() };
        let base = self.slots.as_mut_ptr();
        let mut iovecs: [libc::iovec; SLOTS] = std::array::from_fn(|index| libc::iovec {
            // SAFETY: slot `index` lies within `slots`, SLOTS of SLOT_BYTES.
            iov_base: unsafe { base.add(index * SLOT_BYTES) }.cast(),
            iov_len: SLOT_BYTES,
        });
        // SAFETY: as above.
        let mut headers: [libc::mmsghdr; SLOTS] = unsafe { std::mem::zeroed() };
        for ((header, iovec), name) in headers.iter_mut().zip(&mut iovecs).zip(&mut names) {
            header.msg_hdr.msg_name = (name as *mut libc::sockaddr_storage).cast();
            header.msg_hdr.msg_namelen = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            header.msg_hdr.msg_iov = iovec;
            header.msg_hdr.msg_iovlen = 1;
        }
        // SAFETY: every header points at its own name and iovec, and every
        // iovec at its own slot, all alive until the call returns; `count`
        // is at most the headers' length.
        let got =
            unsafe { libc::recvmmsg(fd, headers.as_mut_ptr(), count as u32, libc::MSG_DONTWAIT, std::ptr::null_mut()) };
        if got < 0 {
            return Err(std::io::Error::last_os_error());
        }
        for (index, header) in headers.iter().take(got as usize).enumerate() {
            // SAFETY: the kernel wrote a sockaddr of `msg_namelen` bytes.
            let name = unsafe { socket2::SockAddr::new(names[index], header.msg_hdr.msg_namelen) };
            let Some(source) = name.as_socket() else { continue };
            let slot = &self.slots[index * SLOT_BYTES..];
            let start = self.bytes.len();
            self.bytes.extend_from_slice(&slot[..header.msg_len as usize]);
            self.datagrams.push((start..self.bytes.len(), source));
        }
        Ok(got as usize)
    }

    /// Each datagram with its source.
    pub fn iter(&self) -> impl Iterator<Item = (&[u8], SocketAddr)> {
        self.datagrams.iter().map(|(range, source)| (&self.bytes[range.clone()], *source))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payload(index: usize) -> Vec<u8> {
        // One big datagram among small ones (every slot holds more than a
        // page); all of them fit the receive buffer's default size.
        let len = if index == 40 { 20_000 } else { 20 + index % 100 };
        (0..len).map(|i| (index + i) as u8).collect()
    }

    #[tokio::test]
    async fn a_burst_is_taken_a_batch_at_a_time_in_order_with_its_sources() {
        let receiver = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let to = receiver.local_addr().unwrap();
        let senders =
            [std::net::UdpSocket::bind("127.0.0.1:0").unwrap(), std::net::UdpSocket::bind("127.0.0.1:0").unwrap()];
        socket2::SockRef::from(&receiver).set_recv_buffer_size(RECEIVE_BUFFER).unwrap();
        let queued = socket2::SockRef::from(&receiver).recv_buffer_size().unwrap();
        assert!(queued >= 200_000, "room for the burst: {queued} bytes");
        let total = BATCH + 44;
        for index in 0..total {
            senders[index % 2].send_to(&payload(index), to).unwrap();
        }
        let mut received = Received::new();
        let (mut seen, mut batches) = (Vec::new(), Vec::new());
        while seen.len() < total {
            let waited = tokio::time::timeout(std::time::Duration::from_secs(5), received.receive(&receiver)).await;
            waited.expect("the queued datagrams arrive").expect("receiving");
            batches.push(received.iter().count());
            seen.extend(received.iter().map(|(datagram, source)| (datagram.to_vec(), source)));
        }
        assert_eq!(batches, [BATCH, total - BATCH], "everything queued, a batch at a time");
        for (index, (datagram, source)) in seen.iter().enumerate() {
            assert_eq!(*datagram, payload(index), "datagram {index} whole and in order");
            assert_eq!(*source, senders[index % 2].local_addr().unwrap(), "datagram {index}'s source");
        }
    }
}
