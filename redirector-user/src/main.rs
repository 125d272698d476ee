//! The `redirector` binary: the edge daemon and its helpers.

use std::{
    io::IsTerminal,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context, Result, bail};
use clap::{ArgGroup, CommandFactory, Parser, Subcommand, ValueEnum};
use redirector::{
    config::{Config, ConfigError, DEFAULT_BPFFS, DEFAULT_SOCKET},
    daemon::Daemon,
    kernel::{
        loader::{DataPlane, kernel_memory, xdp_mode},
        pins::Pins,
    },
    model::{AttachMode, ForwardingMode, ServerSpec, ServerState},
    ops::{
        control::{self, Reply, Request},
        http, report, route_client, status,
    },
    probe::{
        Keys,
        state::{Follower, Signature},
    },
    store::{unix_ms, unix_seconds},
};
use redirector_ebpf::{DECAP_PROGRAM, PASS_PROGRAM};
use tokio::signal::unix::{SignalKind, signal};
use tracing::info;
use tracing_subscriber::EnvFilter;

/// Keeps each SIP client on its home server: an XDP fast path on the edge
/// interface, with user space handling what the fast path passes up.
/// First contact allocates per request (parsed headers, responses); glibc's
/// allocator was an eighth of its time.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "redirector", version = env!("REDIRECTOR_VERSION"), about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// The daemon's control socket (`control.socket` in its config).
    #[arg(long, global = true, default_value = DEFAULT_SOCKET)]
    socket: PathBuf,
    /// How logs are written (to stderr).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// Colour in text logs.
    #[arg(long, global = true, value_enum, default_value_t = Color::Auto)]
    color: Color,
}

