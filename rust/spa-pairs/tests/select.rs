//! select_pairs against a naive one-group-at-a-time implementation, on random ragged input.

use std::collections::BTreeMap;

use proptest::prelude::*;
use spa_pairs::{select_pairs, select_pairs_portable, Columns, CoreError, Params, Selection, Stats};

/// One row: (prompt_id, response_id, is_refined, score_a, score_b).
type Row = (i64, i64, bool, f64, f64);

/// select_pairs on `rows`, checked to give what the portable path gives (on CPUs with
/// AVX-512, sorted rows take a vector path).
fn run(rows: &[Row], params: &Params) -> Result<Selection, CoreError> {
    let pid: Vec<i64> = rows.iter().map(|r| r.0).collect();
    let rid: Vec<i64> = rows.iter().map(|r| r.1).collect();
    let refined: Vec<bool> = rows.iter().map(|r| r.2).collect();
    let a: Vec<f64> = rows.iter().map(|r| r.3).collect();
    let b: Vec<f64> = rows.iter().map(|r| r.4).collect();
    let cols = Columns::new(&pid, &rid, &refined, &a, &b)?;
    let got = select_pairs(&cols, params);
    match (&got, select_pairs_portable(&cols, params)) {
        (Ok(got), Ok(portable)) => assert_same(&portable, got),
        (got, portable) => assert_eq!(got.as_ref().err(), portable.as_ref().err()),
    }
    got
}

/// DESIGN.md steps 4-6 with a BTreeMap, following the documented arithmetic.
fn naive(rows: &[Row], p: &Params) -> Selection {
    let mut groups: BTreeMap<i64, Vec<Row>> = BTreeMap::new();
    for &r in rows {
        groups.entry(r.0).or_default().push(r);
    }
    let mut out = Selection::default();
    let mut st = Stats { rows_in: rows.len() as u64, groups_in: groups.len() as u64, ..Stats::default() };
    let mut group_sums = Vec::new();
    for (pid, mut g) in groups {
        g.sort_by_key(|r| r.1);
        let before = g.len();
        g.retain(|r| !r.3.is_nan() && !r.4.is_nan());
        st.dropped_missing += (before - g.len()) as u64;
        let refined: Vec<&Row> = g.iter().filter(|r| r.2).collect();
        let samples: Vec<&Row> = g.iter().filter(|r| !r.2).collect();
        if refined.len() != 1 || samples.len() < 2 {
            st.dropped_malformed += 1;
            continue;
        }
        let best_a = samples.iter().map(|r| r.3).fold(f64::NEG_INFINITY, f64::max);
        let best_b = samples.iter().map(|r| r.4).fold(f64::NEG_INFINITY, f64::max);
        if !(refined[0].3 > best_a && refined[0].4 > best_b) {
            st.dropped_consistency += 1;
            continue;
        }
        let n = samples.len() as f64;
        let sum = |f: &dyn Fn(&Row) -> f64| samples.iter().fold(0.0, |acc, r| acc + f(r));
        let (sa, sb) = (sum(&|r| r.3), sum(&|r| r.4));
        let (saa, sbb, sab) = (sum(&|r| r.3 * r.3), sum(&|r| r.4 * r.4), sum(&|r| r.3 * r.4));
        let (caa, cbb, cab) = (n * saa - sa * sa, n * sbb - sb * sb, n * sab - sa * sb);
        let d = caa * cbb - cab * cab;
        if d <= 1e-12 * (caa * cbb) {
            st.dropped_det_zero += 1;
            continue;
        }
        if d / (n * n * (n - 1.0) * (n - 1.0)) > p.rho {
            st.dropped_det_above_rho += 1;
            continue;
        }
        out.kept_prompt_ids.push(pid);
        let mut group_sum = 0.0;
        for plus in &g {
            for minus in &g {
                let greater = (plus.3, plus.4) > (minus.3, minus.4);
                if greater && (plus.3 - minus.3).abs() + (plus.4 - minus.4).abs() >= p.delta {
                    let gap = ((plus.3 + plus.4) - (minus.3 + minus.4)).abs();
                    out.prompt_id.push(pid);
                    out.chosen_id.push(plus.1);
                    out.rejected_id.push(minus.1);
                    out.gap.push(gap);
                    group_sum += gap;
                }
            }
        }
        group_sums.push(group_sum);
    }
    let total: f64 = group_sums.iter().fold(0.0, |acc, s| acc + s);
    let n_pairs = out.gap.len();
    out.weight = if total == 0.0 || p.alpha == 0.0 {
        vec![1.0; n_pairs]
    } else {
        let mean = total / n_pairs as f64;
        out.gap.iter().map(|g| (g / mean).powf(p.alpha)).collect()
    };
    st.groups_kept = out.kept_prompt_ids.len() as u64;
    st.pairs = n_pairs as u64;
    out.stats = st;
    out
}

