//! The kernel side: the embedded XDP object loaded and attached, its maps,
//! and the fast path's client entries (with the copy first contact reads).

pub mod aor_routes;
pub mod batch;
pub mod fast_path;
pub mod hops;
pub mod installed;
pub mod loader;
pub mod miss_lookups;
pub mod nat_ports;
pub mod netlink;
pub mod numbers;
pub mod packets;
pub mod pins;
pub mod reply_hops;

/// The XDP object built from `redirector-ebpf` by this crate's build script.
pub static PROGRAM: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/redirector.bpf.o"));
