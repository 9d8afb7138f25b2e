//! Where each prompt group's rows are, with groups in ascending prompt id.
//!
//! * Rows that arrive sorted by prompt id are read in place, the group boundaries found
//!   during the first pass itself ([`SortedRows`]); that pass gives up at the first
//!   descending prompt id, and the rows are grouped by one of the ways below.
//! * Rows that arrive grouped but not sorted (each prompt's rows contiguous) are read in
//!   place too: one pass over `prompt_id` finds the runs, then the runs are sorted.
//! * Scattered rows with dense prompt ids (range below the row count) are copied into
//!   partitions of consecutive prompt ids, each row compacted to 8 bytes (integer scores)
//!   or 12 (scores exact as f32), response ids within ±2^16: used only when exact for
//!   every row. Pass 1 sorts each partition by prompt id while it is in cache (level 2 of
//!   a two-level counting sort), so that every pass reads memory sequentially.
//! * Otherwise (sparse ids, or values that do not fit the compact row) a permutation of
//!   32-bit row indices groups the rows, and the passes gather through it.

mod in_place;
mod packed;
mod regroup;
mod runs;
#[cfg(target_arch = "x86_64")]
mod screen;
mod sorted;

use crate::group::{self, Outline, Response, Row, Small, WholePairs};
use crate::{Columns, CoreError, Params, ResponseId, Score, Stats};
use in_place::{InPlace, RowIndex};
use packed::{pack, Narrow, Packed, Wide};
use regroup::{comparison_sort, permutation, Histogram};
use runs::{ordered_runs, scan_runs};
pub(crate) use sorted::SortedRows;

/// Where a screen ([`Groups::screen_block`]) hands the groups it does not drop itself.
/// (Only x86-64 has a screen.)
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
pub(crate) trait Screen {
    /// A group for the general path.
    fn candidate(&mut self, g: Group);
    /// A group the screen judged kept, its pairs listed in `whole`.
    fn listed(&mut self, g: Group, whole: &WholePairs);
}

/// The layout a grouping assumed does not hold (rows not sorted after all).
#[derive(Debug)]
pub(crate) struct NotGrouped;

/// One prompt group as a grouping hands it out.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Group {
    /// Where the grouping finds it (its index, or its first row).
    pub(crate) handle: usize,
    /// Its number of rows (missing scores included).
    pub(crate) rows: usize,
    pub(crate) prompt_id: i64,
}

/// Groups in ascending prompt id, each readable on its own (from any thread).
///
/// Pass 1 visits the groups block by block, each block a unit of parallel work; pass 2
/// reads the kept ones again by their [`Group`].
pub(crate) trait Groups: Sync {
    /// Number of blocks.
    fn blocks(&self) -> usize;
    /// Call `f` for the groups of block `b`, in order. The blocks' groups, concatenated,
    /// are all groups in ascending prompt id. Each block is visited at most once.
    fn visit_block(&self, b: usize, f: impl FnMut(Group)) -> Result<(), NotGrouped>;
    /// Row `i` of a visited group (`i < rows`), in the group's stored order.
    fn row(&self, handle: usize, i: usize) -> Row;
    /// Pass 1 over block `b` by a screen, where the grouping and the CPU have one (None:
    /// use `visit_block`). Every group is counted into `screened.groups_in`; the groups
    /// it drops are only counted into `screened` (with their rows missing a score, as the
    /// rows of the kept ones it lists); those kept ones, and every other group, go to
    /// `sink`, in order, as `visit_block` would give them.
    fn screen_block(
        &self,
        _b: usize,
        _params: &Params,
        _screened: &mut Stats,
        _sink: &mut impl Screen,
    ) -> Option<Result<(), NotGrouped>> {
        None
    }

    /// Hint that a group of `rows` rows will be read soon (where groups are not read in
    /// memory order): the cache lines of its first and its last row.
    fn prefetch(&self, handle: usize, rows: usize);

