//! The peers a user would pick instead of redirector, started on the same
//! namespaces: Kamailio (stateless forward, or 302 redirect) and the
//! kernel's own L4 forwarding (nftables DNAT; this kernel has no IPVS).
//! A peer whose package is missing is reported, never faked.

use std::{
    path::Path,
    process::{Child, Stdio},
    time::{Duration, Instant},
};

use redirector_tests::{
    netns::NetNs,
    topology::{EDGE, SERVICE},
};

/// `Err("<what> is missing …")` unless `program` is on PATH.
pub fn require(program: &str, package: &str) -> Result<(), String> {
    let found = std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(program).is_file()));
    if found { Ok(()) } else { Err(format!("{program} is not installed (`cargo xtask setup` installs {package})")) }
}

/// nftables DNAT of the service address:port to `home` in the edge
/// namespace (prerouting, so the kernel routes the packet on to `home`).
pub fn nftables_dnat(edge: &NetNs, home: &str) -> Result<(), String> {
    require("nft", "nftables")?;
    let rules = nftables_rules(home);
    let output = edge.command("nft", &["-f", "-"]).stdin(Stdio::piped()).stdout(Stdio::null()).spawn();
    let mut child = output.map_err(|e| format!("starting nft: {e}"))?;
    std::io::Write::write_all(child.stdin.as_mut().expect("piped"), rules.as_bytes())
        .map_err(|e| format!("writing nft rules: {e}"))?;
    drop(child.stdin.take());
    let status = child.wait().map_err(|e| format!("nft: {e}"))?;
    if status.success() { Ok(()) } else { Err(format!("nft -f refused the rules ({status}):\n{rules}")) }
}

fn nftables_rules(home: &str) -> String {
    let (address, port) = SERVICE.split_once(':').expect("address:port");
    format!(
        "table ip bench {{\n  chain prerouting {{\n    type nat hook prerouting priority dstnat;\n    \
         ip daddr {address} udp dport {port} dnat to {home}\n  }}\n}}\n"
    )
}

/// What Kamailio does with each request.
pub enum KamailioRoute<'a> {
    /// `forward()` to the home server: stateless, a Via added.
    Forward { home: &'a str },
    /// `sl_send_reply("302")` with a Contact at the home server.
    Redirect { home: &'a str },
}

impl KamailioRoute<'_> {
    fn body(&self) -> String {
        match self {
            KamailioRoute::Forward { home } => {
                let (host, port) = home.split_once(':').expect("address:port");
                // From the edge's own address, as redirector's proxy sends:
                // the home server owns the service address too (dsr), so a
                // datagram from it would be a martian there.
                format!("    force_send_socket(udp:{EDGE}:5060);\n    forward(\"{host}\", {port});\n    exit;\n")
            }
            KamailioRoute::Redirect { home } => format!(
                "    append_to_reply(\"Contact: <sip:$tU@{home}>\\r\\nExpires: 3600\\r\\n\");\n    \
                 sl_send_reply(\"302\", \"Moved Temporarily\");\n    exit;\n"
            ),
        }
    }
}

/// Kamailio's whole configuration: listening on the service address and
/// the edge's own address, two worker processes (one per core), no
/// database, logging errors only.
pub fn kamailio_config(route: &KamailioRoute<'_>) -> String {
    format!(
        "#!KAMAILIO\ndebug=0\nlog_stderror=yes\nchildren=2\nlisten=udp:{SERVICE}\nlisten=udp:{EDGE}:5060\n\
         mpath=\"/usr/lib/x86_64-linux-gnu/kamailio/modules/\"\n\
         loadmodule \"sl.so\"\nloadmodule \"pv.so\"\nloadmodule \"textops.so\"\n\
         request_route {{\n{}}}\n",
        route.body()
    )
}

/// A Kamailio process; SIGTERM on drop, so it takes its workers with it.
pub struct Kamailio(Child);

impl Kamailio {
    /// Starts Kamailio in `ns` and waits until it listens.
    pub fn start(ns: &NetNs, dir: &Path, route: &KamailioRoute<'_>) -> Result<Self, String> {
        require("kamailio", "kamailio")?;
        std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
        let config = dir.join("kamailio.cfg");
        std::fs::write(&config, kamailio_config(route)).map_err(|e| e.to_string())?;
        let pid = dir.join("kamailio.pid");
        let args =
            ["-DD", "-E", "-f", config.to_str().unwrap(), "-Y", dir.to_str().unwrap(), "-P", pid.to_str().unwrap()];
        let child = ns
            .command("kamailio", &args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("starting kamailio: {e}"))?;
        let kamailio = Self(child);
        wait_until_listening(ns)?;
        Ok(kamailio)
    }

    /// The main process; its workers are its children.
    pub fn pid(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for Kamailio {
    fn drop(&mut self) {
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.0.try_wait().ok().flatten().is_none() {
            if Instant::now() > deadline {
                let _ = self.0.kill();
                let _ = self.0.wait();
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

fn wait_until_listening(ns: &NetNs) -> Result<(), String> {
    let (_, port) = SERVICE.split_once(':').expect("address:port");
    let deadline = Instant::now() + Duration::from_secs(20);
    while ns.exec("ss", &["-Hlun", &format!("sport = :{port}")]).stdout.is_empty() {
        if Instant::now() > deadline {
            return Err("kamailio did not listen within 20 s".into());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}
