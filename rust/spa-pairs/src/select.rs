//! The whole selection: group, judge and count (pass 1), then fill the pairs (pass 2).
//!
//! Memory stays bounded: pass 1 keeps a small summary per kept group (for a small group
//! of whole scores, the usual case, its pairs as row indices: a few words, see
//! [`WholePairs`]), pass 2 writes straight into outputs allocated at their final size.
//! Candidate pairs are never stored as output rows.

use rayon::prelude::*;

use crate::group::{
    count_pairs, for_each_pair, judge, whole_distance, Outline, Recorded, Response, Small, Verdict,
    WholePairs,
};
use crate::layout::{group, Group, Grouping, Groups, NotGrouped, Screen, SortedRows, PREFETCH_GROUPS};
use crate::memory;
use crate::{Columns, CoreError, Params, ResponseId, Score};

/// Counts of what happened to the rows and groups (keys as in the Python `stats` dict).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    pub rows_in: u64,
    /// Rows dropped for a missing score.
    pub dropped_missing: u64,
    /// Groups without exactly one refined or with fewer than two scored samples.
    pub dropped_malformed: u64,
    pub dropped_consistency: u64,
    pub dropped_det_zero: u64,
    pub dropped_det_above_rho: u64,
    pub groups_in: u64,
    pub groups_kept: u64,
    pub pairs: u64,
}

impl Stats {
    /// (name, value) in the order of the Python reference's `STAT_KEYS`.
    pub fn entries(&self) -> [(&'static str, u64); 9] {
        [
            ("rows_in", self.rows_in),
            ("dropped_missing", self.dropped_missing),
            ("dropped_malformed", self.dropped_malformed),
            ("dropped_consistency", self.dropped_consistency),
            ("dropped_det_zero", self.dropped_det_zero),
            ("dropped_det_above_rho", self.dropped_det_above_rho),
            ("groups_in", self.groups_in),
            ("groups_kept", self.groups_kept),
            ("pairs", self.pairs),
        ]
    }

    /// These counts and `o`'s added (all but `rows_in`).
    pub(crate) fn merge(mut self, o: Self) -> Self {
        self.dropped_missing += o.dropped_missing;
        self.dropped_malformed += o.dropped_malformed;
        self.dropped_consistency += o.dropped_consistency;
        self.dropped_det_zero += o.dropped_det_zero;
        self.dropped_det_above_rho += o.dropped_det_above_rho;
        self.groups_in += o.groups_in;
        self.groups_kept += o.groups_kept;
        self.pairs += o.pairs;
        self
    }
}

/// The pairs of the kept groups, sorted by (prompt_id, chosen_id, rejected_id).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Selection {
    /// Kept prompt ids, ascending.
    pub kept_prompt_ids: Vec<i64>,
    pub prompt_id: Vec<i64>,
    pub chosen_id: Vec<i64>,
    pub rejected_id: Vec<i64>,
    pub gap: Vec<f64>,
    pub weight: Vec<f64>,
    pub stats: Stats,
}

/// A kept group, as pass 1 leaves it for pass 2.
#[derive(Debug, Clone, Copy)]
struct Kept {
    group: Group,
    /// The group's gaps added left to right in output order.
    gap_sum: f64,
    /// Where its [`WholePairs`] record starts in its block's `records`, if it has one.
    record: Option<u32>,
}

/// Pass 1 over one block of consecutive groups.
struct Block {
    stats: Stats,
    error: Option<CoreError>,
    kept: Vec<Kept>,
    /// The kept groups' [`WholePairs`] records, one after the other.
    records: Vec<i64>,
    /// The kept groups' gap sums added, while each is a whole number (listed groups'
    /// are) and the total fits.
    whole_gaps: Option<u64>,
}

impl Default for Block {
    fn default() -> Self {
        let (kept, records) = (Vec::new(), Vec::new());
        Self { stats: Stats::default(), error: None, kept, records, whole_gaps: Some(0) }
    }
}

/// Denoise the groups and build their weighted pairs (DESIGN.md steps 4-6).
pub fn select_pairs<R: ResponseId, S: Score>(
    cols: &Columns<'_, R, S>,
    params: &Params,
) -> Result<Selection, CoreError> {
    select(cols, params, true)
}

/// [`select_pairs`] without the AVX-512 screen, whatever the CPU (for tests: the same
/// results by the portable path).
#[doc(hidden)]
pub fn select_pairs_portable<R: ResponseId, S: Score>(
    cols: &Columns<'_, R, S>,
    params: &Params,
) -> Result<Selection, CoreError> {
    select(cols, params, false)
}

