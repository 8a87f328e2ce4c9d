//! keybroker-harness
#![forbid(unsafe_code)]
