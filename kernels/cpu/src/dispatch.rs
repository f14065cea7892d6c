//! Run-time kernel selection: one table of function pointers per ISA tier, filled from the
//! detected CPU features (or a forced tier), with an explicit scalar fallback for every entry.
//!
//! Invariant: a table entry of tier `T` is only stored by [`Kernels::with_tier`] after it checked
//! that the CPU has every feature `T` needs; that check is what makes calling the `unsafe`
//! `#[target_feature]` kernels through the table sound. Kernels check slice shapes themselves.

use core::fmt;
use core::str::FromStr;

use crate::acts::{ActsQ8, ActsQ8Mut};
use crate::scalar;
use crate::types::GgmlType;

/// A set of kernels for one instruction-set level.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Tier {
    /// Portable Rust, the specification. Always available.
    Scalar,
    /// x86-64 with AVX2, FMA and F16C.
    Avx2,
    /// x86-64 with AVX2, FMA, F16C and AVX-VNNI (`vpdpbusd` in VEX encoding).
    AvxVnni,
    /// x86-64 with AVX2, FMA, F16C and AVX-512 F, BW, VL and VNNI: 512-bit kernels where they
    /// pay, the best 256-bit ones (AVX-VNNI where the CPU has it) elsewhere.
    Avx512,
    /// aarch64 Advanced SIMD (ARMv8.0).
    Neon,
    /// aarch64 Advanced SIMD with the dot-product extension (ARMv8.2 `sdot`).
    NeonDotprod,
}

impl Tier {
    /// Every tier, lowest first.
    pub const ALL: [Tier; 6] = [
        Tier::Scalar,
        Tier::Avx2,
        Tier::AvxVnni,
        Tier::Avx512,
        Tier::Neon,
        Tier::NeonDotprod,
    ];

    /// The name used on the command line and in logs: `scalar`, `avx2`, `avx-vnni`, `avx512`,
    /// `neon`, `neon-dotprod`.
    pub const fn name(self) -> &'static str {
        match self {
            Tier::Scalar => "scalar",
            Tier::Avx2 => "avx2",
            Tier::AvxVnni => "avx-vnni",
            Tier::Avx512 => "avx512",
            Tier::Neon => "neon",
            Tier::NeonDotprod => "neon-dotprod",
        }
    }
}

impl fmt::Display for Tier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Tier {
    type Err = KernelError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Tier::ALL
            .into_iter()
            .find(|t| t.name() == s)
            .ok_or(KernelError::UnknownTier)
    }
}

/// Why a kernel set or a kernel could not be used.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum KernelError {
    /// A tier was asked for that this CPU (or this build's architecture) cannot run.
    TierUnavailable {
        /// The tier asked for.
        tier: Tier,
        /// What it needs that is missing, in words.
        missing: &'static str,
    },
    /// A tier name that is not one of `scalar`, `avx2`, `avx-vnni`, `avx512`, `neon`,
    /// `neon-dotprod`.
    UnknownTier,
    /// No kernel for this tensor type.
    UnsupportedType(GgmlType),
    /// Inconsistent shapes.
    BadShape(&'static str),
}

impl fmt::Display for KernelError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KernelError::TierUnavailable { tier, missing } => write!(
                f,
                "kernel tier `{tier}` needs {missing}; choose a lower tier (`scalar` always works) \
                 or leave the tier unset to use the best one this CPU has"
            ),
            KernelError::UnknownTier => {
                f.write_str(
                    "unknown kernel tier: expected one of scalar, avx2, avx-vnni, avx512, neon, \
                     neon-dotprod",
                )
            }
            KernelError::UnsupportedType(ty) => write!(
                f,
                "no CPU kernel for tensor type {ty}: supported are F32, F16, BF16, Q4_0, Q4_1, \
                 Q5_0, Q5_1, Q8_0 (and the K-quants once built); re-quantize the model to one of them"
            ),
            KernelError::BadShape(what) => write!(f, "bad shape: {what}"),
        }
    }
}

#[cfg(feature = "std")]
impl std::error::Error for KernelError {}

/// Whether this build has the x86 SIMD kernels (x86-64 with the SSE2 float ABI).
const X86_SIMD: bool = cfg!(all(target_arch = "x86_64", target_feature = "sse2"));

/// Whether this build has the NEON kernels (aarch64 with Advanced SIMD).
const ARM_SIMD: bool = cfg!(all(target_arch = "aarch64", target_feature = "neon"));

/// One CPU feature that some tier needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CpuFeature {
    /// x86 AVX2.
    Avx2,
    /// x86 FMA3.
    Fma,
    /// x86 F16C (f16 <-> f32 conversion).
    F16c,
    /// x86 AVX-VNNI (the VEX-encoded `vpdpbusd`; not the AVX-512 form).
    AvxVnni,
    /// x86 AVX-512 Foundation.
    Avx512f,
    /// x86 AVX-512 byte and word instructions.
    Avx512bw,
    /// x86 AVX-512 vector length extensions (EVEX forms of 128- and 256-bit instructions).
    Avx512vl,
    /// x86 AVX-512 VNNI (the EVEX-encoded `vpdpbusd`).
    Avx512vnni,
    /// aarch64 Advanced SIMD.
    Neon,
    /// aarch64 dot product (`sdot`/`udot`).
    Dotprod,
}

/// The CPU features the kernels care about.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct CpuFeatures {
    avx2: bool,
    fma: bool,
    f16c: bool,
    avxvnni: bool,
    avx512f: bool,
    avx512bw: bool,
    avx512vl: bool,
    avx512vnni: bool,
    neon: bool,
    dotprod: bool,
}

impl CpuFeatures {
    /// No features: only the scalar tier can be chosen.
    pub const fn none() -> Self {
        CpuFeatures {
            avx2: false,
            fma: false,
            f16c: false,
            avxvnni: false,
            avx512f: false,
            avx512bw: false,
            avx512vl: false,
            avx512vnni: false,
            neon: false,
            dotprod: false,
        }
    }

