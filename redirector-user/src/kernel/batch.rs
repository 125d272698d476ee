//! Batched map reads, updates and deletes: `BPF_MAP_LOOKUP_BATCH`,
//! `BPF_MAP_UPDATE_BATCH` and `BPF_MAP_DELETE_BATCH` (Linux 5.6), one
//! system call for many entries.
//! aya 0.14 has neither, so this is the one place that calls bpf(2) itself.

use std::{
    io,
    os::fd::{AsRawFd, BorrowedFd},
};

use bytemuck::Pod;

/// `enum bpf_cmd` in include/uapi/linux/bpf.h.
const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;
const BPF_MAP_UPDATE_BATCH: libc::c_long = 26;
const BPF_MAP_DELETE_BATCH: libc::c_long = 27;

/// The `batch` member of `union bpf_attr` (include/uapi/linux/bpf.h).
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

/// Entries one call hands the kernel at most (its count is a u32).
const PER_CALL: usize = 1 << 20;

/// Writes every (key, value) pair, in as few calls as the kernel allows.
pub fn update<K: Pod, V: Pod>(map: BorrowedFd<'_>, keys: &[K], values: &[V]) -> io::Result<()> {
    assert_eq!(keys.len(), values.len(), "one value per key");
    let mut done = 0;
    while done < keys.len() {
        let mut attr = BatchAttr {
            keys: keys[done..].as_ptr() as u64,
            values: values[done..].as_ptr() as u64,
            count: (keys.len() - done).min(PER_CALL) as u32,
            map_fd: map.as_raw_fd() as u32,
            ..BatchAttr::default()
        };
        let result = bpf(BPF_MAP_UPDATE_BATCH, &mut attr);
        done += attr.count as usize;
        result?;
    }
    Ok(())
}

/// Deletes every key; keys already gone (an LRU map evicts) are skipped.
pub fn delete<K: Pod>(map: BorrowedFd<'_>, keys: &[K]) -> io::Result<()> {
    let mut done = 0;
    while done < keys.len() {
        let mut attr = BatchAttr {
            keys: keys[done..].as_ptr() as u64,
            count: (keys.len() - done).min(PER_CALL) as u32,
            map_fd: map.as_raw_fd() as u32,
            ..BatchAttr::default()
        };
        let result = bpf(BPF_MAP_DELETE_BATCH, &mut attr);
        done += attr.count as usize;
        match result {
            Ok(()) => {}
            // The kernel stops at a missing key: step over it.
            Err(error) if error.raw_os_error() == Some(libc::ENOENT) => done += 1,
            Err(error) => return Err(error),
        }
    }
    Ok(())
}

/// Entries one read asks for: a hash bucket never holds more.
const READ_CHUNK: usize = 4096;

/// Every (key, value) pair of a hash map, read a chunk per call.
pub fn lookup_all<K: Pod, V: Pod>(map: BorrowedFd<'_>) -> io::Result<Vec<(K, V)>> {
    let (mut keys, mut values) = (vec![K::zeroed(); READ_CHUNK], vec![V::zeroed(); READ_CHUNK]);
    // The kernel's position in the map (a bucket index for hash maps).
    let (mut position, mut next) = (0u64, 0u64);
    let mut all = Vec::new();
    for call in 0.. {
        let mut attr = BatchAttr {
            in_batch: if call == 0 { 0 } else { &raw const position as u64 },
            out_batch: &raw mut next as u64,
            keys: keys.as_mut_ptr() as u64,
            values: values.as_mut_ptr() as u64,
            count: READ_CHUNK as u32,
            map_fd: map.as_raw_fd() as u32,
            ..BatchAttr::default()
        };
        let result = bpf(BPF_MAP_LOOKUP_BATCH, &mut attr);
        let read = attr.count as usize;
        all.extend(keys[..read].iter().copied().zip(values[..read].iter().copied()));
        match result {
            Ok(()) => position = next,
            // The end of the map.
            Err(error) if error.raw_os_error() == Some(libc::ENOENT) => break,
            Err(error) => return Err(error),
        }
    }
    Ok(all)
}

fn bpf(command: libc::c_long, attr: &mut BatchAttr) -> io::Result<()> {
    // SAFETY: `attr` is a valid `bpf_attr.batch` for the call's duration;
    // its keys and values point at `count` elements of the map's key and
    // value sizes, which the callers' slices hold.
    let result = unsafe { libc::syscall(libc::SYS_bpf, command, attr as *mut BatchAttr, size_of::<BatchAttr>()) };
    if result < 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
}
