//! A real softphone through the pool: Debian's baresip, pointed at the
//! service address with the edge's default configuration, in front of stock
//! Kamailio registrars, registers on its first try (baresip reports a 302 to
//! REGISTER as a failed registration), and its next registration from the
//! same socket takes the fast path: dsr and nat, IPv4 and IPv6.

use std::{
    net::SocketAddr,
    os::unix::process::CommandExt,
    path::Path,
    process::{Output, Stdio},
};

use redirector_ebpf::Counter;
use redirector_tests::{
    privileged,
    sip_pool::{InProcessEdge, Registrar, start_registrars},
    topology::{Attach, Family, Topology},
};

const ACCOUNT: &str = "alice@example.test";

/// baresip's configuration: its SIP socket, and only the account module
/// (no audio device, no console on a test's stdin).
fn configure(dir: &Path, family: Family) {
    std::fs::create_dir_all(dir).expect("baresip's config dir");
    let listen = SocketAddr::new(family.client(), 5062);
    let config = format!("sip_listen\t{listen}\nmodule_path\t/usr/lib/baresip/modules\nmodule_app\taccount.so\n");
    std::fs::write(dir.join("config"), config).expect("baresip config");
    let account = format!("<sip:{ACCOUNT}>;outbound=\"sip:{}\";regint=3600\n", family.service());
    std::fs::write(dir.join("accounts"), account).expect("baresip accounts");
}

/// Runs baresip in the client namespace for a few seconds: it registers,
/// and unregisters when it quits.
fn baresip(topology: &Topology, dir: &Path) -> Output {
    let dir = dir.to_str().expect("a UTF-8 path");
    topology
        .client
        .command("timeout", &["-s", "KILL", "20", "baresip", "-f", dir, "-t", "3"])
        .process_group(0)
        .stdin(Stdio::null())
        .output()
        .expect("running baresip (apt-get install baresip-core)")
}

fn registers_on_the_first_try(mode: &'static str, family: Family) {
    let mut topology = Topology::new(mode, Attach::Skb, 2);
    topology.families = if family == Family::V4 { &[Family::V4] } else { &[Family::V6] };
    topology.first_contact = None;
    topology.extra_config = "[health]\ninterval = 3600\n".into();
    start_registrars(&mut topology, Registrar::Kamailio);
    let edge = InProcessEdge::start(&mut topology, &[]);
    let dir = topology.scratch("baresip");
    configure(&dir, family);
    let registered = format!("{ACCOUNT}: {{0/UDP/{}}} 200 OK", if family == Family::V4 { "v4" } else { "v6" });
    let mode = format!("{mode} {family:?}");

    let first = baresip(&topology, &dir);
    let log = String::from_utf8_lossy(&first.stdout);
    assert!(log.contains(&registered), "{mode}: not registered on the first try:\n{log}");
    assert!(!log.contains("302"), "{mode}: {log}");
    assert_eq!(edge.first_contact("proxied"), 1, "{mode}: the REGISTER was proxied to the home server");
    assert_eq!(edge.first_contact("redirected"), 0, "{mode}");
    assert_eq!(edge.first_contact("installed"), 1, "{mode}: and the phone put on the fast path");
    let routes = edge.routes();
    assert_eq!(routes.iter().map(|r| r.aor.as_str()).collect::<Vec<_>>(), [format!("sip:{ACCOUNT}")], "{mode}");

    let requests = edge.first_contact("requests");
    let forwarded = edge.kernel(Counter::Forwarded);
    let again = baresip(&topology, &dir);
    let log = String::from_utf8_lossy(&again.stdout);
    assert!(log.contains(&registered), "{mode}: the next registration:\n{log}");
    assert_eq!(edge.first_contact("requests"), requests, "{mode}: it never reached the daemon");
    assert!(edge.kernel(Counter::Forwarded) > forwarded, "{mode}: it went through XDP");
}

#[test]
fn baresip_registers_on_the_first_try_in_dsr_mode() {
    if !privileged() {
        return;
    }
    registers_on_the_first_try("dsr", Family::V4);
}

#[test]
fn baresip_registers_on_the_first_try_in_nat_mode() {
    if !privileged() {
        return;
    }
    registers_on_the_first_try("nat", Family::V4);
}

#[test]
fn ipv6_baresip_registers_on_the_first_try_in_dsr_mode() {
    if privileged() {
        registers_on_the_first_try("dsr", Family::V6);
    }
}

#[test]
fn ipv6_baresip_registers_on_the_first_try_in_nat_mode() {
    if privileged() {
        registers_on_the_first_try("nat", Family::V6);
    }
}
