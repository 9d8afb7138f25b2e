//! SPA dual-criterion denoising, lexicographic pairs and uncertainty weights
//! (DESIGN.md steps 4-6) over columnar scored responses.
//!
//! The arithmetic is specified in `spa_core/pairs.py` (the Python reference) and reproduced
//! here bit for bit: same sums in the same order, same tolerance, same `pow`.
//!
//! [`select_pairs`] groups the rows by prompt id (module `layout`: in place when they arrive
//! sorted or grouped, else regrouped), then makes two parallel passes over the groups:
//! the first judges each group and counts its pairs, the second writes the pairs into
//! outputs allocated at their exact size.
//!
//! Groups of up to 16 rows (the usual case) take a fast path in `group`: rows read once
//! into a stack array, most groups decided by their counts and maxima alone (an `Outline`),
//! the rest ordered by response id and judged, pairs found by comparing each couple once
//! (small whole scores on 16-bit SSE2 lanes). Larger or irregular groups take the general
//! path; both give identical results.
//!
//! On x86-64 CPUs with AVX-512, rows sorted by prompt id take a vector path for pass 1
//! (`layout::screen`, chosen at run time): a group of up to 8 rows is screened, judged and
//! listed eight rows per instruction. [`select_pairs_portable`] skips it, for tests.

mod columns;
mod error;
mod group;
mod layout;
mod memory;
mod select;

pub use columns::{Columns, Params, ResponseId, Score};
pub use error::CoreError;
pub use select::{select_pairs, select_pairs_portable, Selection, Stats};

/// `det(Sigma)` counts as zero when `D <= DET_ZERO_RELATIVE * (Caa * Cbb)` (see `group.rs`).
pub const DET_ZERO_RELATIVE: f64 = 1e-12;

/// Version of the algorithm crate.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
