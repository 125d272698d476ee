//! Human-readable tables for the CLI.

use std::fmt::Write;

use crate::{
    ops::api::{Client, Entry, Move, PlannedMove, Route, ServerStatus, Stats},
    probe::{COOKIE_HEADER, select::Report},
};

/// `redirector stats`: servers with their rates, then the counters.
pub fn stats(stats: &Stats) -> String {
    let mut out = servers(&stats.servers);
    out.push('\n');
    out += &counters("fast path (kernel)", &stats.verdicts);
    out += &counters("first contact (daemon)", &stats.first_contact);
    out += &counters("watchers (daemon)", &stats.watchers);
    if !stats.profiles.is_empty() {
        out += &counters("ua-profile subscriptions (daemon)", &stats.profiles);
    }
    if !stats.store.is_empty() {
        out += &counters("shared store (etcd)", &stats.store);
    }
    if stats.kernel_memory > 0 {
        let _ = writeln!(out, "kernel maps: {:.1} MiB", stats.kernel_memory as f64 / f64::from(1 << 20));
    }
    out
}

/// `redirector probe`: each server's response time (or timeout), the choice
/// and the cookie to present.
pub fn probe(report: &Report) -> String {
    let mut out = format!("{:<42} {:>12}  {}\n", "server", "answered", "");
    for server in &report.servers {
        let (time, note) = match (server.answered_ms, server.chosen) {
            (Some(ms), true) => (format!("{ms:.3} ms"), "chosen (earliest)"),
            (Some(ms), false) => (format!("{ms:.3} ms"), "late (ignored)"),
            (None, _) => ("timeout".to_owned(), ""),
        };
        let _ = writeln!(out, "{:<42} {time:>12}  {note}", server.server.to_string());
    }
    match (&report.chosen, &report.cookie) {
        (Some(chosen), Some(cookie)) => {
            let _ = writeln!(out, "chosen: {chosen}\n{COOKIE_HEADER}: {cookie}");
        }
        _ => out.push_str("chosen: none (no answer)\n"),
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

/// `redirector clients`: each AOR with when it was last seen (UTC, and how
/// long before `now`, both in seconds since the Unix epoch).
pub fn clients(clients: &[Client], now: u64) -> String {
    let mut out = format!("{:<40} {:<24} {}\n", "aor", "last seen (UTC)", "ago");
    for client in clients {
        let ago = ago(now.saturating_sub(client.last_seen));
        let _ = writeln!(out, "{:<40} {:<24} {ago}", client.aor, utc(client.last_seen));
    }
    out
}

/// `2026-11-29 22:45:07` for seconds since the Unix epoch (the civil
/// calendar from a day count, after Howard Hinnant's `civil_from_days`).
fn utc(unix_seconds: u64) -> String {
    let (days, time) = (unix_seconds / 86_400, unix_seconds % 86_400);
    let era_day = days + 719_468;
    let (era, day_of_era) = (era_day / 146_097, era_day % 146_097);
    let year_of_era = (day_of_era - day_of_era / 1_460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_index + 2) / 5 + 1;
    let month = if month_index < 10 { month_index + 3 } else { month_index - 9 };
    let year = year_of_era + era * 400 + u64::from(month <= 2);
    let (hour, minute, second) = (time / 3_600, time % 3_600 / 60, time % 60);
    format!("{year:04}-{month:02}-{day:02} {hour:02}:{minute:02}:{second:02}")
}

/// `42s`, `7m`, `5h`, `12d`: the largest whole unit.
fn ago(seconds: u64) -> String {
    match seconds {
        0..60 => format!("{seconds}s"),
        60..3_600 => format!("{}m", seconds / 60),
        3_600..86_400 => format!("{}h", seconds / 3_600),
        _ => format!("{}d", seconds / 86_400),
    }
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

    #[test]
    fn clients_show_when_each_was_last_seen() {
        let now = 1_796_000_000;
        let seen = [
            Client { aor: "sip:alice@example.net".into(), last_seen: now - 42 },
            Client { aor: "sip:bob@example.net".into(), last_seen: 951_782_400 },
        ];
        let table = clients(&seen, now);
        let lines: Vec<&str> = table.lines().collect();
        assert!(lines[1].starts_with("sip:alice@example.net") && lines[1].ends_with(" 42s"), "{table}");
        assert!(lines[1].contains("2026-11-30 00:52:38"), "{table}");
        assert!(lines[2].contains("2000-02-29 00:00:00") && lines[2].ends_with("d"), "{table}");
        assert_eq!([ago(59), ago(60), ago(3_599), ago(7_200), ago(86_400 * 3)], ["59s", "1m", "59m", "2h", "3d"]);
        assert_eq!(utc(0), "1970-01-01 00:00:00");
        assert_eq!(utc(1_796_000_000), "2026-11-30 00:53:20");
    }
}
