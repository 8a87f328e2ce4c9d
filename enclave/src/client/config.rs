//! [`ClientConfig`]: where the proxy is, deadlines, back-off.

use std::time::Duration;

use keybroker_common::address::Address;
use keybroker_common::protocol::MAX_FRAME_LEN;

use crate::retry::{Backoff, Policy};

/// Default [`ClientConfig::request_timeout`].
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Default [`ClientConfig::connect_timeout`].
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Default [`ClientConfig::backoff_initial`].
pub const DEFAULT_BACKOFF_INITIAL: Duration = Duration::from_millis(50);
/// Default [`ClientConfig::backoff_max`].
pub const DEFAULT_BACKOFF_MAX: Duration = Duration::from_secs(5);

/// Configuration of a [`Client`](super::Client).
#[derive(Clone, Debug)]
pub struct ClientConfig {
    /// Where the parent proxy listens (`vsock://3:PORT` in an enclave).
    pub address: Address,
    /// Deadline of each call, unless overridden with [`Client::with_timeout`](super::Client::with_timeout).
    pub request_timeout: Duration,
    /// Limit on one connection attempt (connect plus `Hello` handshake), and
    /// how long [`Client::connect`](super::Client::connect) waits for the first connection.
    pub connect_timeout: Duration,
    /// First reconnection delay; doubled after each failed attempt.
    pub backoff_initial: Duration,
    /// Largest reconnection delay.
    pub backoff_max: Duration,
    /// Largest frame accepted from the proxy (at most
    /// [`MAX_FRAME_LEN`]).
    pub max_frame_len: usize,
    /// Software id sent in `Hello`, for the proxy's logs.
    pub client_id: String,
}

impl ClientConfig {
    /// Defaults for `address`: 10 s request deadline, 5 s connection
    /// attempts, backoff 50 ms doubling to 5 s.
    pub fn new(address: Address) -> Self {
        Self {
            address,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            backoff_initial: DEFAULT_BACKOFF_INITIAL,
            backoff_max: DEFAULT_BACKOFF_MAX,
            max_frame_len: MAX_FRAME_LEN,
            client_id: concat!("keybroker-enclave/", env!("CARGO_PKG_VERSION")).to_owned(),
        }
    }

    /// Reconnection delay before attempt `attempt` (0-based): exponential,
    /// capped at [`Self::backoff_max`], with jitter in `[d/2, d]` so enclaves
    /// that lost the same proxy do not reconnect in lockstep
    /// ([`crate::retry::Backoff`]).
    pub fn backoff(&self, attempt: u32) -> Duration {
        self.policy().backoff(attempt)
    }

    /// The timing both modes' retries follow ([`crate::retry`]).
    pub(crate) fn policy(&self) -> Policy {
        Policy {
            backoff: Backoff {
                initial: self.backoff_initial,
                max: self.backoff_max,
            },
            connect_timeout: self.connect_timeout,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_caps_and_jitters() {
        let mut c = ClientConfig::new("tcp://127.0.0.1:1".parse().unwrap());
        c.backoff_initial = Duration::from_millis(100);
        c.backoff_max = Duration::from_secs(2);
        for attempt in 0..40 {
            let ideal = Duration::from_millis(100)
                .saturating_mul(1u32.checked_shl(attempt.min(20)).unwrap_or(u32::MAX))
                .min(Duration::from_secs(2));
            let d = c.backoff(attempt);
            assert!(d <= ideal && d >= ideal / 2, "attempt {attempt}: {d:?}");
        }
        let samples: std::collections::HashSet<_> = (0..20).map(|_| c.backoff(3)).collect();
        assert!(samples.len() > 1, "jitter varies the delay");
    }
}
