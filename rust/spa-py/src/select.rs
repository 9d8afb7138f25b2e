//! `select_pairs`: NumPy columns in (read in place), NumPy columns out (moved, not copied).

use numpy::{Element, PyArray1, PyArrayMethods, PyReadonlyArray1, PyUntypedArrayMethods};
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyDict;
use spa_pairs::{Columns, Params, ResponseId, Score, Selection};

use crate::error::NativeError;

/// A 1-D C-contiguous NumPy array of `T`, or a TypeError naming the argument.
fn array<'py, T: Element>(
    name: &str,
    dtype: &str,
    obj: &Bound<'py, PyAny>,
) -> PyResult<Option<PyReadonlyArray1<'py, T>>> {
    match obj.cast::<PyArray1<T>>() {
        Ok(a) => {
            let a = a.try_readonly().map_err(|e| PyValueError::new_err(format!("{name}: {e}")))?;
            if !a.is_c_contiguous() {
                return Err(PyValueError::new_err(format!("{name} must be C-contiguous")));
            }
            Ok(Some(a))
        }
        Err(_) if dtype.is_empty() => Ok(None),
        Err(_) => Err(PyTypeError::new_err(format!("{name} must be a 1-D NumPy array of {dtype}"))),
    }
}

fn slice<'a, T: Element>(a: &'a PyReadonlyArray1<'_, T>) -> &'a [T] {
    a.as_slice().expect("checked C-contiguous")
}

/// Run the core without the GIL.
fn run<R: ResponseId, S: Score>(
    py: Python<'_>,
    cols: Columns<'_, R, S>,
    params: Params,
) -> PyResult<Selection> {
    py.detach(|| spa_pairs::select_pairs(&cols, &params)).map_err(|e| NativeError::from(e).into())
}

/// The id and flag columns, read in place.
struct Head<'a, R> {
    prompt_id: &'a [i64],
    response_id: &'a [R],
    is_refined: &'a [bool],
}

/// Scores: both float64 or both float32.
fn with_scores<R: ResponseId + Element>(
    py: Python<'_>,
    head: Head<'_, R>,
    score_a: &Bound<'_, PyAny>,
    score_b: &Bound<'_, PyAny>,
    params: Params,
) -> PyResult<Selection> {
    if let Some(a) = array::<f64>("score_a", "", score_a)? {
        let b = array::<f64>("score_b", "float64 (as score_a)", score_b)?.expect("typed");
        let cols = Columns::new(head.prompt_id, head.response_id, head.is_refined, slice(&a), slice(&b))
            .map_err(NativeError::from)?;
        return run(py, cols, params);
    }
    let a = array::<f32>("score_a", "float64 or float32", score_a)?.expect("typed");
    let b = array::<f32>("score_b", "float32 (as score_a)", score_b)?.expect("typed");
    let cols = Columns::new(head.prompt_id, head.response_id, head.is_refined, slice(&a), slice(&b))
        .map_err(NativeError::from)?;
    run(py, cols, params)
}

/// Denoise scored groups and build weighted lexicographic pairs (see `spa_core.pairs`).
#[pyfunction]
#[pyo3(signature = (prompt_id, response_id, is_refined, score_a, score_b, rho, delta, alpha))]
#[allow(clippy::too_many_arguments)]
pub(crate) fn select_pairs<'py>(
    py: Python<'py>,
    prompt_id: &Bound<'py, PyAny>,
    response_id: &Bound<'py, PyAny>,
    is_refined: &Bound<'py, PyAny>,
    score_a: &Bound<'py, PyAny>,
    score_b: &Bound<'py, PyAny>,
    rho: f64,
    delta: f64,
    alpha: f64,
) -> PyResult<Bound<'py, PyDict>> {
    let pid = array::<i64>("prompt_id", "int64", prompt_id)?.expect("typed");
    let refined = array::<bool>("is_refined", "bool", is_refined)?.expect("typed");
    let params = Params::new(rho, delta, alpha).map_err(NativeError::from)?;
    let (prompt_id, is_refined) = (slice(&pid), slice(&refined));
    let selection = if let Some(rid) = array::<i64>("response_id", "", response_id)? {
        let head = Head { prompt_id, response_id: slice(&rid), is_refined };
        with_scores(py, head, score_a, score_b, params)?
    } else {
        let rid = array::<i32>("response_id", "int64 or int32", response_id)?.expect("typed");
        let head = Head { prompt_id, response_id: slice(&rid), is_refined };
        with_scores(py, head, score_a, score_b, params)?
    };
    to_dict(py, selection)
}

fn to_dict(py: Python<'_>, s: Selection) -> PyResult<Bound<'_, PyDict>> {
    let out = PyDict::new(py);
    out.set_item("kept_prompt_ids", PyArray1::from_vec(py, s.kept_prompt_ids))?;
    out.set_item("prompt_id", PyArray1::from_vec(py, s.prompt_id))?;
    out.set_item("chosen_id", PyArray1::from_vec(py, s.chosen_id))?;
    out.set_item("rejected_id", PyArray1::from_vec(py, s.rejected_id))?;
    out.set_item("gap", PyArray1::from_vec(py, s.gap))?;
    out.set_item("weight", PyArray1::from_vec(py, s.weight))?;
    let stats = PyDict::new(py);
    for (key, value) in s.stats.entries() {
        stats.set_item(key, value)?;
    }
    out.set_item("stats", stats)?;
    Ok(out)
}
