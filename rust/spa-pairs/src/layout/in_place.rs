//! Groups read from the caller's columns, through runs or a permutation of row indices.

use super::{visit_indexed, Groups, NotGrouped, BLOCK};
use crate::group::{load, Response};
use crate::{memory, Columns, CoreError, ResponseId, Score};

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

    fn visit_block(&self, b: usize, f: impl FnMut(usize)) -> Result<(), NotGrouped> {
        visit_indexed(self, self.len(), b, f);
        Ok(())
    }

    #[inline]
    fn prompt_id(&self, g: usize) -> i64 {
        self.cols.prompt_id[self.first_row(g)]
    }

    #[inline]
    fn prefetch(&self, g: usize) {
        let cols = self.cols;
        match &self.index {
            RowIndex::Runs { runs } => prefetch_row(cols, runs[g].0),
            RowIndex::Gathered { perm, starts } => {
                perm[starts[g] as usize..starts[g + 1] as usize]
                    .iter()
                    .for_each(|&i| prefetch_row(cols, i as usize));
            }
        }
    }

    #[inline]
    fn load(&self, g: usize, buf: &mut Vec<Response>) -> Result<u64, CoreError> {
        let cols = self.cols;
        let pid = self.prompt_id(g);
        match &self.index {
            RowIndex::Runs { runs } => load(pid, (runs[g].0..runs[g].1).map(|i| cols.row(i)), buf),
            RowIndex::Gathered { perm, starts } => {
                let rows = &perm[starts[g] as usize..starts[g + 1] as usize];
                load(pid, rows.iter().map(|&i| cols.row(i as usize)), buf)
            }
        }
    }
}

/// Prefetch row `i` of every column.
#[inline(always)]
pub(super) fn prefetch_row<R, S>(cols: &Columns<'_, R, S>, i: usize) {
    memory::prefetch(&cols.prompt_id[i]);
    memory::prefetch(&cols.response_id[i]);
    memory::prefetch(&cols.score_a[i]);
    memory::prefetch(&cols.score_b[i]);
    memory::prefetch(&cols.is_refined[i]);
}
