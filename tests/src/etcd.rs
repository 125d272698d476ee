//! A three-member etcd cluster (Debian's etcd-server 3.4) in a namespace of
//! its own, for the tests of several edges sharing one store.
//!
//! ```text
//!  namespace "store": members 10.78.0.1-3 on lo (clients :2379, peers :2380)
//!  link N: veth sN in an edge's namespace (10.79.N.2) ── xN in "store" (10.79.N.1)
//! ```
//! Elections are tuned for tests (50 ms heartbeats, 500 ms election
//! timeout), so a killed leader is replaced within about a second. The
//! members take transactions of `MAX_TXN_OPS` operations, as README's
//! "several edges" tells operators to run them.

use std::{
    net::Ipv4Addr,
    os::unix::process::CommandExt,
    process::{Child, Output, Stdio},
    time::{Duration, Instant},
};

use base64::{Engine, engine::general_purpose::STANDARD as BASE64};

use crate::{
    netns::NetNs,
    topology::{kill_group, tempdir},
};

pub const MEMBERS: usize = 3;

/// The members' `--max-txn-ops`, README's: a batch of new AORs (a compare
/// and a put each) in one transaction, one raft entry.
pub const MAX_TXN_OPS: usize = 1024;

/// Member `index`'s address (its client and peer URLs are on it).
pub fn member_address(index: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 78, 0, 1 + index as u8)
}

fn client_url(index: usize) -> String {
    format!("http://{}:2379", member_address(index))
}

fn peer_url(index: usize) -> String {
    format!("http://{}:2380", member_address(index))
}

pub struct EtcdCluster {
    /// Each member's process while it runs (first, so killed on drop before
    /// the namespace and data dirs go).
    members: Vec<Option<Child>>,
    pub ns: NetNs,
    dir: tempdir::Dir,
}

impl EtcdCluster {
    /// Starts the three members in a fresh "store" namespace and waits
    /// (bounded) until every one is healthy.
    pub fn new() -> Self {
        let ns = NetNs::new("rdr-store");
        for index in 0..MEMBERS {
            ns.ip(&format!("addr add {}/32 dev lo", member_address(index)));
        }
        let mut cluster = Self { members: (0..MEMBERS).map(|_| None).collect(), ns, dir: tempdir::Dir::new() };
        for index in 0..MEMBERS {
            cluster.spawn_member(index);
        }
        cluster.wait_until(|c| c.healthy_members() == MEMBERS, "every etcd member is healthy");
        cluster
    }

    /// The members' client URLs, as an edge's `[store] endpoints` lists them.
    pub fn endpoints(&self) -> Vec<String> {
        (0..MEMBERS).map(client_url).collect()
    }

    /// The running members' process ids.
    pub fn pids(&self) -> Vec<u32> {
        self.members.iter().flatten().map(Child::id).collect()
    }

    /// SIGKILLs member `index`, as a crashed host would go.
    pub fn kill_member(&mut self, index: usize) {
        kill_group(&mut self.members[index].take().expect("that member runs"));
    }

    /// Starts member `index` again on its data dir, and waits until it is
    /// healthy.
    pub fn start_member(&mut self, index: usize) {
        self.spawn_member(index);
        let endpoint = client_url(index);
        self.wait_until(
            |c| c.etcdctl_to(&c.ns, &endpoint, &["endpoint", "health"]).status.success(),
            &format!("etcd member {index} is healthy again"),
        );
    }

    fn spawn_member(&mut self, index: usize) {
        assert!(self.members[index].is_none(), "member {index} was killed first");
        let name = format!("m{index}");
        let data = self.dir.path().join(&name);
        let log = std::fs::File::create(self.dir.path().join(format!("{name}.log"))).expect("an etcd log file");
        let cluster: Vec<String> = (0..MEMBERS).map(|i| format!("m{i}={}", peer_url(i))).collect();
        let (client, peer) = (client_url(index), peer_url(index));
        #[rustfmt::skip]
        let args = [
            "--name", &name, "--data-dir", data.to_str().unwrap(),
            "--listen-client-urls", &client, "--advertise-client-urls", &client,
            "--listen-peer-urls", &peer, "--initial-advertise-peer-urls", &peer,
            "--initial-cluster", &cluster.join(","), "--initial-cluster-state", "new",
            "--initial-cluster-token", "redirector-test",
            "--heartbeat-interval", "50", "--election-timeout", "500",
            "--max-txn-ops", &MAX_TXN_OPS.to_string(),
            "--logger", "zap", "--log-level", "warn",
        ];
        let child = self
            .ns
            .command("etcd", &args)
            .process_group(0)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("starting etcd (apt-get install etcd-server)");
        self.members[index] = Some(child);
    }

    /// `etcdctl ARGS` run in `ns` against every member, with short dial
    /// and command timeouts, so a check from a cut-off namespace fails fast.
    pub fn etcdctl(&self, ns: &NetNs, args: &[&str]) -> Output {
        self.etcdctl_to(ns, &self.endpoints().join(","), args)
    }

    /// `etcdctl ARGS` against `endpoints` (comma-separated URLs).
    fn etcdctl_to(&self, ns: &NetNs, endpoints: &str, args: &[&str]) -> Output {
        let mut all = vec!["--endpoints", endpoints, "--dial-timeout", "1s", "--command-timeout", "2s"];
        all.extend(args);
        ns.command("etcdctl", &all)
            .env("ETCDCTL_API", "3")
            .stdin(Stdio::null())
            .output()
            .expect("running etcdctl (apt-get install etcd-client)")
    }

