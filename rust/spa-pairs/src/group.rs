//! One prompt group: load its rows, judge it (steps 4), enumerate its pairs (step 5).

use std::mem::MaybeUninit;

use crate::{CoreError, Params, DET_ZERO_RELATIVE};

/// One response of a group, widened to i64 / f64.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Response {
    pub id: i64,
    pub a: f64,
    pub b: f64,
    pub refined: bool,
    missing: bool,
}

/// Why a group was dropped, or that it was kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    Malformed,
    Inconsistent,
    DetZero,
    DetAboveRho,
    Kept,
}

/// Read a group's rows, given as (response id, a, b, is refined), into `buf`: its scored
/// rows, in ascending response id.
///
/// Returns the number of rows dropped for a missing score. Errors: an infinite score
/// (score_a before score_b), then a duplicate response id (the smallest).
#[inline]
pub(crate) fn load(
    prompt_id: i64,
    rows: impl Iterator<Item = Row>,
    buf: &mut Vec<Response>,
) -> Result<u64, CoreError> {
    buf.clear();
    buf.extend(rows.map(|(id, a, b, refined)| Response {
        id,
        a,
        b,
        refined,
        missing: a.is_nan() || b.is_nan(),
    }));
    let (mut inf_a, mut inf_b, mut ascending, mut missing) = (false, false, true, 0u64);
    let (mut previous, mut lowest, mut highest) = (i64::MIN, i64::MAX, i64::MIN);
    for (i, r) in buf.iter().enumerate() {
        inf_a |= r.a.is_infinite();
        inf_b |= r.b.is_infinite();
        ascending &= i == 0 || r.id > previous;
        previous = r.id;
        lowest = lowest.min(r.id);
        highest = highest.max(r.id);
        missing += u64::from(r.missing);
    }
    if inf_a {
        return Err(CoreError::InfiniteScore { column: "score_a" });
    }
    if inf_b {
        return Err(CoreError::InfiniteScore { column: "score_b" });
    }
    if ascending {
        if missing > 0 {
            buf.retain(|r| !r.missing);
        }
        return Ok(missing);
    }
    // Out of order. Ids within a span of 64 (the usual case) are placed by id, no sort.
    if (highest as i128 - lowest as i128) < 64 && place_by_id(buf, lowest) {
        return Ok(missing);
    }
    buf.sort_unstable_by_key(|r| r.id);
    if let Some(w) = buf.windows(2).find(|w| w[0].id == w[1].id) {
        return Err(CoreError::DuplicateResponse { prompt_id, response_id: w[0].id });
    }
    if missing > 0 {
        buf.retain(|r| !r.missing);
    }
    Ok(missing)
}

/// Reorder `buf` by id (all ids in `lowest..lowest + 64`), dropping missing rows.
/// Returns false, leaving `buf` as it was, when two rows share an id.
#[inline]
fn place_by_id(buf: &mut Vec<Response>, lowest: i64) -> bool {
    let mut slots = [const { MaybeUninit::<Response>::uninit() }; 64];
    let mut taken = 0u64;
    for r in buf.iter() {
        let bit = 1u64 << (r.id - lowest);
        if taken & bit != 0 {
            return false;
        }
        taken |= bit;
        slots[(r.id - lowest) as usize].write(*r);
    }
    buf.clear();
    while taken != 0 {
        // SAFETY: every set bit of `taken` marks a slot written above.
        let r = unsafe { slots[taken.trailing_zeros() as usize].assume_init() };
        if !r.missing {
            buf.push(r);
        }
        taken &= taken - 1;
    }
    true
}

/// A row as the groupings hand it out: (response id, score a, score b, is refined), widened.
pub(crate) type Row = (i64, f64, f64, bool);

/// Groups of at most this many rows take the fast path (no heap buffer, branch-free loops);
/// larger or irregular groups take the general one. Both give the same results.
pub(crate) const SMALL: usize = 16;

/// A small group's rows in fixed arrays on the stack: as they arrived, column by column
/// (a fast path copies whole columns, a few wide stores a group), and (made only when
/// needed: most groups are decided by their [`Outline`]) the scored ones in ascending
/// response id.
pub(crate) struct Small {
    id: [i64; SMALL],
    a: [f64; SMALL],
    b: [f64; SMALL],
    refined: [bool; SMALL],
    /// Bit `i`: row `i` misses a score.
    unscored: u32,
    len: usize,
    /// How to put them in order: already ascending, or each row `i` at bit
    /// `id[i] - lowest` of `taken`.
    ascending: bool,
    lowest: i64,
    taken: u64,
    sorted: [MaybeUninit<Response>; SMALL],
    /// Rows out of order, put in ascending id for the lanes (see `judge_listed`).
    #[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
    ordered: Ordered,
}

/// The arrived rows' indices in ascending id (see [`Small::out_of_order`]).
struct InOrder {
    /// The arrived row whose id is `lowest + slot`, by slot.
    by_slot: [u8; 64],
    /// The slots left.
    taken: u64,
}

impl Iterator for InOrder {
    type Item = usize;

    #[inline(always)]
    fn next(&mut self) -> Option<usize> {
        if self.taken == 0 {
            return None;
        }
        let i = usize::from(self.by_slot[self.taken.trailing_zeros() as usize]);
        self.taken &= self.taken - 1;
        Some(i)
    }
}

/// Up to 8 rows in ascending id, column by column.
#[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
struct Ordered {
    id: [i64; 8],
    a: [f64; 8],
    b: [f64; 8],
    refined: [bool; 8],
    unscored: u32,
}

impl Small {
    pub(crate) fn new() -> Self {
        Self {
            id: [0; SMALL],
            a: [0.0; SMALL],
            b: [0.0; SMALL],
            refined: [false; SMALL],
            unscored: 0,
            len: 0,
            ascending: true,
            lowest: 0,
            taken: 0,
            sorted: [const { MaybeUninit::uninit() }; SMALL],
            #[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
            ordered: Ordered { id: [0; 8], a: [0.0; 8], b: [0.0; 8], refined: [false; 8], unscored: 0 },
        }
    }

    /// Row `i` as it arrived.
    #[inline(always)]
    fn arrived(&self, i: usize) -> Response {
        let missing = self.unscored >> i & 1 != 0;
        Response { id: self.id[i], a: self.a[i], b: self.b[i], refined: self.refined[i], missing }
    }

