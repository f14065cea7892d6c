//! The `edgellm` command line.
fn main() {}
