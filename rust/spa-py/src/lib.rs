//! Python binding of spa-pairs: converts arguments, releases the GIL, maps errors. No logic.

mod error;
mod select;

use pyo3::prelude::*;

/// The native core of `spa_core` (use it through `spa_core.pairs`).
#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", spa_pairs::VERSION)?;
    m.add_function(wrap_pyfunction!(select::select_pairs, m)?)?;
    Ok(())
}
