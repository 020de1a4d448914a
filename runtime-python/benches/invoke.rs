//! Calls per second through the `Handler` interface (queue, thread wake-up, GIL,
//! conversion both ways) for an echo handler, sequential and with 16 callers, by slot
//! count. `cargo bench -p runtime-python --bench invoke`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use runtime_python::{PythonConfig, PythonHandler};
use runtime_sdk::{Handler, Invocation};
use serde_json::json;

fn main() {
    let dir = std::env::temp_dir().join(format!("ember-invoke-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("bench_echo.py"),
        "def handle(request):\n    return request\n",
    )
    .unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let payload = runtime_sdk::Json::from(
        json!({"input": {"message": "hello", "n": 42, "tags": ["a", "b"]}, "metadata": {"k": "v"}}),
    );
    println!("| slots | callers | calls/s | mean latency |");
    println!("|---|---|---|---|");
    for slots in [1, 4] {
        let h = Arc::new(PythonHandler::new(PythonConfig {
            module: "bench_echo".into(),
            function: "handle".into(),
            path: dir.clone(),
            slots,
            kill_grace: Duration::from_millis(100),
            function_name: "bench".into(),
            max_output: 6 << 20,
        }));
        rt.block_on(h.start()).unwrap();
        for callers in [1usize, 16] {
            let total = 20_000usize;
            let per = total / callers;
            let run = |n: usize| {
                let h = Arc::clone(&h);
                let payload = payload.clone();
                async move {
                    for i in 0..n {
                        let inv = Invocation::new(
                            format!("b{i}"),
                            payload.clone(),
                            Duration::from_secs(5),
                        );
                        h.invoke(inv).await.unwrap();
                    }
                }
            };
            rt.block_on(run(1000)); // warm-up
            let t = Instant::now();
            rt.block_on(async {
                let tasks: Vec<_> = (0..callers).map(|_| tokio::spawn(run(per))).collect();
                for t in tasks {
                    t.await.unwrap();
                }
            });
            let el = t.elapsed();
            let calls = (per * callers) as f64;
            println!(
                "| {slots} | {callers} | {:.0} | {:.1} µs |",
                calls / el.as_secs_f64(),
                el.as_secs_f64() * 1e6 / calls * callers as f64
            );
        }
        rt.block_on(h.shutdown());
    }
    let _ = std::fs::remove_dir_all(&dir);
}
