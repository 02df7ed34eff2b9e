//! Keeping the proxy's resident set to the pages it uses.
//!
//! Most of an idle sidecar's RSS is not its memory but its binary's pages: the kernel maps up to
//! sixteen neighbouring pages around every page fault ("fault-around"), and start-up (argument
//! parsing, TLS and gRPC set-up) runs code that never runs again. Both are clean pages of the
//! shared page cache, which the proxy can give back at no cost. At start it asks for no
//! fault-around on its read-only mappings (`MADV_RANDOM`); once serving, it drops them
//! (`MADV_DONTNEED`), and only the pages it runs come back, one by one, from the page cache.
//!
//! Only mappings of the executable that are read-only and hold no private (copied-on-write) page
//! are touched: for those, dropping a page means reading the same bytes from the file again.
#![allow(unsafe_code)] // madvise(2) has no safe wrapper; each call below states why it is sound.

use nix::sys::mman::{MmapAdvise, madvise};
use std::ffi::c_void;
use std::ptr::NonNull;

/// A mapping of the executable: start address and length.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mapping {
    pub start: usize,
    pub length: usize,
}

/// Read-only mappings of the executable without private pages, from `/proc/self/smaps`.
pub fn read_only_executable_mappings() -> Vec<Mapping> {
    let Ok(executable) = std::fs::read_link("/proc/self/exe") else {
        return Vec::new();
    };
    let Ok(smaps) = std::fs::read_to_string("/proc/self/smaps") else {
        return Vec::new();
    };
    parse_smaps(&smaps, &executable.to_string_lossy())
}

fn parse_smaps(smaps: &str, executable: &str) -> Vec<Mapping> {
    let mut mappings = Vec::new();
    let mut current: Option<(Mapping, bool)> = None;
    for line in smaps.lines() {
        let mut fields = line.split_whitespace();
        let first = fields.next().unwrap_or_default();
        if let Some((start, end)) = first.split_once('-')
            && let (Ok(start), Ok(end)) = (
                usize::from_str_radix(start, 16),
                usize::from_str_radix(end, 16),
            )
        {
            if let Some((mapping, true)) = current.take() {
                mappings.push(mapping);
            }
            let permissions = fields.next().unwrap_or_default();
            let path = fields.nth(3).unwrap_or_default();
            let eligible = path == executable && !permissions.contains('w');
            current = Some((
                Mapping {
                    start,
                    length: end - start,
                },
                eligible,
            ));
        } else if first == "Anonymous:"
            && fields.next() != Some("0")
            && let Some((_, eligible)) = current.as_mut()
        {
            // A copied-on-write page (relocations, RELRO): dropping it would lose the copy.
            *eligible = false;
        }
    }
    if let Some((mapping, true)) = current {
        mappings.push(mapping);
    }
    mappings
}

fn advise(mapping: Mapping, advice: MmapAdvise) {
    let Some(start) = NonNull::new(mapping.start as *mut c_void) else {
        return;
    };
    // SAFETY: the range is a whole mapping of this process's executable, read from
    // /proc/self/smaps a moment ago; executables are not unmapped while they run. MADV_RANDOM
    // only changes read-ahead. MADV_DONTNEED on a private file mapping without copied-on-write
    // pages (checked: `Anonymous: 0 kB`, not writable) makes the next access read the same
    // bytes from the file again, so no memory the program uses changes.
    let _ = unsafe { madvise(start, mapping.length, advice) };
}

/// At start: no fault-around on the executable's read-only pages.
pub fn no_fault_around() {
    for mapping in read_only_executable_mappings() {
        advise(mapping, MmapAdvise::MADV_RANDOM);
    }
}

/// Once serving: gives back the executable's resident read-only pages; the ones in use come
/// back on their next access.
pub fn drop_startup_pages() {
    for mapping in read_only_executable_mappings() {
        advise(mapping, MmapAdvise::MADV_DONTNEED);
    }
}

/// For a process that runs much code now and then (the lab's cluster processes: a `kubectl
/// apply`, a rollout) and little while idle: gives the executable's pages back every `interval`,
/// from a thread of its own. Bringing back the pages in use costs a few thousand minor faults.
pub fn drop_code_pages_every(interval: std::time::Duration) {
    let spawned = std::thread::Builder::new()
        .name("drop-code-pages".to_owned())
        .spawn(move || {
            loop {
                std::thread::sleep(interval);
                drop_startup_pages();
            }
        });
    if let Err(error) = spawned {
        tracing::warn!(%error, "cannot start the thread that gives code pages back; memory stays higher");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_read_only_mappings_of_the_executable_without_private_pages_qualify() {
        let smaps = "\
55d0c0000000-55d0c0200000 r--p 00000000 fd:01 42 /usr/bin/causeway
Rss:                 800 kB
Anonymous:             0 kB
55d0c0200000-55d0c0800000 r-xp 00200000 fd:01 42 /usr/bin/causeway
Anonymous:             0 kB
55d0c0800000-55d0c0900000 r--p 00800000 fd:01 42 /usr/bin/causeway
Anonymous:           512 kB
55d0c0900000-55d0c0910000 rw-p 00900000 fd:01 42 /usr/bin/causeway
Anonymous:            64 kB
7f0000000000-7f0000100000 r-xp 00000000 fd:01 7 /usr/lib/libc.so.6
Anonymous:             0 kB
";
        let mappings = parse_smaps(smaps, "/usr/bin/causeway");
        assert_eq!(
            mappings,
            [
                Mapping {
                    start: 0x55d0c0000000,
                    length: 0x200000
                },
                Mapping {
                    start: 0x55d0c0200000,
                    length: 0x600000
                },
            ]
        );
    }

    #[test]
    fn dropping_the_test_binarys_pages_leaves_it_running() {
        no_fault_around();
        drop_startup_pages();
        // Code and constants still work after being read back from the file.
        let text = format!("{:?}", parse_smaps("", "x"));
        assert_eq!(text, "[]");
    }
}
