//! The one error type of the crate; the binding maps each variant to a Python exception.

/// Why a selection could not be made. Every variant is a problem with the caller's input.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CoreError {
    /// The five columns do not have the same number of rows.
    #[error(
        "columns must have equal lengths, got prompt_id={prompt_id}, response_id={response_id}, \
         is_refined={is_refined}, score_a={score_a}, score_b={score_b}"
    )]
    LengthMismatch { prompt_id: usize, response_id: usize, is_refined: usize, score_a: usize, score_b: usize },
    /// `rho`, `delta` or `alpha` is out of its range.
    #[error("{name} must be {requirement}, got {value}")]
    InvalidParameter { name: &'static str, requirement: &'static str, value: f64 },
    /// A score is +inf or -inf (missing scores are NaN).
    #[error("{column} contains infinite values (use NaN or null for missing)")]
    InfiniteScore { column: &'static str },
    /// Two rows of one prompt share a response id.
    #[error("duplicate response_id {response_id} in prompt_id {prompt_id}")]
    DuplicateResponse { prompt_id: i64, response_id: i64 },
    /// Unsorted input is grouped through 32-bit row indices.
    #[error("too many rows for unsorted input: {rows} (at most 4294967295; sort by prompt_id or split)")]
    TooManyRows { rows: usize },
}

impl CoreError {
    /// Which error is reported when several rows are bad: the same one as the Python
    /// reference reports (infinite score_a, then score_b, then the first duplicate).
    pub(crate) fn precedence(&self) -> (u8, i64, i64) {
        match self {
            Self::LengthMismatch { .. } | Self::InvalidParameter { .. } | Self::TooManyRows { .. } => {
                (0, 0, 0)
            }
            Self::InfiniteScore { column } => (if *column == "score_a" { 1 } else { 2 }, 0, 0),
            Self::DuplicateResponse { prompt_id, response_id } => (3, *prompt_id, *response_id),
        }
    }

    /// The error of higher precedence of two (deterministic whatever the thread schedule).
    pub(crate) fn first(a: Option<Self>, b: Option<Self>) -> Option<Self> {
        match (a, b) {
            (Some(a), Some(b)) => Some(if b.precedence() < a.precedence() { b } else { a }),
            (a, b) => a.or(b),
        }
    }
}