    /// The features of the CPU this runs on: detected at run time with `std`; without `std`,
    /// only those the build itself enables (`-C target-feature`), which any CPU running the build
    /// must have. Add others with [`CpuFeatures::assume`].
    pub fn detect() -> Self {
        #[allow(unused_mut)]
        let mut f = Self::none();
        #[cfg(all(feature = "std", target_arch = "x86_64"))]
        {
            f.avx2 = std::is_x86_feature_detected!("avx2");
            f.fma = std::is_x86_feature_detected!("fma");
            f.f16c = std::is_x86_feature_detected!("f16c");
            f.avxvnni = std::is_x86_feature_detected!("avxvnni");
            f.avx512f = std::is_x86_feature_detected!("avx512f");
            f.avx512bw = std::is_x86_feature_detected!("avx512bw");
            f.avx512vl = std::is_x86_feature_detected!("avx512vl");
            f.avx512vnni = std::is_x86_feature_detected!("avx512vnni");
        }
        #[cfg(all(feature = "std", target_arch = "aarch64"))]
        {
            f.neon = std::arch::is_aarch64_feature_detected!("neon");
            f.dotprod = std::arch::is_aarch64_feature_detected!("dotprod");
        }
        #[cfg(not(feature = "std"))]
        {
            f.avx2 = cfg!(target_feature = "avx2");
            f.fma = cfg!(target_feature = "fma");
            f.f16c = cfg!(target_feature = "f16c");
            f.avxvnni = cfg!(target_feature = "avxvnni");
            f.avx512f = cfg!(target_feature = "avx512f");
            f.avx512bw = cfg!(target_feature = "avx512bw");
            f.avx512vl = cfg!(target_feature = "avx512vl");
            f.avx512vnni = cfg!(target_feature = "avx512vnni");
            f.neon = cfg!(target_feature = "neon");
            f.dotprod = cfg!(target_feature = "dotprod");
        }
        f
    }

    /// These features plus `feature`.
    ///
    /// # Safety
    ///
    /// The CPU that runs kernels chosen from the result must really have `feature` (for example
    /// a board whose CPU is known at build time). Kernels selected because of a false claim execute
    /// instructions the CPU does not have: undefined behaviour.
    pub const unsafe fn assume(mut self, feature: CpuFeature) -> Self {
        match feature {
            CpuFeature::Avx2 => self.avx2 = true,
            CpuFeature::Fma => self.fma = true,
            CpuFeature::F16c => self.f16c = true,
            CpuFeature::AvxVnni => self.avxvnni = true,
            CpuFeature::Avx512f => self.avx512f = true,
            CpuFeature::Avx512bw => self.avx512bw = true,
            CpuFeature::Avx512vl => self.avx512vl = true,
            CpuFeature::Avx512vnni => self.avx512vnni = true,
            CpuFeature::Neon => self.neon = true,
            CpuFeature::Dotprod => self.dotprod = true,
        }
        self
    }

    /// Whether `feature` is present.
    pub const fn has(&self, feature: CpuFeature) -> bool {
        match feature {
            CpuFeature::Avx2 => self.avx2,
            CpuFeature::Fma => self.fma,
            CpuFeature::F16c => self.f16c,
            CpuFeature::AvxVnni => self.avxvnni,
            CpuFeature::Avx512f => self.avx512f,
            CpuFeature::Avx512bw => self.avx512bw,
            CpuFeature::Avx512vl => self.avx512vl,
            CpuFeature::Avx512vnni => self.avx512vnni,
            CpuFeature::Neon => self.neon,
            CpuFeature::Dotprod => self.dotprod,
        }
    }

    /// What `tier` needs that these features (or this build's architecture) lack, if anything.
    pub const fn missing_for(&self, tier: Tier) -> Option<&'static str> {
        match tier {
            Tier::Scalar => None,
            Tier::Avx2 | Tier::AvxVnni | Tier::Avx512 if !X86_SIMD => Some(
                "an x86-64 build with the SSE2 float ABI (this build is soft-float or for another \
                 architecture)",
            ),
            Tier::Avx2 if !(self.avx2 && self.fma && self.f16c) => {
                Some("AVX2, FMA and F16C, which this CPU does not report")
            }
            Tier::AvxVnni if !(self.avx2 && self.fma && self.f16c && self.avxvnni) => Some(
                "AVX2, FMA, F16C and AVX-VNNI (`avxvnni`, the VEX-encoded `vpdpbusd`), which this \
                 CPU does not all report",
            ),
            Tier::Avx512
                if !(self.avx2
                    && self.fma
                    && self.f16c
                    && self.avx512f
                    && self.avx512bw
                    && self.avx512vl
                    && self.avx512vnni) =>
            {
                Some(
                    "AVX2, FMA, F16C and AVX-512 F, BW, VL and VNNI, which this CPU does not all \
                     report",
                )
            }
            Tier::Neon | Tier::NeonDotprod if !ARM_SIMD => Some(
                "an aarch64 build with Advanced SIMD (this build is soft-float or for another \
                 architecture)",
            ),
            Tier::Neon if !self.neon => Some("NEON (Advanced SIMD), which this CPU does not report"),
            Tier::NeonDotprod if !(self.neon && self.dotprod) => {
                Some("NEON with the dot-product extension (ARMv8.2 dotprod), which this CPU does not report")
            }
            _ => None,
        }
    }

    /// The best tier these features allow.
    pub const fn best_tier(&self) -> Tier {
        if self.missing_for(Tier::Avx512).is_none() {
            Tier::Avx512
        } else if self.missing_for(Tier::AvxVnni).is_none() {
            Tier::AvxVnni
        } else if self.missing_for(Tier::Avx2).is_none() {
            Tier::Avx2
        } else if self.missing_for(Tier::NeonDotprod).is_none() {
            Tier::NeonDotprod
        } else if self.missing_for(Tier::Neon).is_none() {
            Tier::Neon
        } else {
            Tier::Scalar
        }
    }
}

