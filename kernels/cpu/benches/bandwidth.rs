//! Effective weight bandwidth of each gemv kernel on large matrices at one thread, beside the
//! machine's streaming-read bandwidth measured in the same run on the same buffers.
//!
//! `cargo bench -p edgellm-kernels --bench bandwidth [TIER] [TYPE]` prints, for the best tier
//! this CPU has (or `TIER`: scalar, avx2, avx-vnni, avx512, neon,
//! neon-dotprod) and every weight type (or only
//! `TYPE`, e.g. `TQ2_0`), the gemv's weight bytes per second on BitNet-2B shapes (6912x2560 and
//! 2560x6912) when the weights come from memory: each call takes the next of copies filling
//! 256 MB, so nothing is left in cache. `stream` is a plain read of the same copies in the same
//! order (eight independent 64-bit sums per 64 bytes, which the compiler vectorizes), with or
//! without a software prefetch 2 KiB ahead, whichever is faster: the bandwidth one thread can
//! draw; `%` is the kernel's share of it. `cached` is the gemv's rate
//! on one copy that stays in the caches: the kernel's own speed, which bounds `GB/s` when it is
//! not far above `stream`. Every time is the fastest of
//! many samples, so that a busy machine disturbs the figures less.

use std::hint::black_box;
use std::time::Instant;

use edgellm_kernels::{ActsQ8, ActsQ8Mut, CpuFeatures, GgmlType, Kernels, Tier, QS};

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// Random blocks of `ty` for `rows x cols` with small finite scales, ternary codes in 0..=2.
fn weights(rng: &mut Rng, ty: GgmlType, rows: usize, cols: usize) -> Vec<u8> {
    let n = ty.bytes_for((rows * cols) as u64).unwrap() as usize;
    let bb = ty.block_bytes();
    let mut w: Vec<u8> = (0..n)
        .map(|_| match ty {
            // Any four codes in 0..=2 are a valid byte in TQ2W's order as in TQ2_0's.
            GgmlType::T2 | GgmlType::TQ2_0 | GgmlType::TQ2W => {
                (0..4).fold(0u8, |v, k| v | (((rng.next() % 3) as u8) << (2 * k)))
            }
            _ => rng.next() as u8,
        })
        .collect();
    for blk in w.chunks_exact_mut(bb) {
        // f16 0x2000 (about 0.0078) where each type keeps its scales.
        let at: &[usize] = match ty {
            GgmlType::T2 => &[],
            GgmlType::TQ2_0 | GgmlType::TQ2W => &[64],
            GgmlType::TQ1_0 => &[52],
            GgmlType::Q4_K | GgmlType::Q5_K | GgmlType::Q4W => &[0, 2],
            GgmlType::Q6_K => &[208],
            _ => &[0],
        };
        for &o in at {
            blk[o..o + 2].copy_from_slice(&0x2000u16.to_le_bytes());
        }
    }
    w
}

/// Seconds per call of `f`: the fastest of 100 samples of about 2 ms each.
fn time(mut f: impl FnMut()) -> f64 {
    f();
    let t = Instant::now();
    let mut n = 0u32;
    while t.elapsed().as_secs_f64() < 0.02 {
        f();
        n += 1;
    }
    let per = t.elapsed().as_secs_f64() / n as f64;
    let reps = ((2e-3 / per) as u32).max(1);
    (0..100)
        .map(|_| {
            let t = Instant::now();
            for _ in 0..reps {
                f();
            }
            t.elapsed().as_secs_f64() / reps as f64
        })
        .fold(f64::INFINITY, f64::min)
}

/// Reads every byte of `b` (a multiple of 64 bytes long), as plainly as possible.
fn read_all(b: &[u8]) -> u64 {
    let mut s = [0u64; 8];
    for c in b.chunks_exact(64) {
        for (i, s) in s.iter_mut().enumerate() {
            *s = s.wrapping_add(u64::from_le_bytes(c[8 * i..8 * i + 8].try_into().unwrap()));
        }
    }
    s.iter().fold(0, |a, &v| a ^ v)
}

