//! The memory budget check: before a session is created, add up what the model image, the KV cache
//! and the arena need, and refuse with a useful message when that exceeds the board's budget or the
//! memory the machine has available.

use anyhow::{bail, Result};
use edgellm_board::Board;
use edgellm_core::model::Config;
use edgellm_core::session::{ArenaPlan, KvType, NumericPath};

/// Allowance for everything that is not the model or the arena: code, stacks, sampler scratch,
/// tokenizer tables, allocator slack.
pub const OVERHEAD_BYTES: u64 = 16 << 20;

/// What a model needs at a context length.
#[derive(Clone, Copy, Debug)]
pub struct MemoryNeed {
    pub model_bytes: u64,
    /// The whole arena, KV cache included.
    pub arena_bytes: u64,
    /// The KV cache's share of the arena.
    pub kv_bytes: u64,
    pub kv_type: KvType,
    pub overhead_bytes: u64,
}

impl MemoryNeed {
    pub fn total(&self) -> u64 {
        self.model_bytes + self.arena_bytes + self.overhead_bytes
    }
}

fn mib(b: u64) -> f64 {
    b as f64 / (1u64 << 20) as f64
}

/// The arena plan of `cfg` at `context` tokens with a `kv` cache (f32: the exact path).
fn plan_for(cfg: &Config, context: usize, kv: KvType) -> ArenaPlan {
    let path = if kv == KvType::F32 {
        NumericPath::Exact
    } else {
        NumericPath::Fast
    };
    ArenaPlan::new(cfg, context, path).with_kv(kv)
}

