//! Pinned state: the XDP link and the maps that hold what the fast path
//! knows live in bpffs, under `<bpffs>/redirector/<interface>/`, so the
//! kernel keeps forwarding while no daemon runs (SIGTERM, SIGKILL, an
//! upgrade), and the next daemon adopts them. Maps are pinned under a
//! directory named for their layout (`layout-<MAP_LAYOUT>`): a daemon
//! refuses maps of another layout, or of another size than its config asks
//! for, and says how to remove them (`redirector detach`).

use std::{
    ffi::CString,
    io,
    os::unix::ffi::OsStrExt,
    path::{Path, PathBuf},
};

use aya::maps::MapInfo;
use redirector_ebpf::{
    AORS_MAP, CLIENTS_MAP, CONFIG_MAP, COUNTERS_MAP, LOADS_MAP, MAP_LAYOUT, NAT_REPLIES_MAP, OTHER_LINES_MAP,
    PROBE_MAP, SERVER_STATS_MAP, SERVERS_MAP, SERVICES_MAP, THROTTLED_MAP,
};

use super::loader::CLIENT_MAPS;

/// The maps a daemon pins: everything the program forwards by (or answers
/// probes with: `AORS` too, rewritten from the store at start), and the counters (the clients' loads too: an adopted
/// entry's slot keeps its count). Not the event ring (each daemon reads
/// its own), nor the per-CPU scratch space.
pub const PINNED_MAPS: [&str; 12] = [
    CONFIG_MAP,
    SERVICES_MAP,
    SERVERS_MAP,
    CLIENTS_MAP,
    NAT_REPLIES_MAP,
    LOADS_MAP,
    AORS_MAP,
    COUNTERS_MAP,
    SERVER_STATS_MAP,
    THROTTLED_MAP,
    PROBE_MAP,
    // Its slot outlives the daemon only while the map is pinned: the
    // kernel empties a program array no file refers to.
    OTHER_LINES_MAP,
];

/// `statfs(2)`'s `f_type` of bpffs (include/uapi/linux/magic.h).
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

