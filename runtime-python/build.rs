//! Lets this crate's tests and benches find libpython without LD_LIBRARY_PATH, and
//! compiles the `ember` package to bytecode.
//!
//! A Python installed outside the linker's default paths (pyenv, /usr/local) must be on
//! the binary's rpath. Cargo applies link arguments only to the package's own test,
//! bench and example targets, so the watchdog's build script does the same for the
//! watchdog binary.

use std::path::Path;
use std::process::Command;

/// The package's modules: source, and the file name its code objects carry.
const MODULES: [(&str, &str); 2] = [
    ("python/ember/__init__.py", "ember/__init__.py"),
    ("python/ember/_runtime.py", "ember/_runtime.py"),
];

/// Prints the import magic number and the marshalled code object of one module.
const COMPILE: &str = "import importlib.util, marshal, sys
code = compile(open(sys.argv[1], encoding='utf-8').read(), sys.argv[2], 'exec')
sys.stdout.buffer.write(importlib.util.MAGIC_NUMBER + marshal.dumps(code))";

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    let config = pyo3_build_config::get();
    if let Some(dir) = config.lib_dir() {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{dir}");
    }
    // Compiling the package's source costs about 6 ms of every cold start; its bytecode
    // loads in 0.2 ms. The runtime checks the magic number and compiles the source when
    // it differs, or when there is none (no interpreter to run here, as when
    // cross-compiling): then this file is empty.
    let out = std::env::var("OUT_DIR").expect("cargo sets OUT_DIR");
    for (source, file) in MODULES {
        println!("cargo:rerun-if-changed={source}");
        let bytecode = config
            .executable()
            .and_then(|python| {
                Command::new(python)
                    .args(["-c", COMPILE, source, file])
                    .output()
                    .ok()
            })
            .filter(|o| o.status.success())
            .map(|o| o.stdout)
            .unwrap_or_default();
        let name = Path::new(file).file_name().expect("a file name");
        std::fs::write(Path::new(&out).join(name).with_extension("pyc"), bytecode)
            .expect("OUT_DIR is writable");
    }
}
