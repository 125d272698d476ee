//! Batched UDP I/O for the traffic generators and counters: one sendmmsg or
//! recvmmsg system call moves up to `BATCH` datagrams (IPv4: the topology's
//! family).

use std::{
    io,
    net::{Ipv4Addr, SocketAddrV4, UdpSocket},
    os::fd::AsRawFd,
    time::Duration,
};

pub const BATCH: usize = 64;
const DATAGRAM_MAX: usize = 2048;

/// One datagram to send to `to`, from `from` (set per datagram through
/// IP_PKTINFO; the address must be local, e.g. by an AnyIP route) or the
/// socket's own address.
pub struct Outgoing<'a> {
    pub payload: &'a [u8],
    pub to: SocketAddrV4,
    pub from: Option<Ipv4Addr>,
}

const CMSG_SPACE: usize = 64;

/// How fast a generator sends: as fast as the kernel takes datagrams, or
/// at most this many a second (an offered load, as clients bring it).
#[derive(Clone, Copy)]
pub enum Pace {
    Flat,
    PerSecond(f64),
}

impl Pace {
    /// How many more datagrams may go, `sent` having gone in `elapsed`.
    pub fn room(self, sent: u64, elapsed: Duration) -> u64 {
        match self {
            Pace::Flat => u64::MAX,
            Pace::PerSecond(rate) => ((rate * elapsed.as_secs_f64()) as u64).saturating_sub(sent),
        }
    }
}

/// Sends up to `BATCH` datagrams in one sendmmsg; returns how many the
/// kernel took (0 when its queues were full).
pub fn send(socket: &UdpSocket, datagrams: &[Outgoing<'_>]) -> io::Result<usize> {
    let datagrams = &datagrams[..datagrams.len().min(BATCH)];
    let mut names: Vec<libc::sockaddr_in> = datagrams.iter().map(|d| sockaddr(d.to)).collect();
    let mut iovecs: Vec<libc::iovec> = datagrams
        .iter()
        .map(|d| libc::iovec { iov_base: d.payload.as_ptr() as *mut _, iov_len: d.payload.len() })
        .collect();
    let mut controls = vec![[0u64; CMSG_SPACE / 8]; datagrams.len()];
    // SAFETY: a plain C struct, all-zero is a valid value.
    let mut headers: Vec<libc::mmsghdr> = vec![unsafe { std::mem::zeroed() }; datagrams.len()];
    for (i, datagram) in datagrams.iter().enumerate() {
        let header = &mut headers[i].msg_hdr;
        header.msg_iov = &mut iovecs[i];
        header.msg_iovlen = 1;
        header.msg_name = (&mut names[i] as *mut libc::sockaddr_in).cast();
        header.msg_namelen = size_of::<libc::sockaddr_in>() as libc::socklen_t;
        if let Some(from) = datagram.from {
            header.msg_control = controls[i].as_mut_ptr().cast();
            header.msg_controllen = CMSG_SPACE;
            // SAFETY: the control buffer is CMSG_SPACE bytes, more than one
            // in_pktinfo cmsg needs; CMSG_* walk inside it.
            unsafe {
                let cmsg = libc::CMSG_FIRSTHDR(header);
                (*cmsg).cmsg_level = libc::IPPROTO_IP;
                (*cmsg).cmsg_type = libc::IP_PKTINFO;
                (*cmsg).cmsg_len = libc::CMSG_LEN(size_of::<libc::in_pktinfo>() as u32) as usize;
                let info = libc::in_pktinfo {
                    ipi_ifindex: 0,
                    ipi_spec_dst: libc::in_addr { s_addr: u32::from(from).to_be() },
                    ipi_addr: libc::in_addr { s_addr: 0 },
                };
                std::ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast(), info);
                header.msg_controllen = libc::CMSG_SPACE(size_of::<libc::in_pktinfo>() as u32) as usize;
            }
        }
    }
    // SAFETY: every header points at buffers that live until the call returns.
    let sent = unsafe { libc::sendmmsg(socket.as_raw_fd(), headers.as_mut_ptr(), headers.len() as u32, 0) };
    if sent >= 0 {
        return Ok(sent as usize);
    }
    match io::Error::last_os_error() {
        e if matches!(e.raw_os_error(), Some(libc::EAGAIN | libc::ENOBUFS)) => Ok(0),
        e => Err(e),
    }
}

fn sockaddr(address: SocketAddrV4) -> libc::sockaddr_in {
    libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: address.port().to_be(),
        sin_addr: libc::in_addr { s_addr: u32::from(*address.ip()).to_be() },
        sin_zero: [0; 8],
    }
}

/// Buffers for `receive`.
pub struct Inbox {
    buffers: Vec<[u8; DATAGRAM_MAX]>,
    lengths: Vec<usize>,
}

impl Inbox {
    pub fn new() -> Self {
        Self { buffers: vec![[0; DATAGRAM_MAX]; BATCH], lengths: Vec::with_capacity(BATCH) }
    }

    /// Receives up to `BATCH` datagrams in one recvmmsg: waits for the first
    /// (up to the socket's read timeout), then takes what is queued.
    pub fn receive(&mut self, socket: &UdpSocket) -> io::Result<impl Iterator<Item = &[u8]>> {
        let mut iovecs: Vec<libc::iovec> = self
            .buffers
            .iter_mut()
            .map(|b| libc::iovec { iov_base: b.as_mut_ptr().cast(), iov_len: DATAGRAM_MAX })
            .collect();
        // SAFETY: all-zero mmsghdrs, then each pointed at its own iovec.
        let mut headers: Vec<libc::mmsghdr> = vec![unsafe { std::mem::zeroed() }; BATCH];
        for (header, iovec) in headers.iter_mut().zip(&mut iovecs) {
            header.msg_hdr.msg_iov = iovec;
            header.msg_hdr.msg_iovlen = 1;
        }
        // SAFETY: headers and buffers live until the call returns.
        let got = unsafe {
            libc::recvmmsg(
                socket.as_raw_fd(),
                headers.as_mut_ptr(),
                BATCH as u32,
                libc::MSG_WAITFORONE,
                std::ptr::null_mut(),
            )
        };
        self.lengths.clear();
        if got < 0 {
            let error = io::Error::last_os_error();
            if !matches!(error.raw_os_error(), Some(libc::EAGAIN | libc::EINTR)) {
                return Err(error);
            }
        }
        self.lengths.extend(headers.iter().take(got.max(0) as usize).map(|h| h.msg_len as usize));
        Ok(self.buffers.iter().zip(&self.lengths).map(|(buffer, &len)| &buffer[..len]))
    }
}
