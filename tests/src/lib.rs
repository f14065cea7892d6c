//! Helpers shared by the end-to-end tests: where the real model and test vectors are cached.
