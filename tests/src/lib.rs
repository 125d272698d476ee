//! Support for redirector's integration tests: network namespaces, packet
//! builders (checksums computed independently by etherparse), and the
//! BPF_PROG_TEST_RUN fixture.

pub mod etcd;
pub mod fixture;
pub mod netns;
pub mod operator;
pub mod packets;
pub mod population;
pub mod sip_pool;
pub mod softphone;
pub mod topology;
pub mod two_edges;

/// Whether privileged tests can run. Without root they are skipped, except
/// under `CI=true`, where a skip is a failure.
///
/// A skip prints `SKIPPED: <test name>: <reason>` straight to stdout (past
/// libtest's capture, which would hide it), so a skipped test does not pass
/// for one that ran: `cargo xtask test` counts these lines separately.
pub fn privileged() -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "this test needs root (BPF, network namespaces) and CI=true forbids skipping it"
    );
    report_skip("needs root (BPF, network namespaces); run it with sudo or as root");
    false
}

/// Prints the marker line for a skipped test, named after libtest's thread.
fn report_skip(reason: &str) {
    use std::io::Write;
    let test = std::thread::current().name().unwrap_or("<unnamed test>").to_owned();
    let line = format!("SKIPPED: {test}: {reason}");
    // One write of the whole line, so parallel tests do not interleave it.
    let _ = std::io::stdout().lock().write_all(format!("\n{line}\n").as_bytes());
}
