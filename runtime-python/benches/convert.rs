//! Direct bytes path (`json_to_py` / `py_to_json`) vs the text round trip (`json.loads`
//! of the bytes decoded as a str / `json.dumps` encoded) for the payload a handler
//! receives and the value it returns. `cargo bench -p runtime-python --bench convert`.
//!
//! Both sides start from and end at JSON bytes, as the runtime does.

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
        println!("| payload | direction | direct | json text round trip | text / direct |");
        println!("|---|---|---|---|---|");
        for (label, size, iters) in [("1 KB", 1024, 5000), ("100 KB", 100 * 1024, 2000)] {
            let bytes = serde_json::to_vec(&payload(size)).unwrap();
            let obj = convert::json_to_py(py, &bytes).unwrap();
            let mut out = Vec::new();
            convert::py_to_json(&obj, &mut out, usize::MAX).unwrap();
            assert_eq!(out, bytes);
            assert_eq!(convert::text::py_to_json(&obj).unwrap(), bytes);

            let direct_in = time(iters, || {
                black_box(convert::json_to_py(py, black_box(&bytes)).unwrap());
            });
            let text_in = time(iters, || {
                black_box(convert::text::json_to_py(py, black_box(&bytes)).unwrap());
            });
            let direct_out = time(iters, || {
                let mut out = Vec::new();
                convert::py_to_json(black_box(&obj), &mut out, usize::MAX).unwrap();
                black_box(out);
            });
            let text_out = time(iters, || {
                black_box(convert::text::py_to_json(black_box(&obj)).unwrap());
            });
            for (dir, direct, text) in [
                ("in (bytes → Python)", direct_in, text_in),
                ("out (Python → bytes)", direct_out, text_out),
                ("both", direct_in + direct_out, text_in + text_out),
            ] {
                println!(
                    "| {label} ({} B) | {dir} | {} | {} | {:.2}x |",
                    bytes.len(),
                    us(direct),
                    us(text),
                    text.as_secs_f64() / direct.as_secs_f64()
                );
            }
        }
    });
}
