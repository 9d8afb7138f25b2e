//! Scattered rows copied into partitions of consecutive prompt ids, each row compacted to
//! 12 bytes; each partition is put in group order by the pass that first reads it, while
//! it is in cache.

use std::cell::{RefCell, UnsafeCell};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Once;

use rayon::prelude::*;

use super::regroup::SharedOut;
use super::{Group, Groups, NotGrouped};
use crate::group::{self, Outline, Row, Small, SMALL};
use crate::{memory, Columns, ResponseId, Score};

/// A row compacted for regrouping, with its prompt id's offset in its partition (the
/// "low key"); built only when every value fits exactly.
pub(crate) trait Compact: Copy + Send + Sync + 'static {
    fn new<R: ResponseId, S: Score>(cols: &Columns<'_, R, S>, i: usize, low_key: u32) -> Option<Self>;
    /// (response id, a, b, is refined), widened.
    fn widen(self) -> Row;
    fn low_key(self) -> u32;
}

/// `low_key << 18 | (response_id + 2^16) << 1 | is_refined`: ids within ±2^16.
#[inline(always)]
fn tag(id: i64, refined: bool, low_key: u32) -> Option<u32> {
    const ID_BIAS: i64 = 1 << 16;
    let biased = u32::try_from(id.checked_add(ID_BIAS)?).ok().filter(|&b| b < 1 << 17)?;
    debug_assert!(low_key < 1 << SPAN_BITS);
    Some(low_key << 18 | biased << 1 | u32::from(refined))
}

#[inline(always)]
fn untag(tag: u32) -> (i64, bool) {
    (i64::from((tag >> 1) & ((1 << 17) - 1)) - (1 << 16), tag & 1 == 1)
}

/// 12 bytes: scores exact as f32.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Wide {
    a: f32,
    b: f32,
    tag: u32,
}

impl Compact for Wide {
    #[inline(always)]
    fn new<R: ResponseId, S: Score>(cols: &Columns<'_, R, S>, i: usize, low_key: u32) -> Option<Self> {
        Some(Self {
            a: cols.score_a[i].to_f32_exact()?,
            b: cols.score_b[i].to_f32_exact()?,
            tag: tag(cols.response_id[i].to_i64(), cols.is_refined[i], low_key)?,
        })
    }

    #[inline(always)]
    fn widen(self) -> Row {
        let (id, refined) = untag(self.tag);
        (id, f64::from(self.a), f64::from(self.b), refined)
    }

    #[inline(always)]
    fn low_key(self) -> u32 {
        self.tag >> 18
    }
}

/// 8 bytes: integer scores within ±32767 (the usual judge scales), missing as i16::MIN.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Narrow {
    a: i16,
    b: i16,
    tag: u32,
}

impl Narrow {
    const MISSING: i16 = i16::MIN;

    #[inline(always)]
    fn narrow(x: f64) -> Option<i16> {
        if x.is_nan() {
            return Some(Self::MISSING);
        }
        let n = x as i16; // saturating; checked below
        (f64::from(n) == x && n != Self::MISSING && !(x == 0.0 && x.is_sign_negative())).then_some(n)
    }

    #[inline(always)]
    fn wide(n: i16) -> f64 {
        if n == Self::MISSING {
            f64::NAN
        } else {
            f64::from(n)
        }
    }
}

impl Compact for Narrow {
    #[inline(always)]
    fn new<R: ResponseId, S: Score>(cols: &Columns<'_, R, S>, i: usize, low_key: u32) -> Option<Self> {
        Some(Self {
            a: Self::narrow(cols.score_a[i].to_f64())?,
            b: Self::narrow(cols.score_b[i].to_f64())?,
            tag: tag(cols.response_id[i].to_i64(), cols.is_refined[i], low_key)?,
        })
    }

    #[inline(always)]
    fn widen(self) -> Row {
        let (id, refined) = untag(self.tag);
        (id, Self::wide(self.a), Self::wide(self.b), refined)
    }

    #[inline(always)]
    fn low_key(self) -> u32 {
        self.tag >> 18
    }
}

/// Rows copied into partitions of `2^SPAN_BITS` consecutive prompt ids (level 1 of a
/// two-level counting sort). A block is a partition: visiting it first sorts it by prompt
/// id in place (level 2), then walks its groups; a group's handle is its first row.
pub(crate) struct Packed<T> {
    rows: Cells<T>,
    /// Partition p is `rows[part_start[p]..part_start[p + 1]]`.
    part_start: Vec<usize>,
    /// Whether partition p is sorted yet.
    sorted: Vec<Once>,
    min: i64,
}

/// A buffer whose disjoint ranges are reordered by different threads.
///
/// The protocol that makes this sound: a partition's range is written only inside its
/// `Once` (one thread, once), and read only after that `Once` completed (which orders the
/// write before the read), or after pass 1 has joined.
struct Cells<T>(Box<[UnsafeCell<T>]>);