    /// How many members answer `endpoint health` as healthy.
    pub fn healthy_members(&self) -> usize {
        let output = self.etcdctl(&self.ns, &["endpoint", "health", "-w", "json"]);
        let health: Vec<serde_json::Value> = serde_json::from_slice(&output.stdout).unwrap_or_default();
        health.iter().filter(|member| member["health"] == true).count()
    }

    /// The index of the member that leads the cluster now, as the
    /// members answering `endpoint status` report it.
    pub fn leader(&self) -> Option<usize> {
        let output = self.etcdctl(&self.ns, &["endpoint", "status", "-w", "json"]);
        let statuses: Vec<serde_json::Value> = serde_json::from_slice(&output.stdout).unwrap_or_default();
        let leads = |status: &serde_json::Value| {
            let leader = status["Status"]["leader"].as_u64();
            leader.is_some() && status["Status"]["header"]["member_id"].as_u64() == leader
        };
        let endpoint = statuses.iter().find(|status| leads(status))?["Endpoint"].as_str()?.to_owned();
        (0..MEMBERS).find(|&index| client_url(index) == endpoint)
    }

    /// The sum over the running members of each of etcd's Prometheus
    /// series named in `wanted` (by its name and labels, as `/metrics`
    /// writes it), read through each member's client URL.
    pub fn metrics(&self, wanted: &[&str]) -> Vec<f64> {
        let mut sums = vec![0.0; wanted.len()];
        for index in (0..MEMBERS).filter(|&index| self.members[index].is_some()) {
            let output = self.ns.command("curl", &["-sf", &format!("{}/metrics", client_url(index))]).output();
            let text = output.map(|out| String::from_utf8_lossy(&out.stdout).into_owned()).unwrap_or_default();
            for line in text.lines().filter(|line| !line.starts_with('#')) {
                let Some((series, value)) = line.rsplit_once(' ') else { continue };
                if let (Some(at), Ok(value)) = (wanted.iter().position(|w| *w == series), value.parse::<f64>()) {
                    sums[at] += value;
                }
            }
        }
        sums
    }

    /// Whether a put then a read of `key` succeeds from `ns` (through a
    /// quorum).
    pub fn writable_from(&self, ns: &NetNs, key: &str, value: &str) -> bool {
        self.etcdctl(ns, &["put", key, value]).status.success()
            && self.etcdctl(ns, &["get", "--print-value-only", key]).stdout == format!("{value}\n").into_bytes()
    }

    /// Every key under `prefix` with its value, in key order.
    pub fn get_prefix(&self, prefix: &str) -> Vec<(String, String)> {
        let output = self.etcdctl(&self.ns, &["get", "--prefix", prefix, "-w", "json"]);
        assert!(output.status.success(), "etcdctl get --prefix {prefix}: {}", String::from_utf8_lossy(&output.stderr));
        let answer: serde_json::Value = serde_json::from_slice(&output.stdout).expect("etcdctl's JSON");
        let text = |field: &serde_json::Value| {
            // etcdctl's JSON encodes keys and values in base64.
            let bytes = BASE64.decode(field.as_str().expect("a base64 string")).expect("etcdctl's base64");
            String::from_utf8(bytes).expect("UTF-8 in etcd")
        };
        let kvs = answer["kvs"].as_array().map_or(&[][..], Vec::as_slice);
        kvs.iter().map(|kv| (text(&kv["key"]), text(&kv["value"]))).collect()
    }

    /// Waits (bounded: 20 s) until `condition` holds.
    fn wait_until(&self, condition: impl Fn(&Self) -> bool, what: &str) {
        let start = Instant::now();
        while !condition(self) {
            assert!(start.elapsed() < Duration::from_secs(20), "timed out waiting until {what}\n{}", self.logs());
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The last lines each member logged (warnings and errors), for a
    /// failure's message: the data dirs go with the cluster.
    fn logs(&self) -> String {
        let tail = |index: usize| {
            let log = std::fs::read_to_string(self.dir.path().join(format!("m{index}.log"))).unwrap_or_default();
            let lines: Vec<&str> = log.lines().collect();
            lines[lines.len().saturating_sub(10)..].join("\n")
        };
        (0..MEMBERS).map(|index| format!("etcd member {index}:\n{}\n", tail(index))).collect()
    }

    /// Links `edge` to the store namespace as link `index`: veth `s{index}`
    /// on the edge's side, and a route to the members through it.
    pub fn link(&self, edge: &NetNs, index: u8) {
        let (edge_side, store_side) = (format!("s{index}"), format!("x{index}"));
        self.ns.ip(&format!("link add {store_side} type veth peer name {edge_side} netns {}", edge.name));
        self.ns.ip(&format!("addr add 10.79.{index}.1/24 dev {store_side}"));
        self.ns.ip(&format!("link set {store_side} up"));
        edge.ip(&format!("addr add 10.79.{index}.2/24 dev {edge_side}"));
        edge.ip(&format!("link set {edge_side} up"));
        edge.ip(&format!("route add 10.78.0.0/24 via 10.79.{index}.1"));
    }
}

/// A started cluster, as `new` makes it.
impl Default for EtcdCluster {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for member in self.members.iter_mut().flatten() {
            kill_group(member);
        }
    }
}
