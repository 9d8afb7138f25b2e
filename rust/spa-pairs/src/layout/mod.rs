//! Where each prompt group's rows are, with groups in ascending prompt id.
//!
//! * Rows that arrive sorted by prompt id are read in place, the group boundaries found
//!   during the first pass itself ([`SortedRows`]); that pass gives up at the first
//!   descending prompt id, and the rows are grouped by one of the ways below.
//! * Rows that arrive grouped but not sorted (each prompt's rows contiguous) are read in
//!   place too: one pass over `prompt_id` finds the runs, then the runs are sorted.
//! * Scattered rows with dense prompt ids (range below the row count) are copied into group
//!   order by a two-level parallel counting sort, each compacted to 12 bytes (f32 scores,
//!   31-bit id: used only when exact for every row), so that the passes over groups read
//!   memory sequentially.
//! * Otherwise (sparse ids, or values that do not fit the compact row) a permutation of
//!   32-bit row indices groups the rows, and the passes gather through it.

mod in_place;
mod packed;
mod regroup;
mod runs;
mod sorted;

use crate::group::Response;
use crate::{Columns, CoreError, ResponseId, Score};
use in_place::{InPlace, RowIndex};
use packed::{pack, Packed};
use regroup::{comparison_sort, permutation, Histogram};
use runs::{ordered_runs, scan_runs};
pub(crate) use sorted::SortedRows;

/// The layout a grouping assumed does not hold (rows not sorted after all).
#[derive(Debug)]
pub(crate) struct NotGrouped;

/// Groups in ascending prompt id, each readable on its own (from any thread).
///
/// A group is named by a handle (its index, or its first row); pass 1 visits the groups
/// block by block, so that each block is a unit of parallel work.
pub(crate) trait Groups: Sync {
    /// Number of blocks.
    fn blocks(&self) -> usize;
    /// Call `f(handle)` for the groups of block `b`, in order. The blocks' groups,
    /// concatenated, are all groups in ascending prompt id.
    fn visit_block(&self, b: usize, f: impl FnMut(usize)) -> Result<(), NotGrouped>;
    /// The prompt id of a group.
    fn prompt_id(&self, handle: usize) -> i64;
    /// A group's scored rows into `buf` (see [`load`]); returns its rows with a missing score.
    fn load(&self, handle: usize, buf: &mut Vec<Response>) -> Result<u64, CoreError>;
    /// Hint that a group will be loaded soon (where groups are not read in memory order).
    fn prefetch(&self, handle: usize);
}

/// Groups per block of an indexed grouping.
const BLOCK: usize = 2048;

/// How many groups ahead a visit prefetches.
pub(crate) const PREFETCH_GROUPS: usize = 4;

/// `visit_block` for groupings whose handles are the group indices `0..len`.
fn visit_indexed(groups: &impl Groups, len: usize, b: usize, mut f: impl FnMut(usize)) {
    let end = ((b + 1) * BLOCK).min(len);
    for g in b * BLOCK..end {
        if g + PREFETCH_GROUPS < end {
            groups.prefetch(g + PREFETCH_GROUPS);
        }
        f(g);
    }
}

/// How the caller's columns are grouped.
pub(crate) enum Grouping<'c, 'a, R, S> {
    InPlace(InPlace<'c, 'a, R, S>),
    Packed(Packed),
}

