//! One kernel call on random data, between two marker calls, for `cargo xtask cycles`: run under
//! `qemu-aarch64 -d in_asm,exec,nochain`, the blocks executed between the markers are exactly the
//! kernel's (the dispatch included), each with the number of times it ran.
//!
//! `trace_kernel TIER TYPE ROWS COLS [TOKENS]`: a gemv of ROWS x COLS weights of TYPE (a GGUF
//! type name, e.g. T2, Q4W, Q4_0) through TIER's kernels, or with TOKENS > 1 a gemm of that many
//! tokens. TYPE `T2-LUT` (aarch64) runs the NEON table-lookup T2 gemv, which no tier dispatches.
//! TYPE `ATTN-F16` or `ATTN-I8` runs the attention of one KV head of a decode step over an f16
//! or int8 cache as the session does it (scores, softmax, weighted values, and for int8 the
//! query's rounding and the scales), with ROWS cached positions, COLS the head size and TOKENS
//! the query heads of the group.
//! It prints the markers' addresses (`begin 0x...`, `end 0x...`) and the weights' size (`bytes
//! N`) for the trace reader.

use std::hint::black_box;

use edgellm_kernels::types::ALL_TYPES;
use edgellm_kernels::{ActsQ8, ActsQ8Mut, CpuFeatures, GgmlType, Kernels, Tier, QS};

/// Marks the start of the traced call.
#[inline(never)]
#[no_mangle]
pub extern "C" fn edgellm_trace_begin() {
    black_box(1u32);
}

/// Marks its end.
#[inline(never)]
#[no_mangle]
pub extern "C" fn edgellm_trace_end() {
    black_box(2u64);
}

/// Random bytes; blocks with f16 scales get ordinary scales in their first four bytes (the
/// kernels have no data-dependent branches, so only the shape matters for the trace).
fn weights(seed: &mut u64, ty: GgmlType, rows: usize, cols: usize) -> Vec<u8> {
    let n = ty
        .bytes_for((rows * cols) as u64)
        .expect("COLS must be a multiple of the type's block") as usize;
    let mut w: Vec<u8> = (0..n)
        .map(|_| {
            *seed ^= *seed << 13;
            *seed ^= *seed >> 7;
            *seed ^= *seed << 17;
            *seed as u8
        })
        .collect();
    let bb = ty.block_bytes();
    if bb > 4 {
        for blk in w.chunks_exact_mut(bb) {
            blk[0..2].copy_from_slice(&0x2000u16.to_le_bytes());
            blk[2..4].copy_from_slice(&0xA000u16.to_le_bytes());
        }
    }
    w
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 4 {
        eprintln!("usage: trace_kernel TIER TYPE ROWS COLS [TOKENS]");
        std::process::exit(2);
    }
    let tier: Tier = args[0].parse().unwrap_or_else(|e| panic!("{e}"));
    let num = |s: &str| -> usize { s.parse().unwrap_or_else(|_| panic!("not a number: {s}")) };
    if let Some(cache) = args[1].strip_prefix("ATTN-") {
        let g = args.get(4).map_or(1, |s| num(s));
        return attention(tier, cache, num(&args[2]), num(&args[3]), g);
    }
    let lut = args[1].eq_ignore_ascii_case("T2-LUT");
    let name = if lut { "T2" } else { args[1].as_str() };
    let ty = ALL_TYPES
        .into_iter()
        .find(|t| t.name().eq_ignore_ascii_case(name))
        .unwrap_or_else(|| panic!("unknown type {}", args[1]));
    let (rows, cols) = (num(&args[2]), num(&args[3]));
    let nb = args.get(4).map_or(1, |s| num(s));
    let k = Kernels::with_tier(tier, &CpuFeatures::detect()).unwrap_or_else(|e| panic!("{e}"));
    let mut seed = 0x9E37_79B9_7F4A_7C15u64;
    let w = weights(&mut seed, ty, rows, cols);
    let x: Vec<f32> = (0..nb * cols)
        .map(|i| ((i * 7919) % 2001) as f32 / 1000.0 - 1.0)
        .collect();
    let (mut qs, mut d, mut sums) = (
        vec![0i8; nb * cols],
        vec![0f32; nb * cols / QS],
        vec![0i32; nb * cols / QS],
    );
    for t in 0..nb {
        let g = cols / QS;
        k.quantize_acts(
            &x[t * cols..(t + 1) * cols],
            &mut ActsQ8Mut {
                qs: &mut qs[t * cols..(t + 1) * cols],
                d: &mut d[t * g..(t + 1) * g],
                sums: &mut sums[t * g..(t + 1) * g],
            },
        );
    }
    let acts = ActsQ8 {
        qs: &qs,
        d: &d,
        sums: &sums,
    };
    let mut out = vec![0f32; nb * rows];
    println!(
        "begin {:#x} end {:#x} bytes {} kernels {}",
        edgellm_trace_begin as extern "C" fn() as usize,
        edgellm_trace_end as extern "C" fn() as usize,
        w.len(),
        k.describe()
    );
    edgellm_trace_begin();
    if lut {
        run_lut(&w, &acts, &mut out);
    } else if nb == 1 {
        k.gemv(ty, black_box(&w), &x, &acts, &mut out);
    } else {
        k.gemm(ty, black_box(&w), &x, &acts, nb, &mut out);
    }
    edgellm_trace_end();
    black_box(&out);
}

