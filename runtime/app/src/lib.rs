//! The parts of the `edgellm` application that other programs and the tests use as a library:
//! the model-image converter and its checks.

pub mod convert;
