//! keybroker-enclave
#![forbid(unsafe_code)]