// SAFETY: see the protocol above; T itself is plain data.
unsafe impl<T: Send> Sync for Cells<T> {}

impl<T> Cells<T> {
    fn new(v: Vec<T>) -> Self {
        let boxed = v.into_boxed_slice();
        let len = boxed.len();
        let ptr = Box::into_raw(boxed).cast::<UnsafeCell<T>>();
        // SAFETY: UnsafeCell<T> has the layout of T; the pointer and length are the box's.
        Self(unsafe { Box::from_raw(std::ptr::slice_from_raw_parts_mut(ptr, len)) })
    }

    /// # Safety
    /// No other reference into `range` exists while the result lives.
    #[allow(clippy::mut_from_ref)]
    unsafe fn slice_mut(&self, range: std::ops::Range<usize>) -> &mut [T] {
        let cells = &self.0[range];
        // SAFETY: exclusive by the caller's promise; UnsafeCell<T> is layout-compatible.
        unsafe { std::slice::from_raw_parts_mut(UnsafeCell::raw_get(cells.as_ptr()), cells.len()) }
    }

    /// # Safety
    /// No thread writes into `range` while the result lives.
    unsafe fn slice(&self, range: std::ops::Range<usize>) -> &[T] {
        let cells = &self.0[range];
        // SAFETY: no concurrent writer by the caller's promise.
        unsafe { std::slice::from_raw_parts(UnsafeCell::raw_get(cells.as_ptr()), cells.len()) }
    }
}

thread_local! {
    /// Level 2's key counters, reused across partitions.
    static COUNTS: RefCell<Vec<u32>> = const { RefCell::new(Vec::new()) };
    /// Level 2's copy of a partition, reused across partitions (bytes, 8-aligned).
    static COPY: RefCell<Vec<u64>> = const { RefCell::new(Vec::new()) };
}

impl<T: Compact> Packed<T> {
    /// Sort partition `p` by prompt id (a counting sort on the low keys, stable).
    fn sort_partition(&self, p: usize) {
        let range = self.part_start[p]..self.part_start[p + 1];
        // SAFETY: called once per partition, inside its `Once`: no other reference to it.
        let rows = unsafe { self.rows.slice_mut(range) };
        COUNTS.with_borrow_mut(|counts| {
            counts.clear();
            counts.resize(1 << SPAN_BITS, 0);
            for r in rows.iter() {
                counts[r.low_key() as usize] += 1;
            }
            let mut next = 0u32;
            for count in counts.iter_mut() {
                (*count, next) = (next, next + *count);
            }
            COPY.with_borrow_mut(|words| {
                let bytes = std::mem::size_of_val(rows);
                words.clear();
                words.resize(bytes.div_ceil(8), 0);
                // SAFETY: `words` has room for `rows.len()` values of T (u64 alignment is
                // at least T's), and T is plain data, copied bit for bit.
                let copy = unsafe {
                    let dst = words.as_mut_ptr().cast::<T>();
                    std::ptr::copy_nonoverlapping(rows.as_ptr(), dst, rows.len());
                    std::slice::from_raw_parts(dst, rows.len())
                };
                for &row in copy {
                    let at = &mut counts[row.low_key() as usize];
                    rows[*at as usize] = row;
                    *at += 1;
                }
            });
        });
    }

    #[inline(always)]
    fn rows(&self, g: Group) -> &[T] {
        // SAFETY: a group handed out by `visit_block` lies in a sorted partition (see Cells).
        unsafe { self.rows.slice(g.handle..g.handle + g.rows) }
    }
}

impl<T: Compact> Groups for Packed<T> {
    fn blocks(&self) -> usize {
        self.sorted.len()
    }

    fn visit_block(&self, p: usize, mut f: impl FnMut(Group)) -> Result<(), NotGrouped> {
        self.sorted[p].call_once(|| self.sort_partition(p));
        let (lo, hi) = (self.part_start[p], self.part_start[p + 1]);
        // SAFETY: the partition is sorted (the `Once` above completed) and never written again.
        let rows = unsafe { self.rows.slice(lo..hi) };
        let base = self.min.wrapping_add((p << SPAN_BITS) as i64);
        let mut start = 0;
        while start < rows.len() {
            let k = rows[start].low_key();
            let end = start + 1 + rows[start + 1..].iter().take_while(|q| q.low_key() == k).count();
            f(Group { handle: lo + start, rows: end - start, prompt_id: base.wrapping_add(i64::from(k)) });
            start = end;
        }
        Ok(())
    }

    #[inline(always)]
    fn row(&self, handle: usize, i: usize) -> Row {
        // SAFETY: as in `rows`.
        unsafe { self.rows.slice(handle + i..handle + i + 1)[0].widen() }
    }

