//! Scattered rows copied into group order, each compacted to 12 bytes.

use std::sync::atomic::{AtomicBool, Ordering};

use rayon::prelude::*;

use super::regroup::SharedOut;
use super::{visit_indexed, Groups, NotGrouped, BLOCK};
use crate::group::{load, Response};
use crate::{memory, Columns, CoreError, ResponseId, Score};

/// A row compacted to 12 bytes for regrouping: exact, built only when every value fits.
#[derive(Debug, Clone, Copy)]
struct PackedRow {
    a: f32,
    b: f32,
    /// `response_id * 2 + is_refined` (response ids within ±2^30).
    tagged_id: i32,
}

impl PackedRow {
    const ID_LIMIT: i32 = 1 << 30;

    #[inline(always)]
    fn new<R: ResponseId, S: Score>(cols: &Columns<'_, R, S>, i: usize) -> Option<Self> {
        let id =
            cols.response_id[i].to_i32_exact().filter(|id| (-Self::ID_LIMIT..Self::ID_LIMIT).contains(id))?;
        Some(Self {
            a: cols.score_a[i].to_f32_exact()?,
            b: cols.score_b[i].to_f32_exact()?,
            tagged_id: id * 2 + i32::from(cols.is_refined[i]),
        })
    }

    /// (response id, a, b, is refined), widened.
    #[inline(always)]
    fn widen(self) -> (i64, f64, f64, bool) {
        (i64::from(self.tagged_id >> 1), f64::from(self.a), f64::from(self.b), self.tagged_id & 1 == 1)
    }
}

/// Rows copied into group order: group g is `rows[starts[g]..starts[g + 1]]`.
pub(crate) struct Packed {
    rows: Vec<PackedRow>,
    starts: Vec<u32>,
    prompt_ids: Vec<i64>,
}

impl Groups for Packed {
    fn blocks(&self) -> usize {
        self.prompt_ids.len().div_ceil(BLOCK)
    }

    fn visit_block(&self, b: usize, f: impl FnMut(usize)) -> Result<(), NotGrouped> {
        visit_indexed(self, self.prompt_ids.len(), b, f);
        Ok(())
    }

    #[inline]
    fn prompt_id(&self, g: usize) -> i64 {
        self.prompt_ids[g]
    }

    #[inline]
    fn prefetch(&self, g: usize) {
        memory::prefetch(&self.rows[self.starts[g] as usize]);
    }

    #[inline]
    fn load(&self, g: usize, buf: &mut Vec<Response>) -> Result<u64, CoreError> {
        let rows = &self.rows[self.starts[g] as usize..self.starts[g + 1] as usize];
        load(self.prompt_ids[g], rows.iter().map(|r| r.widen()), buf)
    }
}

/// Keys (prompt ids) per partition of the two-level regrouping, as a power of two: small
/// enough that a partition's counters and rows (~1 MiB at 6 rows per prompt) stay in a
/// core's cache, large enough that level 1 writes to few partitions at a time.
const SPAN_BITS: u32 = 14;

/// Copy the rows into group order, compacted; None when some value is not exact compacted.
///
/// Two cache-friendly levels instead of one random scatter: rows are first copied into
/// partitions of `2^SPAN_BITS` consecutive keys (few partitions: sequential writes), then
/// each partition is counting-sorted by key on its own (its counters and rows in cache).
/// `keys` is the dense key range `max - min + 1` of the prompt ids.
pub(super) fn pack<R: ResponseId, S: Score>(
    cols: &Columns<'_, R, S>,
    min: i64,
    keys: usize,
) -> Option<Packed> {
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
    let mut rows: Vec<PackedRow> = memory::with_capacity(n);
    let mut low_keys: Vec<u16> = memory::with_capacity(n);
    let (rows_out, keys_out) = (SharedOut(rows.as_mut_ptr()), SharedOut(low_keys.as_mut_ptr()));
    let failed = AtomicBool::new(false);
    cursor.par_chunks_mut(partitions).enumerate().for_each(|(c, cursor)| {
        for i in (c * step).min(n)..((c + 1) * step).min(n) {
            let Some(row) = PackedRow::new(cols, i) else {
                failed.store(true, Ordering::Relaxed);
                return;
            };
            let k = key(i);
            let at = &mut cursor[k >> SPAN_BITS];
            // SAFETY: the cursors hand out each of the n positions exactly once.
            unsafe {
                rows_out.write(*at as usize, row);
                keys_out.write(*at as usize, (k & ((1 << SPAN_BITS) - 1)) as u16);
            }
            *at += 1;
        }
    });
    if failed.into_inner() {
        return None;
    }
    // SAFETY: each of the n positions was written exactly once above.
    unsafe {
        rows.set_len(n);
        low_keys.set_len(n);
    }
    drop(cursor);

    // Level 2: each partition sorted by its keys in place (through a scratch copy).
    let span = 1usize << SPAN_BITS;
    let parts: Vec<(Vec<u32>, Vec<i64>)> = {
        let mut slices = Vec::with_capacity(partitions);
        let mut rest = &mut rows[..];
        for p in 0..partitions {
            let (head, tail) = rest.split_at_mut(part_start[p + 1] - part_start[p]);
            slices.push((p, head));
            rest = tail;
        }
        slices
            .into_par_iter()
            .map_init(
                || (vec![0u32; span], Vec::<PackedRow>::new()),
                |(counts, scratch), (p, part)| {
                    let base = part_start[p];
                    let low = &low_keys[base..base + part.len()];
                    counts.fill(0);
                    for &k in low {
                        counts[k as usize] += 1;
                    }
                    let (mut starts, mut prompt_ids) = (Vec::new(), Vec::new());
                    let mut next = 0u32;
                    for (k, count) in counts.iter_mut().enumerate() {
                        if *count > 0 {
                            starts.push((base + next as usize) as u32);
                            prompt_ids.push(min.wrapping_add(((p << SPAN_BITS) + k) as i64));
                        }
                        (*count, next) = (next, next + *count);
                    }
                    scratch.clear();
                    scratch.extend_from_slice(part);
                    for (row, &k) in scratch.iter().zip(low) {
                        let at = &mut counts[k as usize];
                        part[*at as usize] = *row;
                        *at += 1;
                    }
                    (starts, prompt_ids)
                },
            )
            .collect()
    };
    drop(low_keys);
    let groups = parts.iter().map(|(s, _)| s.len()).sum::<usize>();
    let (mut starts, mut prompt_ids) = (Vec::with_capacity(groups + 1), Vec::with_capacity(groups));
    for (s, ids) in parts {
        starts.extend(s);
        prompt_ids.extend(ids);
    }
    starts.push(n as u32);
    Some(Packed { rows, starts, prompt_ids })
}
