//! Support for redirector's integration tests: network namespaces, packet
//! builders (checksums computed independently by etherparse), and the
//! BPF_PROG_TEST_RUN fixture.

pub mod fixture;
pub mod netns;
pub mod packets;
pub mod sip_pool;
pub mod topology;

/// Whether privileged tests can run. Without root they are skipped with a
/// message, except under `CI=true`, where a skip is a failure.
pub fn privileged() -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "this test needs root (BPF, network namespaces) and CI=true forbids skipping it"
    );
    eprintln!("SKIPPED: this test needs root (BPF, network namespaces); run it with sudo or as root");
    false
}