#[cfg(target_arch = "aarch64")]
fn run_lut(w: &[u8], acts: &ActsQ8<'_>, out: &mut [f32]) {
    // SAFETY: every aarch64 CPU this runs on has NEON (the target's baseline).
    unsafe { edgellm_kernels::aarch64::ternary::neon_gemv_t2_lut(black_box(w), acts, out) }
}

#[cfg(not(target_arch = "aarch64"))]
fn run_lut(_: &[u8], _: &ActsQ8<'_>, _: &mut [f32]) {
    panic!("T2-LUT is the aarch64 table-lookup kernel");
}

/// One KV head's attention as the session runs it on the fast path, between the markers.
fn attention(tier: Tier, cache: &str, n: usize, hd: usize, g: usize) {
    use edgellm_kernels::scalar::{f32_to_f16_row, quantize_row_i16, quantize_row_i8};
    let k = Kernels::with_tier(tier, &CpuFeatures::detect()).unwrap_or_else(|e| panic!("{e}"));
    let val = |i: usize| ((i * 7919) % 2001) as f32 / 1000.0 - 1.0;
    let q: Vec<f32> = (0..g * hd).map(val).collect();
    let kv: Vec<f32> = (0..n * hd).map(|i| val(i * 3 + 1)).collect();
    let scale = 1.0 / (hd as f32).sqrt();
    let (mut scores, mut out) = (vec![0f32; g * n], vec![0f32; g * hd]);
    let (mut k16, mut k8) = (vec![0u16; n * hd], vec![0i8; n * hd]);
    let mut ks = vec![0f32; n];
    f32_to_f16_row(&kv, &mut k16);
    for (r, (x, y)) in kv.chunks(hd).zip(k8.chunks_mut(hd)).enumerate() {
        ks[r] = quantize_row_i8(x, y);
    }
    let (mut q16, mut qd, mut isums) = (vec![0i16; g * hd], vec![0f32; g], vec![0i32; g * n]);
    println!(
        "begin {:#x} end {:#x} bytes {} kernels {}",
        edgellm_trace_begin as extern "C" fn() as usize,
        edgellm_trace_end as extern "C" fn() as usize,
        2 * n * hd * if cache == "F16" { 2 } else { 1 },
        k.describe()
    );
    edgellm_trace_begin();
    match cache {
        "F16" => {
            k.attn_scores_f16(black_box(&q), &k16, hd, scale, &mut scores);
            for row in scores.chunks_mut(n) {
                black_box(k.softmax_unnorm(row));
            }
            k.attn_values_f16(&scores, &k16, hd, &mut out);
        }
        "I8" => {
            for ((x, y), d) in q.chunks(hd).zip(q16.chunks_mut(hd)).zip(&mut qd) {
                *d = quantize_row_i16(x, y);
            }
            k.attn_scores_q16(black_box(&q16), &k8, hd, &mut isums);
            for ((row, irow), &dq) in scores.chunks_mut(n).zip(isums.chunks(n)).zip(&qd) {
                for ((s, &i), &dk) in row.iter_mut().zip(irow).zip(&ks) {
                    *s = (i as f32 * (dq * dk)) * scale;
                }
            }
            for row in scores.chunks_mut(n) {
                black_box(k.softmax_unnorm(row));
                row.iter_mut().zip(&ks).for_each(|(w, d)| *w *= d);
            }
            k.attn_values_i8(&scores, &k8, hd, &mut out);
        }
        _ => panic!("ATTN-F16 or ATTN-I8, not ATTN-{cache}"),
    }
    edgellm_trace_end();
    black_box(&out);
}