fn assert_same(want: &Selection, got: &Selection) {
    assert_eq!(want.stats, got.stats);
    assert_eq!(want.kept_prompt_ids, got.kept_prompt_ids);
    assert_eq!(want.prompt_id, got.prompt_id);
    assert_eq!(want.chosen_id, got.chosen_id);
    assert_eq!(want.rejected_id, got.rejected_id);
    let bits = |v: &[f64]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    assert_eq!(bits(&want.gap), bits(&got.gap));
    assert_eq!(bits(&want.weight), bits(&got.weight));
}

/// Scores of one kind: 0 integers, 1 halves (exact as f32, not integers), 2 any real,
/// 3 whole numbers far apart (gaps past the weight table), near the integer lanes' bound
/// (4096), -0.0, or near 2^40 (the refined row's lift then takes some past the
/// whole-number fast path's bound).
fn score(kind: u8) -> impl Strategy<Value = f64> {
    let values = match kind {
        0 => (1i32..=10).prop_map(f64::from).boxed(),
        1 => (2i32..=20).prop_map(|h| f64::from(h) / 2.0).boxed(),
        3 => prop_oneof![
            8 => (-400i32..=400).prop_map(f64::from),
            1 => (4090i32..=4100).prop_map(f64::from),
            1 => (-4100i32..=-4090).prop_map(f64::from),
            1 => Just(-0.0),
            1 => (-4i64..=4).prop_map(|k| (k << 38) as f64),
        ]
        .boxed(),
        _ => (0.0f64..10.0).boxed(),
    };
    prop_oneof![12 => values, 1 => Just(f64::NAN)]
}

/// Ragged groups (0-9 rows), mostly one refined row that mostly beats the samples.
fn rows() -> impl Strategy<Value = Vec<Row>> {
    let shape = (0u8..4, prop_oneof![Just(1i64), Just(1i64 << 40)], prop_oneof![Just(50i64), Just(500)]);
    shape.prop_flat_map(|(real, spread, id_max)| {
        prop::collection::btree_set(-30i64..30, 0..12)
            .prop_flat_map(move |pids| {
                let groups: Vec<_> = pids
                    .into_iter()
                    .map(move |pid| {
                        prop::collection::btree_set(0i64..id_max, 0..10).prop_flat_map(move |ids| {
                            let n = ids.len();
                            let ids: Vec<i64> = ids.into_iter().collect();
                            (
                                prop::collection::vec((score(real), score(real), 0u8..20), n),
                                Just(ids),
                                0usize..10,
                            )
                                .prop_map(move |(scores, ids, refined_at)| {
                                    ids.iter()
                                        .zip(scores)
                                        .enumerate()
                                        .map(|(k, (&rid, (a, b, roll)))| {
                                            let refined = k == refined_at % n.max(1) || roll == 0;
                                            let lift = if refined && roll > 3 { 20.0 } else { 0.0 };
                                            (pid * spread, rid, refined, a + lift, b + lift)
                                        })
                                        .collect::<Vec<Row>>()
                                })
                        })
                    })
                    .collect();
                groups.prop_map(|g| g.concat())
            })
            .prop_shuffle()
    })
}

fn params() -> impl Strategy<Value = Params> {
    (
        prop::sample::select(vec![0.01, 0.5, 2.0, 9.0, 50.0, f64::INFINITY]),
        prop::sample::select(vec![0.0, 0.5, 1.0, 2.0, 3.0, 5.0]),
        prop::sample::select(vec![0.0, 0.5, 1.0, 2.0, 3.7]),
    )
        .prop_map(|(rho, delta, alpha)| Params::new(rho, delta, alpha).unwrap())
}

