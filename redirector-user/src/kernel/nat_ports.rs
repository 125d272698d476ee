//! Edge source ports for nat mode: each client gets its own, so a home
//! server's reply (to the edge address and that port) maps back to exactly
//! one client.

use std::ops::RangeInclusive;

use super::numbers::{Numbers, Reuse};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("all {size} nat ports in {start}-{end} are in use; widen edge.nat_ports")]
pub struct NatPortsExhausted {
    pub start: u16,
    pub end: u16,
    pub size: usize,
}

/// Hands out ports from a range in order; a freed port only once every
/// port was handed out, the first freed first: a home may still hold a
/// binding of a port freed (a line withdrawn or expired, or not kept by a
/// restarted daemon), and its requests to that port reach whoever holds it
/// next.
#[derive(Debug)]
pub struct NatPorts(Numbers);

impl NatPorts {
    pub fn new(range: RangeInclusive<u16>) -> Self {
        Self(Numbers::new(u32::from(*range.start())..=u32::from(*range.end()), Reuse::Latest))
    }

    pub fn allocate(&mut self) -> Result<u16, NatPortsExhausted> {
        let (start, end, size) = (self.0.start() as u16, self.0.end() as u16, self.0.size());
        self.0.allocate().map(|port| port as u16).ok_or(NatPortsExhausted { start, end, size })
    }

    /// Marks `ports` as handed out (a previous daemon's, adopted): the
    /// free ones below the highest count as freed.
    pub fn reserve(&mut self, ports: impl Iterator<Item = u16>) {
        self.0.reserve(ports.map(u32::from));
    }

    pub fn release(&mut self, port: u16) {
        self.0.release(u32::from(port));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reserved_ports_are_never_handed_out_and_the_gaps_last() {
        let mut ports = NatPorts::new(100..=106);
        ports.reserve([103, 101, 7].into_iter());
        let handed: Vec<u16> = (0..5).map(|_| ports.allocate().unwrap()).collect();
        assert_eq!(handed, [104, 105, 106, 100, 102]);
    }

    #[test]
    fn hands_out_each_port_once_then_reports_exhaustion() {
        let mut ports = NatPorts::new(65534..=65535);
        assert_eq!(ports.allocate(), Ok(65534));
        assert_eq!(ports.allocate(), Ok(65535));
        let err = ports.allocate().unwrap_err();
        assert_eq!(err, NatPortsExhausted { start: 65534, end: 65535, size: 2 });
        assert!(err.to_string().contains("edge.nat_ports"));
    }

    #[test]
    fn released_ports_are_reused_last_and_foreign_ones_ignored() {
        let mut ports = NatPorts::new(100..=101);
        let first = ports.allocate().unwrap();
        ports.release(first);
        ports.release(first);
        ports.release(5);
        assert_eq!(ports.allocate(), Ok(101));
        assert_eq!(ports.allocate(), Ok(first));
        assert!(ports.allocate().is_err());
    }
}
