//! Pinned state (`redirector::kernel::pins`), without a daemon: bpffs is
//! mounted where it is missing, a second load adopts the first one's maps,
//! and pins the program could not use (another map layout, another
//! `max_clients`) are refused with an error that says to detach.

use std::ffi::CString;

use redirector::kernel::{
    loader::{DataPlane, DataPlaneError, endpoint},
    pins::{PinError, Pins, is_bpffs},
};
use redirector_ebpf::ClientEntry;
use redirector_tests::privileged;

/// A scratch directory, with whatever is mounted on it unmounted on drop.
struct Scratch(std::path::PathBuf);

impl Scratch {
    fn new(name: &str) -> Self {
        let path = std::env::temp_dir().join(format!("redirector-pins-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&path).unwrap();
        Self(path)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let target = CString::new(self.0.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: a NUL-terminated path that outlives the call.
        unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) };
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

const CLIENTS: u32 = 1024;

#[test]
fn bpffs_is_mounted_where_missing_and_a_second_load_adopts_the_maps() {
    if !privileged() {
        return;
    }
    let scratch = Scratch::new("adopt");
    assert!(!is_bpffs(&scratch.0));
    let pins = Pins::new(&scratch.0, "eth9");
    let client = endpoint("10.9.0.2".parse().unwrap(), 5060);
    {
        let mut first = DataPlane::load_pinned(&pins, CLIENTS).expect("a first load");
        assert!(is_bpffs(&scratch.0), "mounted by the load");
        assert!(!first.adopted());
        first.install_client(client, ClientEntry { server: 3, owner: 7, ..Default::default() }).unwrap();
    }
    let mut second = DataPlane::load_pinned(&pins, CLIENTS).expect("a second load");
    assert!(second.adopted());
    assert_eq!(second.client(client).unwrap().map(|e| (e.server, e.owner)), Some((3, 7)), "the first one's entry");
    assert!(pins.remove().unwrap());
    assert!(!pins.directory().exists());
}

#[test]
fn pins_of_another_layout_or_size_are_refused_with_what_to_do() {
    if !privileged() {
        return;
    }
    let scratch = Scratch::new("refuse");
    let pins = Pins::new(&scratch.0, "eth9");
    drop(DataPlane::load_pinned(&pins, CLIENTS).expect("a first load"));

    let error = DataPlane::load_pinned(&pins, 2 * CLIENTS).err().expect("another max_clients is refused");
    let text = error.to_string();
    assert!(matches!(error, DataPlaneError::Pins(PinError::Mismatch { .. })), "{text}");
    assert!(text.contains("max_clients") && text.contains("redirector detach --interface eth9"), "{text}");

    std::fs::create_dir(pins.directory().join("layout-0")).unwrap();
    let error = DataPlane::load_pinned(&pins, CLIENTS).err().expect("another layout is refused");
    let text = error.to_string();
    assert!(matches!(error, DataPlaneError::Pins(PinError::OtherLayout { .. })), "{text}");
    assert!(text.contains("layout-0") && text.contains("redirector detach --interface eth9"), "{text}");
}