    /// The rows that arrived out of order (not `ascending`), as indices into the arrived
    /// rows, in ascending id: each row at its id's bit in `taken`.
    #[inline(always)]
    fn out_of_order(&self) -> InOrder {
        let mut by_slot = [0u8; 64];
        for (i, &id) in self.id[..self.len].iter().enumerate() {
            by_slot[(id - self.lowest) as usize] = i as u8;
        }
        InOrder { by_slot, taken: self.taken }
    }

    /// The scored rows, in ascending response id.
    #[inline(always)]
    pub(crate) fn scored_rows(&mut self) -> &[Response] {
        let mut scored = 0;
        if self.ascending {
            for i in 0..self.len {
                // Written unconditionally, kept by advancing past it: no branch.
                let r = self.arrived(i);
                self.sorted[scored].write(r);
                scored += usize::from(!r.missing);
            }
        } else {
            for i in self.out_of_order() {
                let r = self.arrived(i);
                self.sorted[scored].write(r);
                scored += usize::from(!r.missing);
            }
        }
        // SAFETY: slots 0..scored were written above.
        unsafe { std::slice::from_raw_parts(self.sorted.as_ptr().cast::<Response>(), scored) }
    }
}

/// The fast path's [`load`]: a group's `len` rows into `small`, and their [`Outline`].
///
/// Returns the number of rows with a missing score and the outline, or None (leaving the
/// general path to decide, errors included) when the group has more than [`SMALL`] rows,
/// a score is infinite, or its ids are out of order and either not within 64 of each other
/// or not distinct.
#[inline(always)]
pub(crate) fn load_small(
    len: usize,
    rows: impl Iterator<Item = Row>,
    small: &mut Small,
) -> Option<(u64, Outline)> {
    if len > SMALL {
        return None;
    }
    let (mut infinite, mut ascending, mut missing, mut unscored_bits) = (false, true, 0u64, 0u32);
    let (mut previous, mut lowest, mut highest) = (i64::MIN, i64::MAX, i64::MIN);
    let mut outline = Outline::EMPTY;
    for (i, (id, a, b, refined)) in rows.take(SMALL).enumerate() {
        infinite |= a.is_infinite() | b.is_infinite();
        ascending &= i == 0 || id > previous;
        previous = id;
        lowest = lowest.min(id);
        highest = highest.max(id);
        let unscored = a.is_nan() | b.is_nan();
        missing += u64::from(unscored);
        // (The outline does not depend on the order of the rows.)
        outline.add(a, b, refined, !unscored);
        (small.id[i], small.a[i], small.b[i], small.refined[i]) = (id, a, b, refined);
        unscored_bits |= u32::from(unscored) << i;
    }
    small.unscored = unscored_bits;
    if infinite || !small.order(len, ascending, lowest, highest) {
        return None;
    }
    Some((missing, outline))
}

impl Small {
    /// Record how the `len` rows just written are ordered. False when they are out of
    /// order and either not within 64 of each other or not distinct: the general path
    /// then decides.
    #[inline(always)]
    fn order(&mut self, len: usize, ascending: bool, lowest: i64, highest: i64) -> bool {
        self.len = len;
        self.ascending = ascending;
        if !ascending {
            if (highest as i128 - lowest as i128) >= 64 {
                return false;
            }
            let taken = self.id[..len].iter().fold(0u64, |t, &id| t | 1 << (id - lowest));
            if taken.count_ones() as usize != len {
                return false;
            }
            (self.lowest, self.taken) = (lowest, taken);
        }
        true
    }
}

/// Whole scores of at most this magnitude fit [`Small::judge_listed`]'s 16-bit lanes: the
/// difference, distance and gap of two rows are at most 4 * 4096 = 2^14.
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
pub(crate) const LANE_SCORE: f64 = 4096.0;

impl Small {
    /// [`judge`] and, for a kept group, [`WholePairs::list`] into `whole` (with
    /// [`WholePairs::listed`] its pairs), for a group of at most 8 rows whose scored rows'
    /// scores are whole numbers of magnitude at most [`LANE_SCORE`]: the usual case. None
    /// for other groups. (Rows out of order are put in ascending id first.)
    ///
    /// The same results, bit for bit, on 16-bit integer lanes: here every term and partial
    /// sum of the samples' sums (`Sa` .. `Sab`) is an integer below 2^28, exact in f64
    /// too, so the sums in any order equal the reference's f64 sums; the determinant is
    /// then computed from them by the same f64 expression ([`det_verdict`]). The rows are
    /// listed in ascending id, unscored ones included (they pair with nothing), so the
    /// pairs come in output order. `outline` is the group's, and passed its screen.
    #[inline(always)]
    pub(crate) fn judge_listed(
        &mut self,
        outline: &Outline,
        params: &Params,
        far: i64,
        whole: &mut WholePairs,
    ) -> Option<Verdict> {
        if self.len > 8 {
            return None;
        }
        #[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
        {
            let lanes = if self.ascending {
                Lanes {
                    id: &self.id,
                    a: &self.a,
                    b: &self.b,
                    refined: &self.refined,
                    unscored: self.unscored,
                }
            } else {
                // In ascending id.
                let in_order = self.out_of_order();
                let order = &mut self.ordered;
                order.unscored = 0;
                for (rank, i) in in_order.enumerate() {
                    (order.id[rank], order.a[rank], order.b[rank]) = (self.id[i], self.a[i], self.b[i]);
                    order.refined[rank] = self.refined[i];
                    order.unscored |= (self.unscored >> i & 1) << rank;
                }
                let order = &self.ordered;
                Lanes {
                    id: &order.id,
                    a: &order.a,
                    b: &order.b,
                    refined: &order.refined,
                    unscored: order.unscored,
                }
            };
            // SAFETY: the build enables SSE2 (the cfg above), all that `Lanes::judge` needs.
            unsafe { lanes.judge(self.len, outline.n_samples, params, far, whole) }
        }
        #[cfg(not(all(target_arch = "x86_64", target_feature = "sse2")))]
        {
            let _ = (outline, params, far, whole);
            None
        }
    }
}

/// A small group's first `len` (at most 8) rows in ascending id, column by column, as
/// [`Small::judge_listed`] reads them (`a` and `b` hold at least 8 values: rows past
/// `len` are read, never used).
#[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
struct Lanes<'s> {
    id: &'s [i64],
    a: &'s [f64],
    b: &'s [f64],
    refined: &'s [bool],
    /// Bit `i`: row `i` misses a score.
    unscored: u32,
}