/// Group the rows of non-empty columns that are not sorted by prompt id.
pub(crate) fn group<'c, 'a, R: ResponseId, S: Score>(
    cols: &'c Columns<'a, R, S>,
) -> Result<Grouping<'c, 'a, R, S>, CoreError> {
    let pid = cols.prompt_id;
    let n = pid.len();
    let scan = scan_runs(pid);
    let in_place = |index| Ok(Grouping::InPlace(InPlace { cols, index }));
    if scan.runs * 2 <= n {
        if let Some(runs) = ordered_runs(pid) {
            return in_place(RowIndex::Runs { runs });
        }
    }
    if u32::try_from(n).is_err() {
        return Err(CoreError::TooManyRows { rows: n });
    }
    let range = (i128::from(scan.max) - i128::from(scan.min)) as u128;
    if range >= n as u128 {
        return in_place(comparison_sort(pid));
    }
    let keys = range as usize + 1;
    match pack(cols, scan.min, keys) {
        Some(packed) => Ok(Grouping::Packed(packed)),
        // A score or id that the compact row cannot hold exactly: keep row indices instead.
        None => in_place(permutation(pid, Histogram::new(pid, scan.min, keys))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (prompt id, response ids) of every group, as the grouping lists them.
    fn listing(groups: &impl Groups) -> Vec<(i64, Vec<i64>)> {
        let mut handles = Vec::new();
        for b in 0..groups.blocks() {
            groups.visit_block(b, |h| handles.push(h)).unwrap();
        }
        let mut buf = Vec::new();
        handles
            .into_iter()
            .map(|h| {
                groups.load(h, &mut buf).unwrap();
                (groups.prompt_id(h), buf.iter().map(|r| r.id).collect())
            })
            .collect()
    }

    fn grouping_of(pid: &[i64], rid: &[i64], a: &[f64]) -> (&'static str, Vec<(i64, Vec<i64>)>) {
        let refined = vec![false; pid.len()];
        let cols = Columns::new(pid, rid, &refined, a, a).unwrap();
        let sorted = SortedRows::new(&cols);
        if (0..sorted.blocks()).all(|b| sorted.visit_block(b, |_| ()).is_ok()) {
            return ("sorted", listing(&sorted));
        }
        match group(&cols).unwrap() {
            Grouping::Packed(p) => ("packed", listing(&p)),
            Grouping::InPlace(g) => (
                match g.index {
                    RowIndex::Runs { .. } => "runs",
                    RowIndex::Gathered { .. } => "gathered",
                },
                listing(&g),
            ),
        }
    }

    #[test]
    fn every_grouping_lists_groups_in_prompt_order() {
        let rid = [0, 1, 2, 3, 4, 5, 6, 7];
        let ones = [1.0; 8];
        let (how, groups) = grouping_of(&[2, -1, 2, 0, -1], &rid[..5], &ones[..5]);
        assert_eq!((how, groups), ("packed", vec![(-1, vec![1, 4]), (0, vec![3]), (2, vec![0, 2])]));
        // 0.1 is not exact as f32: the same groups through a permutation.
        let (how, groups) = grouping_of(&[2, -1, 2, 0, -1], &rid[..5], &[0.1; 5]);
        assert_eq!((how, groups), ("gathered", vec![(-1, vec![1, 4]), (0, vec![3]), (2, vec![0, 2])]));
        // Sparse ids: sorted (prompt id, row) pairs.
        let (how, groups) = grouping_of(&[2, -3, 2, 1 << 40, -3], &rid[..5], &ones[..5]);
        assert_eq!((how, groups), ("gathered", vec![(-3, vec![1, 4]), (2, vec![0, 2]), (1 << 40, vec![3])]));
        let (how, groups) = grouping_of(&[1, 1, 1, 5, 5, 9], &rid[..6], &ones[..6]);
        assert_eq!((how, groups), ("sorted", vec![(1, vec![0, 1, 2]), (5, vec![3, 4]), (9, vec![5])]));
        let (how, groups) = grouping_of(&[9, 9, 9, 1, 1, 5, 5, 5], &rid, &ones);
        assert_eq!((how, groups), ("runs", vec![(1, vec![3, 4]), (5, vec![5, 6, 7]), (9, vec![0, 1, 2])]));
        // Long runs, but one id comes back: not grouped.
        let (how, groups) = grouping_of(&[9, 9, 9, 1, 1, 9, 9, 9], &rid, &ones);
        assert_eq!((how, groups), ("gathered", vec![(1, vec![3, 4]), (9, vec![0, 1, 2, 5, 6, 7])]));
        let (how, groups) = grouping_of(&[3, 3, 3, 1, 1, 3, 3, 3], &rid, &ones);
        assert_eq!((how, groups), ("packed", vec![(1, vec![3, 4]), (3, vec![0, 1, 2, 5, 6, 7])]));
    }

    #[test]
    fn extreme_ids_do_not_overflow() {
        let pid = [i64::MAX, i64::MIN, i64::MAX, 0];
        let (_, groups) = grouping_of(&pid, &[0, 1, 2, 3], &[1.0; 4]);
        assert_eq!(groups, vec![(i64::MIN, vec![1]), (0, vec![3]), (i64::MAX, vec![0, 2])]);
        let (how, groups) = grouping_of(&[1, 0, 1], &[i64::MAX, 3, 0], &[1.0; 3]);
        assert_eq!((how, groups), ("gathered", vec![(0, vec![3]), (1, vec![0, i64::MAX])]));
    }
}
