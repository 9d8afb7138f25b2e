//! Regrouping scattered rows: a parallel counting sort (dense ids) or a sort (sparse ids).

use rayon::prelude::*;

use super::in_place::RowIndex;
use crate::memory;

/// Per-chunk counts of each dense key `prompt_id - min`, for a stable parallel counting sort.
pub(super) struct Histogram<'p> {
    pid: &'p [i64],
    min: i64,
    keys: usize,
    step: usize,
    /// `counts[c * keys + k]`: rows of key k in row chunk c.
    counts: Vec<u32>,
}

impl<'p> Histogram<'p> {
    pub(super) fn new(pid: &'p [i64], min: i64, keys: usize) -> Self {
        let chunks = rayon::current_num_threads().max(1);
        let step = pid.len().div_ceil(chunks);
        let mut counts = memory::zeros::<u32>(chunks * keys);
        counts.par_chunks_mut(keys).enumerate().for_each(|(c, hist)| {
            for &p in &pid[(c * step).min(pid.len())..((c + 1) * step).min(pid.len())] {
                hist[key(p, min)] += 1;
            }
        });
        Self { pid, min, keys, step, counts }
    }

    /// Turn the counts into each (chunk, key)'s first output position; return the group
    /// starts (plus the end) and the groups' prompt ids, ascending.
    pub(super) fn positions(&mut self) -> (Vec<u32>, Vec<i64>) {
        let (keys, chunks) = (self.keys, self.counts.len() / self.keys);
        let (mut starts, mut prompt_ids) = (Vec::new(), Vec::new());
        let mut next = 0u32;
        for k in 0..keys {
            let first = next;
            for c in 0..chunks {
                let count = self.counts[c * keys + k];
                self.counts[c * keys + k] = next;
                next += count;
            }
            if next > first {
                starts.push(first);
                prompt_ids.push(self.min.wrapping_add(k as i64));
            }
        }
        starts.push(next);
        (starts, prompt_ids)
    }

    /// Call `place(row, position)` for every row, each chunk on its own thread; stops a
    /// chunk early when `place` returns false.
    pub(super) fn scatter(
        mut self,
        place: impl Fn(usize, usize) -> bool + Sync,
        prefetch_out: impl Fn(usize) + Sync,
    ) {
        let (keys, step, n) = (self.keys, self.step, self.pid.len());
        let (pid, min) = (self.pid, self.min);
        self.counts.par_chunks_mut(keys).enumerate().for_each(|(c, position)| {
            let end = ((c + 1) * step).min(n);
            for i in c * step..end {
                // Random writes: ask early for the bucket counter, then for the target.
                if i + 2 * AHEAD < end {
                    memory::prefetch(&position[key(pid[i + 2 * AHEAD], min)]);
                }
                if i + AHEAD < end {
                    prefetch_out(position[key(pid[i + AHEAD], min)] as usize);
                }
                let slot = &mut position[key(pid[i], min)];
                if !place(i, *slot as usize) {
                    return;
                }
                *slot += 1;
            }
        });
    }
}

/// How many rows ahead the scatter prefetches.
const AHEAD: usize = 8;

/// A prompt id's bucket (`min` is the smallest id; the range fits in usize).
#[inline(always)]
fn key(pid: i64, min: i64) -> usize {
    pid.wrapping_sub(min) as u64 as usize
}

/// Raw output pointer shared by the scatter threads; each writes distinct positions.
pub(super) struct SharedOut<T>(pub(super) *mut T);
// SAFETY: the counting sort gives every row its own position, so writes never overlap.
unsafe impl<T: Send> Send for SharedOut<T> {}
unsafe impl<T: Send> Sync for SharedOut<T> {}

impl<T> SharedOut<T> {
    /// # Safety
    /// `at` is within the allocation and no other thread writes it.
    #[inline(always)]
    pub(super) unsafe fn write(&self, at: usize, value: T) {
        unsafe { self.0.add(at).write(value) };
    }

    #[inline(always)]
    pub(super) fn prefetch(&self, at: usize) {
        memory::prefetch(self.0.wrapping_add(at));
    }
}

/// Row indices in group order (when the compact copy is not exact).
pub(super) fn permutation(pid: &[i64], mut histogram: Histogram<'_>) -> RowIndex {
    let (starts, _) = histogram.positions();
    let n = pid.len();
    let mut perm: Vec<u32> = memory::with_capacity(n);
    let out = SharedOut(perm.as_mut_ptr());
    histogram.scatter(
        |i, at| {
            // SAFETY: as in `pack`.
            unsafe { out.write(at, i as u32) };
            true
        },
        |at| out.prefetch(at),
    );
    // SAFETY: each of the n positions was written exactly once above.
    unsafe { perm.set_len(n) };
    RowIndex::Gathered { perm, starts }
}

/// Sort (prompt id, row) pairs: for sparse ids, where a counting sort's buckets would not fit.
pub(super) fn comparison_sort(pid: &[i64]) -> RowIndex {
    let mut keyed: Vec<(i64, u32)> = pid.par_iter().enumerate().map(|(i, &p)| (p, i as u32)).collect();
    keyed.par_sort_unstable();
    let n = keyed.len();
    let mut starts: Vec<u32> = (0..n)
        .into_par_iter()
        .filter(|&i| i == 0 || keyed[i - 1].0 != keyed[i].0)
        .map(|i| i as u32)
        .collect();
    starts.push(n as u32);
    let perm = keyed.into_par_iter().map(|(_, i)| i).collect();
    RowIndex::Gathered { perm, starts }
}