#[derive(Debug, thiserror::Error)]
pub enum PinError {
    #[error("mounting bpffs at {path}: {source} (mount it yourself: `mount -t bpf bpf {path}`)", path = path.display())]
    Mount { path: PathBuf, source: io::Error },
    #[error("{what} {path}: {source}", path = path.display())]
    Io { what: &'static str, path: PathBuf, source: io::Error },
    #[error(
        "{path} holds maps pinned by a redirector of another map layout ({found}; this one uses layout-{MAP_LAYOUT}): \
         run `redirector detach --interface {interface}` to remove them (the fast path stops until clients come \
         back through first contact), then start again",
        path = path.display()
    )]
    OtherLayout { path: PathBuf, found: String, interface: String },
    #[error(
        "the pinned map {path} has {found}, this redirector needs {wanted}{hint}: run `redirector detach --interface \
         {interface}` to remove the pinned state (the fast path stops until clients come back through first contact)",
        path = path.display()
    )]
    Mismatch { path: PathBuf, found: String, wanted: String, hint: &'static str, interface: String },
    #[error("reading the pinned map {path}: {source}", path = path.display())]
    Info { path: PathBuf, source: aya::maps::MapError },
    #[error("the embedded XDP object does not parse: {0}")]
    Object(#[from] aya_obj::ParseError),
}

type Result<T, E = PinError> = std::result::Result<T, E>;

/// Where one interface's state is pinned.
#[derive(Debug, Clone)]
pub struct Pins {
    bpffs: PathBuf,
    interface: String,
}

impl Pins {
    pub fn new(bpffs: &Path, interface: &str) -> Self {
        Self { bpffs: bpffs.to_owned(), interface: interface.to_owned() }
    }

    /// `<bpffs>/redirector/<interface>`.
    pub fn directory(&self) -> PathBuf {
        self.bpffs.join("redirector").join(&self.interface)
    }

    fn maps_directory(&self) -> PathBuf {
        self.directory().join(format!("layout-{MAP_LAYOUT}"))
    }

    pub fn map(&self, name: &str) -> PathBuf {
        self.maps_directory().join(name)
    }

    pub fn link(&self) -> PathBuf {
        self.directory().join("link")
    }

    /// Whether a previous daemon left maps to adopt.
    pub fn has_maps(&self) -> bool {
        self.map(CLIENTS_MAP).exists()
    }

    /// Mounts bpffs if it is not there, creates the directories, and
    /// refuses maps of another layout.
    pub fn prepare(&self) -> Result<()> {
        mount_bpffs(&self.bpffs)?;
        let maps = self.maps_directory();
        std::fs::create_dir_all(&maps).map_err(|source| PinError::Io { what: "creating", path: maps, source })?;
        let others = self.other_layouts()?;
        if let Some(found) = others.first() {
            let path = self.directory();
            return Err(PinError::OtherLayout { path, found: found.clone(), interface: self.interface.clone() });
        }
        Ok(())
    }

    fn other_layouts(&self) -> Result<Vec<String>> {
        let directory = self.directory();
        let entries = std::fs::read_dir(&directory).map_err(|source| PinError::Io {
            what: "reading",
            path: directory.clone(),
            source,
        })?;
        let ours = format!("layout-{MAP_LAYOUT}");
        Ok(entries
            .flatten()
            .filter_map(|entry| entry.file_name().into_string().ok())
            .filter(|name| name.starts_with("layout-") && *name != ours)
            .collect())
    }

    /// Checks every pinned map against the object's definition of it (with
    /// `clients` entries for the client maps): the same type, key, value
    /// and size, or the program could not use it.
    pub fn check_maps(&self, object: &[u8], clients: u32) -> Result<()> {
        let object = aya_obj::Object::parse(object)?;
        for name in PINNED_MAPS {
            let path = self.map(name);
            let Some(wanted) = object.maps.get(name) else { continue };
            if !path.exists() {
                continue;
            }
            let info = MapInfo::from_pin(&path).map_err(|source| PinError::Info { path: path.clone(), source })?;
            let client_map = CLIENT_MAPS.contains(&name);
            let entries = if client_map { clients } else { wanted.max_entries() };
            let wanted_shape =
                Shape { kind: wanted.map_type(), key: wanted.key_size(), value: wanted.value_size(), entries };
            let kind = info.map_type().map_or(u32::MAX, |kind| kind as u32);
            let found = Shape { kind, key: info.key_size(), value: info.value_size(), entries: info.max_entries() };
            if found != wanted_shape {
                let hint = if client_map && found.entries != entries && found.key == wanted_shape.key {
                    " (was [fast_path] max_clients changed? set it back to keep the pinned clients)"
                } else {
                    ""
                };
                let (found, wanted) = (found.to_string(), wanted_shape.to_string());
                let interface = self.interface.clone();
                return Err(PinError::Mismatch { path, found, wanted, hint, interface });
            }
        }
        Ok(())
    }

    /// Removes the link (which detaches the program once no daemon holds
    /// it) and every map; whether anything was pinned.
    pub fn remove(&self) -> Result<bool> {
        let directory = self.directory();
        if !directory.exists() {
            return Ok(false);
        }
        std::fs::remove_dir_all(&directory).map_err(|source| PinError::Io {
            what: "removing",
            path: directory,
            source,
        })?;
        Ok(true)
    }
}

/// A map's type (`bpf_map_type`), key and value sizes and entries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Shape {
    kind: u32,
    key: u32,
    value: u32,
    entries: u32,
}

impl std::fmt::Display for Shape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (kind, key, value, entries) = (self.kind, self.key, self.value, self.entries);
        write!(f, "map type {kind}, {key}-byte keys, {value}-byte values, {entries} entries")
    }
}

/// Mounts bpffs at `path` unless it is there already.
fn mount_bpffs(path: &Path) -> Result<()> {
    if is_bpffs(path) {
        return Ok(());
    }
    std::fs::create_dir_all(path).map_err(|source| PinError::Io {
        what: "creating the bpffs mount point",
        path: path.to_owned(),
        source,
    })?;
    let target = CString::new(path.as_os_str().as_bytes()).map_err(|error| PinError::Mount {
        path: path.to_owned(),
        source: io::Error::new(io::ErrorKind::InvalidInput, error),
    })?;
    // SAFETY: NUL-terminated strings that outlive the call; no data argument.
    let mounted = unsafe { libc::mount(c"bpf".as_ptr(), target.as_ptr(), c"bpf".as_ptr(), 0, std::ptr::null()) };
    if mounted != 0 {
        return Err(PinError::Mount { path: path.to_owned(), source: io::Error::last_os_error() });
    }
    tracing::info!(path = %path.display(), "mounted bpffs");
    Ok(())
}

/// Whether `path` is on bpffs.
pub fn is_bpffs(path: &Path) -> bool {
    let Ok(path) = CString::new(path.as_os_str().as_bytes()) else { return false };
    // SAFETY: statfs writes one struct statfs, zeroed here; the path is NUL-terminated.
    let mut stats: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    let result = unsafe { libc::statfs(path.as_ptr(), &mut stats) };
    result == 0 && stats.f_type == BPF_FS_MAGIC
}
