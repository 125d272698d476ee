//! What an operator sets and sees on a real host: the kernel maps sized by
//! `[fast_path] max_clients`, and the memory they take in `stats`.

use redirector_tests::{
    privileged,
    sip_pool::InProcessEdge,
    topology::{Attach, Topology},
};

/// The kernel memory a daemon's maps take with room for `max_clients`.
fn kernel_memory(max_clients: u32) -> u64 {
    let mut topology = Topology::new("nat", Attach::Skb, 1);
    topology.extra_config = format!("[health]\ninterval = 3600\n[fast_path]\nmax_clients = {max_clients}\n");
    let edge = InProcessEdge::start(&mut topology, &[]);
    edge.stats().kernel_memory
}

#[test]
fn max_clients_sizes_the_kernel_maps_and_stats_shows_what_they_take() {
    if !privileged() {
        return;
    }
    let small = kernel_memory(4096);
    let large = kernel_memory(262_144);
    // nat mode: CLIENTS and NAT_REPLIES grow by about 232 bytes a client.
    let grown = large - small;
    let per_client = grown as f64 / f64::from(262_144 - 4096);
    assert!((150.0..400.0).contains(&per_client), "{small} -> {large} bytes: {per_client:.0} bytes a client");
    assert!(small < 16 << 20, "4096 clients take {small} bytes, not the default million's");
}
