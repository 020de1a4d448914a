//! Lets this crate's tests and benches find libpython without LD_LIBRARY_PATH.
//!
//! A Python installed outside the linker's default paths (pyenv, /usr/local) must be on
//! the binary's rpath. Cargo applies link arguments only to the package's own test,
//! bench and example targets, so the watchdog's build script does the same for the
//! watchdog binary.

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    if let Some(dir) = pyo3_build_config::get().lib_dir() {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{dir}");
    }
}
