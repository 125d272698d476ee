//! `cargo xtask setup`: checks each prerequisite and installs what is
//! missing, saying what and why. Safe to run again.

use std::{path::Path, process::Command};

use anyhow::{Result, bail};

use crate::run_command;

/// Debian packages and why each is needed.
const PACKAGES: &[(&str, &str)] = &[
    (
        "rustc-web",
        "a rustc (1.96) whose sysroot has a prebuilt core for bpfel-unknown-none, so the XDP program builds without rust-src",
    ),
    ("libstd-rust-web-dev-bpf", "that prebuilt BPF core"),
    ("rust-web-clippy", "clippy for the XDP program's BPF target"),
    ("llvm-22-dev", "LLVM 22 for building bpf-linker"),
    ("libpolly-22-dev", "linked by bpf-linker's LLVM 22 build"),
    ("zlib1g-dev", "linked by bpf-linker's LLVM 22 build"),
    ("libzstd-dev", "linked by bpf-linker's LLVM 22 build"),
    ("iproute2", "network namespaces, veth and bridges for the tests and the demo"),
    ("procps", "sysctl, for forwarding in test namespaces"),
    ("ethtool", "turns off veth checksum offload in test namespaces"),
    ("sip-tester", "SIPp, the SIP traffic generator of the end-to-end tests"),
    ("kamailio", "a real SIP registrar as home server in the end-to-end tests, and a peer in the benchmark"),
    ("nftables", "the kernel's L4 forwarding (DNAT), the benchmark's baseline (this kernel has no IPVS)"),
    ("baresip-core", "a real softphone (baresip) as the client of the end-to-end tests"),
    ("sipvicious", "SIP scanners (svmap, svwar) the end-to-end tests run against the edge"),
    ("protobuf-compiler", "protoc, which the etcd client crate needs to build its gRPC API"),
    ("etcd-server", "etcd, the store several edges share, in the tests and the demo"),
    ("etcd-client", "etcdctl, with which the tests read and compact what the edges keep in etcd"),
    ("chromium", "a real browser (headless) for the status page's end-to-end test"),
];

const BPF_LINKER_VERSION: &str = "0.13.0";

pub fn ensure() -> Result<()> {
    report_ebpf_route();
    install_packages()?;
    install_bpf_linker()?;
    println!("setup: everything is in place");
    Ok(())
}

fn install_packages() -> Result<()> {
    let missing: Vec<&(&str, &str)> = PACKAGES.iter().filter(|(name, _)| !package_installed(name)).collect();
    if missing.is_empty() {
        println!(
            "setup: Debian packages present ({})",
            PACKAGES.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(", ")
        );
        return Ok(());
    }
    for (name, why) in &missing {
        println!("setup: installing {name}: {why}");
    }
    let names: Vec<&str> = missing.iter().map(|(name, _)| *name).collect();
    if !is_root() {
        bail!(
            "installing packages needs root: run `sudo apt-get update && sudo apt-get install -y {}`",
            names.join(" ")
        );
    }
    run_command(Command::new("apt-get").args(["update", "-q"]))?;
    run_command(
        Command::new("apt-get")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(&names)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
}

fn install_bpf_linker() -> Result<()> {
    let installed = Command::new("bpf-linker").arg("--version").output().is_ok_and(|out| out.status.success());
    if installed {
        println!("setup: bpf-linker present");
        return Ok(());
    }
    println!(
        "setup: building bpf-linker {BPF_LINKER_VERSION} against Debian's LLVM 22 (about a minute): it links the XDP program"
    );
    if !Path::new("/usr/lib/llvm-22").exists() {
        bail!("/usr/lib/llvm-22 is missing: run `apt-get install llvm-22-dev libpolly-22-dev` first");
    }
    run_command(
        Command::new("cargo")
            .args([
                "install",
                "bpf-linker",
                "--version",
                BPF_LINKER_VERSION,
                "--no-default-features",
                "--features",
                "llvm-22",
            ])
            .env("LLVM_PREFIX", "/usr/lib/llvm-22"),
    )
}

/// Which way the XDP program will be built (redirector-user/build.rs picks
/// the same way): Debian's rustc-web is preferred because it needs no
/// download of rust-src; rustup nightly with rust-src is the fallback.
fn report_ebpf_route() {
    let nightly_src = Command::new("rustup")
        .args(["component", "list", "--installed", "--toolchain", "nightly"])
        .output()
        .is_ok_and(|out| String::from_utf8_lossy(&out.stdout).lines().any(|l| l.starts_with("rust-src")));
    if nightly_src {
        println!(
            "setup: rustup nightly has rust-src (-Z build-std=core works); Debian's rustc-web is still installed for BPF clippy"
        );
    } else {
        println!(
            "setup: no rust-src for rustup nightly: the XDP program builds with Debian's rustc-web and its prebuilt BPF core"
        );
    }
}

fn package_installed(name: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", name])
        .output()
        .is_ok_and(|out| String::from_utf8_lossy(&out.stdout).contains("install ok installed"))
}

fn is_root() -> bool {
    Command::new("id").arg("-u").output().is_ok_and(|out| out.stdout.starts_with(b"0"))
}
