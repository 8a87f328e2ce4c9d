//! The proxy's clock, injected: the server checks attestation documents'
//! age and chains at [`Clock::now`], so tests can run it at a fixed time
//! (as `attestation verify` takes `now` from its caller).

use std::fmt;

use keybroker_common::UnixMillis;

/// Where the server reads the current time.
pub trait Clock: fmt::Debug + Send + Sync + 'static {
    /// The current time.
    fn now(&self) -> UnixMillis;
}

/// The system clock ([`now`]); the server's default.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> UnixMillis {
        now()
    }
}

/// A clock that always reads the same time (tests, replays).
#[derive(Clone, Copy, Debug)]
pub struct FixedClock(pub UnixMillis);

impl Clock for FixedClock {
    fn now(&self) -> UnixMillis {
        self.0
    }
}

/// The current time from the system clock (0 before 1970, saturating far
/// in the future).
pub fn now() -> UnixMillis {
    let since = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    UnixMillis(u64::try_from(since.as_millis()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clocks_read_their_time() {
        let fixed: &dyn Clock = &FixedClock(UnixMillis(1_717_200_000_000));
        assert_eq!(fixed.now(), UnixMillis(1_717_200_000_000));
        // After 2024-06-01, whenever these tests run.
        assert!(SystemClock.now() > fixed.now());
    }
}
