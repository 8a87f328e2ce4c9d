//! The configuration a running proxy serves with, and its live reload
//! (SIGHUP, [`Reloader::reload`]).
//!
//! Every request takes a snapshot of the current [`ProxyConfig`] when it
//! arrives, every connection when it opens, and every tunnel when it is
//! asked for. A reload therefore applies from the next request, and nothing
//! in flight changes its rules half-way or is dropped. The limits that are
//! counted across connections (connections, tunnels and KMS calls in flight)
//! are semaphores that are resized in place.
//!
//! What a reload cannot change: the listening address and
//! `allow_non_loopback`, because the listener is already bound. A new value
//! for either is logged and ignored.

use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::{Semaphore, watch};

use crate::metrics::Metrics;
use crate::settings::ProxyConfig;

/// The current configuration and the semaphores sized by it.
pub(super) struct Live {
    config: watch::Sender<Arc<ProxyConfig>>,
    /// One permit per open connection ([`crate::settings::ServerLimits::max_connections`]).
    pub(super) connections: Slots,
    /// One permit per open tunnel ([`crate::tunnel::TunnelSettings::max_tunnels`]).
    pub(super) tunnels: Slots,
    /// One permit per KMS call in flight, across all connections
    /// ([`crate::settings::ServerLimits::max_kms_in_flight`]).
    pub(super) kms: Slots,
}

impl Live {
    pub(super) fn new(config: ProxyConfig) -> Live {
        Live {
            connections: Slots::new(config.limits.max_connections),
            tunnels: Slots::new(config.tunnels.max_tunnels),
            kms: Slots::new(config.limits.max_kms_in_flight),
            config: watch::Sender::new(Arc::new(config)),
        }
    }

    /// The configuration in force now.
    pub(super) fn config(&self) -> Arc<ProxyConfig> {
        self.config.borrow().clone()
    }
}

/// Resizes the limits, then swaps the configuration (see the module docs).
/// Must run inside a tokio runtime when a limit shrinks below the permits in
/// use.
fn reload(live: &Live, mut new: ProxyConfig) {
    let old = live.config();
    if new.listen != old.listen || new.allow_non_loopback != old.allow_non_loopback {
        tracing::warn!(
            listen = %old.listen,
            requested = %new.listen,
            "the listening address cannot change on reload; keeping it (restart to change it)"
        );
        new.listen = old.listen.clone();
        new.allow_non_loopback = old.allow_non_loopback;
    }
    live.connections.resize(new.limits.max_connections);
    live.tunnels.resize(new.tunnels.max_tunnels);
    live.kms.resize(new.limits.max_kms_in_flight);
    live.config.send_replace(Arc::new(new));
}

/// Reloads a running proxy's configuration ([`crate::server::Proxy::reloader`],
/// [`crate::server::ProxyHandle::reloader`]). `serve` calls it on SIGHUP.
#[derive(Clone)]
pub struct Reloader {
    pub(super) live: Arc<Live>,
    /// Where the new admission policy's verified-document cache is reported.
    pub(super) metrics: Arc<Metrics>,
}

impl std::fmt::Debug for Reloader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reloader").finish_non_exhaustive()
    }
}

impl Reloader {
    /// Serves with `config` from the next request, connection and tunnel
    /// on; requests in flight finish under the configuration they started
    /// with. The listening address is kept (see the module docs). Must run
    /// inside a tokio runtime.
    ///
    /// The new admission policy starts with its own verified-document cache
    /// (its attestation roots may differ), and the metrics report that one.
    pub fn reload(&self, config: ProxyConfig) {
        let cache = config.admission.verification_cache.clone();
        reload(&self.live, config);
        self.metrics.observe_verification_cache(cache);
    }

    /// The configuration in force now.
    pub fn current(&self) -> Arc<ProxyConfig> {
        self.live.config()
    }
}

