//! `isquant._isquant`: the native half of the `isquant` Python package (`python/isquant/` is
//! the other: the public API, the exception classes, the console script).
//!
//! Each function hands its arguments to [`isquant::cli::api`] (the command line's own parser and
//! code) with the GIL released, and returns plain Python values: `bytes`, `str`, lists, tuples.
//! Errors are raised as `NativeError(kind, message, causes, exit_code)`; the Python package
//! turns them into its `isquant.Error` subclasses.

use std::ffi::OsString;
use std::path::PathBuf;
use std::sync::Mutex;

use isquant::cli::api::{self, Array, Inputs, OptionValue};
use isquant::cli::ModelInput;
use pyo3::create_exception;
use pyo3::exceptions::{PyException, PyTypeError};
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyBytes, PyList, PyString, PyTuple};

create_exception!(
    _isquant,
    NativeError,
    PyException,
    "An isquant error: args are (kind, message, causes, exit_code)."
);

/// The error as Python sees it: its family, its message, the messages of its causes.
fn native_error(e: &isquant::Error) -> PyErr {
    let mut causes = Vec::new();
    let mut cause = std::error::Error::source(e);
    while let Some(c) = cause {
        causes.push(c.to_string());
        cause = c.source();
    }
    NativeError::new_err((
        api::error_kind(e),
        e.to_string(),
        causes,
        isquant::cli::EXIT_ERROR,
    ))
}

/// A model argument: `str` (a path) or `bytes` (an encoded `ModelProto`).
fn model_input(ob: &Bound<'_, PyAny>) -> PyResult<ModelInput> {
    if let Ok(b) = ob.cast::<PyBytes>() {
        return Ok(ModelInput::Bytes(b.as_bytes().to_vec().into()));
    }
    if ob.is_instance_of::<PyString>() {
        return Ok(ModelInput::Path(ob.extract::<PathBuf>()?));
    }
    Err(PyTypeError::new_err(
        "a model is a path (str) or bytes (an encoded ModelProto)",
    ))
}

/// `[(name, value), ...]` with values `bool`, `str` or a list of `str`.
fn options(list: &Bound<'_, PyList>) -> PyResult<Vec<(String, OptionValue)>> {
    let mut out = Vec::new();
    for item in list.iter() {
        let pair = item.cast::<PyTuple>()?;
        let name: String = pair.get_item(0)?.extract()?;
        let value = pair.get_item(1)?;
        let value = if value.is_instance_of::<PyBool>() {
            OptionValue::Bool(value.extract()?)
        } else if value.is_instance_of::<PyString>() {
            OptionValue::Text(value.extract::<OsString>()?)
        } else if let Ok(values) = value.cast::<PyList>() {
            OptionValue::List(values.extract::<Vec<OsString>>()?)
        } else {
            return Err(PyTypeError::new_err(format!(
                "option {name}: a bool, a str or a list of str"
            )));
        };
        out.push((name, value));
    }
    Ok(out)
}

/// Reports progress to an optional Python callable from any thread (taking the GIL for the
/// call). The first exception the callable raises is kept, and no further call is made.
struct Progress {
    callback: Option<Py<PyAny>>,
    error: Mutex<Option<PyErr>>,
}

impl Progress {
    fn new(callback: Option<Py<PyAny>>) -> Self {
        Progress {
            callback,
            error: Mutex::new(None),
        }
    }

    fn report(&self, stage: &str) {
        let Some(cb) = &self.callback else { return };
        Python::attach(|py| {
            let Ok(mut error) = self.error.lock() else {
                return;
            };
            if error.is_some() {
                return;
            }
            if let Err(e) = cb.call1(py, (stage,)) {
                *error = Some(e);
            }
        });
    }

    /// The exception the callable raised, if any.
    fn take_error(&self) -> Option<PyErr> {
        self.error.lock().ok().and_then(|mut e| e.take())
    }
}

/// Runs `work` without the GIL, then raises the callback's exception or the error.
fn run<T: Send>(
    py: Python<'_>,
    progress: &Progress,
    work: impl FnOnce(&(dyn Fn(&str) + Sync)) -> isquant::Result<T> + Send,
) -> PyResult<T> {
    let result = py.detach(|| work(&|stage| progress.report(stage)));
    if let Some(e) = progress.take_error() {
        return Err(e);
    }
    result.map_err(|e| native_error(&e))
}

