//! Per-verdict counters: every packet the redirector program sees bumps
//! exactly one of these (`COUNTERS`, a per-CPU array indexed by `Counter`).

macro_rules! counters {
    ($($(#[doc = $doc:literal])* $name:ident => $label:literal,)*) => {
        #[repr(u32)]
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub enum Counter {
            $($(#[doc = $doc])* $name,)*
        }

        impl Counter {
            pub const ALL: &'static [Counter] = &[$(Counter::$name,)*];

            /// Stable snake_case name for stats output.
            pub const fn label(self) -> &'static str {
                match self {
                    $(Counter::$name => $label,)*
                }
            }
        }
    };
}

counters! {
    /// Not UDP to a service address:port (nor a nat reply): passed untouched.
    NotService => "not_service",
    /// Client known, forwarded to its home server without user space.
    Forwarded => "forwarded",
    /// dsr: a request from a source not on the fast path, forwarded by
    /// another proxy (more than one Via value), whose AOR `AORS` routes:
    /// sent to the AOR's home server without user space, the source not
    /// installed (see `xdp/mod.rs`).
    ForwardedByAor => "forwarded_by_aor",
    /// dsr: a request (or response) from a socket that carries several
    /// AORs (`CLIENT_SHARED`) for another of them than its entry's, whose
    /// AOR `AORS` routes: sent to that AOR's home server without user
    /// space, its entry's load and `last_seen_ns` untouched (see
    /// `xdp/mod.rs`).
    ForwardedOtherAor => "forwarded_other_aor",
    /// nat mode: a home server's reply rewritten back to its client.
    NatReply => "nat_reply",
    /// Client unknown: passed to user space for first contact.
    PassMiss => "pass_miss",
    /// A SUBSCRIBE to a service: always the daemon's, which records the
    /// watcher's dialog and routes it to the watched client's home server.
    PassSubscribe => "pass_subscribe",
    /// Client's home server is down or its slot unused: passed to user space.
    PassServerDown => "pass_server_down",
    /// The FIB had no route or no resolved neighbour (or the packet would
    /// need fragmenting): passed untouched, so it reaches the daemon.
    FibMiss => "fib_miss",
    /// The home server or edge has no address of the packet's family: passed.
    NoAddressForFamily => "no_address_for_family",
    /// dsr: the driver left no headroom for the outer header (nat: for the
    /// `;rport` it adds): passed untouched.
    NoHeadroom => "no_headroom",
    /// A REGISTER from a client's socket (any request from a shared one)
    /// for another AOR than the one the socket was put on the fast path
    /// for: passed to the daemon, which routes it by its own AOR, within
    /// the flood limits.
    PassOtherAor => "pass_other_aor",
    /// A request checked as for `pass_other_aor` whose AOR the program
    /// cannot read with certainty (a folded or escaped value, an unusual
    /// form, a header past the bytes it reads): passed to the daemon.
    PassAorUnseen => "pass_aor_unseen",
    /// dsr: a request from a source not on the fast path whose Via values
    /// the program cannot count with certainty (a folded Via line, a quote
    /// or `<` in one, headers past the bytes it reads): passed to the
    /// daemon as a miss is.
    PassViasUnseen => "pass_vias_unseen",
    /// nat: a request whose top Via (and whether it asks for `rport`) is
    /// not within the first bytes the program reads: passed to the daemon,
    /// which proxies it.
    PassViaUnseen => "pass_via_unseen",
    /// A first-contact datagram from a source prefix the daemon throttled
    /// (it brought in new clients past the flood limits), beyond the
    /// prefix's allowance: dropped before it reaches the daemon.
    DropThrottled => "drop_throttled",
    /// Truncated or inconsistent headers: passed untouched when the packet is
    /// not known to be ours, dropped when it is addressed to a service.
    Malformed => "malformed",
    /// IP fragments: passed to the kernel, which reassembles them.
    Fragment => "fragment",
    /// redirector_decap: outer IPIP / IPv6-in-IPv6 header removed.
    Decapsulated => "decapsulated",
    /// A probe to the probe port answered in place (`XDP_TX`), see `probe`.
    ProbeAnswered => "probe_answered",
    /// UDP to the probe port that is no well-formed probe: dropped.
    ProbeMalformed => "probe_malformed",
    /// A probe while this server (or, on the edge, the pool) takes no new
    /// clients: dropped unanswered.
    ProbeSilent => "probe_silent",
    /// redirector_decap: an edge's state message (`probe::KIND_STATE`) to
    /// this home's probe port, passed up to `decap`, which verifies it.
    ProbeState => "probe_state",
}

pub const COUNTER_COUNT: u32 = Counter::ALL.len() as u32;