/// [`select_pairs`], screening with AVX-512 where `vector` and the CPU has it.
fn select<R: ResponseId, S: Score>(
    cols: &Columns<'_, R, S>,
    params: &Params,
    vector: bool,
) -> Result<Selection, CoreError> {
    let params = Params::new(params.rho, params.delta, params.alpha)?;
    let stats = Stats { rows_in: cols.len() as u64, ..Stats::default() };
    if cols.is_empty() {
        return Ok(Selection { stats, ..Selection::default() });
    }
    // Rows sorted by prompt id: no extra pass, nothing regrouped.
    if let Ok(selection) = select_groups(&SortedRows::new(cols, vector), &params, stats) {
        return selection;
    }
    match group(cols)? {
        Grouping::InPlace(groups) => select_groups(&groups, &params, stats),
        Grouping::Narrow(groups) => select_groups(&groups, &params, stats),
        Grouping::Wide(groups) => select_groups(&groups, &params, stats),
    }
    .unwrap_or_else(|NotGrouped| unreachable!("regrouped rows are grouped"))
}

/// Both passes over one grouping (`Err(NotGrouped)`: it does not fit the rows).
fn select_groups(
    groups: &impl Groups,
    params: &Params,
    mut stats: Stats,
) -> Result<Result<Selection, CoreError>, NotGrouped> {
    // Pass 1: judge every group, count its pairs and sum its gaps.
    let far = whole_distance(params.delta);
    let mut blocks: Vec<Block> = (0..groups.blocks())
        .into_par_iter()
        .map_init(Vec::new, |buf, b| PassOne::run(groups, b, params, far, buf))
        .collect::<Result<_, NotGrouped>>()?;
    let mut error = None;
    for block in &mut blocks {
        stats = stats.merge(block.stats);
        error = CoreError::first(error, block.error.take());
    }
    if let Some(e) = error {
        return Ok(Err(e));
    }
    // Kept groups stay in their blocks (blocks in order): no merged copy.
    let n_pairs = stats.pairs as usize;
    let weigh = Weigher::new(total_gap(&blocks), n_pairs, params.alpha);

    // Pass 2: fill the outputs, each task a block's kept groups and its own slice of them.
    let mut out = Selection {
        kept_prompt_ids: memory::zeros(stats.groups_kept as usize),
        prompt_id: memory::zeros(n_pairs),
        chosen_id: memory::zeros(n_pairs),
        rejected_id: memory::zeros(n_pairs),
        gap: memory::zeros(n_pairs),
        weight: memory::zeros(n_pairs),
        stats,
    };
    let mut tasks = Vec::with_capacity(blocks.len());
    let mut rest = OutSlices {
        kept_prompt_id: &mut out.kept_prompt_ids,
        prompt_id: &mut out.prompt_id,
        chosen_id: &mut out.chosen_id,
        rejected_id: &mut out.rejected_id,
        gap: &mut out.gap,
        weight: &mut out.weight,
    };
    for block in blocks.iter().filter(|b| !b.kept.is_empty()) {
        let (head, tail) = rest.split_at(block.kept.len(), block.stats.pairs as usize);
        tasks.push((block, head));
        rest = tail;
    }
    tasks.into_par_iter().for_each_init(Vec::new, |buf, (block, slices)| {
        fill_run(groups, block, slices, params, &weigh, buf);
    });
    Ok(Ok(out))
}

/// Pass 1 over one block of groups.
struct PassOne<'p, G> {
    groups: &'p G,
    params: &'p Params,
    far: i64,
    buf: &'p mut Vec<Response>,
    small: Small,
    whole: WholePairs,
    out: Block,
}

impl<'p, G: Groups> PassOne<'p, G> {
    /// Judge every group of block `b`, count its pairs and sum its gaps.
    fn run(
        groups: &'p G,
        b: usize,
        params: &'p Params,
        far: i64,
        buf: &'p mut Vec<Response>,
    ) -> Result<Block, NotGrouped> {
        let (small, whole, out) = (Small::new(), WholePairs::new(), Block::default());
        let mut pass = Self { groups, params, far, buf, small, whole, out };
        // (The groups a screen drops are counted apart, then added.)
        let mut screened = Stats::default();
        let visited = match groups.screen_block(b, params, &mut screened, &mut pass) {
            Some(visited) => visited,
            None => groups.visit_block(b, |g| {
                screened.groups_in += 1;
                pass.decide(g);
            }),
        };
        pass.out.stats = pass.out.stats.merge(screened);
        visited.map(|()| pass.out)
    }

