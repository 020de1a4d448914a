//! The `ember` package, built into the runtime.
//!
//! Its Python sources live in `python/ember/` (where editors and `pip install` find them
//! too) and are compiled into the binary with `include_str!`, so an image needs nothing
//! but the watchdog. They are registered in `sys.modules` before the handler's module is
//! imported, which is what makes `import ember` work in handlers.

use std::ffi::CString;

use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::PyList;
use pyo3::{intern, PyResult};

use crate::logs;

const EMBER_INIT: &str = include_str!("../python/ember/__init__.py");
const EMBER_RUNTIME: &str = include_str!("../python/ember/_runtime.py");

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

    let ember = module_from_source(py, EMBER_INIT, "ember/__init__.py", "ember")?;
    // An empty __path__ makes `ember` a package whose submodules come only from here,
    // never from a same-named directory on HANDLER_PATH.
    ember.setattr("__path__", PyList::empty(py))?;
    ember.setattr("_native", &native)?;
    let runtime = module_from_source(py, EMBER_RUNTIME, "ember/_runtime.py", "ember._runtime")?;
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

fn module_from_source<'py>(
    py: Python<'py>,
    source: &str,
    file: &str,
    name: &str,
) -> PyResult<Bound<'py, PyModule>> {
    let cstr = |s: &str| {
        CString::new(s).map_err(|e| pyo3::exceptions::PyValueError::new_err(e.to_string()))
    };
    // from_code registers the module in sys.modules under `name`.
    PyModule::from_code(py, &cstr(source)?, &cstr(file)?, &cstr(name)?)
}
