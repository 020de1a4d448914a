//! The `ember` package, built into the runtime.
//!
//! Its Python sources live in `python/ember/` (where editors and `pip install` find them
//! too) and are built into the binary, as bytecode (build.rs) and as source, so an image
//! needs nothing but the watchdog. The bytecode saves compiling them at every start
//! (about 6 ms); the source serves an interpreter whose magic number differs. They are
//! registered in `sys.modules` before the handler's module is imported, which is what
//! makes `import ember` work in handlers.

use std::ffi::CString;

use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyBytes, PyList};
use pyo3::{ffi, intern, PyResult};

use crate::logs;

const EMBER_INIT: &str = include_str!("../python/ember/__init__.py");
const EMBER_RUNTIME: &str = include_str!("../python/ember/_runtime.py");
/// Their bytecode, compiled by build.rs: the import magic number, then the marshalled
/// code object. Empty when the build had no interpreter to run.
const EMBER_INIT_PYC: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/__init__.pyc"));
const EMBER_RUNTIME_PYC: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/_runtime.pyc"));

/// The Python objects the Rust side calls, looked up once at load.
pub(crate) struct Runtime {
    /// `ember.Context`, built per invocation for two-parameter handlers.
    pub context: Py<PyAny>,
    /// `ember.Response`: a return value of that class chooses status and headers.
    pub response: Py<PyAny>,
    /// `ember.Request`, for `context.request`.
    pub request: Py<PyAny>,
    /// `ember._runtime.AsyncRunner`, one per worker thread that runs async handlers.
    pub async_runner: Py<PyAny>,
    /// `ember._runtime.describe(exc) -> (code | None, message)`.
    pub describe: Py<PyAny>,
    /// `ember._runtime.format_traceback(exc, tb) -> str`.
    pub format_traceback: Py<PyAny>,
    /// `ember._runtime.load(path, module, function) -> (func, arity, is_async)`.
    pub load: Py<PyAny>,
    /// `ember._runtime.reload(path, module, function)`: `load` in a fresh module
    /// namespace (`RELOAD`).
    pub reload: Py<PyAny>,
}

/// Registers `ember`, `ember._native` and `ember._runtime`, routes `print()` and logging
/// to the watchdog's log, and returns the runtime's entry points. Once per process: a
/// second handler (tests) must see the same `ember.FunctionError` class as the first.
pub(crate) fn install(py: Python<'_>) -> PyResult<&'static Runtime> {
    static RUNTIME: PyOnceLock<Runtime> = PyOnceLock::new();
    RUNTIME.get_or_try_init(py, || register(py))
}

fn register(py: Python<'_>) -> PyResult<Runtime> {
    let modules = py
        .import(intern!(py, "sys"))?
        .getattr(intern!(py, "modules"))?;
    let native = logs::native_module(py)?;
    modules.set_item("ember._native", &native)?;

    let ember = module_from(py, EMBER_INIT_PYC, EMBER_INIT, "ember/__init__.py", "ember")?;
    // An empty __path__ makes `ember` a package whose submodules come only from here,
    // never from a same-named directory on HANDLER_PATH.
    ember.setattr("__path__", PyList::empty(py))?;
    ember.setattr("_native", &native)?;
    let runtime = module_from(
        py,
        EMBER_RUNTIME_PYC,
        EMBER_RUNTIME,
        "ember/_runtime.py",
        "ember._runtime",
    )?;
    ember.setattr("_runtime", &runtime)?;

    runtime.getattr("install")?.call1((logs::python_level(),))?;
    Ok(Runtime {
        context: ember.getattr("Context")?.unbind(),
        response: ember.getattr("Response")?.unbind(),
        request: ember.getattr("Request")?.unbind(),
        async_runner: runtime.getattr("AsyncRunner")?.unbind(),
        describe: runtime.getattr("describe")?.unbind(),
        format_traceback: runtime.getattr("format_traceback")?.unbind(),
        load: runtime.getattr("load")?.unbind(),
        reload: runtime.getattr("reload")?.unbind(),
    })
}

/// Runs a module from its bytecode when it was compiled for this interpreter (the
/// magic number matches), else from its source; registers it in `sys.modules`.
fn module_from<'py>(
    py: Python<'py>,
    pyc: &[u8],
    source: &str,
    file: &str,
    name: &str,
) -> PyResult<Bound<'py, PyModule>> {
    let cstr = |s: &str| {
        CString::new(s).map_err(|e| pyo3::exceptions::PyValueError::new_err(e.to_string()))
    };
    // SAFETY: GIL held (it reads importlib's own magic number).
    let magic = unsafe { ffi::PyImport_GetMagicNumber() } as u32;
    match pyc.split_at_checked(4) {
        Some((head, code)) if head == magic.to_le_bytes() => {
            let code = py
                .import(intern!(py, "marshal"))?
                .call_method1(intern!(py, "loads"), (PyBytes::new(py, code),))?;
            let (name, file) = (cstr(name)?, cstr(file)?);
            // SAFETY: GIL held; `code` is a live code object, the names are C strings.
            unsafe {
                let module =
                    ffi::PyImport_ExecCodeModuleEx(name.as_ptr(), code.as_ptr(), file.as_ptr());
                Ok(Bound::from_owned_ptr_or_err(py, module)?.cast_into::<PyModule>()?)
            }
        }
        // from_code registers the module in sys.modules under `name`.
        _ => PyModule::from_code(py, &cstr(source)?, &cstr(file)?, &cstr(name)?),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The fallback to source would hide a build that stopped compiling the package.
    #[test]
    fn the_package_is_bytecode_for_this_interpreter() {
        Python::initialize();
        Python::attach(|py| {
            // SAFETY: attached; a query of the running interpreter.
            let magic = (unsafe { ffi::PyImport_GetMagicNumber() } as u32).to_le_bytes();
            for pyc in [EMBER_INIT_PYC, EMBER_RUNTIME_PYC] {
                assert_eq!(pyc.get(..4), Some(&magic[..]), "built by build.rs");
            }
            let module = module_from(py, EMBER_INIT_PYC, "", "ember/__init__.py", "t_ember")
                .expect("the bytecode runs");
            assert!(module.getattr("FunctionError").is_ok());
            let file: String = module.getattr("__file__").unwrap().extract().unwrap();
            assert_eq!(file, "ember/__init__.py");
        });
    }
}
