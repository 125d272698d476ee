//! The etcd store as two edges use it, against a real etcd (Debian's
//! etcd-server) on loopback: one assignment when two edges see a new AOR
//! at once, every commit followed by the other edge, a reload after
//! compaction, one leader at a time, and a clear, quick failure when etcd
//! is gone.

use std::{
    net::{Ipv4Addr, TcpListener},
    os::unix::process::CommandExt,
    process::{Child, Command, Stdio},
    sync::{Barrier, Mutex, mpsc},
    time::{Duration, Instant},
};

use redirector::{
    sip::Aor,
    store::{
        Assignment, AssignmentStore, EtcdSettings, EtcdStore, RedbStore, ReplicaMark, StoreEvent, StoredPool, Term,
    },
};
use redirector_tests::topology::{kill_group, tempdir};

/// One etcd member on loopback, killed with its process group on drop.
struct Etcd {
    child: Child,
    endpoint: String,
    peer_url: String,
    data: tempdir::Dir,
}

impl Etcd {
    fn start() -> Self {
        let data = tempdir::Dir::new();
        let (client, peer) = (free_port(), free_port());
        let endpoint = format!("http://127.0.0.1:{client}");
        let peer_url = format!("http://127.0.0.1:{peer}");
        let child = spawn_etcd(&endpoint, &peer_url, &data);
        let etcd = Self { child, endpoint, peer_url, data };
        etcd.wait_ready();
        etcd
    }

    /// Starts the member again on its data, after `kill_group`.
    fn restart(&mut self) {
        self.child = spawn_etcd(&self.endpoint, &self.peer_url, &self.data);
        self.wait_ready();
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if EtcdStore::connect(&self.settings("/ready/", "probe")).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("etcd at {} did not answer within 20 s", self.endpoint);
    }

    fn settings(&self, prefix: &str, edge: &str) -> EtcdSettings {
        EtcdSettings {
            endpoints: vec![self.endpoint.clone()],
            prefix: prefix.into(),
            edge: edge.into(),
            user: None,
            tls: None,
            timeout: Duration::from_secs(2),
            replica: None,
            max_txn_ops: redirector::store::MAX_TXN_OPS,
        }
    }

    /// An edge that keeps its local replica in `replica`.
    fn store_with_replica(&self, prefix: &str, edge: &str, replica: &std::path::Path) -> EtcdStore {
        let settings = EtcdSettings { replica: Some(replica.to_owned()), ..self.settings(prefix, edge) };
        EtcdStore::connect(&settings).expect("connecting to etcd")
    }

    /// The store's current revision.
    fn revision(&self) -> i64 {
        let status = self.etcdctl(&["endpoint", "status", "--write-out", "json"]);
        let status: serde_json::Value = serde_json::from_str(&status).unwrap();
        status[0]["Status"]["header"]["revision"].as_i64().unwrap()
    }

    fn store(&self, prefix: &str, edge: &str) -> EtcdStore {
        EtcdStore::connect(&self.settings(prefix, edge)).expect("connecting to etcd")
    }

