//! Micro benchmark of the attention kernels on SmolLM2-135M shapes (3 query heads per KV
//! head, head size 64), every tier this CPU has.
//!
//! `cargo bench -p edgellm-kernels --bench attn` prints, for 64, 576 and 2048 cached positions,
//! the time of one KV group's scores, unnormalized softmax (three rows; again on scores spread by
//! hundreds, most of whose exponentials underflow) and weighted values, hot in cache (scores and
//! values for the int8 cache as well), and the time of the attention of one SmolLM2 decode step (30 layers x 3 KV heads)
//! cycling through a full-size cache, f16 and int8; then that step as a decode runs it, each layer's weights
//! read through before its attention (only the attention timed), so the rows come from memory.

use std::hint::black_box;
use std::time::Instant;

use edgellm_kernels::{CpuFeatures, GgmlType, Kernels, Tier};

const G: usize = 3;
const HD: usize = 64;
const KV_HEADS: usize = 3;
const LAYERS: usize = 30;

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    /// f16 bits of a value in about [-2, 2].
    fn f16(&mut self) -> u16 {
        (self.next() as u16 & 0x83FF) | 0x3800
    }
}

/// The int8 cache's row scale for values in [-2, 2] (one for every row here).
const I8_SCALE: f32 = 2.0 / 127.0;

/// An f16 cache value as the int8 cache holds it (before its row scale).
fn to_i8(bits: u16) -> i8 {
    let x = edgellm_kernels::scalar::f16_bits_to_f32(bits);
    (x / I8_SCALE).round().clamp(-127.0, 127.0) as i8
}

/// Median seconds of `reps` runs of `f`.
fn time(reps: usize, mut f: impl FnMut()) -> f64 {
    let mut t: Vec<f64> = (0..reps)
        .map(|_| {
            let t0 = Instant::now();
            f();
            t0.elapsed().as_secs_f64()
        })
        .collect();
    t.sort_by(f64::total_cmp);
    t[reps / 2]
}

