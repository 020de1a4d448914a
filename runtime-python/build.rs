//! Finds libpython at run time without LD_LIBRARY_PATH.
//!
//! A Python installed outside the linker's default paths (pyenv, /usr/local) must be on
//! the binary's rpath. Cargo applies link arguments only to the package's own targets,
//! so this covers runtime-python's tests and benches, and publishes the directory as
//! `DEP_EMBER_PYTHON_LIBDIR` for the watchdog's build script, which adds it to the
//! watchdog binary.

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    let config = pyo3_build_config::get();
    if let Some(dir) = config.lib_dir() {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{dir}");
        println!("cargo::metadata=LIBDIR={dir}");
    }
}