#[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
impl Lanes<'_> {
    /// [`Small::judge_listed`]'s body, with SSE2.
    #[target_feature(enable = "sse2")]
    #[inline]
    fn judge(
        &self,
        len: usize,
        n_samples: usize,
        params: &Params,
        far: i64,
        whole: &mut WholePairs,
    ) -> Option<Verdict> {
        use std::arch::x86_64::*;
        debug_assert!(len <= 8 && self.a.len() >= 8 && self.b.len() >= 8);
        let scored = !self.unscored & ((1u32 << len) - 1);
        let refined = self.refined[..len].iter().enumerate().fold(0u32, |m, (i, &r)| m | u32::from(r) << i);
        // The scores as i32, two rows at a time; a row is fine where both are whole and
        // small. (Rows from `len` to 8 hold stale values: never used.)
        let magnitude = _mm_castsi128_pd(_mm_set1_epi64x(i64::MAX));
        let limit = _mm_set1_pd(LANE_SCORE);
        let (mut a32, mut b32, mut fine) = ([_mm_setzero_si128(); 4], [_mm_setzero_si128(); 4], 0u32);
        for k in 0..4 {
            // SAFETY: rows 2k and 2k + 1 < 8 lie within the 16-row arrays.
            let (va, vb) = unsafe {
                (_mm_loadu_pd(self.a.as_ptr().add(2 * k)), _mm_loadu_pd(self.b.as_ptr().add(2 * k)))
            };
            let (ta, tb) = (_mm_cvttpd_epi32(va), _mm_cvttpd_epi32(vb));
            // Whole: it converts back to itself (NaN and out-of-range values do not).
            let ok = |v, t| {
                _mm_and_pd(_mm_cmpeq_pd(_mm_cvtepi32_pd(t), v), _mm_cmple_pd(_mm_and_pd(v, magnitude), limit))
            };
            fine |= (_mm_movemask_pd(_mm_and_pd(ok(va, ta), ok(vb, tb))) as u32) << (2 * k);
            (a32[k], b32[k]) = (ta, tb);
        }
        if fine & scored != scored {
            return None;
        }
        // Eight 16-bit lanes, a row each; rows without a score (or past `len`) read 0.
        let lane_bit = _mm_setr_epi16(1, 2, 4, 8, 16, 32, 64, 128);
        let lanes =
            |bits: u32| _mm_cmpeq_epi16(_mm_and_si128(_mm_set1_epi16(bits as i16), lane_bit), lane_bit);
        let pack =
            |v: [__m128i; 4]| _mm_packs_epi32(_mm_unpacklo_epi64(v[0], v[1]), _mm_unpacklo_epi64(v[2], v[3]));
        let valid = lanes(scored);
        let (a, b) = (_mm_and_si128(pack(a32), valid), _mm_and_si128(pack(b32), valid));

        // Step 4: the samples' sums, as integers.
        let samples = lanes(scored & !refined);
        let (sa_, sb_) = (_mm_and_si128(a, samples), _mm_and_si128(b, samples));
        let sum = |v: __m128i| {
            let v = _mm_add_epi32(v, _mm_shuffle_epi32::<0b01_00_11_10>(v));
            let v = _mm_add_epi32(v, _mm_shuffle_epi32::<0b10_11_00_01>(v));
            f64::from(_mm_cvtsi128_si32(v))
        };
        let one = _mm_set1_epi16(1);
        let sums = [
            sum(_mm_madd_epi16(sa_, one)),
            sum(_mm_madd_epi16(sb_, one)),
            sum(_mm_madd_epi16(sa_, sa_)),
            sum(_mm_madd_epi16(sb_, sb_)),
            sum(_mm_madd_epi16(sa_, sb_)),
        ];
        let verdict = det_verdict(n_samples, sums, params);
        if verdict != Verdict::Kept {
            return Some(verdict);
        }

        // Step 5: for each scored row p, the rows it is chosen over, all at once.
        let (mut a16, mut b16) = ([0i16; 8], [0i16; 8]);
        // SAFETY: each array holds the 16 bytes stored.
        unsafe {
            _mm_storeu_si128(a16.as_mut_ptr().cast(), a);
            _mm_storeu_si128(b16.as_mut_ptr().cast(), b);
        }
        // A distance (at most 2^14) is at least `far` when above `far - 1`, clamped.
        let below = _mm_set1_epi16((far.clamp(0, (1 << 14) + 1) - 1) as i16);
        let zero = _mm_setzero_si128();
        let abs = |v| {
            let sign = _mm_srai_epi16::<15>(v);
            _mm_sub_epi16(_mm_xor_si128(v, sign), sign)
        };
        let (mut masks, mut gaps) = ([0u16; 8], zero);
        let mut rest = scored;
        while rest != 0 {
            let p = rest.trailing_zeros() as usize;
            rest &= rest - 1;
            let da = _mm_sub_epi16(_mm_set1_epi16(a16[p]), a);
            let db = _mm_sub_epi16(_mm_set1_epi16(b16[p]), b);
            let far_enough = _mm_cmpgt_epi16(_mm_add_epi16(abs(da), abs(db)), below);
            // Lexicographic: the sign of da, or of db where the a are equal.
            let wins = _mm_or_si128(
                _mm_cmpgt_epi16(da, zero),
                _mm_and_si128(_mm_cmpeq_epi16(da, zero), _mm_cmpgt_epi16(db, zero)),
            );
            let pairs = _mm_and_si128(_mm_and_si128(far_enough, wins), valid);
            masks[p] = (_mm_movemask_epi8(_mm_packs_epi16(pairs, zero)) & 0xff) as u16;
            let gap = _mm_and_si128(abs(_mm_add_epi16(da, db)), pairs);
            gaps = _mm_add_epi32(gaps, _mm_madd_epi16(gap, one));
        }
        for i in 0..len {
            whole.id[i] = self.id[i];
            whole.sum[i] = i64::from(a16[i]) + i64::from(b16[i]);
        }
        whole.list_masks(&masks[..len]);
        whole.gap_sum = sum(gaps) as i64;
        Some(verdict)
    }
}

