//! Micro benchmark of the gemv kernels on SmolLM2-135M shapes, every tier this CPU has.
//!
//! `cargo bench -p edgellm-kernels --bench gemv` prints GB/s of weights read for a 1536x576 Q4_1
//! gemv, a 576x1536 Q4_1 gemv and the 49152x576 Q8_0 output layer, each hot (same matrix, in
//! cache) and cycling through 256 MB of copies ("cycled"; on CPUs with a smaller last-level
//! cache this streams from memory), plus the time of
//! all the gemvs of one SmolLM2 decode step (30 layers of Q4_1 weights + the Q8_0 output layer).

use std::hint::black_box;
use std::time::Instant;

use edgellm_kernels::{ActsQ8, CpuFeatures, GgmlType, Kernels, Tier, QS};

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// Random blocks of `ty` for `rows x cols`, with ordinary f16 scales.
fn weights(rng: &mut Rng, ty: GgmlType, rows: usize, cols: usize) -> Vec<u8> {
    let bb = ty.block_bytes();
    let n = ty.bytes_for((rows * cols) as u64).unwrap() as usize;
    let mut w: Vec<u8> = (0..n).map(|_| rng.next() as u8).collect();
    if bb <= 4 {
        // Float weights: small finite values.
        return w
            .iter()
            .enumerate()
            .map(|(i, &b)| if i % 2 == 1 { 0x30 | (b & 0x8F) } else { b })
            .collect();
    }
    for blk in w.chunks_exact_mut(bb) {
        blk[0..2].copy_from_slice(&0x2000u16.to_le_bytes());
        blk[2..4].copy_from_slice(&0xA000u16.to_le_bytes());
    }
    w
}

struct Acts {
    qs: Vec<i8>,
    d: Vec<f32>,
    sums: Vec<i32>,
    x: Vec<f32>,
}

impl Acts {
    fn new(k: &Kernels, rng: &mut Rng, n: usize) -> Acts {
        let x: Vec<f32> = (0..n)
            .map(|_| (rng.next() % 2001) as f32 / 1000.0 - 1.0)
            .collect();
        let mut a = Acts {
            qs: vec![0; n],
            d: vec![0.0; n / QS],
            sums: vec![0; n / QS],
            x,
        };
        k.quantize_acts(
            &a.x,
            &mut edgellm_kernels::ActsQ8Mut {
                qs: &mut a.qs,
                d: &mut a.d,
                sums: &mut a.sums,
            },
        );
        a
    }
    fn view(&self) -> ActsQ8<'_> {
        ActsQ8 {
            qs: &self.qs,
            d: &self.d,
            sums: &self.sums,
        }
    }
}

/// Best-of-5 seconds per call of `f`, each sample at least ~0.1 s.
fn time(mut f: impl FnMut()) -> f64 {
    f();
    let t = Instant::now();
    let mut n = 0u32;
    while t.elapsed().as_secs_f64() < 0.05 {
        f();
        n += 1;
    }
    let per = t.elapsed().as_secs_f64() / n as f64;
    let reps = ((0.1 / per) as u32).max(1);
    (0..5)
        .map(|_| {
            let t = Instant::now();
            for _ in 0..reps {
                f();
            }
            t.elapsed().as_secs_f64() / reps as f64
        })
        .fold(f64::INFINITY, f64::min)
}

fn bench_shape(k: &Kernels, ty: GgmlType, rows: usize, cols: usize) {
    let mut rng = Rng(0x1234_5678_9ABC_DEF1);
    let one = weights(&mut rng, ty, rows, cols);
    let bytes = one.len();
    let copies = (256 << 20) / bytes + 1;
    let cold: Vec<Vec<u8>> = (0..copies)
        .map(|_| weights(&mut rng, ty, rows, cols))
        .collect();
    let acts = Acts::new(k, &mut rng, cols);
    let mut out = vec![0.0f32; rows];
    let hot = time(|| k.gemv(ty, black_box(&one), &acts.x, &acts.view(), &mut out));
    let mut i = 0;
    let coldt = time(|| {
        i = (i + 1) % cold.len();
        k.gemv(ty, black_box(&cold[i]), &acts.x, &acts.view(), &mut out)
    });
    println!(
        "{:>12} {:>5} {rows:>6}x{cols:<5} {:>9.1} us hot {:>6.2} GB/s | {:>9.1} us cycled {:>6.2} GB/s",
        k.tier().name(),
        ty.name(),
        hot * 1e6,
        bytes as f64 / hot / 1e9,
        coldt * 1e6,
        bytes as f64 / coldt / 1e9
    );
}

