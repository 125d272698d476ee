//! Kamailio in front of the pool, as an upstream proxy that goes straight to
//! each client's home: `redirector routes --from URL --follow --format
//! kamailio` keeps a db_text file that Kamailio's `htable` loads, and runs
//! `kamcmd htable.reload` after each change. A REGISTER whose AOR is in the
//! table goes to its home directly, and the edge sees none of them; one
//! that is not goes to the service address (the edge proxies it and
//! assigns it, and the follower then writes it). After a `drain`, Kamailio
//! follows the moves.
//!
//! And a Kamailio that knows nothing of the pool, forwarding every request
//! to the service address: once an AOR is assigned (its first REGISTER
//! proxied by the edge's daemon), the edge's XDP program sends its
//! REGISTERs straight to its home by the AOR (`AORS`, dsr), and the
//! daemon sees none of them.

use std::{
    os::unix::process::CommandExt,
    path::Path,
    process::{Child, Stdio},
    time::Duration,
};

use redirector::ops::api::{Route, Stats};
use redirector_tests::{
    netns::NetNs,
    operator::{cli_json, cli_ok, routes, wait_until},
    privileged,
    sip_pool::{Registrar, sipp_to, start_registrars},
    topology::{Attach, CLIENT, EDGE, SERVICE, Topology, home_index, redirector_binary},
};

const PROXY_PORT: u16 = 5070;
const CLIENTS: usize = 6;
const TOKEN: &str = "kamailio-follower-token";

/// Kamailio's default modules, and, with `table`, htable over db_text
/// (re-read when the file changes: db_mode 1) and the ctl socket kamcmd
/// talks to: requests for an AOR in the table go to its home (`$du`), the
/// others to the service address; both statelessly. Without `table`, every
/// request goes to the service address.
fn proxy_config(dir: &Path, table: bool) -> String {
    let dir = dir.display();
    let (modules, route) = if table {
        (
            format!(
                r#"loadmodule "db_text.so"
loadmodule "htable.so"
loadmodule "ctl.so"
modparam("db_text", "db_mode", 1)
modparam("htable", "db_url", "text://{dir}")
modparam("htable", "htable", "routes=>size=10;dbtable=routes;")
modparam("ctl", "binrpc", "unix:{dir}/ctl.sock")
"#
            ),
            r#"$var(aor) = "sip:" + $tU + "@" + $td;
    if ($sht(routes=>$var(aor)) != $null) {
        $du = $sht(routes=>$var(aor));
    } else {
        $du = "sip:SERVICE";
    }"#
            .replace("SERVICE", SERVICE),
        )
    } else {
        (String::new(), format!("$du = \"sip:{SERVICE}\";"))
    };
    format!(
        r#"#!KAMAILIO
debug=1
log_stderror=yes
children=2
listen=udp:{CLIENT}:{PROXY_PORT}
mpath="/usr/lib/x86_64-linux-gnu/kamailio/modules/"
loadmodule "sl.so"
loadmodule "pv.so"
loadmodule "maxfwd.so"
{modules}request_route {{
    if (!mf_process_maxfwd_header("10")) {{ sl_send_reply("483", "Too Many Hops"); exit; }}
    {route}
    forward();
}}
"#
    )
}

/// Kamailio with `proxy_config(dir, table)`, in the client namespace.
fn start_proxy(topology: &mut Topology, dir: &Path, table: bool) {
    let config = dir.join("kamailio.cfg");
    std::fs::write(&config, proxy_config(dir, table)).unwrap();
    let pid = dir.join("kamailio.pid");
    let (config, run, pid) = (config.to_str().unwrap(), dir.to_str().unwrap(), pid.to_str().unwrap());
    let args = ["-DD", "-E", "-f", config, "-Y", run, "-P", pid];
    let proxy = spawn_grouped(&topology.client, "kamailio", &args, true);
    topology.adopt(proxy);
}

/// `program ARGS` in `ns`, in a process group of its own (the topology
/// kills it by group), its warnings on stderr unless `quiet`.
fn spawn_grouped(ns: &NetNs, program: &str, args: &[&str], quiet: bool) -> Child {
    let stderr = if quiet { Stdio::null() } else { Stdio::inherit() };
    ns.command(program, args)
        .env("RUST_LOG", "warn")
        .process_group(0)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .unwrap_or_else(|e| panic!("starting {program}: {e}"))
}