/// [`load_small`] for a group of exactly `N` rows given column by column (`N` at most 8):
/// the same results. The outline is taken two rows at a time (see
/// [`outline_of`]); the rows are then copied column by column.
#[inline(always)]
pub(crate) fn load_array<const N: usize>(
    id: &[i64; N],
    a: &[f64; N],
    b: &[f64; N],
    refined: &[bool; N],
    small: &mut Small,
) -> Option<(u64, Outline)> {
    const { assert!(N >= 1 && N <= 8) };
    let (infinite, unscored, outline) = outline_of(a, b, refined);
    if infinite {
        return None;
    }
    let mut ascending = true;
    for i in 1..N {
        ascending &= id[i] > id[i - 1];
    }
    small.id[..N].copy_from_slice(id);
    small.a[..N].copy_from_slice(a);
    small.b[..N].copy_from_slice(b);
    small.refined[..N].copy_from_slice(refined);
    small.unscored = unscored;
    // (Only out-of-order ids need the lowest and the highest.)
    let (lowest, highest) = if ascending {
        (id[0], id[N - 1])
    } else {
        (id.iter().copied().min().unwrap_or(0), id.iter().copied().max().unwrap_or(0))
    };
    if !small.order(N, ascending, lowest, highest) {
        return None;
    }
    Some((u64::from(ones(unscored)), outline))
}

/// Whether a score is infinite, which rows miss a score (bit `i` for row `i`), and the
/// [`Outline`] of `N` rows, with SSE2 (part of x86-64): two rows per
/// instruction, masks instead of branches or selects per row.
///
/// The maxima (the refined row's scores are the maxima over the scored refined rows) may
/// differ from [`Outline::add`]'s only in the sign of a zero (`maxpd` keeps its second
/// operand on equal values), which [`Outline::screen`] does not see.
#[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
#[inline(always)]
fn outline_of<const N: usize>(a: &[f64; N], b: &[f64; N], refined: &[bool; N]) -> (bool, u32, Outline) {
    // SAFETY: the build enables SSE2 (the cfg above), all that `outline_sse2` needs.
    unsafe { outline_sse2(a, b, refined) }
}

/// [`outline_of`]'s body, where SSE2 intrinsics are safe to call.
#[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
#[target_feature(enable = "sse2")]
#[inline]
fn outline_sse2<const N: usize>(a: &[f64; N], b: &[f64; N], refined: &[bool; N]) -> (bool, u32, Outline) {
    use std::arch::x86_64::*;
    let neg_inf = _mm_set1_pd(f64::NEG_INFINITY);
    let inf = _mm_set1_pd(f64::INFINITY);
    let magnitude = _mm_castsi128_pd(_mm_set1_epi64x(i64::MAX));
    let (mut max_a, mut max_b, mut refined_a, mut refined_b) = (neg_inf, neg_inf, neg_inf, neg_inf);
    let (mut infinite, mut unscored, mut refined_bits) = (0, 0u32, 0u32);
    for k in 0..N.div_ceil(2) {
        // Rows i and j, or row i and a padding lane (0.0, neither sample nor refined).
        let (i, j) = (2 * k, 2 * k + 1);
        let pair = j < N;
        let (va, vb) = if pair {
            let (a2, b2) = (&a[i..i + 2], &b[i..i + 2]);
            // SAFETY: each slice holds the two f64 an unaligned load reads.
            unsafe { (_mm_loadu_pd(a2.as_ptr()), _mm_loadu_pd(b2.as_ptr())) }
        } else {
            (_mm_set_sd(a[i]), _mm_set_sd(b[i]))
        };
        let padding = _mm_castsi128_pd(_mm_set_epi64x(if pair { 0 } else { -1 }, 0));
        let is_inf = |v| _mm_cmpeq_pd(_mm_and_pd(v, magnitude), inf);
        infinite |= _mm_movemask_pd(_mm_or_pd(is_inf(va), is_inf(vb)));
        let missing = _mm_or_pd(_mm_cmpunord_pd(va, va), _mm_cmpunord_pd(vb, vb));
        let (r0, r1) = (i64::from(refined[i]), if pair { i64::from(refined[j]) } else { 0 });
        let is_refined = _mm_castsi128_pd(_mm_set_epi64x(-r1, -r0));
        // A sample: neither refined nor missing. Other rows read -inf, below every score.
        let other = _mm_or_pd(_mm_or_pd(missing, is_refined), padding);
        let sample = |v| _mm_or_pd(_mm_andnot_pd(other, v), _mm_and_pd(other, neg_inf));
        max_a = _mm_max_pd(max_a, sample(va));
        max_b = _mm_max_pd(max_b, sample(vb));
        // Likewise the scored refined rows, for the one refined row's scores.
        let scored_refined = _mm_andnot_pd(missing, is_refined);
        let refined = |v| _mm_or_pd(_mm_and_pd(scored_refined, v), _mm_andnot_pd(scored_refined, neg_inf));
        refined_a = _mm_max_pd(refined_a, refined(va));
        refined_b = _mm_max_pd(refined_b, refined(vb));
        unscored |= (_mm_movemask_pd(missing) as u32) << i;
        refined_bits |= ((r1 as u32) << 1 | r0 as u32) << i;
    }
    let larger = |v: __m128d| {
        let (lo, hi) = (_mm_cvtsd_f64(v), _mm_cvtsd_f64(_mm_unpackhi_pd(v, v)));
        if hi > lo {
            hi
        } else {
            lo
        }
    };
    let all = (1u32 << N) - 1;
    let scored_refined = refined_bits & !unscored;
    let outline = Outline {
        n_refined: usize::from(ones(scored_refined)),
        n_samples: usize::from(ones(all & !refined_bits & !unscored)),
        // The refined row's scores when there is exactly one (else unused).
        refined: (larger(refined_a), larger(refined_b)),
        max: (larger(max_a), larger(max_b)),
    };
    (infinite != 0, unscored, outline)
}

/// The number of bits set in a mask of at most 8 rows (`mask < 256`), by table: x86-64's
/// baseline has no popcnt instruction, and `count_ones` would take a dozen instructions.
#[inline(always)]
fn ones(mask: u32) -> u8 {
    const TABLE: [u8; 256] = {
        let mut table = [0u8; 256];
        let mut i = 0;
        while i < 256 {
            table[i] = (i as u32).count_ones() as u8;
            i += 1;
        }
        table
    };
    TABLE[mask as usize & 255]
}

/// [`outline_of`] without SSE2: a row at a time.
#[cfg(not(all(target_arch = "x86_64", target_feature = "sse2")))]
#[inline(always)]
fn outline_of<const N: usize>(a: &[f64; N], b: &[f64; N], refined: &[bool; N]) -> (bool, u32, Outline) {
    let (mut infinite, mut unscored, mut outline) = (false, 0u32, Outline::EMPTY);
    for i in 0..N {
        infinite |= a[i].is_infinite() | b[i].is_infinite();
        let missing = a[i].is_nan() | b[i].is_nan();
        unscored |= u32::from(missing) << i;
        outline.add(a[i], b[i], refined[i], !missing);
    }
    (infinite, unscored, outline)
}

