//! Rows sorted by prompt id: groups found while the first pass reads them.

use std::sync::atomic::{AtomicBool, Ordering};

use super::in_place::prefetch_rows;
#[cfg(target_arch = "x86_64")]
use super::screen;
#[cfg(target_arch = "x86_64")]
use super::Screen;
use super::{Group, Groups, NotGrouped};
#[cfg(target_arch = "x86_64")]
use crate::group::WholePairs;
use crate::group::{self, Outline, Row, Small, SMALL};
use crate::{Columns, ResponseId, Score};
#[cfg(target_arch = "x86_64")]
use crate::{Params, Stats};

/// Rows sorted by prompt id, read in place; a group is named by its first row.
pub(crate) struct SortedRows<'c, 'a, R, S> {
    cols: &'c Columns<'a, R, S>,
    /// Set by the first block that finds a descending prompt id, to stop the others.
    unsorted: AtomicBool,
    /// Whether pass 1 screens with AVX-512 (see `screen`).
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    vector: bool,
}

impl<'c, 'a, R: ResponseId, S: Score> SortedRows<'c, 'a, R, S> {
    /// Rows per block.
    const ROWS: usize = 1 << 14;

    /// `vector`: screen with AVX-512 where the CPU has it.
    pub(crate) fn new(cols: &'c Columns<'a, R, S>, vector: bool) -> Self {
        #[cfg(target_arch = "x86_64")]
        let vector = vector && screen::available();
        #[cfg(not(target_arch = "x86_64"))]
        let vector = {
            let _ = vector;
            false
        };
        Self { cols, unsorted: AtomicBool::new(false), vector }
    }

    /// The first row of block `b`'s first group (past the rest of a group that started in
    /// an earlier block) and the end of its rows.
    fn block_rows(&self, b: usize) -> (usize, usize) {
        let pid = self.cols.prompt_id;
        let hi = ((b + 1) * Self::ROWS).min(pid.len());
        let mut start = b * Self::ROWS;
        if start > 0 {
            start += pid[start..hi].iter().take_while(|&&q| q == pid[b * Self::ROWS - 1]).count();
        }
        (start, hi)
    }
}

impl<R: ResponseId, S: Score> Groups for SortedRows<'_, '_, R, S> {
    fn blocks(&self) -> usize {
        self.cols.len().div_ceil(Self::ROWS)
    }

    /// The groups that start in rows `b * ROWS..(b + 1) * ROWS`.
    fn visit_block(&self, b: usize, mut f: impl FnMut(Group)) -> Result<(), NotGrouped> {
        let pid = self.cols.prompt_id;
        let (mut start, hi) = self.block_rows(b);
        while start < hi {
            if (start > 0 && pid[start] < pid[start - 1]) || self.unsorted.load(Ordering::Relaxed) {
                self.unsorted.store(true, Ordering::Relaxed);
                return Err(NotGrouped);
            }
            let p = pid[start];
            let end = start + 1 + pid[start + 1..].iter().take_while(|&&q| q == p).count();
            f(Group { handle: start, rows: end - start, prompt_id: p });
            start = end;
        }
        Ok(())
    }

    #[cfg(target_arch = "x86_64")]
    fn screen_block(
        &self,
        b: usize,
        params: &Params,
        screened: &mut Stats,
        sink: &mut impl Screen,
    ) -> Option<Result<(), NotGrouped>> {
        if !self.vector {
            return None;
        }
        let (start, hi) = self.block_rows(b);
        let mut whole = WholePairs::new();
        // SAFETY: `vector` is set only where `screen::available()`.
        let visited = unsafe {
            screen::screen(self.cols, start, hi, params, &self.unsorted, screened, &mut whole, sink)
        };
        if visited.is_err() {
            self.unsorted.store(true, Ordering::Relaxed);
        }
        Some(visited)
    }

    #[inline]
    fn prefetch(&self, start: usize, rows: usize) {
        prefetch_rows(self.cols, start, rows);
    }

    #[inline(always)]
    fn row(&self, start: usize, i: usize) -> Row {
        self.cols.row(start + i)
    }

    #[inline(always)]
    fn load_small(&self, g: Group, small: &mut Small) -> Option<(u64, Outline)> {
        let c = self.cols;
        // Groups of up to 8 rows, the usual sizes: two rows at a time (see
        // `group::load_array`).
        match g.rows {
            2 => return load_array::<R, S, 2>(c, g.handle, small),
            3 => return load_array::<R, S, 3>(c, g.handle, small),
            4 => return load_array::<R, S, 4>(c, g.handle, small),
            5 => return load_array::<R, S, 5>(c, g.handle, small),
            6 => return load_array::<R, S, 6>(c, g.handle, small),
            7 => return load_array::<R, S, 7>(c, g.handle, small),
            8 => return load_array::<R, S, 8>(c, g.handle, small),
            _ => {}
        }
        let range = g.handle..g.handle + g.rows.min(SMALL);
        let it = c.response_id[range.clone()].iter().zip(&c.score_a[range.clone()]);
        let it = it.zip(&c.score_b[range.clone()]).zip(&c.is_refined[range]);
        group::load_small(
            g.rows,
            it.map(|(((id, a), b), r)| (id.to_i64(), a.to_f64(), b.to_f64(), *r)),
            small,
        )
    }
}

/// [`group::load_array`] of the `N` rows from `start`.
#[inline(always)]
fn load_array<R: ResponseId, S: Score, const N: usize>(
    c: &Columns<'_, R, S>,
    start: usize,
    small: &mut Small,
) -> Option<(u64, Outline)> {
    let end = start + N;
    let id: &[R; N] = c.response_id[start..end].try_into().expect("N rows");
    let a: &[S; N] = c.score_a[start..end].try_into().expect("N rows");
    let b: &[S; N] = c.score_b[start..end].try_into().expect("N rows");
    let refined: &[bool; N] = c.is_refined[start..end].try_into().expect("N rows");
    group::load_array(&id.map(R::to_i64), &a.map(S::to_f64), &b.map(S::to_f64), refined, small)
}
