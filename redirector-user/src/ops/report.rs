//! Human-readable tables for the CLI.

use std::fmt::Write;

use crate::ops::api::{Entry, Move, PlannedMove, Route, ServerStatus, Stats};

/// `redirector stats`: servers with their rates, then the counters.
pub fn stats(stats: &Stats) -> String {
    let mut out = servers(&stats.servers);
    out.push('\n');
    out += &counters("fast path (kernel)", &stats.verdicts);
    out += &counters("first contact (daemon)", &stats.first_contact);
    out += &counters("watchers (daemon)", &stats.watchers);
    if stats.kernel_memory > 0 {
        let _ = writeln!(out, "kernel maps: {:.1} MiB", stats.kernel_memory as f64 / f64::from(1 << 20));
    }
    out
}

/// One row per server; rates are `-` until the stats stream has two readings.
pub fn servers(servers: &[ServerStatus]) -> String {
    let mut out = format!(
        "{:<12} {:<9} {:<22} {:>6} {:>9} {:>12} {:>14} {:>10}\n",
        "server", "state", "address", "weight", "clients", "packets", "bytes", "pkt/s"
    );
    for server in servers {
        let address = server
            .ipv4
            .map(|ip| format!("{ip}:{}", server.port))
            .or(server.ipv6.map(|ip| format!("[{ip}]:{}", server.port)))
            .unwrap_or_default();
        let rate = server.packets_per_second.map_or_else(|| "-".into(), |rate| format!("{rate:.1}"));
        let state = if server.healthy { format!("{:?}", server.state).to_lowercase() } else { "unhealthy".into() };
        let _ = writeln!(
            out,
            "{:<12} {:<9} {:<22} {:>6} {:>9} {:>12} {:>14} {:>10}",
            server.name, state, address, server.weight, server.clients, server.packets, server.bytes, rate
        );
    }
    out
}

fn counters(title: &str, counters: &std::collections::BTreeMap<String, u64>) -> String {
    let shown: Vec<String> = counters.iter().filter(|(_, n)| **n > 0).map(|(name, n)| format!("{name} {n}")).collect();
    let shown = if shown.is_empty() { "nothing yet".to_owned() } else { shown.join(", ") };
    format!("{title}: {shown}\n")
}

pub fn moves(moves: &[Move]) -> String {
    if moves.is_empty() {
        return "no client moved\n".into();
    }
    let mut out = String::new();
    for m in moves {
        let _ = writeln!(out, "{}: {} -> {} (generation {})", m.aor, m.from, m.to, m.generation);
    }
    let _ = writeln!(out, "{} client(s) moved", moves.len());
    out
}

pub fn plan(planned: &[PlannedMove], dry_run: bool) -> String {
    if planned.is_empty() {
        return "balanced: nothing to move\n".into();
    }
    let mut out = String::new();
    for p in planned {
        let _ = writeln!(out, "{}: {} -> {} ({:.1} pkt/s)", p.aor, p.from, p.to, p.rate);
    }
    let verb = if dry_run { "would move" } else { "moved" };
    let _ = writeln!(out, "{verb} {} client(s)", planned.len());
    out
}

pub fn entries(entries: &[Entry]) -> String {
    let mut out = format!("{:<46} {:>6} {:>12}\n", "client", "server", "packets");
    for entry in entries {
        let _ = writeln!(out, "{:<46} {:>6} {:>12}", entry.client, entry.server, entry.packets);
    }
    out
}

pub fn routes(routes: &[Route]) -> String {
    let mut out = format!("{:<40} {:<12} {:<22} {:>10}\n", "aor", "server", "address", "generation");
    for route in routes {
        let address = route.address.map(|a| a.to_string()).unwrap_or_default();
        let _ = writeln!(out, "{:<40} {:<12} {:<22} {:>10}", route.aor, route.server, address, route.generation);
    }
    out
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::model::ServerState;

    fn server(name: &str, packets: u64) -> ServerStatus {
        ServerStatus {
            name: name.into(),
            state: ServerState::Draining,
            healthy: true,
            ipv4: Some("10.0.0.11".parse().unwrap()),
            ipv6: None,
            port: 5060,
            weight: 1.0,
            clients: 3,
            packets,
            bytes: packets * 100,
            packets_per_second: Some(packets as f64 / 3.0),
            bytes_per_second: None,
        }
    }

    #[test]
    fn stats_table_shows_servers_rates_and_nonzero_counters() {
        let verdicts = BTreeMap::from([("forwarded".to_owned(), 30), ("malformed".to_owned(), 0)]);
        let now = Stats { servers: vec![server("home1", 30)], verdicts, ..Stats::default() };
        let table = stats(&now);
        let row = table.lines().nth(1).unwrap();
        assert!(row.starts_with("home1") && row.contains("draining") && row.contains("10.0.0.11:5060"), "{row}");
        assert!(row.trim_end().ends_with("10.0"), "the stream's rate: {row}");
        assert!(table.contains("fast path (kernel): forwarded 30\n"), "{table}");
        assert!(table.contains("first contact (daemon): nothing yet\n"));
    }
}