/// What step 4 first needs of a group: its counts, the refined row's scores, the
/// samples' maxima. Most groups are decided by these alone.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Outline {
    n_refined: usize,
    n_samples: usize,
    refined: (f64, f64),
    max: (f64, f64),
}

impl Outline {
    const EMPTY: Self = Self {
        n_refined: 0,
        n_samples: 0,
        refined: (f64::NAN, f64::NAN),
        max: (f64::NEG_INFINITY, f64::NEG_INFINITY),
    };

    /// Of a group's scored rows.
    #[inline(always)]
    pub(crate) fn of(group: &[Response]) -> Self {
        let mut outline = Self::EMPTY;
        for r in group {
            outline.add(r.a, r.b, r.refined, true);
        }
        outline
    }

    /// Add a row; branch-free, and a row that is not `scored` changes nothing.
    #[inline(always)]
    fn add(&mut self, a: f64, b: f64, refined: bool, scored: bool) {
        let (is_refined, is_sample) = (refined & scored, !refined & scored);
        self.n_refined += usize::from(is_refined);
        self.n_samples += usize::from(is_sample);
        self.refined = if is_refined { (a, b) } else { self.refined };
        let (ma, mb) = if is_sample { (a, b) } else { (f64::NEG_INFINITY, f64::NEG_INFINITY) };
        // No NaN reaches here (a scored row has none): a plain comparison, not f64::max's.
        let larger = |x: f64, y: f64| if x > y { x } else { y };
        self.max = (larger(ma, self.max.0), larger(mb, self.max.1));
    }
}

impl Outline {
    /// Step 4's first two rules: malformed, then consistency. None: the group needs
    /// [`judge`].
    #[inline(always)]
    pub(crate) fn screen(&self) -> Option<Verdict> {
        if self.n_refined != 1 || self.n_samples < 2 {
            Some(Verdict::Malformed)
        } else if !(self.refined.0 > self.max.0 && self.refined.1 > self.max.1) {
            Some(Verdict::Inconsistent)
        } else {
            None
        }
    }
}

/// Step 4: malformed, consistency, then 0 < det(Sigma) <= rho, in that order.
///
/// `group` holds the scored rows in ascending response id, `outline` is theirs; sums run
/// over the samples left to right from 0.0; `det = D / (n^2 (n-1)^2)` with
/// `D = Caa*Cbb - Cab^2`, `Cxy = n*Sxy - Sx*Sy`.
#[inline]
pub(crate) fn judge(group: &[Response], outline: &Outline, params: &Params) -> Verdict {
    if let Some(verdict) = outline.screen() {
        return verdict;
    }
    // A refined row adds 0.0: an exact no-op, as a sum that starts at +0.0 is never -0.0.
    let (mut sa, mut sb, mut saa, mut sbb, mut sab) = (0.0f64, 0.0f64, 0.0f64, 0.0f64, 0.0f64);
    for r in group {
        let (a, b) = if r.refined { (0.0, 0.0) } else { (r.a, r.b) };
        sa += a;
        sb += b;
        saa += a * a;
        sbb += b * b;
        sab += a * b;
    }
    det_verdict(outline.n_samples, [sa, sb, saa, sbb, sab], params)
}

/// Step 4's last rule, from the samples' number and sums `[Sa, Sb, Saa, Sbb, Sab]`.
#[inline(always)]
pub(crate) fn det_verdict(n_samples: usize, [sa, sb, saa, sbb, sab]: [f64; 5], params: &Params) -> Verdict {
    let n = n_samples as f64;
    let caa = n * saa - sa * sa;
    let cbb = n * sbb - sb * sb;
    let cab = n * sab - sa * sb;
    let d = caa * cbb - cab * cab;
    if d <= DET_ZERO_RELATIVE * (caa * cbb) {
        return Verdict::DetZero;
    }
    let det = d / (n * n * (n - 1.0) * (n - 1.0));
    if det <= params.rho {
        Verdict::Kept
    } else {
        Verdict::DetAboveRho
    }
}

/// Whether (p, m) is a pair: `(a+, b+) >lex (a-, b-)` and `|a+ - a-| + |b+ - b-| >= delta`.
#[inline(always)]
fn is_pair(p: &Response, m: &Response, delta: f64) -> bool {
    let lex_greater = (p.a > m.a) | ((p.a == m.a) & (p.b > m.b));
    lex_greater & ((p.a - m.a).abs() + (p.b - m.b).abs() >= delta)
}

/// `|(a+ + b+) - (a- + b-)|`.
#[inline(always)]
fn gap(p: &Response, m: &Response) -> f64 {
    ((p.a + p.b) - (m.a + m.b)).abs()
}

/// For each row p of a small group, the rows it is paired with as chosen: bit m of
/// `masks[p]` is set when (p, m) is a pair. Each unordered couple is compared once.
#[inline(always)]
fn pair_masks(group: &[Response], delta: f64) -> [u16; SMALL] {
    debug_assert!(group.len() <= SMALL);
    let mut masks = [0u16; SMALL];
    for (i, p) in group.iter().enumerate() {
        for (j, m) in group.iter().enumerate().skip(i + 1) {
            let (da, db) = (p.a - m.a, p.b - m.b);
            let far = u16::from(da.abs() + db.abs() >= delta);
            // (p, m) is lexicographically ordered one way, the other, or not at all (equal).
            let p_wins = u16::from((da > 0.0) | ((da == 0.0) & (db > 0.0)));
            let m_wins = u16::from((da < 0.0) | ((da == 0.0) & (db < 0.0)));
            masks[i] |= (far & p_wins) << j;
            masks[j] |= (far & m_wins) << i;
        }
    }
    masks
}

/// Step 5's pair count and gap sum (the pairs' gaps added left to right in output order),
/// for groups that [`WholePairs::list`] does not take.
///
/// Not inlined: inside pass 1's loop the running sum lived on the stack, each addition
/// waiting for the previous one's store (perf put a tenth of pass 1's samples there); on
/// its own it stays in a register.
#[inline(never)]
pub(crate) fn count_pairs(group: &[Response], delta: f64) -> (u64, f64) {
    let (mut pairs, mut gap_sum) = (0u64, 0.0f64);
    for_each_pair(group, delta, |_, _, gap| {
        pairs += 1;
        gap_sum += gap;
    });
    (pairs, gap_sum)
}

