//! Pass 1 over rows sorted by prompt id, eight rows per instruction (AVX-512).
//!
//! Each group of up to 8 rows is read as one vector per column. Its boundary, which rows
//! miss a score, are infinite or refined, and whether its ids ascend take a few
//! instructions for the whole group; so does step 4's screen (malformed or inconsistent),
//! which decides most groups. A group that passes it, with whole scores of magnitude at
//! most [`LANE_SCORE`] (the usual case), is judged and listed on the same vectors:
//! every sum and gap is then a whole number below 2^53, exact in f64 in any order, so
//! the samples' sums equal the reference's left-to-right sums and the determinant is the
//! reference's expression of them ([`det_verdict`]). Every other group (more than 8 rows,
//! ids out of order, an infinite score, other scores) goes to the general path, in order.
//! The results are the general path's, bit for bit; the tests run both.

use std::arch::x86_64::*;
use std::sync::atomic::{AtomicBool, Ordering};

use super::{Group, NotGrouped, Screen};
use crate::group::{det_verdict, Verdict, WholePairs, LANE_SCORE};
use crate::{Columns, Params, ResponseId, Score, Stats};

/// Whether this CPU runs [`screen`].
pub(crate) fn available() -> bool {
    is_x86_feature_detected!("avx512f")
        && is_x86_feature_detected!("avx512bw")
        && is_x86_feature_detected!("avx512vl")
        && is_x86_feature_detected!("avx512dq")
        && is_x86_feature_detected!("popcnt")
        && is_x86_feature_detected!("bmi1")
}

/// Pass 1 over the groups that start at rows `start..hi` (the first at `start`): count the
/// groups decided here into `screened`, hand the kept ones listed here to
/// `sink.listed`, the others to `sink.candidate`, in order. `NotGrouped` at a descending
/// prompt id, or once `unsorted` is set.
///
/// The group boundaries of 64 rows at a time are found first, as a bit mask: each group's
/// rows then come from that mask, not from the previous group's end, so the groups do not
/// wait on one another.
///
/// # Safety
/// [`available`] is true.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,popcnt,bmi1")]
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn screen<R: ResponseId, S: Score>(
    cols: &Columns<'_, R, S>,
    start: usize,
    hi: usize,
    params: &Params,
    unsorted: &AtomicBool,
    screened: &mut Stats,
    whole: &mut WholePairs,
    sink: &mut impl Screen,
) -> Result<(), NotGrouped> {
    let pid = cols.prompt_id;
    // (Counted here, stored once.)
    let mut counts = Stats::default();
    // Rows `window..window + 64`; bit j of `starts`: row `window + j` starts a group (rows
    // past the end do too). The lowest bit set is the next group's first row.
    let mut window = start;
    // SAFETY: AVX-512 (caller).
    let mut starts = unsafe { group_starts(cols, window) }?;
    loop {
        let at = window + starts.trailing_zeros() as usize;
        if at >= hi {
            break;
        }
        let mut later = starts & (starts - 1);
        if later == 0 {
            // The group runs past the window: look again from its first row.
            if unsorted.load(Ordering::Relaxed) {
                return Err(NotGrouped);
            }
            window = at;
            // SAFETY: as above.
            starts = unsafe { group_starts(cols, window) }?;
            later = starts & (starts - 1);
            if later == 0 {
                // 64 rows or more: the general path.
                let end = at + pid[at..].iter().take_while(|&&q| q == pid[at]).count();
                counts.groups_in += 1;
                sink.candidate(Group { handle: at, rows: end - at, prompt_id: pid[at] });
                window = end;
                // SAFETY: as above.
                starts = unsafe { group_starts(cols, window) }?;
                continue;
            }
        }
        starts = later;
        let g = Group { handle: at, rows: window + later.trailing_zeros() as usize - at, prompt_id: pid[at] };
        counts.groups_in += 1;
        // SAFETY: the group's rows lie in the columns; AVX-512 (caller).
        match unsafe { judge(cols, g, params, whole) } {
            Judged::Decided { verdict, missing } => {
                counts.dropped_missing += missing;
                match verdict {
                    Verdict::Malformed => counts.dropped_malformed += 1,
                    Verdict::Inconsistent => counts.dropped_consistency += 1,
                    Verdict::DetZero => counts.dropped_det_zero += 1,
                    Verdict::DetAboveRho => counts.dropped_det_above_rho += 1,
                    Verdict::Kept => unreachable!("a kept group is listed"),
                }
            }
            Judged::Listed { missing } => {
                counts.dropped_missing += missing;
                sink.listed(g, whole);
            }
            Judged::Elsewhere => sink.candidate(g),
        }
    }
    *screened = screened.merge(counts);
    Ok(())
}

