//! Rows sorted by prompt id: groups found while the first pass reads them.

use std::sync::atomic::{AtomicBool, Ordering};

use super::in_place::prefetch_row;
use super::{Groups, NotGrouped};
use crate::group::{load, Response};
use crate::{Columns, CoreError, ResponseId, Score};

/// Rows sorted by prompt id, read in place; a group is named by its first row.
pub(crate) struct SortedRows<'c, 'a, R, S> {
    cols: &'c Columns<'a, R, S>,
    /// Set by the first block that finds a descending prompt id, to stop the others.
    unsorted: AtomicBool,
}

impl<'c, 'a, R: ResponseId, S: Score> SortedRows<'c, 'a, R, S> {
    /// Rows per block.
    const ROWS: usize = 1 << 14;

    pub(crate) fn new(cols: &'c Columns<'a, R, S>) -> Self {
        Self { cols, unsorted: AtomicBool::new(false) }
    }

    /// One past the last row of the group starting at `start`.
    #[inline]
    fn end(&self, start: usize) -> usize {
        let pid = self.cols.prompt_id;
        let p = pid[start];
        start + 1 + pid[start + 1..].iter().take_while(|&&q| q == p).count()
    }
}

impl<R: ResponseId, S: Score> Groups for SortedRows<'_, '_, R, S> {
    fn blocks(&self) -> usize {
        self.cols.len().div_ceil(Self::ROWS)
    }

    /// The groups that start in rows `b * ROWS..(b + 1) * ROWS`.
    fn visit_block(&self, b: usize, mut f: impl FnMut(usize)) -> Result<(), NotGrouped> {
        let pid = self.cols.prompt_id;
        let hi = ((b + 1) * Self::ROWS).min(pid.len());
        let mut start = b * Self::ROWS;
        if start > 0 {
            // Skip the rest of a group that started in an earlier block.
            start += pid[start..hi].iter().take_while(|&&q| q == pid[b * Self::ROWS - 1]).count();
        }
        while start < hi {
            if (start > 0 && pid[start] < pid[start - 1]) || self.unsorted.load(Ordering::Relaxed) {
                self.unsorted.store(true, Ordering::Relaxed);
                return Err(NotGrouped);
            }
            f(start);
            start = self.end(start);
        }
        Ok(())
    }

    #[inline]
    fn prompt_id(&self, start: usize) -> i64 {
        self.cols.prompt_id[start]
    }

    #[inline]
    fn prefetch(&self, start: usize) {
        prefetch_row(self.cols, start);
    }

    #[inline]
    fn load(&self, start: usize, buf: &mut Vec<Response>) -> Result<u64, CoreError> {
        let cols = self.cols;
        load(cols.prompt_id[start], (start..self.end(start)).map(|i| cols.row(i)), buf)
    }
}