    /// A group's scored rows into `buf` (see [`group::load`]); returns its rows with a
    /// missing score.
    #[inline]
    fn load(&self, g: Group, buf: &mut Vec<Response>) -> Result<u64, CoreError> {
        group::load(g.prompt_id, (0..g.rows).map(|i| self.row(g.handle, i)), buf)
    }

    /// A group's rows into `small` by the fast path (see [`group::load_small`]).
    #[inline(always)]
    fn load_small(&self, g: Group, small: &mut Small) -> Option<(u64, Outline)> {
        group::load_small(g.rows, (0..g.rows).map(|i| self.row(g.handle, i)), small)
    }
}

/// Groups per block of an indexed grouping.
const BLOCK: usize = 2048;

/// How many groups ahead a visit prefetches.
pub(crate) const PREFETCH_GROUPS: usize = 4;

/// `visit_block` for groupings whose handles are the group indices `0..len`, group g
/// having `rows(g)` rows and prompt id `prompt_id(g)`.
fn visit_indexed(
    groups: &impl Groups,
    len: usize,
    b: usize,
    rows: impl Fn(usize) -> usize,
    prompt_id: impl Fn(usize) -> i64,
    mut f: impl FnMut(Group),
) {
    let end = ((b + 1) * BLOCK).min(len);
    for g in b * BLOCK..end {
        if g + PREFETCH_GROUPS < end {
            groups.prefetch(g + PREFETCH_GROUPS, rows(g + PREFETCH_GROUPS));
        }
        f(Group { handle: g, rows: rows(g), prompt_id: prompt_id(g) });
    }
}

/// How the caller's columns are grouped.
pub(crate) enum Grouping<'c, 'a, R, S> {
    InPlace(InPlace<'c, 'a, R, S>),
    /// Integer scores, 8 bytes a row.
    Narrow(Packed<Narrow>),
    /// Scores exact as f32, 12 bytes a row.
    Wide(Packed<Wide>),
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
    if let Some(packed) = pack(cols, scan.min, keys) {
        return Ok(Grouping::Narrow(packed));
    }
    if let Some(packed) = pack(cols, scan.min, keys) {
        return Ok(Grouping::Wide(packed));
    }
    // A score or id that no compact row holds exactly: keep row indices instead.
    in_place(permutation(pid, Histogram::new(pid, scan.min, keys)))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (prompt id, response ids) of every group, as the grouping lists them.
    fn listing(groups: &impl Groups) -> Vec<(i64, Vec<i64>)> {
        let mut handles = Vec::new();
        for b in 0..groups.blocks() {
            groups.visit_block(b, |g| handles.push(g)).unwrap();
        }
        let mut buf = Vec::new();
        handles
            .into_iter()
            .map(|g| {
                groups.load(g, &mut buf).unwrap();
                (g.prompt_id, buf.iter().map(|r| r.id).collect())
            })
            .collect()
    }

    fn grouping_of(pid: &[i64], rid: &[i64], a: &[f64]) -> (&'static str, Vec<(i64, Vec<i64>)>) {
        let refined = vec![false; pid.len()];
        let cols = Columns::new(pid, rid, &refined, a, a).unwrap();
        let sorted = SortedRows::new(&cols, false);
        if (0..sorted.blocks()).all(|b| sorted.visit_block(b, |_| ()).is_ok()) {
            return ("sorted", listing(&sorted));
        }
        match group(&cols).unwrap() {
            Grouping::Narrow(p) => ("narrow", listing(&p)),
            Grouping::Wide(p) => ("wide", listing(&p)),
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
        assert_eq!((how, groups), ("narrow", vec![(-1, vec![1, 4]), (0, vec![3]), (2, vec![0, 2])]));
        // 0.5 is not an integer but is exact as f32; 0.1 is neither: a permutation.
        let (how, groups) = grouping_of(&[2, -1, 2, 0, -1], &rid[..5], &[0.5; 5]);
        assert_eq!((how, groups), ("wide", vec![(-1, vec![1, 4]), (0, vec![3]), (2, vec![0, 2])]));
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
        assert_eq!((how, groups), ("narrow", vec![(1, vec![3, 4]), (3, vec![0, 1, 2, 5, 6, 7])]));
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
