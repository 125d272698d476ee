//! `cargo xtask …`: set up a machine, build, lint, test, run the demo and
//! the benchmarks. Every step prints what it runs.

mod install;
mod layers;
mod setup;

use std::process::Command;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "redirector's developer and operator tasks")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what building and testing need (apt packages, bpf-linker,
    /// test peers). Idempotent; needs root to install.
    Setup,
    /// Build the XDP object (release, BTF) that redirector embeds.
    BuildEbpf,
    /// rustfmt, clippy (host crates, and the XDP program for its BPF
    /// target) and the layer check.
    Lint,
    /// Build the release binary and install it with its systemd unit, the
    /// config (from the example; an existing one is kept), the state
    /// directory, shell completions and man pages.
    Install {
        /// A staging root everything goes under (like DESTDIR).
        #[arg(long, default_value = "/")]
        prefix: std::path::PathBuf,
    },
    /// Remove what `install` put there; config and database stay unless --purge.
    Uninstall {
        #[arg(long, default_value = "/")]
        prefix: std::path::PathBuf,
        #[arg(long)]
        purge: bool,
    },
    /// Draw which modules of the library use which, and fail if one uses a
    /// module of a higher layer (the layers of redirector-user/src/lib.rs).
    Layers,
    /// Set up, then run every test: host unit tests, BPF fixtures,
    /// property tests and network-namespace end-to-end tests.
    Test,
    /// Mutation testing of the pure modules (SIP scanner, rendezvous
    /// hashing, rebalancer, checksums) with cargo-mutants; slow, not in CI.
    Mutants,
    /// Run the daemon: `cargo xtask run -- --config FILE`.
    Run {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Set up, then show the fast path at work in network namespaces.
    Demo,
    /// Set up, then benchmark against the peers a user would pick instead
    /// (target/bench/bench.json; BENCHMARKS.md explains).
    Bench {
        /// Fewer repetitions, for a first look and for CI.
        #[arg(long)]
        quick: bool,
    },
}

fn main() -> Result<()> {
    match Cli::parse().task {
        Task::Setup => setup::ensure(),
        Task::BuildEbpf => build_ebpf(),
        Task::Lint => lint(),
        Task::Layers => layers::check(),
        Task::Install { prefix } => {
            cargo(&["build", "--release", "--package", "redirector-user", "--bin", "redirector"])?;
            let layout = install::Layout::new(&prefix);
            let example = std::path::Path::new("redirector.example.toml");
            install::install(&layout, std::path::Path::new("target/release/redirector"), example)?;
            install::verify_unit(&layout)
        }
        Task::Uninstall { prefix, purge } => install::uninstall(&install::Layout::new(&prefix), purge),
        Task::Test => {
            setup::ensure()?;
            test()
        }
        Task::Mutants => mutants(),
        Task::Run { args } => cargo(
            &[&["run", "--release", "--package", "redirector-user", "--bin", "redirector", "--"], &as_strs(&args)[..]]
                .concat(),
        ),
        Task::Demo => {
            setup::ensure()?;
            // The demo starts the daemon binary in its namespaces.
            cargo(&["build", "--release", "--package", "redirector-user", "--bin", "redirector"])?;
            cargo(&["run", "--release", "--package", "redirector-tests", "--bin", "demo"])
        }
        Task::Bench { quick } => {
            setup::ensure()?;
            // The bench starts the daemon binary in its namespaces.
            cargo(&["build", "--release", "--package", "redirector-user", "--bin", "redirector"])?;
            let mut args = vec!["run", "--release", "--package", "redirector-tests", "--bin", "bench", "--"];
            if quick {
                args.push("--quick");
            }
            cargo(&args)
        }
    }
}

fn as_strs(args: &[String]) -> Vec<&str> {
    args.iter().map(String::as_str).collect()
}

/// redirector-user's build script builds the object; building the crate is
/// the one way to get it, so it is never stale.
fn build_ebpf() -> Result<()> {
    cargo(&["build", "--release", "--package", "redirector-user"])?;
    println!("XDP object: target/ebpf/bpfel-unknown-none/release/redirector (embedded in target/release/redirector)");
    Ok(())
}

fn lint() -> Result<()> {
    cargo(&["fmt", "--all", "--check"])?;
    cargo(&["clippy", "--workspace", "--all-targets", "--exclude", "redirector-ebpf", "--", "-D", "warnings"])?;
    // On the host only the shared-types library of the eBPF crate compiles.
    cargo(&["clippy", "--package", "redirector-ebpf", "--lib", "--", "-D", "warnings"])?;
    lint_bpf_program()?;
    layers::check()
}

/// The program only compiles for the BPF target, so it is linted with the
/// clippy that matches the rustc building it (Debian's rust-web-clippy).
fn lint_bpf_program() -> Result<()> {
    let clippy = "/usr/bin/cargo-clippy";
    if !std::path::Path::new(clippy).exists() {
        bail!("{clippy} is missing: run `cargo xtask setup` (it installs rust-web-clippy)");
    }
    run_command(
        Command::new(clippy)
            .args([
                "clippy",
                "--package",
                "redirector-ebpf",
                "--bin",
                "redirector",
                "--release",
                "--target",
                "bpfel-unknown-none",
            ])
            .args(["--target-dir", "target/ebpf-clippy", "--", "-D", "warnings"])
            .env("RUSTC", "/usr/bin/rustc")
            .env("RUSTC_BOOTSTRAP", "1")
            .env_remove("RUSTUP_TOOLCHAIN"),
    )
}

/// Runs the tests, echoing cargo's output, and closes with one tally line:
/// `N passed, N failed, N skipped`. A test that returned early without its
/// privileges printed a `SKIPPED: <test>: <reason>` line (tests/src/lib.rs)
/// and counts as skipped, not passed.
fn test() -> Result<()> {
    let mut command = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    command.args(["test", "--workspace", "--exclude", "redirector-ebpf"]).stdout(std::process::Stdio::piped());
    println!("+ {}", describe(&command));
    let mut child = command.spawn().context("starting cargo test")?;
    let stdout = child.stdout.take().expect("piped stdout");
    let mut tally = Tally::default();
    for line in std::io::BufRead::lines(std::io::BufReader::new(stdout)) {
        let line = line.context("reading cargo test output")?;
        println!("{line}");
        tally.add(&line);
    }
    let status = child.wait().context("waiting for cargo test")?;
    for skip in &tally.skips {
        println!("{skip}");
    }
    println!("{}", tally.summary());
    if !status.success() || tally.failed > 0 {
        bail!("tests failed ({status})");
    }
    if tally.ran() == 0 {
        bail!("no test ran ({} skipped)", tally.skips.len());
    }
    Ok(())
}

/// What libtest's summary lines and the skip markers add up to.
#[derive(Default)]
struct Tally {
    /// As libtest counts them: skipped tests included.
    passed: u64,
    failed: u64,
    skips: Vec<String>,
}

impl Tally {
    fn add(&mut self, line: &str) {
        if let Some((passed, failed)) = libtest_result(line) {
            self.passed += passed;
            self.failed += failed;
        } else if line.trim_start().starts_with("SKIPPED: ") {
            self.skips.push(line.trim().to_owned());
        }
    }

    /// Tests that passed having run, not skipped.
    fn ran(&self) -> u64 {
        self.passed.saturating_sub(self.skips.len() as u64)
    }

    fn summary(&self) -> String {
        format!("{} passed, {} failed, {} skipped", self.ran(), self.failed, self.skips.len())
    }
}

/// Passed and failed counts from a libtest summary line.
fn libtest_result(line: &str) -> Option<(u64, u64)> {
    let rest = line.strip_prefix("test result: ")?;
    let count = |word: &str| {
        rest.split(';').find_map(|part| {
            part.trim()
                .trim_start_matches("ok. ")
                .trim_start_matches("FAILED. ")
                .strip_suffix(word)?
                .trim()
                .parse()
                .ok()
        })
    };
    Some((count(" passed")?, count(" failed")?))
}

/// The pure modules `cargo mutants` mutates: globs that hold wherever the
/// layer folders put them.
const MUTANT_FILES: &[&str] = &["**/sip/*.rs", "**/rendezvous.rs", "**/rebalance.rs"];

/// The cargo-mutants release that builds with the workspace's rustc 1.95.
const CARGO_MUTANTS_VERSION: &str = "27.1.0";

/// `cargo mutants` over the pure modules: redirector-user's SIP scanner,
/// rendezvous hashing and rebalancer (against its own tests), then the
/// eBPF crate's checksum arithmetic. That crate's host library has no tests
/// of its own: its checksums are tested by redirector-tests' checksum
/// properties and, through the real program, its fixtures and malformed
/// frame properties (which need root), so those are built and run too
/// (cargo-mutants 27.1 ignores `--test-package` here, hence the cargo args).
fn mutants() -> Result<()> {
    if Command::new("cargo-mutants").arg("--version").output().is_err() {
        cargo(&["install", "cargo-mutants", "--locked", "--version", CARGO_MUTANTS_VERSION])?;
    }
    let mut user = vec!["mutants", "--package", "redirector-user", "--output", "target/mutants/user"];
    for file in MUTANT_FILES {
        user.extend(["--file", file]);
    }
    cargo(&user)?;
    let tests = ["checksum_properties", "fixtures", "malformed_properties"].map(|t| format!("--cargo-arg=--test={t}"));
    let mut checksum = vec!["mutants", "--package", "redirector-ebpf", "--file", "**/checksum.rs"];
    checksum.extend(["--output", "target/mutants/ebpf", "--cargo-arg=--package=redirector-tests"]);
    checksum.extend(as_strs(&tests));
    cargo(&checksum)
}

pub fn cargo(args: &[&str]) -> Result<()> {
    run_command(Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into())).args(args))
}

pub fn run_command(command: &mut Command) -> Result<()> {
    println!("+ {}", describe(command));
    let status = command.status().with_context(|| format!("starting {}", describe(command)))?;
    if !status.success() {
        bail!("{} failed ({status})", describe(command));
    }
    Ok(())
}

fn describe(command: &Command) -> String {
    std::iter::once(command.get_program())
        .chain(command.get_args())
        .map(|s| s.to_string_lossy())
        .collect::<Vec<_>>()
        .join(" ")
}
