//! Micro benchmark of the ternary gemv kernels (T2, TQ2_0, TQ2W, TQ1_0) at one thread, every kernel
//! this CPU can run, on SmolLM2-135M and BitNet-2B shapes.
//!
//! `cargo bench -p edgellm-kernels --bench ternary [FILTER]` prints, per kernel and shape (rows x
//! cols), microseconds per call and the effective weight bandwidth (weight bytes / time, GB/s),
//! with the same matrix each call ("hot", in cache for the small shapes) and cycling through
//! 128 MB of copies ("cycled", weights from memory); each time is the fastest of many short
//! samples, so that a busy machine disturbs the numbers less. `FILTER` keeps only the
//! kernels whose name contains it.
//!
//! Then, per tier, the prefill patterns: a 32-row tile (in cache) times a chunk of 16 tokens,
//! and whole 6912 x 2560 and 2560 x 6912 matrices times 16 tokens from memory (not on the scalar
//! tier), as `Kernels::gemm` (each weight unpacked once for several tokens) and as 16 gemvs, in
//! microseconds and weight-token products per nanosecond.

use std::hint::black_box;
use std::time::Instant;

use edgellm_kernels::scalar::ternary as st;
use edgellm_kernels::{ActsQ8, CpuFeatures, GgmlType, Kernels, Tier};

/// Values per activation scale group.
const QS: usize = 16;

type GemvFn = unsafe fn(&[u8], &ActsQ8<'_>, &mut [f32]);

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// Random ternary blocks (codes 0..=2) with ordinary f16 scales for the TQ types.
fn weights(rng: &mut Rng, ty: &str, rows: usize, cols: usize) -> Vec<u8> {
    let (bl, bb) = match ty {
        "T2" => (64, 16),
        "TQ1_0" => (256, 54),
        _ => (256, 66),
    };
    let mut w = vec![0u8; rows * cols / bl * bb];
    for blk in w.chunks_exact_mut(bb) {
        for b in blk.iter_mut() {
            *b = match ty {
                "TQ1_0" => rng.next() as u8,
                // Four codes in 0..=2.
                _ => (0..4).fold(0u8, |v, k| v | (((rng.next() % 3) as u8) << (2 * k))),
            };
        }
        if ty != "T2" {
            blk[bb - 2..].copy_from_slice(&0x2000u16.to_le_bytes());
        }
    }
    if ty == "TQ2W" {
        st::tq2w_from_tq2_0(&mut w);
    }
    w
}

struct Acts {
    qs: Vec<i8>,
    d: Vec<f32>,
    sums: Vec<i32>,
}

impl Acts {
    fn new(rng: &mut Rng, n: usize) -> Acts {
        let qs: Vec<i8> = (0..n).map(|_| (rng.next() % 255) as i8).collect();
        let qs: Vec<i8> = qs.iter().map(|&q| q.max(-127)).collect();
        let sums = qs
            .chunks(QS)
            .map(|g| g.iter().map(|&q| q as i32).sum())
            .collect();
        Acts {
            d: vec![0.01; n / QS],
            qs,
            sums,
        }
    }
    fn view(&self) -> ActsQ8<'_> {
        ActsQ8 {
            qs: &self.qs,
            d: &self.d,
            sums: &self.sums,
        }
    }
}

/// Seconds per call of `f`: the fastest of 300 samples of about 1 ms each, so that on a shared
/// machine some samples run undisturbed.
fn time(mut f: impl FnMut()) -> f64 {
    f();
    let t = Instant::now();
    let mut n = 0u32;
    while t.elapsed().as_secs_f64() < 0.01 {
        f();
        n += 1;
    }
    let per = t.elapsed().as_secs_f64() / n as f64;
    let reps = ((1e-3 / per) as u32).max(1);
    (0..300)
        .map(|_| {
            let t = Instant::now();
            for _ in 0..reps {
                f();
            }
            t.elapsed().as_secs_f64() / reps as f64
        })
        .fold(f64::INFINITY, f64::min)
}