/// Groups of 1-20 rows as they come sorted by prompt id, with the edge cases of the fast
/// paths: ids ascending, descending (within 64 or not) or random (maybe repeated), the
/// odd infinite score, -0.0, ties, whole and real scores.
fn sorted_rows() -> impl Strategy<Value = Vec<Row>> {
    let value = prop_oneof![
        150 => (-3i32..=6).prop_map(f64::from),
        40 => 0.0f64..6.0,
        10 => Just(-0.0),
        10 => Just(f64::NAN),
        1 => Just(f64::INFINITY),
        1 => Just(f64::NEG_INFINITY),
    ];
    let row = (0i64..24, prop::bool::weighted(0.2), value.clone(), value);
    let group = (prop::collection::vec(row, 1..21), 0u8..5);
    prop::collection::vec((0i64..4, group), 1..8).prop_map(|groups| {
        let mut pid = -1;
        let mut rows = Vec::new();
        for (step, (group, ids)) in groups {
            pid += 1 + step;
            let n = group.len() as i64;
            rows.extend(group.into_iter().enumerate().map(|(k, (random_id, refined, a, b))| {
                let k = k as i64;
                let rid = match ids {
                    0 | 1 => k,
                    2 => n - k,
                    3 => (n - k) * 1000,
                    _ => random_id,
                };
                (pid, rid, refined, a + if refined { 8.0 } else { 0.0 }, b)
            }));
        }
        rows
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    /// The sorted layout (its fast paths) gives what the other layouts give, errors included.
    #[test]
    fn sorted_rows_agree_with_the_other_layouts(rows in sorted_rows(), p in params()) {
        let mut reversed = rows.clone();
        reversed.reverse();
        let (sorted, other) = (run(&rows, &p), run(&reversed, &p));
        match (&sorted, &other) {
            (Ok(sorted), Ok(other)) => assert_same(other, sorted),
            _ => prop_assert_eq!(&sorted, &other),
        }
        if !rows.iter().any(|r| r.3.is_infinite() || r.4.is_infinite()) {
            let mut ids: Vec<(i64, i64)> = rows.iter().map(|r| (r.0, r.1)).collect();
            ids.sort_unstable();
            ids.dedup();
            if ids.len() == rows.len() {
                assert_same(&naive(&rows, &p), &sorted.unwrap());
            }
        }
    }

    #[test]
    fn matches_naive_reference(rows in rows(), p in params()) {
        assert_same(&naive(&rows, &p), &run(&rows, &p).unwrap());
    }

    #[test]
    fn row_order_does_not_matter(rows in rows(), p in params()) {
        let mut sorted = rows.clone();
        sorted.sort_by_key(|r| r.0);
        let mut reversed = sorted.clone();
        reversed.reverse();
        let want = run(&rows, &p).unwrap();
        assert_same(&want, &run(&sorted, &p).unwrap());
        assert_same(&want, &run(&reversed, &p).unwrap());
    }
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

/// Many groups, so every layout splits its work across threads.
#[test]
fn thousands_of_groups_in_any_layout() {
    let mut next = numbers(0x9e3779b97f4a7c15);
    let mut rows = Vec::new();
    for pid in 0..40_000i64 {
        for rid in 0..6 {
            let lift = if rid == 5 { next(4) as f64 } else { 0.0 };
            let a = if next(30) == 0 { f64::NAN } else { (1 + next(7)) as f64 + lift };
            rows.push((pid, rid, rid == 5, a, (1 + next(7)) as f64 + lift));
        }
    }
    let p = Params::new(20.0, 2.0, 2.0).unwrap();
    let want = naive(&rows, &p);
    assert!(want.stats.pairs > 1000);
    assert_same(&want, &run(&rows, &p).unwrap()); // grouped, sorted
    let runs: Vec<Row> = rows.chunks(6).rev().flatten().copied().collect();
    assert_same(&want, &run(&runs, &p).unwrap()); // grouped, out of order
    let mut shuffled = rows.clone();
    for i in (1..shuffled.len()).rev() {
        shuffled.swap(i, next(i as u64 + 1) as usize);
    }
    assert_same(&want, &run(&shuffled, &p).unwrap()); // dense ids: counting sort
    let sparse: Vec<Row> = shuffled.iter().map(|r| (r.0 * 1_000_003, r.1, r.2, r.3, r.4)).collect();
    let got = run(&sparse, &p).unwrap(); // sparse ids: comparison sort
    assert_eq!(got.stats, want.stats);
    assert_eq!(got.weight, want.weight);
}

/// Whole scores but for a few groups' (thirds, inexact in binary), across many blocks: the
/// mean gap is still the reference's sum, left to right, bit for bit.
#[test]
fn a_few_fractional_groups_among_thousands() {
    let mut next = numbers(0x2545f4914f6cdd1d);
    let mut rows = Vec::new();
    for pid in 0..60_000i64 {
        // In the first block only: the later, whole blocks then add to a fractional total.
        let third = if pid % 997 == 5 && pid < 2000 { 1.0 / 3.0 } else { 0.0 };
        for rid in 0..6 {
            let lift = if rid == 5 { 7.0 } else { 0.0 };
            let a = (1 + next(7)) as f64 + lift + third * (rid % 2) as f64;
            rows.push((pid, rid, rid == 5, a, (1 + next(7)) as f64 + lift));
        }
    }
    let p = Params::new(50.0, 1.0, 1.5).unwrap();
    let want = naive(&rows, &p);
    assert!(want.stats.groups_kept > 1000);
    assert!(want.gap.iter().any(|g| g.fract() != 0.0));
    assert_same(&want, &run(&rows, &p).unwrap());
}

/// Sorted rows in groups of every size the vector path treats apart (1 to 9 rows; 63, 64,
/// 65 and 130, past its 64-row window), across many blocks, ending in a short group.
#[test]
fn sorted_groups_of_every_size() {
    let mut next = numbers(0x5851_f42d_4c95_7f2d);
    let sizes = [1, 2, 3, 6, 7, 8, 9, 63, 64, 65, 130];
    let mut rows = Vec::new();
    let mut pid = 0;
    while rows.len() < 70_000 {
        let size = if next(4) == 0 { sizes[next(sizes.len() as u64) as usize] } else { 6 };
        for rid in 0..size {
            let refined = rid == size - 1;
            let lift = if refined { 12.0 } else { 0.0 };
            let score = |next: &mut dyn FnMut(u64) -> u64| match next(25) {
                0 => f64::NAN,
                1 => 0.5 + next(9) as f64,
                _ => (1 + next(9)) as f64,
            };
            let (a, b) = (score(&mut next) + lift, score(&mut next) + lift);
            rows.push((pid, rid as i64, refined, a, b));
        }
        pid += 1 + next(3) as i64;
    }
    rows.push((pid, 0, false, 1.0, 1.0));
    for p in [Params::new(20.0, 1.0, 1.0).unwrap(), Params::new(1e9, 0.0, 2.0).unwrap()] {
        let want = naive(&rows, &p);
        assert!(want.stats.pairs > 10_000);
        assert_same(&want, &run(&rows, &p).unwrap());
    }
}

#[test]
fn errors_are_reported_in_the_reference_order() {
    let p = Params::new(1.0, 1.0, 1.0).unwrap();
    let rows = [
        (1, 0, false, 1.0, f64::NEG_INFINITY),
        (2, 5, false, 1.0, 1.0),
        (2, 5, false, 1.0, 1.0),
        (3, 0, false, f64::INFINITY, 1.0),
    ];
    assert_eq!(run(&rows, &p), Err(CoreError::InfiniteScore { column: "score_a" }));
    assert_eq!(run(&rows[..3], &p), Err(CoreError::InfiniteScore { column: "score_b" }));
    let dups =
        [(4, 1, false, 1.0, 1.0), (4, 1, true, 2.0, 2.0), (2, 7, false, 1.0, 1.0), (2, 7, true, 1.0, 1.0)];
    assert_eq!(run(&dups, &p), Err(CoreError::DuplicateResponse { prompt_id: 2, response_id: 7 }));
}

#[test]
fn parameters_and_lengths_are_checked() {
    assert!(matches!(Params::new(0.0, 1.0, 1.0), Err(CoreError::InvalidParameter { name: "rho", .. })));
    assert!(matches!(Params::new(f64::NAN, 1.0, 1.0), Err(CoreError::InvalidParameter { name: "rho", .. })));
    assert!(matches!(Params::new(1.0, -1.0, 1.0), Err(CoreError::InvalidParameter { name: "delta", .. })));
    assert!(matches!(
        Params::new(1.0, 1.0, f64::INFINITY),
        Err(CoreError::InvalidParameter { name: "alpha", .. })
    ));
    assert!(Params::new(f64::INFINITY, 0.0, 0.0).is_ok());
    let err = Columns::new(&[1i64, 2], &[1i64], &[true, false], &[1.0f64, 2.0], &[1.0, 2.0]).unwrap_err();
    assert!(err.to_string().starts_with("columns must have equal lengths"));
}

#[test]
fn float32_and_int32_columns_read_as_f64_and_i64() {
    let p = Params::new(50.0, 1.0, 1.0).unwrap();
    let (pid, refined) = ([1i64; 5], [false, false, false, false, true]);
    let (a, b) = ([1.0f32, 4.0, 1.0, 4.0, 5.5], [1.0f32, 1.0, 4.0, 4.0, 5.5]);
    let got = select_pairs(&Columns::new(&pid, &[0i32, 1, 2, 3, 4], &refined, &a, &b).unwrap(), &p).unwrap();
    let rows: Vec<Row> = (0..5).map(|i| (1, i as i64, refined[i], a[i] as f64, b[i] as f64)).collect();
    assert_same(&naive(&rows, &p), &got);
    assert_eq!(got.kept_prompt_ids, vec![1]);
}