/// Whether `x` is a whole number of magnitude at most 2^40 (as scores usually are).
#[inline(always)]
fn whole(x: f64) -> bool {
    const LIMIT: f64 = (1u64 << 40) as f64;
    // (The cast truncates; NaN fails the first test, which also keeps the cast exact.)
    x.abs() <= LIMIT && (x as i64) as f64 == x
}

/// The most pairs a small group has: each unordered couple gives at most one.
const MAX_PAIRS: usize = SMALL * (SMALL - 1) / 2;

/// 1 in each byte of a word.
const BYTES: u64 = u64::from_le_bytes([1; 8]);

/// For each 8-bit mask, the indices of its set bits in ascending order, one per byte
/// from the lowest (the bytes past them are 0).
const SET_BITS: [u64; 256] = {
    let mut table = [0u64; 256];
    let mut mask = 0;
    while mask < 256 {
        let (mut bit, mut at) = (0, 0);
        while bit < 8 {
            if mask >> bit & 1 != 0 {
                table[mask] |= (bit as u64) << (8 * at);
                at += 1;
            }
            bit += 1;
        }
        mask += 1;
    }
    table
};

/// Step 5 for a small group whose scores are all [`whole`] (the usual case): its pairs in
/// output order, with integer gaps. Pass 1 lists them and keeps them as a record (a few
/// words, see [`Self::record`]); pass 2 reads the record back and writes the pairs out,
/// without reading, ordering or comparing the group's rows again.
///
/// The scores are whole numbers of magnitude at most 2^40, so every difference, sum and
/// distance below is exact both as an integer and as an f64: the pairs and their gaps are
/// the very ones [`for_each_pair`] gives, `gap(p, m) == gap as f64`, and any sum of at most
/// `MAX_PAIRS` gaps is exact, so the gap sum can be added in any order (here as integers)
/// with the same result as the sum in output order. Each gap is also its weight's table
/// index as it is, without float checks.
pub(crate) struct WholePairs {
    n: usize,
    id: [i64; SMALL],
    /// Each row's a + b.
    sum: [i64; SMALL],
    /// The pairs, `chosen << 4 | rejected` (row indices), from `list[0]`. The slots are
    /// written eight at a time from any index below `ROOM` (a power of two, above
    /// `MAX_PAIRS`): indices are masked, not bounds-checked.
    list: [u8; Self::ROOM + 8],
    len: usize,
    /// The listed pairs' gaps, added.
    gap_sum: i64,
}

impl WholePairs {
    const ROOM: usize = (MAX_PAIRS + 1).next_power_of_two();

    pub(crate) fn new() -> Self {
        Self { n: 0, id: [0; SMALL], sum: [0; SMALL], list: [0; Self::ROOM + 8], len: 0, gap_sum: 0 }
    }

    /// Whether `group` (scored rows in ascending response id) is small with whole scores;
    /// if so, list its pairs and return their number and gap sum (as [`count_pairs`]).
    /// `far` is `delta` rounded up (an integer distance is at least `delta` exactly when
    /// it is at least `far`; see [`whole_distance`]).
    ///
    /// Not inlined, as `count_pairs`: the running sums stay in registers.
    #[inline(never)]
    pub(crate) fn list(&mut self, group: &[Response], far: i64) -> Option<(u64, f64)> {
        let n = group.len();
        if n > SMALL || !group.iter().fold(true, |all, r| all & whole(r.a) & whole(r.b)) {
            return None;
        }
        let (mut a, mut b) = ([0i64; SMALL], [0i64; SMALL]);
        for (i, r) in group.iter().enumerate() {
            (a[i], b[i]) = (r.a as i64, r.b as i64);
            (self.id[i], self.sum[i]) = (r.id, a[i] + b[i]);
        }
        // As `pair_masks`, on integers: each unordered couple compared once, no branch.
        let mut masks = [0u16; SMALL];
        let mut gap_sum = 0i64;
        for p in 0..n {
            for m in p + 1..n {
                let (da, db) = (a[p] - a[m], b[p] - b[m]);
                let far = u16::from(da.abs() + db.abs() >= far);
                // Lexicographic: the sign of da, or of db where the a are equal.
                let lex = if da != 0 { da } else { db };
                masks[p] |= (far & u16::from(lex > 0)) << m;
                masks[m] |= (far & u16::from(lex < 0)) << p;
                // One of the two wins unless they are equal; the gap is |da + db| either way.
                gap_sum += i64::from(far & u16::from(lex != 0)) * (da + db).abs();
            }
        }
        self.list_masks(&masks[..n]);
        self.gap_sum = gap_sum;
        Some(self.listed())
    }

    /// List the pairs of the first `masks.len()` (at most `N`) rows with ids `id` and sums
    /// `a + b` (whole numbers), chosen over each other as `masks` says (see
    /// [`Self::list_masks`]), their gaps adding up to `gap_sum`.
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    #[inline(always)]
    pub(crate) fn set<const N: usize>(&mut self, id: &[i64; N], sum: &[i64; N], masks: &[u16], gap_sum: i64) {
        // (All N: a fixed-size copy, no call; the rows past `masks.len()` are not read.)
        self.id[..N].copy_from_slice(id);
        self.sum[..N].copy_from_slice(sum);
        self.list_masks(masks);
        self.gap_sum = gap_sum;
    }

    /// The listed pairs' number and gap sum (as [`count_pairs`]).
    #[inline(always)]
    pub(crate) fn listed(&self) -> (u64, f64) {
        // (Exact: below 2^53. A sum of no gap or of zero gaps is +0.0, as in output order.)
        (self.len as u64, self.gap_sum as f64)
    }

    /// List the pairs of rows `0..masks.len()`, row `p` chosen over row `m` where bit `m`
    /// of `masks[p]` is set, in output order.
    #[inline(always)]
    fn list_masks(&mut self, masks: &[u16]) {
        let n = masks.len();
        // Each row's pairs as chosen, in ascending rejected id (output order), eight
        // rejected rows at a time: their indices by table, stored as one word at the next
        // free slot, of which as many bytes are kept as the mask has bits. No branch.
        let mut len = 0;
        for (p, &mask) in masks.iter().enumerate() {
            let chosen = ((p as u64) << 4) * BYTES;
            for half in 0..n.div_ceil(8) {
                let bits = usize::from((mask >> (8 * half)) as u8);
                let word = SET_BITS[bits] + chosen + (8 * half) as u64 * BYTES;
                let at = len & (Self::ROOM - 1);
                self.list[at..at + 8].copy_from_slice(&word.to_le_bytes());
                len += usize::from(ones(bits as u32));
            }
        }
        (self.n, self.len) = (n, len);
    }

