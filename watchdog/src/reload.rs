//! `RELOAD` (a development setting, warm mode only): watches the function's
//! files and has the runner pick up the new code (`Handler::reload`).
//!
//! What is watched follows from the runner: `PYTHON` watches `HANDLER_PATH`
//! recursively; `LOOP` and `HTTP` watch the directories of the files named in
//! `WATCHDOG_CMD` (`node handler.js` watches handler.js's directory). `STDIO`
//! and `FILE` start the command afresh per invocation, so they need nothing.
//!
//! Changes are debounced: an editor's save is several events (truncate,
//! write, rename, a backup file), and one reload should follow the last of
//! them. Reloads never overlap: the changes made during one make the next.

use std::path::{Component, Path, PathBuf};
use std::time::{Duration, Instant};

use notify::event::{AccessKind, AccessMode, MetadataKind, ModifyKind};
use notify::{Event, EventKind, RecommendedWatcher, RecursiveMode, Watcher};
use runtime_sdk::{names, Handler};
use std::sync::{Arc, Mutex, PoisonError};
use tokio::sync::mpsc;

use crate::config::RunnerConfig;
use crate::shutdown::Shutdown;

/// A burst of changes ends after this long without another.
pub const QUIET: Duration = Duration::from_millis(100);

/// A burst never holds a reload back longer than this after its first change
/// (something that writes without pause still gets reloaded).
pub const MAX_DELAY: Duration = Duration::from_millis(500);

/// A directory to watch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub dir: PathBuf,
    pub recursive: bool,
}

/// What `RELOAD` watches for a runner, or why it watches nothing.
pub fn targets(runner: &RunnerConfig, cwd: &Path) -> Result<Vec<Target>, String> {
    match runner {
        RunnerConfig::Python(p) => Ok(vec![Target {
            dir: absolute(&cwd.join(&p.path)),
            recursive: true,
        }]),
        RunnerConfig::Loop(p) => command_dirs(&p.argv, cwd),
        RunnerConfig::Http(h) => match &h.process {
            Some(p) => command_dirs(&p.argv, cwd),
            None => Err(format!(
                "EXECUTION_MODE=HTTP without {}: the runtime is started by something else, so the watchdog has nothing to restart",
                names::WATCHDOG_CMD
            )),
        },
        RunnerConfig::Stdio(_) | RunnerConfig::File(_) => Err(format!(
            "EXECUTION_MODE={} starts {} afresh for every invocation, so changes apply to the next one anyway",
            runner.kind().as_str(),
            names::WATCHDOG_CMD
        )),
    }
}

/// The directories of the command's words that name existing files,
/// relative words taken from `cwd` as the child resolves them. The program
/// itself counts only when it is a script (`./server.sh`), never the
/// interpreter (`/usr/bin/python3 app.py` watches app.py's directory, not
/// /usr/bin). `--opt=file` counts its value.
fn command_dirs(argv: &[String], cwd: &Path) -> Result<Vec<Target>, String> {
    let mut dirs: Vec<PathBuf> = Vec::new();
    for (i, word) in argv.iter().enumerate() {
        let word = match word.split_once('=') {
            Some((flag, value)) if flag.starts_with('-') => value,
            _ => word.as_str(),
        };
        if word.is_empty() || (i == 0 && !word.contains('/')) {
            continue; // the program, found on PATH
        }
        let path = cwd.join(word);
        if !path.is_file() || (i == 0 && !is_script(&path)) {
            continue;
        }
        let Some(dir) = absolute(&path).parent().map(Path::to_path_buf) else {
            continue;
        };
        if !dirs.contains(&dir) {
            dirs.push(dir);
        }
    }
    if dirs.is_empty() {
        return Err(format!(
            "no word of {} names an existing file, so there is no directory to watch (run the function's file by its path, e.g. \"node handler.js\")",
            names::WATCHDOG_CMD
        ));
    }
    Ok(dirs
        .into_iter()
        .map(|dir| Target {
            dir,
            recursive: false,
        })
        .collect())
}

