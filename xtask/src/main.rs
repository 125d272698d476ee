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

/// Runs the tests, echoing cargo's output, and closes with one tally line.
fn test() -> Result<()> {
    let mut command = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    command.args(["test", "--workspace", "--exclude", "redirector-ebpf"]).stdout(std::process::Stdio::piped());
    println!("+ {}", describe(&command));
    let mut child = command.spawn().context("starting cargo test")?;
    let stdout = child.stdout.take().expect("piped stdout");
    let (mut passed, mut failed) = (0u64, 0u64);
    for line in std::io::BufRead::lines(std::io::BufReader::new(stdout)) {
        let line = line.context("reading cargo test output")?;
        println!("{line}");
        if let Some((p, f)) = tally(&line) {
            passed += p;
            failed += f;
        }
    }
    let status = child.wait().context("waiting for cargo test")?;
    println!("{passed} passed, {failed} failed");
    if !status.success() || failed > 0 {
        bail!("tests failed ({status})");
    }
    if passed == 0 {
        bail!("no test ran");
    }
    Ok(())
}

/// Passed and failed counts from a libtest summary line.
fn tally(line: &str) -> Option<(u64, u64)> {
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
