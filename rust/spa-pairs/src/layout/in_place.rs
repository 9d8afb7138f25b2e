//! Groups read from the caller's columns, through runs or a permutation of row indices.

use super::{visit_indexed, Group, Groups, NotGrouped, BLOCK};
use crate::group::Row;
use crate::{memory, Columns, ResponseId, Score};

/// Row indices of the groups, into the caller's columns.
pub(crate) enum RowIndex {
    /// Rows grouped, groups out of order: group g is `runs[g]`.
    Runs { runs: Vec<(usize, usize)> },
    /// Rows scattered: group g is `perm[starts[g]..starts[g + 1]]`.
    Gathered { perm: Vec<u32>, starts: Vec<u32> },
}

/// Groups read straight from the caller's columns.
pub(crate) struct InPlace<'c, 'a, R, S> {
    pub(super) cols: &'c Columns<'a, R, S>,
    pub(super) index: RowIndex,
}

impl<R: ResponseId, S: Score> InPlace<'_, '_, R, S> {
    #[inline]
    fn first_row(&self, g: usize) -> usize {
        match &self.index {
            RowIndex::Runs { runs } => runs[g].0,
            RowIndex::Gathered { perm, starts } => perm[starts[g] as usize] as usize,
        }
    }
}

impl<R: ResponseId, S: Score> InPlace<'_, '_, R, S> {
    fn len(&self) -> usize {
        match &self.index {
            RowIndex::Runs { runs } => runs.len(),
            RowIndex::Gathered { starts, .. } => starts.len() - 1,
        }
    }
}

impl<R: ResponseId, S: Score> Groups for InPlace<'_, '_, R, S> {
    fn blocks(&self) -> usize {
        self.len().div_ceil(BLOCK)
    }

    fn visit_block(&self, b: usize, f: impl FnMut(Group)) -> Result<(), NotGrouped> {
        let prompt_id = |g| self.cols.prompt_id[self.first_row(g)];
        match &self.index {
            RowIndex::Runs { runs } => {
                visit_indexed(self, runs.len(), b, |g| runs[g].1 - runs[g].0, prompt_id, f)
            }
            RowIndex::Gathered { starts, .. } => {
                let rows = |g: usize| (starts[g + 1] - starts[g]) as usize;
                visit_indexed(self, starts.len() - 1, b, rows, prompt_id, f)
            }
        }
        Ok(())
    }

    #[inline(always)]
    fn row(&self, g: usize, i: usize) -> Row {
        match &self.index {
            RowIndex::Runs { runs } => self.cols.row(runs[g].0 + i),
            RowIndex::Gathered { perm, starts } => self.cols.row(perm[starts[g] as usize + i] as usize),
        }
    }

    #[inline]
    fn prefetch(&self, g: usize, rows: usize) {
        let cols = self.cols;
        match &self.index {
            RowIndex::Runs { runs } => prefetch_rows(cols, runs[g].0, rows),
            RowIndex::Gathered { perm, starts } => {
                perm[starts[g] as usize..starts[g + 1] as usize]
                    .iter()
                    .for_each(|&i| prefetch_rows(cols, i as usize, 1));
            }
        }
    }
}

/// Prefetch rows `first..first + rows` of every column: the lines of the first and the
/// last row (a group of a few rows spans at most two lines of a column, often two).
#[inline(always)]
pub(super) fn prefetch_rows<R, S>(cols: &Columns<'_, R, S>, first: usize, rows: usize) {
    let last = first + rows.max(1) - 1;
    memory::prefetch(&cols.prompt_id[first]);
    for i in [first, last] {
        memory::prefetch(&cols.response_id[i]);
        memory::prefetch(&cols.score_a[i]);
        memory::prefetch(&cols.score_b[i]);
        memory::prefetch(&cols.is_refined[i]);
    }
}
