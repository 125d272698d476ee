//! Batched map reads, updates and deletes: `BPF_MAP_LOOKUP_BATCH`,
//! `BPF_MAP_UPDATE_BATCH` and `BPF_MAP_DELETE_BATCH` (Linux 5.6), one
//! system call for many entries, through a map's file descriptor.
//! aya 0.14 has none of them, so this is the one place that calls bpf(2)
//! itself. A kernel or map type without a batched update or delete
//! (EINVAL, ENOTSUPP) gets one call per entry instead, with the same
//! outcome.
//!
//! Every call is `unsafe` for one reason: the kernel reads (and for a
//! lookup writes) as many bytes per key and value as the map's key and
//! value sizes, so `K` and `V` must be exactly the map's types.

use std::{
    io,
    os::fd::{AsRawFd, BorrowedFd},
};

use bytemuck::Pod;

/// `enum bpf_cmd` in include/uapi/linux/bpf.h.
const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
const BPF_MAP_DELETE_ELEM: libc::c_long = 3;
const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;
const BPF_MAP_UPDATE_BATCH: libc::c_long = 26;
const BPF_MAP_DELETE_BATCH: libc::c_long = 27;

/// The kernel's internal `ENOTSUPP`, which bpf(2) returns for a batched
/// command the map type lacks (include/linux/errno.h).
const ENOTSUPP: i32 = 524;

/// A batched update or delete that stopped part way: the first `done`
/// entries asked for were written (or deleted), the others were not. For
/// a read, `done` entries were read.
#[derive(Debug, thiserror::Error)]
#[error("stopped after {done} entries: {source}")]
pub struct BatchError {
    pub done: usize,
    #[source]
    pub source: io::Error,
}

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

/// The member of `union bpf_attr` for one element's update or delete.
#[repr(C)]
#[derive(Default)]
struct ElemAttr {
    map_fd: u32,
    _pad: u32,
    key: u64,
    value: u64,
    flags: u64,
}

/// Entries one call hands the kernel at most (its count is a u32).
const PER_CALL: usize = 1 << 20;

/// Writes every (key, value) pair, in as few calls as the kernel allows.
///
/// # Safety
/// `K` and `V` are `map`'s key and value types (their sizes its sizes).
pub unsafe fn update<K: Pod, V: Pod>(map: BorrowedFd<'_>, keys: &[K], values: &[V]) -> Result<(), BatchError> {
    // SAFETY: the caller's contract, with one value per key.
    unsafe { update_values(map, keys, values, 1) }
}

/// `update` for a per-CPU map: `values` holds each key's value for every
/// possible CPU, `cpus` of them a key, as the kernel lays them out.
///
/// # Safety
/// `K` is `map`'s key type and `V` its value type, 8 bytes long (the
/// kernel rounds each CPU's value up to 8 bytes); `cpus` is the number of
/// possible CPUs.
pub unsafe fn update_per_cpu<K: Pod, V: Pod>(
    map: BorrowedFd<'_>,
    keys: &[K],
    values: &[V],
    cpus: usize,
) -> Result<(), BatchError> {
    assert_eq!(size_of::<V>(), 8, "per-CPU values are laid out 8 bytes apart");
    // SAFETY: the caller's contract, with `cpus` values per key.
    unsafe { update_values(map, keys, values, cpus) }
}

/// `update` with `per_key` consecutive values a key.
///
/// # Safety
/// As `update`; the map's value is `per_key` values of `V`.
unsafe fn update_values<K: Pod, V: Pod>(
    map: BorrowedFd<'_>,
    keys: &[K],
    values: &[V],
    per_key: usize,
) -> Result<(), BatchError> {
    assert_eq!(keys.len() * per_key, values.len(), "one value per key (per CPU)");
    let mut done = 0;
    while done < keys.len() {
        let asked = (keys.len() - done).min(PER_CALL);
        let mut attr = BatchAttr {
            keys: keys[done..].as_ptr() as u64,
            values: values[done * per_key..].as_ptr() as u64,
            count: asked as u32,
            map_fd: map.as_raw_fd() as u32,
            ..BatchAttr::default()
        };
        match bpf(BPF_MAP_UPDATE_BATCH, &mut attr) {
            Ok(()) => done += asked,
            // Writing an entry again is harmless, so all from `done` on.
            Err(error) if unsupported(&error) => return update_each(map, keys, values, per_key, done),
            Err(source) => return Err(BatchError { done: done + attr.count as usize, source }),
        }
    }
    Ok(())
}