    #[inline]
    fn prefetch(&self, handle: usize, rows: usize) {
        memory::prefetch(self.rows.0[handle].get());
        memory::prefetch(self.rows.0[handle + rows.max(1) - 1].get());
    }

    #[inline(always)]
    fn load_small(&self, g: Group, small: &mut Small) -> Option<(u64, Outline)> {
        let rows = self.rows(g);
        group::load_small(g.rows, rows[..rows.len().min(SMALL)].iter().map(|r| r.widen()), small)
    }
}

/// Keys (prompt ids) per partition of the two-level regrouping, as a power of two: small
/// enough that a partition's counters and rows (~1 MiB at 6 rows per prompt) stay in a
/// core's cache, large enough that level 1 writes to few partitions at a time.
const SPAN_BITS: u32 = 14;

/// Copy the rows into partitions of consecutive prompt ids, compacted as T; None when
/// some value is not exact so. `keys` is the dense key range `max - min + 1` of the
/// prompt ids.
///
/// Level 1 of two cache-friendly levels instead of one random scatter: rows are copied
/// into partitions of `2^SPAN_BITS` consecutive keys (few partitions: sequential writes);
/// level 2, a counting sort of each partition on its own (its counters and rows in cache),
/// is done by [`Packed::visit_block`].
pub(super) fn pack<T: Compact, R: ResponseId, S: Score>(
    cols: &Columns<'_, R, S>,
    min: i64,
    keys: usize,
) -> Option<Packed<T>> {
    let (pid, n) = (cols.prompt_id, cols.len());
    let key = |i: usize| pid[i].wrapping_sub(min) as u64 as usize;
    let partitions = ((keys - 1) >> SPAN_BITS) + 1;
    let chunks = rayon::current_num_threads() * 4;
    let step = n.div_ceil(chunks);

    // Level 1: count rows per (chunk, partition), then copy each row (and its key within
    // the partition) to its partition's next free slot.
    let mut cursor = vec![0u32; chunks * partitions];
    cursor.par_chunks_mut(partitions).enumerate().for_each(|(c, counts)| {
        for i in (c * step).min(n)..((c + 1) * step).min(n) {
            counts[key(i) >> SPAN_BITS] += 1;
        }
    });
    let mut part_start = Vec::with_capacity(partitions + 1);
    let mut next = 0u32;
    for p in 0..partitions {
        part_start.push(next as usize);
        for c in 0..chunks {
            let count = cursor[c * partitions + p];
            cursor[c * partitions + p] = next;
            next += count;
        }
    }
    part_start.push(n);
    let mut rows: Vec<T> = memory::with_capacity(n);
    let rows_out = SharedOut(rows.as_mut_ptr());
    let failed = AtomicBool::new(false);
    cursor.par_chunks_mut(partitions).enumerate().for_each(|(c, cursor)| {
        for i in (c * step).min(n)..((c + 1) * step).min(n) {
            let k = key(i);
            let Some(row) = T::new(cols, i, (k & ((1 << SPAN_BITS) - 1)) as u32) else {
                failed.store(true, Ordering::Relaxed);
                return;
            };
            let at = &mut cursor[k >> SPAN_BITS];
            // SAFETY: the cursors hand out each of the n positions exactly once.
            unsafe { rows_out.write(*at as usize, row) };
            *at += 1;
        }
    });
    if failed.into_inner() {
        return None;
    }
    // SAFETY: each of the n positions was written exactly once above.
    unsafe { rows.set_len(n) };
    drop(cursor);
    let partitions = part_start.len() - 1;
    Some(Packed {
        rows: Cells::new(rows),
        part_start,
        sorted: (0..partitions).map(|_| Once::new()).collect(),
        min,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_round_trip_within_their_range() {
        for (id, refined) in [(0, false), (5, true), (-(1 << 16), true), ((1 << 16) - 1, false)] {
            let t = tag(id, refined, (1 << SPAN_BITS) - 1).unwrap();
            assert_eq!((untag(t), t >> 18), ((id, refined), (1 << SPAN_BITS) - 1));
        }
        assert!(tag(1 << 16, false, 0).is_none());
        assert!(tag(-(1 << 16) - 1, false, 0).is_none());
        assert!(tag(i64::MAX, false, 0).is_none());
    }

    #[test]
    fn narrow_scores_are_exact_integers_only() {
        for x in [0.0, 1.0, -7.0, 32767.0, -32767.0] {
            assert_eq!(Narrow::wide(Narrow::narrow(x).unwrap()).to_bits(), x.to_bits());
        }
        assert!(Narrow::wide(Narrow::narrow(f64::NAN).unwrap()).is_nan());
        for x in [0.5, -0.0, 32768.0, -32768.0, f64::INFINITY, 1e300] {
            assert!(Narrow::narrow(x).is_none(), "{x}");
        }
    }
}