/// The command line on `argv` (`argv[0]` is the program); its exit code. The GIL is released
/// while it runs.
#[pyfunction]
fn main(py: Python<'_>, argv: Vec<OsString>) -> u8 {
    py.detach(|| isquant::cli::main(argv))
}

/// `isquant quantize`: returns `(model bytes, report JSON, summary, validation, exit code)`,
/// validation being `None` or `(metrics JSON, summary, failures)`.
#[pyfunction]
#[pyo3(signature = (model, output, options, progress=None))]
fn quantize<'py>(
    py: Python<'py>,
    model: &Bound<'py, PyAny>,
    output: Option<PathBuf>,
    options: &Bound<'py, PyList>,
    progress: Option<Py<PyAny>>,
) -> PyResult<Bound<'py, PyTuple>> {
    let model = model_input(model)?;
    let flags = api::flags("quantize", &self::options(options)?).map_err(|e| native_error(&e))?;
    let progress = Progress::new(progress);
    let q = run(py, &progress, |p| api::quantize(&model, output, &flags, p))?;
    let code = q.exit_code();
    let validation = q.validation.map(|v| {
        (
            String::from_utf8_lossy(&v.metrics).into_owned(),
            v.summary,
            v.failures,
        )
    });
    (
        PyBytes::new(py, &q.model),
        String::from_utf8_lossy(&q.report).into_owned(),
        q.summary,
        validation,
        code,
    )
        .into_pyobject(py)
}

/// `isquant validate`: returns `(metrics JSON, summary, failures)`. `paths` (files and
/// folders) or `arrays` (`(shape, float32 bytes in C order)` pairs) with `labels`.
#[pyfunction]
#[pyo3(signature = (float, int8, paths, arrays, labels, options, progress=None))]
#[allow(clippy::too_many_arguments)]
fn validate(
    py: Python<'_>,
    float: &Bound<'_, PyAny>,
    int8: &Bound<'_, PyAny>,
    paths: Option<Vec<PathBuf>>,
    arrays: Option<Vec<(Vec<usize>, Vec<u8>)>>,
    labels: Option<Vec<usize>>,
    options: &Bound<'_, PyList>,
    progress: Option<Py<PyAny>>,
) -> PyResult<(String, String, Vec<String>)> {
    let float = model_input(float)?;
    let int8 = model_input(int8)?;
    let flags = api::flags("validate", &self::options(options)?).map_err(|e| native_error(&e))?;
    let inputs = match arrays {
        Some(arrays) => Inputs::Arrays {
            arrays: arrays
                .into_iter()
                .map(|(shape, bytes)| Array {
                    shape,
                    data: bytes
                        .chunks_exact(4)
                        .map(|c| f32::from_ne_bytes([c[0], c[1], c[2], c[3]]))
                        .collect(),
                })
                .collect(),
            labels,
        },
        None => Inputs::Files(paths.unwrap_or_default()),
    };
    let progress = Progress::new(progress);
    let v = run(py, &progress, |p| {
        api::validate(&float, &int8, &inputs, &flags, p)
    })?;
    Ok((
        String::from_utf8_lossy(&v.metrics).into_owned(),
        v.summary,
        v.failures,
    ))
}

/// `isquant inspect`: returns `(report JSON, summary)`.
#[pyfunction]
fn inspect(py: Python<'_>, model: &Bound<'_, PyAny>) -> PyResult<(String, String)> {
    let model = model_input(model)?;
    let progress = Progress::new(None);
    let i = run(py, &progress, |_| api::inspect(&model))?;
    Ok((i.report, i.summary))
}

/// The options a command takes by name.
#[pyfunction]
fn option_names(command: &str) -> PyResult<Vec<String>> {
    api::option_names(command).map_err(|e| native_error(&e))
}

#[pymodule]
fn _isquant(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", api::VERSION)?;
    m.add("BYTES_LABEL", isquant::cli::BYTES_LABEL)?;
    m.add("NativeError", m.py().get_type::<NativeError>())?;
    m.add_function(wrap_pyfunction!(main, m)?)?;
    m.add_function(wrap_pyfunction!(quantize, m)?)?;
    m.add_function(wrap_pyfunction!(validate, m)?)?;
    m.add_function(wrap_pyfunction!(inspect, m)?)?;
    m.add_function(wrap_pyfunction!(option_names, m)?)?;
    Ok(())
}