/// [`read_all`] with a software prefetch of the line 2 KiB ahead, which on some cores draws more
/// bandwidth than the hardware prefetchers alone (on x86; elsewhere the plain read).
fn read_all_prefetched(b: &[u8]) -> u64 {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        let mut s = [0u64; 8];
        for (i, c) in b.chunks_exact(64).enumerate() {
            // A prefetch is only a hint: an address past the end is never read.
            let ahead = b.as_ptr().wrapping_add(64 * i + 2048);
            // SAFETY: `_mm_prefetch` does not fault, whatever the address; SSE is part of x86-64.
            unsafe { _mm_prefetch::<_MM_HINT_T0>(ahead.cast()) };
            for (i, s) in s.iter_mut().enumerate() {
                *s = s.wrapping_add(u64::from_le_bytes(c[8 * i..8 * i + 8].try_into().unwrap()));
            }
        }
        s.iter().fold(0, |a, &v| a ^ v)
    }
    #[cfg(not(target_arch = "x86_64"))]
    read_all(b)
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let f = CpuFeatures::detect();
    let tier = args
        .iter()
        .find_map(|a| a.parse::<Tier>().ok())
        .unwrap_or(f.best_tier());
    let only = args.iter().find(|a| a.parse::<Tier>().is_err());
    let k = Kernels::with_tier(tier, &f).expect("this CPU runs the tier");
    println!("# {}", k.describe());
    println!(
        "{:>12} {:>6} {:>11} {:>8} | {:>9} {:>8} | {:>8} {:>5} | {:>8}",
        "tier", "type", "rows x cols", "MB", "gemv us", "GB/s", "stream", "%", "cached"
    );
    let types = [
        GgmlType::T2,
        GgmlType::TQ2_0,
        GgmlType::TQ2W,
        GgmlType::TQ1_0,
        GgmlType::Q4_0,
        GgmlType::Q4W,
        GgmlType::Q4_1,
        GgmlType::Q8_0,
        GgmlType::Q4_K,
        GgmlType::Q6_K,
    ];
    for ty in types {
        if only.is_some_and(|o| !o.eq_ignore_ascii_case(ty.name())) || !k.supports(ty) {
            continue;
        }
        for (rows, cols) in [(6912, 2560), (2560, 6912)] {
            let mut rng = Rng(0x1234_5678_9ABC_DEF1);
            let one = weights(&mut rng, ty, rows, cols);
            // Whole 64-byte lines for the stream read; the kernels get the exact bytes.
            let copies = (256 << 20) / one.len() + 1;
            let cold: Vec<Vec<u8>> = (0..copies)
                .map(|_| {
                    let mut v = one.clone();
                    v.resize(one.len().next_multiple_of(64), 0);
                    v
                })
                .collect();
            let x: Vec<f32> = (0..cols)
                .map(|_| (rng.next() % 2001) as f32 / 1000.0 - 1.0)
                .collect();
            let (mut qs, mut d, mut sums) =
                (vec![0; cols], vec![0.0; cols / QS], vec![0; cols / QS]);
            k.quantize_acts(
                &x,
                &mut ActsQ8Mut {
                    qs: &mut qs,
                    d: &mut d,
                    sums: &mut sums,
                },
            );
            let acts = ActsQ8 {
                qs: &qs,
                d: &d,
                sums: &sums,
            };
            let mut out = vec![0.0f32; rows];
            let mut i = 0;
            let plain = time(|| {
                i = (i + 1) % cold.len();
                black_box(read_all(black_box(&cold[i])));
            });
            let prefetched = time(|| {
                i = (i + 1) % cold.len();
                black_box(read_all_prefetched(black_box(&cold[i])));
            });
            let stream = plain.min(prefetched);
            let gemv = time(|| {
                i = (i + 1) % cold.len();
                k.gemv(ty, black_box(&cold[i][..one.len()]), &x, &acts, &mut out)
            });
            // The same call on one copy, left in the caches: the kernel's own speed.
            let warm = time(|| k.gemv(ty, black_box(&cold[0][..one.len()]), &x, &acts, &mut out));
            let gb = one.len() as f64 / 1e9;
            println!(
                "{:>12} {:>6} {:>11} {:>8.2} | {:>9.1} {:>8.2} | {:>8.2} {:>4.0}% | {:>8.2}",
                k.kernel_tier(ty).map_or("-", Tier::name),
                ty.name(),
                format!("{rows}x{cols}"),
                gb * 1e3,
                gemv * 1e6,
                gb / gemv,
                gb / stream,
                100.0 * stream / gemv,
                gb / warm
            );
        }
    }
}
