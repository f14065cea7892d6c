//! The memory budget check: before a session is created, add up what the model image, the KV cache
//! and the arena need, and refuse with a useful message when that exceeds the board's budget or the
//! memory the machine has available.

use anyhow::{bail, Result};
use edgellm_board::Board;
use edgellm_core::model::Config;
use edgellm_core::session::ArenaPlan;

/// Allowance for everything that is not the model or the arena: code, stacks, sampler scratch,
/// tokenizer tables, allocator slack.
pub const OVERHEAD_BYTES: u64 = 16 << 20;

/// What a model needs at a context length.
#[derive(Clone, Copy, Debug)]
pub struct MemoryNeed {
    pub model_bytes: u64,
    pub arena_bytes: u64,
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

/// Checks that `cfg` at `context` tokens fits `board`'s budget (and `available`, the memory the
/// machine has free, when known). On failure the error says what would fit.
pub fn check(
    board: &Board,
    available: Option<u64>,
    model_bytes: u64,
    cfg: &Config,
    context: usize,
) -> Result<MemoryNeed> {
    let need = MemoryNeed {
        model_bytes,
        arena_bytes: ArenaPlan::new(cfg, context).bytes() as u64,
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
        |c: usize| model_bytes + ArenaPlan::new(cfg, c).bytes() as u64 + OVERHEAD_BYTES <= limit;
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
    bail!(
        "the model needs {:.1} MiB (model {:.1} MiB + KV cache and buffers for {context} tokens {:.1} MiB + overhead {:.1} MiB) \
         but {what} is {:.1} MiB, {:.1} MiB short: {advice}",
        mib(need.total()),
        mib(need.model_bytes),
        mib(need.arena_bytes),
        mib(need.overhead_bytes),
        mib(limit),
        mib(need.total() - limit),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use edgellm_core::model::{Arch, RopeStyle};

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
        }
    }

    #[test]
    fn pi_zero_refuses_a_long_context_and_says_what_fits() {
        let b = crate::boards::by_name("pi-zero-2w").unwrap();
        let model = 98_362_432;
        assert!(check(&b, None, model, &smollm2(), 1024).is_ok());
        let err = check(&b, None, model, &smollm2(), 8192)
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
        assert!(check(&b, None, model, &smollm2(), fits).is_ok());
        assert!(check(&b, None, model, &smollm2(), fits + 1).is_err());
    }

    #[test]
    fn available_memory_lowers_the_limit() {
        let b = crate::boards::by_name("host").unwrap();
        let err = check(&b, Some(50 << 20), 98_362_432, &smollm2(), 512)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("available") && err.contains("does not fit"),
            "{err}"
        );
    }
}