/// Checks that `cfg` at `context` tokens with a `kv` KV cache (f32 on the exact path) fits
/// `board`'s budget (and `available`, the memory the machine has free, when known). On failure
/// the error says what would fit.
pub fn check(
    board: &Board,
    available: Option<u64>,
    model_bytes: u64,
    cfg: &Config,
    context: usize,
    kv: KvType,
) -> Result<MemoryNeed> {
    let plan = plan_for(cfg, context, kv);
    let need = MemoryNeed {
        model_bytes,
        arena_bytes: plan.bytes() as u64,
        kv_bytes: plan.kv_bytes() as u64,
        kv_type: plan.kv_type(),
        overhead_bytes: OVERHEAD_BYTES,
    };
    let (limit, what) = match available {
        Some(a) if a < board.memory_budget_bytes => {
            (a, "the memory this machine has available".to_string())
        }
        _ => (
            board.memory_budget_bytes,
            format!("the {} budget", board.name),
        ),
    };
    if need.total() <= limit {
        return Ok(need);
    }
    // The arena grows with the context: find the largest context that fits (binary search).
    let fits_at =
        |c: usize| model_bytes + plan_for(cfg, c, kv).bytes() as u64 + OVERHEAD_BYTES <= limit;
    let advice = if fits_at(1) {
        let (mut lo, mut hi) = (1usize, context);
        while hi - lo > 1 {
            let mid = lo + (hi - lo) / 2;
            if fits_at(mid) {
                lo = mid;
            } else {
                hi = mid;
            }
        }
        let fits = lo;
        format!("a context of at most {fits} tokens fits (--context {fits}), or use a smaller format (edgellm convert --format q4 or ternary)")
    } else {
        "the model alone does not fit: use a smaller format (edgellm convert --format q4 or ternary) or a smaller model".to_string()
    };
    // An f16 cache that an int8 one (half the bytes) would replace within the limit.
    let int8_fits = kv == KvType::F16
        && model_bytes + plan_for(cfg, context, KvType::Int8).bytes() as u64 + OVERHEAD_BYTES
            <= limit;
    let advice = if int8_fits {
        format!("an int8 KV cache fits {context} tokens (--kv-cache int8); or {advice}")
    } else {
        advice
    };
    bail!(
        "the model needs {:.1} MiB (model {:.1} MiB + {} KV cache for {context} tokens {:.1} MiB + other buffers {:.1} MiB + overhead {:.1} MiB) \
         but {what} is {:.1} MiB, {:.1} MiB short: {advice}",
        mib(need.total()),
        mib(need.model_bytes),
        need.kv_type.name(),
        mib(need.kv_bytes),
        mib(need.arena_bytes - need.kv_bytes),
        mib(need.overhead_bytes),
        mib(limit),
        mib(need.total() - limit),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use edgellm_core::model::{Arch, FfnAct, RopeStyle};

    const F: KvType = KvType::F16;

    fn smollm2() -> Config {
        Config {
            arch: Arch::Llama,
            n_layers: 30,
            dim: 576,
            n_heads: 9,
            n_kv_heads: 3,
            head_dim: 64,
            ffn_dim: 1536,
            vocab_size: 49152,
            train_context: 8192,
            rope_theta: 100000.0,
            rope_style: RopeStyle::Adjacent,
            rms_eps: 1e-5,
            ffn_act: FfnAct::Silu,
        }
    }

    #[test]
    fn pi_zero_refuses_a_long_context_and_says_what_fits() {
        let b = crate::boards::by_name("pi-zero-2w").unwrap();
        let model = 98_362_432;
        assert!(check(&b, None, model, &smollm2(), 1024, F).is_ok());
        let err = check(&b, None, model, &smollm2(), 16384, F)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("pi-zero-2w budget") && err.contains("--context"),
            "{err}"
        );
        // The advised context really fits, and one more token does not.
        let fits: usize = err
            .split("--context ")
            .nth(1)
            .unwrap()
            .split(')')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        assert!(check(&b, None, model, &smollm2(), fits, F).is_ok());
        let err = check(&b, None, model, &smollm2(), fits + 1, F)
            .unwrap_err()
            .to_string();
        // Just past the f16 limit, the int8 cache fits, and the message says so; it really does.
        assert!(err.contains("--kv-cache int8"), "{err}");
        assert!(check(&b, None, model, &smollm2(), fits + 1, KvType::Int8).is_ok());
        // Far past it, int8 does not help and is not offered.
        let err = check(&b, None, model, &smollm2(), 32768, F)
            .unwrap_err()
            .to_string();
        assert!(!err.contains("--kv-cache int8"), "{err}");
    }

    #[test]
    fn kv_cache_term_follows_its_type() {
        let b = crate::boards::by_name("host").unwrap();
        // 30 layers x 1024 positions x 192 key (and as many value) values.
        let values = 2 * 30 * 1024 * 192;
        let fast = check(&b, None, 1, &smollm2(), 1024, F).unwrap();
        assert_eq!((fast.kv_type, fast.kv_bytes), (KvType::F16, 2 * values));
        let exact = check(&b, None, 1, &smollm2(), 1024, KvType::F32).unwrap();
        assert_eq!((exact.kv_type, exact.kv_bytes), (KvType::F32, 4 * values));
        assert_eq!(
            exact.arena_bytes - fast.arena_bytes,
            exact.kv_bytes - fast.kv_bytes
        );
        // int8: one byte per value and one f32 scale per (layer, KV head, position) row.
        let int8 = check(&b, None, 1, &smollm2(), 1024, KvType::Int8).unwrap();
        let rows = 2 * 30 * 3 * 1024;
        assert_eq!(
            (int8.kv_type, int8.kv_bytes),
            (KvType::Int8, values + 4 * rows)
        );
        assert_eq!(
            fast.arena_bytes - int8.arena_bytes,
            fast.kv_bytes - int8.kv_bytes
        );
        let err = check(&b, Some(100 << 20), 98_362_432, &smollm2(), 8192, F)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("f16 KV cache for 8192 tokens 180.0 MiB"),
            "{err}"
        );
    }

    #[test]
    fn available_memory_lowers_the_limit() {
        let b = crate::boards::by_name("host").unwrap();
        let err = check(&b, Some(50 << 20), 98_362_432, &smollm2(), 512, F)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("available") && err.contains("does not fit"),
            "{err}"
        );
    }
}
