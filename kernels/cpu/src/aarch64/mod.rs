//! NEON kernels for aarch64: none yet. The dispatch table maps the `neon` and `neon-dotprod` tiers
//! to the scalar kernels explicitly until they land here (same file list as `x86`).
