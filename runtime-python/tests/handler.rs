//! The runtime through its `Handler` interface, with the handlers in `tests/py/`.
//! One interpreter per test binary, shared by every test (as in production, where one
//! process has one handler); module names differ per test so imports don't collide.

use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use runtime_python::{PythonConfig, PythonHandler};
use runtime_sdk::{ErrorCode, Handler, Health, Invocation, InvokeError, InvokeResult, Json};
use serde_json::{json, Value};

fn log_buffer() -> &'static Arc<Mutex<Vec<u8>>> {
    static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOGS.get_or_init(|| {
        let buf = Arc::new(Mutex::new(Vec::new()));
        let writer_buf = Arc::clone(&buf);
        tracing_subscriber::fmt()
            .with_max_level(tracing::Level::DEBUG)
            .with_ansi(false)
            .with_writer(move || Capture(Arc::clone(&writer_buf)))
            .init();
        buf
    })
}

struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        if std::env::var_os("SHOW_LOGS").is_some() {
            std::io::stderr().write_all(b)?;
        }
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn logs() -> String {
    String::from_utf8_lossy(&log_buffer().lock().unwrap()).into_owned()
}

fn config(module: &str, function: &str, slots: usize) -> PythonConfig {
    log_buffer();
    PythonConfig {
        module: module.into(),
        function: function.into(),
        path: PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/py"),
        slots,
        kill_grace: Duration::from_millis(200),
        function_name: "testfn".into(),
        max_output: 1 << 20,
    }
}

/// Calls `invoke` as the watchdog's pipeline does: the future is dropped at
/// the deadline, which is what stops the handler.
/// The output comes back as a tree, for the assertions.
trait ByDeadline {
    async fn call(&self, inv: Invocation) -> Result<Value, InvokeError>;
}

impl ByDeadline for PythonHandler {
    async fn call(&self, inv: Invocation) -> Result<Value, InvokeError> {
        let (deadline, budget, id) = (inv.deadline, inv.budget(), inv.execution_id.clone());
        let result: InvokeResult = tokio::time::timeout_at(deadline.into(), self.invoke(inv))
            .await
            .unwrap_or_else(|_| Err(InvokeError::timeout(&id, budget)));
        result.map(|output| output.to_json().json.to_value())
    }
}

async fn started(module: &str, function: &str, slots: usize) -> PythonHandler {
    let h = PythonHandler::new(config(module, function, slots));
    h.start().await.expect("handler loads");
    h
}

fn inv(id: &str, payload: Value, timeout_ms: u64) -> Invocation {
    Invocation::new(id, Json::from(payload), Duration::from_millis(timeout_ms))
}

