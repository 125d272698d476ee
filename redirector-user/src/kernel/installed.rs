//! The fast path's client entries as first contact reads them: which client
//! sockets the kernel forwards, and where. A copy of the kernel's client
//! map kept in step by `FastPath` (its only writer, on the state owner's
//! thread) and read by every first-contact core without a syscall: a
//! datagram the program passed up from such a client (an IP fragment, or
//! one too big for the egress MTU once forwarded) is sent on as the kernel
//! sends the client's small ones, not answered as a first contact.

use std::net::SocketAddr;

use dashmap::DashMap;

/// Where the kernel sends one client's packets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KernelRoute {
    /// The home server's slot.
    pub server: u32,
    /// nat mode: the client's edge port.
    pub nat_port: Option<u16>,
}

/// Keyed by what clients send, so hashed with a random seed.
#[derive(Debug, Default)]
pub struct InstalledClients {
    routes: DashMap<SocketAddr, KernelRoute, foldhash::fast::RandomState>,
}

impl InstalledClients {
    pub fn get(&self, client: SocketAddr) -> Option<KernelRoute> {
        self.routes.get(&client).map(|route| *route)
    }

    /// `client`'s kernel entry was written.
    pub fn put(&self, client: SocketAddr, route: KernelRoute) {
        self.routes.insert(client, route);
    }

    /// `client`'s kernel entry was removed.
    pub fn remove(&self, client: SocketAddr) {
        self.routes.remove(&client);
    }
}
