//! The exit codes of `keybroker-proxy`, in one table. Every command maps
//! its outcome here; clap's own usage errors use the same 2.

/// Success: the document verified, the server shut down cleanly, the key
/// policy was written.
pub const OK: u8 = 0;
/// `attestation verify`: the document was read but does not verify.
pub const INVALID: u8 = 1;
/// `serve`: the server failed (bind, runtime).
pub const FAILURE: u8 = 1;
/// Bad usage, invalid configuration or input, or an I/O error (clap's
/// convention for usage errors).
pub const USAGE: u8 = 2;
