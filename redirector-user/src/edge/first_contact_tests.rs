use std::{
    cell::{Ref, RefCell},
    net::SocketAddr,
    sync::{Arc, atomic::Ordering},
    time::Duration,
};

use super::*;
use crate::{
    edge::{
        admission::{Admission, Limits},
        assignments::Assignments as Owned,
        pool,
    },
    store::{Assignment, AssignmentStore, Reassigned, RedbStore, Term},
};

const CLIENT: &str = "203.0.113.7:5062";
const PROXY: &str = "198.51.100.1:5060";
const PROXY6: &str = "[2001:db8::1]:5060";
const SERVICE: &str = "192.0.2.10:5060";

struct Setup {
    fc: Harness,
    _dir: TempDir,
}

/// First contact and the owner's assignments in one thread, as the daemon
/// drives them across two: a batch is read, its new clients assigned in
/// one transaction, then answered.
struct Harness {
    core: FirstContact,
    pool: PoolView,
    assignments: RefCell<Owned>,
    counters: Arc<Counters>,
    /// Clients moved off an unusable server by the last batch.
    moved: RefCell<Vec<Aor>>,
    /// New clients the owner put on the fast path with their assignment,
    /// with their server slot.
    installed: RefCell<Vec<(Aor, SocketAddr, u32)>>,
    admission: RefCell<Admission>,
    /// The kernel's client entries as first contact reads them (the
    /// tests write them as `FastPath` would).
    kernel: Arc<InstalledClients>,
    /// Upstream proxies the owner wrote to `PROXIES` (`Action::RecordProxy`).
    proxies: RefCell<Vec<std::net::IpAddr>>,
}

/// Limits no test but the one about them reaches.
const GENEROUS: Limits = Limits {
    per_prefix: 1000.0,
    burst: 1000.0,
    max_assignments: 1_000_000,
    throttle_for: Duration::ZERO,
    throttled_datagrams: 0,
};

impl Harness {
    fn new(settings: Settings, servers: Vec<HomeServer>, store: Box<dyn AssignmentStore>) -> Self {
        let counters = Arc::new(Counters::default());
        let assignments = Owned::open(store, counters.clone(), 1).unwrap();
        let pool = pool::view(Pool::new(servers));
        let kernel = Arc::new(InstalledClients::default());
        let core = FirstContact::new(settings, pool.clone(), assignments.cache(), kernel.clone(), counters.clone());
        let (assignments, admission) = (RefCell::new(assignments), RefCell::new(Admission::new(GENEROUS)));
        let (moved, installed) = (RefCell::default(), RefCell::default());
        let proxies = RefCell::default();
        Self { core, pool, assignments, counters, moved, installed, admission, kernel, proxies }
    }

    fn on_service_datagram(&self, datagram: &[u8], source: SocketAddr, local: SocketAddr) -> Vec<Action> {
        self.batch(&[(datagram, source)], local)
    }

    fn batch(&self, datagrams: &[(&[u8], SocketAddr)], local: SocketAddr) -> Vec<Action> {
        let read = self.core.read(datagrams.iter().copied(), local);
        let unassigned = read.unassigned();
        let refs: Vec<&Aor> = unassigned.iter().map(|c| &c.aor).collect();
        let now = std::time::Instant::now();
        let source = |aor: &Aor| unassigned.iter().find(|c| &c.aor == aor).expect("asked for").source;
        let mut admit = |aor: &Aor, held| self.admission.borrow_mut().admit(source(aor), true, held, now);
        let cookie_home = |aor: &Aor| unassigned.iter().find(|c| &c.aor == aor).and_then(|c| c.cookie_home.clone());
        let results = self.assignments.borrow_mut().assign_all(&refs, &self.pool.load(), &mut admit, &cookie_home);
        let assigned = results.map(|results| {
            let pairs = unassigned.iter().zip(results).map(|(c, result)| (c.aor.clone(), result));
            pairs.collect::<HashMap<Aor, Result<Assigned, Refused>>>()
        });
        *self.moved.borrow_mut() = assigned
            .iter()
            .flatten()
            .filter(|(_, a)| a.as_ref().is_ok_and(|a| a.moved))
            .map(|(aor, _)| aor.clone())
            .collect();
        self.install(&unassigned, assigned.as_ref().ok());
        let actions = self.core.answer(read, assigned.as_ref());
        self.record_proxies(actions)
    }

    /// The owner's part of `Action::RecordProxy`, as `FastPath::record_proxy`
    /// does it: the proxy is written and first contact told so; the other
    /// actions are returned.
    fn record_proxies(&self, actions: Vec<Action>) -> Vec<Action> {
        let (records, others): (Vec<Action>, Vec<Action>) =
            actions.into_iter().partition(|action| matches!(action, Action::RecordProxy { .. }));
        for record in records {
            let Action::RecordProxy { source } = record else { continue };
            let now = std::time::Instant::now();
            if self.kernel.proxy_unwritten(source, now) {
                self.kernel.proxy_written(source, now);
                self.proxies.borrow_mut().push(source);
            }
        }
        others
    }

    /// The owner's part: new clients straight from their client go on the
    /// fast path with their assignment, unless their home is down.
    fn install(&self, clients: &[NewClient], assigned: Option<&HashMap<Aor, Result<Assigned, Refused>>>) {
        let pool = self.pool.load();
        for client in clients {
            let Some(Ok(done)) = assigned.and_then(|a| a.get(&client.aor)) else { continue };
            let Some(home) = pool.server(&done.assignment.server) else { continue };
            if home.effective_state() != ServerState::Down {
                let installs = client.installs.iter().map(|origin| (client.aor.clone(), origin.client, home.index));
                self.installed.borrow_mut().extend(installs);
            }
        }
    }

    fn on_proxy_datagram(&self, datagram: &[u8], source: SocketAddr) -> Vec<Action> {
        self.core.on_proxy_datagram(datagram, source)
    }

    fn store(&self) -> Ref<'_, dyn AssignmentStore + 'static> {
        Ref::map(self.assignments.borrow(), |owned| owned.store())
    }

    fn client_counts(&self) -> HashMap<String, u64> {
        self.assignments.borrow().client_counts()
    }

    fn server(&self, name: &str) -> Option<HomeServer> {
        self.pool.load().server(name).cloned()
    }

    fn set_health(&self, index: u32, healthy: bool) {
        let (next, _) = self.pool.load().changed(|s| s.index == index, |s| s.healthy = healthy).unwrap();
        self.pool.store(Arc::new(next));
    }

    fn reassign_many(&self, moves: &[(&Aor, &str)], only_from: Option<&str>) -> Vec<Option<Reassigned>> {
        self.assignments.borrow_mut().reassign_many(moves, only_from, &self.pool.load(), None).unwrap()
    }

    fn pings(&self, sequence: u32) -> Vec<Action> {
        self.core.pings(sequence)
    }

    fn resolution_ping(&self, index: u32, ipv4: bool) -> Option<Action> {
        self.core.resolution_ping(index, ipv4)
    }
}

