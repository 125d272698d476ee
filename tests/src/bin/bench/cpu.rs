//! CPU time a process and its descendants used, from /proc: what an
//! answer costs its answerer in CPU, a figure the machine's other load
//! moves far less than a rate (a loaded core slows the answerer, but the
//! work per answer stays about the same).

use std::{collections::HashMap, time::Duration};

/// User plus system time of `pid` (all its threads) and of every process
/// below it, as /proc shows them now; `None` if `pid` is gone.
pub fn tree_cpu(pid: u32) -> Option<Duration> {
    let processes = processes();
    processes.get(&pid)?;
    let ticks: u64 = processes.iter().filter(|(p, _)| descends_from(**p, pid, &processes)).map(|(_, s)| s.ticks).sum();
    // SAFETY: sysconf has no preconditions.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Some(Duration::from_secs_f64(ticks as f64 / per_second as f64))
}

/// `tree_cpu` summed over `pids`; `None` if any is gone (or none given).
pub fn trees_cpu(pids: &[u32]) -> Option<Duration> {
    pids.iter().map(|&pid| tree_cpu(pid)).sum::<Option<Duration>>().filter(|_| !pids.is_empty())
}

struct Stat {
    parent: u32,
    ticks: u64,
}

fn processes() -> HashMap<u32, Stat> {
    let Ok(entries) = std::fs::read_dir("/proc") else { return HashMap::new() };
    entries
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| Some((pid, stat(pid)?)))
        .collect()
}

/// /proc/PID/stat's ppid, and its user and system time with that of the
/// children it has waited for (fields 4 and 14 to 17; the command name
/// before them may hold spaces, so fields count from its `)`).
fn stat(pid: u32) -> Option<Stat> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let fields: Vec<&str> = text.rsplit_once(')')?.1.split_whitespace().collect();
    let field = |n: usize| fields.get(n - 3)?.parse::<u64>().ok();
    let ticks = field(14)? + field(15)? + field(16)? + field(17)?;
    Some(Stat { parent: u32::try_from(field(4)?).ok()?, ticks })
}

fn descends_from(mut pid: u32, ancestor: u32, processes: &HashMap<u32, Stat>) -> bool {
    // Bounded: a parent chain is never longer than the process table.
    for _ in 0..=processes.len() {
        if pid == ancestor {
            return true;
        }
        match processes.get(&pid) {
            Some(stat) if stat.parent != pid => pid = stat.parent,
            _ => return false,
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_busy_childs_time_is_counted_in_its_parents_tree() {
        let mut child = std::process::Command::new("sh")
            .args(["-c", "i=0; while [ $i -lt 300000 ]; do i=$((i+1)); done"])
            .spawn()
            .expect("sh");
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let (mut childs, mut tree) = (Duration::ZERO, Duration::ZERO);
        while childs.is_zero() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
            let Some(now) = tree_cpu(child.id()) else { break };
            childs = now;
            tree = tree_cpu(std::process::id()).expect("this process");
        }
        let _ = child.kill();
        let _ = child.wait();
        assert!(!childs.is_zero(), "the child's CPU time was read while it ran");
        assert!(tree >= childs, "this process's tree ({tree:?}) includes its child's {childs:?}");
        assert!(tree_cpu(u32::MAX).is_none(), "no such process");
    }
}
