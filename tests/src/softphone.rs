//! Debian's baresip as a test's softphone, in the client namespace: one
//! account, `<sip:USER@example.test>`, pointed at the service address, that
//! answers calls by itself and needs no sound card (a 440 Hz sine as its
//! microphone, an `aubridge` device as its speaker; G.711). Its presence
//! module answers SUBSCRIBEs for its own presence, and subscribes to the
//! presence of the phones it `watch`es. Registering, answering and
//! calling return what went wrong rather than panic: the demo prints it.

use std::{
    net::SocketAddr,
    os::unix::process::CommandExt,
    path::PathBuf,
    process::{Child, Command, Output, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

use crate::{
    sip_pool::InProcessEdge,
    topology::{Family, Topology, kill_group},
};

/// The domain of every phone's AOR.
pub const DOMAIN: &str = "example.test";

/// How long a caller's phone runs when it calls (`Phone::call`): the call
/// lasts about as long, then the caller hangs up as its phone quits.
pub const CALL_SECONDS: u32 = 6;

/// One second of G.711 is 50 RTP packets: a call that carried fewer either
/// way did not carry audio.
const RTP_PACKETS_IN_A_SECOND: u64 = 50;

pub struct Phone {
    pub user: &'static str,
    family: Family,
    dir: PathBuf,
}

impl Phone {
    /// A phone listening at the client's address of `family`, port `port`,
    /// with its configuration in the topology's scratch directory.
    pub fn new(topology: &Topology, user: &'static str, family: Family, port: u16) -> Self {
        let dir = topology.scratch(&format!("baresip-{user}"));
        std::fs::create_dir_all(&dir).expect("baresip's config dir");
        let listen = SocketAddr::new(family.client(), port);
        let config = format!(
            "sip_listen\t{listen}\nmodule_path\t/usr/lib/baresip/modules\n\
             module\tg711.so\nmodule\tausine.so\nmodule\taubridge.so\n\
             audio_source\tausine,440\naudio_player\taubridge,{user}\n\
             ausrc_srate\t48000\nausrc_channels\t2\nrtp_stats\tyes\n\
             module_app\taccount.so\nmodule_app\tmenu.so\nmodule_app\tcontact.so\nmodule_app\tpresence.so\n"
        );
        std::fs::write(dir.join("config"), config).expect("baresip config");
        let account = format!(
            "<sip:{user}@{DOMAIN}>;outbound=\"sip:{}\";regint=3600;pubint=0;answermode=auto\n",
            family.service()
        );
        std::fs::write(dir.join("accounts"), account).expect("baresip accounts");
        // Without a contacts file, baresip writes one with examples in it.
        std::fs::write(dir.join("contacts"), "").expect("baresip contacts");
        Self { user, family, dir }
    }

    /// From its next start, the phone subscribes to `other`'s presence.
    pub fn watch(&self, other: &Phone) {
        let contact = format!("\"{}\" <{}>;presence=p2p\n", other.user, other.aor());
        std::fs::write(self.dir.join("contacts"), contact).expect("baresip contacts");
    }

    pub fn aor(&self) -> String {
        format!("sip:{}@{DOMAIN}", self.user)
    }

    /// What baresip prints once its REGISTER got a 200.
    pub fn registered(&self) -> String {
        let family = if self.family == Family::V4 { "v4" } else { "v6" };
        format!("{}@{DOMAIN}: {{0/UDP/{family}}} 200 OK", self.user)
    }

    /// Registers: baresip runs 2 s, then quits and unregisters (the
    /// phone's assignment and fast-path entry stay). What it printed.
    pub fn register(&self, topology: &Topology) -> Result<String, String> {
        let log = stdout(self.run(topology, 2, &[]));
        if log.contains(&self.registered()) { Ok(log) } else { Err(format!("{} not registered:\n{log}", self.user)) }
    }

    /// The phone running for a minute at most with a SIP trace (`-s`),
    /// once registered: it answers calls by itself.
    pub fn answering(&self, topology: &Topology) -> Result<Running, String> {
        let mut running = self.spawn(topology, 60, &["-s"]);
        running.until(&self.registered())?;
        Ok(running)
    }

    /// Calls `callee` (running as `callee_running`, `answering`) for
    /// `CALL_SECONDS`, then hangs up: both phones saw the call
    /// established, the callee saw it end (alice's BYE) while still
    /// running, and RTP flowed both ways.
    pub fn call(&self, topology: &Topology, callee: &Phone, callee_running: &mut Running) -> Result<Call, String> {
        let dial = format!("/dial {}", callee.aor());
        let caller = stdout(self.run(topology, CALL_SECONDS, &["-e", &dial]));
        if !caller.contains(&format!("Call established: {}", callee.aor())) {
            return Err(format!("{}'s call to {} was never established:\n{caller}", self.user, callee.user));
        }
        let callee_log = callee_running.until("terminated")?;
        if !callee_log.contains(&format!("Call established: {}", self.aor())) {
            return Err(format!("{} never had the call established:\n{callee_log}", callee.user));
        }
        let call = Call {
            caller_rtp: rtp_packets(&caller)?,
            callee_rtp: rtp_packets(&callee_log)?,
            caller,
            callee: callee_log,
        };
        for (who, (sent, received)) in [(self.user, call.caller_rtp), (callee.user, call.callee_rtp)] {
            if sent < RTP_PACKETS_IN_A_SECOND || received < RTP_PACKETS_IN_A_SECOND {
                return Err(format!("{who}'s RTP: {sent} packets sent, {received} received"));
            }
        }
        Ok(call)
    }

    /// Runs baresip for `seconds` with `args` (`-e COMMAND`, `-s`): it
    /// registers at start and unregisters when it quits.
    pub fn run(&self, topology: &Topology, seconds: u32, args: &[&str]) -> Output {
        self.command(topology, seconds, args).output().expect("running baresip (apt-get install baresip-core)")
    }

    /// As `run`, in the background, its output in a file.
    pub fn spawn(&self, topology: &Topology, seconds: u32, args: &[&str]) -> Running {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let log = topology.scratch(&format!("baresip-{}-{n}.log", self.user));
        let file = std::fs::File::create(&log).expect("baresip's log");
        let child = self
            .command(topology, seconds, args)
            .stdout(file.try_clone().expect("baresip's log"))
            .stderr(file)
            .spawn()
            .expect("running baresip (apt-get install baresip-core)");
        Running { child, log }
    }

    /// baresip in the client namespace, in a process group of its own,
    /// killed 10 s after `seconds` if it has not quit by then.
    fn command(&self, topology: &Topology, seconds: u32, args: &[&str]) -> Command {
        let (seconds, limit) = (seconds.to_string(), (seconds + 10).to_string());
        let dir = self.dir.to_str().expect("a UTF-8 path");
        let mut line = vec!["-s", "KILL", &limit, "baresip", "-f", dir, "-t", &seconds];
        line.extend(args);
        let mut command = topology.client.command("timeout", &line);
        command.process_group(0).stdin(Stdio::null());
        command
    }
}

/// A baresip in the background; killed with its process group on drop.
pub struct Running {
    child: Child,
    log: PathBuf,
}

impl Running {
    /// What it printed so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits (polling its output, 30 s at most) until it printed `text`
    /// while still running: what it printed by then.
    pub fn wait_for(&mut self, text: &str) -> String {
        self.until(text).unwrap_or_else(|error| panic!("{error}"))
    }

    /// As `wait_for`, saying what went wrong instead of panicking.
    pub fn until(&mut self, text: &str) -> Result<String, String> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let log = self.log();
            if log.contains(text) {
                return Ok(log);
            }
            let ended = self.child.try_wait().map_or(true, |status| status.is_some());
            if ended || Instant::now() >= deadline {
                return Err(format!("baresip never printed {text:?}:\n{log}"));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        kill_group(&mut self.child);
    }
}

/// A call both phones saw established and ended, with RTP both ways.
pub struct Call {
    /// What the caller's phone printed.
    pub caller: String,
    /// What the callee's phone printed, with its SIP trace.
    pub callee: String,
    /// The (sent, received) RTP packets each phone counted.
    pub caller_rtp: (u64, u64),
    pub callee_rtp: (u64, u64),
}

impl Call {
    /// The last `method` request the callee received, as its SIP trace
    /// printed it (start line and headers, up to the empty line).
    pub fn received(&self, method: &str) -> Option<String> {
        let start = self.callee.rfind(&format!("\n{method} sip:"))?;
        let lines = self.callee[start + 1..].lines().map(|line| line.trim_end_matches('\r'));
        Some(lines.take_while(|line| !line.is_empty()).collect::<Vec<_>>().join("\n"))
    }
}

/// Where two phones are homed after `on_different_homes`.
pub struct Homes {
    pub first: String,
    pub second: String,
    /// Whether the second phone was moved off the first one's home.
    pub moved: bool,
}

/// Registers `first`, then `second` on another home than `first`'s: moved
/// there with `redirector assign` if rendezvous hashing put both on one
/// (a call within one home never crosses the edge).
pub fn on_different_homes(
    topology: &Topology,
    edge: &InProcessEdge,
    first: &Phone,
    second: &Phone,
) -> Result<Homes, String> {
    first.register(topology)?;
    second.register(topology)?;
    let home = |phone: &Phone| edge.home_of(&phone.aor()).ok_or_else(|| format!("{} has no assignment", phone.aor()));
    let (first_home, second_home) = (home(first)?, home(second)?);
    if first_home != second_home {
        return Ok(Homes { first: first_home, second: second_home, moved: false });
    }
    let other = if first_home == "home0" { "home1" } else { "home0" };
    topology.assign(&second.aor(), other)?;
    Ok(Homes { first: first_home, second: other.to_owned(), moved: true })
}

fn stdout(output: Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// The (sent, received) RTP packet counts baresip prints when a call ends.
fn rtp_packets(log: &str) -> Result<(u64, u64), String> {
    let summary = || format!("no RTP summary:\n{log}");
    let line = log.lines().find(|l| l.starts_with("packets:")).ok_or_else(summary)?;
    let counts: Vec<u64> = line.split_whitespace().skip(1).filter_map(|n| n.parse().ok()).collect();
    match counts[..] {
        [sent, received, ..] => Ok((sent, received)),
        _ => Err(summary()),
    }
}
