//! The watchdog's signal handlers survive the handler's import.
//!
//! Handler code runs in the watchdog's process, and the thread that started CPython is
//! Python's main thread, so code there can replace the process's handler for SIGTERM
//! (the watchdog's drain) or SIGPIPE (ignored, so a write to a closed socket fails
//! instead of killing the process). `ember._runtime` turns `signal.signal()` for these
//! into a no-op; this catches what goes around it (a C extension or `ctypes` calling
//! `sigaction` while the module is imported): the dispositions are saved before the
//! import and put back after it.

use std::mem::MaybeUninit;

/// SIGTERM and SIGINT start the drain; SIGPIPE must stay ignored.
const OWNED: [libc::c_int; 3] = [libc::SIGTERM, libc::SIGINT, libc::SIGPIPE];

/// The dispositions of the owned signals at one moment.
pub(crate) struct Saved {
    actions: Vec<(libc::c_int, libc::sigaction)>,
}

impl Saved {
    pub(crate) fn now() -> Saved {
        let actions = OWNED
            .iter()
            .filter_map(|&sig| current(sig).map(|a| (sig, a)))
            .collect();
        Saved { actions }
    }

    /// Puts back every disposition that changed since `now()`, with a warning naming it.
    pub(crate) fn restore(&self) {
        for (sig, saved) in &self.actions {
            let Some(now) = current(*sig) else { continue };
            if now.sa_sigaction == saved.sa_sigaction && now.sa_flags == saved.sa_flags {
                continue;
            }
            // SAFETY: `saved` came from sigaction() for this very signal.
            let rc = unsafe { libc::sigaction(*sig, saved, std::ptr::null_mut()) };
            tracing::warn!(
                signal = name(*sig),
                restored = rc == 0,
                "the handler's module changed the process's {} handler while it was imported; \
                 the watchdog's handler is back (it drains on SIGTERM and SIGINT)",
                name(*sig)
            );
        }
    }
}

fn current(sig: libc::c_int) -> Option<libc::sigaction> {
    let mut action = MaybeUninit::<libc::sigaction>::zeroed();
    // SAFETY: a NULL new action only reads the current one into `action`.
    let rc = unsafe { libc::sigaction(sig, std::ptr::null(), action.as_mut_ptr()) };
    // SAFETY: filled by the successful call.
    (rc == 0).then(|| unsafe { action.assume_init() })
}

fn name(sig: libc::c_int) -> &'static str {
    match sig {
        libc::SIGTERM => "SIGTERM",
        libc::SIGINT => "SIGINT",
        libc::SIGPIPE => "SIGPIPE",
        _ => "signal",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_changed_disposition_is_put_back() {
        // SIGINT only: the test harness's own threads do not rely on it.
        let before = current(libc::SIGINT).unwrap();
        let saved = Saved::now();
        // SAFETY: installs SIG_IGN, restored below.
        unsafe { libc::signal(libc::SIGINT, libc::SIG_IGN) };
        assert_eq!(current(libc::SIGINT).unwrap().sa_sigaction, libc::SIG_IGN);
        saved.restore();
        assert_eq!(
            current(libc::SIGINT).unwrap().sa_sigaction,
            before.sa_sigaction
        );
    }
}
