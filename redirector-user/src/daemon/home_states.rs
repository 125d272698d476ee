//! Tells each home its state (`probe::state`): a signed state message to
//! its probe port at once when the state owner publishes a change, and
//! again every `[probe] state_every`, so a lost datagram heals. The owner
//! only swaps a value in a watch channel; the sending is this task's, on
//! sockets bound to the edge's own addresses.

use std::{
    collections::HashSet,
    net::{IpAddr, SocketAddr},
    time::Duration,
};

use tokio::{net::UdpSocket, sync::watch};
use tracing::{info, warn};

use super::{DaemonError, Result};
use crate::{
    config::Config,
    ops::owner::OwnerGone,
    probe::{Keys, state::Announcement},
    store::unix_ms,
};

/// The sockets state messages leave by: one per family the edge has an
/// address of (`[edge]`), bound to it.
pub struct Senders {
    v4: Option<std::net::UdpSocket>,
    v6: Option<std::net::UdpSocket>,
}

impl Senders {
    pub fn bind(config: &Config) -> Result<Self> {
        let bind = |ip: IpAddr| {
            let address = SocketAddr::new(ip, 0);
            std::net::UdpSocket::bind(address)
                .and_then(|socket| socket.set_nonblocking(true).map(|()| socket))
                .map_err(|source| DaemonError::Bind { address, what: "state messages to the homes ([edge])", source })
        };
        Ok(Self {
            v4: config.edge.ipv4.map(|ip| bind(ip.into())).transpose()?,
            v6: config.edge.ipv6.map(|ip| bind(ip.into())).transpose()?,
        })
    }

    /// The sockets registered with the runtime, for `tell`.
    pub fn registered(&self) -> std::io::Result<Registered> {
        let register = |socket: &Option<std::net::UdpSocket>| {
            socket.as_ref().map(|s| s.try_clone().and_then(UdpSocket::from_std)).transpose()
        };
        Ok(Registered { v4: register(&self.v4)?, v6: register(&self.v6)? })
    }
}

/// `Senders` as the task uses them.
pub struct Registered {
    v4: Option<UdpSocket>,
    v6: Option<UdpSocket>,
}

/// What the task needs besides the owner's published states.
pub struct Telling {
    pub keys: Keys,
    pub port: u16,
    pub every: Duration,
}

/// Sends every home its state whenever `states` changes and every
/// `telling.every`, until the owner is gone.
pub async fn tell(sockets: Registered, mut states: watch::Receiver<Vec<Announcement>>, telling: Telling) -> Result<()> {
    let mut failing = HashSet::new();
    loop {
        let announcements = states.borrow_and_update().clone();
        let sent_ms = unix_ms();
        for announcement in &announcements {
            let Some(home) = announcement.address(sockets.v4.is_some(), sockets.v6.is_some()) else { continue };
            let socket = if home.is_ipv4() { &sockets.v4 } else { &sockets.v6 };
            let Some(socket) = socket else { continue };
            let message = telling.keys.state_message(home, announcement.state, sent_ms);
            let sent = socket.send_to(&message, SocketAddr::new(home, telling.port)).await;
            report(&mut failing, home, sent.err());
        }
        if let Ok(Err(_)) = tokio::time::timeout(telling.every, states.changed()).await {
            return Err(OwnerGone.into());
        }
    }
}

/// A failed send is logged when a home's sends start failing, and again
/// once they succeed: not at every round.
fn report(failing: &mut HashSet<IpAddr>, home: IpAddr, error: Option<std::io::Error>) {
    match error {
        Some(error) if failing.insert(home) => {
            warn!(%home, %error, "sending a home its state failed; retried every [probe] state_every")
        }
        None if failing.remove(&home) => info!(%home, "sending a home its state works again"),
        _ => {}
    }
}