    fn etcdctl(&self, args: &[&str]) -> String {
        let out = Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .args(["--endpoints", &self.endpoint])
            .args(args)
            .output()
            .expect("running etcdctl (Debian's etcd-client)");
        assert!(out.status.success(), "etcdctl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

fn spawn_etcd(endpoint: &str, peer_url: &str, data: &tempdir::Dir) -> Child {
    Command::new("etcd")
        .args(["--name", "solo", "--data-dir"])
        .arg(data.path())
        .args(["--listen-client-urls", endpoint, "--advertise-client-urls", endpoint])
        .args(["--listen-peer-urls", peer_url, "--initial-advertise-peer-urls", peer_url])
        .args(["--initial-cluster", &format!("solo={peer_url}")])
        .args(["--log-level", "error"])
        .process_group(0)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("starting etcd (Debian's etcd-server: `cargo xtask setup` installs it)")
}

impl Drop for Etcd {
    fn drop(&mut self) {
        kill_group(&mut self.child);
    }
}

fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap().local_addr().unwrap().port()
}

fn aor(user: &str) -> Aor {
    Aor::from_uri(&format!("sip:{user}@example.net"), "To").unwrap()
}

/// Assigns `aor` to `server` unless it has an assignment: the first
/// contact's rule. Returns the stored assignment and how often `change`
/// was called.
fn assign_new(store: &EtcdStore, aor: &Aor, server: &str) -> (Assignment, usize) {
    let mut calls = 0;
    let stored = store
        .update(aor, &mut |current| {
            calls += 1;
            current.is_none().then(|| Assignment::new(aor.clone(), server.into()))
        })
        .expect("assigning");
    (stored.expect("an assignment"), calls)
}

/// Collects what a store's watch delivers.
fn follower(store: &EtcdStore) -> mpsc::Receiver<StoreEvent> {
    let (sender, events) = mpsc::channel();
    let sender = Mutex::new(sender);
    store
        .follow(Box::new(move |batch| {
            let sender = sender.lock().unwrap();
            batch.into_iter().for_each(|event| drop(sender.send(event)));
        }))
        .unwrap();
    events
}

fn next(events: &mpsc::Receiver<StoreEvent>) -> StoreEvent {
    events.recv_timeout(Duration::from_secs(5)).expect("a followed change within 5 s")
}

#[test]
fn two_edges_seeing_one_new_aor_at_once_end_with_one_assignment() {
    let etcd = Etcd::start();
    let (a, b) = (etcd.store("/race/", "a"), etcd.store("/race/", "b"));
    let aors: Vec<Aor> = (0..40).map(|n| aor(&format!("race{n}"))).collect();
    let start = Barrier::new(2);
    let run = |store: &EtcdStore, server: &str| {
        start.wait();
        aors.iter().map(|aor| assign_new(store, aor, server)).collect::<Vec<_>>()
    };
    let (results_a, results_b) = std::thread::scope(|scope| {
        let a = scope.spawn(|| run(&a, "home1"));
        let b = scope.spawn(|| run(&b, "home2"));
        (a.join().unwrap(), b.join().unwrap())
    });
    for ((from_a, _), (from_b, _)) in results_a.iter().zip(&results_b) {
        assert_eq!(from_a.server, from_b.server, "{}: both edges answer the same home", from_a.aor);
        assert_eq!(from_a.generation, 1);
    }
    let stored = a.all().unwrap();
    assert_eq!(stored.len(), aors.len(), "one assignment per AOR");
    // The batch API: one transaction of many, and a loser adopts.
    let refs: Vec<&Aor> = aors.iter().collect();
    let mut decided = 0;
    let again = b
        .update_many(&refs, None, &mut |_, current| {
            decided += 1;
            current.is_none().then(|| unreachable!("every AOR is assigned"))
        })
        .unwrap();
    assert_eq!(decided, aors.len());
    let mut again: Vec<Assignment> = again.into_iter().flatten().collect();
    again.sort_by(|x, y| x.aor.cmp(&y.aor));
    assert_eq!(again, stored, "read back in one batch as stored");
}

#[test]
fn a_losing_edge_decides_again_with_the_winners_assignment() {
    let etcd = Etcd::start();
    let (a, b) = (etcd.store("/adopt/", "a"), etcd.store("/adopt/", "b"));
    let alice = aor("alice");
    // b reads alice as absent, then a assigns her before b writes.
    let mut calls = Vec::new();
    let stored = b
        .update(&alice, &mut |current| {
            calls.push(current.map(|c| c.server.clone()));
            if calls.len() == 1 {
                assign_new(&a, &alice, "home1");
            }
            current.is_none().then(|| Assignment::new(alice.clone(), "home2".into()))
        })
        .unwrap();
    assert_eq!(calls, [None, Some("home1".to_owned())], "decided again with the winner's assignment");
    assert_eq!(stored.unwrap().server, "home1", "the loser adopts the winner's home");
    assert_eq!(a.get(&alice).unwrap().unwrap().server, "home1");
}

#[test]
fn an_aor_believed_new_is_written_unread_and_decided_again_if_it_was_not() {
    let etcd = Etcd::start();
    let (a, b) = (etcd.store("/hint/", "a"), etcd.store("/hint/", "b"));
    let (erin, fred) = (aor("erin"), aor("fred"));
    assign_new(&a, &erin, "home1");
    assign_new(&a, &fred, "home1");
    let believed_new = |_: &Aor| true;
    // Erin is written unread, the write finds her key, she is decided again.
    let mut seen = Vec::new();
    let stored = b
        .create_many(&[&erin], &believed_new, &mut |_, current| {
            seen.push(current.map(|c| c.server.clone()));
            Some(Assignment::new(erin.clone(), "home2".into())).filter(|_| current.is_none())
        })
        .unwrap();
    assert_eq!(seen, [None, Some("home1".to_owned())]);
    assert_eq!(stored[0].as_ref().unwrap().server, "home1", "the existing assignment holds");
    // Fred is refused unread; a read finds him assigned after all.
    let mut calls = 0;
    let stored = b
        .create_many(&[&fred], &believed_new, &mut |_, _| {
            calls += 1;
            None
        })
        .unwrap();
    assert_eq!((calls, stored[0].as_ref().map(|a| a.server.as_str())), (2, Some("home1")));
    // A new one takes one write.
    let gina = aor("gina");
    let stored =
        b.create_many(&[&gina], &believed_new, &mut |_, _| Some(Assignment::new(gina.clone(), "home3".into())));
    assert_eq!(stored.unwrap()[0].as_ref().unwrap().server, "home3");
    assert_eq!(a.get(&gina).unwrap().unwrap().server, "home3");
}

#[test]
fn every_commit_reaches_the_other_edge_in_order() {
    let etcd = Etcd::start();
    let (a, b) = (etcd.store("/follow/", "a"), etcd.store("/follow/", "b"));
    assign_new(&a, &aor("before"), "home1");
    b.all().unwrap();
    let events = follower(&b);
    let (bob, carol) = (aor("bob"), aor("carol"));
    assign_new(&a, &bob, "home1");
    match next(&events) {
        StoreEvent::Assigned(followed) => {
            assert_eq!((followed.aor, followed.server, followed.generation), (bob.clone(), "home1".into(), 1))
        }
        other => panic!("expected bob's assignment, got {other:?}"),
    }
    a.reassign_many(&[(&bob, "home2")], None).unwrap();
    match next(&events) {
        StoreEvent::Assigned(moved) => assert_eq!((moved.server, moved.generation), ("home2".into(), 2)),
        other => panic!("expected bob's move, got {other:?}"),
    }
    assign_new(&a, &carol, "home2");
    a.expire(&[&carol], &[(&bob, 42)], None).unwrap();
    let mut rest: Vec<StoreEvent> = (0..3).map(|_| next(&events)).collect();
    rest.retain(|event| !matches!(event, StoreEvent::Assigned(_)));
    assert!(rest.contains(&StoreEvent::Removed(carol.clone())), "{rest:?}");
    assert!(rest.contains(&StoreEvent::Seen(bob.clone(), 42)), "{rest:?}");
    let pool = StoredPool { next_slot: 3, ..StoredPool::default() };
    a.save_pool(&pool, None).unwrap();
    assert_eq!(next(&events), StoreEvent::Pool(pool));
}

/// More than one page (10,000 keys a read), with a sighting kept.
#[test]
fn an_edge_behind_a_compaction_reloads_everything_a_page_at_a_time_with_sightings() {
    let etcd = Etcd::start();
    let (a, b) = (etcd.store("/compact/", "a"), etcd.store("/compact/", "b"));
    b.all().unwrap();
    let aors: Vec<Aor> = (0..10_050).map(|n| aor(&format!("c{n}"))).collect();
    let wanted: Vec<&Aor> = aors.iter().collect();
    a.create_many(&wanted, &|_| true, &mut |aor, _| Some(Assignment::new(aor.clone(), "home1".into()))).unwrap();
    a.expire(&[], &[(&aors[7], 42)], None).unwrap();
    etcd.etcdctl(&["compact", &etcd.revision().to_string()]);
    let events = follower(&b);
    match next(&events) {
        StoreEvent::Reloaded(all) => {
            assert_eq!(all.len(), aors.len(), "every assignment as it is now");
            let seen = all.iter().find(|assignment| assignment.aor == aors[7]).map(|assignment| assignment.last_seen);
            assert_eq!(seen, Some(42), "read with its sighting");
        }
        other => panic!("expected a reload, got {other:?}"),
    }
}

#[test]
fn one_edge_leads_and_another_takes_over_when_it_dies() {
    let etcd = Etcd::start();
    let (leads, told) = mpsc::channel();
    let campaign = |edge: &'static str| {
        let store = etcd.store("/lead/", edge);
        let leads = Mutex::new(leads.clone());
        store
            .lead(Box::new(move |leading| {
                let _ = leads.lock().unwrap().send((edge, leading));
            }))
            .unwrap();
        store
    };
    let (a, b) = (campaign("a"), campaign("b"));
    let (first, leading) = told.recv_timeout(Duration::from_secs(10)).expect("a leader within 10 s");
    assert!(leading.is_some());
    assert!(told.recv_timeout(Duration::from_secs(1)).is_err(), "only one edge leads");
    let lost = Instant::now();
    // The leader dies: its runtime, and so its lease's keep-alive, ends.
    drop(if first == "a" { a } else { b });
    let (second, leading) = told.recv_timeout(Duration::from_secs(10)).expect("another leader within 10 s");
    assert!(leading.is_some() && second != first, "{second} takes over from {first}");
    let bound = Duration::from_secs(redirector::store::LEADER_LEASE as u64 + 2);
    assert!(lost.elapsed() <= bound, "took over in {:?}, more than the lease and 2 s", lost.elapsed());
}

/// Campaigns for `store`'s edge; what its campaign tells, in order.
fn campaign(store: &EtcdStore) -> mpsc::Receiver<Option<Term>> {
    let (sender, told) = mpsc::channel();
    let sender = Mutex::new(sender);
    store.lead(Box::new(move |term| drop(sender.lock().unwrap().send(term)))).unwrap();
    told
}

/// The leases of the election keys under `election`, oldest candidate first.
fn election_leases(etcd: &Etcd, election: &str) -> Vec<i64> {
    let json = etcd.etcdctl(&["get", election, "--prefix", "--write-out", "json"]);
    let answer: serde_json::Value = serde_json::from_str(&json).unwrap();
    let mut keys: Vec<(i64, i64)> = answer["kvs"]
        .as_array()
        .map(|kvs| kvs.iter().map(|kv| (kv["create_revision"].as_i64().unwrap(), kv["lease"].as_i64().unwrap())))
        .into_iter()
        .flatten()
        .collect();
    keys.sort_unstable();
    keys.into_iter().map(|(_, lease)| lease).collect()
}

/// A leader deposed without knowing it yet (its lease revoked here; in
/// life, paused, cut off or slow while the lease ran out) commits none of
/// the decisions it made in its term once another edge leads: each write
/// is refused naming etcd and the leadership, and counted. The new
/// leader's are made.
#[test]
fn a_deposed_leader_commits_no_decision_and_the_new_one_does() {
    let etcd = Etcd::start();
    let (a, b) = (etcd.store("/fence/", "a"), etcd.store("/fence/", "b"));
    let bob = aor("bob");
    assign_new(&a, &bob, "home1");
    let a_told = campaign(&a);
    let a_term = a_told.recv_timeout(Duration::from_secs(10)).expect("a leads within 10 s").expect("a term");
    let [a_lease] = election_leases(&etcd, "/fence/leader")[..] else { panic!("a's election key alone") };
    let b_told = campaign(&b);
    etcd.etcdctl(&["lease", "revoke", &format!("{a_lease:x}")]);
    let b_term = b_told.recv_timeout(Duration::from_secs(10)).expect("b leads within 10 s").expect("b's term");
    assert_ne!(a_term, b_term);

    // a decided these in its term: a failover's move, the verdict's save,
    // an expiry.
    let refused = a.reassign_many(&[(&bob, "home2")], Some(&a_term)).expect_err("a no longer leads");
    assert!(refused.is_deposed(), "{refused}");
    let message = refused.to_string();
    assert!(message.contains("etcd at") && message.contains("no longer leads"), "names etcd and why: {message}");
    assert_eq!(a.get(&bob).unwrap().unwrap().server, "home1", "a's move is not committed");
    let pool = StoredPool { next_slot: 7, ..StoredPool::default() };
    assert!(a.save_pool(&pool, Some(&a_term)).is_err_and(|e| e.is_deposed()));
    assert!(a.expire(&[&bob], &[], Some(&a_term)).is_err_and(|e| e.is_deposed()));
    assert_eq!(a.pool().unwrap(), None, "a's verdict is not saved");
    assert_eq!(counter(&a, "deposed_writes"), 3);
    let stepped_down = a_told.recv_timeout(Duration::from_secs(5)).expect("a is told within 5 s");
    assert_eq!(stepped_down, None, "a's campaign ends its term");

    let moved = b.reassign_many(&[(&bob, "home2")], Some(&b_term)).unwrap();
    assert_eq!((moved[0].previous.as_deref(), moved[0].generation), (Some("home1"), 2));
    b.save_pool(&pool, Some(&b_term)).unwrap();
    // A failover of more clients than one transaction's compares: the
    // fence's compare fits beside theirs.
    let many: Vec<Aor> = (0..300).map(|n| aor(&format!("f{n}"))).collect();
    let refs: Vec<&Aor> = many.iter().collect();
    b.create_many(&refs, &|_| true, &mut |aor, _| Some(Assignment::new(aor.clone(), "home1".into()))).unwrap();
    let moves: Vec<(&Aor, &str)> = many.iter().map(|aor| (aor, "home3")).collect();
    let moved = b.reassign_many(&moves, Some(&b_term)).unwrap();
    assert!(moved.iter().all(|m| m.generation == 2), "every client moved");
    assert_eq!(a.get(&bob).unwrap().unwrap().server, "home2", "the new leader's move is made");
    assert_eq!(a.pool().unwrap(), Some(pool));
    assert_eq!(counter(&b, "deposed_writes"), 0);
}

#[test]
fn an_edge_whose_transactions_the_members_refuse_for_their_size_does_not_start() {
    let etcd = Etcd::start();
    let settings = EtcdSettings { max_txn_ops: 1024, ..etcd.settings("/size/", "a") };
    let error = EtcdStore::connect(&settings).err().expect("the member takes 128 operations a transaction");
    let message = error.to_string();
    assert!(message.contains("--max-txn-ops 1024") && message.contains("max_txn_ops"), "says what to do: {message}");
}

#[test]
fn with_etcd_gone_a_write_fails_quickly_naming_it() {
    let mut etcd = Etcd::start();
    let store = etcd.store("/gone/", "a");
    kill_group(&mut etcd.child);
    let started = Instant::now();
    let error = store
        .update(&aor("dave"), &mut |_| Some(Assignment::new(aor("dave"), "home1".into())))
        .expect_err("etcd is gone");
    assert!(error.is_unavailable(), "{error}");
    assert!(error.to_string().contains(&etcd.endpoint), "names the endpoint: {error}");
    assert!(started.elapsed() < Duration::from_secs(5), "within the timeout: {:?}", started.elapsed());
    // The next request does not wait for the timeout again.
    let again = store.get(&aor("dave")).expect_err("etcd is still gone");
    assert!(again.is_unavailable() && again.to_string().contains("not tried"), "{again}");
}

/// Waits until a dropped edge's replica writer has written everything
/// queued and closed the file, then reads where the replica stands.
fn replica_mark_after_drop(path: &std::path::Path) -> ReplicaMark {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match RedbStore::open_existing(path) {
            Ok(copy) => return copy.replica_mark().unwrap().expect("the replica is marked"),
            Err(error) if Instant::now() < deadline => {
                drop(error);
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(error) => panic!("the replica {} stays open after its edge is gone: {error}", path.display()),
        }
    }
}

fn counter(store: &EtcdStore, name: &str) -> u64 {
    store.counters().into_iter().find(|(n, _)| *n == name).map(|(_, v)| v).expect(name)
}

#[test]
fn a_restarted_edge_resumes_from_its_replica_and_reads_only_what_changed() {
    let etcd = Etcd::start();
    let dir = tempdir::Dir::new();
    let replica = dir.path().join("replica.redb");
    let a = etcd.store("/resume/", "a");
    let b = etcd.store_with_replica("/resume/", "b", &replica);
    assert!(b.load().unwrap().is_empty());
    assert_eq!(counter(&b, "resumes"), 0, "a first start reads everything");
    let events = follower(&b);
    // b's own pool save reaches its replica too (its watch delivers it to
    // the replica only), before the assignments that follow it.
    b.pool().unwrap();
    let pool = StoredPool { next_slot: 5, ..StoredPool::default() };
    b.save_pool(&pool, None).unwrap();
    for n in 1..=3 {
        assign_new(&a, &aor(&format!("r{n}")), "home1");
        next(&events);
    }
    let followed = etcd.revision();
    drop(b);
    assert_eq!(replica_mark_after_drop(&replica).revision, followed, "the replica holds every followed change");
    let copy = RedbStore::open_existing(&replica).unwrap();
    assert_eq!(copy.pool().unwrap(), Some(pool), "the edge's own pool save is in its replica");
    drop(copy);

    // While b is down: one move, one new client.
    a.reassign_many(&[(&aor("r1"), "home2")], None).unwrap();
    assign_new(&a, &aor("r4"), "home2");
    let b = etcd.store_with_replica("/resume/", "b", &replica);
    let loaded = b.load().unwrap();
    assert_eq!(counter(&b, "resumes"), 1, "resumed from the replica");
    assert_eq!(loaded.len(), 3, "the replica's assignments: {loaded:?}");
    let events = follower(&b);
    let caught_up = [next(&events), next(&events)];
    let servers: Vec<(Aor, String)> = caught_up
        .iter()
        .map(|event| match event {
            StoreEvent::Assigned(a) => (a.aor.clone(), a.server.clone()),
            other => panic!("only what changed while b was down, got {other:?}"),
        })
        .collect();
    assert_eq!(servers, [(aor("r1"), "home2".into()), (aor("r4"), "home2".into())]);
    assert!(events.recv_timeout(Duration::from_millis(500)).is_err(), "nothing else is delivered");
    assert_eq!(counter(&b, "reloads"), 0);

    // History compacted while b is down: b resumes, and its watch reloads.
    let followed = etcd.revision();
    drop(b);
    assert_eq!(replica_mark_after_drop(&replica).revision, followed);
    assign_new(&a, &aor("r5"), "home1");
    // Compacting at the newest revision keeps it: r6's write takes away
    // the revision after the replica's mark (r5's).
    assign_new(&a, &aor("r6"), "home1");
    etcd.etcdctl(&["compact", &etcd.revision().to_string()]);
    let b = etcd.store_with_replica("/resume/", "b", &replica);
    assert_eq!(b.load().unwrap().len(), 4);
    let events = follower(&b);
    match next(&events) {
        StoreEvent::Reloaded(all) => assert_eq!(all.len(), 6, "every assignment as it is now"),
        other => panic!("expected a reload, got {other:?}"),
    }
    assert_eq!(counter(&b, "reloads"), 1);
}

#[test]
fn an_edge_starts_from_its_replica_while_etcd_is_out_of_reach_and_catches_up() {
    let mut etcd = Etcd::start();
    let dir = tempdir::Dir::new();
    let replica = dir.path().join("replica.redb");
    let b = etcd.store_with_replica("/offline/", "b", &replica);
    b.load().unwrap();
    let events = follower(&b);
    assign_new(&etcd.store("/offline/", "a"), &aor("known"), "home1");
    next(&events);
    drop(b);
    replica_mark_after_drop(&replica);

    kill_group(&mut etcd.child);
    let without = EtcdStore::connect(&etcd.settings("/offline/", "c")).err().expect("no replica, no start");
    assert!(without.is_unavailable(), "{without}");
    let b = etcd.store_with_replica("/offline/", "b", &replica);
    let loaded = b.load().unwrap();
    assert_eq!(loaded.iter().map(|a| (&a.aor, a.server.as_str())).collect::<Vec<_>>(), [(&aor("known"), "home1")]);
    let events = follower(&b);
    let refused = assign_new_result(&b, &aor("newcomer"));
    assert!(refused.is_err_and(|error| error.is_unavailable()), "a new client waits for etcd");

    etcd.restart();
    assign_new(&etcd.store("/offline/", "a"), &aor("later"), "home2");
    let deadline = Instant::now() + Duration::from_secs(15);
    let caught_up = loop {
        match events.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(StoreEvent::Assigned(a)) if a.aor == aor("later") => break a,
            Ok(_) => continue,
            Err(_) => panic!("b did not catch up within 15 s of etcd's return"),
        }
    };
    assert_eq!(caught_up.server, "home2");
    let deadline = Instant::now() + Duration::from_secs(10);
    while assign_new_result(&b, &aor("newcomer")).is_err() {
        assert!(Instant::now() < deadline, "b writes again within 10 s of etcd's return");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn assign_new_result(store: &EtcdStore, aor: &Aor) -> Result<Option<Assignment>, redirector::store::StoreError> {
    store.update(aor, &mut |current| current.is_none().then(|| Assignment::new(aor.clone(), "home1".into())))
}
