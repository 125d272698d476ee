//! SIP on top of the namespace topology: home servers running a registrar
//! (redirector's own, or a real Kamailio), an edge daemon run inside the
//! test process so its counters can be read, and SIPp as the client.

use std::{
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    sync::{Arc, mpsc},
    thread::JoinHandle,
    time::{Duration, Instant},
};

use redirector::{
    config::Config,
    daemon::Daemon,
    ops::api::{Entry, Reply, Request, Route, ServerStatus, Stats},
};

use crate::{
    netns::NetNs,
    topology::{Family, Topology},
};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Registrar {
    /// `redirector home`.
    Own,
    /// Kamailio 5.6 with usrloc + registrar, from Debian's package.
    Kamailio,
    /// The same Kamailio, also routing calls as a home server of the pool
    /// does (`CALL_ROUTING`): record-routed, to the bindings it has, and
    /// to the edge's proxy address for targets it has none for.
    KamailioCalls,
}

/// Starts a registrar on every home server.
pub fn start_registrars(topology: &mut Topology, registrar: Registrar) {
    for i in 0..topology.homes.len() {
        start_registrar(topology, i, registrar);
    }
}

/// Starts a registrar on home `index`, listening on its own address and,
/// in dsr mode, on the service address too, in each of the topology's
/// families; waits until it listens.
pub fn start_registrar(topology: &mut Topology, index: usize, registrar: Registrar) {
    let mut listen = Vec::new();
    for &family in topology.families {
        listen.push(std::net::SocketAddr::new(family.home(index), 5060).to_string());
        if topology.mode == "dsr" {
            listen.push(family.service().to_string());
        }
    }
    let child = match registrar {
        Registrar::Own => {
            let mut args = vec!["home".to_owned()];
            for address in &listen {
                args.extend(["--listen".to_owned(), address.clone()]);
            }
            topology.spawn_in_home(index, &args)
        }
        Registrar::Kamailio => start_kamailio(
            &topology.homes[index],
            &listen,
            &topology.scratch(&format!("kamailio{index}")),
            &REGISTRAR_ONLY.replace("HOME_NAME", &format!("home{index}")),
        ),
        Registrar::KamailioCalls => {
            let edge = std::net::SocketAddr::new(topology.families[0].edge(), 5060);
            let routing = CALL_ROUTING.replace("EDGE", &edge.to_string());
            start_kamailio(&topology.homes[index], &listen, &topology.scratch(&format!("kamailio{index}")), &routing)
        }
    };
    topology.set_registrar(index, child);
    wait_for_udp_listener(&topology.homes[index], 5060);
}

/// A plain registrar: every other request is answered 404. Its answer to
/// an OPTIONS names the home (`HOME_NAME`, the edge's name for it), for
/// tests that must know which home a request reached.
const REGISTRAR_ONLY: &str = r#"request_route {
    if (!mf_process_maxfwd_header("10")) { sl_send_reply("483", "Too Many Hops"); exit; }
    if (is_method("REGISTER")) { if (!save("location")) { sl_reply_error(); } exit; }
    if (is_method("OPTIONS")) { append_to_reply("X-Home: HOME_NAME\r\n"); sl_send_reply("200", "OK"); exit; }
    sl_send_reply("404", "Not Here");
}
"#;

/// A registrar that routes calls as the blocks of Kamailio's default
/// kamailio.cfg do (WITHINDLG, RELAY, LOCATION), with the pool's one
/// requirement on a home (README, *Calls between clients of different
/// homes*): a target without a binding here goes to the edge's proxy
/// address (EDGE), not 404. `mhomed` picks the source address by route: a
/// dsr home's service address on lo must not be the source towards the edge.
const CALL_ROUTING: &str = r#"mhomed=1
loadmodule "rr.so"
loadmodule "siputils.so"
request_route {
    if (!mf_process_maxfwd_header("10")) { sl_send_reply("483", "Too Many Hops"); exit; }
    if (has_totag()) {
        if (loose_route()) { t_relay(); exit; }
        if (is_method("ACK") && t_check_trans()) { t_relay(); }
        exit;
    }
    if (is_method("CANCEL")) { if (t_check_trans()) { t_relay(); } exit; }
    if (is_method("REGISTER")) { if (!save("location")) { sl_reply_error(); } exit; }
    if (is_method("OPTIONS") && $rU == $null) { sl_send_reply("200", "OK"); exit; }
    if (is_method("INVITE")) { record_route(); }
    if (!lookup("location")) { $du = "sip:EDGE"; }
    if (!t_relay()) { sl_reply_error(); }
}
"#;