    /// Append the listed pairs to `records` and return where they start (None, leaving
    /// `records` as it was, past `u32::MAX` words): `n | pairs << 8`, the `n` response
    /// ids, the `n` sums, then the pairs as bytes, eight to a word. Six rows and a dozen
    /// pairs take 15 words.
    #[inline(always)]
    pub(crate) fn record(&self, records: &mut Vec<i64>) -> Option<u32> {
        let at = u32::try_from(records.len()).ok()?;
        let (n, words) = (self.n, self.len.div_ceil(8));
        let size = 1 + 2 * n + words;
        // Written in place, then the length set once.
        records.reserve(size);
        let room = &mut records.spare_capacity_mut()[..size];
        room[0].write((n | self.len << 8) as i64);
        for i in 0..n {
            room[1 + i].write(self.id[i]);
            room[1 + n + i].write(self.sum[i]);
        }
        for (word, bytes) in room[1 + 2 * n..].iter_mut().zip(self.list.chunks_exact(8)) {
            word.write(i64::from_le_bytes(bytes.try_into().expect("8 bytes")));
        }
        // SAFETY: the `size` slots of spare capacity from the end were written above.
        unsafe { records.set_len(records.len() + size) };
        Some(at)
    }
}

/// A [`WholePairs`] record, read where it lies (nothing copied).
pub(crate) struct Recorded<'r> {
    id: &'r [i64],
    sum: &'r [i64],
    /// The pairs' bytes, eight to a word.
    list: &'r [i64],
    len: usize,
}

impl<'r> Recorded<'r> {
    /// The record that starts at `records[at]`.
    #[inline(always)]
    pub(crate) fn at(records: &'r [i64], at: usize) -> Self {
        let head = records[at] as usize;
        let (n, len) = (head & 0xff, head >> 8);
        let record = &records[at + 1..at + 1 + 2 * n + len.div_ceil(8)];
        let (id, rest) = record.split_at(n);
        let (sum, list) = rest.split_at(n);
        Self { id, sum, list, len }
    }

    /// The pairs: (chosen id, rejected id, gap).
    #[inline(always)]
    pub(crate) fn pairs(&self) -> impl ExactSizeIterator<Item = (i64, i64, i64)> + '_ {
        (0..self.len).map(|k| {
            let pm = (self.list[k / 8] >> (8 * (k % 8))) as u8;
            let (p, m) = (usize::from(pm >> 4), usize::from(pm & 15));
            (self.id[p], self.id[m], (self.sum[p] - self.sum[m]).abs())
        })
    }
}

/// `delta` (finite, at least 0) rounded up: a whole distance `d` (below 2^53) is at least
/// `delta` exactly when `d >= whole_distance(delta)` (saturated: a huge `delta` has no
/// pair).
pub(crate) fn whole_distance(delta: f64) -> i64 {
    delta.ceil() as i64
}