/// What [`judge`] made of a group.
enum Judged {
    /// Dropped, for the reason `verdict` (not `Kept`), with `missing` rows missing a score.
    Decided { verdict: Verdict, missing: u64 },
    /// Kept, its pairs listed.
    Listed { missing: u64 },
    /// For the general path.
    Elsewhere,
}

/// Bit j set where row `window + j` (of 64) starts a group: its prompt id differs from the
/// previous row's, or it is past the end. `NotGrouped` where a prompt id descends.
///
/// # Safety
/// The CPU has AVX-512 F.
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn group_starts<R: ResponseId, S: Score>(
    cols: &Columns<'_, R, S>,
    window: usize,
) -> Result<u64, NotGrouped> {
    let pid = cols.prompt_id;
    let n = pid.len();
    // The other columns' rows two windows on, ahead of use.
    let ahead = window + 128;
    if ahead + 64 <= n {
        for line in 0..8 {
            crate::memory::prefetch(&cols.score_a[ahead + 8 * line]);
            crate::memory::prefetch(&cols.score_b[ahead + 8 * line]);
        }
        for line in (0..64).step_by(64 / std::mem::size_of::<R>()) {
            crate::memory::prefetch(&cols.response_id[ahead + line]);
        }
        crate::memory::prefetch(&cols.is_refined[ahead]);
    }
    let (mut starts, mut descending) = (0u64, 0u64);
    for chunk in 0..8 {
        let row = window + 8 * chunk;
        let present = if row >= n { 0 } else { ((1u32 << (n - row).min(8)) - 1) as u8 };
        // The previous rows, where there is one.
        let before = if row == 0 { present & !1 } else { present };
        // SAFETY: full loads only where rows `row - 1..row + 8` exist; else the masks cover
        // rows below `n` (and, shifted by one, not below 0).
        let (ids, previous) = unsafe {
            if row > 0 && row + 8 <= n {
                (_mm512_loadu_epi64(pid.as_ptr().add(row)), _mm512_loadu_epi64(pid.as_ptr().add(row - 1)))
            } else {
                (
                    _mm512_maskz_loadu_epi64(present, pid.as_ptr().add(row)),
                    _mm512_maskz_loadu_epi64(before, pid.as_ptr().add(row).wrapping_sub(1)),
                )
            }
        };
        let differs = _mm512_mask_cmpneq_epi64_mask(before, ids, previous) | !before;
        descending |= u64::from(_mm512_mask_cmplt_epi64_mask(before, ids, previous)) << (8 * chunk);
        starts |= u64::from(differs) << (8 * chunk);
    }
    if descending != 0 {
        return Err(NotGrouped);
    }
    Ok(starts)
}

