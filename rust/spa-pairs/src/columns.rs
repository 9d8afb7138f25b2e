//! Borrowed input columns and the method's parameters, validated once.

use crate::CoreError;

/// A score column's element: read as f64 (f32 widens exactly). NaN means missing.
///
/// Implemented for f32 and f64 only (sealed).
pub trait Score: Copy + Send + Sync + sealed::Lanes {
    fn to_f64(self) -> f64;
    /// The same value as f32 when that is exact (NaN stays NaN), for compact regrouping.
    fn to_f32_exact(self) -> Option<f32>;
}

impl Score for f64 {
    #[inline(always)]
    fn to_f64(self) -> f64 {
        self
    }

    #[inline(always)]
    fn to_f32_exact(self) -> Option<f32> {
        let narrow = self as f32;
        (f64::from(narrow) == self || self.is_nan()).then_some(narrow)
    }
}

impl Score for f32 {
    #[inline(always)]
    fn to_f64(self) -> f64 {
        f64::from(self)
    }

    #[inline(always)]
    fn to_f32_exact(self) -> Option<f32> {
        Some(self)
    }
}

/// A response id column's element, widened to i64.
///
/// Implemented for i32 and i64 only (sealed).
pub trait ResponseId: Copy + Send + Sync + sealed::Lanes {
    fn to_i64(self) -> i64;
    /// The same id as i32 when it fits, for compact regrouping.
    fn to_i32_exact(self) -> Option<i32>;
}

impl ResponseId for i64 {
    #[inline(always)]
    fn to_i64(self) -> i64 {
        self
    }

    #[inline(always)]
    fn to_i32_exact(self) -> Option<i32> {
        i32::try_from(self).ok()
    }
}

impl ResponseId for i32 {
    #[inline(always)]
    fn to_i64(self) -> i64 {
        i64::from(self)
    }

    #[inline(always)]
    fn to_i32_exact(self) -> Option<i32> {
        Some(self)
    }
}

pub(crate) mod sealed {
    //! What the vector paths need of a column's element type (outside this crate, it
    //! cannot be implemented: the element types are the four above).

    /// Up to eight consecutive elements as 64-bit lanes (AVX-512).
    pub trait Lanes: Sized {
        /// Elements `start..start + 8` of `column` where bit `i` of `k` is set, as f64
        /// (scores) or i64 (ids), 0 elsewhere; nothing else is read.
        ///
        /// # Safety
        /// The CPU has AVX-512 F, BW, VL and DQ, and `start + i < column.len()` for every
        /// bit `i` of `k`.
        #[cfg(target_arch = "x86_64")]
        unsafe fn lanes(column: &[Self], start: usize, k: u8) -> Wide;
    }

    #[cfg(target_arch = "x86_64")]
    pub use std::arch::x86_64::__m512d as Wide;

    #[cfg(target_arch = "x86_64")]
    mod x86 {
        use std::arch::x86_64::*;

        use super::{Lanes, Wide};

        impl Lanes for f64 {
            #[inline]
            #[target_feature(enable = "avx512f")]
            unsafe fn lanes(column: &[f64], start: usize, k: u8) -> Wide {
                // SAFETY: the masked load reads only the elements of `k`, in bounds (caller).
                unsafe {
                    if start + 8 <= column.len() {
                        _mm512_loadu_pd(column.as_ptr().add(start))
                    } else {
                        _mm512_maskz_loadu_pd(k, column.as_ptr().add(start))
                    }
                }
            }
        }

        impl Lanes for f32 {
            #[inline]
            #[target_feature(enable = "avx512f")]
            unsafe fn lanes(column: &[f32], start: usize, k: u8) -> Wide {
                // SAFETY: as for f64. (f32 widens exactly; NaN stays NaN.)
                unsafe {
                    if start + 8 <= column.len() {
                        _mm512_cvtps_pd(_mm256_loadu_ps(column.as_ptr().add(start)))
                    } else {
                        _mm512_cvtps_pd(_mm256_maskz_loadu_ps(k, column.as_ptr().add(start)))
                    }
                }
            }
        }

