//! As PID 1 the watchdog must reap orphans (contract section 10): processes
//! re-parented to it when their parent died. Its own children are reaped by
//! tokio, so this only waits for zombies it did not spawn; spawning holds a
//! lock so a fresh child is always registered before a scan can see it.

use std::collections::HashSet;
use std::sync::{Mutex, MutexGuard, OnceLock};

fn registry() -> &'static Mutex<HashSet<i32>> {
    static SPAWNED: OnceLock<Mutex<HashSet<i32>>> = OnceLock::new();
    SPAWNED.get_or_init(Default::default)
}

/// Held while spawning, until the new pid is tracked.
pub struct SpawnLock(#[allow(dead_code)] MutexGuard<'static, ()>);

pub fn lock_spawns() -> SpawnLock {
    static LOCK: Mutex<()> = Mutex::new(());
    SpawnLock(LOCK.lock().unwrap_or_else(|e| e.into_inner()))
}

pub fn track(pid: i32) {
    registry().lock().unwrap().insert(pid);
}

pub fn untrack(pid: i32) {
    registry().lock().unwrap().remove(&pid);
}

/// Starts reaping orphans if this process is PID 1.
pub fn start_if_pid1() {
    if std::process::id() != 1 {
        return;
    }
    tokio::spawn(async {
        use tokio::signal::unix::{signal, SignalKind};
        let Ok(mut sigchld) = signal(SignalKind::child()) else {
            return;
        };
        loop {
            // A SIGCHLD may be coalesced; the timer catches what it misses.
            let _ = tokio::time::timeout(std::time::Duration::from_secs(1), sigchld.recv()).await;
            reap_orphans();
        }
    });
}

fn reap_orphans() {
    use nix::sys::wait::{waitpid, WaitPidFlag};
    use nix::unistd::Pid;
    let _spawning = lock_spawns();
    let ours = registry().lock().unwrap().clone();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return;
    };
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<i32>().ok())
        else {
            continue;
        };
        if ours.contains(&pid) {
            continue;
        }
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // "pid (comm) S ppid ...": comm may hold spaces, so parse after ')'.
        let Some(after) = stat.rsplit_once(')').map(|(_, rest)| rest) else {
            continue;
        };
        let mut fields = after.split_whitespace();
        let state = fields.next();
        let ppid = fields.next().and_then(|p| p.parse::<i32>().ok());
        if state == Some("Z") && ppid == Some(1) {
            let _ = waitpid(Pid::from_raw(pid), Some(WaitPidFlag::WNOHANG));
        }
    }
}