/// Deletes every key; keys already gone (an LRU map evicts) are skipped.
///
/// # Safety
/// `K` is `map`'s key type (its size the map's key size).
pub unsafe fn delete<K: Pod>(map: BorrowedFd<'_>, keys: &[K]) -> Result<(), BatchError> {
    let mut done = 0;
    while done < keys.len() {
        let asked = (keys.len() - done).min(PER_CALL);
        let mut attr = BatchAttr {
            keys: keys[done..].as_ptr() as u64,
            count: asked as u32,
            map_fd: map.as_raw_fd() as u32,
            ..BatchAttr::default()
        };
        match bpf(BPF_MAP_DELETE_BATCH, &mut attr) {
            Ok(()) => done += asked,
            // The kernel stops at a missing key: step over it.
            Err(error) if error.raw_os_error() == Some(libc::ENOENT) => done += attr.count as usize + 1,
            // Keys it deleted before it gave up count as missing now.
            Err(error) if unsupported(&error) => return delete_each(map, keys, done),
            Err(source) => return Err(BatchError { done: done + attr.count as usize, source }),
        }
    }
    Ok(())
}

/// The kernel has no batched form of the command for this map (or at all).
/// It then leaves `count` as it was: nothing is known done.
fn unsupported(error: &io::Error) -> bool {
    matches!(error.raw_os_error(), Some(libc::EINVAL | libc::EOPNOTSUPP | ENOTSUPP))
}

/// `update`, one call per entry from `from` on.
fn update_each<K: Pod, V: Pod>(
    map: BorrowedFd<'_>,
    keys: &[K],
    values: &[V],
    per_key: usize,
    from: usize,
) -> Result<(), BatchError> {
    for (done, (key, value)) in keys.iter().zip(values.chunks_exact(per_key)).enumerate().skip(from) {
        let mut attr = ElemAttr {
            map_fd: map.as_raw_fd() as u32,
            key: std::ptr::from_ref(key) as u64,
            value: value.as_ptr() as u64,
            ..ElemAttr::default()
        };
        bpf(BPF_MAP_UPDATE_ELEM, &mut attr).map_err(|source| BatchError { done, source })?;
    }
    Ok(())
}

/// `delete`, one call per key from `from` on.
fn delete_each<K: Pod>(map: BorrowedFd<'_>, keys: &[K], from: usize) -> Result<(), BatchError> {
    for (done, key) in keys.iter().enumerate().skip(from) {
        let mut attr =
            ElemAttr { map_fd: map.as_raw_fd() as u32, key: std::ptr::from_ref(key) as u64, ..ElemAttr::default() };
        match bpf(BPF_MAP_DELETE_ELEM, &mut attr) {
            Err(error) if error.raw_os_error() != Some(libc::ENOENT) => return Err(BatchError { done, source: error }),
            _ => {}
        }
    }
    Ok(())
}

/// Entries one read asks for: a hash bucket never holds more.
const READ_CHUNK: usize = 4096;

/// Every (key, value) pair of a hash map, read a chunk per call.
///
/// # Safety
/// `K` and `V` are `map`'s key and value types (their sizes its sizes):
/// the kernel writes that many bytes per entry into the buffers.
pub unsafe fn lookup_all<K: Pod, V: Pod>(map: BorrowedFd<'_>) -> Result<Vec<(K, V)>, BatchError> {
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
            Err(source) => return Err(BatchError { done: all.len(), source }),
        }
    }
    Ok(all)
}

/// bpf(2) with `attr`, one of the `union bpf_attr` members above.
fn bpf<A>(command: libc::c_long, attr: &mut A) -> io::Result<()> {
    // SAFETY: `attr` is the `bpf_attr` member `command` reads, valid for
    // the call's duration; the keys and values it points at are the
    // callers' slices (or one key and value), holding as many elements of
    // the map's key and value types as it says (the public functions'
    // contract), and the kernel writes only into `attr` and, for a lookup,
    // into those slices.
    let result = unsafe { libc::syscall(libc::SYS_bpf, command, std::ptr::from_mut(attr), size_of::<A>()) };
    if result < 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
}
