//! The one mapping from the core's error enum to Python exceptions.

use pyo3::exceptions::PyValueError;
use pyo3::PyErr;
use spa_pairs::CoreError;

/// A core error on its way to Python (a newtype: both `CoreError` and `PyErr` are foreign here).
pub(crate) struct NativeError(CoreError);

impl From<CoreError> for NativeError {
    fn from(e: CoreError) -> Self {
        Self(e)
    }
}

impl From<NativeError> for PyErr {
    fn from(NativeError(e): NativeError) -> Self {
        match e {
            // Every variant is a bad value in the caller's columns or parameters.
            CoreError::LengthMismatch { .. }
            | CoreError::InvalidParameter { .. }
            | CoreError::InfiniteScore { .. }
            | CoreError::DuplicateResponse { .. }
            | CoreError::TooManyRows { .. } => PyValueError::new_err(e.to_string()),
        }
    }
}
