//! `redirector status`: what runs on this host, whether or not the daemon
//! answers. The interfaces come from `ip -json -details link` (iproute2),
//! the daemon from its control socket, the store from its file when the
//! daemon is down.

use std::{
    fmt::Write,
    path::{Path, PathBuf},
    process::Command,
};

use serde::{Deserialize, Serialize};

use crate::{
    config::{Config, DEFAULT_BPFFS},
    ops::{
        api::{DaemonStatus, Reply, Request},
        control,
    },
    store::{AssignmentStore, RedbStore},
};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attached {
    pub interface: String,
    pub program: String,
    pub id: u64,
    /// native, skb or offload.
    pub mode: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostStatus {
    /// redirector's XDP programs attached to this namespace's interfaces.
    pub attached: Vec<Attached>,
    /// Where `run` pins each interface's link and maps (`<bpffs>/redirector`).
    pub pin_root: PathBuf,
    /// The interfaces pinned there.
    pub pinned: Vec<String>,
    /// The daemon, if it answers on its control socket.
    pub daemon: Option<DaemonStatus>,
    /// Why it did not answer.
    pub daemon_unreachable: Option<String>,
    /// With the daemon down: the store's path and its assignments.
    pub store: Option<(PathBuf, u64)>,
}

/// The host as it is now; `config`, if given, names the store (read when
/// the daemon is down) and where bpffs is.
pub fn host_status(socket: &Path, config: Option<&Config>) -> HostStatus {
    let (daemon, daemon_unreachable) = match control::request(socket, &Request::Status) {
        Ok(Reply::Status(status)) => (Some(status), None),
        Ok(other) => (None, Some(format!("it answered {other:?}"))),
        Err(error) => (None, Some(error.to_string())),
    };
    let store = match (&daemon, config) {
        (None, Some(config)) => RedbStore::open_existing(&config.sip.database)
            .and_then(|store| store.all())
            .ok()
            .map(|all| (config.sip.database.clone(), all.len() as u64)),
        _ => None,
    };
    let bpffs = config.map_or_else(|| PathBuf::from(DEFAULT_BPFFS), |config| config.fast_path.bpffs.clone());
    let pin_root = bpffs.join("redirector");
    HostStatus { attached: attached(), pinned: pinned(&pin_root), pin_root, daemon, daemon_unreachable, store }
}

/// `ip -json -details link`'s XDP attachments whose program is ours.
fn attached() -> Vec<Attached> {
    let Ok(out) = Command::new("ip").args(["-json", "-details", "link", "show"]).output() else { return Vec::new() };
    let links: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap_or_default();
    links.iter().flat_map(xdp_of).collect()
}

fn xdp_of(link: &serde_json::Value) -> Vec<Attached> {
    let interface = link["ifname"].as_str().unwrap_or_default();
    let xdp = &link["xdp"];
    let programs = match xdp["attached"].as_array() {
        Some(attached) => attached.clone(),
        None if xdp["prog"].is_object() => vec![xdp.clone()],
        None => Vec::new(),
    };
    programs
        .iter()
        .filter_map(|entry| {
            let program = entry["prog"]["name"].as_str()?;
            let mode = match entry["mode"].as_u64()? {
                1 => "native",
                2 => "skb",
                3 => "offload",
                _ => "unknown",
            };
            program.starts_with("redirector").then(|| Attached {
                interface: interface.to_owned(),
                program: program.to_owned(),
                id: entry["prog"]["id"].as_u64().unwrap_or_default(),
                mode: mode.to_owned(),
            })
        })
        .collect()
}

fn pinned(root: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(root) else { return Vec::new() };
    entries.flatten().filter_map(|entry| entry.file_name().into_string().ok()).collect()
}

/// `status` as text.
pub fn report(status: &HostStatus) -> String {
    let mut out = String::new();
    if status.attached.is_empty() {
        out += "attached: nothing of redirector's on this namespace's interfaces\n";
    }
    for a in &status.attached {
        let _ = writeln!(out, "attached: {} on {} (id {}, {} mode)", a.program, a.interface, a.id, a.mode);
    }
    let root = status.pin_root.display();
    for interface in &status.pinned {
        let _ = writeln!(
            out,
            "pinned: {interface} under {root} (the kernel forwards its known clients with or without a daemon; \
             `redirector detach --interface {interface}` removes it)"
        );
    }
    if status.pinned.is_empty() {
        let _ = writeln!(out, "pinned: nothing under {root}");
    }
    match (&status.daemon, &status.daemon_unreachable) {
        (Some(d), _) => {
            let _ = writeln!(
                out,
                "daemon: pid {}, up {} s, store {} ({} assignments), kernel maps {:.1} MiB",
                d.pid,
                d.uptime_seconds,
                d.store,
                d.assignments,
                d.kernel_memory as f64 / f64::from(1 << 20)
            );
        }
        (None, why) => {
            let _ = writeln!(out, "daemon: not running ({})", why.as_deref().unwrap_or("no answer"));
        }
    }
    if let Some((path, assignments)) = &status.store {
        let _ = writeln!(out, "store: {} ({assignments} assignments)", path.display());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_our_programs_are_listed_with_their_mode() {
        let link = serde_json::json!({"ifname": "e0", "xdp": {"mode": 2, "prog": {"id": 7, "name": "redirector"},
            "attached": [{"mode": 2, "prog": {"id": 7, "name": "redirector"}}]}});
        let ours = xdp_of(&link);
        let expected = Attached { interface: "e0".into(), program: "redirector".into(), id: 7, mode: "skb".into() };
        assert_eq!(ours, [expected]);
        let foreign = serde_json::json!({"ifname": "e1", "xdp": {"mode": 1, "prog": {"id": 9, "name": "xdp_fw"}}});
        assert!(xdp_of(&foreign).is_empty());
        assert!(xdp_of(&serde_json::json!({"ifname": "lo"})).is_empty());
    }

    #[test]
    fn a_daemon_that_is_down_is_said_to_be_with_why() {
        let status = host_status(Path::new("/nonexistent/control.sock"), None);
        assert!(status.daemon.is_none());
        let text = report(&status);
        assert!(text.contains("daemon: not running (") && text.contains("/nonexistent/control.sock"), "{text}");
    }
}
