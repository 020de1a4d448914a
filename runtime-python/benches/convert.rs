//! Direct walk vs text round trip (`json.loads` / `json.dumps`) for the payload a
//! handler receives and the value it returns. `cargo bench -p runtime-python`.
//!
//! Both sides start from and end at a `serde_json::Value`, as the runtime does: the
//! text path pays `serde_json::to_string` before `json.loads` and `serde_json::from_str`
//! after `json.dumps`.

use std::hint::black_box;
use std::time::{Duration, Instant};

use pyo3::prelude::*;
use runtime_python::convert;
use serde_json::{json, Value};

/// A typical request: an `input` object holding a list of records, plus metadata.
fn payload(min_bytes: usize) -> Value {
    let mut items = Vec::new();
    let mut doc = json!({});
    let mut i: u64 = 0;
    while serde_json::to_vec(&doc).unwrap().len() < min_bytes {
        for _ in 0..8 {
            items.push(json!({
                "id": i,
                "sku": format!("SKU-{i:06}"),
                "name": "Größe L — café ☕",
                "price": 12.5 + i as f64 / 100.0,
                "qty": i % 7,
                "active": i % 2 == 0,
                "tags": ["red", "cotton"],
                "note": null,
            }));
            i += 1;
        }
        doc = json!({
            "input": {"order": "A-1", "items": items},
            "metadata": {"tenant": "acme", "source": "bench"},
        });
    }
    doc
}

fn time<F: FnMut()>(iters: u32, mut f: F) -> Duration {
    for _ in 0..iters.div_ceil(10) {
        f();
    }
    let start = Instant::now();
    for _ in 0..iters {
        f();
    }
    start.elapsed() / iters
}

fn us(d: Duration) -> String {
    format!("{:.1} µs", d.as_secs_f64() * 1e6)
}

fn main() {
    Python::initialize();
    Python::attach(|py| {
        println!("| payload | direction | direct walk | json text round trip | text / walk |");
        println!("|---|---|---|---|---|");
        for (label, size, iters) in [("1 KB", 1024, 5000), ("100 KB", 100 * 1024, 2000)] {
            let value = payload(size);
            let obj = convert::to_py(py, &value).unwrap();
            assert_eq!(convert::from_py(&obj).unwrap(), value);
            assert_eq!(convert::text::from_py(&obj).unwrap(), value);

            let walk_in = time(iters, || {
                black_box(convert::to_py(py, black_box(&value)).unwrap());
            });
            let text_in = time(iters, || {
                black_box(convert::text::to_py(py, black_box(&value)).unwrap());
            });
            let walk_out = time(iters, || {
                black_box(convert::from_py(black_box(&obj)).unwrap());
            });
            let text_out = time(iters, || {
                black_box(convert::text::from_py(black_box(&obj)).unwrap());
            });
            let bytes = serde_json::to_vec(&value).unwrap().len();
            for (dir, walk, text) in [
                ("in (Value → Python)", walk_in, text_in),
                ("out (Python → Value)", walk_out, text_out),
                ("both", walk_in + walk_out, text_in + text_out),
            ] {
                println!(
                    "| {label} ({bytes} B) | {dir} | {} | {} | {:.2}x |",
                    us(walk),
                    us(text),
                    text.as_secs_f64() / walk.as_secs_f64()
                );
            }
        }
    });
}
