//! Helpers shared by the kernel test suites: a small seeded generator for reproducible data,
//! int8 activations with one scale per 16 values, block scales, and the CPU feature checks that
//! decide whether a SIMD kernel's tests run.
#![allow(dead_code)] // each suite uses a different subset

/// xorshift64*: small, seeded, reproducible, with no dev-dependencies.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32
    }
    /// Roughly normal, mean 0, deviation `s`.
    pub fn normal(&mut self, s: f32) -> f32 {
        let u: f32 = (0..4).map(|_| self.unit()).sum::<f32>() - 2.0;
        u * s * 1.7
    }
    pub fn fill_bytes(&mut self, b: &mut [u8]) {
        for v in b {
            *v = self.next_u64() as u8;
        }
    }
    /// A finite f16 bit pattern: random sign and mantissa, exponent field 1..=17 (about 6e-5 to 8).
    pub fn sane_f16(&mut self) -> u16 {
        let sign = (self.next_u64() as u16 & 1) << 15;
        let exp = (1 + self.below(17) as u16) << 10;
        let mant = self.next_u64() as u16 & 0x3FF;
        sign | exp | mant
    }
}

use edgellm_kernels::{ActsQ8, CpuFeatures, Kernels, Tier};
use half::f16;

/// Values per activation scale group.
pub const QS: usize = 16;

/// Owned quantized activations.
pub struct Acts {
    pub qs: Vec<i8>,
    pub d: Vec<f32>,
    pub sums: Vec<i32>,
}

impl Acts {
    /// The [`ActsQ8`] rule per group of 16: `d = amax / 127`, `q = round_ties_even(x / d)`.
    pub fn quantize(x: &[f32]) -> Acts {
        assert!(x.len().is_multiple_of(QS));
        let mut a = Acts {
            qs: vec![0; x.len()],
            d: vec![0.0; x.len() / QS],
            sums: vec![0; x.len() / QS],
        };
        for (g, xg) in x.chunks_exact(QS).enumerate() {
            let amax = xg.iter().fold(0.0f32, |m, v| m.max(v.abs()));
            let d = amax / 127.0;
            if d < f32::MIN_POSITIVE {
                continue;
            }
            let id = 1.0 / d;
            for (j, &v) in xg.iter().enumerate() {
                let q = (v * id).round_ties_even() as i32;
                a.qs[g * QS + j] = q as i8;
                a.sums[g] += q;
            }
            a.d[g] = d;
        }
        a
    }
    pub fn view(&self) -> ActsQ8<'_> {
        ActsQ8 {
            qs: &self.qs,
            d: &self.d,
            sums: &self.sums,
        }
    }
}

/// How f16 block scales are chosen.
#[derive(Clone, Copy, Debug)]
pub enum Scale {
    Typical,
    Zero,
    Negative,
    Subnormal,
    Max,
}

pub fn scale_bits(rng: &mut Rng, s: Scale) -> u16 {
    match s {
        Scale::Typical => f16::from_f32(rng.normal(0.05)).to_bits(),
        Scale::Zero => 0,
        Scale::Negative => f16::from_f32(-(rng.unit() * 0.1 + 1e-3)).to_bits(),
        Scale::Subnormal => (1 + rng.below(0x3FF) as u16) | ((rng.below(2) as u16) << 15),
        Scale::Max => 0x7BFF | ((rng.below(2) as u16) << 15),
    }
}

/// The bit patterns of `v`, for exact comparisons.
pub fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

#[cfg(target_arch = "x86_64")]
pub fn has_avx2() -> bool {
    std::is_x86_feature_detected!("avx2")
        && std::is_x86_feature_detected!("fma")
        && std::is_x86_feature_detected!("f16c")
}

/// The AVX-VNNI kernels must never run on a CPU without `avxvnni` (they skip there).
#[cfg(target_arch = "x86_64")]
pub fn has_avxvnni() -> bool {
    has_avx2() && std::is_x86_feature_detected!("avxvnni")
}

/// The AVX-512 kernels must never run on a CPU without AVX-512 F, BW, VL and VNNI.
#[cfg(target_arch = "x86_64")]
pub fn has_avx512() -> bool {
    has_avx2()
        && std::is_x86_feature_detected!("avx512f")
        && std::is_x86_feature_detected!("avx512bw")
        && std::is_x86_feature_detected!("avx512vl")
        && std::is_x86_feature_detected!("avx512vnni")
}

#[cfg(target_arch = "aarch64")]
pub fn has_neon() -> bool {
    std::arch::is_aarch64_feature_detected!("neon")
}

/// The dotprod kernels must never run on a CPU without `sdot` (e.g. under `qemu -cpu cortex-a53`).
#[cfg(target_arch = "aarch64")]
pub fn has_dotprod() -> bool {
    has_neon() && std::arch::is_aarch64_feature_detected!("dotprod")
}

/// Every kernel set this machine can run (the scalar specification's always).
pub fn tiers() -> Vec<Kernels> {
    let f = CpuFeatures::detect();
    Tier::ALL
        .into_iter()
        .filter_map(|t| Kernels::with_tier(t, &f).ok())
        .collect()
}