fn is_script(path: &Path) -> bool {
    use std::io::Read;
    let mut magic = [0u8; 2];
    std::fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut magic))
        .is_ok()
        && &magic == b"#!"
}

/// Symbolic links resolved where possible, so event paths (which notify
/// reports under the watched path) match the roots.
fn absolute(path: &Path) -> PathBuf {
    std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf())
}

/// Whether a change to `path` is noise: bytecode caches, version control,
/// dependencies, and the temporary files editors write next to the file.
/// Only the part below a watched root is looked at, so a root inside a
/// hidden directory still works.
pub fn is_ignored(roots: &[PathBuf], path: &Path) -> bool {
    let below = roots
        .iter()
        .find_map(|root| path.strip_prefix(root).ok())
        .unwrap_or(path);
    let mut parts = below.components().filter_map(|c| match c {
        Component::Normal(s) => s.to_str(),
        _ => None,
    });
    let name = below
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default();
    parts.any(|part| {
        part == "__pycache__"
            || part == "node_modules"
            || part == "site-packages"
            // .git, .venv, .idea, vim's .x.swp, emacs's .#x lock.
            || part.starts_with('.')
    }) || name.ends_with('~') // emacs and vim backups
        || (name.starts_with('#') && name.ends_with('#')) // emacs auto-save
        || name.ends_with("___") // JetBrains' x___jb_tmp___
        || [".swp", ".swo", ".swx", ".tmp", ".pyc", ".pyo"]
            .iter()
            .any(|ext| name.ends_with(ext))
        // vim probes whether it may write a directory with a file named 4913.
        || (!name.is_empty() && name.bytes().all(|b| b.is_ascii_digit()))
}

/// Whether an event may change what the function runs: reads do not (an
/// import opens every file it loads), a write, a creation, a rename, a
/// removal or a `touch` do.
fn is_change(kind: &EventKind) -> bool {
    match kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        EventKind::Access(_) | EventKind::Other => false,
        EventKind::Modify(ModifyKind::Metadata(MetadataKind::AccessTime)) => false,
        EventKind::Any | EventKind::Create(_) | EventKind::Modify(_) | EventKind::Remove(_) => true,
    }
}

/// Waits for the next burst of changes and returns its paths: the burst ends
/// after `quiet` without a change, or `max` after its first change. `None`
/// once the watcher is gone.
pub async fn next_burst(
    changes: &mut mpsc::UnboundedReceiver<PathBuf>,
    quiet: Duration,
    max: Duration,
) -> Option<Vec<PathBuf>> {
    let first = changes.recv().await?;
    let until = tokio::time::Instant::now() + max;
    let mut paths = vec![first];
    loop {
        let end = (tokio::time::Instant::now() + quiet).min(until);
        match tokio::time::timeout_at(end, changes.recv()).await {
            Ok(Some(path)) => {
                if !paths.contains(&path) {
                    paths.push(path);
                }
            }
            Ok(None) | Err(_) => return Some(paths),
        }
    }
}

/// Watches the function's files and reloads `handler` after each burst of
/// changes, until shutdown. `reloaded` runs after each successful reload
/// (warm mode uses it to become ready once a broken start is fixed).
pub fn spawn(
    runner: &RunnerConfig,
    handler: Arc<dyn Handler>,
    shutdown: Shutdown,
    reloaded: impl Fn() + Send + 'static,
) {
    let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("."));
    let targets = match targets(runner, &cwd) {
        Ok(t) => t,
        Err(why) => {
            tracing::warn!("{}=true watches nothing: {why}", names::RELOAD);
            return;
        }
    };
    tokio::spawn(async move {
        // Walking a tree to watch it is file system work: off the workers.
        let mut watch = match tokio::task::spawn_blocking(move || Watch::start(&targets)).await {
            Ok(Ok(watch)) => watch,
            _ => return, // said by `Watch::start`
        };
        loop {
            let burst = tokio::select! {
                burst = next_burst(&mut watch.changes, QUIET, MAX_DELAY) => burst,
                _ = shutdown.requested() => None,
            };
            let Some(paths) = burst else { break };
            let shown: Vec<String> = paths
                .iter()
                .take(5)
                .map(|p| p.display().to_string())
                .collect();
            let started = Instant::now();
            tracing::info!(changed = ?shown, "files changed: reloading the function");
            match handler.reload().await {
                Ok(()) => {
                    tracing::info!(
                        reload_ms = started.elapsed().as_secs_f64() * 1e3,
                        "function reloaded"
                    );
                    reloaded();
                }
                Err(e) => tracing::error!(
                    code = %e.code,
                    reload_ms = started.elapsed().as_secs_f64() * 1e3,
                    "reload failed: {}",
                    e.message
                ),
            }
        }
    });
}