#[derive(Subcommand)]
enum Command {
    /// The edge daemon: load the XDP program on the edge interface, fill
    /// its maps from the config, answer first contacts (302 or proxy) on the
    /// service addresses, and run until SIGINT or SIGTERM. SIGHUP rereads
    /// the config and applies what it changed in `[[servers]]` since it was
    /// last applied (the rest takes a restart).
    ///
    /// The program's link and maps are pinned under
    /// `<bpffs>/redirector/<interface>/` ([fast_path] bpffs, /sys/fs/bpf by
    /// default), so the kernel keeps forwarding known clients when the
    /// daemon stops, is killed or restarts; the next `run` adopts them and
    /// swaps in its own program atomically. `redirector detach` removes them.
    Run {
        /// TOML config: interface, mode, service, edge, servers, clients
        /// (see redirector.example.toml).
        #[arg(long, short)]
        config: PathBuf,
    },
    /// What runs on this host: redirector's XDP programs on the interfaces
    /// (and their mode), what is pinned, and the daemon (pid, uptime,
    /// store) if it answers; works with the daemon down.
    Status {
        /// The daemon's config: its store is read when the daemon is down.
        #[arg(long, short)]
        config: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
    /// Check a config file without attaching anything: every problem named
    /// by its field, and what the host must provide for it (the interface
    /// with forwarding on, nat ports clear of the kernel's ephemeral ports).
    /// Exits 0 when it is fine, 1 when not.
    CheckConfig {
        file: PathBuf,
        /// `{"file", "valid", "problems": [{"field", "problem"}]}` instead of lines.
        #[arg(long)]
        json: bool,
    },
    /// On a home server behind a dsr edge: strip the IPIP / IPv6-in-IPv6
    /// header of packets from EDGE to ADDRESS in XDP (for kernels without
    /// ipip devices). The service address must be on the server's loopback.
    Decap {
        /// Interface the encapsulated packets arrive on.
        #[arg(long, short)]
        interface: String,
        /// This server's address, the outer destination to strip (repeatable).
        #[arg(long = "address", short, required = true)]
        addresses: Vec<IpAddr>,
        /// A dsr edge's own address, the only outer sources accepted
        /// (repeatable): tunnels from anyone else pass untouched.
        #[arg(long = "edge", short, required = true)]
        edges: Vec<IpAddr>,
        #[arg(long, value_enum, default_value_t = AttachMode::Native)]
        attach: AttachMode,
        /// Answer probes to this server's addresses at this UDP port, in
        /// XDP (client-driven home selection; needs --probe-secret), while
        /// the edge's state messages to this port say the server is active.
        /// SIGUSR1 holds it silent whatever the edge says, SIGUSR2 releases
        /// the hold.
        #[arg(long, requires = "probe_secret")]
        probe_port: Option<u16>,
        /// The pool's probe secret, the edge's `[probe] secret_file`.
        #[arg(long, requires = "probe_port")]
        probe_secret: Option<PathBuf>,
        /// Seconds a probe key is used, the edge's `[probe] period`.
        #[arg(long, default_value_t = 300)]
        probe_period: u64,
    },
    /// Probe SERVERS (ADDRESS:PORT of homes or of the service, their probe
    /// port) at once with one tag: print each one's response time or
    /// timeout, the earliest answer's server (the choice) and its cookie,
    /// which a REGISTER presents in a `Redirector-Cookie` header. Later
    /// answers are reported but never chosen. Exits 1 if none answered.
    Probe {
        #[arg(long, value_delimiter = ',', required = true)]
        servers: Vec<SocketAddr>,
        /// Milliseconds to wait for answers.
        #[arg(long, default_value_t = 1000)]
        timeout: u64,
        /// `{"tag", "servers": [{"server", "answered_ms", "chosen"}], "chosen", "cookie"}`.
        #[arg(long)]
        json: bool,
    },
    /// Answer probes in user space on each LISTEN address (a specific
    /// address, the server's identity, and the probe port): for hosts
    /// without XDP, and the benchmark's baseline for the XDP responders.
    ProbeResponder {
        #[arg(long = "listen", required = true)]
        listen: Vec<SocketAddr>,
        /// The pool's probe secret, the edge's `[probe] secret_file`.
        #[arg(long)]
        secret: PathBuf,
        #[arg(long, default_value_t = 300)]
        period: u64,
        /// Hold each answer this long (tests: a slow server without netem).
        #[arg(long, default_value_t = 0)]
        delay_ms: u64,
    },
    /// A minimal SIP registrar (REGISTER, OPTIONS, SUBSCRIBE) for tests and demos: a
    /// home server needing nothing else.
    Home {
        /// Address:port to answer on (repeatable); replies leave from the
        /// address a request arrived on. Behind a dsr edge, list the service
        /// address (on this host's loopback) and the host's own address.
        #[arg(long = "listen", short, required = true)]
        listen: Vec<std::net::SocketAddr>,
    },
    /// Statistics of the running daemon, as of its statistics stream's newest
    /// reading: per home server (clients, packets, bytes, rate), the kernel's
    /// verdicts, first contact, watchers and ua-profile subscriptions.
    Stats {
        /// JSON instead of a table.
        #[arg(long)]
        json: bool,
        /// Refresh every SECONDS, like top (Ctrl-C stops).
        #[arg(long, value_name = "SECONDS", num_args = 0..=1, default_missing_value = "1")]
        watch: Option<f64>,
        /// With --watch: stop after this many refreshes.
        #[arg(long, requires = "watch")]
        count: Option<u64>,
    },
    /// Home servers: state, address, clients, fast-path load. `servers add`,
    /// `remove` and `set` change the pool while the daemon runs; the store
    /// keeps the changes across restarts (see the README's operations).
    #[command(args_conflicts_with_subcommands = true)]
    Servers {
        #[command(subcommand)]
        change: Option<ServersCommand>,
        /// JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// The AORs assigned to a home server, with when each was last seen.
    Clients {
        #[arg(long)]
        server: String,
        #[arg(long)]
        json: bool,
    },
    /// Move AOR (e.g. sip:alice@example.net) to SERVER: database and kernel map.
    Assign { aor: String, server: String },
    /// Stop giving SERVER new clients and move all its clients elsewhere.
    Drain { server: String },
    /// Let SERVER take new clients again.
    Undrain { server: String },
    /// Move clients off servers whose fast-path load is skewed, now, using
    /// the rebalancer's latest sample (it also runs by itself, see [rebalance]).
    Rebalance {
        /// Show the plan without moving anyone.
        #[arg(long)]
        dry_run: bool,
    },
    /// Export the assignment table (AOR, server, address, generation), so
    /// clients or other tools can go straight to the owner: from the local
    /// control socket, or with --from from an edge's HTTP listener
    /// ([http] listen), once or, with --follow, rewritten at every change.
    Routes {
        /// Same as --format json.
        #[arg(long, conflicts_with = "format")]
        json: bool,
        #[arg(long, value_enum, default_value_t = RouteFormat::Table)]
        format: RouteFormat,
        /// An edge's HTTP listener, http://HOST:PORT.
        #[arg(long)]
        from: Option<String>,
        /// Keep the table current from the edge's route stream (with --from
        /// and --output): the file is rewritten (atomically) at every change.
        #[arg(long, requires_all = ["from", "output"])]
        follow: bool,
        /// Write the table to FILE (replaced atomically) instead of stdout.
        #[arg(long, short)]
        output: Option<PathBuf>,
        /// The bearer token for --from: the first line of FILE ([http] token_file).
        #[arg(long, requires = "from")]
        token_file: Option<PathBuf>,
        /// With --follow, run CMD (by `sh -c`) after each rewrite, e.g.
        /// "kamcmd htable.reload routes".
        #[arg(long, requires = "follow")]
        then: Option<String>,
    },
    /// AOR's client addresses on the fast path: the home server slot the
    /// kernel sends each to, and the packets it forwarded.
    Entries {
        aor: String,
        #[arg(long)]
        json: bool,
    },
    /// Remove what `run` pinned for INTERFACE: its XDP link (the program
    /// detaches) and its maps (the fast path's clients are forgotten; they
    /// come back through first contact). Stop the daemon first: a running
    /// one keeps its link attached until it exits.
    Detach {
        #[arg(long, short)]
        interface: String,
        /// Where bpffs is mounted ([fast_path] bpffs in the daemon's config).
        #[arg(long, default_value = DEFAULT_BPFFS)]
        bpffs: PathBuf,
    },
    /// Print shell completions for SHELL (installed by `cargo xtask install`).
    #[command(hide = true)]
    Completions { shell: clap_complete::Shell },
    /// Write the man pages (redirector.1 and one per subcommand) into DIR.
    #[command(hide = true)]
    Man { dir: PathBuf },
    /// Attach a pass-through XDP program to INTERFACE until SIGINT/SIGTERM.
    /// Native XDP_TX on a veth only delivers when the veth's peer runs an
    /// XDP program too: run this on the peer of the edge interface.
    Pass {
        #[arg(long, short)]
        interface: String,
    },
}

#[derive(Subcommand)]
enum ServersCommand {
    /// Add a home server NAME: it takes new clients at once, in proportion
    /// to its weight; clients already assigned stay where they are. Refused
    /// (and nothing changes) for a name or an address already in the pool,
    /// a weight not above 0, or when all SERVERS slots are taken.
    #[command(group(ArgGroup::new("address").required(true).multiple(true).args(["ipv4", "ipv6"])))]
    Add {
        /// A name of its own (what `redirector servers` lists, clients'
        /// assignments name and a config's `[[servers]]` use).
        name: String,
        /// The server's IPv4 address (for IPv4 clients).
        #[arg(long)]
        ipv4: Option<Ipv4Addr>,
        /// The server's IPv6 address (for IPv6 clients).
        #[arg(long)]
        ipv6: Option<Ipv6Addr>,
        /// The SIP port it listens on.
        #[arg(long, default_value_t = 5060)]
        port: u16,
        /// Its share of new clients relative to the other servers' weights.
        #[arg(long, default_value_t = 1.0, allow_negative_numbers = true)]
        weight: f64,
        /// `draining` adds it without giving it clients yet.
        #[arg(long, value_enum, default_value_t = SettableState::Active)]
        state: SettableState,
    },
    /// Remove home server NAME: its clients move to the other servers first,
    /// as `drain` moves them (their fast path kept, their watchers sent a
    /// NOTIFY), then it leaves the pool. Answers once done. Refused for the
    /// last active server. `servers set NAME --state active` calls a
    /// removal under way off.
    Remove {
        /// The server, as `redirector servers` lists it.
        name: String,
    },
    /// Change home server NAME's weight (new clients follow it; assigned
    /// ones stay) or state (`draining` takes no new clients but keeps its
    /// clients, `drain` moves them; `active` takes new clients again).
    #[command(group(ArgGroup::new("change").required(true).multiple(true).args(["weight", "state"])))]
    Set {
        /// The server, as `redirector servers` lists it.
        name: String,
        /// A weight above 0.
        #[arg(long, allow_negative_numbers = true)]
        weight: Option<f64>,
        #[arg(long, value_enum)]
        state: Option<SettableState>,
    },
}

/// The states an operator gives a server.
#[derive(Clone, Copy, ValueEnum)]
enum SettableState {
    /// Takes new clients.
    Active,
    /// Takes no new clients; keeps those it has.
    Draining,
}

impl From<SettableState> for ServerState {
    fn from(state: SettableState) -> Self {
        match state {
            SettableState::Active => ServerState::Active,
            SettableState::Draining => ServerState::Draining,
        }
    }
}

/// How `redirector routes` writes the table.
#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum RouteFormat {
    /// Aligned columns, for people.
    Table,
    Json,
    /// A db_text table for Kamailio's htable: key the AOR, value sip:HOME:PORT.
    Kamailio,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    /// One line per event, for people.
    Text,
    /// One JSON object per line, for journald, Loki or ELK.
    Json,
}

#[derive(Clone, Copy, ValueEnum)]
enum Color {
    /// Colours only when stderr is a terminal.
    Auto,
    Always,
    Never,
}

/// Logs go to stderr, coloured only for a terminal unless told otherwise;
/// `RUST_LOG` overrides `level`.
fn init_logging(format: LogFormat, color: Color, level: &str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
    let ansi = match color {
        Color::Auto => std::io::stderr().is_terminal(),
        Color::Always => true,
        Color::Never => false,
    };
    let logs = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match format {
        LogFormat::Text => logs.with_ansi(ansi).init(),
        LogFormat::Json => logs.json().init(),
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    let cli = Cli::parse();
    // `run` logs at its config's level, read before anything is logged.
    let config = match &cli.command {
        Command::Run { config } => Some(Config::load(config)?),
        _ => None,
    };
    let level = config.as_ref().map_or("info", |config| config.log.level.as_str());
    init_logging(cli.log_format, cli.color, level);
    let socket = cli.socket;
    match cli.command {
        Command::Stats { json, watch, count } => stats(&socket, json, watch, count),
        Command::Servers { change: Some(change), .. } => change_servers(&socket, change),
        Command::Servers { change: None, json } => match ask(&socket, Request::Servers)? {
            Reply::Servers(servers) => print(json, &servers[..], report::servers),
            other => unexpected(other),
        },
        Command::Clients { server, json } => match ask(&socket, Request::Clients { server })? {
            Reply::Clients(clients) => print(json, &clients[..], |clients| report::clients(clients, unix_seconds())),
            other => unexpected(other),
        },
        Command::Assign { aor, server } => show_moves(ask(&socket, Request::Assign { aor, server })?),
        Command::Drain { server } => show_moves(ask(&socket, Request::Drain { server })?),
        Command::Undrain { server } => match ask(&socket, Request::Undrain { server })? {
            Reply::Server(status) => {
                println!("{} takes new clients again", status.name);
                Ok(())
            }
            other => unexpected(other),
        },
        Command::Rebalance { dry_run } => match ask(&socket, Request::Rebalance { dry_run })? {
            Reply::Plan(planned) => {
                print!("{}", report::plan(&planned, dry_run));
                Ok(())
            }
            other => unexpected(other),
        },
        Command::Routes { json, format, from, follow, output, token_file, then } => {
            let format = if json { RouteFormat::Json } else { format };
            let Some(from) = from else {
                let Reply::Routes(routes) = ask(&socket, Request::Routes)? else {
                    bail!("the daemon answered no routes")
                };
                return write_routes(&render_routes(format, &routes)?, output.as_deref());
            };
            let token = token_file.map(|path| http::read_token(&path)).transpose()?;
            let source = route_client::Source::new(&from, token.map(|t| t.to_string()))?;
            if !follow {
                let routes = source.routes().await?.routes;
                return write_routes(&render_routes(format, &routes)?, output.as_deref());
            }
            let output = output.expect("clap requires --output with --follow");
            source
                .follow(|table: &route_client::Table| -> Result<()> {
                    let routes: Vec<_> = table.routes.values().cloned().collect();
                    write_routes(&render_routes(format, &routes)?, Some(&output))?;
                    info!(version = table.version, routes = routes.len(), file = %output.display(), "routes written");
                    if let Some(command) = &then {
                        run_hook(command);
                    }
                    Ok(())
                })
                .await
        }
        Command::Entries { aor, json } => match ask(&socket, Request::Entries { aor })? {
            Reply::Entries(entries) => print(json, &entries[..], report::entries),
            other => unexpected(other),
        },
        Command::Run { config: path } => run(config.expect("loaded above"), &path).await,
        Command::CheckConfig { file, json } => check_config(&file, json),
        Command::Status { config, json } => {
            let config = config.map(|path| Config::load(&path)).transpose()?;
            let status = status::host_status(&socket, config.as_ref());
            print(json, &status, status::report)
        }
        Command::Detach { interface, bpffs } => detach(&socket, &interface, &bpffs),
        Command::Completions { shell } => {
            clap_complete::generate(shell, &mut Cli::command(), "redirector", &mut std::io::stdout());
            Ok(())
        }
        Command::Man { dir } => {
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            clap_mangen::generate_to(Cli::command(), &dir)
                .with_context(|| format!("writing man pages to {}", dir.display()))
        }
        Command::Home { listen } => {
            let registrar = std::sync::Arc::new(redirector::home::Registrar::default());
            info!(?listen, "registrar answering");
            redirector::home::serve(registrar.clone(), &listen, shutdown_signal()?).await?;
            let registered = registrar.registered.load(std::sync::atomic::Ordering::Relaxed);
            info!(registered, "registrar stopped");
            Ok(())
        }
        Command::Decap { interface, addresses, edges, attach, probe_port, probe_secret, probe_period } => {
            let mut dataplane = DataPlane::load_without_clients()?;
            for &address in &addresses {
                dataplane.add_decap_address(address)?;
            }
            for &edge in &edges {
                dataplane.add_decap_source(edge)?;
            }
            let keys = probe_secret.map(|path| Keys::read(&path, probe_period)).transpose()?;
            match keys.zip(probe_port) {
                Some((keys, port)) => {
                    let probes = Probes { keys, port, addresses: &addresses };
                    answer_probes(dataplane, &interface, attach, probes).await
                }
                None => hold_attached(dataplane, DECAP_PROGRAM, &interface, attach).await,
            }
        }
        Command::ProbeResponder { listen, secret, period, delay_ms } => {
            let keys = Keys::read(&secret, period)?;
            let mut serving = tokio::task::JoinSet::new();
            for address in listen {
                let socket =
                    tokio::net::UdpSocket::bind(address).await.with_context(|| format!("binding {address}"))?;
                serving.spawn(redirector::probe::responder::serve(socket, keys, Duration::from_millis(delay_ms)));
            }
            info!(delay_ms, "answering probes");
            tokio::select! {
                () = shutdown_signal()? => Ok(()),
                Some(done) = serving.join_next() => Ok(done?.context("answering probes")?),
            }
        }
        Command::Probe { servers, timeout, json } => {
            let report = redirector::probe::client::probe(&servers, Duration::from_millis(timeout)).await?;
            print(json, &report, report::probe)?;
            if report.chosen.is_none() {
                bail!(
                    "no server answered within {timeout} ms: are probes on (`[probe] port`, `decap --probe-port`) and the port right?"
                );
            }
            Ok(())
        }
        Command::Pass { interface } => {
            hold_attached(DataPlane::load_without_clients()?, PASS_PROGRAM, &interface, AttachMode::Native).await
        }
    }
}

async fn run(config: Config, path: &Path) -> Result<()> {
    check_forwarding(&config)?;
    check_nat_ports(&config)?;
    // Before anything else: SIGHUP's default action ends the process.
    let hangups = signal(SignalKind::hangup()).context("installing the SIGHUP handler")?;
    let daemon = Daemon::start(&config)?;
    let servers: Vec<&str> = config.servers.iter().map(|s| s.name.as_str()).collect();
    info!(
        interface = %config.interface,
        mode = ?config.mode,
        attach = ?config.attach,
        ?servers,
        store = %config.sip.database.display(),
        max_clients = config.fast_path.max_clients,
        kernel_memory_mib = kernel_memory() as f64 / (1 << 20) as f64,
        "redirector attached, answering first contacts"
    );
    tokio::select! {
        served = daemon.serve(shutdown_signal()?) => served?,
        () = reload_on_hangup(&daemon, path, hangups) => {}
    }
    // The report asks the state owner and waits: not on a runtime worker.
    let report = tokio::task::block_in_place(|| daemon.report());
    let kernel: Vec<(&str, u64)> = report.kernel.iter().map(|(c, n)| (c.label(), *n)).collect();
    info!(first_contact = ?report.first_contact, ?kernel, "counters at shutdown");
    drop(daemon);
    info!(
        interface = %config.interface,
        "daemon stopped; the kernel keeps forwarding known clients (`redirector detach --interface {}` removes it)",
        config.interface
    );
    Ok(())
}

/// `redirector detach`: refused while a daemon answers on `socket` (it
/// would keep the link attached), else every pin of `interface` removed.
fn detach(socket: &std::path::Path, interface: &str, bpffs: &std::path::Path) -> Result<()> {
    if let Ok(Reply::Status(daemon)) = control::request(socket, &Request::Status) {
        bail!(
            "a daemon (pid {}) is running on control socket {}: stop it first, it keeps its link attached until it exits",
            daemon.pid,
            socket.display()
        );
    }
    let pins = Pins::new(bpffs, interface);
    if pins.remove()? {
        println!("removed {}: {interface}'s XDP link and maps are gone", pins.directory().display());
    } else {
        println!("nothing pinned for {interface} under {}", pins.directory().display());
    }
    Ok(())
}

/// Rereads the config at every SIGHUP and applies its `[[servers]]`; a
/// config that does not load is logged and changes nothing.
async fn reload_on_hangup(daemon: &Daemon, path: &Path, mut hangups: tokio::signal::unix::Signal) {
    while hangups.recv().await.is_some() {
        info!(config = %path.display(), "SIGHUP: reloading [[servers]] (other changes take a restart)");
        let config = match Config::load(path) {
            Ok(config) => config,
            Err(error) => {
                tracing::error!(%error, "the config was not reloaded: fix it and send SIGHUP again");
                continue;
            }
        };
        match daemon.reload_servers(&config).await {
            Reply::Reloaded(reloaded) => {
                let (changed, refused) = (reloaded.changed.len(), reloaded.refused.len());
                info!(changed, refused, "[[servers]] reloaded");
            }
            other => tracing::error!(reply = ?other, "reloading [[servers]] failed"),
        }
    }
}

/// `redirector servers add / remove / set`.
fn change_servers(socket: &Path, change: ServersCommand) -> Result<()> {
    let request = match change {
        ServersCommand::Add { name, ipv4, ipv6, port, weight, state } => {
            Request::AddServer { server: ServerSpec { name, ipv4, ipv6, port, state: state.into(), weight } }
        }
        ServersCommand::Remove { name } => Request::RemoveServer { server: name },
        ServersCommand::Set { name, weight, state } => {
            Request::SetServer { server: name, weight, state: state.map(ServerState::from) }
        }
    };
    let removed = match &request {
        Request::RemoveServer { server } => Some(server.clone()),
        _ => None,
    };
    match (ask(socket, request)?, removed) {
        (Reply::Server(status), None) => {
            let state = serde_json::to_value(status.state)?;
            println!(
                "{}: {}, weight {}, {} client(s)",
                status.name,
                state.as_str().unwrap_or("?"),
                status.weight,
                status.clients
            );
            Ok(())
        }
        (moves @ Reply::Moves(_), Some(server)) => {
            show_moves(moves)?;
            println!("{server} removed");
            Ok(())
        }
        (other, _) => unexpected(other),
    }
}

/// A problem `check-config` found, by the field it is in.
#[derive(serde::Serialize)]
struct Problem {
    field: String,
    problem: String,
}

fn check_config(path: &std::path::Path, json: bool) -> Result<()> {
    let problems = config_problems(path);
    if json {
        let report = serde_json::json!({ "file": path, "valid": problems.is_empty(), "problems": problems });
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else if problems.is_empty() {
        println!("{}: valid", path.display());
    } else {
        for Problem { field, problem } in &problems {
            println!("{}: {field}: {problem}", path.display());
        }
    }
    if !problems.is_empty() {
        std::process::exit(1);
    }
    Ok(())
}

fn config_problems(path: &std::path::Path) -> Vec<Problem> {
    let config = match Config::load_unchecked(path) {
        Ok(config) => config,
        Err(error) => return vec![Problem { field: "(file)".into(), problem: error.to_string() }],
    };
    let mut problems: Vec<Problem> = config
        .problems()
        .into_iter()
        .map(|error| match error {
            ConfigError::Invalid { field, problem } => Problem { field, problem },
            other => Problem { field: "(file)".into(), problem: other.to_string() },
        })
        .collect();
    let host = [("interface", check_forwarding(&config)), ("edge.nat_ports", check_nat_ports(&config))];
    for (field, result) in host {
        if let Err(error) = result {
            problems.push(Problem { field: field.into(), problem: format!("{error:#}") });
        }
    }
    problems
}

/// `bpf_fib_lookup` answers only on interfaces that forward; without it every
/// fast-path packet would fall back to the kernel.
fn check_forwarding(config: &Config) -> Result<()> {
    let families = [
        (
            config.edge.ipv4.is_some(),
            format!("/proc/sys/net/ipv4/conf/{}/forwarding", config.interface),
            "net.ipv4.conf.{}.forwarding",
        ),
        (
            config.edge.ipv6.is_some(),
            format!("/proc/sys/net/ipv6/conf/{}/forwarding", config.interface),
            "net.ipv6.conf.{}.forwarding",
        ),
    ];
    for (needed, path, sysctl) in families {
        if !needed {
            continue;
        }
        let value = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {path}: does interface {} exist?", config.interface))?;
        if value.trim() != "1" {
            let name = sysctl.replace("{}", &config.interface);
            bail!(
                "forwarding is off on {}: the fast path's FIB lookups need it. Run `sysctl -w {name}=1`",
                config.interface
            );
        }
    }
    Ok(())
}

/// Attaches `program` and keeps it attached until SIGINT or SIGTERM.
/// nat replies are recognised by their edge port alone: a port the kernel
/// also hands to the edge's own sockets would have their replies rewritten.
fn check_nat_ports(config: &Config) -> Result<()> {
    if config.mode != ForwardingMode::Nat {
        return Ok(());
    }
    let path = "/proc/sys/net/ipv4/ip_local_port_range";
    let range = std::fs::read_to_string(path).with_context(|| format!("reading {path}"))?;
    let bounds: Vec<u16> = range.split_whitespace().filter_map(|n| n.parse().ok()).collect();
    let [low, high] = bounds[..] else { bail!("{path} does not hold two ports: {range:?}") };
    let [first, last] = config.edge.nat_ports;
    if first <= high && low <= last {
        bail!(
            "edge.nat_ports [{first}, {last}] overlaps the kernel's ephemeral ports {low}-{high}: \
             move edge.nat_ports, or run `sysctl -w net.ipv4.ip_local_port_range=\"{} {high}\"`",
            last.saturating_add(1).max(low)
        );
    }
    Ok(())
}

async fn hold_attached(
    mut dataplane: DataPlane,
    program: &'static str,
    interface: &str,
    mode: AttachMode,
) -> Result<()> {
    dataplane.attach(program, interface, xdp_mode(mode))?;
    info!(program, interface, "attached");
    shutdown_signal()?.await;
    drop(dataplane);
    info!(program, interface, "detached");
    Ok(())
}

/// What `decap` answers probes with, and on which of its addresses.
struct Probes<'a> {
    keys: Keys,
    port: u16,
    addresses: &'a [IpAddr],
}

/// `decap` with probes answered: each period's key is written as it
/// starts, and whether to answer follows the edge's state messages
/// (`probe::state::Follower`) and the operator's hold (SIGUSR1 holds,
/// SIGUSR2 releases). The map is written only when one of them changes.
async fn answer_probes(mut dataplane: DataPlane, interface: &str, mode: AttachMode, probes: Probes<'_>) -> Result<()> {
    let mut follower = Follower::new(&probes.keys, probes.addresses);
    let mut states = read_state_messages(probes.addresses, probes.port, follower.signature()).await?;
    dataplane.attach(DECAP_PROGRAM, interface, xdp_mode(mode))?;
    let (mut hold, mut release) = (signal(SignalKind::user_defined1())?, signal(SignalKind::user_defined2())?);
    let shutdown = shutdown_signal()?;
    tokio::pin!(shutdown);
    let mut written = None;
    info!(interface, port = probes.port, "attached, answering probes");
    loop {
        let now = unix_seconds();
        let config = probes.keys.config_at(now, probes.port, follower.answering());
        if written != Some(config) {
            dataplane.set_probe(config)?;
            written = Some(config);
            info!(answering = follower.answering(), "probe key written");
        }
        tokio::select! {
            () = &mut shutdown => break,
            () = tokio::time::sleep(Duration::from_secs(probes.keys.until_next_period(now))) => {}
            _ = hold.recv() => follower.hold(true),
            _ = release.recv() => follower.hold(false),
            Some(datagram) = states.recv() => follower.heed(&datagram, unix_ms()),
        }
    }
    drop(dataplane);
    info!(interface, "detached");
    Ok(())
}

/// The datagrams the XDP program passes up to the probe port of each of
/// `addresses` (state messages from the edges), read by a task per socket.
/// Only those `signature` signs are queued (a flood of others would crowd
/// out the edge's); the rest are counted and logged at most every 10 s.
async fn read_state_messages(
    addresses: &[IpAddr],
    port: u16,
    signature: Signature,
) -> Result<tokio::sync::mpsc::Receiver<Vec<u8>>> {
    let (sender, receiver) = tokio::sync::mpsc::channel(64);
    for &ip in addresses {
        let address = SocketAddr::new(ip, port);
        let socket = tokio::net::UdpSocket::bind(address)
            .await
            .with_context(|| format!("binding {address} for the edges' state messages (is --probe-port free?)"))?;
        let sender = sender.clone();
        tokio::spawn(async move {
            let mut buffer = [0u8; 2048];
            let (mut unsigned, mut logged) = (0u64, None::<std::time::Instant>);
            loop {
                match socket.recv(&mut buffer).await {
                    Ok(len) if signature.signs(&buffer[..len]) => {
                        // Full only under a flood: that datagram is dropped (the edge sends again).
                        let _ = sender.try_send(buffer[..len].to_vec());
                    }
                    Ok(_) => {
                        unsigned += 1;
                        if logged.is_none_or(|at| at.elapsed() >= Duration::from_secs(10)) {
                            logged = Some(std::time::Instant::now());
                            tracing::warn!(%address, unsigned, "datagrams on the probe port that are no state message signed with this pool's probe secret were dropped");
                        }
                    }
                    Err(error) => {
                        tracing::warn!(%address, %error, "reading state messages stopped");
                        break;
                    }
                }
            }
        });
    }
    Ok(receiver)
}

/// One request to the daemon; its errors become this command's.
fn ask(socket: &std::path::Path, request: Request) -> Result<Reply> {
    match control::request(socket, &request)? {
        Reply::Error(message) => bail!("{message}"),
        reply => Ok(reply),
    }
}

fn render_routes(format: RouteFormat, routes: &[redirector::ops::api::Route]) -> Result<String> {
    Ok(match format {
        RouteFormat::Table => report::routes(routes),
        RouteFormat::Json => serde_json::to_string_pretty(routes)? + "\n",
        RouteFormat::Kamailio => route_client::kamailio(routes),
    })
}

/// `text` to stdout, or to `output` through a temporary file renamed over
/// it, so a reader never sees half a table. Each rewrite's modification
/// time is at least a second after the one it replaces: Kamailio's
/// db_text sees a changed file by its mtime in whole seconds, and would
/// miss a second rewrite within the same second.
fn write_routes(text: &str, output: Option<&Path>) -> Result<()> {
    let Some(output) = output else {
        print!("{text}");
        return Ok(());
    };
    let mut temporary = output.as_os_str().to_owned();
    temporary.push(".tmp");
    let temporary = PathBuf::from(temporary);
    std::fs::write(&temporary, text).with_context(|| format!("writing {}", temporary.display()))?;
    let now = std::time::SystemTime::now();
    let previous = std::fs::metadata(output).and_then(|m| m.modified()).ok();
    let modified = previous.map_or(now, |p| now.max(p + std::time::Duration::from_secs(1)));
    std::fs::File::options()
        .write(true)
        .open(&temporary)
        .and_then(|file| file.set_modified(modified))
        .with_context(|| format!("setting the modification time of {}", temporary.display()))?;
    std::fs::rename(&temporary, output).with_context(|| format!("replacing {}", output.display()))
}

/// Runs `--then`'s command. A failure is logged and the follower goes on:
/// the next change runs it again (Kamailio may not be up yet, say).
fn run_hook(command: &str) {
    match std::process::Command::new("sh").arg("-c").arg(command).status() {
        Ok(status) if status.success() => {}
        Ok(status) => tracing::warn!(command, %status, "the --then command failed"),
        Err(error) => tracing::warn!(command, %error, "the --then command could not be run"),
    }
}

fn unexpected(reply: Reply) -> Result<()> {
    bail!("the daemon answered with something else than asked for: {reply:?}")
}

fn print<T: serde::Serialize + ?Sized>(json: bool, value: &T, table: impl Fn(&T) -> String) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(value)?);
    } else {
        print!("{}", table(value));
    }
    Ok(())
}

