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
    rows: impl Iterator<Item = (i64, f64, f64, bool)>,
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

/// Step 4: malformed, consistency, then 0 < det(Sigma) <= rho, in that order.
///
/// Sums run over the samples in ascending response id, left to right from 0.0;
/// `det = D / (n^2 (n-1)^2)` with `D = Caa*Cbb - Cab^2`, `Cxy = n*Sxy - Sx*Sy`.
pub(crate) fn judge(group: &[Response], params: &Params) -> Verdict {
    let mut refined: Option<&Response> = None;
    let mut n_refined = 0usize;
    let mut n_samples = 0usize;
    let (mut max_a, mut max_b) = (f64::NEG_INFINITY, f64::NEG_INFINITY);
    let (mut sa, mut sb, mut saa, mut sbb, mut sab) = (0.0f64, 0.0f64, 0.0f64, 0.0f64, 0.0f64);
    for r in group {
        if r.refined {
            n_refined += 1;
            refined = Some(r);
        } else {
            n_samples += 1;
            max_a = max_a.max(r.a);
            max_b = max_b.max(r.b);
            sa += r.a;
            sb += r.b;
            saa += r.a * r.a;
            sbb += r.b * r.b;
            sab += r.a * r.b;
        }
    }
    let refined = match refined {
        Some(r) if n_refined == 1 && n_samples >= 2 => r,
        _ => return Verdict::Malformed,
    };
    if !(refined.a > max_a && refined.b > max_b) {
        return Verdict::Inconsistent;
    }
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

/// Step 5's pair count and gap sum (the pairs' gaps added left to right in output order).
#[inline]
pub(crate) fn count_pairs(group: &[Response], delta: f64) -> (u64, f64) {
    if group.len() > 16 {
        let (mut pairs, mut gap_sum) = (0u64, 0.0f64);
        for_each_pair(group, delta, |_, _, gap| {
            pairs += 1;
            gap_sum += gap;
        });
        return (pairs, gap_sum);
    }
    // Small groups, branch-free: gaps of the pairs packed to the front, then summed.
    let mut gaps = [const { MaybeUninit::<f64>::uninit() }; 16 * 16];
    let mut pairs = 0usize;
    for p in group {
        for m in group {
            gaps[pairs].write(gap(p, m));
            pairs += usize::from(is_pair(p, m, delta));
        }
    }
    // SAFETY: slots 0..pairs were written (each slot is written before `pairs` passes it).
    let sum = gaps[..pairs].iter().fold(0.0, |acc, g| acc + unsafe { g.assume_init() });
    (pairs as u64, sum)
}

/// Step 5: call `f(chosen, rejected, gap)` for every pair, in (chosen id, rejected id) order.
#[inline]
pub(crate) fn for_each_pair(group: &[Response], delta: f64, mut f: impl FnMut(&Response, &Response, f64)) {
    for p in group {
        for m in group {
            if is_pair(p, m, delta) {
                f(p, m, gap(p, m));
            }
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

    const SQUARE: [(f64, f64); 4] = [(1.0, 1.0), (4.0, 1.0), (1.0, 4.0), (4.0, 4.0)];

    #[test]
    fn det_exactly_rho_is_kept() {
        let p = Params::new(9.0, 0.0, 1.0).unwrap();
        assert_eq!(judge(&group(&SQUARE, (5.0, 5.0)), &p), Verdict::Kept);
        let p = Params::new(9.0f64.next_down(), 0.0, 1.0).unwrap();
        assert_eq!(judge(&group(&SQUARE, (5.0, 5.0)), &p), Verdict::DetAboveRho);
    }

    #[test]
    fn refined_must_beat_every_sample() {
        let p = Params::new(50.0, 0.0, 1.0).unwrap();
        assert_eq!(judge(&group(&SQUARE, (4.0, 9.0)), &p), Verdict::Inconsistent);
        assert_eq!(judge(&group(&SQUARE, (9.0, 4.0)), &p), Verdict::Inconsistent);
    }

    #[test]
    fn collinear_samples_have_zero_det() {
        let p = Params::new(1e9, 0.0, 1.0).unwrap();
        let samples = [(1.0, 2.0), (2.0, 4.0), (3.0, 6.0)];
        assert_eq!(judge(&group(&samples, (9.0, 9.0)), &p), Verdict::DetZero);
        let nearly = [(0.1, 0.3), (0.2, 0.6), (0.7, 2.1)];
        assert_eq!(judge(&group(&nearly, (9.0, 9.0)), &p), Verdict::DetZero);
    }

    #[test]
    fn groups_need_one_refined_and_two_samples() {
        let p = Params::new(50.0, 0.0, 1.0).unwrap();
        assert_eq!(judge(&group(&SQUARE[..1], (9.0, 9.0)), &p), Verdict::Malformed);
        let mut two = group(&SQUARE, (9.0, 9.0));
        two.push(Response { id: 99, a: 8.0, b: 8.0, refined: true, missing: false });
        assert_eq!(judge(&two, &p), Verdict::Malformed);
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
