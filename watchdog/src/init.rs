//! As PID 1 the watchdog must reap orphans (contract section 10), without
//! taking the exit status of a child that someone in the watchdog waits for:
//! a Python handler's `subprocess.Popen(...).wait()` runs in this process, so
//! its children are this process's children too.
//!
//! A reaper in the same process cannot tell the two apart: an orphan
//! re-parented to PID 1 and a child Python forked are both this process's
//! children, and `waitpid` on the wrong one steals the status Python waits for
//! (it then sees `ECHILD` and reports 0). So, like tini and `docker --init`,
//! the watchdog forks at the very start of `main`, before any thread exists:
//! the parent stays PID 1 as a minimal init, and the child runs the watchdog.
//! Orphans are re-parented to the init, which reaps them all and has no child
//! of its own to confuse them with but the watchdog; the watchdog and Python
//! reap their own children as any process does.
//!
//! The init forwards every signal it can catch to the watchdog (SIGTERM from
//! the kubelet, SIGINT, SIGHUP, SIGUSR1...) and exits with the watchdog's
//! code (128 + the signal's number if a signal ended it). Its exit ends every
//! process left in the container: the kernel kills a PID namespace with its
//! PID 1. It costs one `fork` of a process that has not started anything yet,
//! and the init's few private pages.

use nix::sys::signal::{kill, SigSet, SigmaskHow, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::{fork, ForkResult, Pid};

/// Signals the init does not wait for: those the kernel raises for a fault of
/// the init itself (blocking them would hide a crash), and terminal job
/// control, which has no meaning here. SIGKILL and SIGSTOP cannot be caught.
const NOT_FORWARDED: [Signal; 9] = [
    Signal::SIGFPE,
    Signal::SIGILL,
    Signal::SIGSEGV,
    Signal::SIGBUS,
    Signal::SIGABRT,
    Signal::SIGTRAP,
    Signal::SIGSYS,
    Signal::SIGTTIN,
    Signal::SIGTTOU,
];

/// If this process is PID 1, forks: the parent becomes the init and never
/// returns; the child returns and goes on as the watchdog. Must be called
/// before any thread is started (only the calling thread survives a fork).
pub fn split_if_pid1() {
    if std::process::id() != 1 {
        return;
    }
    let mut waited = SigSet::all();
    for s in NOT_FORWARDED {
        waited.remove(s);
    }
    // Blocked before the fork, so a signal sent between the fork and the
    // init's first wait stays pending instead of being lost.
    let mut before = SigSet::empty();
    if let Err(e) =
        nix::sys::signal::pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&waited), Some(&mut before))
    {
        eprintln!("watchdog: cannot block signals for the init process ({e}); running without one");
        return;
    }
    // SAFETY: no other thread exists yet (see above), so the child is a
    // complete copy and may do anything.
    match unsafe { fork() } {
        Ok(ForkResult::Child) => {
            let _ = nix::sys::signal::pthread_sigmask(SigmaskHow::SIG_SETMASK, Some(&before), None);
        }
        Ok(ForkResult::Parent { child }) => supervise(child, &waited),
        Err(e) => {
            let _ = nix::sys::signal::pthread_sigmask(SigmaskHow::SIG_SETMASK, Some(&before), None);
            eprintln!(
                "watchdog: cannot fork the init process ({e}); orphaned processes will not be reaped"
            );
        }
    }
}

/// The init: waits for signals; reaps on SIGCHLD, forwards anything else to
/// the watchdog, and exits when the watchdog has.
fn supervise(watchdog: Pid, waited: &SigSet) -> ! {
    loop {
        let Ok(signal) = waited.wait() else {
            continue;
        };
        if signal == Signal::SIGCHLD {
            if let Some(code) = reap(watchdog) {
                std::process::exit(code);
            }
        } else {
            let _ = kill(watchdog, signal);
        }
    }
}

/// Reaps every child that has ended (one SIGCHLD may stand for several);
/// returns the exit code to use if the watchdog was one of them.
fn reap(watchdog: Pid) -> Option<i32> {
    let mut code = None;
    loop {
        match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(pid, status)) if pid == watchdog => code = Some(status),
            Ok(WaitStatus::Signaled(pid, signal, _)) if pid == watchdog => {
                code = Some(128 + signal as i32)
            }
            Ok(WaitStatus::StillAlive) | Err(_) => return code,
            Ok(_) => {}
        }
    }
}