/// Step 4 (and for a kept group step 5, into `whole`) for group `g`, where it has at most 8
/// rows, its ids ascend, no score is infinite and, past the screen, its scored rows'
/// scores are whole numbers of magnitude at most [`LANE_SCORE`]; else `Elsewhere`.
///
/// # Safety
/// The CPU has what [`screen`] needs; the group's rows lie in the columns.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,popcnt")]
#[inline]
unsafe fn judge<R: ResponseId, S: Score>(
    cols: &Columns<'_, R, S>,
    g: Group,
    params: &Params,
    whole: &mut WholePairs,
) -> Judged {
    let (at, len) = (g.handle, g.rows);
    if len > 8 {
        return Judged::Elsewhere;
    }
    let k = ((1u32 << len) - 1) as u8;
    // SAFETY: `k` covers rows `at..at + len`, all in the columns; AVX-512 (caller).
    let (a, b, rid, next_rid) = unsafe {
        (
            S::lanes(cols.score_a, at, k),
            S::lanes(cols.score_b, at, k),
            _mm512_castpd_si512(R::lanes(cols.response_id, at, k)),
            _mm512_castpd_si512(R::lanes(cols.response_id, at + 1, k >> 1)),
        )
    };
    // SAFETY: a full load where 16 rows exist from `at`, else one masked to the group's.
    let flags = unsafe {
        if at + 16 <= cols.len() {
            _mm_loadu_si128(cols.is_refined.as_ptr().add(at).cast())
        } else {
            _mm_maskz_loadu_epi8(u16::from(k), cols.is_refined.as_ptr().add(at).cast())
        }
    };
    let refined = _mm_mask_test_epi8_mask(u16::from(k), flags, flags) as u8;
    let unscored = _mm512_mask_cmp_pd_mask::<_CMP_UNORD_Q>(k, a, b);
    // (0x18: +inf or -inf.)
    let infinite = _mm512_mask_fpclass_pd_mask::<0x18>(k, a) | _mm512_mask_fpclass_pd_mask::<0x18>(k, b);
    let ascending = _mm512_mask_cmplt_epi64_mask(k >> 1, rid, next_rid) == k >> 1;
    if infinite != 0 || !ascending {
        return Judged::Elsewhere;
    }
    let scored = k & !unscored;
    let samples = scored & !refined;
    let scored_refined = scored & refined;
    let missing = u64::from(unscored.count_ones());
    if scored_refined.count_ones() != 1 || samples.count_ones() < 2 {
        return Judged::Decided { verdict: Verdict::Malformed, missing };
    }
    // The refined row's scores above every sample's: no sample at or above them (scored
    // scores are never NaN).
    let row = _mm512_set1_epi64(i64::from(scored_refined.trailing_zeros()));
    let beaten = _mm512_mask_cmp_pd_mask::<_CMP_GE_OQ>(samples, a, _mm512_permutexvar_pd(row, a))
        | _mm512_mask_cmp_pd_mask::<_CMP_GE_OQ>(samples, b, _mm512_permutexvar_pd(row, b));
    if beaten != 0 {
        return Judged::Decided { verdict: Verdict::Inconsistent, missing };
    }

    // Whole numbers of magnitude at most LANE_SCORE: sums of at most 8 squares are below
    // 2^28, exact in any order.
    let limit = _mm512_set1_pd(LANE_SCORE);
    let fine = |v: __m512d| {
        let whole = _mm512_roundscale_pd::<{ _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC }>(v);
        _mm512_mask_cmp_pd_mask::<_CMP_EQ_OQ>(scored, v, whole)
            & _mm512_mask_cmp_pd_mask::<_CMP_LE_OQ>(scored, _mm512_abs_pd(v), limit)
    };
    if fine(a) & fine(b) != scored {
        return Judged::Elsewhere;
    }
    let (sa, sb) = (_mm512_maskz_mov_pd(samples, a), _mm512_maskz_mov_pd(samples, b));
    // (Adding +0.0 makes a sum of -0.0 samples +0.0, as the reference's, which starts at +0.0.)
    let sum = |v: __m512d| _mm512_reduce_add_pd(v) + 0.0;
    let sums = [
        sum(sa),
        sum(sb),
        sum(_mm512_mul_pd(sa, sa)),
        sum(_mm512_mul_pd(sb, sb)),
        sum(_mm512_mul_pd(sa, sb)),
    ];
    let verdict = det_verdict(samples.count_ones() as usize, sums, params);
    if verdict != Verdict::Kept {
        return Judged::Decided { verdict, missing };
    }

    // Step 5: for each scored row p, the rows it is chosen over, all at once. (Unscored
    // rows' lanes may hold NaN: they are outside every mask.)
    let delta = _mm512_set1_pd(params.delta);
    let zero = _mm512_setzero_pd();
    let (mut masks, mut gaps) = ([0u16; 8], zero);
    let mut rest = scored;
    while rest != 0 {
        let p = rest.trailing_zeros();
        rest &= rest - 1;
        let row = _mm512_set1_epi64(i64::from(p));
        let da = _mm512_sub_pd(_mm512_permutexvar_pd(row, a), a);
        let db = _mm512_sub_pd(_mm512_permutexvar_pd(row, b), b);
        // |da| + |db| >= delta, and (a, b) of p lexicographically above m's.
        let far = _mm512_mask_cmp_pd_mask::<_CMP_GE_OQ>(
            scored,
            _mm512_add_pd(_mm512_abs_pd(da), _mm512_abs_pd(db)),
            delta,
        );
        let wins = _mm512_cmp_pd_mask::<_CMP_GT_OQ>(da, zero)
            | (_mm512_cmp_pd_mask::<_CMP_EQ_OQ>(da, zero) & _mm512_cmp_pd_mask::<_CMP_GT_OQ>(db, zero));
        let pairs = far & wins;
        masks[p as usize] = u16::from(pairs);
        gaps = _mm512_mask_add_pd(gaps, pairs, gaps, _mm512_abs_pd(_mm512_add_pd(da, db)));
    }
    let (mut id, mut sum_ab) = ([0i64; 8], [0i64; 8]);
    // SAFETY: each array holds the 8 lanes stored.
    unsafe {
        _mm512_storeu_epi64(id.as_mut_ptr(), rid);
        _mm512_storeu_epi64(sum_ab.as_mut_ptr(), _mm512_maskz_cvttpd_epi64(scored, _mm512_add_pd(a, b)));
    }
    // (Whole numbers below 2^53: the sum is exact.)
    whole.set(&id, &sum_ab, &masks[..len], _mm512_reduce_add_pd(gaps) as i64);
    Judged::Listed { missing }
}
