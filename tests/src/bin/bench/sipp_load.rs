//! SIPp as a load generator for section 3's cross-check: several SIPp
//! processes at once in the client namespace, each one socket, each call a
//! REGISTER with a fresh AOR that must be answered 302; what they count
//! comes from SIPp's own statistics file.

use std::{
    path::Path,
    process::{Child, Stdio},
    time::{Duration, Instant},
};

use redirector_tests::{
    sip_pool::scenario,
    topology::{CLIENT, SERVICE, Topology},
};

use crate::peers;

pub const PROCESSES: u16 = 2;
const FIRST_PORT: u16 = 5100;
/// Calls in flight per process, as the purpose-built generator's window.
const LIMIT: &str = "64";

pub struct Counted {
    pub successful: u64,
    pub failed: u64,
    pub seconds: f64,
}

/// Runs `PROCESSES` SIPp processes for `limit` (whole seconds) against
/// the service address, as fast as they go.
pub fn run(topology: &Topology, limit: Duration) -> Result<Counted, String> {
    peers::require("sipp", "sip-tester")?;
    let dir = topology.scratch("sipp-load");
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let start = Instant::now();
    let children: Vec<(Child, std::path::PathBuf)> =
        (0..PROCESSES).map(|k| spawn(topology, &dir, k, limit)).collect::<Result<_, String>>()?;
    let mut counted = Counted { successful: 0, failed: 0, seconds: 0.0 };
    for (mut child, stats) in children {
        child.wait().map_err(|e| format!("waiting for sipp: {e}"))?;
        let (successful, failed) = final_counts(&stats)?;
        counted.successful += successful;
        counted.failed += failed;
    }
    counted.seconds = start.elapsed().as_secs_f64();
    Ok(counted)
}

fn spawn(topology: &Topology, dir: &Path, k: u16, limit: Duration) -> Result<(Child, std::path::PathBuf), String> {
    let stats = dir.join(format!("stats{k}.csv"));
    let scenario = scenario("register_expect_302.xml");
    let args = [
        SERVICE,
        "-sf",
        scenario.to_str().unwrap(),
        "-s",
        &format!("sipp{k}-"),
        "-m",
        "100000000",
        "-r",
        "1000000",
        "-l",
        LIMIT,
        "-i",
        &CLIENT.to_string(),
        "-p",
        &(FIRST_PORT + k).to_string(),
        "-timeout",
        &format!("{}s", limit.as_secs()),
        "-nostdin",
        "-trace_stat",
        "-stf",
        stats.to_str().unwrap(),
        "-fd",
        "1",
    ];
    let child = topology
        .client
        .command("sipp", &args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("starting sipp: {e}"))?;
    Ok((child, stats))
}

/// (successful, failed) calls, cumulative, from the last line of a SIPp
/// statistics file (`;`-separated, named columns).
fn final_counts(path: &Path) -> Result<(u64, u64), String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("reading {}: {e}", path.display()))?;
    let mut lines = text.lines().filter(|l| !l.trim().is_empty());
    let header: Vec<&str> = lines.next().ok_or("empty SIPp statistics")?.split(';').collect();
    let last: Vec<&str> = lines.next_back().ok_or("no SIPp statistics line")?.split(';').collect();
    let column = |name: &str| -> Result<u64, String> {
        let index = header.iter().position(|h| *h == name).ok_or(format!("no {name} in SIPp statistics"))?;
        last.get(index).and_then(|v| v.trim().parse().ok()).ok_or(format!("no number in {name}"))
    };
    Ok((column("SuccessfulCall(C)")?, column("FailedCall(C)")?))
}
