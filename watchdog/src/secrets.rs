//! Keeping the watchdog's secrets (`CALLBACK_URL`, `CALLBACK_TOKEN`,
//! `INVOKE_TOKEN`) from the functions it runs (contract section 2).
//!
//! Removing them from a child's environment is not enough: the child runs as
//! the same user and could read them from its parent, in `/proc/<ppid>/environ`
//! (the environment the watchdog was started with, which `unsetenv` does not
//! change) or in its memory (`/proc/<ppid>/mem`, `ptrace`). And a Python
//! handler runs inside the watchdog, where `os.environ` is the process's own
//! environment. So, once the configuration has been read:
//!
//! 1. The secrets leave the process environment (so neither `os.environ` nor
//!    any child sees them) and their text is overwritten where the kernel
//!    reads `/proc/<pid>/environ` from, the environment block the process was
//!    started with.
//! 2. The process is made non-dumpable (`PR_SET_DUMPABLE` 0): another process
//!    of the same user without `CAP_SYS_PTRACE` can no longer attach to it or
//!    read its memory, `environ`, `maps` or open files in `/proc`, where the
//!    configuration's copy of the secrets still lives. It also means no core
//!    dump, which would hold them too.
//!
//! What non-dumpable costs, checked: the files of `/proc/<pid>` become owned
//! by root. The watchdog reads only `stat`, `limits` and `fd/` of itself (the
//! Prometheus process collector), which stay readable: the first two are
//! world-readable and the kernel lets a process list its own `fd/`. A
//! watchdog running as a non-root user can no longer read its own 0400 files
//! (`/proc/self/environ`, `io`, `auxv`), which a Python handler might (psutil's
//! `io_counters()`). Profilers and debuggers (`py-spy`, `gdb`) need
//! `CAP_SYS_PTRACE` to attach. Children are unaffected: `execve` makes them
//! dumpable again.
//!
//! Alternatives not taken: a separate user for children (needs root and a
//! spare uid in every image), or a `hidepid` mount of `/proc` (the mount is the
//! orchestrator's, not the container's). Both can be added by an operator on
//! top; this works in any image.
//!
//! Secrets given as flags (`--callback-token=...`) stay visible in
//! `/proc/<pid>/cmdline`: pass them in the environment.

use std::ffi::{c_char, CStr};

extern "C" {
    /// The C library's environment, read directly: the entries still point
    /// into the block the kernel shows as `/proc/<pid>/environ`.
    static mut environ: *mut *mut c_char;
}

/// Removes `names` from the environment and erases their text (name and
/// value) from the block they came in. Must run before any other thread
/// exists: nothing else may read or change the environment meanwhile.
pub fn scrub_environment(names: &[&str]) {
    let mut found: Vec<(*mut u8, usize)> = Vec::new();
    // SAFETY: single-threaded (see above); `environ` is a NULL-terminated
    // array of NUL-terminated strings, as POSIX defines it.
    unsafe {
        let mut entry = environ;
        while !entry.is_null() && !(*entry).is_null() {
            let text = CStr::from_ptr(*entry).to_bytes();
            if is_named(text, names) {
                found.push(((*entry).cast::<u8>(), text.len()));
            }
            entry = entry.add(1);
        }
    }
    // First out of the array (libc compares names, so the text must still be
    // intact), then erased: the entries are no longer referenced.
    for name in names {
        std::env::remove_var(name);
    }
    for (start, len) in found {
        for i in 0..len {
            // SAFETY: `start..start + len` was one environment string, writable
            // (it lives on the initial stack, or in the heap if set later), and
            // nothing points to it any more. Volatile, so the writes are kept
            // although nothing reads them in this process.
            unsafe { std::ptr::write_volatile(start.add(i), 0) };
        }
    }
}

/// Whether `NAME=value` is one of `names`.
fn is_named(entry: &[u8], names: &[&str]) -> bool {
    names
        .iter()
        .any(|n| entry.len() > n.len() && entry.starts_with(n.as_bytes()) && entry[n.len()] == b'=')
}

/// Makes the process non-dumpable (see the module comment). A failure is
/// reported, not fatal: the secrets are already out of the environment.
pub fn make_private() -> Result<(), String> {
    nix::sys::prctl::set_dumpable(false)
        .map_err(|e| format!("prctl(PR_SET_DUMPABLE, 0) failed: {e}"))
}

/// Both steps, for `main`, once the configuration holds what it needs.
pub fn seal(names: &[&str]) -> Result<(), String> {
    scrub_environment(names);
    make_private()
}

#[cfg(test)]
mod tests {
    use super::*;

    // The environment is process-wide and tests run on threads, so only the
    // matching is tested here; tests/test_security.py checks the process.
    #[test]
    fn names_match_whole_variable_names_only() {
        let names = ["CALLBACK_TOKEN", "INVOKE_TOKEN"];
        assert!(is_named(b"CALLBACK_TOKEN=x", &names));
        assert!(is_named(b"INVOKE_TOKEN=", &names));
        assert!(!is_named(b"CALLBACK_TOKENS=x", &names));
        assert!(!is_named(b"CALLBACK_TOKEN", &names));
        assert!(!is_named(b"MY_CALLBACK_TOKEN=x", &names));
    }
}
