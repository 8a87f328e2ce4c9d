//! # keybroker-proxy
//!
//! Runs on the parent instance, outside the enclave. It relays the enclave's
//! typed KMS requests to AWS KMS (the `serve` subcommand, to come) and offers
//! operator tools such as `keybroker-proxy attestation verify`, which checks
//! an NSM attestation document and prints what it attests.
//!
//! The binary (`src/main.rs`) only forwards its arguments and standard
//! streams to [`cli::run`], so everything is testable as a library.
#![forbid(unsafe_code)]

pub mod cli;
