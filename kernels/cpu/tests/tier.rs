//! The kernel tier chosen at run time is the one the CPU calls for. Cross tests under qemu set
//! `EDGELLM_EXPECT_TIER` per emulated CPU (neon on Cortex-A53/A72, neon-dotprod on Cortex-A76 and
//! Neoverse-N1), proving the dot-product kernels run exactly where the CPU has them.

use edgellm_kernels::{CpuFeatures, Kernels, Tier};

#[test]
fn detected_tier_matches_the_cpu() {
    let k = Kernels::detect();
    match std::env::var("EDGELLM_EXPECT_TIER") {
        Ok(expected) => assert_eq!(k.tier().name(), expected, "kernels: {}", k.describe()),
        Err(_) => assert_eq!(k.tier(), CpuFeatures::detect().best_tier()),
    }
    eprintln!("kernels: {}", k.describe());
}

#[test]
fn a_tier_the_cpu_lacks_is_refused() {
    let f = CpuFeatures::detect();
    for tier in Tier::ALL {
        let r = Kernels::with_tier(tier, &f);
        if f.missing_for(tier).is_none() {
            assert!(r.is_ok(), "{tier:?} should be available");
        } else {
            let err = r.expect_err("refused").to_string();
            assert!(err.contains(tier.name()), "{err}");
        }
    }
}