/// The kernels this CPU can run: (name, type, function).
fn kernels() -> Vec<(&'static str, &'static str, GemvFn)> {
    let mut v: Vec<(&'static str, &'static str, GemvFn)> = vec![
        ("scalar_gemv_t2", "T2", st::gemv_t2),
        ("scalar_gemv_tq2_0", "TQ2_0", st::gemv_tq2_0),
        ("scalar_gemv_tq2w", "TQ2W", st::gemv_tq2w),
        ("scalar_gemv_tq1_0", "TQ1_0", st::gemv_tq1_0),
    ];
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx2")
        && std::is_x86_feature_detected!("fma")
        && std::is_x86_feature_detected!("f16c")
    {
        use edgellm_kernels::x86::ternary as x;
        v.push(("avx2_gemv_t2", "T2", x::avx2_gemv_t2));
        v.push(("avx2_gemv_t2_lut", "T2", x::avx2_gemv_t2_lut));
        v.push(("avx2_gemv_tq2_0", "TQ2_0", x::avx2_gemv_tq2_0));
        v.push(("avx2_gemv_tq2w", "TQ2W", x::avx2_gemv_tq2w));
        v.push(("avx2_gemv_tq1_0", "TQ1_0", x::avx2_gemv_tq1_0));
    }
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx2")
        && std::is_x86_feature_detected!("fma")
        && std::is_x86_feature_detected!("f16c")
        && std::is_x86_feature_detected!("avxvnni")
    {
        use edgellm_kernels::x86::vnni as x;
        v.push(("avxvnni_gemv_t2", "T2", x::avxvnni_gemv_t2));
        v.push(("avxvnni_gemv_tq2_0", "TQ2_0", x::avxvnni_gemv_tq2_0));
        v.push(("avxvnni_gemv_tq1_0", "TQ1_0", x::avxvnni_gemv_tq1_0));
    }
    #[cfg(target_arch = "x86_64")]
    if edgellm_kernels::CpuFeatures::detect()
        .missing_for(Tier::Avx512)
        .is_none()
    {
        use edgellm_kernels::x86::avx512 as x;
        v.push(("avx512_gemv_tq1_0", "TQ1_0", x::avx512_gemv_tq1_0));
        v.push(("avx512_gemv_t2", "T2", x::avx512_gemv_t2));
        v.push(("avx512_gemv_tq2_0", "TQ2_0", x::avx512_gemv_tq2_0));
    }
    #[cfg(target_arch = "aarch64")]
    {
        use edgellm_kernels::aarch64::ternary as a;
        v.push(("neon_gemv_t2", "T2", a::neon_gemv_t2));
        v.push(("neon_gemv_t2_lut", "T2", a::neon_gemv_t2_lut));
        v.push(("neon_gemv_tq2_0", "TQ2_0", a::neon_gemv_tq2_0));
        v.push(("neon_gemv_tq1_0", "TQ1_0", a::neon_gemv_tq1_0));
        if std::arch::is_aarch64_feature_detected!("dotprod") {
            v.push(("neon_dotprod_gemv_t2", "T2", a::neon_dotprod_gemv_t2));
            v.push((
                "neon_dotprod_gemv_tq2_0",
                "TQ2_0",
                a::neon_dotprod_gemv_tq2_0,
            ));
            v.push((
                "neon_dotprod_gemv_tq1_0",
                "TQ1_0",
                a::neon_dotprod_gemv_tq1_0,
            ));
        }
    }
    v
}

fn main() {
    let filter = std::env::args().skip(1).find(|a| !a.starts_with('-'));
    let shapes = [
        (576, 576),
        (1536, 576),
        (576, 1536),
        (2560, 2560),
        (6912, 2560),
    ];
    println!(
        "{:>24} {:>11} {:>9} {:>7} | {:>9} {:>7}",
        "kernel", "rows x cols", "hot us", "GB/s", "cycled us", "GB/s"
    );
    for (name, ty, f) in kernels() {
        if filter.as_deref().is_some_and(|s| !name.contains(s)) {
            continue;
        }
        for (rows, cols) in shapes {
            // TQ1_0 and TQ2_0 rows are whole 256-value blocks: 576 columns do not fit.
            if ty != "T2" && cols % 256 != 0 {
                continue;
            }
            let mut rng = Rng(0x1234_5678_9ABC_DEF1);
            let w = weights(&mut rng, ty, rows, cols);
            // Copies filling 128 MB, cycled through so that the weights come from memory.
            let cold: Vec<Vec<u8>> = (0..(128 << 20) / w.len() + 1).map(|_| w.clone()).collect();
            let acts = Acts::new(&mut rng, cols);
            let mut out = vec![0.0f32; rows];
            // SAFETY: `kernels()` lists only kernels whose CPU features were detected.
            let hot = time(|| unsafe { f(black_box(&w), &acts.view(), &mut out) });
            let mut i = 0;
            // SAFETY: as above.
            let cycled = time(|| unsafe {
                i = (i + 1) % cold.len();
                f(black_box(&cold[i]), &acts.view(), &mut out)
            });
            let gb = w.len() as f64 / 1e9;
            println!(
                "{name:>24} {:>11} {:>9.1} {:>7.2} | {:>9.1} {:>7.2}",
                format!("{rows}x{cols}"),
                hot * 1e6,
                gb / hot,
                cycled * 1e6,
                gb / cycled
            );
        }
    }
    bench_gemm(filter.as_deref());
}

