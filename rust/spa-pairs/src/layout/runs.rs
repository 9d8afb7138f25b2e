//! Runs of equal prompt ids: how many, and (for grouped input) in prompt id order.

use rayon::prelude::*;

/// What one pass over `prompt_id` learns.
pub(super) struct RunScan {
    pub(super) runs: usize,
    pub(super) min: i64,
    pub(super) max: i64,
}

pub(super) fn scan_runs(pid: &[i64]) -> RunScan {
    let n = pid.len();
    let step = n.div_ceil(rayon::current_num_threads() * 8).max(1 << 14);
    (0..n.div_ceil(step))
        .into_par_iter()
        .map(|c| {
            let (lo, hi) = (c * step, ((c + 1) * step).min(n));
            let mut scan = RunScan { runs: 0, min: i64::MAX, max: i64::MIN };
            for i in lo..hi {
                scan.min = scan.min.min(pid[i]);
                scan.max = scan.max.max(pid[i]);
                scan.runs += usize::from(i == 0 || pid[i - 1] != pid[i]);
            }
            scan
        })
        .reduce(
            || RunScan { runs: 0, min: i64::MAX, max: i64::MIN },
            |a, b| RunScan { runs: a.runs + b.runs, min: a.min.min(b.min), max: a.max.max(b.max) },
        )
}

/// The runs sorted by prompt id, when no id has two runs (the input is grouped).
pub(super) fn ordered_runs(pid: &[i64]) -> Option<Vec<(usize, usize)>> {
    let n = pid.len();
    let mut runs: Vec<(i64, usize, usize)> = Vec::new();
    let mut start = 0;
    for i in 1..=n {
        if i == n || pid[i] != pid[start] {
            runs.push((pid[start], start, i));
            start = i;
        }
    }
    runs.par_sort_unstable_by_key(|r| r.0);
    if runs.windows(2).any(|w| w[0].0 == w[1].0) {
        return None;
    }
    Some(runs.into_iter().map(|(_, s, e)| (s, e)).collect())
}