/// `kamcmd ARGS` on the proxy's ctl socket; its output, if it succeeded.
fn kamcmd(dir: &Path, args: &[&str]) -> Option<String> {
    let socket = format!("unix:{}/ctl.sock", dir.display());
    let output = std::process::Command::new("kamcmd").arg("-s").arg(socket).args(args).output().ok()?;
    output.status.success().then(|| String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Kamailio's table, as `htable.dump` shows it: (AOR, home URI) pairs.
fn kamailio_table(dir: &Path) -> Vec<(String, String)> {
    let dump = kamcmd(dir, &["htable.dump", "routes"]).unwrap_or_default();
    let field = |line: &str, name: &str| line.trim().strip_prefix(name).map(|v| v.trim().to_owned());
    let names = dump.lines().filter_map(|l| field(l, "name:"));
    let values = dump.lines().filter_map(|l| field(l, "value:"));
    let mut table: Vec<(String, String)> = names.zip(values).collect();
    table.sort();
    table
}

/// What the table should hold for `routes`.
fn expected(routes: &[Route]) -> Vec<(String, String)> {
    let mut table: Vec<(String, String)> =
        routes.iter().map(|r| (r.aor.clone(), format!("sip:{}", r.address.expect("a home address")))).collect();
    table.sort();
    table
}

/// SIPp: one REGISTER for each of `CLIENTS` AORs (sip:kam1@example.net…)
/// to the Kamailio proxy, each answered 200 by its home.
fn register_through_proxy(topology: &Topology) {
    let proxy = format!("{CLIENT}:{PROXY_PORT}");
    let output = sipp_to(topology, &proxy, "register_expect_200.xml", (CLIENTS as u32, 6100), "kam");
    assert!(output.status.success(), "sipp through the proxy: {}", String::from_utf8_lossy(&output.stdout));
}

/// UDP datagrams the namespace's stack has received.
fn udp_received(ns: &NetNs) -> u64 {
    let snmp = String::from_utf8(ns.exec("cat", &["/proc/net/snmp"]).stdout).unwrap();
    let mut udp = snmp.lines().filter(|l| l.starts_with("Udp: "));
    let (names, values) = (udp.next().unwrap(), udp.next().unwrap());
    let column = names.split_whitespace().position(|n| n == "InDatagrams").unwrap();
    values.split_whitespace().nth(column).unwrap().parse().unwrap()
}

/// The edge's first-contact counters and what its program forwarded.
fn edge_counts(topology: &Topology) -> (std::collections::BTreeMap<String, u64>, u64) {
    let stats: Stats = cli_json(topology, &["stats", "--json"]);
    (stats.first_contact, stats.verdicts["forwarded"])
}

/// Registers every client through the proxy and checks that each home got
/// its own clients' REGISTERs (and a home with none got nothing), and the
/// edge none.
fn register_straight_to_homes(topology: &Topology, routes: &[Route]) {
    let edge_before = edge_counts(topology);
    let homes_before: Vec<u64> = topology.homes.iter().map(udp_received).collect();
    register_through_proxy(topology);
    assert_eq!(edge_counts(topology), edge_before, "the edge saw none of the REGISTERs");
    for (index, home) in topology.homes.iter().enumerate() {
        let clients = routes.iter().filter(|r| home_index(&r.server) == index).count() as u64;
        let received = udp_received(home) - homes_before[index];
        if clients == 0 {
            assert_eq!(received, 0, "home{index} has no client and got no REGISTER");
        } else {
            assert!(received >= clients, "home{index} got {received} datagrams for its {clients} clients");
        }
    }
}

#[test]
fn kamailio_in_front_sends_registers_straight_home_and_follows_a_drain() {
    if !privileged() {
        return;
    }
    let mut topology = Topology::new("dsr", Attach::Native, 2);
    let token_file = topology.scratch("http.token");
    std::fs::write(&token_file, TOKEN).unwrap();
    topology.extra_config = format!("[http]\nlisten = \"{EDGE}:8080\"\ntoken_file = \"{}\"\n", token_file.display());
    start_registrars(&mut topology, Registrar::Kamailio);
    topology.start(&[]);

    let dir = topology.scratch("front");
    std::fs::create_dir_all(&dir).unwrap();
    let table_file = dir.join("routes");
    let reload = format!("kamcmd -s unix:{}/ctl.sock htable.reload routes", dir.display());
    let from = format!("http://{EDGE}:8080");
    let binary = redirector_binary();
    let follower = spawn_grouped(
        &topology.client,
        binary.to_str().unwrap(),
        &[
            "routes",
            "--from",
            &from,
            "--token-file",
            token_file.to_str().unwrap(),
            "--format",
            "kamailio",
            "--follow",
            "--output",
            table_file.to_str().unwrap(),
            "--then",
            &reload,
        ],
        false,
    );
    topology.adopt(follower);
    wait_until(|| table_file.exists(), "the follower writes the (empty) table");
    start_proxy(&mut topology, &dir, true);
    wait_until(|| kamcmd(&dir, &["htable.dump", "routes"]).is_some(), "Kamailio answers on its ctl socket");

    // Unknown AORs: through the edge, which assigns them.
    register_through_proxy(&topology);
    let first = routes(&topology);
    assert_eq!(first.len(), CLIENTS, "every AOR was assigned through the edge: {first:?}");
    wait_until(|| kamailio_table(&dir) == expected(&first), "Kamailio loads every route");

    register_straight_to_homes(&topology, &first);

    let busy = first[0].server.clone();
    let drained = cli_ok(&topology, &["drain", &busy]);
    let moved = first.iter().filter(|r| r.server == busy).count();
    assert!(drained.contains(&format!("{moved} client(s) moved")), "{drained}");
    let after = routes(&topology);
    assert!(after.iter().all(|r| r.server != busy));
    wait_until(|| kamailio_table(&dir) == expected(&after), "Kamailio follows the drain");

    register_straight_to_homes(&topology, &after);
}

/// Seconds between the edge's statistics readings in the routed-by-AOR test.
const STATS_INTERVAL: f64 = 0.2;

/// The edge's count of requests its daemon proxied, and of those its
/// program routed by their AOR.
fn proxied_and_routed(topology: &Topology) -> (u64, u64) {
    let stats: Stats = cli_json(topology, &["stats", "--json"]);
    (stats.first_contact["proxied"], stats.verdicts["forwarded_by_aor"])
}

#[test]
fn kamailio_forwarding_to_the_service_has_its_registers_routed_by_aor_in_the_kernel() {
    if !privileged() {
        return;
    }
    let mut topology = Topology::new("dsr", Attach::Native, 2);
    // Fresh readings, so a count that did not move is seen as such.
    topology.extra_config = format!("[stats]\ninterval = {STATS_INTERVAL}\n");
    start_registrars(&mut topology, Registrar::Kamailio);
    topology.start(&[]);
    let dir = topology.scratch("plain-front");
    std::fs::create_dir_all(&dir).unwrap();
    start_proxy(&mut topology, &dir, false);
    let listening = || !topology.client.exec("ss", &["-Hlun", &format!("sport = :{PROXY_PORT}")]).stdout.is_empty();
    wait_until(listening, "Kamailio listens");

    // Unknown AORs: the daemon proxies their first REGISTERs and assigns them.
    register_through_proxy(&topology);
    let assigned = routes(&topology);
    assert_eq!(assigned.len(), CLIENTS, "every AOR was assigned through the edge: {assigned:?}");
    wait_until(|| proxied_and_routed(&topology).0 >= CLIENTS as u64, "the daemon proxied the first REGISTERs");
    let (proxied, routed) = proxied_and_routed(&topology);
    assert_eq!(routed, 0, "nothing was routed by AOR before the AORs were assigned");
    let stats: Stats = cli_json(&topology, &["stats", "--json"]);
    assert_eq!(stats.first_contact["proxies_recorded"], 1, "the proxy's address, recorded once for the kernel");

    // Assigned: the kernel sends them home; the daemon sees none.
    let homes_before: Vec<u64> = topology.homes.iter().map(udp_received).collect();
    register_through_proxy(&topology);
    wait_until(|| proxied_and_routed(&topology).1 >= CLIENTS as u64, "the kernel routes the REGISTERs by AOR");
    std::thread::sleep(Duration::from_secs_f64(3.0 * STATS_INTERVAL));
    assert_eq!(proxied_and_routed(&topology).0, proxied, "the daemon proxied none of them");
    for (index, home) in topology.homes.iter().enumerate() {
        let clients =
            assigned.iter().filter(|r| r.aor.starts_with("sip:kam") && home_index(&r.server) == index).count();
        let received = udp_received(home) - homes_before[index];
        assert!(received >= clients as u64, "home{index} got {received} datagrams for its {clients} clients");
    }
}