/// The prefill tile as the session runs it: 32 rows times 16 tokens in one `Kernels::gemm`,
/// against 16 gemvs, in multiply-adds per nanosecond.
fn bench_gemm(k: &Kernels, ty: GgmlType, cols: usize) {
    let (rows, nb) = (32, 16);
    let mut rng = Rng(0x0BAD_5EED_1234_5678);
    let w = weights(&mut rng, ty, rows, cols);
    let acts = Acts::new(k, &mut rng, nb * cols);
    let mut out = vec![0.0f32; nb * rows];
    let g = cols / QS;
    let gemm = time(|| k.gemm(ty, black_box(&w), &acts.x, &acts.view(), nb, &mut out));
    let gemvs = time(|| {
        for t in 0..nb {
            let a = ActsQ8 {
                qs: &acts.qs[t * cols..(t + 1) * cols],
                d: &acts.d[t * g..(t + 1) * g],
                sums: &acts.sums[t * g..(t + 1) * g],
            };
            let x = &acts.x[t * cols..(t + 1) * cols];
            k.gemv(ty, black_box(&w), x, &a, &mut out[t * rows..(t + 1) * rows]);
        }
    });
    let macs = (rows * cols * nb) as f64;
    println!(
        "{:>12} {:>5} gemm {rows}x{cols}x{nb} {:>8.1} us {:>6.1} MAC/ns | 16 gemvs {:>8.1} us {:>6.1} MAC/ns",
        k.tier().name(),
        ty.name(),
        gemm * 1e6,
        macs / gemm / 1e9,
        gemvs * 1e6,
        macs / gemvs / 1e9
    );
}

/// All gemvs of one SmolLM2-135M decode step, plus the activation quantizations.
fn bench_decode(k: &Kernels) {
    let mut rng = Rng(0x0DDB_A11C_AFE5_EED5);
    let (dim, kv, ffn, vocab) = (576, 192, 1536, 49152);
    let shapes = [
        (dim, dim),
        (kv, dim),
        (kv, dim),
        (dim, dim),
        (ffn, dim),
        (ffn, dim),
        (dim, ffn),
    ];
    let layers: Vec<Vec<Vec<u8>>> = (0..30)
        .map(|_| {
            shapes
                .iter()
                .map(|&(r, c)| weights(&mut rng, GgmlType::Q4_1, r, c))
                .collect()
        })
        .collect();
    let output = weights(&mut rng, GgmlType::Q8_0, vocab, dim);
    let total: usize = layers.iter().flatten().map(Vec::len).sum::<usize>() + output.len();
    let mut a_dim = Acts::new(k, &mut rng, dim);
    let mut a_ffn = Acts::new(k, &mut rng, ffn);
    let mut out = vec![0.0f32; vocab];
    let t = time(|| {
        for l in &layers {
            for (j, w) in l.iter().enumerate() {
                let (rows, cols) = shapes[j];
                let a = if cols == dim { &mut a_dim } else { &mut a_ffn };
                if j == 0 || j == 3 || j == 4 || j == 6 {
                    k.quantize_acts(
                        &a.x,
                        &mut edgellm_kernels::ActsQ8Mut {
                            qs: &mut a.qs,
                            d: &mut a.d,
                            sums: &mut a.sums,
                        },
                    );
                }
                k.gemv(GgmlType::Q4_1, w, &a.x, &a.view(), &mut out[..rows]);
            }
        }
        k.gemv(GgmlType::Q8_0, &output, &a_dim.x, &a_dim.view(), &mut out);
    });
    println!(
        "{:>12} SmolLM2 decode gemvs: {:.2} ms/token ({:.0} tokens/s bound), {:.1} MB, {:.2} GB/s",
        k.tier().name(),
        t * 1e3,
        1.0 / t,
        total as f64 / 1e6,
        total as f64 / t / 1e9
    );
}

fn main() {
    let f = CpuFeatures::detect();
    let tiers: Vec<Kernels> = Tier::ALL
        .into_iter()
        .filter_map(|t| Kernels::with_tier(t, &f).ok())
        .collect();
    let only: Option<Tier> = std::env::args().nth(1).and_then(|s| s.parse().ok());
    for k in tiers.iter().filter(|k| only.is_none_or(|t| t == k.tier())) {
        println!("# {}", k.describe());
        bench_shape(k, GgmlType::Q4_1, 1536, 576);
        bench_shape(k, GgmlType::Q4_1, 576, 1536);
        bench_shape(k, GgmlType::Q8_0, 49152, 576);
        bench_shape(k, GgmlType::Q4_0, 1536, 576);
        bench_shape(k, GgmlType::Q4_0, 49152, 576);
        bench_shape(k, GgmlType::Q4W, 49152, 576);
        bench_shape(k, GgmlType::Q4W, 1536, 576);
        bench_gemm(k, GgmlType::Q4_0, 576);
        bench_gemm(k, GgmlType::Q4W, 576);
        bench_gemm(k, GgmlType::Q4W, 1536);
        // Qwen2.5-0.5B's layer types (Q4_K_M file).
        bench_gemm(k, GgmlType::Q5_0, 896);
        bench_gemm(k, GgmlType::Q5_0, 576);
        bench_gemm(k, GgmlType::Q4_0, 896);
        bench_gemm(k, GgmlType::Q4_1, 576);
        bench_gemm(k, GgmlType::Q4_K, 4864);
        bench_gemm(k, GgmlType::Q6_K, 4864);
        bench_shape(k, GgmlType::Q5_0, 1536, 576);
        bench_shape(k, GgmlType::Q5_1, 1536, 576);
        bench_shape(k, GgmlType::F16, 1536, 576);
        bench_decode(k);
    }
}
