//! Run-time kernel selection: one table of function pointers per ISA tier, filled from the
//! detected CPU features (or a forced tier), with an explicit scalar fallback for every entry.
