//! Giving memory back after a burst.
//!
//! glibc's allocator keeps freed memory in its per-thread arenas for reuse: after a
//! burst of connections or large bodies (a load peak, or an attacker's), the
//! watchdog would keep the peak's resident memory for good, which in a pod counts
//! against its limit and its node. Two settings fix that:
//!
//! - [`tune`], at start-up: fixed thresholds instead of glibc's adaptive ones.
//!   Freeing one large block (a 6 MiB body) makes glibc raise its mmap threshold to
//!   that size and its trim threshold to twice it, after which every buffer up to
//!   6 MiB comes from the arenas and free memory at their top is kept up to 12 MiB
//!   per arena. With fixed thresholds (glibc's own defaults, 128 KiB) a large
//!   buffer is mapped and unmapped on its own, as it is before any adaptation. The
//!   cost is a fresh mapping per large body, which the small payloads of the hot
//!   path never need. An operator's `MALLOC_*_` or `GLIBC_TUNABLES` wins.
//! - [`Trimmer`]: `malloc_trim(0)` returns the free pages inside every arena. It is
//!   called after connections close, at most once a second, so a steady keep-alive
//!   load (connections that stay open) never pays for it, and a burst is given
//!   back about a second after it ends.
//!
//! Both are for glibc. The static musl build allocates with mimalloc (`main.rs`),
//! which returns freed memory by itself: there they do nothing. The Python build
//! gives Rust's allocations to mimalloc too, and these then act on what libpython
//! allocates with glibc's malloc.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;

/// How long a burst is let settle before memory is given back; also the most
/// often it happens.
const SETTLE: Duration = Duration::from_secs(1);

/// Asks for a trim; cheap and non-blocking, for hot paths.
#[derive(Clone)]
pub struct Trimmer(Arc<Notify>);

impl Trimmer {
    /// Starts the task that trims after each request for it (coalesced).
    pub fn spawn() -> Trimmer {
        let wanted = Arc::new(Notify::new());
        let notified = wanted.clone();
        tokio::spawn(async move {
            loop {
                notified.notified().await;
                tokio::time::sleep(SETTLE).await;
                give_back();
            }
        });
        Trimmer(wanted)
    }

    /// Something was freed (a connection closed): trim soon.
    pub fn request(&self) {
        self.0.notify_one();
    }
}

/// Fixes glibc's mmap and trim thresholds (see the module comment). Before any
/// thread starts, as `mallopt` wants.
pub fn tune() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let operator_set = [
            "GLIBC_TUNABLES",
            "MALLOC_MMAP_THRESHOLD_",
            "MALLOC_TRIM_THRESHOLD_",
        ]
        .iter()
        .any(|v| std::env::var_os(v).is_some());
        if !operator_set {
            const THRESHOLD: libc::c_int = 128 * 1024;
            // SAFETY: plain parameter settings, made while single-threaded.
            unsafe {
                libc::mallopt(libc::M_MMAP_THRESHOLD, THRESHOLD);
                libc::mallopt(libc::M_TRIM_THRESHOLD, THRESHOLD);
            }
        }
    }
}

/// Returns free heap pages to the kernel.
pub fn give_back() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks the allocator's own free lists, under its locks.
    unsafe {
        libc::malloc_trim(0);
    }
}
