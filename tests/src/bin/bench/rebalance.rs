//! Section 4b: time to reassign every client of a home server to another,
//! database and kernel map, batched, for 100,000 and 1,000,000 clients
//! (`--quick`: 100,000 only). A move keeps the daemon's order: all
//! assignments committed in one durable transaction (`reassign_many`) while
//! a second thread plans the kernel entries (`plan_repoint`), then every
//! client's kernel entry repointed at the new server in place (`repoint`:
//! one `BPF_MAP_UPDATE_BATCH`), as the daemon's moves are.
//!
//! Baseline: seeding the same clients in the same run (first assignments
//! in one transaction into an empty store, one map update each). Also
//! shown: a sample moved one transaction per client, the way
//! `redirector drain` and failover move clients today, extrapolated.
//!
//! The largest population is also the one section 5 (memory) measures.

use std::time::{Duration, Instant};

use redirector::store::{Assignment, AssignmentStore};

use crate::{
    memory,
    population::{Population, SERVERS, aor, client},
    report::{Row, Section},
};

/// Clients moved one transaction each, to extrapolate from.
const UNBATCHED_SAMPLE: u32 = 500;

struct Moved {
    /// The commit and the plan, side by side.
    overlapped: Duration,
    store: Duration,
    plan: Duration,
    write: Duration,
}

/// Moves every client from `SERVERS[0]` to `SERVERS[1]`.
fn move_all(population: &mut Population) -> Moved {
    let aors: Vec<_> = (0..population.count).map(aor).collect();
    let moves: Vec<_> = aors.iter().map(|a| (a, SERVERS[1])).collect();
    let targets: Vec<_> = aors.iter().map(|aor| (aor, 1)).collect();
    let (fast_path, store) = (&mut population.fast_path, &population.store);

    let start = Instant::now();
    let ((reassigned, store), (plan, planning)) = std::thread::scope(|scope| {
        let planning = scope.spawn(|| timed(|| fast_path.plan_repoint(&targets)));
        let committed = timed(|| store.reassign_many(&moves, None).expect("committing the moves"));
        (committed, planning.join().expect("planning"))
    });
    let overlapped = start.elapsed();
    assert!(reassigned.iter().all(|r| r.generation == 2), "every client moved exactly once");

    let start = Instant::now();
    fast_path.repoint(plan, |_| true).expect("repointing");
    Moved { overlapped, store, plan: planning, write: start.elapsed() }
}

fn timed<T>(work: impl FnOnce() -> T) -> (T, Duration) {
    let start = Instant::now();
    (work(), start.elapsed())
}

/// Spot checks that the database and the kernel agree on the move.
fn check_moved(population: &mut Population) {
    for i in (0..population.count).step_by((population.count as usize / 100).max(1)) {
        let stored = population.store.get(&aor(i)).expect("reading").expect("assigned");
        assert_eq!((stored.server.as_str(), stored.generation), (SERVERS[1], 2), "client {i} in the database");
        let endpoint = redirector::kernel::loader::endpoint(client(i).ip(), client(i).port());
        let entry = population.fast_path.dataplane().client(endpoint).expect("reading the map");
        assert_eq!(entry.map(|e| e.server), Some(1), "client {i} in the kernel (evicted by the LRU?)");
    }
}

/// Seconds per client moved the unbatched way: one durable transaction
/// each (the kernel map update is the same as batched).
fn unbatched_store_seconds_per_client(population: &Population) -> f64 {
    let start = Instant::now();
    for i in 0..UNBATCHED_SAMPLE {
        let aor = aor(i);
        population
            .store
            .update(&aor, &mut |current| {
                let generation = current.map_or(0, |a| a.generation) + 1;
                Some(Assignment { generation, ..Assignment::new(aor.clone(), SERVERS[0].into()) })
            })
            .expect("moving back");
    }
    start.elapsed().as_secs_f64() / f64::from(UNBATCHED_SAMPLE)
}

pub fn run(quick: bool) -> Vec<Section> {
    let counts: &[u32] = if quick { &[100_000] } else { &[100_000, 1_000_000] };
    let mut section = Section::new("rebalance", "4b. Reassigning every client of a server: database + kernel map");
    let mut memory = None;
    for &count in counts {
        let rss_before = memory::rss_bytes();
        let mut population = Population::seed(count);
        if count == *counts.last().unwrap() {
            memory = Some(memory::measure(&population, rss_before));
        }
        let seeded = population.seed_store + population.seed_kernel;
        let baseline = format!("seed {count}");
        section.rows.push(
            Row::new(&baseline, seeded.as_secs_f64(), "s")
                .against(&baseline, seeded.as_secs_f64())
                .raw("store_s", population.seed_store.as_secs_f64())
                .raw("kernel_s", population.seed_kernel.as_secs_f64()),
        );
        let moved = move_all(&mut population);
        check_moved(&mut population);
        let total = (moved.overlapped + moved.write).as_secs_f64();
        section.rows.push(
            Row::new(format!("move {count}, batched"), total, "s")
                .against(&baseline, seeded.as_secs_f64())
                .raw("store_s", moved.store.as_secs_f64())
                .raw("kernel_plan_s", moved.plan.as_secs_f64())
                .raw("kernel_write_s", moved.write.as_secs_f64())
                .raw("clients_per_s", f64::from(count) / total),
        );
        let per_client = unbatched_store_seconds_per_client(&population);
        let extrapolated = per_client * f64::from(count) + (moved.plan + moved.write).as_secs_f64();
        section.rows.push(
            Row::new(format!("move {count}, one txn per client (extrapolated)"), extrapolated, "s")
                .against(&baseline, seeded.as_secs_f64())
                .raw("sampled_clients", f64::from(UNBATCHED_SAMPLE))
                .raw("store_us_per_client", per_client * 1e6),
        );
    }
    section.notes.push("ratio: seconds over seeding the same clients in the same run".into());
    let mut sections = vec![section];
    sections.extend(memory);
    sections
}