/// A semaphore whose number of permits can change while permits are held.
pub(super) struct Slots {
    semaphore: Arc<Semaphore>,
    /// The number of permits it is meant to have (held ones included).
    size: Mutex<usize>,
}

impl Slots {
    fn new(size: usize) -> Slots {
        // `Semaphore::new` panics above MAX_PERMITS (2^61 on 64-bit).
        let size = size.min(Semaphore::MAX_PERMITS);
        Slots {
            semaphore: Arc::new(Semaphore::new(size)),
            size: Mutex::new(size),
        }
    }

    /// The semaphore to take permits from.
    pub(super) fn semaphore(&self) -> &Arc<Semaphore> {
        &self.semaphore
    }

    /// Grows at once; shrinks by the free permits at once and by the held
    /// ones as they are released (a background task takes them for good).
    fn resize(&self, size: usize) {
        let size = size.min(Semaphore::MAX_PERMITS);
        let mut current = self.size.lock().unwrap_or_else(PoisonError::into_inner);
        if size > *current {
            self.semaphore.add_permits(size - *current);
        } else if size < *current {
            let excess = *current - size;
            let held = excess - self.semaphore.forget_permits(excess);
            if held > 0 {
                // The queue is fair: permits released from now on go to
                // this task first, so new callers see the smaller limit.
                let semaphore = self.semaphore.clone();
                let n = u32::try_from(held).unwrap_or(u32::MAX);
                tokio::spawn(async move {
                    if let Ok(permits) = semaphore.acquire_many_owned(n).await {
                        permits.forget();
                    }
                });
            }
        }
        *current = size;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn slots_grow_and_shrink_while_permits_are_held() {
        let slots = Slots::new(2);
        let a = slots.semaphore().clone().try_acquire_owned().unwrap();
        let b = slots.semaphore().clone().try_acquire_owned().unwrap();
        assert!(slots.semaphore().try_acquire().is_err(), "full at 2");

        slots.resize(3);
        let c = slots.semaphore().clone().try_acquire_owned().unwrap();
        assert!(slots.semaphore().try_acquire().is_err(), "full at 3");

        // Down to 1 with 3 held: nothing is taken away from the holders,
        // and no new permit is handed out until only 1 is held.
        slots.resize(1);
        drop(a);
        tokio::task::yield_now().await;
        assert!(slots.semaphore().try_acquire().is_err(), "2 held, limit 1");
        drop(b);
        tokio::task::yield_now().await;
        assert!(slots.semaphore().try_acquire().is_err(), "1 held, limit 1");
        drop(c);
        // The shrinking task takes its permits before anyone else.
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        let d = slots.semaphore().try_acquire().unwrap();
        assert!(slots.semaphore().try_acquire().is_err(), "limit 1");
        drop(d);
        assert_eq!(slots.semaphore().available_permits(), 1);
    }

    #[tokio::test]
    async fn reload_swaps_the_config_and_keeps_the_listener() {
        let mut config = ProxyConfig::new("tcp://127.0.0.1:0".parse().unwrap());
        config.limits.max_kms_in_flight = 4;
        let live = Arc::new(Live::new(config));
        let reloader = Reloader {
            live: live.clone(),
            metrics: Arc::new(Metrics::new()),
        };
        let mut new = ProxyConfig::new("tcp://127.0.0.1:9999".parse().unwrap());
        new.limits.max_kms_in_flight = 1;
        new.admission.allowed_keys = Some(["alias/new".to_owned()].into());
        reloader.reload(new);
        let now = reloader.current();
        assert_eq!(now.listen.to_string(), "tcp://127.0.0.1:0", "not rebound");
        assert_eq!(now.limits.max_kms_in_flight, 1);
        assert!(
            now.admission
                .allowed_keys
                .as_ref()
                .unwrap()
                .contains("alias/new")
        );
        assert_eq!(live.kms.semaphore().available_permits(), 1);
    }
}
