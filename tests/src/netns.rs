//! Named network namespaces made by a test and removed when it ends.

use std::{
    fs::File,
    os::fd::AsRawFd,
    process::{Command, Output},
    sync::atomic::{AtomicU32, Ordering},
};

static NEXT: AtomicU32 = AtomicU32::new(0);

pub struct NetNs {
    pub name: String,
}

impl NetNs {
    /// A fresh namespace named `{prefix}-{pid}-{n}` with loopback up.
    pub fn new(prefix: &str) -> Self {
        let name = format!("{prefix}-{}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed));
        run(Command::new("ip").args(["netns", "add", &name]));
        let ns = Self { name };
        ns.ip("link set lo up");
        ns
    }

    /// A handle on a namespace someone else made (not removed on drop).
    pub fn existing(name: &str) -> std::mem::ManuallyDrop<Self> {
        std::mem::ManuallyDrop::new(Self { name: name.to_owned() })
    }

    /// `ip -n NAME ARGS…` (ARGS split on whitespace); panics with stderr on failure.
    pub fn ip(&self, args: &str) {
        run(Command::new("ip").args(["-n", &self.name]).args(args.split_whitespace()));
    }

    /// Runs a command inside the namespace and waits for it.
    pub fn exec(&self, program: &str, args: &[&str]) -> Output {
        let output = self.command(program, args).output().unwrap_or_else(|e| panic!("running {program}: {e}"));
        assert!(
            output.status.success(),
            "{program} {args:?} in {} failed: {}",
            self.name,
            String::from_utf8_lossy(&output.stderr)
        );
        output
    }

    /// A command that will run inside the namespace.
    pub fn command(&self, program: &str, args: &[&str]) -> Command {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", &self.name, program]).args(args);
        command
    }

    pub fn sysctl(&self, setting: &str) {
        self.exec("sysctl", &["-qw", setting]);
    }

    /// Moves the calling thread into the namespace until the guard drops.
    pub fn enter(&self) -> Entered {
        let original = File::open("/proc/thread-self/ns/net").expect("opening this thread's netns");
        let target = File::open(format!("/run/netns/{}", self.name)).expect("opening the test netns");
        setns(&target);
        Entered { original }
    }

    pub fn ifindex(&self, interface: &str) -> u32 {
        let _inside = self.enter();
        let name = std::ffi::CString::new(interface).unwrap();
        // SAFETY: name is a valid NUL-terminated string.
        let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
        assert_ne!(index, 0, "no interface {interface} in {}", self.name);
        index
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.name]).status();
    }
}

pub struct Entered {
    original: File,
}

impl Drop for Entered {
    fn drop(&mut self) {
        setns(&self.original);
    }
}

fn setns(ns: &File) {
    // SAFETY: ns is an open namespace file; only this thread changes namespace.
    let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
}

fn run(command: &mut Command) {
    let output = command.output().unwrap_or_else(|e| panic!("running {command:?}: {e}"));
    assert!(output.status.success(), "{command:?} failed: {}", String::from_utf8_lossy(&output.stderr));
}
