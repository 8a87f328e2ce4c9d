//! keybroker-proxy
#![forbid(unsafe_code)]