/// Kamailio with `routing` (its request_route, and any globals and
/// modules it needs besides the registrar's).
fn start_kamailio(ns: &NetNs, listen: &[String], dir: &Path, routing: &str) -> Child {
    std::fs::create_dir_all(dir).expect("kamailio scratch dir");
    let listen: String = listen.iter().map(|a| format!("listen=udp:{a}\n")).collect();
    let config = format!(
        r#"#!KAMAILIO
debug=1
log_stderror=yes
children=2
{listen}mpath="/usr/lib/x86_64-linux-gnu/kamailio/modules/"
loadmodule "tm.so"
loadmodule "sl.so"
loadmodule "pv.so"
loadmodule "maxfwd.so"
loadmodule "textops.so"
loadmodule "usrloc.so"
loadmodule "registrar.so"
modparam("usrloc", "db_mode", 0)
{routing}"#
    );
    let path = dir.join("kamailio.cfg");
    std::fs::write(&path, config).expect("writing kamailio.cfg");
    let pid = dir.join("kamailio.pid");
    ns.command(
        "kamailio",
        &["-DD", "-E", "-f", path.to_str().unwrap(), "-Y", dir.to_str().unwrap(), "-P", pid.to_str().unwrap()],
    )
    .process_group(0)
    .stdout(Stdio::null())
    .stderr(Stdio::null())
    .spawn()
    .expect("starting kamailio (apt-get install kamailio)")
}

fn wait_for_udp_listener(ns: &NetNs, port: u16) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let out = ns.exec("ss", &["-Hlun", &format!("sport = :{port}")]);
        if !out.stdout.is_empty() {
            return;
        }
        assert!(Instant::now() < deadline, "nothing listening on UDP {port} in {} after 20 s", ns.name);
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The edge daemon running on a thread inside the edge namespace.
pub struct InProcessEdge {
    pub daemon: Arc<Daemon>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl InProcessEdge {
    pub fn start(topology: &mut Topology, clients: &[(std::net::SocketAddr, usize)]) -> Self {
        topology.prepare_edge();
        let config = Config::parse(&topology.config(clients)).expect("edge config");
        let ns_name = topology.edge.name.clone();
        let (ready_tx, ready_rx) = mpsc::channel();
        let (stop, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let ns = NetNs::existing(&ns_name);
            let _inside = ns.enter();
            let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
            let daemon = match Daemon::start(&config) {
                Ok(daemon) => Arc::new(daemon),
                Err(error) => {
                    ready_tx.send(Err(format!("{error:#}"))).unwrap();
                    return;
                }
            };
            ready_tx.send(Ok(daemon.clone())).unwrap();
            runtime
                .block_on(daemon.serve(async {
                    let _ = stop_rx.await;
                }))
                .expect("edge daemon");
        });
        let daemon = ready_rx.recv().expect("edge thread").unwrap_or_else(|e| panic!("starting the edge daemon: {e}"));
        Self { daemon, stop: Some(stop), thread: Some(thread) }
    }

    /// A first-contact counter by name.
    pub fn first_contact(&self, name: &str) -> u64 {
        self.daemon
            .report()
            .first_contact
            .into_iter()
            .find(|(n, _)| *n == name)
            .unwrap_or_else(|| panic!("no counter {name}"))
            .1
    }

    /// A control API request the daemon must answer as asked.
    fn ask<T>(&self, request: Request, wanted: impl FnOnce(Reply) -> Option<T>) -> T {
        let reply = self.daemon.control(request.clone());
        let text = format!("{reply:?}");
        wanted(reply).unwrap_or_else(|| panic!("{request:?} answered {text}"))
    }

    /// The assignment table.
    pub fn routes(&self) -> Vec<Route> {
        self.ask(Request::Routes, |reply| if let Reply::Routes(routes) = reply { Some(routes) } else { None })
    }

    /// Moves `aor` to `server`, as `redirector assign` does.
    pub fn assign(&self, aor: &str, server: &str) {
        let request = Request::Assign { aor: aor.to_owned(), server: server.to_owned() };
        self.ask(request, |reply| matches!(reply, Reply::Moves(_)).then_some(()))
    }

    /// The home server `aor` is assigned to, if any.
    pub fn home_of(&self, aor: &str) -> Option<String> {
        self.routes().into_iter().find(|route| route.aor == aor).map(|route| route.server)
    }