/// int8-activation gemv: `(weights, activations, out)`, the signature of every `gemv_<type>`.
pub type GemvQ8Fn = unsafe fn(&[u8], &ActsQ8<'_>, &mut [f32]);
/// float-weight gemv on f32 activations: `(weights, x, out)`.
pub type GemvF32wFn = unsafe fn(&[u8], &[f32], &mut [f32]);
/// int8-activation gemm of `nb` tokens: `(weights, activations, nb, out)`, the signature of every
/// `gemm_<type>` (layout in [`crate::scalar::ternary`]).
pub type GemmQ8Fn = unsafe fn(&[u8], &ActsQ8<'_>, usize, &mut [f32]);
type QuantizeFn = unsafe fn(&[f32], &mut ActsQ8Mut<'_>);
type DotFn = unsafe fn(&[f32], &[f32]) -> f32;
type AxpyFn = unsafe fn(f32, &[f32], &mut [f32]);
type SwigluFn = unsafe fn(&mut [f32], &[f32]);

/// The attention kernels over an f16 or int8 KV cache (see [`scalar::attn`]), one tier for all.
#[derive(Clone, Copy)]
struct Attn {
    scores: unsafe fn(&[f32], &[u16], usize, f32, &mut [f32]),
    softmax: unsafe fn(&mut [f32]) -> (f32, f32),
    values: unsafe fn(&[f32], &[u16], usize, &mut [f32]),
    scores_q16: unsafe fn(&[i16], &[i8], usize, &mut [i32]),
    values_i8: unsafe fn(&[f32], &[i8], usize, &mut [f32]),
}

/// A weight type's gemv kernel.
#[derive(Clone, Copy)]
enum Gemv {
    /// Quantized weights times int8 activations.
    Q8(GemvQ8Fn),
    /// Float weights times f32 activations.
    F32w(GemvF32wFn),
}

/// A kernel and the tier it comes from.
#[derive(Clone, Copy)]
struct Entry {
    tier: Tier,
    gemv: Gemv,
}

const fn q8(tier: Tier, f: GemvQ8Fn) -> Option<Entry> {
    Some(Entry {
        tier,
        gemv: Gemv::Q8(f),
    })
}

const fn fw(tier: Tier, f: GemvF32wFn) -> Option<Entry> {
    Some(Entry {
        tier,
        gemv: Gemv::F32w(f),
    })
}

/// The weight types the table has a slot for, in the order `describe` lists them.
const SLOT_TYPES: [GgmlType; 16] = [
    GgmlType::Q4_0,
    GgmlType::Q4_1,
    GgmlType::Q5_0,
    GgmlType::Q5_1,
    GgmlType::Q8_0,
    GgmlType::F16,
    GgmlType::F32,
    GgmlType::BF16,
    GgmlType::Q4_K,
    GgmlType::Q5_K,
    GgmlType::Q6_K,
    GgmlType::T2,
    GgmlType::TQ1_0,
    GgmlType::TQ2_0,
    GgmlType::TQ2W,
    GgmlType::Q4W,
];

/// One function pointer per operation and weight type.
#[derive(Clone, Copy)]
struct Table {
    quantize_acts: (Tier, QuantizeFn),
    dot_f32: (Tier, DotFn),
    axpy_f32: (Tier, AxpyFn),
    swiglu: (Tier, SwigluFn),
    attn: (Tier, Attn),
    /// Wider attention kernels that pay only beside wide gemvs ([`Kernels::for_weights`]).
    attn_wide: Option<(Tier, Attn)>,
    f32: Option<Entry>,
    f16: Option<Entry>,
    bf16: Option<Entry>,
    q4_0: Option<Entry>,
    q4w: Option<Entry>,
    q4_1: Option<Entry>,
    q5_0: Option<Entry>,
    q5_1: Option<Entry>,
    q8_0: Option<Entry>,
    q4_k: Option<Entry>,
    q5_k: Option<Entry>,
    q6_k: Option<Entry>,
    t2: Option<Entry>,
    tq1_0: Option<Entry>,
    tq2_0: Option<Entry>,
    tq2w: Option<Entry>,
    /// Small-batch products; other types run one gemv per token.
    gemm_t2: GemmQ8Fn,
    gemm_tq2_0: GemmQ8Fn,
    gemm_tq2w: GemmQ8Fn,
    /// Batched legacy and Q4W products where the tier has them.
    gemm_q4_0: Option<GemmQ8Fn>,
    gemm_q4_1: Option<GemmQ8Fn>,
    gemm_q5_0: Option<GemmQ8Fn>,
    gemm_q5_1: Option<GemmQ8Fn>,
    gemm_q8_0: Option<GemmQ8Fn>,
    gemm_q4_k: Option<GemmQ8Fn>,
    gemm_q5_k: Option<GemmQ8Fn>,
    gemm_q6_k: Option<GemmQ8Fn>,
    gemm_q4w: Option<GemmQ8Fn>,
}

impl Table {
    fn slot(&self, ty: GgmlType) -> Option<Entry> {
        match ty {
            GgmlType::F32 => self.f32,
            GgmlType::F16 => self.f16,
            GgmlType::BF16 => self.bf16,
            GgmlType::Q4_0 => self.q4_0,
            GgmlType::Q4W => self.q4w,
            GgmlType::Q4_1 => self.q4_1,
            GgmlType::Q5_0 => self.q5_0,
            GgmlType::Q5_1 => self.q5_1,
            GgmlType::Q8_0 => self.q8_0,
            GgmlType::Q4_K => self.q4_k,
            GgmlType::Q5_K => self.q5_k,
            GgmlType::Q6_K => self.q6_k,
            GgmlType::T2 => self.t2,
            GgmlType::TQ1_0 => self.tq1_0,
            GgmlType::TQ2_0 => self.tq2_0,
            GgmlType::TQ2W => self.tq2w,
            _ => None,
        }
    }
}

/// The scalar table: the specification, and the fallback of every other tier.
const SCALAR: Table = Table {
    quantize_acts: (Tier::Scalar, scalar::quantize_acts),
    dot_f32: (Tier::Scalar, scalar::dot_f32),
    axpy_f32: (Tier::Scalar, scalar::axpy_f32),
    swiglu: (Tier::Scalar, scalar::swiglu),
    attn: (
        Tier::Scalar,
        Attn {
            scores: scalar::attn_scores_f16,
            softmax: scalar::softmax_unnorm,
            values: scalar::attn_values_f16,
            scores_q16: scalar::attn_scores_q16,
            values_i8: scalar::attn_values_i8,
        },
    ),
    attn_wide: None,
    f32: fw(Tier::Scalar, scalar::gemv_f32w_f32),
    f16: fw(Tier::Scalar, scalar::gemv_f32w_f16),
    bf16: fw(Tier::Scalar, scalar::gemv_f32w_bf16),
    q4_0: q8(Tier::Scalar, scalar::gemv_q4_0),
    q4w: q8(Tier::Scalar, scalar::q4w::gemv_q4w),
    q4_1: q8(Tier::Scalar, scalar::gemv_q4_1),
    q5_0: q8(Tier::Scalar, scalar::gemv_q5_0),
    q5_1: q8(Tier::Scalar, scalar::gemv_q5_1),
    q8_0: q8(Tier::Scalar, scalar::gemv_q8_0),
    q4_k: q8(Tier::Scalar, scalar::kquants::gemv_q4_k),
    q5_k: q8(Tier::Scalar, scalar::kquants::gemv_q5_k),
    q6_k: q8(Tier::Scalar, scalar::kquants::gemv_q6_k),
    t2: q8(Tier::Scalar, scalar::ternary::gemv_t2),
    tq1_0: q8(Tier::Scalar, scalar::ternary::gemv_tq1_0),
    tq2_0: q8(Tier::Scalar, scalar::ternary::gemv_tq2_0),
    tq2w: q8(Tier::Scalar, scalar::ternary::gemv_tq2w),
    gemm_t2: scalar::ternary::gemm_t2,
    gemm_tq2_0: scalar::ternary::gemm_tq2_0,
    gemm_tq2w: scalar::ternary::gemm_tq2w,
    gemm_q4_0: None,
    gemm_q4_1: None,
    gemm_q5_0: None,
    gemm_q5_1: None,
    gemm_q8_0: None,
    gemm_q4_k: None,
    gemm_q5_k: None,
    gemm_q6_k: None,
    gemm_q4w: None,
};

/// The AVX2 table: AVX2 kernels where they exist, the scalar ones elsewhere.
#[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
fn avx2_table() -> Table {
    use crate::x86;
    let mut t = SCALAR;
    t.quantize_acts = (Tier::Avx2, x86::avx2_quantize_acts);
    t.dot_f32 = (Tier::Avx2, x86::avx2_dot_f32);
    t.axpy_f32 = (Tier::Avx2, x86::avx2_axpy_f32);
    t.swiglu = (Tier::Avx2, x86::avx2_swiglu);
    t.attn = (
        Tier::Avx2,
        Attn {
            scores: x86::avx2_attn_scores_f16,
            softmax: x86::avx2_softmax_unnorm,
            values: x86::avx2_attn_values_f16,
            scores_q16: crate::x86::attn_q16::avx2_attn_scores_q16,
            values_i8: x86::avx2_attn_values_i8,
        },
    );
    t.f32 = fw(Tier::Avx2, x86::avx2_gemv_f32w_f32);
    t.f16 = fw(Tier::Avx2, x86::avx2_gemv_f32w_f16);
    t.bf16 = fw(Tier::Avx2, x86::avx2_gemv_f32w_bf16);
    t.q4_0 = q8(Tier::Avx2, x86::avx2_gemv_q4_0);
    t.q4w = q8(Tier::Avx2, x86::q4w::avx2_gemv_q4w);
    t.q4_1 = q8(Tier::Avx2, x86::avx2_gemv_q4_1);
    t.q5_0 = q8(Tier::Avx2, x86::avx2_gemv_q5_0);
    t.q5_1 = q8(Tier::Avx2, x86::avx2_gemv_q5_1);
    t.q8_0 = q8(Tier::Avx2, x86::avx2_gemv_q8_0);
    t.q4_k = q8(Tier::Avx2, x86::kquants::avx2_gemv_q4_k);
    t.q5_k = q8(Tier::Avx2, x86::kquants::avx2_gemv_q5_k);
    t.q6_k = q8(Tier::Avx2, x86::kquants::avx2_gemv_q6_k);
    // Ternary: the sign/maddubs kernel; its table-lookup variant measured about half as fast here.
    t.t2 = q8(Tier::Avx2, x86::ternary::avx2_gemv_t2);
    t.tq1_0 = q8(Tier::Avx2, x86::ternary::avx2_gemv_tq1_0);
    t.tq2_0 = q8(Tier::Avx2, x86::ternary::avx2_gemv_tq2_0);
    t.tq2w = q8(Tier::Avx2, x86::ternary::avx2_gemv_tq2w);
    t.gemm_t2 = x86::ternary::avx2_gemm_t2;
    t.gemm_tq2_0 = x86::ternary::avx2_gemm_tq2_0;
    t.gemm_tq2w = x86::ternary::avx2_gemm_tq2w;
    t
}

/// The AVX-VNNI table: the AVX2 table with `vpdpbusd` kernels where they pay.
#[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
fn avxvnni_table() -> Table {
    use crate::x86::vnni;
    let mut t = avx2_table();
    t.t2 = q8(Tier::AvxVnni, vnni::avxvnni_gemv_t2);
    t.tq1_0 = q8(Tier::AvxVnni, vnni::avxvnni_gemv_tq1_0);
    t.tq2_0 = q8(Tier::AvxVnni, vnni::avxvnni_gemv_tq2_0);
    t.gemm_t2 = vnni::avxvnni_gemm_t2;
    t.gemm_tq2_0 = vnni::avxvnni_gemm_tq2_0;
    t.gemm_q4_0 = Some(crate::x86::vnni_gemm::avxvnni_gemm_q4_0);
    t.gemm_q4_1 = Some(crate::x86::vnni_gemm::avxvnni_gemm_q4_1);
    t.gemm_q5_0 = Some(crate::x86::vnni_gemm::avxvnni_gemm_q5_0);
    t.gemm_q5_1 = Some(crate::x86::vnni_gemm::avxvnni_gemm_q5_1);
    t.gemm_q8_0 = Some(crate::x86::vnni_gemm::avxvnni_gemm_q8_0);
    t.gemm_q4_k = Some(crate::x86::kquant_gemm::avxvnni_gemm_q4_k);
    t.gemm_q5_k = Some(crate::x86::kquant_gemm::avxvnni_gemm_q5_k);
    t.gemm_q6_k = Some(crate::x86::kquant_gemm::avxvnni_gemm_q6_k);
    t.q4_0 = q8(Tier::AvxVnni, vnni::avxvnni_gemv_q4_0);
    t.q4w = q8(Tier::AvxVnni, crate::x86::q4w::avxvnni_gemv_q4w);
    t.q4_1 = q8(Tier::AvxVnni, vnni::avxvnni_gemv_q4_1);
    t.q5_0 = q8(Tier::AvxVnni, vnni::avxvnni_gemv_q5_0);
    t.q5_1 = q8(Tier::AvxVnni, vnni::avxvnni_gemv_q5_1);
    t.attn.1.scores_q16 = crate::x86::attn_q16::avxvnni_attn_scores_q16;
    t
}

/// The AVX-512 table: the AVX-VNNI table where the CPU has AVX-VNNI (else the AVX2 one), with
/// the 512-bit kernels where they pay: TQ1_0, T2 and TQ2_0, whose 256-bit kernels are bound by
/// the vector ports (the others measured no faster in 512 bits), Q4W, and the prefill gemms; and
/// 512-bit attention kernels held apart, for the models whose gemvs run 512-bit kernels
/// ([`Kernels::for_weights`]).
#[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
fn avx512_table(features: &CpuFeatures) -> Table {
    use crate::x86::avx512;
    let mut t = if features.missing_for(Tier::AvxVnni).is_none() {
        avxvnni_table()
    } else {
        avx2_table()
    };
    t.tq1_0 = q8(Tier::Avx512, avx512::avx512_gemv_tq1_0);
    t.t2 = q8(Tier::Avx512, avx512::avx512_gemv_t2);
    t.tq2_0 = q8(Tier::Avx512, avx512::avx512_gemv_tq2_0);
    t.q4w = q8(Tier::Avx512, crate::x86::q4w::avx512_gemv_q4w);
    t.gemm_t2 = avx512::avx512_gemm_t2;
    t.gemm_tq2_0 = avx512::avx512_gemm_tq2_0;
    t.gemm_q4w = Some(crate::x86::q4w::avx512_gemm_q4w);
    t.attn.1.scores_q16 = crate::x86::attn_q16::avx512_attn_scores_q16;
    t.attn_wide = Some((
        Tier::Avx512,
        Attn {
            scores: crate::x86::avx512_attn::avx512_attn_scores_f16,
            softmax: t.attn.1.softmax,
            values: crate::x86::avx512_attn::avx512_attn_values_f16,
            scores_q16: crate::x86::attn_q16::avx512_attn_scores_q16,
            values_i8: crate::x86::avx512_attn::avx512_attn_values_i8,
        },
    ));
    t
}

/// The NEON table: a NEON kernel for every weight type.
#[cfg(all(target_arch = "aarch64", target_feature = "neon"))]
fn neon_table() -> Table {
    use crate::aarch64 as arm;
    let mut t = SCALAR;
    t.quantize_acts = (Tier::Neon, arm::neon_quantize_acts);
    t.dot_f32 = (Tier::Neon, arm::neon_dot_f32);
    t.axpy_f32 = (Tier::Neon, arm::neon_axpy_f32);
    t.swiglu = (Tier::Neon, arm::neon_swiglu);
    t.attn = (
        Tier::Neon,
        Attn {
            scores: arm::neon_attn_scores_f16,
            softmax: arm::neon_softmax_unnorm,
            values: arm::neon_attn_values_f16,
            scores_q16: arm::neon_attn_scores_q16,
            values_i8: arm::neon_attn_values_i8,
        },
    );
    t.f32 = fw(Tier::Neon, arm::neon_gemv_f32w_f32);
    t.f16 = fw(Tier::Neon, arm::neon_gemv_f32w_f16);
    t.bf16 = fw(Tier::Neon, arm::neon_gemv_f32w_bf16);
    t.q4_0 = q8(Tier::Neon, arm::neon_gemv_q4_0);
    t.q4w = q8(Tier::Neon, arm::q4w::neon_gemv_q4w);
    t.q4_1 = q8(Tier::Neon, arm::neon_gemv_q4_1);
    t.q5_0 = q8(Tier::Neon, arm::neon_gemv_q5_0);
    t.q5_1 = q8(Tier::Neon, arm::neon_gemv_q5_1);
    t.q8_0 = q8(Tier::Neon, arm::neon_gemv_q8_0);
    t.q4_k = q8(Tier::Neon, arm::kquants::neon_gemv_q4_k);
    t.q5_k = q8(Tier::Neon, arm::kquants::neon_gemv_q5_k);
    t.q6_k = q8(Tier::Neon, arm::kquants::neon_gemv_q6_k);
    t.t2 = q8(Tier::Neon, arm::ternary::neon_gemv_t2);
    t.tq1_0 = q8(Tier::Neon, arm::ternary::neon_gemv_tq1_0);
    t.tq2_0 = q8(Tier::Neon, arm::ternary::neon_gemv_tq2_0);
    t.tq2w = q8(Tier::Neon, arm::ternary::neon_gemv_tq2w);
    t.gemm_t2 = arm::ternary::neon_gemm_t2;
    t.gemm_tq2_0 = arm::ternary::neon_gemm_tq2_0;
    t.gemm_tq2w = arm::ternary::neon_gemm_tq2w;
    t.gemm_q4_0 = Some(arm::legacy::neon_gemm_q4_0);
    t.gemm_q4_1 = Some(arm::legacy::neon_gemm_q4_1);
    t.gemm_q5_0 = Some(arm::legacy::neon_gemm_q5_0);
    t.gemm_q5_1 = Some(arm::legacy::neon_gemm_q5_1);
    t.gemm_q8_0 = Some(arm::legacy::neon_gemm_q8_0);
    t.gemm_q4w = Some(arm::q4w::neon_gemm_q4w);
    t.gemm_q4_k = Some(arm::kquants::neon_gemm_q4_k);
    t.gemm_q5_k = Some(arm::kquants::neon_gemm_q5_k);
    t.gemm_q6_k = Some(arm::kquants::neon_gemm_q6_k);
    t
}

/// The NEON + dot-product table: the NEON table with `sdot` kernels where they exist.
#[cfg(all(target_arch = "aarch64", target_feature = "neon"))]
fn dotprod_table() -> Table {
    use crate::aarch64 as arm;
    let mut t = neon_table();
    t.t2 = q8(Tier::NeonDotprod, arm::ternary::neon_dotprod_gemv_t2);
    t.q4_0 = q8(Tier::NeonDotprod, arm::neon_dotprod_gemv_q4_0);
    t.q4_1 = q8(Tier::NeonDotprod, arm::neon_dotprod_gemv_q4_1);
    t.q5_0 = q8(Tier::NeonDotprod, arm::neon_dotprod_gemv_q5_0);
    t.q5_1 = q8(Tier::NeonDotprod, arm::neon_dotprod_gemv_q5_1);
    t.q8_0 = q8(Tier::NeonDotprod, arm::neon_dotprod_gemv_q8_0);
    t.q4w = q8(Tier::NeonDotprod, arm::q4w::neon_dotprod_gemv_q4w);
    t.q4_k = q8(Tier::NeonDotprod, arm::kquants::neon_dotprod_gemv_q4_k);
    t.q5_k = q8(Tier::NeonDotprod, arm::kquants::neon_dotprod_gemv_q5_k);
    t.q6_k = q8(Tier::NeonDotprod, arm::kquants::neon_dotprod_gemv_q6_k);
    t.tq1_0 = q8(Tier::NeonDotprod, arm::ternary::neon_dotprod_gemv_tq1_0);
    t.tq2_0 = q8(Tier::NeonDotprod, arm::ternary::neon_dotprod_gemv_tq2_0);
    t.tq2w = q8(Tier::NeonDotprod, arm::ternary::neon_dotprod_gemv_tq2w);
    t.gemm_t2 = arm::ternary::neon_dotprod_gemm_t2;
    t.gemm_tq2_0 = arm::ternary::neon_dotprod_gemm_tq2_0;
    t.gemm_tq2w = arm::ternary::neon_dotprod_gemm_tq2w;
    t.gemm_q4_0 = Some(arm::legacy::neon_dotprod_gemm_q4_0);
    t.gemm_q4_1 = Some(arm::legacy::neon_dotprod_gemm_q4_1);
    t.gemm_q5_0 = Some(arm::legacy::neon_dotprod_gemm_q5_0);
    t.gemm_q5_1 = Some(arm::legacy::neon_dotprod_gemm_q5_1);
    t.gemm_q8_0 = Some(arm::legacy::neon_dotprod_gemm_q8_0);
    t.gemm_q4w = Some(arm::q4w::neon_dotprod_gemm_q4w);
    t.gemm_q4_k = Some(arm::kquants::neon_dotprod_gemm_q4_k);
    t.gemm_q5_k = Some(arm::kquants::neon_dotprod_gemm_q5_k);
    t.gemm_q6_k = Some(arm::kquants::neon_dotprod_gemm_q6_k);
    t
}

/// The kernel set chosen for this process: build it once at start and pass it around.
#[derive(Clone, Copy)]
pub struct Kernels {
    tier: Tier,
    table: Table,
}

impl fmt::Debug for Kernels {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Kernels")
            .field("tier", &self.tier)
            .field("kernels", &self.describe().as_str())
            .finish()
    }
}

impl Kernels {
    /// The best kernel set for the CPU this runs on (see [`CpuFeatures::detect`]).
    pub fn detect() -> Kernels {
        let f = CpuFeatures::detect();
        Self::with_tier(f.best_tier(), &f).unwrap_or_else(|_| Self::scalar())
    }

    /// The scalar kernels, the specification; they run everywhere.
    pub const fn scalar() -> Kernels {
        Kernels {
            tier: Tier::Scalar,
            table: SCALAR,
        }
    }

    /// The kernels of `tier`, or an error saying what the CPU lacks for it.
    pub fn with_tier(tier: Tier, features: &CpuFeatures) -> Result<Kernels, KernelError> {
        if let Some(missing) = features.missing_for(tier) {
            return Err(KernelError::TierUnavailable { tier, missing });
        }
        let table = match tier {
            Tier::Scalar => SCALAR,
            #[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
            Tier::Avx2 => avx2_table(),
            #[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
            Tier::AvxVnni => avxvnni_table(),
            #[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
            Tier::Avx512 => avx512_table(features),
            #[cfg(all(target_arch = "aarch64", target_feature = "neon"))]
            Tier::Neon => neon_table(),
            #[cfg(all(target_arch = "aarch64", target_feature = "neon"))]
            Tier::NeonDotprod => dotprod_table(),
            #[allow(unreachable_patterns)]
            _ => unreachable!("missing_for refuses tiers of other architectures"),
        };
        Ok(Kernels { tier, table })
    }

    /// The tier this set was built for (some entries may still be scalar: see [`Self::describe`]).
    pub const fn tier(&self) -> Tier {
        self.tier
    }

    /// Which tier's kernel runs gemv for `ty`, or `None` if none does.
    pub fn kernel_tier(&self, ty: GgmlType) -> Option<Tier> {
        self.table.slot(ty).map(|e| e.tier)
    }

    /// Whether [`Self::gemv`] accepts weights of type `ty`.
    pub fn supports(&self, ty: GgmlType) -> bool {
        self.table.slot(ty).is_some()
    }

    /// The layout of the same numbers that these kernels multiply faster than `ty`, where there
    /// is one ([`relayout_into`] makes it): TQ2W for TQ2_0 when its gemv is the `avx2` or a NEON
    /// tier's, and for TQ1_0 when it is the `avx2` tier's.
    /// - TQ2_0 as TQ2W keeps its size. The `avx2` TQ2_0 kernel spends a word broadcast and a
    ///   variable shift per 32 codes that TQ2W's T2 order does without; the NEON TQ2W kernels
    ///   run T2's steps four rows at a time (`cargo xtask cycles`, 256x2560: 7-27% fewer cycles
    ///   per weight than TQ2_0's on the boards' cores).
    /// - TQ1_0's base-3 digits take multiplies to unpack; as TQ2W (22% more bytes) its products
    ///   run about twice as fast on `avx2`. The NEON tiers keep TQ1_0: on a board's cores, all
    ///   at work, a model reads memory about as fast as they unpack it, and its RAM is scarce.
    /// - The `avx-vnni` and `avx512` tiers have kernels of their own for both and keep them.
    pub fn faster_layout(&self, ty: GgmlType) -> Option<GgmlType> {
        match (ty, self.kernel_tier(ty)?) {
            (GgmlType::TQ2_0 | GgmlType::TQ1_0, Tier::Avx2)
            | (GgmlType::TQ2_0, Tier::Neon | Tier::NeonDotprod) => Some(GgmlType::TQ2W),
            _ => None,
        }
    }

    /// One line naming the kernel used per type, for the start-up log, e.g. `avx2: q4_0 q4_1
    /// q5_0 q5_1 q8_0 f16 f32 bf16; missing: q4_k q5_k q6_k; acts dot axpy: avx2; attention:
    /// avx2`.
    pub fn describe(&self) -> Describe {
        let mut d = Describe {
            buf: [0; 192],
            len: 0,
        };
        let _ = fmt::write(&mut d, format_args!("{}", DescribeArgs(self)));
        d
    }

    /// Quantizes activations `x` into `out` (rule in [`crate::acts`]; bit-exact on every tier).
    pub fn quantize_acts(&self, x: &[f32], out: &mut ActsQ8Mut<'_>) {
        // SAFETY: table invariant (module docs): the CPU has the features of this entry's tier.
        unsafe { (self.table.quantize_acts.1)(x, out) }
    }

    /// `out[r] = Σ_c W[r][c] · x[c]` for the `out.len()` rows of type `ty` in `w`.
    ///
    /// Quantized types read `acts` (made from `x` by [`Self::quantize_acts`]); float types
    /// (F32, F16, BF16) read `x`. Panics on a type [`Self::supports`] refuses and on bad shapes.
    pub fn gemv(&self, ty: GgmlType, w: &[u8], x: &[f32], acts: &ActsQ8<'_>, out: &mut [f32]) {
        let Some(e) = self.table.slot(ty) else {
            panic!("{}", KernelError::UnsupportedType(ty));
        };
        match e.gemv {
            // SAFETY: table invariant (module docs): the CPU has the features of this entry's tier.
            Gemv::Q8(f) => unsafe { f(w, acts, out) },
            // SAFETY: as above.
            Gemv::F32w(f) => unsafe { f(w, x, out) },
        }
    }

    /// Whether [`Self::gemm`] of `ty` is a kernel of its own, worth calling on tiles of rows for
    /// several tokens: T2 and TQ2_0 (each weight unpacked once for several tokens, except NEON's
    /// T2, which runs its gemv per token on the tile), the legacy types (Q4_0 to Q8_0) on the
    /// `avx-vnni` and NEON kernels, the K-quants Q4_K, Q5_K and Q6_K on the same, Q4W on the
    /// `avx512` and NEON ones; for every other type it is one [`Self::gemv`] per token.
    pub fn gemm_batches(&self, ty: GgmlType) -> bool {
        self.batched_gemm(ty).is_some()
    }

    /// The table's batched gemm of `ty`, where it has one.
    fn batched_gemm(&self, ty: GgmlType) -> Option<GemmQ8Fn> {
        match ty {
            GgmlType::T2 => Some(self.table.gemm_t2),
            GgmlType::TQ2_0 => Some(self.table.gemm_tq2_0),
            GgmlType::TQ2W => Some(self.table.gemm_tq2w),
            GgmlType::Q4_0 => self.table.gemm_q4_0,
            GgmlType::Q4_1 => self.table.gemm_q4_1,
            GgmlType::Q5_0 => self.table.gemm_q5_0,
            GgmlType::Q5_1 => self.table.gemm_q5_1,
            GgmlType::Q8_0 => self.table.gemm_q8_0,
            GgmlType::Q4_K => self.table.gemm_q4_k,
            GgmlType::Q5_K => self.table.gemm_q5_k,
            GgmlType::Q6_K => self.table.gemm_q6_k,
            GgmlType::Q4W => self.table.gemm_q4w,
            _ => None,
        }
    }

    /// [`Self::gemv`] for `nb` tokens: `x` holds `nb` rows of `n` values and `acts` their
    /// quantizations (`nb * n` values; may be empty for float types), `out` holds `nb` rows of
    /// results, `out[t * rows + r]`. Every result has the bits [`Self::gemv`] gives for its token;
    /// T2, TQ2_0 and the types [`Self::gemm_batches`] lists unpack each weight once for several
    /// tokens, other types run one gemv per token. Panics like [`Self::gemv`].
    pub fn gemm(
        &self,
        ty: GgmlType,
        w: &[u8],
        x: &[f32],
        acts: &ActsQ8<'_>,
        nb: usize,
        out: &mut [f32],
    ) {
        let f = match self.batched_gemm(ty) {
            Some(f) => f,
            None => {
                assert!(nb > 0 && x.len().is_multiple_of(nb) && out.len().is_multiple_of(nb));
                let (n, rows) = (x.len() / nb, out.len() / nb);
                for t in 0..nb {
                    let a = if acts.is_empty() {
                        *acts
                    } else {
                        scalar::ternary::token_acts(acts, n, t)
                    };
                    let xt = &x[t * n..(t + 1) * n];
                    self.gemv(ty, w, xt, &a, &mut out[t * rows..(t + 1) * rows]);
                }
                return;
            }
        };
        // SAFETY: table invariant (module docs): these entries come from the table's tier.
        unsafe { f(w, acts, nb, out) }
    }

    /// The reference product (`--exact`): [`scalar::gemv_exact`], the same on every tier.
    /// Panics on an unsupported type or bad shapes.
    pub fn gemv_exact(
        &self,
        ty: GgmlType,
        w: &[u8],
        x: &[f32],
        out: &mut [f32],
        row_scratch: &mut [f32],
    ) {
        if let Err(e) = scalar::gemv_exact(ty, w, x, out, row_scratch) {
            panic!("{e}");
        }
    }

    /// Dequantizes `dst.len()` values of type `ty` (e.g. an embedding row): the scalar kernel.
    pub fn dequantize_row(
        &self,
        ty: GgmlType,
        src: &[u8],
        dst: &mut [f32],
    ) -> Result<(), KernelError> {
        scalar::dequantize_row(ty, src, dst)
    }

    /// `Σ a[i] b[i]`.
    pub fn dot_f32(&self, a: &[f32], b: &[f32]) -> f32 {
        // SAFETY: table invariant (module docs).
        unsafe { (self.table.dot_f32.1)(a, b) }
    }

    /// `y += a * x` (bit-exact on every tier).
    pub fn axpy_f32(&self, a: f32, x: &[f32], y: &mut [f32]) {
        // SAFETY: table invariant (module docs).
        unsafe { (self.table.axpy_f32.1)(a, x, y) }
    }

    /// [`scalar::swiglu`]: `g = silu(g) * u` in place, bit-exact on every tier (the SIMD ones
    /// port `libm::expf` lane by lane). Panics if the lengths differ.
    pub fn swiglu(&self, g: &mut [f32], u: &[f32]) {
        // SAFETY: table invariant (module docs).
        unsafe { (self.table.swiglu.1)(g, u) }
    }

    /// RMS normalization ([`scalar::rmsnorm`] on every tier for now).
    pub fn rmsnorm(&self, x: &[f32], weight: &[f32], eps: f32, out: &mut [f32]) {
        scalar::rmsnorm(x, weight, eps, out)
    }

    /// Softmax in place ([`scalar::softmax_inplace`] on every tier for now).
    pub fn softmax_inplace(&self, x: &mut [f32]) {
        scalar::softmax_inplace(x)
    }

    /// These kernels for a model whose weight matrices have the types `weights`: where any of
    /// them runs a kernel of the `avx512` tier, the 512-bit attention kernels too. A core that
    /// runs 512-bit multiply-adds lowers its clock for a while, which the gemvs of such a model
    /// already pay and 512-bit attention then wins back; beside 256-bit gemvs it made a decode
    /// slower (see `x86/avx512_attn.rs`). Otherwise the kernels unchanged.
    #[must_use]
    pub fn for_weights(mut self, weights: impl IntoIterator<Item = GgmlType>) -> Self {
        if let Some(wide) = self.table.attn_wide {
            if weights
                .into_iter()
                .any(|ty| self.kernel_tier(ty) == Some(wide.0))
            {
                self.table.attn = wide;
            }
        }
        self
    }

    /// The tier of the attention kernels below.
    pub const fn attn_tier(&self) -> Tier {
        self.table.attn.0
    }

    /// [`scalar::attn_scores_f16`]: scores `[g, n]` of queries `q` `[g, hd]` against f16 keys
    /// `[n, hd]`, times `scale`. Panics on bad shapes.
    pub fn attn_scores_f16(
        &self,
        q: &[f32],
        keys: &[u16],
        hd: usize,
        scale: f32,
        scores: &mut [f32],
    ) {
        // SAFETY: table invariant (module docs).
        unsafe { (self.table.attn.1.scores)(q, keys, hd, scale, scores) }
    }

    /// [`scalar::softmax_unnorm`]: `x[i] = exp(x[i] - max)`; returns `(max, Σ x[i])`.
    pub fn softmax_unnorm(&self, x: &mut [f32]) -> (f32, f32) {
        // SAFETY: table invariant (module docs).
        unsafe { (self.table.attn.1.softmax)(x) }
    }

    /// [`scalar::attn_values_f16`]: `out` `[g, hd]` = weights `[g, n]` times f16 values
    /// `[n, hd]`. Panics on bad shapes.
    pub fn attn_values_f16(&self, weights: &[f32], values: &[u16], hd: usize, out: &mut [f32]) {
        // SAFETY: table invariant (module docs).
        unsafe { (self.table.attn.1.values)(weights, values, hd, out) }
    }

    /// [`scalar::attn_scores_q16`]: exact i32 scores `[g, n]` of int16 queries `[g, hd]`
    /// against int8 keys `[n, hd]` (the scales are the caller's). Panics on bad shapes.
    pub fn attn_scores_q16(&self, q: &[i16], keys: &[i8], hd: usize, scores: &mut [i32]) {
        // SAFETY: table invariant (module docs).
        unsafe { (self.table.attn.1.scores_q16)(q, keys, hd, scores) }
    }

    /// [`scalar::attn_values_i8`]: [`Kernels::attn_values_f16`] over int8 values (their row
    /// scales folded into `weights` by the caller). Panics on bad shapes.
    pub fn attn_values_i8(&self, weights: &[f32], values: &[i8], hd: usize, out: &mut [f32]) {
        // SAFETY: table invariant (module docs).
        unsafe { (self.table.attn.1.values_i8)(weights, values, hd, out) }
    }
}

/// Rewrites the blocks of a tensor of type `from` in place as type `to`, the same numbers in
/// another layout of the same size ([`Kernels::faster_layout`]): TQ2_0 to TQ2W is the only such
/// pair. Errors, with `w` unchanged, for any other pair ([`KernelError::UnsupportedType`] of
/// `to`) or when `w` is not whole blocks ([`KernelError::BadShape`]).
pub fn relayout(from: GgmlType, to: GgmlType, w: &mut [u8]) -> Result<(), KernelError> {
    match (from, to) {
        (GgmlType::TQ2_0, GgmlType::TQ2W) => {
            if !w.len().is_multiple_of(to.block_bytes()) {
                return Err(KernelError::BadShape("TQ2_0 bytes are not whole blocks"));
            }
            scalar::ternary::tq2w_from_tq2_0(w);
            Ok(())
        }
        _ => Err(KernelError::UnsupportedType(to)),
    }
}

/// The bytes that `len` bytes of blocks of type `from` take as type `to` ([`relayout_into`]), or
/// `None` for a pair it does not convert or a length that is not whole blocks.
pub fn relaid_len(from: GgmlType, to: GgmlType, len: usize) -> Option<usize> {
    let pair = matches!(
        (from, to),
        (GgmlType::TQ2_0 | GgmlType::TQ1_0, GgmlType::TQ2W)
    );
    (pair && len.is_multiple_of(from.block_bytes()))
        .then(|| len / from.block_bytes() * to.block_bytes())
}

/// Writes the blocks of type `from` in `src` into `dst` as type `to`, the same numbers in
/// another layout ([`Kernels::faster_layout`]): TQ2_0 to TQ2W (the same size) and TQ1_0 to TQ2W
/// (66 bytes for every 54). `dst` must be [`relaid_len`] bytes long. Errors, with `dst`
/// unchanged, for any other pair ([`KernelError::UnsupportedType`] of `to`) or other lengths
/// ([`KernelError::BadShape`]).
pub fn relayout_into(
    from: GgmlType,
    to: GgmlType,
    src: &[u8],
    dst: &mut [u8],
) -> Result<(), KernelError> {
    match relaid_len(from, to, src.len()) {
        None if relaid_len(from, to, from.block_bytes()).is_none() => {
            Err(KernelError::UnsupportedType(to))
        }
        Some(n) if n == dst.len() => {
            if from == GgmlType::TQ1_0 {
                scalar::ternary::tq2w_from_tq1_0(src, dst);
            } else {
                dst.copy_from_slice(src);
                scalar::ternary::tq2w_from_tq2_0(dst);
            }
            Ok(())
        }
        _ => Err(KernelError::BadShape(
            "relayout: the bytes are not whole blocks, or the output is not their size",
        )),
    }
}

/// Lower-case type names for [`Kernels::describe`].
fn lower(ty: GgmlType) -> &'static str {
    match ty {
        GgmlType::F32 => "f32",
        GgmlType::F16 => "f16",
        GgmlType::BF16 => "bf16",
        GgmlType::Q4_0 => "q4_0",
        GgmlType::Q4_1 => "q4_1",
        GgmlType::Q5_0 => "q5_0",
        GgmlType::Q5_1 => "q5_1",
        GgmlType::Q8_0 => "q8_0",
        GgmlType::Q4_K => "q4_k",
        GgmlType::Q5_K => "q5_k",
        GgmlType::Q6_K => "q6_k",
        GgmlType::T2 => "t2",
        GgmlType::Q4W => "q4w",
        GgmlType::TQ1_0 => "tq1_0",
        GgmlType::TQ2_0 => "tq2_0",
        GgmlType::TQ2W => "tq2w",
        _ => "?",
    }
}

struct DescribeArgs<'a>(&'a Kernels);