/// A running watch: dropping it ends it.
struct Watch {
    /// Changed paths that are not noise.
    changes: mpsc::UnboundedReceiver<PathBuf>,
    _watcher: Arc<Mutex<RecommendedWatcher>>,
}

impl Watch {
    /// Watches every target; logs what is watched, or why nothing is.
    fn start(targets: &[Target]) -> notify::Result<Watch> {
        let started = Watch::open(targets);
        match &started {
            Ok(_) => {
                let shown: Vec<String> = targets
                    .iter()
                    .map(|t| t.dir.display().to_string())
                    .collect();
                tracing::warn!(
                    watching = ?shown,
                    "{}=true: the function is reloaded when its files change (a development setting, not for production)",
                    names::RELOAD
                );
            }
            Err(e) => tracing::error!(
                "{}=true: cannot watch the function's files: {e}",
                names::RELOAD
            ),
        }
        started
    }

    fn open(targets: &[Target]) -> notify::Result<Watch> {
        let (changes_tx, changes) = mpsc::unbounded_channel();
        let (dirs_tx, mut dirs) = mpsc::unbounded_channel::<PathBuf>();
        let roots: Vec<PathBuf> = targets.iter().map(|t| t.dir.clone()).collect();
        let trees: Vec<PathBuf> = targets
            .iter()
            .filter(|t| t.recursive)
            .map(|t| t.dir.clone())
            .collect();
        let watcher = notify::recommended_watcher({
            let roots = roots.clone();
            move |event: notify::Result<Event>| match event {
                Ok(event) if is_change(&event.kind) => {
                    for path in event.paths {
                        if is_ignored(&roots, &path) {
                            continue;
                        }
                        // A directory new in a watched tree gets watched too
                        // (not from here: notify's thread would wait on itself).
                        if !matches!(event.kind, EventKind::Remove(_))
                            && trees.iter().any(|t| path.starts_with(t))
                            && path.is_dir()
                        {
                            let _ = dirs_tx.send(path.clone());
                        }
                        let _ = changes_tx.send(path);
                    }
                }
                Ok(_) => {}
                Err(e) => tracing::warn!("{}: watching the function's files: {e}", names::RELOAD),
            }
        })?;
        let watcher = Arc::new(Mutex::new(watcher));
        {
            let mut w = watcher.lock().unwrap_or_else(PoisonError::into_inner);
            for t in targets {
                if t.recursive {
                    watch_tree(&mut w, &roots, &t.dir)?;
                } else {
                    w.watch(&t.dir, RecursiveMode::NonRecursive)?;
                }
            }
        }
        // Ends with the watcher, whose callback holds the sender.
        let weak = Arc::downgrade(&watcher);
        tokio::spawn(async move {
            while let Some(dir) = dirs.recv().await {
                let (Some(watcher), roots) = (weak.upgrade(), roots.clone()) else {
                    break;
                };
                let _ = tokio::task::spawn_blocking(move || {
                    let mut w = watcher.lock().unwrap_or_else(PoisonError::into_inner);
                    if let Err(e) = watch_tree(&mut w, &roots, &dir) {
                        tracing::debug!("{}: cannot watch {}: {e}", names::RELOAD, dir.display());
                    }
                })
                .await;
            }
        });
        Ok(Watch {
            changes,
            _watcher: watcher,
        })
    }
}