fn main() {
    let f = CpuFeatures::detect();
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let q: Vec<f32> = (0..G * HD).map(|i| (i % 17) as f32 / 17.0 - 0.5).collect();
    // The queries as the int8 cache's attention takes them: int16 rows, one scale per head.
    let mut q16 = vec![0i16; G * HD];
    let qd: Vec<f32> = q
        .chunks(HD)
        .zip(q16.chunks_mut(HD))
        .map(|(x, y)| edgellm_kernels::scalar::quantize_row_i16(x, y))
        .collect();
    // Every tier's kernels, and each one's set for a model with ternary weights where that
    // changes its attention kernels (`Kernels::for_weights`), labelled tier/attention tier.
    let sets: Vec<Kernels> = Tier::ALL
        .into_iter()
        .filter_map(|t| Kernels::with_tier(t, &f).ok())
        .flat_map(|k| {
            let wide = k.for_weights([GgmlType::T2]);
            if wide.attn_tier() == k.attn_tier() {
                vec![k]
            } else {
                vec![k, wide]
            }
        })
        .collect();
    for k in sets {
        let tier = format!("{}/{}", k.tier().name(), k.attn_tier().name());
        for n in [64usize, 576, 2048] {
            let keys: Vec<u16> = (0..n * HD).map(|_| rng.f16()).collect();
            let values: Vec<u16> = (0..n * HD).map(|_| rng.f16()).collect();
            let mut s = vec![0f32; G * n];
            let mut o = vec![0f32; G * HD];
            let scale = 0.125;
            let ts = time(201, || {
                k.attn_scores_f16(black_box(&q), black_box(&keys), HD, scale, &mut s)
            });
            let tx = time(201, || {
                for row in s.chunks_mut(n) {
                    black_box(k.softmax_unnorm(row));
                }
            });
            // Scores spread by hundreds (a peaked attention), most of whose exponentials
            // underflow to 0: the same softmax must not slow down (no subnormal intermediates).
            let spread: Vec<f32> = (0..s.len()).map(|i| (i % 200) as f32 * -2.6).collect();
            let mut sp = spread.clone();
            let tx_spread = time(201, || {
                sp.copy_from_slice(&spread);
                for row in sp.chunks_mut(n) {
                    black_box(k.softmax_unnorm(row));
                }
            });
            let tv = time(201, || {
                k.attn_values_f16(black_box(&s), black_box(&values), HD, &mut o)
            });
            let (keys8, values8): (Vec<i8>, Vec<i8>) = keys
                .iter()
                .zip(&values)
                .map(|(&a, &b)| (a as i8, b as i8))
                .unzip();
            let mut si = vec![0i32; G * n];
            let ts8 = time(201, || {
                k.attn_scores_q16(black_box(&q16), black_box(&keys8), HD, &mut si)
            });
            let tv8 = time(201, || {
                k.attn_values_i8(black_box(&s), black_box(&values8), HD, &mut o)
            });
            println!(
                "{:<16} n={n:<5} scores {:7.2} us  softmax {:7.2} us ({:7.2} us spread)  values \
                 {:7.2} us  (int8: scores {:7.2} us  values {:7.2} us)",
                tier,
                ts * 1e6,
                tx * 1e6,
                tx_spread * 1e6,
                tv * 1e6,
                ts8 * 1e6,
                tv8 * 1e6
            );
        }
        // One decode step's attention at 576 positions over a 2048-position cache per layer, with
        // the f16 cache and with the int8 one (the int8 scores' float scaling included, one key
        // scale for every row).
        let (n, ctx) = (576, 2048);
        let cache: Vec<u16> = (0..LAYERS * KV_HEADS * ctx * HD)
            .map(|_| rng.f16())
            .collect();
        let vcache = cache.clone();
        let cache8: Vec<i8> = cache.iter().map(|&b| to_i8(b)).collect();
        let vcache8 = cache8.clone();
        let mut s = vec![0f32; G * n];
        let mut si = vec![0i32; G * n];
        let mut o = vec![0f32; G * HD];
        for int8 in [false, true] {
            // Layer l's attention: every KV head's scores, softmax and weighted values.
            let mut layer = |l: usize| {
                for h in 0..KV_HEADS {
                    let at = (l * KV_HEADS + h) * ctx * HD;
                    let rows = at..at + n * HD;
                    if int8 {
                        // The integer sums, then the float scaling the session applies.
                        k.attn_scores_q16(&q16, &cache8[rows.clone()], HD, &mut si);
                        for ((row, irow), &d) in s.chunks_mut(n).zip(si.chunks(n)).zip(&qd) {
                            for (v, &i) in row.iter_mut().zip(irow) {
                                *v = (i as f32 * (d * I8_SCALE)) * 0.125;
                            }
                        }
                    } else {
                        k.attn_scores_f16(&q, &cache[rows.clone()], HD, 0.125, &mut s);
                    }
                    for row in s.chunks_mut(n) {
                        k.softmax_unnorm(row);
                    }
                    if int8 {
                        k.attn_values_i8(&s, &vcache8[rows], HD, &mut o);
                    } else {
                        k.attn_values_f16(&s, &vcache[rows], HD, &mut o);
                    }
                }
                black_box(&o);
            };
            let kv = if int8 { "int8" } else { "f16" };
            let t = time(21, || (0..LAYERS).for_each(&mut layer));
            println!(
                "{:<16} {kv:<4} one decode step's attention, 30 layers x 3 KV heads x {n} positions: {:.3} ms",
                tier,
                t * 1e3
            );
            // The same step as a decode runs it: before each layer's attention, that layer's
            // weights (3.2 MiB of a 96 MiB buffer, about SmolLM2-135M at 4 bits) are read through,
            // so the cache rows compete with them for the caches. Only the attention is timed
            // (median of 21 steps).
            let weights = vec![1u64; (96 << 20) / 8];
            let per_layer = weights.len() / LAYERS;
            let mut sink = 0u64;
            let mut steps: Vec<f64> = (0..21)
                .map(|_| {
                    let mut att = 0.0;
                    for l in 0..LAYERS {
                        let w = &weights[l * per_layer..(l + 1) * per_layer];
                        sink = sink.wrapping_add(w.iter().fold(0u64, |a, &x| a.wrapping_add(x)));
                        let t0 = Instant::now();
                        layer(l);
                        att += t0.elapsed().as_secs_f64();
                    }
                    att
                })
                .collect();
            steps.sort_by(f64::total_cmp);
            black_box(sink);
            println!(
                "{:<16} {kv:<4} the same, each layer's 3.2 MiB of weights read before its attention: {:.3} ms",
                tier,
                steps[steps.len() / 2] * 1e3
            );
        }
    }
}
