//! `cargo xtask install [--prefix DIR]` / `uninstall`: the binary, its
//! systemd unit, the config (from the example, never over an existing
//! one), the state directory, shell completions and man pages. `--prefix`
//! is a staging root (everything goes under it, as with DESTDIR); the
//! default is `/`.

use std::{
    os::unix::fs::{OpenOptionsExt, PermissionsExt},
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, bail};

/// Where each part goes, under the prefix.
pub struct Layout {
    root: PathBuf,
}

impl Layout {
    pub fn new(root: &Path) -> Self {
        Self { root: root.to_owned() }
    }

    fn at(&self, path: &str) -> PathBuf {
        self.root.join(path.trim_start_matches('/'))
    }

    pub fn binary(&self) -> PathBuf {
        self.at("/usr/local/bin/redirector")
    }

    pub fn unit(&self) -> PathBuf {
        self.at("/etc/systemd/system/redirector.service")
    }

    pub fn config(&self) -> PathBuf {
        self.at("/etc/redirector/redirector.toml")
    }

    pub fn state(&self) -> PathBuf {
        self.at("/var/lib/redirector")
    }

    pub fn man(&self) -> PathBuf {
        self.at("/usr/local/share/man/man1")
    }

    /// (shell, file) for every shell completions are installed for.
    pub fn completions(&self) -> [(&'static str, PathBuf); 3] {
        [
            ("bash", self.at("/usr/local/share/bash-completion/completions/redirector")),
            ("zsh", self.at("/usr/local/share/zsh/site-functions/_redirector")),
            ("fish", self.at("/usr/local/share/fish/vendor_completions.d/redirector.fish")),
        ]
    }
}

/// The unit, pointing at the installed binary and config (absolute paths
/// as the host will see them, whatever the prefix).
pub fn unit_file() -> String {
    unit_under(Path::new("/"))
}

fn unit_under(root: &Path) -> String {
    let layout = Layout::new(root);
    let bin = layout.binary();
    let conf = layout.config();
    include_str!("../../packaging/redirector.service")
        .replace("@BINDIR@", &bin.parent().expect("a bin dir").display().to_string())
        .replace("@CONFDIR@", &conf.parent().expect("a config dir").display().to_string())
}

/// Installs `binary` and everything around it under `layout`.
pub fn install(layout: &Layout, binary: &Path, example_config: &Path) -> Result<()> {
    copy(binary, &layout.binary(), 0o755)?;
    write(&layout.unit(), unit_file().as_bytes(), 0o644)?;
    println!("install: after an upgrade, `systemctl daemon-reload && systemctl restart redirector`");
    if layout.config().exists() {
        println!("install: {} exists, kept as it is", layout.config().display());
    } else {
        copy(example_config, &layout.config(), 0o600)?;
        println!(
            "install: edit {} (interface, service, servers), then `redirector check-config` it",
            layout.config().display()
        );
    }
    std::fs::create_dir_all(layout.state()).with_context(|| format!("creating {}", layout.state().display()))?;
    std::fs::set_permissions(layout.state(), std::fs::Permissions::from_mode(0o700))?;
    for (shell, path) in layout.completions() {
        let script = output(Command::new(layout.binary()).args(["completions", shell]))?;
        write(&path, &script, 0o644)?;
    }
    let man = layout.man();
    output(Command::new(layout.binary()).arg("man").arg(&man))?;
    println!("install: redirector installed under {}", layout.root.display());
    Ok(())
}

/// Removes what `install` put there; the config and the database stay
/// unless `purge`. Refuses while the service runs on this host.
pub fn uninstall(layout: &Layout, purge: bool) -> Result<()> {
    if layout.root == Path::new("/") && service_active() {
        bail!("redirector.service is running: `systemctl disable --now redirector` first (it detaches the program)");
    }
    let pages = man_pages(layout)?;
    let mut remove = vec![layout.binary(), layout.unit()];
    remove.extend(layout.completions().into_iter().map(|(_, path)| path));
    remove.extend(pages);
    for path in remove {
        remove_file(&path)?;
    }
    if purge {
        remove_file(&layout.config())?;
        remove_file(&layout.state().join("assignments.redb"))?;
        for dir in [layout.config().parent().expect("a config dir").to_owned(), layout.state()] {
            // Only if nothing else is kept there.
            if std::fs::remove_dir(&dir).is_err() && dir.exists() {
                println!("uninstall: kept {}: it holds more than redirector's files", dir.display());
            }
        }
    } else {
        println!(
            "uninstall: kept {} and {} (--purge removes them)",
            layout.config().display(),
            layout.state().display()
        );
    }
    Ok(())
}

/// The man pages `install` wrote: the names the installed binary generates
/// now (another package's `redirector-*` pages are not ours).
fn man_pages(layout: &Layout) -> Result<Vec<PathBuf>> {
    if !layout.binary().exists() {
        return Ok(Vec::new());
    }
    let scratch = private_dir("man")?;
    let listed = output(Command::new(layout.binary()).arg("man").arg(&scratch)).and_then(|_| {
        let names = std::fs::read_dir(&scratch)?.flatten().map(|entry| entry.file_name());
        Ok(names.map(|name| layout.man().join(name)).collect())
    });
    let _ = std::fs::remove_dir_all(&scratch);
    listed
}

fn service_active() -> bool {
    Command::new("systemctl").args(["is-active", "--quiet", "redirector"]).status().is_ok_and(|status| status.success())
}

/// A new directory only this process made (it fails if the name exists),
/// so nothing planted there beforehand is written through.
fn private_dir(what: &str) -> Result<PathBuf> {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
    let dir = std::env::temp_dir().join(format!("redirector-{what}-{}-{nanos}", std::process::id()));
    std::fs::create_dir(&dir).with_context(|| format!("creating {}", dir.display()))?;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))?;
    Ok(dir)
}