async fn load_error(module: &str, function: &str) -> InvokeError {
    let h = PythonHandler::new(config(module, function, 1));
    let err = h.start().await.expect_err("load fails");
    assert_eq!(err.code, ErrorCode::HandlerLoadError);
    assert_eq!(h.health(), Health::Unhealthy(err.message.clone()));
    let again = h.call(inv("after-load-error", json!({}), 1000)).await;
    assert_eq!(
        again,
        Err(err.clone()),
        "every invocation gets the load error"
    );
    err
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echo_returns_the_payload_unchanged() {
    let h = started("t_echo", "handle", 1).await;
    assert_eq!(h.mode(), "PYTHON");
    assert_eq!(h.health(), Health::Ready);
    let payload: Value = serde_json::from_str(
        r#"{"input": {"b": 1, "a": [1.5, -2, 18446744073709551616, -170141183460469231731687303715884105729,
            "héllo 😀 \u0000", null, true, {"z": {}, "y": []}]}, "metadata": {"k": "v"}}"#,
    )
    .unwrap();
    let out = h.call(inv("e-echo", payload.clone(), 5000)).await.unwrap();
    assert_eq!(
        out.to_string(),
        payload.to_string(),
        "same text: key order, digits"
    );
    for other in [
        json!([1, 2]),
        json!("text"),
        json!(3),
        Value::Null,
        json!(false),
    ] {
        assert_eq!(
            h.call(inv("e-echo-2", other.clone(), 5000)).await.unwrap(),
            other
        );
    }
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn context_carries_the_invocation() {
    let h = started("t_context", "handle", 1).await;
    let mut i = inv("e-ctx", json!({}), 5000);
    i.trace_id = Some("trace-1".into());
    i.attempt = Some(3);
    i.cold_start = true;
    let out = h.call(i.clone()).await.unwrap();
    assert_eq!(out["execution_id"], "e-ctx");
    assert_eq!(out["trace_id"], "trace-1");
    assert_eq!(out["attempt"], 3);
    assert_eq!(
        out["function_name"], "testfn",
        "falls back to FUNCTION_NAME"
    );
    // Read from the clocks at each ask: the same deadline, give or take the ms
    // boundary the two reads may fall on either side of.
    let deadline_ms = out["deadline_ms"].as_u64().unwrap();
    assert!(
        deadline_ms.abs_diff(i.deadline_unix_ms()) <= 1,
        "{deadline_ms}"
    );
    assert_eq!(out["cold_start"], true);
    let remaining = out["remaining_ms"].as_u64().unwrap();
    assert!(remaining > 4000 && remaining <= 5000, "{remaining}");

    let mut j = inv("e-ctx-2", json!({}), 5000);
    j.function_name = "named".into();
    let out = h.call(j).await.unwrap();
    assert_eq!(out["trace_id"], Value::Null);
    assert_eq!(out["attempt"], 1, "attempt defaults to 1");
    assert_eq!(out["function_name"], "named");
    assert_eq!(out["cold_start"], false);

    let logs = logs();
    let line = logs
        .lines()
        .find(|l| l.contains("hello from e-ctx") && !l.contains("e-ctx-2"))
        .unwrap_or_else(|| panic!("print reached the log:\n{logs}"));
    assert!(line.contains("execution_id=\"e-ctx\""), "{line}");
    assert!(line.contains("trace_id=\"trace-1\""), "{line}");
    assert!(line.contains(" function:"), "target is `function`: {line}");
    let line = logs
        .lines()
        .find(|l| l.contains("logged via context") && l.contains("e-ctx-2"))
        .unwrap_or_else(|| panic!("context.logger reached the log:\n{logs}"));
    assert!(line.contains("WARN"), "level mapped: {line}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_handlers_reuse_one_loop_per_thread() {
    let h = started("t_async", "handle", 1).await;
    for n in 0..5 {
        let out = h
            .call(inv(&format!("e-async-{n}"), json!({}), 5000))
            .await
            .unwrap();
        assert_eq!(out["execution_id"], format!("e-async-{n}"));
        assert_eq!(out["loops"], 1, "one thread, one loop");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn module_in_a_package_and_another_function_name() {
    let h = started("pkg.sub", "main", 1).await;
    let out = h.call(inv("e-pkg", json!([1]), 5000)).await.unwrap();
    assert_eq!(out, json!({"from": "pkg.sub", "request": [1]}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_failures_are_handler_load_errors() {
    let e = load_error("t_nope", "handle").await;
    assert!(
        e.message
            .starts_with("ModuleNotFoundError: No module named 't_nope'"),
        "{}",
        e.message
    );
    assert!(e.message.contains("HANDLER_MODULE=t_nope"), "{}", e.message);
    let e = load_error("t_syntax", "handle").await;
    assert!(e.message.starts_with("SyntaxError: "), "{}", e.message);
    let e = load_error("t_echo", "missing").await;
    assert!(
        e.message
            .starts_with("AttributeError: module 't_echo' has no attribute 'missing'"),
        "{}",
        e.message
    );
    let e = load_error("t_raises_on_import", "handle").await;
    assert_eq!(e.message, "RuntimeError: import-time failure");
    let e = load_error("t_signatures", "not_callable").await;
    assert!(e.message.starts_with("TypeError: "), "{}", e.message);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signatures_decide_whether_context_is_passed() {
    for (function, expected) in [
        ("one", json!(1)),
        ("two", json!(2)),
        ("default_context", json!(2)),
        ("varargs", json!(2)),
        ("callable_object", json!("callable")),
        ("returns_coroutine", json!("from coroutine")),
        ("decorated", json!("decorated")),
        ("kwonly_default", json!("kwonly default")),
        ("method", json!("method")),
    ] {
        let h = started("t_signatures", function, 1).await;
        let out = h.call(inv("e-sig", json!({}), 5000)).await;
        assert_eq!(out, Ok(expected), "{function}");
        h.shutdown().await;
    }
    for function in ["none", "three", "kwonly"] {
        let e = load_error("t_signatures", function).await;
        assert!(
            e.message.starts_with("TypeError: "),
            "{function}: {}",
            e.message
        );
        assert!(
            e.message.contains("handle(request, context)"),
            "{}",
            e.message
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exceptions_become_codes() {
    let h = started("t_errors", "dispatch", 2).await;
    let call = |f: &str| h.call(inv(&format!("e-{f}"), json!({"fn": f}), 5000));

    let e = call("value_error").await.unwrap_err();
    assert_eq!(
        (e.code, e.message.as_str()),
        (ErrorCode::HandlerError, "ValueError: boom")
    );
    let logs = logs();
    assert!(
        logs.contains("raise ValueError(\"boom\")"),
        "traceback logged:\n{logs}"
    );

    let e = call("function_error").await.unwrap_err();
    assert_eq!(e.code, ErrorCode::Custom("RATE_LIMITED".into()));
    assert_eq!(e.message, "slow down");

    let e = call("returns_set").await.unwrap_err();
    assert_eq!(e.code, ErrorCode::OutputSerializationError);
    assert!(e.message.contains("type set"), "{}", e.message);
    assert!(e.message.contains("$.a[1]"), "{}", e.message);

    let e = call("returns_nan").await.unwrap_err();
    assert_eq!(e.code, ErrorCode::OutputSerializationError);
    assert!(e.message.contains("nan"), "{}", e.message);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spinning_handler_is_stopped_at_its_deadline() {
    let h = started("t_errors", "dispatch", 1).await;
    let t = Instant::now();
    let e = h
        .call(inv("e-spin", json!({"fn": "spin"}), 300))
        .await
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::Timeout);
    // Bounds in these tests are loose on purpose (a loaded CI machine is slow to
    // switch threads): they tell "at the deadline" from "when the handler ended".
    assert!(
        t.elapsed() < Duration::from_millis(1500),
        "{:?}",
        t.elapsed()
    );
    // The only thread got TimeoutError and serves again, with no exception left over.
    let out = h
        .call(inv("e-after-spin", json!({"fn": "handle"}), 2000))
        .await;
    assert_eq!(out, Ok(json!("ok")));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(h.health(), Health::Ready);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_that_ignores_the_deadline_is_replaced_by_a_fresh_thread() {
    // One slot: without a replacement, the stuck thread would swallow all work.
    let h = started("t_errors", "dispatch", 1).await;
    let t = Instant::now();
    let e = h
        .call(inv(
            "e-stubborn",
            json!({"fn": "stubborn", "seconds": 1.5}),
            200,
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::Timeout);
    assert!(
        t.elapsed() < Duration::from_millis(1000),
        "{:?}",
        t.elapsed()
    );
    assert_eq!(h.health(), Health::Ready, "within the grace");
    tokio::time::sleep(Duration::from_millis(300)).await;
    match h.health() {
        Health::Unhealthy(reason) => {
            assert!(
                reason.contains("handler for e-stubborn did not stop"),
                "{reason}"
            )
        }
        other => panic!("expected unhealthy, got {other:?}"),
    }
    assert_eq!(h.stuck_threads(), 1);
    assert_eq!(
        h.live(),
        Ok(()),
        "one stuck thread is not more than the slots"
    );
    // The fresh thread serves, though the only original thread is still stuck.
    let out = h.call(inv("e-other", json!({"fn": "handle"}), 1000)).await;
    assert_eq!(out, Ok(json!("ok")));
    // A second stuck thread is more than MAX_CONCURRENCY=1: /live fails.
    let _ = h
        .call(inv(
            "e-stubborn-2",
            json!({"fn": "stubborn", "seconds": 1.5}),
            100,
        ))
        .await;
    tokio::time::sleep(Duration::from_millis(350)).await;
    assert_eq!(h.stuck_threads(), 2);
    assert!(h.live().unwrap_err().contains("MAX_CONCURRENCY=1"));
    // Once the stubborn handlers return, their threads leave and health recovers.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(h.stuck_threads(), 0);
    assert_eq!(h.live(), Ok(()));
    assert_eq!(h.health(), Health::Ready);
    let out = h.call(inv("e-after", json!({"fn": "handle"}), 1000)).await;
    assert_eq!(out, Ok(json!("ok")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sleeping_handlers_time_out_and_the_thread_comes_back() {
    let h = started("t_errors", "dispatch", 1).await;
    let t = Instant::now();
    let e = h
        .call(inv("e-sleep", json!({"fn": "sleep", "seconds": 1.5}), 200))
        .await
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::Timeout);
    assert!(
        t.elapsed() < Duration::from_millis(1000),
        "{:?}",
        t.elapsed()
    );
    // time.sleep is not interrupted: the next job waits until the thread is given up
    // on (deadline + grace, 400 ms), then a fresh thread runs it cleanly without
    // waiting for the sleep to end.
    let out = h
        .call(inv("e-after-sleep", json!({"fn": "handle"}), 2000))
        .await;
    assert_eq!(out, Ok(json!("ok")));
    assert!(
        t.elapsed() >= Duration::from_millis(380) && t.elapsed() < Duration::from_millis(1300),
        "{:?}",
        t.elapsed()
    );
    // The sleeper returns at 1.5 s, gets its TimeoutError dropped, and leaves.
    while h.stuck_threads() != 0 {
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "the sleeper never left"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        t.elapsed() >= Duration::from_millis(1400),
        "{:?}",
        t.elapsed()
    );
    assert_eq!(h.health(), Health::Ready);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_handlers_are_cancelled_at_the_deadline() {
    let h = started("t_errors", "dispatch", 1).await;
    let t = Instant::now();
    let e = h
        .call(inv(
            "e-async-sleep",
            json!({"fn": "async_sleep", "seconds": 5}),
            200,
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::Timeout);
    // The task was cancelled (the loop woken), so the thread is free long before the
    // 5 s sleep would end (the bound is loose: other tests share this interpreter's GIL).
    let out = h
        .call(inv("e-after-async", json!({"fn": "handle"}), 3000))
        .await;
    assert_eq!(out, Ok(json!("ok")));
    // Well under the 5 s sleep; loose, as a loaded CI machine is slow to switch threads.
    assert!(
        t.elapsed() < Duration::from_millis(4000),
        "{:?}",
        t.elapsed()
    );

    // A coroutine spinning without await ignores cancellation; TimeoutError follows.
    let e = h
        .call(inv("e-async-spin", json!({"fn": "async_spin"}), 200))
        .await
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::Timeout);
    let out = h
        .call(inv(
            "e-after-async-spin",
            json!({"fn": "async_sleep", "seconds": 0.01}),
            2000,
        ))
        .await;
    assert_eq!(
        out,
        Ok(json!("slept")),
        "a fresh loop serves the next coroutine"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_deadline_waits_for_an_import_to_finish() {
    // An exception landing inside the import system can leave the global import lock
    // held for good (every later import in the process would hang), so TimeoutError
    // waits until the handler's own code runs again.
    let mut cfg = config("t_errors", "dispatch", 1);
    cfg.kill_grace = Duration::from_millis(1500);
    let h = PythonHandler::new(cfg);
    h.start().await.expect("handler loads");
    let e = h
        .call(inv("e-import", json!({"fn": "slow_import"}), 100))
        .await
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::Timeout);
    let out = h
        .call(inv(
            "e-import-after",
            json!({"fn": "slow_import_state"}),
            3000,
        ))
        .await;
    assert_eq!(out, Ok(json!(true)), "the module finished importing");
    assert_eq!(
        h.stuck_threads(),
        0,
        "the spin after the import was stopped"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slots_run_in_parallel() {
    let h = Arc::new(started("t_errors", "dispatch", 4).await);
    let t = Instant::now();
    let calls: Vec<_> = (0..4)
        .map(|n| {
            let h = Arc::clone(&h);
            tokio::spawn(async move {
                h.call(inv(
                    &format!("e-par-{n}"),
                    json!({"fn": "sleep", "seconds": 0.3}),
                    5000,
                ))
                .await
            })
        })
        .collect();
    for c in calls {
        assert_eq!(c.await.unwrap(), Ok(json!("slept")));
    }
    assert!(
        t.elapsed() < Duration::from_millis(1100), // 1.2 s one after another
        "{:?}",
        t.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_does_not_wait_for_a_stuck_handler() {
    let h = Arc::new(started("t_errors", "dispatch", 1).await);
    let stuck = {
        let h = Arc::clone(&h);
        tokio::spawn(async move {
            h.call(inv("e-stuck", json!({"fn": "sleep", "seconds": 3}), 10000))
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    let t = Instant::now();
    h.shutdown().await;
    assert!(
        t.elapsed() < Duration::from_millis(2500),
        "{:?}",
        t.elapsed()
    );
    let e = h
        .call(inv("e-late", json!({"fn": "handle"}), 1000))
        .await
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::Cancelled);
    stuck.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invoke_before_start_is_not_ready() {
    let h = PythonHandler::new(config("t_echo", "handle", 1));
    assert_eq!(h.health(), Health::Starting);
    let e = h.call(inv("e-early", json!({}), 1000)).await.unwrap_err();
    assert_eq!(e.code, ErrorCode::NotReady);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handlers_see_a_python_whose_stdout_is_the_log() {
    let h = started("t_signatures", "interpreter", 1).await;
    let out = h.call(inv("e-probe", json!({}), 5000)).await.unwrap();
    assert_eq!(
        out["stdout"], "_Stream",
        "print() goes to the log, not fd 1"
    );
    // multiprocessing and subprocess use sys.executable: it must be a Python, not us.
    let exe = out["executable"].as_str().unwrap();
    assert!(exe.contains("python"), "{exe}");
    assert_eq!(out["argv"], json!([""]));
}

// -- RELOAD ---------------------------------------------------------------------------

/// An empty directory of the test's own, for modules the test rewrites.
fn module_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("ember-reload-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// `handle` returns its version and its helper module's; `{"sleep": s}` touches
/// `started` in the directory, then sleeps. Bytecode caches are written whatever
/// `PYTHONDONTWRITEBYTECODE` says: they are part of what a reload must get past.
fn reloadable_module(version: &str) -> String {
    format!(
        "import os, sys, time\nsys.dont_write_bytecode = False\nimport t_reload_helper\n\
         def handle(req):\n    \
             if req.get('sleep'):\n        \
                 open(os.path.join(os.path.dirname(__file__), 'started'), 'w').close()\n        \
                 time.sleep(req['sleep'])\n    \
             return ['{version}', t_reload_helper.VALUE]\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_swaps_the_handler_and_an_import_error_keeps_the_old_one() {
    let dir = module_dir("swap");
    let write = |file: &str, text: &str| std::fs::write(dir.join(file), text).unwrap();
    write("t_reload_helper.py", "VALUE = 'helper-1'\n");
    write("t_reload_main.py", &reloadable_module("v1"));
    let mut cfg = config("t_reload_main", "handle", 2);
    cfg.path = dir.clone();
    let h = Arc::new(PythonHandler::new(cfg));
    h.start().await.expect("loads");
    let v1 = json!(["v1", "helper-1"]);
    assert_eq!(h.call(inv("r-1", json!({}), 5000)).await.unwrap(), v1);

    // In flight while the code changes: it finishes on the code it started with.
    let slow = tokio::spawn({
        let h = h.clone();
        async move { h.call(inv("r-slow", json!({"sleep": 0.6}), 5000)).await }
    });
    let started = Instant::now();
    while !dir.join("started").exists() {
        assert!(started.elapsed() < Duration::from_secs(5), "never started");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // Same sizes, most likely within the second the caches were written in: a cache
    // judged by mtime and size alone would bring the old code back.
    write("t_reload_helper.py", "VALUE = 'helper-2'\n");
    write("t_reload_main.py", &reloadable_module("v2"));
    h.reload().await.expect("reloads");
    let v2 = json!(["v2", "helper-2"]);
    assert_eq!(h.call(inv("r-2", json!({}), 5000)).await.unwrap(), v2);
    assert_eq!(slow.await.unwrap().unwrap(), v1, "the old module, whole");

    // A module that no longer imports: the error says why, the old code serves on.
    write(
        "t_reload_main.py",
        "def handle(req):\n    return 'v3'\n  oops\n",
    );
    let e = h.reload().await.unwrap_err();
    assert_eq!(e.code, ErrorCode::HandlerLoadError);
    assert!(e.message.starts_with("IndentationError"), "{}", e.message);
    assert_eq!(h.health(), Health::Ready);
    assert_eq!(h.call(inv("r-3", json!({}), 5000)).await.unwrap(), v2);
    // ...with the modules it was loaded with, for its lazy imports.
    write("t_reload_main.py", &reloadable_module("v4"));
    h.reload().await.expect("reloads once fixed");
    assert_eq!(
        h.call(inv("r-4", json!({}), 5000)).await.unwrap(),
        json!(["v4", "helper-2"])
    );
    let logs = logs();
    assert!(
        logs.contains(
            "python handler could not be reloaded, the previous code keeps serving: IndentationError"
        ),
        "{logs}"
    );
    h.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_that_loads_ends_a_failed_start() {
    let dir = module_dir("fix");
    std::fs::write(dir.join("t_reload_fix.py"), "def handle(req) return 1\n").unwrap();
    let mut cfg = config("t_reload_fix", "handle", 1);
    cfg.path = dir.clone();
    let h = PythonHandler::new(cfg);
    let e = h.start().await.unwrap_err();
    assert!(e.message.starts_with("SyntaxError"), "{}", e.message);
    assert!(matches!(h.health(), Health::Unhealthy(_)));
    std::fs::write(
        dir.join("t_reload_fix.py"),
        "def handle(req):\n    return 1\n",
    )
    .unwrap();
    h.reload().await.expect("reloads");
    assert_eq!(h.health(), Health::Ready);
    assert_eq!(h.call(inv("f-1", json!({}), 5000)).await.unwrap(), json!(1));
    h.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}
