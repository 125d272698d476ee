//! A population of clients as an edge holds them, made through the
//! library's own APIs rather than through SIP (a million first contacts
//! would take longer than the benchmark): assignments in a redb store on
//! disk, and each client learned on the fast path (the kernel's CLIENTS
//! map, and the daemon's record of what it installed).

use std::{
    path::PathBuf,
    time::{Duration, Instant},
};

use redirector::{
    kernel::{fast_path::FastPath, loader::DataPlane},
    model::Origin,
    sip::Aor,
    store::{AssignmentStore, RedbStore},
};
pub use redirector_tests::population::{SERVERS, aor, client, config, service};

/// dsr: a client is one CLIENTS entry (nat would add a reply entry and an
/// edge port, of which there are 64,512).
const MODE: &str = "dsr";

pub struct Population {
    pub count: u32,
    pub store: RedbStore,
    pub fast_path: FastPath,
    pub database: PathBuf,
    /// Committing every first assignment in one transaction.
    pub seed_store: Duration,
    /// Putting every client on the fast path, one map update each.
    pub seed_kernel: Duration,
}

impl Population {
    /// `count` clients, all on `SERVERS[0]`.
    pub fn seed(count: u32) -> Self {
        let database = std::env::temp_dir().join(format!("redirector-bench-{}-{count}.redb", std::process::id()));
        let _ = std::fs::remove_file(&database);
        let store = RedbStore::open(&database).expect("opening the bench database");
        let config = config(MODE);
        let mut dataplane = DataPlane::load().expect("loading the XDP object (root needed)");
        dataplane.configure(&config).expect("configuring maps");
        let mut fast_path = FastPath::new(dataplane, &config).expect("fast path");
        let aors: Vec<Aor> = (0..count).map(aor).collect();

        let start = Instant::now();
        let first: Vec<(&Aor, &str)> = aors.iter().map(|a| (a, SERVERS[0])).collect();
        store.reassign_many(&first, None).expect("seeding the store");
        let seed_store = start.elapsed();

        let start = Instant::now();
        for (i, aor) in aors.iter().enumerate() {
            let origin = Origin { client: client(i as u32), service: service(), asks_rport: true };
            fast_path.install(aor, origin, 0).expect("installing a client");
        }
        let seed_kernel = start.elapsed();
        Self { count, store, fast_path, database, seed_store, seed_kernel }
    }
}

impl Drop for Population {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.database);
    }
}
