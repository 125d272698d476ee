//! redirector's user-space side: configuration, and the data-plane plumbing
//! that loads the embedded XDP object, fills its maps and attaches it.

pub mod config;
pub mod control;
pub mod counters;
pub mod daemon;
pub mod dataplane;
pub mod fast_path;
pub mod first_contact;
pub mod health;
pub mod home;
pub mod metrics;
pub mod nat_ports;
pub mod notifier;
pub mod operations;
pub mod rebalance;
pub mod rendezvous;
pub mod report;
pub mod sip;
pub mod stats;
pub mod store;
pub mod watchers;

/// The XDP object built from `redirector-ebpf` by this crate's build script.
pub static PROGRAM: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/redirector.bpf.o"));
