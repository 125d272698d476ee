//! Builds the XDP object (redirector-ebpf, release, with BTF) so the crate
//! can embed it. Two routes, detected here and installed by `cargo xtask setup`:
//! Debian's rustc-web with its prebuilt BPF `core`, or rustup nightly with
//! rust-src and `-Z build-std=core`.

use std::{
    env,
    path::{Path, PathBuf},
    process::Command,
};

const TARGET: &str = "bpfel-unknown-none";
const DEBIAN_RUSTC: &str = "/usr/bin/rustc";
const DEBIAN_BPF_CORE: &str = "/usr/lib/rustlib/bpfel-unknown-none/lib";

fn main() {
    let manifest_dir = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").unwrap());
    let workspace = manifest_dir.parent().unwrap();
    let ebpf_crate = workspace.join("redirector-ebpf");
    for watched in ["src", "Cargo.toml"] {
        println!("cargo:rerun-if-changed={}", ebpf_crate.join(watched).display());
    }
    let target_dir = workspace.join("target").join("ebpf");
    let object = build(workspace, &target_dir, &[]);
    // A program that differs by a no-op, not embedded: the upgrade test
    // loads it over a running edge (REDIRECTOR_XDP_OBJECT).
    build(workspace, &workspace.join("target").join("ebpf-variant"), &["--features", "variant"]);
    let out = PathBuf::from(env::var_os("OUT_DIR").unwrap()).join("redirector.bpf.o");
    std::fs::copy(&object, &out).unwrap_or_else(|e| panic!("copying {} to {}: {e}", object.display(), out.display()));
    println!("cargo:rustc-env=REDIRECTOR_VERSION={}", version(workspace, &out));
}

/// `redirector --version`: the crate's version, the git revision it was
/// built from, and a hash of the XDP object it embeds.
fn version(workspace: &Path, object: &Path) -> String {
    for watched in [".git/HEAD", ".git/refs/heads"] {
        println!("cargo:rerun-if-changed={}", workspace.join(watched).display());
    }
    let revision = Command::new("git")
        .current_dir(workspace)
        .args(["rev-parse", "--short=12", "HEAD"])
        .output()
        .ok()
        .filter(|out| out.status.success())
        .map_or_else(|| "unknown".to_owned(), |out| String::from_utf8_lossy(&out.stdout).trim().to_owned());
    let bytes = std::fs::read(object).unwrap_or_else(|e| panic!("reading {}: {e}", object.display()));
    let hash = xxhash_rust::xxh3::xxh3_64(&bytes);
    format!("{} (git {revision}, XDP object xxh3 {hash:016x})", env::var("CARGO_PKG_VERSION").unwrap())
}

fn build(workspace: &Path, target_dir: &Path, features: &[&str]) -> PathBuf {
    let mut cargo = Command::new(env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    if !debian_route() && nightly_has_rust_src() {
        // CARGO is the toolchain's own cargo, which knows no `+nightly`.
        cargo = Command::new("rustup");
        cargo.args(["run", "nightly", "cargo"]);
    }
    // Nothing the outer build set for its own rustc may leak into this one.
    for var in [
        "RUSTC",
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "CARGO_BUILD_TARGET",
        "CARGO_TARGET_DIR",
        "RUSTUP_TOOLCHAIN",
    ] {
        cargo.env_remove(var);
    }
    if debian_route() {
        cargo.env("RUSTC", DEBIAN_RUSTC).env("RUSTC_BOOTSTRAP", "1").arg("build");
    } else if nightly_has_rust_src() {
        cargo.args(["build", "-Z", "build-std=core"]);
    } else {
        panic!(
            "no way to build the XDP program for {TARGET}: neither Debian's rustc-web with its BPF core \
             ({DEBIAN_RUSTC}, {DEBIAN_BPF_CORE}) nor rustup nightly with rust-src was found. \
             Run `cargo xtask setup` to install them."
        );
    }
    cargo
        .current_dir(workspace)
        .env("CARGO_ENCODED_RUSTFLAGS", ["-Cdebuginfo=2", "-Clink-arg=--btf"].join("\x1f"))
        .args(["--package", "redirector-ebpf", "--bin", "redirector", "--release", "--target", TARGET])
        .args(features)
        .args(["--config", &format!("target.{TARGET}.linker=\"bpf-linker\"")])
        .arg("--target-dir")
        .arg(target_dir);
    let status = cargo.status().unwrap_or_else(|e| panic!("running {cargo:?}: {e}"));
    assert!(
        status.success(),
        "building the XDP program failed ({status}); if bpf-linker is missing, run `cargo xtask setup`"
    );
    target_dir.join(TARGET).join("release").join("redirector")
}

fn debian_route() -> bool {
    Path::new(DEBIAN_RUSTC).exists() && Path::new(DEBIAN_BPF_CORE).exists()
}

fn nightly_has_rust_src() -> bool {
    Command::new("rustup")
        .args(["component", "list", "--installed", "--toolchain", "nightly"])
        .output()
        .is_ok_and(|out| String::from_utf8_lossy(&out.stdout).lines().any(|line| line.starts_with("rust-src")))
}