/// Step 5: call `f(chosen, rejected, gap)` for every pair, in (chosen id, rejected id) order.
#[inline(always)]
pub(crate) fn for_each_pair(group: &[Response], delta: f64, mut f: impl FnMut(&Response, &Response, f64)) {
    if group.len() > SMALL {
        for p in group {
            for m in group {
                if is_pair(p, m, delta) {
                    f(p, m, gap(p, m));
                }
            }
        }
        return;
    }
    let masks = pair_masks(group, delta);
    for (p, &mask) in group.iter().zip(&masks) {
        let mut rest = mask;
        while rest != 0 {
            let m = &group[rest.trailing_zeros() as usize];
            f(p, m, gap(p, m));
            rest &= rest - 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn group(samples: &[(f64, f64)], refined: (f64, f64)) -> Vec<Response> {
        let mut g: Vec<Response> = samples
            .iter()
            .enumerate()
            .map(|(i, &(a, b))| Response { id: i as i64, a, b, refined: false, missing: false })
            .collect();
        g.push(Response {
            id: samples.len() as i64,
            a: refined.0,
            b: refined.1,
            refined: true,
            missing: false,
        });
        g
    }

    fn judged(group: &[Response], params: &Params) -> Verdict {
        judge(group, &Outline::of(group), params)
    }

    /// Pseudo-random numbers below `m` (xorshift64) from a non-zero seed.
    fn numbers(mut state: u64) -> impl FnMut(u64) -> u64 {
        move |m| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state % m
        }
    }

    const SQUARE: [(f64, f64); 4] = [(1.0, 1.0), (4.0, 1.0), (1.0, 4.0), (4.0, 4.0)];

    #[test]
    fn det_exactly_rho_is_kept() {
        let p = Params::new(9.0, 0.0, 1.0).unwrap();
        assert_eq!(judged(&group(&SQUARE, (5.0, 5.0)), &p), Verdict::Kept);
        let p = Params::new(9.0f64.next_down(), 0.0, 1.0).unwrap();
        assert_eq!(judged(&group(&SQUARE, (5.0, 5.0)), &p), Verdict::DetAboveRho);
    }

    #[test]
    fn refined_must_beat_every_sample() {
        let p = Params::new(50.0, 0.0, 1.0).unwrap();
        assert_eq!(judged(&group(&SQUARE, (4.0, 9.0)), &p), Verdict::Inconsistent);
        assert_eq!(judged(&group(&SQUARE, (9.0, 4.0)), &p), Verdict::Inconsistent);
    }

    #[test]
    fn collinear_samples_have_zero_det() {
        let p = Params::new(1e9, 0.0, 1.0).unwrap();
        let samples = [(1.0, 2.0), (2.0, 4.0), (3.0, 6.0)];
        assert_eq!(judged(&group(&samples, (9.0, 9.0)), &p), Verdict::DetZero);
        let nearly = [(0.1, 0.3), (0.2, 0.6), (0.7, 2.1)];
        assert_eq!(judged(&group(&nearly, (9.0, 9.0)), &p), Verdict::DetZero);
    }

    #[test]
    fn groups_need_one_refined_and_two_samples() {
        let p = Params::new(50.0, 0.0, 1.0).unwrap();
        assert_eq!(judged(&group(&SQUARE[..1], (9.0, 9.0)), &p), Verdict::Malformed);
        let mut two = group(&SQUARE, (9.0, 9.0));
        two.push(Response { id: 99, a: 8.0, b: 8.0, refined: true, missing: false });
        assert_eq!(judged(&two, &p), Verdict::Malformed);
    }

    #[test]
    fn whole_scores_count_as_in_output_order() {
        let mut next = numbers(0x9e37_79b9_7f4a_7c15);
        for _ in 0..5000 {
            let scale = [1.0, 1e6, (1u64 << 36) as f64][next(3) as usize];
            let len = 1 + next(SMALL as u64) as i64;
            let spacing = [7, 1_000_003, 1 << 58][next(3) as usize];
            let mut score = || match next(8) {
                0 => -0.0,
                _ => (next(21) as f64 - 10.0) * scale,
            };
            let group: Vec<Response> = (0..len)
                .map(|i| Response {
                    id: spacing * i - 20,
                    a: score(),
                    b: score(),
                    refined: false,
                    missing: false,
                })
                .collect();
            assert!(group.iter().all(|r| whole(r.a) && whole(r.b)));
            let delta = [0.0, 1.0, 2.5, 7.0, 3e6, 1e300][next(6) as usize];
            let (mut pairs, mut gap_sum) = (0u64, 0.0f64);
            for_each_pair(&group, delta, |_, _, gap| {
                pairs += 1;
                gap_sum += gap;
            });
            let mut whole = WholePairs::new();
            let (got_pairs, got_sum) = whole.list(&group, whole_distance(delta)).unwrap();
            assert_eq!((got_pairs, got_sum.to_bits()), (pairs, gap_sum.to_bits()));
            // Listed, recorded and read back: the same pairs as `for_each_pair`'s.
            let mut records = vec![7];
            assert_eq!(whole.record(&mut records), Some(1));
            let back = Recorded::at(&records, 1);
            let mut want = Vec::new();
            for_each_pair(&group, delta, |p, m, gap| want.push((p.id, m.id, gap.to_bits())));
            let got: Vec<_> = back.pairs().map(|(p, m, gap)| (p, m, (gap as f64).to_bits())).collect();
            assert_eq!(got, want);
        }
        assert!(!whole(0.5) && !whole(f64::NAN) && !whole(f64::INFINITY) && !whole(1e13));
    }

    #[test]
    fn lanes_judge_and_list_as_the_rows_do() {
        let mut next = numbers(0x2545_f491_4f6c_dd1d);
        // Around the lanes' bound (4096), and values they must leave to the rows.
        // (Past 8191, two rows' distance would overflow 16 bits.)
        const EDGE: [f64; 13] = [
            4096.0,
            -4096.0,
            4095.0,
            -4095.0,
            4097.0,
            -4097.0,
            9000.0,
            -9000.0,
            40000.0,
            -0.0,
            0.5,
            1e13,
            f64::NAN,
        ];
        let (mut on_lanes, mut kept_on_lanes, mut out_of_order) = (0, 0, 0);
        for _ in 0..20_000 {
            let len = 2 + next(7) as usize;
            let spread = [3, 8, 4096][next(3) as usize];
            let refined_at = next(len as u64) as usize;
            let rows: Vec<Row> = {
                let mut score = || match next(10) {
                    0 => EDGE[next(EDGE.len() as u64) as usize],
                    _ => (next(2 * spread + 1) as f64) - spread as f64,
                };
                (0..len)
                    .map(|i| {
                        let lift = if i == refined_at { 2.0 * spread as f64 } else { 0.0 };
                        (3 * i as i64 - 5, score() + lift, score() + lift, i == refined_at)
                    })
                    .collect()
            };
            // Half the groups arrive out of order (the lanes then order them first).
            let mut rows = rows;
            if next(2) == 0 {
                for i in (1..len).rev() {
                    rows.swap(i, next(i as u64 + 1) as usize);
                }
            }
            let mut small = Small::new();
            let (_, outline) = load_small(len, rows.iter().copied(), &mut small).unwrap();
            if outline.screen().is_some() {
                continue;
            }
            let p =
                Params::new([0.5, 9.0, 1e9][next(3) as usize], [0.0, 1.0, 2.5, 1e4][next(4) as usize], 1.0)
                    .unwrap();
            let far = whole_distance(p.delta);
            let mut lanes = WholePairs::new();
            // The lanes take every group they are meant for.
            let fits = |x: f64| x.is_nan() || (x.fract() == 0.0 && x.abs() <= LANE_SCORE);
            let meant = rows.iter().all(|r| (r.1.is_nan() || r.2.is_nan()) || (fits(r.1) && fits(r.2)));
            let on = small.judge_listed(&outline, &p, far, &mut lanes);
            assert_eq!(on.is_some(), meant, "{rows:?}");
            let Some(verdict) = on else {
                continue;
            };
            on_lanes += 1;
            let group = small.scored_rows();
            assert_eq!(verdict, judge(group, &outline, &p), "{rows:?}");
            if verdict != Verdict::Kept {
                continue;
            }
            kept_on_lanes += 1;
            out_of_order += usize::from(rows.windows(2).any(|w| w[0].0 > w[1].0));
            let mut rows_way = WholePairs::new();
            let want = rows_way.list(group, far).expect("whole scores");
            assert_eq!((lanes.listed().0, lanes.listed().1.to_bits()), (want.0, want.1.to_bits()));
            let (mut a, mut b) = (vec![0], vec![0]);
            assert_eq!((lanes.record(&mut a), rows_way.record(&mut b)), (Some(1), Some(1)));
            let got: Vec<_> = Recorded::at(&a, 1).pairs().collect();
            assert_eq!(got, Recorded::at(&b, 1).pairs().collect::<Vec<_>>(), "{rows:?}");
        }
        // Both ways were really compared, on many groups.
        assert!(on_lanes > 2000 && kept_on_lanes > 500, "{on_lanes} {kept_on_lanes}");
        assert!(out_of_order > 250, "{out_of_order}");
    }

    #[test]
    fn pairs_are_lexicographic_and_at_least_delta_apart() {
        let mut pairs = Vec::new();
        for_each_pair(&group(&SQUARE, (5.0, 5.0)), 3.0, |p, m, gap| pairs.push((p.id, m.id, gap)));
        // (4,1) > (1,4) lexicographically although the sums are equal: gap 0.
        assert_eq!(
            pairs,
            vec![
                (1, 0, 3.0),
                (1, 2, 0.0),
                (2, 0, 3.0),
                (3, 0, 6.0),
                (3, 1, 3.0),
                (3, 2, 3.0),
                (4, 0, 8.0),
                (4, 1, 5.0),
                (4, 2, 5.0)
            ]
        );
    }
}