/// Watches `dir` and the directories below it that are not noise, each on its
/// own: notify's recursive mode would also watch every directory of a
/// `.venv`, `.git` or `node_modules` inside `HANDLER_PATH`, thousands of
/// them, only to ignore what happens there. Only `dir` itself must be
/// watchable.
fn watch_tree(
    watcher: &mut RecommendedWatcher,
    roots: &[PathBuf],
    dir: &Path,
) -> notify::Result<()> {
    watcher.watch(dir, RecursiveMode::NonRecursive)?;
    for sub in tree(roots, dir).into_iter().skip(1) {
        if let Err(e) = watcher.watch(&sub, RecursiveMode::NonRecursive) {
            tracing::debug!("{}: cannot watch {}: {e}", names::RELOAD, sub.display());
        }
    }
    Ok(())
}

/// `dir` and the directories below it that are not noise, `dir` first;
/// symbolic links are not followed (no loops, nothing outside the tree).
fn tree(roots: &[PathBuf], dir: &Path) -> Vec<PathBuf> {
    let mut found = vec![dir.to_path_buf()];
    let mut next = 0;
    while next < found.len() {
        if let Ok(entries) = std::fs::read_dir(&found[next]) {
            for entry in entries.flatten() {
                let path = entry.path();
                if entry.file_type().is_ok_and(|t| t.is_dir()) && !is_ignored(roots, &path) {
                    found.push(path);
                }
            }
        }
        next += 1;
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{HttpConfig, ProcessConfig, PythonConfig};

    fn process(cmd: &[&str]) -> ProcessConfig {
        ProcessConfig {
            argv: cmd.iter().map(|s| s.to_string()).collect(),
            kill_grace: Duration::from_millis(100),
            max_output: 1 << 20,
        }
    }

    /// A directory with `app/handler.js`, `app/lib/util.py` and an
    /// executable script `bin/serve.sh`.
    fn project() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("app/lib")).unwrap();
        std::fs::create_dir_all(dir.path().join("bin")).unwrap();
        std::fs::write(dir.path().join("app/handler.js"), "x").unwrap();
        std::fs::write(dir.path().join("app/lib/util.py"), "x").unwrap();
        std::fs::write(dir.path().join("bin/serve.sh"), "#!/bin/sh\n").unwrap();
        dir
    }

    fn dirs(targets: Vec<Target>) -> Vec<PathBuf> {
        targets
            .into_iter()
            .map(|t| {
                assert!(!t.recursive);
                t.dir
            })
            .collect()
    }

    #[test]
    fn command_words_that_name_files_give_their_directories() {
        let tree = project();
        let root = absolute(tree.path());
        let loop_cfg = |cmd: &[&str]| RunnerConfig::Loop(process(cmd));
        // Relative to the working directory, as the child resolves them.
        let t = targets(&loop_cfg(&["node", "app/handler.js"]), &root).unwrap();
        assert_eq!(dirs(t), [root.join("app")]);
        // Two files, one directory each, in order, no duplicates.
        let util = root.join("app/lib/util.py");
        let t = targets(
            &loop_cfg(&[
                "python3",
                "app/handler.js",
                util.to_str().unwrap(),
                "app/handler.js",
            ]),
            &root,
        )
        .unwrap();
        assert_eq!(dirs(t), [root.join("app"), root.join("app/lib")]);
        // `--flag=file` counts its value; words that are no file do not.
        let t = targets(
            &loop_cfg(&["node", "--require=app/lib/util.py", "--port", "8080", "app"]),
            &root,
        )
        .unwrap();
        assert_eq!(dirs(t), [root.join("app/lib")]);
    }

    #[test]
    fn the_program_counts_only_when_it_is_a_script() {
        let tree = project();
        let root = absolute(tree.path());
        let loop_cfg = |cmd: &[&str]| RunnerConfig::Loop(process(cmd));
        let t = targets(&loop_cfg(&["./bin/serve.sh", "--fast"]), &root).unwrap();
        assert_eq!(dirs(t), [root.join("bin")]);
        // An interpreter given by its path is not the function's code.
        let sh = absolute(Path::new("/bin/sh"));
        let cmd = [sh.to_str().unwrap(), "app/handler.js"];
        let t = targets(&loop_cfg(&cmd), &root).unwrap();
        assert_eq!(dirs(t), [root.join("app")]);
        // Nothing to watch is said, not guessed.
        let e = targets(&loop_cfg(&["python3", "-m", "app.server"]), &root).unwrap_err();
        assert!(e.contains("WATCHDOG_CMD"), "{e}");
    }

    #[test]
    fn each_runner_watches_its_own_files() {
        let tree = project();
        let root = absolute(tree.path());
        let python = RunnerConfig::Python(PythonConfig {
            module: "handler".into(),
            function: "handle".into(),
            path: "app".into(),
            kill_grace: Duration::from_millis(100),
            max_output: 1,
        });
        assert_eq!(
            targets(&python, &root).unwrap(),
            [Target {
                dir: root.join("app"),
                recursive: true
            }]
        );
        let http = |process| {
            RunnerConfig::Http(HttpConfig {
                process,
                runtime_url: url::Url::parse("http://127.0.0.1:8081/invoke").unwrap(),
                health_url: url::Url::parse("http://127.0.0.1:8081/health").unwrap(),
                ready_timeout: Duration::from_secs(1),
                max_output: 1,
                watch_health: true,
            })
        };
        let t = targets(&http(Some(process(&["node", "app/handler.js"]))), &root).unwrap();
        assert_eq!(dirs(t), [root.join("app")]);
        assert!(targets(&http(None), &root).is_err());
        let stdio = RunnerConfig::Stdio(process(&["node", "app/handler.js"]));
        assert!(targets(&stdio, &root).unwrap_err().contains("afresh"));
    }

    #[test]
    fn caches_and_editor_files_are_noise() {
        let roots = [PathBuf::from("/home/dev/.work/app")];
        let root = &roots[0];
        for noise in [
            "__pycache__/handler.cpython-311.pyc",
            "pkg/__pycache__",
            ".git/index.lock",
            ".venv/lib/python3.11/site-packages/x.py",
            "node_modules/left-pad/index.js",
            ".handler.py.swp",
            ".#handler.py",
            "#handler.py#",
            "handler.py~",
            "handler.py___jb_tmp___",
            "4913",
            "handler.pyc",
        ] {
            assert!(is_ignored(&roots, &root.join(noise)), "{noise}");
        }
        // The root sits in a hidden directory: only what is below it counts.
        for change in ["handler.py", "pkg/sub.py", "server.js", "config.json"] {
            assert!(!is_ignored(&roots, &root.join(change)), "{change}");
        }
    }

    #[test]
    fn reads_are_not_changes() {
        use notify::event::CreateKind;
        assert!(!is_change(&EventKind::Access(AccessKind::Open(
            notify::event::AccessMode::Any
        ))));
        assert!(!is_change(&EventKind::Access(AccessKind::Close(
            AccessMode::Read
        ))));
        assert!(!is_change(&EventKind::Modify(ModifyKind::Metadata(
            MetadataKind::AccessTime
        ))));
        assert!(is_change(&EventKind::Access(AccessKind::Close(
            AccessMode::Write
        ))));
        assert!(is_change(&EventKind::Create(CreateKind::File)));
        assert!(is_change(&EventKind::Modify(ModifyKind::Data(
            notify::event::DataChange::Any
        ))));
        assert!(is_change(&EventKind::Modify(ModifyKind::Metadata(
            MetadataKind::WriteTime
        ))));
    }

    #[test]
    fn a_tree_is_walked_without_noise_or_links() {
        let dir = tempfile::tempdir().unwrap();
        let root = absolute(dir.path());
        for sub in [
            "pkg/sub",
            ".git/objects",
            ".venv/lib",
            "__pycache__",
            "node_modules/x",
        ] {
            std::fs::create_dir_all(root.join(sub)).unwrap();
        }
        std::os::unix::fs::symlink(&root, root.join("loop")).unwrap();
        let mut found = tree(std::slice::from_ref(&root), &root);
        found.sort();
        assert_eq!(
            found,
            [root.clone(), root.join("pkg"), root.join("pkg/sub")]
        );
    }

    #[tokio::test]
    async fn a_watched_tree_follows_new_directories_and_skips_noise() {
        let dir = tempfile::tempdir().unwrap();
        let root = absolute(dir.path());
        std::fs::create_dir_all(root.join(".venv/lib")).unwrap();
        let mut watch = Watch::open(&[Target {
            dir: root.clone(),
            recursive: true,
        }])
        .unwrap();
        let seen = |watch: &mut Watch, want: &Path| {
            let mut all = Vec::new();
            while let Ok(path) = watch.changes.try_recv() {
                all.push(path);
            }
            (all.iter().any(|p| p == want), all)
        };
        std::fs::write(root.join(".venv/lib/x.py"), "x").unwrap();
        std::fs::create_dir(root.join("pkg")).unwrap();
        // A file in the new directory is seen once its watch is in place.
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut all = Vec::new();
        loop {
            std::fs::write(root.join("pkg/mod.py"), "x").unwrap();
            tokio::time::sleep(Duration::from_millis(50)).await;
            let (found, paths) = seen(&mut watch, &root.join("pkg/mod.py"));
            all.extend(paths);
            if found {
                break;
            }
            assert!(Instant::now() < deadline, "never saw pkg/mod.py: {all:?}");
        }
        assert!(all.contains(&root.join("pkg")), "{all:?}");
        assert!(
            !all.iter().any(|p| p.starts_with(root.join(".venv"))),
            "{all:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_burst_ends_after_a_quiet_spell() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let t0 = tokio::time::Instant::now();
        tokio::spawn({
            let tx = tx.clone();
            async move {
                for (at, name) in [(0, "a"), (30, "b"), (90, "a"), (150, "c")] {
                    tokio::time::sleep_until(t0 + Duration::from_millis(at)).await;
                    tx.send(PathBuf::from(name)).unwrap();
                }
                // After the quiet spell: the next burst.
                tokio::time::sleep_until(t0 + Duration::from_millis(400)).await;
                tx.send(PathBuf::from("d")).unwrap();
            }
        });
        let burst = next_burst(&mut rx, QUIET, MAX_DELAY).await.unwrap();
        assert_eq!(burst, ["a", "b", "c"].map(PathBuf::from));
        assert_eq!(t0.elapsed(), Duration::from_millis(250));
        let burst = next_burst(&mut rx, QUIET, MAX_DELAY).await.unwrap();
        assert_eq!(burst, [PathBuf::from("d")]);
        assert_eq!(t0.elapsed(), Duration::from_millis(500));
        drop(tx);
        assert_eq!(next_burst(&mut rx, QUIET, MAX_DELAY).await, None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_burst_without_pause_is_cut_at_the_cap() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let t0 = tokio::time::Instant::now();
        tokio::spawn(async move {
            // A change every 50 ms, for two seconds.
            for i in 0..40u64 {
                tokio::time::sleep_until(t0 + Duration::from_millis(50 * i)).await;
                if tx.send(PathBuf::from("log.txt")).is_err() {
                    return;
                }
            }
        });
        let burst = next_burst(&mut rx, QUIET, MAX_DELAY).await.unwrap();
        assert_eq!(burst, [PathBuf::from("log.txt")]);
        assert_eq!(t0.elapsed(), MAX_DELAY);
    }
}
