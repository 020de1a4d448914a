//! The lane (quick calls on the caller's tokio worker), in a test binary of its own:
//! which path a call takes depends on how long recent calls took, and other tests'
//! handlers holding the GIL would slow these down.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use runtime_python::{PythonConfig, PythonHandler};
use runtime_sdk::{Body, Handler, Invocation, Json, SlotRelease};
use serde_json::{json, Value};

async fn started(module: &str, function: &str) -> PythonHandler {
    let h = PythonHandler::new(PythonConfig {
        module: module.into(),
        function: function.into(),
        path: PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/py"),
        slots: 1,
        kill_grace: Duration::from_millis(200),
        function_name: "testfn".into(),
        max_output: 1 << 20,
    });
    h.start().await.expect("handler loads");
    h
}

/// The OS thread a `t_lane` handler ran on, by its name.
async fn ran_on(h: &PythonHandler, payload: Value) -> String {
    ran_and_freed(h, payload).await.0
}

/// The OS thread a `t_lane` handler ran on, and whether its running slot had been
/// freed by the time its answer was in.
async fn ran_and_freed(h: &PythonHandler, payload: Value) -> (String, bool) {
    let freed = Arc::new(AtomicBool::new(false));
    let mut inv = Invocation::new("e-lane", Json::from(payload), Duration::from_secs(5));
    inv.slot = SlotRelease::new({
        let freed = freed.clone();
        move || freed.store(true, Ordering::SeqCst)
    });
    let out = h.invoke(inv).await.expect("runs");
    let freed = freed.load(Ordering::SeqCst);
    let json = match &out.body {
        Body::Stream(chunks) => {
            let mut stream = chunks.take().expect("a stream");
            let first = std::future::poll_fn(|cx| stream.as_mut().poll_next(cx)).await;
            first.expect("a value").expect("not an error")
        }
        _ => out.to_json().json,
    };
    let name = json.to_value().as_str().expect("a thread name").to_owned();
    (name, freed)
}

/// One test, the parts in turn: a call's path depends on the time of the calls before
/// it, and a part running meanwhile (holding the GIL) would lengthen them.
#[test]
fn the_lane_takes_quick_plain_calls_when_a_worker_is_spare() {
    let two_workers = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    two_workers.block_on(quick_calls_run_on_the_callers_worker_and_slow_ones_on_the_threads());
    let one_thread = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    one_thread.block_on(a_runtime_without_a_spare_worker_uses_the_threads());
}

async fn quick_calls_run_on_the_callers_worker_and_slow_ones_on_the_threads() {
    // Only what does not hang on this machine's speed is asserted exactly (a debug build
    // on a busy CI machine takes a good part of the 250 µs bound per quick call).
    let h = started("t_lane", "where").await;
    // In the lane the slot is freed as the function returns, before the answer
    // travels back (the caller's task may be polled much later).
    assert_eq!(
        ran_and_freed(&h, json!({})).await,
        ("tokio-rt-worker".to_owned(), true),
        "a fresh handler's first call"
    );
    // A call of 5 ms alone puts the average past the bound: the next ones go to the
    // threads, which free the slot as well before the answer goes.
    let mut runs = Vec::new();
    for _ in 0..6 {
        runs.push(ran_and_freed(&h, json!({"sleep": 0.005})).await);
    }
    assert_eq!(
        runs[1..],
        vec![("ember-py-0".to_owned(), true); 5],
        "{runs:?}"
    );
    // Quick again: the average comes down and the lane is taken again.
    let mut names = Vec::new();
    while names.len() < 400 && names.last().is_none_or(|n| n != "tokio-rt-worker") {
        names.push(ran_on(&h, json!({})).await);
    }
    assert_eq!(
        names.last().map(String::as_str),
        Some("tokio-rt-worker"),
        "{names:?}"
    );
    h.shutdown().await;
    // A plain function that returns a generator takes the lane, and its stream
    // keeps the slot until it ends.
    let h = started("t_lane", "returns_stream").await;
    assert_eq!(
        ran_and_freed(&h, json!({})).await,
        ("tokio-rt-worker".to_owned(), false)
    );
    h.shutdown().await;
    // Generators and coroutines wait on readers and I/O: always on the threads,
    // where a stream too keeps its slot until it ends.
    for (function, freed) in [("streams", false), ("coroutine", true)] {
        let h = started("t_lane", function).await;
        assert_eq!(
            ran_and_freed(&h, json!({})).await,
            ("ember-py-0".to_owned(), freed),
            "{function}"
        );
        h.shutdown().await;
    }
}

async fn a_runtime_without_a_spare_worker_uses_the_threads() {
    let h = started("t_lane", "where").await;
    assert_eq!(ran_on(&h, json!({})).await, "ember-py-0");
    h.shutdown().await;
}
