//! The data plane's rules, in the order a packet meets them:
//!
//! 1. Ethernet, optionally one 802.1Q tag, then IPv4 (options allowed) or
//!    IPv6 (UDP directly after the fixed header). Any other frame is
//!    `XDP_PASS`, counted `not_service`.
//! 2. Headers that are truncated or inconsistent (IHL < 5, total length
//!    beyond the frame, wrong version…) are `XDP_PASS`ed untouched and
//!    counted `malformed`: the kernel drops what it cannot use, and the edge
//!    never drops what it cannot prove is its own.
//! 3. IP fragments are `XDP_PASS`ed (the kernel reassembles; the daemon sees
//!    the whole datagram), counted `fragment`.
//! 4. UDP to a `SERVICES` endpoint, or a nat reply, whose UDP length is below
//!    8 or beyond the IP payload, or whose IPv6 UDP checksum is zero, is
//!    `XDP_DROP`ped, counted `malformed`: it is ours and garbage.
//! 5. A SUBSCRIBE request to a service is `XDP_PASS`ed whoever sends it
//!    (`pass_subscribe`): the daemon records the watcher's dialog, to send
//!    it a NOTIFY when the watched client moves, and routes it to the
//!    watched client's home server, not the sender's. It is recognised by
//!    the first ten payload bytes, `SUBSCRIBE ` (RFC 3261 method names are
//!    case-sensitive; a request line has no leading whitespace).
//!    Like everything else bound for first contact (rule 6's `pass_miss`,
//!    `pass_other_aor` and `pass_aor_unseen`), it is first checked
//!    against `THROTTLED`: a source prefix the daemon throttled (it brought
//!    in new clients past the flood limits) gets its allowance of such
//!    datagrams a second, the rest are `XDP_DROP`ped (`drop_throttled`;
//!    `throttle.rs`). `THROTTLED` is looked up only while `CONFIG` has
//!    `CONFIG_THROTTLING`, so that while nothing is throttled a first
//!    contact costs no lookup. No throttle that still holds is skipped:
//!    the daemon (`DataPlane`, `CONFIG`'s one writer, `MissLookups`) sets
//!    the flag before it writes a throttle, and clears it no sooner than a
//!    second (`LIFT_MARGIN_NS`) after the end of the latest throttle it
//!    wrote (at the state owner's next round),
//!    when every entry admits everything anyway (an entry the LRU evicted
//!    early only keeps the flag set longer); a daemon that starts sets it
//!    if the pinned `THROTTLED` holds a throttle that has not lifted.
//! 6. A client in `CLIENTS` whose home server is active or draining is
//!    forwarded (dsr or nat, `XDP_TX`, or `XDP_REDIRECT` when its next hop
//!    (rule 8) is on another interface; a VLAN-tagged frame always leaves by
//!    `XDP_TX` with its tag); an unknown client, a nat entry without an edge
//!    port, or a down server is passed to user space (`pass_miss`,
//!    `pass_server_down`).
//!    A datagram from a source not in `CLIENTS` is first checked against
//!    the throttle (rule 5: `drop_throttled` past its allowance, before
//!    anything of it is read). In nat mode, and in dsr mode from a source
//!    whose address is not in `PROXIES` (the upstream proxies the daemon
//!    saw forward a request, with more than one Via value: any port of
//!    the address), it goes up unread (`pass_miss`). `PROXIES` is looked
//!    up only while `CONFIG` has `CONFIG_KNOWS_PROXIES`: until a proxy is
//!    known a miss costs no lookup. The daemon sets the flag before it
//!    writes its first proxy and never clears it while its program runs;
//!    a flag it found set when it started (a previous daemon's program,
//!    still attached, knows proxies of its own in its unpinned `PROXIES`)
//!    is kept until its own program is attached in that one's place. So
//!    a miss with both flags clear costs the `SERVICES` and `CLIENTS`
//!    lookups and its counter; each flag set adds its lookup.
//!    In dsr mode, a request from an upstream proxy (what is no
//!    request, or one whose AOR the program would not read, as below, is
//!    not) is read for its Via values (`vias.rs`: lines named `Via`
//!    or `v` in any case, values separated by commas in one line; the scan
//!    stops at the line after a lone top Via that is no Via, as proxies
//!    put theirs together at the top), and one that came through another
//!    proxy, with more than one Via value, for its AOR (as below: `To` of
//!    a REGISTER, `From` of the others). If the program reads that AOR
//!    with certainty, finds its hash in `AORS` (the daemon's assignments:
//!    `AorRoute`) and its home is active or draining, the request is
//!    encapsulated to that home exactly as a client's dsr hit is (rules 6
//!    and 8; the home answers the proxy directly), counted
//!    `forwarded_by_aor` and in the home's `SERVER_STATS`, and the route's
//!    `last_seen_ns` is stamped (at most once a second; expiry's only
//!    sighting of such an AOR); its source is not installed (it speaks
//!    for many clients). The hash is not keyed: a request for an AOR the
//!    daemon never assigned, crafted to share an assigned AOR's hash,
//!    would reach that AOR's home. Everything else goes up
//!    as a miss: at most one Via value, an AOR not
//!    read or not in `AORS` (`pass_miss`); a home that is down
//!    (`pass_server_down`); Via values the program cannot count with
//!    certainty: a folded Via line, a quote or `<` before the second
//!    value, headers past the bytes read (`pass_vias_unseen`). A proxy in
//!    a throttled prefix has all its misses, routed by AOR or not, count
//!    against the allowance (the daemon throttles only prefixes whose own
//!    clients flood it, never for a proxy's requests). `PROXIES` is an LRU
//!    of `MAX_PROXIES`, not pinned: a new program starts it empty, and the
//!    daemon writes a proxy back (again at most once a minute) whenever a
//!    request of its goes up; an address no longer used costs a slot until
//!    the LRU reuses it, and a request from it a read. A home server's own
//!    requests never take this path: in dsr mode it owns the service
//!    address, so they never reach the edge's program.
//!    A client's entry says which datagrams may take it (`aor.rs`: the
//!    daemon's canonical AOR of a request's `To` for a REGISTER, its
//!    `From` otherwise, and of a shared socket's response its `To`, the
//!    line that answered; hashed, read within the frame's first 512
//!    bytes): with `CLIENT_SHARED` (a socket that carries several AORs, a
//!    multi-line phone or an IP-PBX) every request and response, with
//!    `CLIENT_CHECKS_REGISTER` (every client first contact installed) a
//!    REGISTER (its method in any case), takes the fast path only if that
//!    hash is the entry's `aor_hash`.
//!    A shared socket's request or response of another AOR (the phone's
//!    second line) is routed by that AOR as a proxied request is, in
//!    `redirector_other_line`, which the program tail-calls through
//!    `OTHER_LINES` for any datagram of another AOR than its entry's (the
//!    edge program's verification has no room left for a second forward;
//!    without that program in `OTHER_LINES` the datagram goes up as
//!    `pass_other_aor`): if `AORS` has it and its home is active or
//!    draining, it is sent to that home, counted `forwarded_other_aor`
//!    and in the home's `SERVER_STATS`, and the route's `last_seen_ns` is
//!    stamped once it is sent (the line's sighting for expiry: one the
//!    port check or the FIB sends up stamps nothing); the entry's load and
//!    `last_seen_ns` are not touched. In dsr mode it is encapsulated
//!    (rules 6 and 8). In nat mode it is rewritten as the entry's hits are
//!    (`;rport` added by the entry's `CLIENT_ADDS_RPORT`, or up as
//!    `pass_via_unseen` / `no_headroom`), but from the line's own edge
//!    port, `AorRoute::nat_port_be`, and only if that port's `NAT_REPLIES`
//!    entry names this very socket, the service it sent to and the route's
//!    home (so the home's replies to the port come back to it by rule 7);
//!    otherwise it goes up (`pass_other_aor`): a route with no port, a
//!    port the same line holds on another socket (never another socket's
//!    translation), or a move between the daemon's two writes (it writes
//!    the reply entry's home first, then the route's). An AOR `AORS`
//!    lacks goes up (`pass_other_aor`, within the throttle): the daemon
//!    routes a request by its own AOR, and sends a response (one whose
//!    `To` is a number the socket's PBX serves, say) to its `To` line's
//!    home if that line is assigned (nat: if the program would send it by
//!    the line's port, by the same checks), else by the entry; one whose
//!    home is down goes up as `pass_server_down`.
//!    A non-shared socket's REGISTER of another AOR (a scanner enumerating
//!    extensions, or the first sign of a second line) goes up
//!    (`pass_other_aor`): the daemon marks the socket shared. A datagram
//!    checked whose AOR the program cannot read with certainty (a folded
//!    or escaped value, an IPv6 host, a password, another scheme, a method
//!    the daemon would read otherwise, a response of another SIP version
//!    or without a `To`, a value not complete within the bytes read) is
//!    passed up too (`pass_aor_unseen`). The daemon sends a passed-up
//!    request of a shared socket (IP fragments, too big once forwarded)
//!    on where the program would have: its own line's to the entry's
//!    home, another line's to the home `AORS` routes it to (nat: from the
//!    line's port, by the checks above); any other request of another
//!    line is a first contact; a response goes to the home of the line
//!    its `To` names if that line is assigned (nat: from the line's port,
//!    by the checks above), else by the entry (an unread `To`). What is no SIP
//!    message (a datagram shorter than any request line, as RFC 5626
//!    keepalives; one whose first byte no method starts with, as STUN),
//!    and a non-shared socket's responses and requests other than
//!    REGISTERs, take the entry unread.
//!    The daemon keeps a shared socket's entry while another of its lines
//!    is routed: when the line the entry is for is withdrawn (moved
//!    to a home this edge does not know, or a rewrite failed) or expires,
//!    or its entry goes idle while another line's route was stamped
//!    within the idle timeout (the socket busy for that line),
//!    the entry is handed to another line that `AORS` routes (that line's
//!    home, hash and owner; the edge port and load slot kept; nat: the
//!    line's own port too, as its home may hold it), and the
//!    withdrawn line goes up as `pass_other_aor`; when it comes back,
//!    first contact routes it in `AORS` again and leaves the entry as it
//!    is. The daemon learns a socket's other lines at their first contact;
//!    one restarted knows none until they come up again (nat: but for the
//!    lines whose own ports it keeps, see rule 7), so a withdrawal takes
//!    the entry, and the next line that comes up takes the socket over.
//!    In nat mode, a client whose entry has `CLIENT_ADDS_RPORT` (its first
//!    request's Via did not ask for rport) gets `;rport` added at the end of
//!    its request's top Via value when the value has none (`via.rs`; a
//!    response, whose first bytes are `SIP/`, is left alone); a request
//!    whose top Via is not complete within the frame's first 512 bytes is
//!    passed to user space (`pass_via_unseen`), as is one the frame's
//!    headroom cannot grow for (`no_headroom`).
//!    Every datagram that takes the entry (forwarded or not; not another
//!    AOR's request, passed up) counts one packet in the client's
//!    `LOADS` slot (`ClientEntry::load_slot`, per CPU: the rebalancer's
//!    load estimate) and writes nothing to the shared entry except
//!    `last_seen_ns`, for user space's idle expiry, and that only when the
//!    stamp is at least a second old (`stamps_last_seen`): idle expiry sees
//!    a client to within `LAST_SEEN_GRANULARITY_NS`.
//! 7. In nat mode, UDP to the edge address on a port in `NAT_REPLIES` from
//!    that entry's home server is rewritten back to the client, by the
//!    reply hop of rule 8. A shared socket's other line's own port (rule
//!    6) is such an entry too: its line's home's replies and requests go
//!    back to the socket, from the service address it sent to. A restarted
//!    daemon keeps such a port (the home holds the line's binding there)
//!    while its line's pinned `AORS` route names it and the entry names
//!    the route's home, the store still assigning the line.
//! 8. Next hops. A client's packet goes to its home server by the hop the
//!    daemon keeps for that server and family (`HOPS[server_hop(..)]`:
//!    egress device, MTU, both MACs, from the kernel's route and neighbour
//!    tables). A nat reply goes to its client by the hop kept for the
//!    longest prefix holding the client's address (`REPLY_HOPS`, an LPM
//!    trie mirroring the kernel's route prefixes: one lookup, so the
//!    clients behind one gateway share its hop and no per-client state is
//!    written; an on-link client with a neighbour has a /32 or /128 of its
//!    own; a prefix no one hop may stand for, such as a multipath route,
//!    an on-link prefix as such or the kernel's local table, has an entry
//!    that is never fresh; it holds none of a family under that family's
//!    policy routing, and nothing when the prefixes outnumber its room).
//!    A kept hop is followed when it is fresh: its generation is
//!    `HOP_STATE`'s (the daemon bumps it when the kernel's tables change,
//!    before it recomputes the hops), the daemon's lease in `HOP_STATE`
//!    has not run out (a daemon that died stops vouching within a second),
//!    a server's hop was computed for the server's present address, and
//!    the packet as it will leave fits the hop's MTU. Otherwise the kernel
//!    FIB is asked (`bpf_fib_lookup`) as the kernel would route it. Whenever the FIB has no complete answer, the packet is
//!    passed untouched (`fib_miss`): it is never rewritten before the route is known. Passed
//!    up, it reaches the daemon as a first contact; a client's FIB miss is
//!    also reported in `EVENTS` with its server, so the daemon makes the
//!    kernel resolve that neighbour at once (its reachability pings keep
//!    the entries fresh otherwise).
//!
//! 9. Probes (`redirector_ebpf::probe`, `xdp/probe.rs`), when `PROBE` has a
//!    port: UDP to a `SERVICES` entry marked `SERVICE_PROBE` (a service
//!    address and the probe port; the edge answers for the pool) or, in
//!    `redirector_decap`, to one of `DECAP_ADDRESSES` at the probe port (a
//!    home answers for itself). A well-formed probe is answered in place
//!    with `XDP_TX` (`probe_answered`), or dropped unanswered while
//!    `PROBE` says not to answer (`probe_silent`); anything else sent
//!    there (bad UDP header, another length, version, kind, or non-zero
//!    reserved bytes) is `XDP_DROP`ped (`probe_malformed`). Fragments and
//!    broken IP headers never get this far (rules 2 and 3).
//!    In `redirector_decap` only, a datagram of a probe's length whose
//!    first six bytes are those of a state message (`probe::KIND_STATE`,
//!    an edge telling this home to answer or not) is `XDP_PASS`ed
//!    (`probe_state`), answered or not: `decap` reads it on its socket and
//!    verifies the rest. The edge program drops it as malformed.
//!
//! No path returns `XDP_ABORTED`.

mod aor;
mod decap;
mod encap;
mod floor;
mod headers;
mod maps;
mod nat;
mod packet;
mod probe;
mod program;
mod route;
mod rport;
mod scratch;
