//! Hardware layer: small fallible traits (no_std) and their Linux implementation (feature `std`).
#![cfg_attr(not(feature = "std"), no_std)]
#![deny(unsafe_op_in_unsafe_fn)]
