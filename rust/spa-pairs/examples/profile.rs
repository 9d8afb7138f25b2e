//! Time select_pairs on generated data: `cargo run --release --example profile -- PROMPTS [shuffled|grouped|reversed] [REPEAT]`.
//!
//! `PORTABLE=1`: without the AVX-512 path (`select_pairs_portable`); `READ_ONLY=1`: time a
//! read of the input instead.

use std::time::Instant;

use spa_pairs::{select_pairs, select_pairs_portable, Columns, Params};

fn main() {
    let mut args = std::env::args().skip(1);
    let prompts: usize = args.next().map_or(1_000_000, |s| s.parse().expect("PROMPTS"));
    let layout = args.next();
    let shuffled = !matches!(layout.as_deref(), Some("grouped" | "reversed"));
    let reversed = layout.as_deref() == Some("reversed");
    let repeat: usize = args.next().map_or(3, |s| s.parse().expect("REPEAT"));
    let mut state = 0x2545f4914f6cdd1du64;
    let mut next = move |m: u64| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state % m
    };
    let n = prompts * 6;
    let (mut pid, mut rid, mut refined) =
        (Vec::with_capacity(n), Vec::with_capacity(n), Vec::with_capacity(n));
    let (mut a, mut b) = (Vec::with_capacity(n), Vec::with_capacity(n));
    for p in 0..prompts {
        let mut best = (0u64, 0u64);
        for r in 0..6 {
            let (x, y) = if r < 5 {
                let s = (1 + next(10), 1 + next(10));
                best = (best.0.max(s.0), best.1.max(s.1));
                s
            } else {
                ((best.0 + next(3)).min(10), (best.1 + next(3)).min(10))
            };
            pid.push(p as i64);
            rid.push(r);
            refined.push(r == 5);
            a.push(if next(33) == 0 { f64::NAN } else { x as f64 });
            b.push(if next(33) == 0 { f64::NAN } else { y as f64 });
        }
    }
    if reversed {
        // Grouped, each group's rows in descending response id.
        for g in 0..prompts {
            let r = g * 6..g * 6 + 6;
            rid[r.clone()].reverse();
            refined[r.clone()].reverse();
            a[r.clone()].reverse();
            b[r].reverse();
        }
    }
    if shuffled {
        for i in (1..n).rev() {
            let j = next(i as u64 + 1) as usize;
            pid.swap(i, j);
            rid.swap(i, j);
            refined.swap(i, j);
            a.swap(i, j);
            b.swap(i, j);
        }
    }
    if std::env::var_os("READ_ONLY").is_some() {
        // The bandwidth baseline: read every input byte once, on all cores.
        use rayon::prelude::*;
        for _ in 0..repeat {
            let t = Instant::now();
            let x = pid.par_iter().map(|&v| v as u64).reduce(|| 0, u64::wrapping_add)
                ^ rid.par_iter().map(|&v| v as u64).reduce(|| 0, u64::wrapping_add)
                ^ refined.par_iter().map(|&v| v as u64).reduce(|| 0, u64::wrapping_add)
                ^ a.par_iter().map(|v| v.to_bits()).reduce(|| 0, u64::wrapping_add)
                ^ b.par_iter().map(|v| v.to_bits()).reduce(|| 0, u64::wrapping_add);
            println!("read {n} rows: {:.3} s ({x})", t.elapsed().as_secs_f64());
        }
        return;
    }
    let cols = Columns::new(&pid, &rid, &refined, &a, &b).unwrap();
    let params = Params::new(50.0, 2.0, 1.0).unwrap();
    let portable = std::env::var_os("PORTABLE").is_some();
    for _ in 0..repeat {
        let t = Instant::now();
        let s = if portable { select_pairs_portable(&cols, &params) } else { select_pairs(&cols, &params) }
            .unwrap();
        println!(
            "{n} rows, shuffled={shuffled}: {:.3} s, {} pairs",
            t.elapsed().as_secs_f64(),
            s.stats.pairs
        );
    }
}
