//! Section 5: bytes per client, against the raw bytes of what is stored.
//!
//! * Kernel: the `memlock` the kernel reports for each map in
//!   /proc/self/fdinfo (its own accounting of the map's memory). The LRU
//!   maps are preallocated, so their memory is fixed by MAX_CLIENTS, not by
//!   how many clients are in them: per client = memlock / MAX_CLIENTS, and
//!   the same at 1,000,000 clients. Raw: key + value (and each client's
//!   per-CPU load counter, 8 bytes on every possible CPU).
//! * Daemon: growth of this process's resident memory from before the
//!   population was made to after (assignment store open with its cache,
//!   the fast path's record of installed clients), per client. Raw: the AOR
//!   and the two endpoints the daemon keeps for it.
//! * Disk: the redb file, per client. Raw: AOR, server name, two u64.

use std::collections::BTreeMap;

use redirector_ebpf::{CLIENTS_MAP, ClientEntry, Endpoint, LOADS_MAP, MAX_CLIENTS, NAT_REPLIES_MAP, NatEntry, NatKey};

use crate::{
    population::{Population, SERVERS, aor},
    report::{Row, Section},
};

/// This process's resident set, in bytes, after returning freed heap to
/// the system (so what was only temporary does not count).
pub fn rss_bytes() -> u64 {
    // SAFETY: malloc_trim has no preconditions.
    unsafe { libc::malloc_trim(0) };
    let status = std::fs::read_to_string("/proc/self/status").expect("reading /proc/self/status");
    let kib = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .expect("VmRSS in /proc/self/status");
    kib * 1024
}

/// memlock of every BPF map this process holds, by map name.
fn map_memlock() -> BTreeMap<String, u64> {
    let mut found = BTreeMap::new();
    for entry in std::fs::read_dir("/proc/self/fdinfo").expect("reading /proc/self/fdinfo").flatten() {
        let Ok(info) = std::fs::read_to_string(entry.path()) else { continue };
        let field =
            |name: &str| info.lines().find_map(|l| l.strip_prefix(name)).and_then(|v| v.trim().parse::<u64>().ok());
        let (Some(id), Some(memlock)) = (field("map_id:"), field("memlock:")) else { continue };
        if let Ok(map) = aya::maps::MapInfo::from_id(id as u32)
            && let Some(name) = map.name_as_str()
        {
            *found.entry(name.to_owned()).or_default() += memlock;
        }
    }
    found
}

pub fn measure(population: &Population, rss_before: u64) -> Section {
    let count = population.count;
    let mut section = Section::new("memory", format!("5. Memory per client, {count} clients"));
    let memlock = map_memlock();
    let clients = (memlock[CLIENTS_MAP] + memlock[LOADS_MAP]) as f64;
    let replies = memlock[NAT_REPLIES_MAP] as f64;
    let slots = f64::from(MAX_CLIENTS);
    let cpus = aya::util::nr_cpus().expect("the possible CPUs");
    let dsr_raw = (size_of::<Endpoint>() + size_of::<ClientEntry>() + 8 * cpus) as f64;
    let nat_raw = dsr_raw + (size_of::<NatKey>() + size_of::<NatEntry>()) as f64;
    let raw = "raw key+value bytes";
    section.rows.push(
        Row::new("kernel, dsr (CLIENTS + LOADS)", clients / slots, "B/client")
            .against(raw, dsr_raw)
            .raw("memlock_bytes", clients)
            .raw("max_clients", slots)
            .raw("raw_bytes", dsr_raw),
    );
    section.rows.push(
        Row::new("kernel, nat (CLIENTS + LOADS + NAT_REPLIES)", (clients + replies) / slots, "B/client")
            .against(raw, nat_raw)
            .raw("memlock_bytes", clients + replies)
            .raw("raw_bytes", nat_raw),
    );
    let aor_bytes = aor(count - 1).as_str().len() as f64;
    let daemon_raw = aor_bytes + 2.0 * size_of::<Endpoint>() as f64;
    let grown = rss_bytes().saturating_sub(rss_before) as f64;
    section.rows.push(
        Row::new("daemon, resident", grown / f64::from(count), "B/client")
            .against("raw AOR + 2 endpoints", daemon_raw)
            .raw("rss_growth_bytes", grown)
            .raw("raw_bytes", daemon_raw),
    );
    let file = std::fs::metadata(&population.database).map_or(0, |m| m.len()) as f64;
    let disk_raw = aor_bytes + SERVERS[0].len() as f64 + 16.0;
    section.rows.push(
        Row::new("daemon, database file", file / f64::from(count), "B/client")
            .against("raw AOR + server + 2 u64", disk_raw)
            .raw("file_bytes", file)
            .raw("raw_bytes", disk_raw),
    );
    section.notes.push(format!(
        "kernel maps are preallocated for MAX_CLIENTS = {MAX_CLIENTS}: the per-client figure holds at any fill up to it"
    ));
    section
}