    /// One group, by the general path.
    #[inline(always)]
    fn decide(&mut self, g: Group) {
        let (params, far, out) = (self.params, self.far, &mut self.out);
        let (small, buf, whole) = (&mut self.small, &mut *self.buf, &mut self.whole);
        let (missing, outline, fast) = match self.groups.load_small(g, small) {
            Some((missing, outline)) => (missing, outline, true),
            None => match self.groups.load(g, buf) {
                Ok(missing) => (missing, Outline::of(buf), false),
                Err(e) => {
                    out.error = CoreError::first(out.error.take(), Some(e));
                    return;
                }
            },
        };
        out.stats.dropped_missing += missing;
        // Most groups are decided by their outline, before their rows are ordered.
        // Of the others, most are judged and listed on integer lanes.
        let (verdict, group) = match outline.screen() {
            Some(v) => (v, None),
            None => {
                let on_lanes = if fast { small.judge_listed(&outline, params, far, whole) } else { None };
                match on_lanes {
                    Some(v) => (v, None),
                    None => {
                        let group = if fast { small.scored_rows() } else { buf.as_slice() };
                        (judge(group, &outline, params), Some(group))
                    }
                }
            }
        };
        let st = &mut out.stats;
        match verdict {
            Verdict::Malformed => st.dropped_malformed += 1,
            Verdict::Inconsistent => st.dropped_consistency += 1,
            Verdict::DetZero => st.dropped_det_zero += 1,
            Verdict::DetAboveRho => st.dropped_det_above_rho += 1,
            // Listed already (judged on lanes), listed now, or counted.
            Verdict::Kept => match group {
                None => out.keep_listed(g, whole),
                Some(group) => {
                    if whole.list(group, far).is_some() {
                        out.keep_listed(g, whole);
                    } else {
                        let (pairs, gap_sum) = count_pairs(group, params.delta);
                        out.whole_gaps = None;
                        out.keep(g, pairs, gap_sum, None);
                    }
                }
            },
        }
    }
}

impl<G: Groups> Screen for PassOne<'_, G> {
    #[inline(never)]
    fn candidate(&mut self, g: Group) {
        self.decide(g);
    }

    #[inline(always)]
    fn listed(&mut self, g: Group, whole: &WholePairs) {
        self.out.keep_listed(g, whole);
    }
}

impl Block {
    /// A kept group whose pairs `whole` lists: recorded.
    #[inline(always)]
    fn keep_listed(&mut self, g: Group, whole: &WholePairs) {
        let (pairs, gap_sum) = whole.listed();
        // (A whole number, below 2^53.)
        self.whole_gaps = self.whole_gaps.and_then(|s| s.checked_add(gap_sum as u64));
        let record = whole.record(&mut self.records);
        self.keep(g, pairs, gap_sum, record);
    }

    #[inline(always)]
    fn keep(&mut self, g: Group, pairs: u64, gap_sum: f64, record: Option<u32>) {
        self.kept.push(Kept { group: g, gap_sum, record });
        self.stats.groups_kept += 1;
        self.stats.pairs += pairs;
    }
}

/// The kept groups' gap sums added in ascending prompt id, left to right (as the Python
/// reference does).
///
/// A block whose sums are all whole numbers is added at once while the total is a whole
/// number too and stays at most 2^53: every partial sum is then exact, so the result is
/// the same, bit for bit.
fn total_gap(blocks: &[Block]) -> f64 {
    const EXACT: u64 = 1 << 53;
    let mut total = 0.0f64;
    for block in blocks {
        let whole_total = (total.fract() == 0.0 && total <= EXACT as f64).then_some(total as u64);
        let at_once =
            whole_total.zip(block.whole_gaps).and_then(|(t, s)| t.checked_add(s)).filter(|&t| t <= EXACT);
        total = match at_once {
            Some(t) => t as f64,
            None => block.kept.iter().fold(total, |acc, k| acc + k.gap_sum),
        };
    }
    total
}