/// The prefill patterns: a 32-row tile (in cache) times a chunk of 16 tokens, then whole
/// 6912 x 2560 and 2560 x 6912 matrices times 16 tokens with their weights from memory (copies
/// filling 128 MB, cycled; not for the scalar tier, which would take minutes), gemm against 16
/// gemvs.
fn bench_gemm(filter: Option<&str>) {
    let f = CpuFeatures::detect();
    println!();
    println!(
        "{:>24} {:>14} {:>10} {:>9} | {:>10} {:>9}",
        "gemm (rows x cols x tokens)", "shape", "gemm us", "MAC/ns", "16 gemv us", "MAC/ns"
    );
    for (rows, cols, cycled) in [(32, 2560, false), (6912, 2560, true), (2560, 6912, true)] {
        bench_gemm_shape(&f, filter, rows, cols, cycled);
    }
}

fn bench_gemm_shape(f: &CpuFeatures, filter: Option<&str>, rows: usize, cols: usize, cycled: bool) {
    let nb = 16;
    for tier in Tier::ALL {
        if cycled && tier == Tier::Scalar {
            continue;
        }
        let Ok(k) = Kernels::with_tier(tier, f) else {
            continue;
        };
        for (ty, name) in [
            (GgmlType::T2, "T2"),
            (GgmlType::TQ2_0, "TQ2_0"),
            (GgmlType::TQ2W, "TQ2W"),
        ] {
            let label = format!("{}_gemm_{}", tier.name(), name.to_lowercase());
            if filter.is_some_and(|s| !label.contains(s)) {
                continue;
            }
            let mut rng = Rng(0x0BAD_5EED_1234_5678);
            let w = weights(&mut rng, name, rows, cols);
            let copies = if cycled { (128 << 20) / w.len() + 1 } else { 1 };
            let ws: Vec<Vec<u8>> = (0..copies).map(|_| w.clone()).collect();
            let mut i = 0;
            let mut next = || {
                i = (i + 1) % copies;
                &ws[i]
            };
            let acts = Acts::new(&mut rng, nb * cols);
            let x = vec![0.0f32; nb * cols];
            let mut out = vec![0.0f32; nb * rows];
            let g = cols / QS;
            let t_gemm = time(|| k.gemm(ty, black_box(next()), &x, &acts.view(), nb, &mut out));
            let t_gemv = time(|| {
                let w = next();
                for t in 0..nb {
                    let a = ActsQ8 {
                        qs: &acts.qs[t * cols..(t + 1) * cols],
                        d: &acts.d[t * g..(t + 1) * g],
                        sums: &acts.sums[t * g..(t + 1) * g],
                    };
                    let xt = &x[t * cols..(t + 1) * cols];
                    k.gemv(ty, black_box(w), xt, &a, &mut out[t * rows..(t + 1) * rows]);
                }
            });
            let macs = (rows * cols * nb) as f64;
            println!(
                "{label:>24} {:>14} {:>10.1} {:>9.2} | {:>10.1} {:>9.2}",
                format!("{rows}x{cols}x{nb}"),
                t_gemm * 1e6,
                macs / t_gemm / 1e9,
                t_gemv * 1e6,
                macs / t_gemv / 1e9
            );
        }
    }
}