fn show_moves(reply: Reply) -> Result<()> {
    match reply {
        Reply::Moves(moves) => {
            print!("{}", report::moves(&moves));
            Ok(())
        }
        other => unexpected(other),
    }
}

fn stats(socket: &std::path::Path, json: bool, watch: Option<f64>, count: Option<u64>) -> Result<()> {
    let fetch = || match ask(socket, Request::Stats)? {
        Reply::Stats(stats) => Ok(stats),
        other => bail!("the daemon answered with something else than stats: {other:?}"),
    };
    let Some(seconds) = watch else {
        return print(json, &fetch()?, report::stats);
    };
    if !seconds.is_finite() {
        bail!("--watch takes a number of seconds, not {seconds}");
    }
    let interval = std::time::Duration::from_secs_f64(seconds.clamp(0.1, 86_400.0));
    for refresh in 1.. {
        let now = fetch()?;
        if json {
            println!("{}", serde_json::to_string(&now)?);
        } else {
            // Clear the screen and home the cursor, like top.
            print!("\x1b[2J\x1b[H{}", report::stats(&now));
        }
        if count.is_some_and(|count| refresh >= count) {
            break;
        }
        std::thread::sleep(interval);
    }
    Ok(())
}

/// Completes on SIGTERM or SIGINT.
fn shutdown_signal() -> Result<impl std::future::Future<Output = ()>> {
    let mut terminate = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut interrupt = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    Ok(async move {
        tokio::select! {
            _ = terminate.recv() => info!("SIGTERM received"),
            _ = interrupt.recv() => info!("SIGINT received"),
        }
    })
}