/// Pass 2 over one block's kept groups: their pairs into `slices`, which fit them exactly
/// (not inlined: its own symbol in profiles, called once per block).
#[inline(never)]
fn fill_run(
    groups: &impl Groups,
    block: &Block,
    slices: OutSlices<'_>,
    params: &Params,
    weigh: &Weigher,
    buf: &mut Vec<Response>,
) {
    let (run, mut at) = (block.kept.as_slice(), 0);
    let mut small = Small::new();
    for (i, k) in run.iter().enumerate() {
        let pid = k.group.prompt_id;
        slices.kept_prompt_id[i] = pid;
        if let Some(record) = k.record {
            // All five columns in one loop over the pairs.
            let whole = Recorded::at(&block.records, record as usize);
            let pairs = whole.pairs();
            let range = at..at + pairs.len();
            let out = slices.prompt_id[range.clone()].iter_mut().zip(&mut slices.chosen_id[range.clone()]);
            let out = out.zip(&mut slices.rejected_id[range.clone()]).zip(&mut slices.gap[range.clone()]);
            let out = out.zip(&mut slices.weight[range.clone()]).zip(pairs);
            for (((((prompt_id, chosen_id), rejected_id), gap), weight), (chosen, rejected, d)) in out {
                (*prompt_id, *chosen_id, *rejected_id) = (pid, chosen, rejected);
                *gap = d as f64;
                *weight = weigh.whole(d);
            }
            at = range.end;
            continue;
        }
        // Kept groups without a record are scattered: fetch a few ahead.
        if let Some(ahead) = run.get(i + PREFETCH_GROUPS) {
            if ahead.record.is_none() {
                groups.prefetch(ahead.group.handle, ahead.group.rows);
            }
        }
        let group = read_group(groups, k.group, &mut small, buf);
        for_each_pair(group, params.delta, |plus, minus, gap| {
            slices.prompt_id[at] = pid;
            slices.chosen_id[at] = plus.id;
            slices.rejected_id[at] = minus.id;
            slices.gap[at] = gap;
            slices.weight[at] = weigh.weight(gap);
            at += 1;
        });
    }
    debug_assert_eq!(at, slices.prompt_id.len());
}

/// A kept group's scored rows in ascending response id, through the fast path where it
/// applies (into `small`), else the general one (into `buf`).
#[inline(always)]
fn read_group<'b>(
    groups: &impl Groups,
    g: Group,
    small: &'b mut Small,
    buf: &'b mut Vec<Response>,
) -> &'b [Response] {
    if groups.load_small(g, small).is_some() {
        return small.scored_rows();
    }
    groups.load(g, buf).expect("pass 1 read this group without error");
    buf.as_slice()
}

/// Disjoint mutable windows of the kept prompt ids and the five pair columns.
struct OutSlices<'o> {
    kept_prompt_id: &'o mut [i64],
    prompt_id: &'o mut [i64],
    chosen_id: &'o mut [i64],
    rejected_id: &'o mut [i64],
    gap: &'o mut [f64],
    weight: &'o mut [f64],
}

impl<'o> OutSlices<'o> {
    /// The first `groups` kept groups and `k` pairs, and the rest.
    fn split_at(self, groups: usize, k: usize) -> (Self, Self) {
        let (i0, i1) = self.kept_prompt_id.split_at_mut(groups);
        let (p0, p1) = self.prompt_id.split_at_mut(k);
        let (c0, c1) = self.chosen_id.split_at_mut(k);
        let (r0, r1) = self.rejected_id.split_at_mut(k);
        let (g0, g1) = self.gap.split_at_mut(k);
        let (w0, w1) = self.weight.split_at_mut(k);
        (
            Self { kept_prompt_id: i0, prompt_id: p0, chosen_id: c0, rejected_id: r0, gap: g0, weight: w0 },
            Self { kept_prompt_id: i1, prompt_id: p1, chosen_id: c1, rejected_id: r1, gap: g1, weight: w1 },
        )
    }
}

/// Step 6: `pow(gap / mean, alpha)`, all 1 when every gap is 0 or alpha is 0.
///
/// Small integer gaps (the usual case: integer scores) are looked up in a table filled
/// by the same expression, so the results are identical to calling `powf` each time.
struct Weigher {
    mean: f64,
    alpha: f64,
    unit: bool,
    table: [f64; Self::TABLE],
}

impl Weigher {
    const TABLE: usize = 64;

    fn new(total: f64, n_pairs: usize, alpha: f64) -> Self {
        let unit = n_pairs == 0 || total == 0.0 || alpha == 0.0;
        let mean = if unit { 1.0 } else { total / n_pairs as f64 };
        let mut table = [1.0; Self::TABLE];
        if !unit {
            for (k, t) in table.iter_mut().enumerate() {
                *t = (k as f64 / mean).powf(alpha);
            }
        }
        Self { mean, alpha, unit, table }
    }

    #[inline]
    fn weight(&self, gap: f64) -> f64 {
        if self.unit {
            1.0
        } else if gap < Self::TABLE as f64 && (gap as usize) as f64 == gap {
            self.table[gap as usize] // (no libm trunc: the cast is exact for these)
        } else {
            (gap / self.mean).powf(self.alpha)
        }
    }

    /// [`Self::weight`] of a whole gap `d` (from 0 to 2^53, so `d as f64` is exact): the same
    /// value, without the float checks.
    #[inline(always)]
    fn whole(&self, d: i64) -> f64 {
        if self.unit {
            1.0
        } else if (d as u64) < Self::TABLE as u64 {
            self.table[d as usize]
        } else {
            (d as f64 / self.mean).powf(self.alpha)
        }
    }
}
