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

/// `redirector status --json` run in the edge's namespace.
fn status(topology: &Topology, config: &std::path::Path) -> redirector::ops::status::HostStatus {
    let binary = redirector_tests::topology::redirector_binary();
    let socket = topology.control_socket();
    let args = ["status", "--json", "--config", config.to_str().unwrap(), "--socket", socket.to_str().unwrap()];
    let out = topology.edge.exec(binary.to_str().unwrap(), &args);
    serde_json::from_slice(&out.stdout).expect("status --json")
}

#[test]
fn status_shows_the_attached_program_and_the_daemon_and_works_with_it_down() {
    if !privileged() {
        return;
    }
    let mut topology = Topology::new("dsr", Attach::Skb, 1);
    topology.extra_config = "[health]\ninterval = 3600\n".into();
    topology.start(&[]);
    let config = topology.scratch("edge.toml");
    let running = status(&topology, &config);
    let attached: Vec<(&str, &str, &str)> =
        running.attached.iter().map(|a| (a.interface.as_str(), a.program.as_str(), a.mode.as_str())).collect();
    assert_eq!(attached, [("e0", "redirector", "skb")], "{running:?}");
    let daemon = running.daemon.as_ref().expect("the daemon answers");
    assert!(daemon.pid > 0 && daemon.store.ends_with("assignments.redb"), "{daemon:?}");
    assert!(running.store.is_none(), "the daemon said it");

    assert_eq!(running.pinned, ["e0"], "{running:?}");
    let (stopped, attached) = topology.stop_edge();
    assert!(stopped && attached, "the program stays attached through its pinned link");
    let down = status(&topology, &config);
    assert_eq!(down.attached.len(), 1, "{down:?}");
    assert!(down.daemon.is_none(), "{down:?}");
    assert!(down.daemon_unreachable.is_some());
    let (path, assignments) = down.store.expect("the store, read from its file");
    assert!(path.ends_with("assignments.redb"));
    assert_eq!(assignments, 0);
    let (detached, gone) = topology.detach_edge();
    assert!(detached && gone);
    let after = status(&topology, &config);
    assert!(after.attached.is_empty() && after.pinned.is_empty(), "{after:?}");
}

/// `redirector run` with `level` in its config, JSON logs and `rust_log`
/// as RUST_LOG (unset if `None`); returns what it logged until it had
/// attached and was killed.
fn run_logging_at(level: &str, rust_log: Option<&str>) -> Vec<serde_json::Value> {
    use std::{io::Read, os::unix::process::CommandExt, process::Stdio};
    let mut topology = Topology::new("dsr", Attach::Skb, 1);
    topology.extra_config = format!("[log]\nlevel = \"{level}\"\n");
    topology.prepare_edge();
    let config = topology.scratch("edge.toml");
    std::fs::write(&config, topology.config(&[])).unwrap();
    let binary = redirector_tests::topology::redirector_binary();
    let args = ["run", "--config", config.to_str().unwrap(), "--log-format", "json"];
    let mut command = topology.edge.command(binary.to_str().unwrap(), &args);
    match rust_log {
        Some(filter) => command.env("RUST_LOG", filter),
        None => command.env_remove("RUST_LOG"),
    };
    let mut daemon = command.process_group(0).stderr(Stdio::piped()).spawn().unwrap();
    let attached = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !redirector_tests::topology::has_xdp(&topology.edge, "e0") {
        assert!(std::time::Instant::now() < attached, "the daemon never attached");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    // The start line comes right after attaching.
    std::thread::sleep(std::time::Duration::from_millis(300));
    redirector_tests::topology::kill_group(&mut daemon);
    let mut logged = String::new();
    daemon.stderr.take().unwrap().read_to_string(&mut logged).unwrap();
    logged.lines().map(|line| serde_json::from_str(line).unwrap_or_else(|_| panic!("not JSON: {line}"))).collect()
}

#[test]
fn the_log_level_comes_from_the_config_and_the_start_line_says_what_runs() {
    if !privileged() {
        return;
    }
    let info = run_logging_at("info", None);
    let start = info
        .iter()
        .find(|event| event["fields"]["message"] == "redirector attached, answering first contacts")
        .unwrap_or_else(|| panic!("no start line in {info:?}"));
    let fields = &start["fields"];
    assert_eq!((fields["interface"].as_str(), fields["mode"].as_str()), (Some("e0"), Some("Dsr")), "{start}");
    assert!(fields["servers"].as_str().is_some_and(|s| s.contains("home0")), "{start}");
    assert!(fields["store"].as_str().is_some_and(|s| s.ends_with("assignments.redb")), "{start}");
    assert!(fields["kernel_memory_mib"].as_f64().is_some_and(|mib| mib > 0.0), "{start}");
    let warn = run_logging_at("warn", None);
    assert!(warn.iter().all(|event| event["level"] != "INFO"), "level = warn logs no info: {warn:?}");
    let overridden = run_logging_at("warn", Some("info"));
    assert!(overridden.iter().any(|event| event["level"] == "INFO"), "RUST_LOG overrides the config");
}