impl fmt::Display for DescribeArgs<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let k = self.0;
        let mut first = true;
        // Highest tier first: the kernels of the chosen tier, then any fallbacks.
        for tier in Tier::ALL.into_iter().rev() {
            let mut any = false;
            for ty in SLOT_TYPES
                .into_iter()
                .filter(|&t| k.kernel_tier(t) == Some(tier))
            {
                if !any {
                    write!(f, "{}{tier}:", if first { "" } else { "; " })?;
                    first = false;
                    any = true;
                }
                write!(f, " {}", lower(ty))?;
            }
        }
        let mut any = false;
        for ty in SLOT_TYPES.into_iter().filter(|&t| !k.supports(t)) {
            if !any {
                write!(f, "{}missing:", if first { "" } else { "; " })?;
                first = false;
                any = true;
            }
            write!(f, " {}", lower(ty))?;
        }
        write!(f, "; acts dot axpy: {}", k.table.quantize_acts.0)?;
        write!(f, "; attention: {}", k.table.attn.0)
    }
}

/// The text of [`Kernels::describe`], held without allocation; it implements `Display`.
#[derive(Clone, Copy)]
pub struct Describe {
    buf: [u8; 192],
    len: usize,
}

impl Describe {
    /// The text.
    pub fn as_str(&self) -> &str {
        core::str::from_utf8(&self.buf[..self.len]).unwrap_or("?")
    }
}

impl fmt::Write for Describe {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let end = self.len + s.len();
        if end > self.buf.len() {
            return Err(fmt::Error);
        }
        self.buf[self.len..end].copy_from_slice(s.as_bytes());
        self.len = end;
        Ok(())
    }
}

impl fmt::Display for Describe {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for Describe {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}