/// `systemd-analyze verify` on the unit, where systemd is: a copy whose
/// paths point into the prefix, so the binary it runs is the one installed.
pub fn verify_unit(layout: &Layout) -> Result<()> {
    if Command::new("systemd-analyze").arg("--version").output().is_err() {
        println!("install: systemd-analyze is not on this host; the unit was not verified");
        return Ok(());
    }
    let dir = private_dir("unit")?;
    let unit = dir.join("redirector.service");
    write(&unit, unit_under(&layout.root).as_bytes(), 0o644)?;
    let verified = output(Command::new("systemd-analyze").args(["verify", "--man=no"]).arg(&unit));
    let _ = std::fs::remove_dir_all(&dir);
    verified.map(|_| println!("install: systemd-analyze verify: the unit is valid"))
}

fn copy(from: &Path, to: &Path, mode: u32) -> Result<()> {
    let bytes = std::fs::read(from).with_context(|| format!("reading {}", from.display()))?;
    write(to, &bytes, mode)
}

/// Writes a file whole: into a new file beside it, renamed over it, so a
/// running binary is replaced, never rewritten in place.
fn write(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    let dir = path.parent().expect("an absolute path");
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let name = path.file_name().and_then(|n| n.to_str()).expect("a file name");
    let staged = dir.join(format!(".{name}.{}", std::process::id()));
    let _ = std::fs::remove_file(&staged);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&staged)
        .with_context(|| format!("creating {}", staged.display()))?;
    std::io::Write::write_all(&mut file, bytes).with_context(|| format!("writing {}", staged.display()))?;
    std::fs::set_permissions(&staged, std::fs::Permissions::from_mode(mode))?;
    std::fs::rename(&staged, path).with_context(|| format!("moving {} to {}", staged.display(), path.display()))?;
    println!("install: {}", path.display());
    Ok(())
}

fn remove_file(path: &Path) -> Result<()> {
    match std::fs::remove_file(path) {
        Ok(()) => {
            println!("uninstall: removed {}", path.display());
            Ok(())
        }
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(error) => Err(error).with_context(|| format!("removing {}", path.display())),
    }
}

fn output(command: &mut Command) -> Result<Vec<u8>> {
    let out = command.output().with_context(|| format!("running {command:?}"))?;
    if !out.status.success() {
        bail!("{command:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(out.stdout)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stand-in for the binary: answers `completions SHELL` and `man DIR`
    /// as the real one does (its own tests check what it generates).
    const STAND_IN: &str = "#!/bin/sh\ncase \"$1\" in\n  completions) echo \"# completions for $2\" ;;\n  \
                            man) mkdir -p \"$2\" && echo page > \"$2/redirector.1\" && echo page > \"$2/redirector-run.1\" ;;\n\
                            esac\n";

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("xtask-install-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn installs_every_part_under_the_prefix_keeps_a_config_and_uninstalls() {
        let dir = scratch("all");
        let binary = dir.join("redirector");
        std::fs::write(&binary, STAND_IN).unwrap();
        std::fs::set_permissions(&binary, std::fs::Permissions::from_mode(0o755)).unwrap();
        let example = dir.join("example.toml");
        std::fs::write(&example, "interface = \"eth0\"\n").unwrap();
        let layout = Layout::new(&dir.join("root"));

        install(&layout, &binary, &example).unwrap();
        let mode = |path: &Path| std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
        assert_eq!(std::fs::read(layout.binary()).unwrap(), STAND_IN.as_bytes());
        assert_eq!(mode(&layout.binary()), 0o755);
        let unit = std::fs::read_to_string(layout.unit()).unwrap();
        assert!(
            unit.contains("ExecStart=/usr/local/bin/redirector run --config /etc/redirector/redirector.toml"),
            "{unit}"
        );
        assert!(!unit.contains('@'), "every placeholder filled: {unit}");
        assert_eq!(std::fs::read_to_string(layout.config()).unwrap(), "interface = \"eth0\"\n");
        assert_eq!((mode(&layout.config()), mode(&layout.state())), (0o600, 0o700));
        for (shell, path) in layout.completions() {
            assert_eq!(std::fs::read_to_string(path).unwrap(), format!("# completions for {shell}\n"));
        }
        assert!(layout.man().join("redirector-run.1").exists());
        verify_unit(&layout).expect("systemd-analyze accepts the unit (where it is installed)");

        std::fs::write(layout.config(), "edited").unwrap();
        install(&layout, &binary, &example).unwrap();
        assert_eq!(std::fs::read_to_string(layout.config()).unwrap(), "edited", "an operator's config is kept");

        uninstall(&layout, false).unwrap();
        assert!(!layout.binary().exists() && !layout.unit().exists());
        assert!(!layout.man().join("redirector.1").exists());
        assert!(layout.config().exists() && layout.state().exists(), "config and state kept");
        uninstall(&layout, true).unwrap();
        assert!(!layout.config().exists() && !layout.state().exists(), "--purge removes them");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