        impl Lanes for i64 {
            #[inline]
            #[target_feature(enable = "avx512f")]
            unsafe fn lanes(column: &[i64], start: usize, k: u8) -> Wide {
                // SAFETY: as for f64.
                unsafe {
                    if start + 8 <= column.len() {
                        _mm512_castsi512_pd(_mm512_loadu_epi64(column.as_ptr().add(start)))
                    } else {
                        _mm512_castsi512_pd(_mm512_maskz_loadu_epi64(k, column.as_ptr().add(start)))
                    }
                }
            }
        }

        impl Lanes for i32 {
            #[inline]
            #[target_feature(enable = "avx512f,avx512vl")]
            unsafe fn lanes(column: &[i32], start: usize, k: u8) -> Wide {
                // SAFETY: as for f64 (sign-extended to 64 bits).
                unsafe {
                    let v = if start + 8 <= column.len() {
                        _mm256_loadu_si256(column.as_ptr().add(start).cast())
                    } else {
                        _mm256_maskz_loadu_epi32(k, column.as_ptr().add(start))
                    };
                    _mm512_castsi512_pd(_mm512_cvtepi32_epi64(v))
                }
            }
        }
    }

    #[cfg(not(target_arch = "x86_64"))]
    impl Lanes for f64 {}
    #[cfg(not(target_arch = "x86_64"))]
    impl Lanes for f32 {}
    #[cfg(not(target_arch = "x86_64"))]
    impl Lanes for i64 {}
    #[cfg(not(target_arch = "x86_64"))]
    impl Lanes for i32 {}
}

/// One row per scored response; rows in any order, groups (by prompt id) ragged.
#[derive(Debug, Clone, Copy)]
pub struct Columns<'a, R, S> {
    pub prompt_id: &'a [i64],
    pub response_id: &'a [R],
    pub is_refined: &'a [bool],
    pub score_a: &'a [S],
    pub score_b: &'a [S],
}

impl<'a, R: ResponseId, S: Score> Columns<'a, R, S> {
    /// Borrow five equal-length columns.
    pub fn new(
        prompt_id: &'a [i64],
        response_id: &'a [R],
        is_refined: &'a [bool],
        score_a: &'a [S],
        score_b: &'a [S],
    ) -> Result<Self, CoreError> {
        let n = prompt_id.len();
        if [response_id.len(), is_refined.len(), score_a.len(), score_b.len()].iter().any(|&l| l != n) {
            return Err(CoreError::LengthMismatch {
                prompt_id: n,
                response_id: response_id.len(),
                is_refined: is_refined.len(),
                score_a: score_a.len(),
                score_b: score_b.len(),
            });
        }
        Ok(Self { prompt_id, response_id, is_refined, score_a, score_b })
    }

    /// Number of rows.
    pub fn len(&self) -> usize {
        self.prompt_id.len()
    }

    /// Whether there are no rows.
    pub fn is_empty(&self) -> bool {
        self.prompt_id.is_empty()
    }

    /// Row `i` as (response id, score a, score b, is refined), widened.
    #[inline(always)]
    pub(crate) fn row(&self, i: usize) -> (i64, f64, f64, bool) {
        (self.response_id[i].to_i64(), self.score_a[i].to_f64(), self.score_b[i].to_f64(), self.is_refined[i])
    }
}

/// `rho`: largest kept det(Sigma); `delta`: smallest L1 distance of a pair; `alpha`: weight exponent.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Params {
    pub rho: f64,
    pub delta: f64,
    pub alpha: f64,
}

impl Params {
    /// Check rho > 0 (may be +inf), delta and alpha finite and >= 0.
    pub fn new(rho: f64, delta: f64, alpha: f64) -> Result<Self, CoreError> {
        if rho.is_nan() || rho <= 0.0 {
            return Err(CoreError::InvalidParameter { name: "rho", requirement: "> 0", value: rho });
        }
        for (name, value) in [("delta", delta), ("alpha", alpha)] {
            if !value.is_finite() || value < 0.0 {
                return Err(CoreError::InvalidParameter { name, requirement: "finite and >= 0", value });
            }
        }
        Ok(Self { rho, delta, alpha })
    }
}
