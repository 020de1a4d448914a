//! With the `python` feature, pyo3 links libpython but sets no run-time
//! search path, so a binary built against one interpreter (pyenv, say) would
//! load another one's libpython (Debian's) and miss the packages installed
//! for the first. Record the build interpreter's LIBDIR as an rpath so build,
//! tests and runs agree; in images the path is absent and the system
//! library (the image's own CPython 3.11) is used. `EMBER_PYTHON_RPATH=0`
//! turns this off.

use std::process::Command;

fn main() {
    hot_text();
    println!("cargo:rerun-if-env-changed=PYO3_PYTHON");
    println!("cargo:rerun-if-env-changed=EMBER_PYTHON_RPATH");
    if std::env::var_os("CARGO_FEATURE_PYTHON").is_none()
        || std::env::var("EMBER_PYTHON_RPATH").as_deref() == Ok("0")
    {
        return;
    }
    let python = std::env::var("PYO3_PYTHON").unwrap_or_else(|_| "python3".into());
    let out = Command::new(&python)
        .args([
            "-c",
            "import sysconfig; print(sysconfig.get_config_var('LIBDIR') or '')",
        ])
        .output();
    if let Ok(out) = out {
        let libdir = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        if !libdir.is_empty() {
            println!("cargo:rustc-link-arg=-Wl,-rpath,{libdir}");
        }
    }
}

/// Release builds place the functions that start-up and warm invocations run next to
/// each other (`hot-text.ld`, written by `scripts/hot-text`). The kernel maps code
/// 64 KiB around each page it faults in, so gathered they cost the watchdog their own
/// size in resident memory, not the 4.8 MB they are spread over otherwise.
/// `EMBER_HOT_TEXT=0` turns this off (for a comparison).
fn hot_text() {
    println!("cargo:rerun-if-changed=hot-text.ld");
    println!("cargo:rerun-if-env-changed=EMBER_HOT_TEXT");
    let release = std::env::var("PROFILE").as_deref() == Ok("release");
    let linux = std::env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("linux");
    if !release || !linux || std::env::var("EMBER_HOT_TEXT").as_deref() == Ok("0") {
        return;
    }
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("hot-text.ld");
    println!("cargo:rustc-link-arg-bins=-Wl,-T,{}", script.display());
}