struct TempDir(std::path::PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn home(name: &str, index: u32, last: u8, state: ServerState) -> HomeServer {
    HomeServer {
        name: name.into(),
        index,
        ipv4: Some(std::net::Ipv4Addr::new(198, 51, 100, last)),
        ipv6: None,
        port: 5060,
        state,
        healthy: true,
        weight: 1.0,
    }
}

fn settings(policy: Policy) -> Settings {
    Settings {
        policy,
        redirect_expires: 600,
        retry_after: 30,
        proxies: vec![PROXY.parse().unwrap(), PROXY6.parse().unwrap()],
        services: vec![SERVICE.parse().unwrap()],
        probe: Some(probe_keys()),
        profiles: Some(Arc::default()),
    }
}

fn probe_keys() -> Keys {
    Keys::new(*b"first-contact-16", 300)
}

fn setup_with(policy: Policy, servers: Vec<HomeServer>) -> Setup {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let dir = std::env::temp_dir().join(format!(
        "redirector-fc-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    let store = RedbStore::open(&dir.join("a.redb")).unwrap();
    let settings = settings(policy);
    Setup { fc: Harness::new(settings, servers, Box::new(store)), _dir: TempDir(dir) }
}

fn setup(policy: Policy) -> Setup {
    setup_with(policy, vec![home("home1", 0, 11, ServerState::Active), home("home2", 1, 12, ServerState::Active)])
}

fn register(vias: &str, extra: &str) -> Vec<u8> {
    format!(
        "REGISTER sip:example.net SIP/2.0\r\n{vias}To: <sip:alice@example.net>\r\n\
         From: <sip:alice@example.net>;tag=a1\r\nCall-ID: c1@x\r\nCSeq: 7 REGISTER\r\n\
         Contact: <sip:alice@203.0.113.7:5062>\r\n{extra}Content-Length: 0\r\n\r\n"
    )
    .into_bytes()
}

const ONE_VIA: &str = "Via: SIP/2.0/UDP 203.0.113.7:5062;branch=z9hG4bKc1;rport\r\n";
const TWO_VIAS: &str = "Via: SIP/2.0/UDP 192.0.2.99:5060;branch=z9hG4bKp1\r\nVia: SIP/2.0/UDP 203.0.113.7:5062;branch=z9hG4bKc1;received=203.0.113.7\r\n";

fn client() -> SocketAddr {
    CLIENT.parse().unwrap()
}

fn service() -> SocketAddr {
    SERVICE.parse().unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8(bytes.to_vec()).unwrap()
}

fn only_reply(actions: &[Action]) -> (SocketAddr, String) {
    match actions {
        [Action::Reply { to, bytes }, ..] => (*to, text(bytes)),
        other => panic!("expected a reply first, got {other:?}"),
    }
}

fn assigned_home(s: &Setup) -> SocketAddr {
    let server = s.fc.store().get(&Aor::from_uri("sip:alice@example.net", "To").unwrap()).unwrap().unwrap().server;
    if server == "home1" { "198.51.100.11:5060" } else { "198.51.100.12:5060" }.parse().unwrap()
}

#[test]
fn direct_register_is_redirected_and_installed() {
    let s = setup(Policy::ByVia);
    let actions = s.fc.on_service_datagram(&register(ONE_VIA, "Max-Forwards: 70\r\n"), client(), service());
    let (to, response) = only_reply(&actions);
    assert_eq!(to, client(), "answered where it came from (rport)");
    let home = assigned_home(&s);
    assert!(response.starts_with("SIP/2.0 302 Moved Temporarily\r\n"), "{response}");
    assert!(response.contains(&format!("Contact: <sip:{home}>\r\n")), "{response}");
    assert!(response.contains("Expires: 600\r\n"));
    assert!(
        response.contains("Via: SIP/2.0/UDP 203.0.113.7:5062;branch=z9hG4bKc1;received=203.0.113.7;rport=5062\r\n")
    );
    assert!(response.contains("From: <sip:alice@example.net>;tag=a1\r\n"));
    assert!(response.contains("To: <sip:alice@example.net>;tag=rdr"));
    assert!(response.contains("Call-ID: c1@x\r\nCSeq: 7 REGISTER\r\n"));
    let index = if home.port() == 5060 && home.ip().to_string().ends_with(".11") { 0 } else { 1 };
    let aor = Aor::from_uri("sip:alice@example.net", "To").unwrap();
    assert_eq!(actions.len(), 1, "a new client is installed with its assignment, by the owner: {actions:?}");
    assert_eq!(*s.fc.installed.borrow(), [(aor, client(), index)]);
    assert_eq!(s.fc.counters.redirected.load(Ordering::Relaxed), 1);
}

#[test]
fn a_known_clients_first_contact_is_a_sighting() {
    let s = setup(Policy::ByVia);
    s.fc.on_service_datagram(&register(ONE_VIA, ""), client(), service());
    let aor = Aor::from_uri("sip:alice@example.net", "To").unwrap();
    let cache = s.fc.assignments.borrow().cache();
    let stored = s.fc.store().get(&aor).unwrap().unwrap();
    // Cached anew as last seen long ago (a put never moves a sighting back).
    cache.remove(&aor);
    cache.put(&Assignment { last_seen: 1, ..stored });
    assert_eq!(cache.last_seen(&aor), Some(1));
    let before = unix_seconds();
    let actions = s.fc.on_service_datagram(&register(ONE_VIA, ""), "203.0.113.9:5000".parse().unwrap(), service());
    assert!(only_reply(&actions).1.starts_with("SIP/2.0 302 "));
    assert!(cache.last_seen(&aor).is_some_and(|seen| seen >= before), "seen as it came: {:?}", cache.last_seen(&aor));
}

#[test]
fn the_same_aor_stays_on_its_server_and_is_assigned_once() {
    let s = setup(Policy::ByVia);
    let first = only_reply(&s.fc.on_service_datagram(&register(ONE_VIA, ""), client(), service())).1;
    let again =
        only_reply(&s.fc.on_service_datagram(&register(ONE_VIA, ""), "203.0.113.8:5000".parse().unwrap(), service())).1;
    let contact = |r: &str| r.lines().find(|l| l.starts_with("Contact:")).unwrap().to_owned();
    assert_eq!(contact(&first), contact(&again));
    assert_eq!(s.fc.counters.assigned.load(Ordering::Relaxed), 1);
    let home = s.fc.store().get(&Aor::from_uri("sip:alice@example.net", "To").unwrap()).unwrap().unwrap().server;
    assert_eq!(s.fc.client_counts(), HashMap::from([(home, 1)]));
}

#[test]
fn forwarded_register_is_proxied_with_our_via_on_top_and_not_installed() {
    let s = setup(Policy::ByVia);
    let upstream: SocketAddr = "192.0.2.99:5060".parse().unwrap();
    let request = register(TWO_VIAS, "Max-Forwards: 10\r\nX-Custom: kept\r\n");
    let actions = s.fc.on_service_datagram(&request, upstream, service());
    let [Action::Forward { to, bytes }] = actions.as_slice() else { panic!("{actions:?}") };
    assert_eq!(*to, assigned_home(&s));
    let forwarded = text(bytes);
    let vias: Vec<&str> = forwarded.lines().filter(|l| l.starts_with("Via:")).collect();
    assert_eq!(vias.len(), 3);
    assert!(vias[0].starts_with(&format!("Via: SIP/2.0/UDP {PROXY};branch=z9hG4bK-rdr-")), "{}", vias[0]);
    assert_eq!(vias[1], "Via: SIP/2.0/UDP 192.0.2.99:5060;branch=z9hG4bKp1");
    assert_eq!(vias[2], "Via: SIP/2.0/UDP 203.0.113.7:5062;branch=z9hG4bKc1;received=203.0.113.7");
    assert!(forwarded.contains("Max-Forwards: 9\r\n") && !forwarded.contains("Max-Forwards: 10"));
    assert!(forwarded.contains("X-Custom: kept\r\n") && forwarded.starts_with("REGISTER sip:example.net SIP/2.0\r\n"));
    let again = s.fc.on_service_datagram(&request, upstream, service());
    assert_eq!(actions, again, "a retransmission gets the same branch");
}

/// An upstream proxy's address is recorded for the kernel (`PROXIES`) the
/// first time a request of its comes up with more than one Via value,
/// whatever its answer; a client's own request (one Via) records nothing,
/// and a recorded proxy is not recorded again at once.
#[test]
fn a_request_with_several_vias_records_its_source_as_a_proxy_and_one_via_does_not() {
    for policy in [Policy::ByVia, Policy::Redirect] {
        let s = setup(policy);
        s.fc.on_service_datagram(&register(ONE_VIA, ""), client(), service());
        assert!(s.fc.proxies.borrow().is_empty(), "{policy:?}: a client's own request records nothing");
        let upstream: SocketAddr = "192.0.2.99:5060".parse().unwrap();
        let other_port: SocketAddr = "192.0.2.99:5999".parse().unwrap();
        s.fc.on_service_datagram(&register(TWO_VIAS, ""), upstream, service());
        s.fc.on_service_datagram(&register(TWO_VIAS, ""), other_port, service());
        let upstream6: SocketAddr = "[2001:db8::99]:5060".parse().unwrap();
        s.fc.on_service_datagram(&register(TWO_VIAS, ""), upstream6, service());
        assert_eq!(*s.fc.proxies.borrow(), [upstream.ip(), upstream6.ip()], "{policy:?}: each address once");
    }
}

/// The record is asked for again once a proxy was written long enough ago
/// that `PROXIES`' LRU may have dropped it, and forgotten wholesale rather
/// than grow past the map's size.
#[test]
fn a_proxy_is_written_again_after_a_while_and_the_record_stays_bounded() {
    let kernel = InstalledClients::default();
    let (proxy, now) = ("192.0.2.99".parse().unwrap(), std::time::Instant::now());
    assert!(kernel.proxy_unwritten(proxy, now));
    kernel.proxy_written(proxy, now);
    assert!(!kernel.proxy_unwritten(proxy, now + Duration::from_secs(1)));
    assert!(kernel.proxy_unwritten(proxy, now + crate::kernel::installed::PROXY_REWRITTEN_AFTER));
    for n in 0..redirector_ebpf::MAX_PROXIES {
        kernel.proxy_written(std::net::IpAddr::from(n.to_be_bytes()), now);
    }
    assert!(kernel.proxy_unwritten(proxy, now), "forgotten rather than grown past MAX_PROXIES");
}

#[test]
fn the_home_servers_response_is_relayed_with_our_via_popped() {
    let s = setup(Policy::ByVia);
    let actions = s.fc.on_service_datagram(&register(TWO_VIAS, ""), "192.0.2.99:5060".parse().unwrap(), service());
    let [Action::Forward { bytes, .. }] = actions.as_slice() else { panic!("{actions:?}") };
    let forwarded = text(bytes);
    let vias: String = forwarded.lines().filter(|l| l.starts_with("Via:")).map(|l| format!("{l}\r\n")).collect();
    let ok = format!(
        "SIP/2.0 200 OK\r\n{vias}To: <sip:alice@example.net>;tag=h\r\nFrom: <sip:alice@example.net>;tag=a1\r\n\
         Call-ID: c1@x\r\nCSeq: 7 REGISTER\r\nContact: <sip:alice@203.0.113.7:5062>;expires=600\r\nContent-Length: 0\r\n\r\n"
    );
    let home = assigned_home(&s);
    let relayed = s.fc.on_proxy_datagram(ok.as_bytes(), home);
    let [Action::Relay { to, bytes, from }] = relayed.as_slice() else { panic!("{relayed:?}") };
    assert_eq!(*from, Some(service()), "it leaves from where the request arrived");
    let (to, relayed) = (*to, text(bytes));
    assert_eq!(to, "192.0.2.99:5060".parse::<SocketAddr>().unwrap());
    let expected_vias: Vec<&str> = vias.lines().skip(1).collect();
    assert_eq!(relayed.lines().filter(|l| l.starts_with("Via:")).collect::<Vec<_>>(), expected_vias);
    assert!(relayed.contains("Contact: <sip:alice@203.0.113.7:5062>;expires=600\r\n"));
    let foreign = ok.replacen(&format!("SIP/2.0/UDP {PROXY}"), "SIP/2.0/UDP 192.0.2.50:5060", 1);
    assert!(s.fc.on_proxy_datagram(foreign.as_bytes(), home).is_empty(), "not our Via: dropped");
    assert_eq!(s.fc.counters.dropped.load(Ordering::Relaxed), 1);
}

#[test]
fn policy_can_force_redirect_or_proxy() {
    let s = setup(Policy::Redirect);
    let (to, response) =
        only_reply(&s.fc.on_service_datagram(&register(TWO_VIAS, ""), "192.0.2.99:5060".parse().unwrap(), service()));
    assert!(response.starts_with("SIP/2.0 302"));
    assert_eq!(to, "192.0.2.99:5060".parse::<SocketAddr>().unwrap(), "back along the top Via");
    let s = setup(Policy::Proxy);
    let actions = s.fc.on_service_datagram(&register(ONE_VIA, ""), client(), service());
    assert!(matches!(actions.as_slice(), [Action::Forward { .. }]), "{actions:?}");
    assert_eq!(s.fc.installed.borrow().len(), 1, "a direct client is installed whatever the policy");
    let again = s.fc.on_service_datagram(&register(ONE_VIA, ""), client(), service());
    assert!(matches!(again[1], Action::Install { .. }), "a known one by first contact: {again:?}");
}

#[test]
fn auto_proxies_a_direct_register_and_redirects_what_user_agents_follow() {
    let s = setup(Policy::Auto);
    let actions = s.fc.on_service_datagram(&register(ONE_VIA, ""), client(), service());
    let [Action::Forward { to, bytes }] = actions.as_slice() else {
        panic!("a direct REGISTER is proxied: {actions:?}")
    };
    assert_eq!(s.fc.installed.borrow()[0].1, client(), "its client installed");
    assert_eq!(*to, assigned_home(&s), "to the client's home server");
    let forwarded = text(bytes);
    assert!(forwarded.starts_with(&format!("REGISTER sip:example.net SIP/2.0\r\nVia: SIP/2.0/UDP {PROXY};")));
    assert!(
        forwarded
            .contains("\r\nVia: SIP/2.0/UDP 203.0.113.7:5062;branch=z9hG4bKc1;received=203.0.113.7;rport=5062\r\n")
    );
    assert_eq!(s.fc.counters.redirected.load(Ordering::Relaxed), 0);

    let invite = "INVITE sip:bob@example.net SIP/2.0\r\nVia: SIP/2.0/UDP 203.0.113.7:5062;branch=z9hG4bKi\r\n\
        To: <sip:bob@example.net>\r\nFrom: <sip:alice@example.net>;tag=c\r\nCall-ID: i@x\r\nCSeq: 1 INVITE\r\n\r\n";
    let actions = s.fc.on_service_datagram(invite.as_bytes(), client(), service());
    assert!(only_reply(&actions).1.starts_with("SIP/2.0 302"), "a direct INVITE is redirected: {actions:?}");
    let forwarded = s.fc.on_service_datagram(&register(TWO_VIAS, ""), "192.0.2.99:5060".parse().unwrap(), service());
    assert!(matches!(forwarded.as_slice(), [Action::Forward { .. }]), "a forwarded REGISTER is proxied: {forwarded:?}");
}

#[test]
fn new_clients_past_their_prefix_rate_or_the_cap_get_503_and_known_ones_never() {
    let s = setup(Policy::ByVia);
    *s.fc.admission.borrow_mut() =
        Admission::new(Limits { per_prefix: 0.001, burst: 2.0, max_assignments: 3, ..GENEROUS });
    let from = |host: &str| format!("{host}:5062").parse::<SocketAddr>().unwrap();
    let status =
        |user: &str, source: SocketAddr| only_reply(&s.fc.on_service_datagram(&register_as(user), source, service())).1;
    assert!(status("u1", from("203.0.113.7")).starts_with("SIP/2.0 302"));
    assert!(status("u2", from("203.0.113.8")).starts_with("SIP/2.0 302"));
    let limited = status("u3", from("203.0.113.9"));
    assert!(limited.starts_with("SIP/2.0 503 Too Many New Clients From Your Network\r\n"), "{limited}");
    assert!(limited.contains("\r\nRetry-After: 30\r\n"), "{limited}");
    assert!(status("u1", from("203.0.113.9")).starts_with("SIP/2.0 302"), "a known client is never limited");
    assert!(status("u4", from("198.51.100.7")).starts_with("SIP/2.0 302"), "another /24: the third assignment");
    let full = status("u5", from("192.0.2.77"));
    assert!(full.starts_with("SIP/2.0 503 Assignment Capacity Reached\r\n"), "{full}");
    let count = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
    assert_eq!((count(&s.fc.counters.rate_limited), count(&s.fc.counters.over_capacity)), (1, 1));
    assert_eq!(s.fc.store().all().unwrap().len(), 3, "nothing refused was stored");
}

#[test]
fn an_aor_too_long_to_keep_gets_400_and_is_not_stored() {
    let s = setup(Policy::ByVia);
    let long = text(&register(ONE_VIA, "")).replace("alice@", &format!("{}@", "a".repeat(300)));
    let (_, response) = only_reply(&s.fc.on_service_datagram(long.as_bytes(), client(), service()));
    assert!(response.starts_with("SIP/2.0 400 To Address Of Record Too Long\r\n"), "{response}");
    assert!(s.fc.store().all().unwrap().is_empty());
}

#[test]
fn max_forwards_zero_gets_483_and_missing_gets_70() {
    let s = setup(Policy::ByVia);
    let (_, response) =
        only_reply(&s.fc.on_service_datagram(&register(ONE_VIA, "Max-Forwards: 0\r\n"), client(), service()));
    assert!(response.starts_with("SIP/2.0 483 Too Many Hops\r\n"), "{response}");
    let actions = s.fc.on_service_datagram(&register(TWO_VIAS, ""), "192.0.2.99:5060".parse().unwrap(), service());
    let [Action::Forward { bytes, .. }] = actions.as_slice() else { panic!() };
    assert!(text(bytes).contains("Max-Forwards: 70\r\n"));
}

#[test]
fn no_active_server_gets_503_with_retry_after() {
    let s = setup_with(
        Policy::ByVia,
        vec![home("home1", 0, 11, ServerState::Down), home("home2", 1, 12, ServerState::Draining)],
    );
    let (_, response) = only_reply(&s.fc.on_service_datagram(&register(ONE_VIA, ""), client(), service()));
    assert!(response.starts_with("SIP/2.0 503 Service Unavailable\r\n") && response.contains("Retry-After: 30\r\n"));
    assert!(s.fc.store().all().unwrap().is_empty(), "nothing assigned");
}

#[test]
fn malformed_requests_get_400_naming_the_problem_and_garbage_is_dropped() {
    let s = setup(Policy::ByVia);
    let no_call_id = text(&register(ONE_VIA, "")).replace("Call-ID: c1@x\r\n", "");
    let (to, response) = only_reply(&s.fc.on_service_datagram(no_call_id.as_bytes(), client(), service()));
    assert_eq!(to, client());
    assert!(response.starts_with("SIP/2.0 400 Missing Call-ID Header\r\n"), "{response}");
    assert!(response.contains("CSeq: 7 REGISTER\r\n"), "salvaged headers are copied");
    let bad_to = text(&register(ONE_VIA, "")).replace("To: <sip:alice@example.net>", "To: <mailto:alice@example.net>");
    assert!(
        only_reply(&s.fc.on_service_datagram(bad_to.as_bytes(), client(), service()))
            .1
            .starts_with("SIP/2.0 400 Malformed To Header")
    );
    assert!(s.fc.on_service_datagram(b"\x16\x03\x01 not sip at all", client(), service()).is_empty());
    assert!(
        s.fc.on_service_datagram(b"SIP/2.0 200 OK\r\n\r\n", client(), service()).is_empty(),
        "stray responses are dropped"
    );
    assert_eq!(s.fc.counters.bad_request.load(Ordering::Relaxed), 2);
    assert_eq!(s.fc.counters.dropped.load(Ordering::Relaxed), 2);
}

#[test]
fn invite_is_identified_by_from_and_its_ack_absorbed() {
    let s = setup(Policy::ByVia);
    let invite = "INVITE sip:bob@example.net SIP/2.0\r\nVia: SIP/2.0/UDP 203.0.113.7:5062;branch=z9hG4bKi\r\n\
        To: <sip:bob@example.net>\r\nFrom: <sip:carol@example.net>;tag=c\r\nCall-ID: i@x\r\nCSeq: 1 INVITE\r\n\r\n";
    let actions = s.fc.on_service_datagram(invite.as_bytes(), client(), service());
    let (_, response) = only_reply(&actions);
    assert!(response.contains("Contact: <sip:bob@198.51.100."), "user of the request URI kept: {response}");
    assert!(s.fc.store().get(&Aor::from_uri("sip:carol@example.net", "From").unwrap()).unwrap().is_some());
    let ack = invite.replace("INVITE sip", "ACK sip").replace("1 INVITE", "1 ACK");
    assert!(s.fc.on_service_datagram(ack.as_bytes(), client(), service()).is_empty());
    assert_eq!(s.fc.counters.absorbed_acks.load(Ordering::Relaxed), 1);
}

#[test]
fn pings_go_to_every_home_server_and_their_answers_are_counted_not_relayed() {
    let s = setup(Policy::ByVia);
    let pings = s.fc.pings(7);
    let targets: Vec<SocketAddr> = pings
        .iter()
        .map(|a| match a {
            Action::Forward { to, .. } => *to,
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(targets, ["198.51.100.11:5060".parse().unwrap(), "198.51.100.12:5060".parse::<SocketAddr>().unwrap()]);
    let Action::Forward { bytes, .. } = &pings[0] else { unreachable!() };
    let ping = text(bytes);
    let message = Message::parse(ping.as_bytes()).unwrap();
    assert_eq!(message.method(), Some("OPTIONS"));
    let answer = ping.replacen("OPTIONS sip:198.51.100.11:5060 SIP/2.0", "SIP/2.0 200 OK", 1);
    let home1: SocketAddr = "198.51.100.11:5060".parse().unwrap();
    assert_eq!(s.fc.on_proxy_datagram(answer.as_bytes(), home1), [Action::PingAnswered { server: 0, sequence: 7 }]);
    let stranger: SocketAddr = "203.0.113.66:5060".parse().unwrap();
    assert!(s.fc.on_proxy_datagram(answer.as_bytes(), stranger).is_empty(), "a forged health answer is dropped");
    assert_eq!(s.fc.counters.pings_sent.load(Ordering::Relaxed), 2);
    assert_eq!(s.fc.counters.pings_answered.load(Ordering::Relaxed), 1);
    assert_eq!(s.fc.counters.relayed.load(Ordering::Relaxed), 0);
}

#[test]
fn a_client_of_an_unhealthy_server_is_reassigned_at_its_next_first_contact() {
    let s = setup(Policy::ByVia);
    only_reply(&s.fc.on_service_datagram(&register(ONE_VIA, ""), client(), service()));
    let aor = Aor::from_uri("sip:alice@example.net", "To").unwrap();
    let first = s.fc.store().get(&aor).unwrap().unwrap();
    let index = if first.server == "home1" { 0 } else { 1 };
    s.fc.set_health(index, false);
    let actions = s.fc.on_service_datagram(&register(ONE_VIA, ""), client(), service());
    let now = s.fc.store().get(&aor).unwrap().unwrap();
    assert_ne!(now.server, first.server);
    assert_eq!(now.generation, 2);
    assert_eq!(s.fc.client_counts(), HashMap::from([(first.server.clone(), 0), (now.server.clone(), 1)]));
    assert_eq!(*s.fc.moved.borrow(), [aor], "its watchers are to be told");
    assert_eq!(actions.len(), 1, "{actions:?}");
    assert!(s.fc.installed.borrow().last().is_some_and(|(_, _, server)| *server != index), "installed at the new home");
    assert_eq!(s.fc.counters.reassigned.load(Ordering::Relaxed), 1);
}

#[test]
fn the_proxy_socket_relays_nothing_for_strangers() {
    let s = setup(Policy::ByVia);
    let forged = format!(
        "SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP {PROXY};branch=z9hG4bK-rdr-0000000000000000\r\n\
         Via: SIP/2.0/UDP 8.8.8.8:53;branch=z9hG4bKx\r\nTo: <sip:a@b>;tag=1\r\nFrom: <sip:a@b>;tag=2\r\n\
         Call-ID: x\r\nCSeq: 1 REGISTER\r\n\r\n"
    );
    let stranger: SocketAddr = "203.0.113.66:5060".parse().unwrap();
    assert!(s.fc.on_proxy_datagram(forged.as_bytes(), stranger).is_empty());
    assert_eq!(s.fc.counters.dropped.load(Ordering::Relaxed), 1);
}

fn invite(vias: &str, method: &str, cseq: &str, max_forwards: &str) -> Vec<u8> {
    format!(
        "{method} sip:bob@example.net SIP/2.0\r\n{vias}To: <sip:bob@example.net>\r\nFrom: <sip:carol@example.net>;tag=c\r\n\
         Call-ID: i@x\r\nCSeq: {cseq}\r\n{max_forwards}\r\n"
    )
    .into_bytes()
}

#[test]
fn an_ack_is_never_answered() {
    let s = setup(Policy::ByVia);
    for ack in [
        invite(ONE_VIA, "ACK", "1 ACK", "Max-Forwards: 0\r\n"),
        invite(ONE_VIA, "ACK", "1 ACK", "Max-Forwards: many\r\n"),
        invite(TWO_VIAS, "ACK", "1 ACK", "Max-Forwards: 0\r\n"),
    ] {
        assert!(s.fc.on_service_datagram(&ack, client(), service()).is_empty(), "{}", text(&ack));
    }
    let s = setup(Policy::Redirect);
    assert!(s.fc.on_service_datagram(&invite(TWO_VIAS, "ACK", "1 ACK", ""), client(), service()).is_empty());
}

#[test]
fn cancel_and_ack_of_a_proxied_invite_share_its_branch() {
    let s = setup(Policy::ByVia);
    let upstream: SocketAddr = "192.0.2.99:5060".parse().unwrap();
    let branch_of = |actions: Vec<Action>| match actions.as_slice() {
        [Action::Forward { bytes, .. }] => {
            let forwarded = text(bytes);
            forwarded.lines().find(|l| l.starts_with("Via:")).unwrap().to_owned()
        }
        other => panic!("expected one forward, got {other:?}"),
    };
    let invite_branch =
        branch_of(s.fc.on_service_datagram(&invite(TWO_VIAS, "INVITE", "1 INVITE", ""), upstream, service()));
    let cancel_branch =
        branch_of(s.fc.on_service_datagram(&invite(TWO_VIAS, "CANCEL", "1 CANCEL", ""), upstream, service()));
    let ack_branch = branch_of(s.fc.on_service_datagram(&invite(TWO_VIAS, "ACK", "1 ACK", ""), upstream, service()));
    assert_eq!(cancel_branch, invite_branch);
    assert_eq!(ack_branch, invite_branch);
    let other = TWO_VIAS.replace("z9hG4bKp1", "z9hG4bKp2");
    let next = branch_of(s.fc.on_service_datagram(&invite(&other, "INVITE", "2 INVITE", ""), upstream, service()));
    assert_ne!(next, invite_branch, "a new transaction gets a new branch");
}

#[test]
fn a_direct_cancel_of_a_redirected_invite_gets_200() {
    let s = setup(Policy::ByVia);
    let actions = s.fc.on_service_datagram(&invite(ONE_VIA, "CANCEL", "1 CANCEL", ""), client(), service());
    let (_, response) = only_reply(&actions);
    assert!(response.starts_with("SIP/2.0 200 OK\r\n"), "{response}");
    assert_eq!(actions.len(), 1, "nothing installed");
}

fn subscribe(from_tag: &str, extra: &str) -> Vec<u8> {
    format!(
        "SUBSCRIBE sip:alice@example.net SIP/2.0\r\n{ONE_VIA}To: <sip:alice@example.net>\r\n\
         From: <sip:bob@example.net>;tag={from_tag}\r\nCall-ID: s1@x\r\nCSeq: 3 SUBSCRIBE\r\n\
         Contact: <sip:bob@203.0.113.7:5062>\r\nEvent: presence\r\n{extra}Content-Length: 0\r\n\r\n"
    )
    .into_bytes()
}

#[test]
fn subscribe_is_proxied_to_the_watched_clients_home_and_recorded_even_when_redirecting() {
    for policy in [Policy::ByVia, Policy::Redirect] {
        let s = setup(policy);
        let actions = s.fc.on_service_datagram(&subscribe("b1", "Expires: 600\r\n"), client(), service());
        let [Action::Forward { to, bytes }, Action::Watch { subscription, expires, generation: 1 }] =
            actions.as_slice()
        else {
            panic!("{actions:?}")
        };
        assert_eq!(*to, assigned_home(&s), "the home of alice (To), not of bob (the sender)");
        assert!(text(bytes).starts_with("SUBSCRIBE sip:alice@example.net SIP/2.0\r\n"));
        assert_eq!(*expires, Some(600));
        assert_eq!(subscription.presentity.as_str(), "sip:alice@example.net");
        assert_eq!((subscription.id.call_id.as_str(), subscription.id.watcher_tag.as_str()), ("s1@x", "b1"));
        assert_eq!(subscription.reply_to, client());
        assert_eq!(s.fc.counters.subscribes_proxied.load(Ordering::Relaxed), 1);
        assert_eq!(s.fc.counters.installed.load(Ordering::Relaxed), 0, "the watcher is not the watched client");
    }
}

#[test]
fn a_subscribe_without_event_is_proxied_but_not_recorded() {
    let s = setup(Policy::ByVia);
    let bytes = text(&subscribe("b1", "")).replace("Event: presence\r\n", "");
    let actions = s.fc.on_service_datagram(bytes.as_bytes(), client(), service());
    assert!(matches!(actions.as_slice(), [Action::Forward { .. }]), "{actions:?}");
    assert_eq!(s.fc.counters.subscribes_unrecordable.load(Ordering::Relaxed), 1);
}

/// A client's SUBSCRIBE for its own ua-profile is the owner's to answer,
/// never proxied, and never assigns its AOR; one that cannot be read is
/// answered here (400, 406, 404) and counted. With documents off, it is
/// a SUBSCRIBE like any other: proxied to the home (which may be the
/// profile's notifier itself).
#[test]
fn a_ua_profile_subscribe_goes_to_the_owner_and_a_malformed_one_gets_400() {
    let profile = |extra: &str| {
        text(&subscribe("p1", extra))
            .replace("Event: presence", "Event: ua-profile;profile-type=user")
            .replace("<sip:bob@example.net>", "<sip:alice@example.net>")
    };
    let s = setup(Policy::ByVia);
    let actions = s.fc.on_service_datagram(profile("Expires: 0\r\n").as_bytes(), client(), service());
    let [Action::Profile(request)] = actions.as_slice() else { panic!("{actions:?}") };
    assert_eq!((request.aor.as_str(), request.expires, request.local), ("sip:alice@example.net", Some(0), service()));
    assert!(s.fc.store().all().unwrap().is_empty(), "nothing assigned for a profile SUBSCRIBE");

    let counters = s.fc.core.settings.profiles.clone().unwrap();
    let untagged = profile("").replace(";tag=p1", "");
    let actions = s.fc.on_service_datagram(untagged.as_bytes(), client(), service());
    let (_, response) = only_reply(&actions);
    assert!(response.starts_with("SIP/2.0 400 "), "{response}");
    assert!(response.contains("From tag"), "the reason names the problem: {response}");
    let json = profile("Accept: application/json\r\n");
    let (_, response) = only_reply(&s.fc.on_service_datagram(json.as_bytes(), client(), service()));
    assert!(response.starts_with("SIP/2.0 406 ") && response.contains("\r\nAccept: application/xml"), "{response}");
    let device = profile("").replace("profile-type=user", "profile-type=device");
    let (_, response) = only_reply(&s.fc.on_service_datagram(device.as_bytes(), client(), service()));
    assert!(response.starts_with("SIP/2.0 404 "), "{response}");
    let counted = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
    let figures = (counted(&counters.malformed), counted(&counters.not_acceptable), counted(&counters.not_found));
    assert_eq!(figures, (1, 1, 1));

    let off = Setup {
        fc: Harness::new(
            Settings { profiles: None, ..settings(Policy::ByVia) },
            s.fc.pool.load().servers().to_vec(),
            {
                let dir = std::env::temp_dir().join(format!("redirector-fc-off-{}", std::process::id()));
                Box::new(RedbStore::open(&dir.join("a.redb")).unwrap())
            },
        ),
        _dir: TempDir(std::env::temp_dir().join(format!("redirector-fc-off-{}", std::process::id()))),
    };
    let actions = off.fc.on_service_datagram(profile("").as_bytes(), client(), service());
    assert!(matches!(actions.as_slice(), [Action::Forward { .. }, Action::Watch { .. }]), "{actions:?}");
}

#[test]
fn the_notifiers_answer_to_a_subscribe_is_relayed_and_reported() {
    let s = setup(Policy::ByVia);
    let actions = s.fc.on_service_datagram(&subscribe("b1", ""), client(), service());
    let Action::Forward { bytes, .. } = &actions[0] else { panic!("{actions:?}") };
    let vias: String = text(bytes).lines().filter(|l| l.starts_with("Via:")).map(|l| format!("{l}\r\n")).collect();
    let answer = |code: &str| {
        format!(
            "SIP/2.0 {code}\r\n{vias}To: <sip:alice@example.net>;tag=n9\r\nFrom: <sip:bob@example.net>;tag=b1\r\n\
             Call-ID: s1@x\r\nCSeq: 3 SUBSCRIBE\r\nContent-Length: 0\r\n\r\n"
        )
    };
    let relayed = s.fc.on_proxy_datagram(answer("200 OK").as_bytes(), assigned_home(&s));
    let [Action::Relay { to, .. }, Action::SubscribeAnswered { id, code, notifier_tag }] = relayed.as_slice() else {
        panic!("{relayed:?}")
    };
    assert_eq!(*to, client());
    assert_eq!((id.call_id.as_str(), id.watcher_tag.as_str(), *code), ("s1@x", "b1", 200));
    assert_eq!(notifier_tag.as_deref(), Some("n9"));
    let provisional = s.fc.on_proxy_datagram(answer("100 Trying").as_bytes(), assigned_home(&s));
    assert!(matches!(provisional.as_slice(), [Action::Relay { .. }]), "{provisional:?}");
}

#[test]
fn answers_to_our_notify_are_taken_on_any_socket_from_anyone() {
    let s = setup(Policy::ByVia);
    let ok = "SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 198.51.100.1:5060;branch=z9hG4bK-rdr-notify-00ff;rport=5060\r\n\
              To: <sip:bob@example.net>;tag=b1\r\nFrom: <sip:alice@example.net>;tag=n9\r\nCall-ID: s1@x\r\n\
              CSeq: 2147483647 NOTIFY\r\nContent-Length: 0\r\n\r\n";
    let expected = Action::NotifyAnswered { branch: "z9hG4bK-rdr-notify-00ff".into(), code: 200, from: client() };
    assert_eq!(
        s.fc.on_proxy_datagram(ok.as_bytes(), client()),
        vec![expected.clone()],
        "not a home server, still ours"
    );
    assert_eq!(s.fc.on_service_datagram(ok.as_bytes(), client(), service()), vec![expected]);
    let other = ok.replace("z9hG4bK-rdr-notify-00ff", "z9hG4bKelse");
    assert!(s.fc.on_service_datagram(other.as_bytes(), client(), service()).is_empty());
    assert!(s.fc.on_proxy_datagram(other.as_bytes(), client()).is_empty());
}

#[test]
fn a_route_naming_the_edge_is_removed_before_proxying() {
    let s = setup(Policy::ByVia);
    let upstream: SocketAddr = "192.0.2.99:5060".parse().unwrap();
    let forwarded = |route: &str| {
        let actions = s.fc.on_service_datagram(&register(TWO_VIAS, route), upstream, service());
        let [Action::Forward { bytes, .. }] = actions.as_slice() else { panic!("{actions:?}") };
        text(bytes)
    };
    let popped = forwarded("Route: <sip:192.0.2.10;lr>, <sip:next.example.net;lr>\r\nRoute: <sip:last;lr>\r\n");
    assert!(popped.contains("\r\nRoute: <sip:next.example.net;lr>\r\nRoute: <sip:last;lr>\r\n"), "{popped}");
    assert!(!popped.contains("192.0.2.10;lr"), "{popped}");
    let alone = forwarded(&format!("Route: <sip:{PROXY};lr>\r\n"));
    assert!(!alone.contains("Route:"), "our only Route value goes: {alone}");
    let foreign = forwarded("Route: <sip:192.0.2.99;lr>\r\n");
    assert!(foreign.contains("\r\nRoute: <sip:192.0.2.99;lr>\r\n"), "another proxy's Route stays: {foreign}");
}

/// Counts the durable writes first contact asks of a real store.
struct CountingStore {
    inner: RedbStore,
    updates: Arc<AtomicU64>,
}

impl AssignmentStore for CountingStore {
    fn get(&self, aor: &Aor) -> Result<Option<Assignment>, StoreError> {
        self.inner.get(aor)
    }

    fn update_many(
        &self,
        aors: &[&Aor],
        fence: Option<&Term>,
        change: &mut dyn FnMut(&Aor, Option<&Assignment>) -> Option<Assignment>,
    ) -> Result<Vec<Option<Assignment>>, StoreError> {
        self.updates.fetch_add(1, Ordering::Relaxed);
        self.inner.update_many(aors, fence, change)
    }

    fn all(&self) -> Result<Vec<Assignment>, StoreError> {
        self.inner.all()
    }

    fn page(&self, after: Option<&Aor>, limit: usize) -> Result<Vec<Assignment>, StoreError> {
        self.inner.page(after, limit)
    }

    fn expire(&self, expired: &[&Aor], seen: &[(&Aor, u64)], fence: Option<&Term>) -> Result<(), StoreError> {
        self.updates.fetch_add(1, Ordering::Relaxed);
        self.inner.expire(expired, seen, fence)
    }
}

/// First contact over a store that counts its write transactions.
fn counting() -> (Harness, Arc<AtomicU64>, TempDir) {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("redirector-fc-counting-{}-{n}", std::process::id()));
    let updates = Arc::new(AtomicU64::new(0));
    let store = CountingStore { inner: RedbStore::open(&dir.join("a.redb")).unwrap(), updates: updates.clone() };
    let servers = vec![home("home1", 0, 11, ServerState::Active), home("home2", 1, 12, ServerState::Active)];
    (Harness::new(settings(Policy::ByVia), servers, Box::new(store)), updates, TempDir(dir))
}

#[test]
fn a_known_clients_first_contact_commits_nothing() {
    let (fc, updates, _dir) = counting();
    for _ in 0..3 {
        only_reply(&fc.on_service_datagram(&register(ONE_VIA, ""), client(), service()));
    }
    assert_eq!(updates.load(Ordering::Relaxed), 1, "one commit for the new assignment, none for the repeats");
}

fn register_as(user: &str) -> Vec<u8> {
    text(&register(ONE_VIA, "")).replace("alice@", &format!("{user}@")).into_bytes()
}

#[test]
fn a_batch_of_new_clients_is_assigned_in_one_commit() {
    let (fc, updates, _dir) = counting();
    let datagrams: Vec<Vec<u8>> = ["u1", "u2", "u3", "u2"].iter().map(|user| register_as(user)).collect();
    let batch: Vec<(&[u8], SocketAddr)> = datagrams.iter().map(|d| (d.as_slice(), client())).collect();
    let out_of_hops = text(&register_as("m1")).replace("\r\nContent-Length", "\r\nMax-Forwards: 0\r\nContent-Length");
    let mut with_rejected = batch.clone();
    with_rejected.push((out_of_hops.as_bytes(), client()));
    let answered = fc.batch(&with_rejected, service());
    assert_eq!(answered.iter().filter(|a| matches!(a, Action::Reply { .. })).count(), 5, "{answered:?}");
    assert!(fc.moved.borrow().is_empty(), "nobody moved");
    assert_eq!(updates.load(Ordering::Relaxed), 1);
    let m1 = Aor::from_uri("sip:m1@example.net", "To").unwrap();
    assert!(fc.store().get(&m1).unwrap().is_none(), "a request that gets 483 is not assigned in a batch either");
    for datagram in &datagrams {
        only_reply(&fc.on_service_datagram(datagram, client(), service()));
    }
    assert_eq!(updates.load(Ordering::Relaxed), 1, "answering them again needed no further commit");
    assert_eq!(fc.counters.assigned.load(Ordering::Relaxed), 3);
    assert_eq!(fc.client_counts().values().sum::<u64>(), 3);

    // Which clients the down server had, read before anything moves.
    let u1 = Aor::from_uri("sip:u1@example.net", "To").unwrap();
    let down_server = fc.store().get(&u1).unwrap().unwrap().server;
    let on_down: Vec<Aor> = ["u1", "u2", "u3"]
        .iter()
        .map(|u| Aor::from_uri(&format!("sip:{u}@example.net"), "To").unwrap())
        .filter(|aor| fc.store().get(aor).unwrap().unwrap().server == down_server)
        .collect();
    fc.set_health(fc.server(&down_server).unwrap().index, false);
    fc.batch(&batch, service());
    let mut moved = fc.moved.borrow().clone();
    moved.sort();
    assert_eq!(moved, on_down, "exactly the down server's clients moved, and their watchers are to be told");
    for aor in &on_down {
        let now = fc.store().get(aor).unwrap().unwrap();
        assert_ne!(now.server, down_server, "{aor} has a new home");
        assert_eq!(now.generation, 2, "{aor} moved once");
    }
}

#[test]
fn a_planned_move_leaves_clients_that_moved_meanwhile_or_whose_target_is_down() {
    let s = setup(Policy::ByVia);
    s.fc.on_service_datagram(&register(ONE_VIA, ""), client(), service());
    let aor = Aor::from_uri("sip:alice@example.net", "To").unwrap();
    let from = s.fc.store().get(&aor).unwrap().unwrap().server;
    let to = if from == "home1" { "home2" } else { "home1" };
    assert_eq!(s.fc.reassign_many(&[(&aor, to)], Some(to)), [None], "not on the planned server");
    s.fc.set_health(s.fc.server(to).unwrap().index, false);
    assert_eq!(s.fc.reassign_many(&[(&aor, to)], Some(&from)), [None], "its target is down");
    assert_eq!(s.fc.store().get(&aor).unwrap().unwrap().generation, 1, "nothing was written");
    s.fc.set_health(s.fc.server(to).unwrap().index, true);
    let moved = s.fc.reassign_many(&[(&aor, to)], Some(&from));
    assert_eq!(moved, [Some(Reassigned { previous: Some(from.clone()), generation: 2 })]);
    assert_eq!(s.fc.client_counts(), HashMap::from([(from, 0), (to.to_owned(), 1)]));
}

#[test]
fn each_family_is_pinged_and_proxied_from_the_proxy_address_of_that_family() {
    let mut dual = home("home1", 0, 11, ServerState::Active);
    dual.ipv6 = Some("2001:db8::11".parse().unwrap());
    let s = setup_with(Policy::ByVia, vec![dual, home("home2", 1, 12, ServerState::Active)]);
    let pings: Vec<(SocketAddr, String)> =
        s.fc.pings(1)
            .into_iter()
            .map(|a| match a {
                Action::Forward { to, bytes } => (to, text(&bytes)),
                other => panic!("{other:?}"),
            })
            .collect();
    let to: Vec<String> = pings.iter().map(|(to, _)| to.to_string()).collect();
    assert_eq!(to, ["198.51.100.11:5060", "[2001:db8::11]:5060", "198.51.100.12:5060"]);
    assert!(pings[1].1.contains(&format!("Via: SIP/2.0/UDP {PROXY6};branch=")), "{}", pings[1].1);
    let resolution = s.fc.resolution_ping(0, false);
    assert!(matches!(resolution, Some(Action::Forward { to, .. }) if to.is_ipv6()), "{resolution:?}");
    assert_eq!(s.fc.resolution_ping(1, false), None, "home2 has no IPv6 address");

    let dual = |name, index, last| {
        let mut home = home(name, index, last, ServerState::Active);
        home.ipv6 = Some(format!("2001:db8::{last}").parse().unwrap());
        home
    };
    let s = setup_with(Policy::ByVia, vec![dual("home1", 0, 11), dual("home2", 1, 12)]);
    let upstream: SocketAddr = "[2001:db8::99]:5060".parse().unwrap();
    let vias = "Via: SIP/2.0/UDP [2001:db8::99]:5060;branch=z9hG4bKp6\r\nVia: SIP/2.0/UDP [2001:db8::7]:5062;branch=z9hG4bKc6\r\n";
    let actions = s.fc.on_service_datagram(&register(vias, ""), upstream, service());
    let [Action::Forward { to, bytes }] = actions.as_slice() else { panic!("{actions:?}") };
    assert!(to.is_ipv6(), "{to}");
    assert!(text(bytes).starts_with(&format!("REGISTER sip:example.net SIP/2.0\r\nVia: SIP/2.0/UDP {PROXY6};")));
    let ok = text(bytes).replacen("REGISTER sip:example.net SIP/2.0", "SIP/2.0 200 OK", 1);
    let relayed = s.fc.on_proxy_datagram(ok.as_bytes(), *to);
    assert!(
        matches!(relayed.as_slice(), [Action::Relay { to, .. }] if *to == upstream),
        "our IPv6 Via is ours: {relayed:?}"
    );
}

/// A request about 3,000 bytes long (a big header, or a body): more than
/// one Ethernet frame, so the program passes it up as IP fragments.
fn big(method: &str, via: &str) -> Vec<u8> {
    let pad = "x".repeat(2800);
    let (header, body) = if method == "REGISTER" { (pad.as_str(), "") } else { ("", pad.as_str()) };
    format!(
        "{method} sip:bob@example.net SIP/2.0\r\n{via}To: <sip:bob@example.net>\r\n\
         From: <sip:alice@example.net>;tag=a1\r\nCall-ID: big@x\r\nCSeq: 1 {method}\r\nX-Pad: {header}\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

const VIA_WITHOUT_RPORT: &str = "Via: SIP/2.0/UDP 203.0.113.7:5062;branch=z9hG4bKc1\r\n";

/// The kernel's route for `client()` in `mode`: to home2 (slot 1), with
/// edge port 20001 in nat mode, where the program adds `;rport` for it
/// (its first request's Via had none).
fn on_fast_path(s: &Setup, mode: &str) {
    let nat_port = (mode == "nat").then_some(20001);
    s.fc.kernel.put(
        client(),
        KernelRoute { server: 1, nat_port, adds_rport: nat_port.is_some(), aor_hash: None, shared: false },
    );
}

#[test]
fn a_fast_path_clients_passed_up_requests_go_to_its_home_as_the_kernel_sends_them() {
    for mode in ["dsr", "nat"] {
        for method in ["REGISTER", "INVITE"] {
            let case = format!("{mode} {method}");
            let s = setup(Policy::Auto);
            on_fast_path(&s, mode);
            let request = big(method, VIA_WITHOUT_RPORT);
            let actions = s.fc.on_service_datagram(&request, client(), service());
            let home2 = SocketAddr::from(([198, 51, 100, 12], 5060));
            let expected = if mode == "dsr" {
                Action::Encapsulate { client: client(), service: service(), home: home2.ip(), bytes: request.clone() }
            } else {
                let with_rport = text(&request).replacen(";branch=z9hG4bKc1\r\n", ";branch=z9hG4bKc1;rport\r\n", 1);
                Action::Translate { edge_port: 20001, home: home2, bytes: with_rport.into_bytes() }
            };
            assert_eq!(actions, [expected], "{case}: sent on to its home, not answered");
            let counters = s.fc.counters.snapshot();
            let count = |name| counters.iter().find(|(n, _)| *n == name).unwrap().1;
            assert_eq!(count("forwarded_for_fast_path"), 1, "{case}");
            for first_contact in ["requests", "redirected", "proxied", "assigned"] {
                assert_eq!(count(first_contact), 0, "{case}: no first contact ({first_contact})");
            }
            if mode == "nat" {
                // A client that asked for rport: the program leaves its requests alone.
                let route =
                    KernelRoute { server: 1, nat_port: Some(20001), adds_rport: false, aor_hash: None, shared: false };
                s.fc.kernel.put(client(), route);
                let actions = s.fc.on_service_datagram(&request, client(), service());
                let unchanged = Action::Translate { edge_port: 20001, home: home2, bytes: request.clone() };
                assert_eq!(actions, [unchanged], "{case}: no rport added");
            }
        }
    }
}

#[test]
fn a_fast_path_clients_subscribe_and_a_down_servers_clients_still_meet_first_contact() {
    let s = setup(Policy::ByVia);
    on_fast_path(&s, "dsr");
    let actions = s.fc.on_service_datagram(&subscribe("w1", ""), client(), service());
    assert!(matches!(actions.first(), Some(Action::Forward { .. })), "SUBSCRIBE proxied: {actions:?}");
    s.fc.set_health(1, false);
    let actions = s.fc.on_service_datagram(&big("INVITE", ONE_VIA), client(), service());
    let (_, reply) = only_reply(&actions);
    assert!(reply.starts_with("SIP/2.0 302 "), "the kernel would pass it up too: {reply}");
    assert_eq!(s.fc.counters.forwarded_for_fast_path.load(Ordering::Relaxed), 0);
}

#[test]
fn nat_adds_rport_where_the_program_does_and_only_where_missing() {
    let requests = [
        register(VIA_WITHOUT_RPORT, ""),
        register("v : SIP/2.0/UDP 203.0.113.7:5062;branch=z9hG4bKc1 , SIP/2.0/UDP 192.0.2.99\r\n", ""),
        register("Via: SIP/2.0/UDP 203.0.113.7:5062;branch=z9hG4bKc1;rport=5062\r\n", ""),
        register(ONE_VIA, ""),
        b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 203.0.113.7:5062;branch=z9hG4bKc1\r\nTo: <sip:a@b>\r\nFrom: <sip:a@b>;tag=1\r\nCall-ID: c\r\nCSeq: 1 REGISTER\r\nContent-Length: 0\r\n\r\n".to_vec(),
    ];
    for request in requests {
        let mut window = [0u8; redirector_ebpf::via::VIA_SCAN];
        let scanned = request.len().min(window.len());
        window[..scanned].copy_from_slice(&request[..scanned]);
        let expected = match redirector_ebpf::via::top_via(&window, 0, request.len()) {
            redirector_ebpf::via::TopVia::AddRportAt(at) => [&request[..at], b";rport", &request[at..]].concat(),
            _ => request.clone(),
        };
        assert_eq!(text(&with_rport(request.clone())), text(&expected));
    }
}

#[test]
fn a_home_servers_passed_up_reply_to_a_nat_port_is_relayed_to_its_client_and_a_strangers_dropped() {
    let s = setup(Policy::Auto);
    let reply = NatReply { client: client(), service: service(), server: 1 };
    s.fc.kernel.put_nat_reply(20001, reply);
    let ok = format!("SIP/2.0 200 OK\r\n{VIA_WITHOUT_RPORT}X-Pad: {}\r\nContent-Length: 0\r\n\r\n", "x".repeat(2800));
    let home2 = SocketAddr::from(([198, 51, 100, 12], 5060));
    let relayed = s.fc.core.on_nat_reply(ok.as_bytes(), home2, 20001);
    let expected = Action::Relay { to: client(), bytes: ok.clone().into_bytes(), from: Some(service()) };
    assert_eq!(relayed, [expected], "from the service address the client talked to");
    let home1 = SocketAddr::from(([198, 51, 100, 11], 5060));
    assert_eq!(s.fc.core.on_nat_reply(ok.as_bytes(), home1, 20001), [], "not this client's home");
    assert_eq!(s.fc.core.on_nat_reply(ok.as_bytes(), home2, 20002), [], "no client has that port");
    assert_eq!(s.fc.counters.nat_replies_relayed.load(Ordering::Relaxed), 1);
}

/// In nat mode the kernel adds `;rport` to the requests of clients whose
/// Via did not ask for it: first contact says which did.
#[test]
fn a_known_client_is_installed_with_whether_its_via_asked_for_rport() {
    let s = setup(Policy::Proxy);
    let without = ONE_VIA.replace(";rport", "");
    for (via, asks_rport) in [(ONE_VIA, true), (without.as_str(), false)] {
        s.fc.on_service_datagram(&register(via, ""), client(), service());
        let again = s.fc.on_service_datagram(&register(via, ""), client(), service());
        let Some(Action::Install { origin, .. }) = again.iter().find(|a| matches!(a, Action::Install { .. })) else {
            panic!("a known client is installed again: {again:?}")
        };
        assert_eq!((origin.client, origin.service, origin.asks_rport), (client(), service(), asks_rport), "{via}");
    }
}

/// A passed-up REGISTER from a socket on the fast path for another AOR's
/// REGISTERs (the kernel's REGISTER check) is first contact's: assigned
/// and proxied, never sent on as the kernel sends the socket's own.
#[test]
fn a_register_for_another_aor_from_a_fast_path_socket_is_first_contact() {
    let s = setup(Policy::Auto);
    let other_line = KernelRoute { server: 1, nat_port: None, adds_rport: false, aor_hash: Some(1), shared: false };
    s.fc.kernel.put(client(), other_line);
    let actions = s.fc.on_service_datagram(&register(ONE_VIA, ""), client(), service());
    assert!(!actions.iter().any(|a| matches!(a, Action::Encapsulate { .. } | Action::Translate { .. })), "{actions:?}");
    assert!(actions.iter().any(|a| matches!(a, Action::Forward { .. })), "proxied to its own home: {actions:?}");
}

/// A passed-up request from a socket shared by several lines goes where
/// the kernel sends a small one: its own line's to the socket's home,
/// another line's to first contact while that line has no assignment,
/// and to the line's home once it has one (bob's INVITE assigned him). A
/// socket that is not shared sends every request but a REGISTER unread.
#[test]
fn a_shared_sockets_request_goes_by_its_aor_as_the_kernel_sends_it() {
    let alice = redirector_ebpf::aor::aor_hash(b"sip:alice@example.net");
    let from_bob =
        |request: Vec<u8>| text(&request).replace("<sip:alice@example.net>;tag=a1", "<sip:bob@example.net>;tag=b1");
    let sent_on = |actions: &[Action]| actions.iter().any(|a| matches!(a, Action::Encapsulate { .. }));
    for shared in [true, false] {
        let s = setup(Policy::Auto);
        s.fc.kernel
            .put(client(), KernelRoute { server: 1, nat_port: None, adds_rport: false, aor_hash: Some(alice), shared });
        let own = s.fc.on_service_datagram(&big("INVITE", ONE_VIA), client(), service());
        assert!(sent_on(&own), "shared {shared}: the socket's own line not sent on");
        let other = s.fc.on_service_datagram(from_bob(big("INVITE", ONE_VIA)).as_bytes(), client(), service());
        assert_eq!(sent_on(&other), !shared, "shared {shared}: another line's INVITE");
        // Its To is bob's: REGISTERs are read on either.
        let register = s.fc.on_service_datagram(&big("REGISTER", ONE_VIA), client(), service());
        assert_eq!(sent_on(&register), shared, "shared {shared}: bob's REGISTER, bob now assigned");
    }
}

/// A passed-up response from a socket shared by several lines is read by
/// its `To` (the line that answered), as the kernel reads it: its own
/// line's goes to the socket's home (home2 here), another assigned line's
/// to that line's home (bob's, home1), and one whose `To` is no assigned
/// line (a call to a number the PBX serves) by the socket's entry, as
/// before lines were routed: none is dropped. A socket that is not shared
/// sends every response on unread, by its entry.
#[test]
fn a_shared_sockets_response_goes_by_its_to_line_or_by_the_entry() {
    let alice = redirector_ebpf::aor::aor_hash(b"sip:alice@example.net");
    let sent_to = |actions: &[Action]| match actions {
        [Action::Encapsulate { home, .. }] => Some(home.to_string()),
        _ => None,
    };
    let (home1, home2) = (Some("198.51.100.11".to_owned()), Some("198.51.100.12".to_owned()));
    for shared in [true, false] {
        let s = setup(Policy::Auto);
        s.fc.reassign_many(&[(&aor("sip:bob@example.net"), "home1")], None);
        s.fc.kernel
            .put(client(), KernelRoute { server: 1, nat_port: None, adds_rport: false, aor_hash: Some(alice), shared });
        let answer = |to: &str| sent_to(&s.fc.on_service_datagram(line_response(to).as_bytes(), client(), service()));
        assert_eq!(answer("alice"), home2, "shared {shared}: the socket's own line's response");
        let bob = if shared { &home1 } else { &home2 };
        assert_eq!(&answer("bob"), bob, "shared {shared}: another assigned line's response");
        assert_eq!(answer("4912345"), home2, "shared {shared}: a response for no line goes by the entry");
        assert_eq!(s.fc.counters.dropped.load(Ordering::Relaxed), 0, "shared {shared}: nothing dropped");
    }
}

/// nat: a passed-up response of another line from a shared socket goes
/// where the program sends it: to the line's home from the line's own
/// edge port when `AORS` routes the line by a port whose reply entry
/// names this socket, its service and that home (bob: home1, port
/// 20002), else by the entry (port 20001, home2): its own line's, a line
/// whose port another socket holds (carol) or whose reply entry names
/// another home than its route (dave, mid-move), a line with no route,
/// an assigned line without a port of its own (frank: the request it
/// answers came through a port of this socket's, whose home is not
/// known to be frank's).
#[test]
fn a_shared_sockets_response_in_nat_mode_goes_by_its_lines_own_port_or_by_the_entry() {
    use crate::kernel::{aor_routes::hash_of, installed::LineRoute};
    let alice = redirector_ebpf::aor::aor_hash(b"sip:alice@example.net");
    let s = setup(Policy::Auto);
    let entry =
        KernelRoute { server: 1, nat_port: Some(20001), adds_rport: false, aor_hash: Some(alice), shared: true };
    s.fc.kernel.put(client(), entry);
    let elsewhere: SocketAddr = "203.0.113.99:5060".parse().unwrap();
    for (line, port, socket, server) in
        [("bob", 20002, client(), 0), ("carol", 20003, elsewhere, 0), ("dave", 20004, client(), 1)]
    {
        s.fc.kernel
            .put_line_route(hash_of(&aor(&format!("sip:{line}@example.net"))), LineRoute { server: 0, nat_port: port });
        s.fc.kernel.put_nat_reply(port, NatReply { client: socket, service: service(), server });
    }
    let sent = |to: &str| match s.fc.on_service_datagram(line_response(to).as_bytes(), client(), service()).as_slice() {
        [Action::Translate { edge_port, home, .. }] => Some((*edge_port, home.to_string())),
        _ => None,
    };
    let by_entry = Some((20001, HOME2.to_owned()));
    assert_eq!(sent("bob"), Some((20002, HOME1.to_owned())), "another line's, by its own port to its home");
    assert_eq!(sent("alice"), by_entry, "the socket's own line's");
    assert_eq!(sent("carol"), by_entry, "a line whose port another socket holds");
    assert_eq!(sent("dave"), by_entry, "a line whose reply entry names another home");
    assert_eq!(sent("erin"), by_entry, "a line with no route");
    s.fc.reassign_many(&[(&aor("sip:frank@example.net"), "home1")], None);
    assert_eq!(sent("frank"), by_entry, "an assigned line without a port of its own");
}

/// A shared socket's request of another line that came up whole (IP
/// fragments, too big once forwarded) goes where the program sends that
/// line's small ones, not to first contact: in dsr to the line's home
/// (bob's REGISTER and INVITE: home1), its own line's by the entry
/// (alice: home2); a line with no assignment (erin) is first contact's,
/// as the program passes it up. A socket not shared sends a request of
/// another AOR by its entry unread, a REGISTER of another AOR up.
#[test]
fn a_shared_sockets_request_of_another_line_goes_by_that_lines_route() {
    let alice = redirector_ebpf::aor::aor_hash(b"sip:alice@example.net");
    for shared in [true, false] {
        let s = setup(Policy::Auto);
        s.fc.reassign_many(&[(&aor("sip:bob@example.net"), "home1")], None);
        s.fc.kernel
            .put(client(), KernelRoute { server: 1, nat_port: None, adds_rport: false, aor_hash: Some(alice), shared });
        let sent = |datagram: Vec<u8>| match s.fc.on_service_datagram(&datagram, client(), service()).as_slice() {
            [Action::Encapsulate { home, .. }] => Some(home.to_string()),
            _ => None,
        };
        let (home1, home2) = (Some("198.51.100.11".to_owned()), Some("198.51.100.12".to_owned()));
        assert_eq!(sent(register_as("alice")), home2, "shared {shared}: its own line's REGISTER");
        let bob = if shared { &home1 } else { &None };
        assert_eq!(&sent(register_as("bob")), bob, "shared {shared}: another assigned line's REGISTER");
        let bob = if shared { &home1 } else { &home2 };
        assert_eq!(&sent(line_request("bob")), bob, "shared {shared}: another assigned line's INVITE");
        let erin = if shared { None } else { home2.clone() };
        assert_eq!(sent(line_request("erin")), erin, "shared {shared}: a line with no assignment");
    }
}

/// nat: as above, by the line's own edge port when its reply entry names
/// this socket and the route's home (bob); a line whose port another
/// socket holds (carol) is first contact's, as the program passes it up.
#[test]
fn a_shared_sockets_request_in_nat_mode_goes_by_its_lines_own_port() {
    use crate::kernel::{aor_routes::hash_of, installed::LineRoute};
    let alice = redirector_ebpf::aor::aor_hash(b"sip:alice@example.net");
    let s = setup(Policy::Auto);
    let entry =
        KernelRoute { server: 1, nat_port: Some(20001), adds_rport: false, aor_hash: Some(alice), shared: true };
    s.fc.kernel.put(client(), entry);
    s.fc.reassign_many(&[(&aor("sip:bob@example.net"), "home1"), (&aor("sip:carol@example.net"), "home1")], None);
    let elsewhere: SocketAddr = "203.0.113.99:5060".parse().unwrap();
    for (line, port, socket) in [("bob", 20002, client()), ("carol", 20003, elsewhere)] {
        s.fc.kernel
            .put_line_route(hash_of(&aor(&format!("sip:{line}@example.net"))), LineRoute { server: 0, nat_port: port });
        s.fc.kernel.put_nat_reply(port, NatReply { client: socket, service: service(), server: 0 });
    }
    let sent = |from: &str| match s.fc.on_service_datagram(&line_request(from), client(), service()).as_slice() {
        [Action::Translate { edge_port, home, .. }] => Some((*edge_port, home.to_string())),
        _ => None,
    };
    assert_eq!(sent("bob"), Some((20002, HOME1.to_owned())), "another line's, by its own port to its home");
    assert_eq!(sent("alice"), Some((20001, HOME2.to_owned())), "the socket's own line's, by the entry");
    assert_eq!(sent("carol"), None, "a line whose port another socket holds: first contact's");
}

/// An INVITE the line `from` of the client's socket sends.
fn line_request(from: &str) -> Vec<u8> {
    format!(
        "INVITE sip:4912345@example.net SIP/2.0\r\n{ONE_VIA}From: <sip:{from}@example.net>;tag=l\r\n\
         To: <sip:4912345@example.net>\r\nCall-ID: l1\r\nCSeq: 1 INVITE\r\nMax-Forwards: 70\r\n\
         Contact: <sip:{from}@203.0.113.7:5062>\r\nContent-Length: 0\r\n\r\n"
    )
    .into_bytes()
}

/// A 200 a line of the client's socket sends to an INVITE for `to`.
fn line_response(to: &str) -> String {
    format!(
        "SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 192.0.2.10;branch=z9hG4bKh1\r\nFrom: <sip:home@example.net>;tag=h\r\n\
         To: <sip:{to}@example.net>;tag=c\r\nCall-ID: r1\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n"
    )
}

const HOME1: &str = "198.51.100.11:5060";
const HOME2: &str = "198.51.100.12:5060";

fn aor(uri: &str) -> Aor {
    Aor::from_uri(uri, "To").unwrap()
}

/// Two clients of different homes: carol on home1, bob on home2.
fn carol_and_bob(policy: Policy) -> Setup {
    let s = setup(policy);
    let (carol, bob) = (aor("sip:carol@example.net"), aor("sip:bob@example.net"));
    s.fc.reassign_many(&[(&carol, "home1"), (&bob, "home2")], None);
    s
}

/// What a home (here `home`) sends the edge when its registrar has no
/// binding for the Request-URI: the caller's request, with its own Via on top.
fn relayed_by(home: &str, method: &str, callee: &str, max_forwards: u8) -> Vec<u8> {
    format!(
        "{method} sip:{callee}@example.net SIP/2.0\r\nVia: SIP/2.0/UDP {home};branch=z9hG4bKh1\r\n\
         Via: SIP/2.0/UDP 203.0.113.7:5062;branch=z9hG4bKc1;rport=5062\r\nMax-Forwards: {max_forwards}\r\n\
         To: <sip:{callee}@example.net>\r\nFrom: <sip:carol@example.net>;tag=c\r\nCall-ID: i@x\r\n\
         CSeq: 1 {method}\r\nRecord-Route: <sip:{home};lr>\r\nContent-Length: 0\r\n\r\n"
    )
    .into_bytes()
}

fn socket(text: &str) -> SocketAddr {
    text.parse().unwrap()
}

#[test]
fn a_homes_invite_goes_to_the_request_uris_home_not_the_callers() {
    for policy in [Policy::Auto, Policy::ByVia, Policy::Redirect] {
        let s = carol_and_bob(policy);
        let actions = s.fc.on_proxy_datagram(&relayed_by(HOME1, "INVITE", "bob", 69), socket(HOME1));
        let [Action::Forward { to, bytes }] = actions.as_slice() else { panic!("{policy:?}: {actions:?}") };
        assert_eq!(*to, socket(HOME2), "{policy:?}: bob's home, never carol's (From)");
        let forwarded = text(bytes);
        let vias: Vec<&str> = forwarded.lines().filter(|l| l.starts_with("Via:")).collect();
        assert!(vias[0].starts_with(&format!("Via: SIP/2.0/UDP {PROXY};branch=z9hG4bK-rdr-")), "{forwarded}");
        assert!(!vias[0].contains("rdr-svc"), "it came to the proxy address, not a service one: {}", vias[0]);
        assert_eq!(vias[1], format!("Via: SIP/2.0/UDP {HOME1};branch=z9hG4bKh1"));
        assert!(forwarded.contains("Max-Forwards: 68\r\n") && forwarded.contains("Record-Route: <sip:"), "{forwarded}");
        assert_eq!(s.fc.counters.proxied_for_homes.load(Ordering::Relaxed), 1);
        assert_eq!(s.fc.counters.redirected.load(Ordering::Relaxed), 0, "{policy:?}: a home is never redirected");
    }
}

#[test]
fn a_homes_request_on_the_service_socket_is_routed_by_its_target_too() {
    // In nat mode a home can reach the service address; one Via would
    // otherwise make it a client's first contact, redirected by From.
    let s = carol_and_bob(Policy::ByVia);
    let one_via = text(&relayed_by(HOME1, "INVITE", "bob", 70))
        .replace("Via: SIP/2.0/UDP 203.0.113.7:5062;branch=z9hG4bKc1;rport=5062\r\n", "");
    let actions = s.fc.on_service_datagram(one_via.as_bytes(), socket(HOME1), service());
    let [Action::Forward { to, .. }] = actions.as_slice() else { panic!("{actions:?}") };
    assert_eq!(*to, socket(HOME2));
    assert_eq!(s.fc.counters.installed.load(Ordering::Relaxed), 0, "a home is never put on the fast path");
    assert!(s.fc.installed.borrow().is_empty());
}

#[test]
fn a_homes_request_for_its_own_client_an_unknown_one_or_with_no_hops_left_is_answered_never_looped() {
    let s = carol_and_bob(Policy::Auto);
    let answer = |request: Vec<u8>, from: &str| {
        let actions = s.fc.on_proxy_datagram(&request, socket(from));
        let (to, response) = only_reply(&actions);
        assert_eq!((to, actions.len()), (socket(from), 1), "answered to the sender, nothing forwarded");
        response.lines().next().unwrap().to_owned()
    };
    assert_eq!(answer(relayed_by(HOME2, "INVITE", "bob", 70), HOME2), "SIP/2.0 480 Temporarily Unavailable");
    assert_eq!(answer(relayed_by(HOME1, "MESSAGE", "nobody", 70), HOME1), "SIP/2.0 404 Not Found");
    assert_eq!(answer(relayed_by(HOME1, "INVITE", "bob", 0), HOME1), "SIP/2.0 483 Too Many Hops");
    assert_eq!(s.fc.counters.unroutable_for_homes.load(Ordering::Relaxed), 2);
    assert!(s.fc.store().get(&aor("sip:nobody@example.net")).unwrap().is_none(), "a home's request assigns nobody");
    s.fc.set_health(1, false);
    assert_eq!(answer(relayed_by(HOME1, "INVITE", "bob", 70), HOME1), "SIP/2.0 480 Temporarily Unavailable");
}

/// A home's `dispatcher` pinging the edge it routes to gets 200; an
/// OPTIONS for a client is routed like any other request.
#[test]
fn a_homes_keepalive_to_the_edge_gets_200_and_an_options_for_a_client_goes_to_its_home() {
    let s = carol_and_bob(Policy::Auto);
    let ping = format!(
        "OPTIONS sip:{PROXY} SIP/2.0\r\nVia: SIP/2.0/UDP {HOME1};branch=z9hG4bKk1\r\nMax-Forwards: 70\r\n\
         To: <sip:{PROXY}>\r\nFrom: <sip:{HOME1}>;tag=k\r\nCall-ID: k@x\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
    );
    let actions = s.fc.on_proxy_datagram(ping.as_bytes(), socket(HOME1));
    let (to, response) = only_reply(&actions);
    assert_eq!((to, response.lines().next().unwrap()), (socket(HOME1), "SIP/2.0 200 OK"));
    assert_eq!(s.fc.counters.pings_from_homes_answered.load(Ordering::Relaxed), 1);
    let actions = s.fc.on_proxy_datagram(&relayed_by(HOME1, "OPTIONS", "bob", 70), socket(HOME1));
    let [Action::Forward { to, .. }] = actions.as_slice() else { panic!("{actions:?}") };
    assert_eq!(*to, socket(HOME2), "bob's home");
}

#[test]
fn a_homes_ack_follows_its_invite_or_goes_nowhere() {
    let s = carol_and_bob(Policy::Auto);
    let branch = |actions: Vec<Action>| match actions.as_slice() {
        [Action::Forward { to, bytes }] => {
            (*to, text(bytes).lines().find(|l| l.starts_with("Via:")).unwrap().to_owned())
        }
        other => panic!("expected one forward, got {other:?}"),
    };
    let invite = branch(s.fc.on_proxy_datagram(&relayed_by(HOME1, "INVITE", "bob", 70), socket(HOME1)));
    let ack = branch(s.fc.on_proxy_datagram(&relayed_by(HOME1, "ACK", "bob", 70), socket(HOME1)));
    assert_eq!(ack, invite, "the non-2xx ACK reaches bob's home in the INVITE's transaction");
    for (request, from) in
        [(relayed_by(HOME2, "ACK", "bob", 70), HOME2), (relayed_by(HOME1, "ACK", "nobody", 70), HOME1)]
    {
        assert!(s.fc.on_proxy_datagram(&request, socket(from)).is_empty(), "absorbed, never answered");
    }
    assert_eq!(s.fc.counters.absorbed_acks.load(Ordering::Relaxed), 2);
}

#[test]
fn the_answer_to_a_homes_request_goes_back_from_the_proxy_address() {
    // A dsr home owns the service address: an answer from it would be dropped.
    let s = carol_and_bob(Policy::Auto);
    let actions = s.fc.on_proxy_datagram(&relayed_by(HOME1, "INVITE", "bob", 70), socket(HOME1));
    let [Action::Forward { bytes, .. }] = actions.as_slice() else { panic!("{actions:?}") };
    let vias: String = text(bytes).lines().filter(|l| l.starts_with("Via:")).map(|l| format!("{l}\r\n")).collect();
    let ringing = format!(
        "SIP/2.0 180 Ringing\r\n{vias}To: <sip:bob@example.net>;tag=b\r\nFrom: <sip:carol@example.net>;tag=c\r\n\
         Call-ID: i@x\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n"
    );
    let relayed = s.fc.on_proxy_datagram(ringing.as_bytes(), socket(HOME2));
    let [Action::Forward { to, bytes }] = relayed.as_slice() else { panic!("{relayed:?}") };
    assert_eq!(*to, socket(HOME1));
    assert!(text(bytes).starts_with(&format!("SIP/2.0 180 Ringing\r\nVia: SIP/2.0/UDP {HOME1};branch=z9hG4bKh1\r\n")));
    assert_eq!(s.fc.counters.relayed.load(Ordering::Relaxed), 1);
}

#[test]
fn requests_on_the_proxy_socket_from_anyone_but_a_home_are_dropped() {
    let s = carol_and_bob(Policy::Auto);
    let stranger = "203.0.113.66:5060";
    assert!(s.fc.on_proxy_datagram(&relayed_by(stranger, "INVITE", "bob", 70), socket(stranger)).is_empty());
    assert_eq!(s.fc.counters.dropped.load(Ordering::Relaxed), 1);
    assert_eq!(s.fc.counters.requests.load(Ordering::Relaxed), 0);
}

/// The cookie `server` issues to `client` at `now`, as the XDP responder does.
fn cookie(server: &str, client: &str, now: u64) -> String {
    use redirector_ebpf::probe::{answer, parse_answer, probe};
    let mut bytes = probe(1);
    let config = probe_keys().config_at(now, 5099, true);
    let (server, client) = (server.parse().unwrap(), client.parse().unwrap());
    answer(&mut bytes, &config, &crate::probe::address(server), &crate::probe::address(client));
    crate::probe::cookie_text(&parse_answer(&bytes).unwrap().cookie)
}

fn register_with_cookie(user: &str, cookie: &str) -> Vec<u8> {
    let plain = text(&register(ONE_VIA, &format!("Redirector-Cookie: {cookie}\r\n")));
    plain.replace("alice@", &format!("{user}@")).into_bytes()
}

fn server_of(s: &Setup, user: &str) -> String {
    let aor = Aor::from_uri(&format!("sip:{user}@example.net"), "To").unwrap();
    s.fc.store().get(&aor).unwrap().unwrap().server
}

/// The home rendezvous hashing gives `user`, and the other one.
fn homes_of(s: &Setup, user: &str) -> (&'static str, &'static str) {
    let aor = Aor::from_uri(&format!("sip:{user}@example.net"), "To").unwrap();
    let normal = s.fc.pool.load().choose(&aor, None).unwrap().name.clone();
    if normal == "home1" { ("home1", "home2") } else { ("home2", "home1") }
}

const HOME_IP: [&str; 2] = ["198.51.100.11", "198.51.100.12"];

fn ip_of(home: &str) -> &'static str {
    if home == "home1" { HOME_IP[0] } else { HOME_IP[1] }
}

#[test]
fn a_valid_cookie_gives_a_new_aor_the_home_it_names() {
    let s = setup(Policy::ByVia);
    let now = unix_seconds();
    for user in ["alice", "bob", "carol"] {
        let (_, other) = homes_of(&s, user);
        let register = register_with_cookie(user, &cookie(ip_of(other), "203.0.113.7", now));
        s.fc.on_service_datagram(&register, client(), service());
        assert_eq!(server_of(&s, user), other, "{user} went where its cookie said, not where hashing puts it");
    }
    assert_eq!(s.fc.counters.cookies_honoured.load(Ordering::Relaxed), 3);
    assert_eq!(s.fc.counters.cookies_ignored.load(Ordering::Relaxed), 0);
}

#[test]
fn a_tampered_expired_foreign_or_unusable_cookie_is_ignored_and_counted() {
    let mut servers = vec![home("home1", 0, 11, ServerState::Active), home("home2", 1, 12, ServerState::Active)];
    let s = setup_with(Policy::ByVia, servers.clone());
    let now = unix_seconds();
    let tamper = |cookie: String| {
        let mut bytes = cookie.into_bytes();
        // A hex digit of the MAC.
        bytes[60] = if bytes[60] == b'0' { b'1' } else { b'0' };
        String::from_utf8(bytes).unwrap()
    };
    type Make = Box<dyn Fn(&str) -> String>;
    let cases: [(&str, Make); 5] = [
        ("tampered", Box::new(move |home| tamper(cookie(home, "203.0.113.7", now)))),
        ("expired", Box::new(move |home| cookie(home, "203.0.113.7", now - 3 * 300))),
        ("another client's", Box::new(move |home| cookie(home, "203.0.113.8", now))),
        ("the edge's", Box::new(move |_| cookie("192.0.2.10", "203.0.113.7", now))),
        ("garbage", Box::new(|_| "not-a-cookie".to_owned())),
    ];
    for (index, (what, make)) in cases.iter().enumerate() {
        let user = format!("user{index}");
        let (normal, other) = homes_of(&s, &user);
        s.fc.on_service_datagram(&register_with_cookie(&user, &make(ip_of(other))), client(), service());
        assert_eq!(server_of(&s, &user), normal, "a {what} cookie was honoured");
    }
    assert_eq!(s.fc.counters.cookies_ignored.load(Ordering::Relaxed), cases.len() as u64);
    assert_eq!(s.fc.counters.cookies_honoured.load(Ordering::Relaxed), 0);
    // A home that takes no new clients is not given one by a cookie.
    let (normal, other) = homes_of(&s, "alice");
    servers[if other == "home1" { 0 } else { 1 }].state = ServerState::Draining;
    let draining = setup_with(Policy::ByVia, servers);
    let valid = cookie(ip_of(other), "203.0.113.7", now);
    draining.fc.on_service_datagram(&register_with_cookie("alice", &valid), client(), service());
    assert_eq!(server_of(&draining, "alice"), normal);
    assert_eq!(draining.fc.counters.cookies_honoured.load(Ordering::Relaxed), 0);
    assert_eq!(draining.fc.counters.cookies_ignored.load(Ordering::Relaxed), 1);
}

#[test]
fn a_known_aor_keeps_its_home_whatever_cookie_it_presents() {
    let s = setup(Policy::ByVia);
    let (normal, other) = homes_of(&s, "alice");
    s.fc.on_service_datagram(&register(ONE_VIA, ""), client(), service());
    assert_eq!(server_of(&s, "alice"), normal);
    let valid = cookie(ip_of(other), "203.0.113.7", unix_seconds());
    s.fc.on_service_datagram(&register_with_cookie("alice", &valid), client(), service());
    assert_eq!(server_of(&s, "alice"), normal, "moving a client takes the operator or the rebalancer");
    assert_eq!(s.fc.counters.cookies_ignored.load(Ordering::Relaxed), 1);
    assert_eq!(s.fc.counters.cookies_honoured.load(Ordering::Relaxed), 0);
}
