//! Debian's baresip as a test's softphone, in the client namespace: one
//! account, `<sip:USER@example.test>`, pointed at the service address, that
//! answers calls by itself and needs no sound card (a 440 Hz sine as its
//! microphone, an `aubridge` device as its speaker; G.711). Its presence
//! module answers SUBSCRIBEs for its own presence, and subscribes to the
//! presence of the phones it `watch`es.

use std::{
    net::SocketAddr,
    os::unix::process::CommandExt,
    path::PathBuf,
    process::{Child, Command, Output, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

use crate::topology::{Family, Topology, kill_group};

/// The domain of every phone's AOR.
pub const DOMAIN: &str = "example.test";

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
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let log = self.log();
            if log.contains(text) {
                return log;
            }
            let ended = self.child.try_wait().expect("polling baresip").is_some();
            assert!(!ended && Instant::now() < deadline, "baresip never printed {text:?}:\n{log}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        kill_group(&mut self.child);
    }
}