    /// `aor`'s client addresses on the fast path, as the kernel has them.
    pub fn entries(&self, aor: &str) -> Vec<Entry> {
        let request = Request::Entries { aor: aor.to_owned() };
        self.ask(request, |reply| if let Reply::Entries(entries) = reply { Some(entries) } else { None })
    }

    pub fn servers(&self) -> Vec<ServerStatus> {
        self.ask(Request::Servers, |reply| if let Reply::Servers(servers) = reply { Some(servers) } else { None })
    }

    /// A fresh reading of every figure.
    pub fn stats(&self) -> Stats {
        self.ask(Request::Stats, |reply| if let Reply::Stats(stats) = reply { Some(stats) } else { None })
    }

    pub fn kernel(&self, counter: redirector_ebpf::Counter) -> u64 {
        self.daemon.report().kernel.into_iter().find(|(c, _)| *c == counter).map_or(0, |(_, n)| n)
    }
}

impl Drop for InProcessEdge {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The configuration document template of the tests that serve
/// documents (as the README's example): the home's registrar URI and name.
pub const PROFILE_TEMPLATE: &str =
    "<profile aor=\"{{aor}}\"><registrar>{{registrar}}</registrar><server>{{server}}</server></profile>\n";

/// Has the edge serve configuration documents (`[documents] template`,
/// `PROFILE_TEMPLATE` written to the topology's scratch directory), with
/// `extra` config sections before it.
pub fn serve_documents(topology: &mut Topology, extra: &str) {
    let template = topology.scratch("profile.xml");
    std::fs::write(&template, PROFILE_TEMPLATE).expect("writing the document template");
    topology.extra_config = format!("{extra}[documents]\ntemplate = \"{}\"\n", template.display());
}

/// The scenarios in tests/sipp.
pub fn scenario(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("sipp").join(name)
}

/// Runs SIPp in the client namespace against the service address: `calls`
/// calls of `scenario` from one socket on `local_port`, bounded by a 30 s
/// timeout. Once a client address has had its first contact it is on the
/// fast path, so calls that must each meet the daemon need `sipp_clients`.
pub fn sipp(topology: &Topology, scenario_name: &str, calls: u32, local_port: u16) -> Output {
    sipp_over(topology, Family::V4, scenario_name, calls, local_port, "user")
}

/// As `sipp`, from the client's address of `family` to that family's
/// service address, with SIPp's `-s` (the AOR's user part) set to `service`.
pub fn sipp_over(
    topology: &Topology,
    family: Family,
    scenario_name: &str,
    calls: u32,
    local_port: u16,
    service: &str,
) -> Output {
    run_sipp(topology, family, scenario_name, (calls, local_port), service, Rport::Asked, &[])
}

/// As `sipp_over`, for a client that does not ask for `rport`: scenarios
/// that write their Via's parameters as `[rport]` send none.
pub fn sipp_over_without_rport(topology: &Topology, family: Family, scenario_name: &str, local_port: u16) -> Output {
    run_sipp(topology, family, scenario_name, (1, local_port), "user", Rport::NotAsked, &[])
}

/// As `sipp_over_without_rport`, with the scenario's keywords `keys`
/// (name, value) set.
pub fn sipp_with_keys_without_rport(
    topology: &Topology,
    family: Family,
    scenario_name: &str,
    local_port: u16,
    keys: &[(&str, &str)],
) -> Output {
    run_sipp(topology, family, scenario_name, (1, local_port), "user", Rport::NotAsked, keys)
}

/// What a scenario's `[rport]` keyword stands for.
#[derive(Clone, Copy)]
enum Rport {
    Asked,
    NotAsked,
}

/// `clients` clients, each one SIPp call of `scenario` from its own port
/// (`first_port` + i) and its own AOR prefix (SIPp -s `{prefix}{i}-`).
/// Fixed ports, not SIPp's random per-call ones: a port that an earlier
/// client left on the fast path must not be handed to a new one. Returns
/// whether every call succeeded.
pub fn sipp_clients(topology: &Topology, scenario_name: &str, clients: u16, first_port: u16, prefix: &str) -> bool {
    (0..clients).all(|i| {
        let service = format!("{prefix}{i}-");
        let output = run_sipp(topology, Family::V4, scenario_name, (1, first_port + i), &service, Rport::Asked, &[]);
        output.status.success()
    })
}

fn run_sipp(
    topology: &Topology,
    family: Family,
    scenario_name: &str,
    (calls, local_port): (u32, u16),
    service: &str,
    rport: Rport,
    keys: &[(&str, &str)],
) -> Output {
    let remote = family.service().to_string();
    let (mut command, errors) =
        sipp_command(topology, family, &remote, scenario_name, (calls, local_port), service, rport);
    for (key, value) in keys {
        command.args(["-key", key, value]);
    }
    finish(command, &errors, scenario_name)
}

/// As `sipp`, to `remote` (a proxy in front of the pool, say) instead of
/// the service address: `calls` calls of `scenario` from one socket on
/// `local_port`, the AOR's user part `service` and the call number.
pub fn sipp_to(
    topology: &Topology,
    remote: &str,
    scenario_name: &str,
    (calls, local_port): (u32, u16),
    service: &str,
) -> Output {
    let (command, errors) =
        sipp_command(topology, Family::V4, remote, scenario_name, (calls, local_port), service, Rport::Asked);
    finish(command, &errors, scenario_name)
}

/// Runs SIPp to its end (its own timeout bounds it); its errors are
/// printed if it failed.
fn finish(mut command: Command, errors: &Path, scenario_name: &str) -> Output {
    let output = command.stdin(Stdio::null()).output().expect("running sipp (apt-get install sip-tester)");
    if !output.status.success() {
        let errors = std::fs::read_to_string(errors).unwrap_or_default();
        eprintln!("sipp {scenario_name} failed:\n{}\n{errors}", String::from_utf8_lossy(&output.stdout));
    }
    output
}

/// One call of `scenario` from `local_port`, in the background.
pub struct BackgroundSipp {
    child: Child,
    log: PathBuf,
    errors: PathBuf,
    reaped: bool,
}

/// A test that fails before `wait` leaves no SIPp behind.
impl Drop for BackgroundSipp {
    fn drop(&mut self) {
        if !self.reaped {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

impl BackgroundSipp {
    pub fn spawn(topology: &Topology, scenario_name: &str, local_port: u16) -> Self {
        Self::spawn_as(topology, scenario_name, local_port, "user")
    }

    /// As `spawn`, with SIPp's `-s` (the AOR's user part) set to `service`.
    pub fn spawn_as(topology: &Topology, scenario_name: &str, local_port: u16, service: &str) -> Self {
        let remote = Family::V4.service().to_string();
        let (mut command, errors) =
            sipp_command(topology, Family::V4, &remote, scenario_name, (1, local_port), service, Rport::Asked);
        let log = topology.scratch(&format!("sipp-{scenario_name}-{local_port}.log"));
        command.args(["-trace_logs", "-log_file", log.to_str().unwrap()]);
        let child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("running sipp (apt-get install sip-tester)");
        Self { child, log, errors, reaped: false }
    }

    /// Waits for the call to end (SIPp's own timeout bounds it): what its
    /// `<log>` actions wrote, or its errors if it failed.
    pub fn wait(mut self) -> Result<String, String> {
        let status = self.child.wait().expect("waiting for sipp");
        self.reaped = true;
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        if status.success() {
            Ok(log)
        } else {
            Err(format!("{status}; log: {log}; errors: {}", std::fs::read_to_string(&self.errors).unwrap_or_default()))
        }
    }
}

/// SIPp's command line from the client's address of `family` to `remote`
/// (that family's service address, mostly), bounded by a 30 s timeout,
/// and where its errors go.
fn sipp_command(
    topology: &Topology,
    family: Family,
    remote: &str,
    scenario_name: &str,
    (calls, local_port): (u32, u16),
    service: &str,
    rport: Rport,
) -> (Command, PathBuf) {
    let scenario = scenario(scenario_name);
    let errors = topology.scratch(&format!("sipp-{scenario_name}-{local_port}.errors"));
    let args = [
        remote,
        "-sf",
        scenario.to_str().unwrap(),
        "-m",
        &calls.to_string(),
        "-s",
        service,
        "-r",
        "50",
        "-i",
        &family.client().to_string(),
        "-p",
        &local_port.to_string(),
        "-timeout",
        "30s",
        "-timeout_error",
        "-nostdin",
        "-trace_err",
        "-error_file",
        errors.to_str().unwrap(),
        // SIPp keeps a keyword's first value: set it once.
        "-key",
        "rport",
        match rport {
            Rport::Asked => ";rport",
            Rport::NotAsked => "",
        },
    ];
    (topology.client.command("sipp", &args), errors)
}
