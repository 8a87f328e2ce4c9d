//! AWS credentials from the parent, and their cache.
//!
//! The parent hands them over when asked ([`ParentLink::credentials`]). They
//! are untrusted in the sense that they only decide *whose account signs*:
//! key pinning ([`keybroker_common::key_allowlist`]) makes another account's
//! keys useless. They are secret all the same: zeroized on drop (here and
//! inside `aws_credential_types::Credentials`), redacted in `Debug`, never
//! logged.

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use aws_smithy_runtime_api::client::identity::Identity;
use tokio::time::Instant;

use super::link::ParentLink;
use crate::Error;
pub use crate::parent::AwsCredentials;

impl AwsCredentials {
    /// The SigV4 signing identity (the secrets are copied into
    /// `aws_credential_types::Credentials`, which zeroizes them too).
    fn identity(&self) -> Identity {
        aws_credential_types::Credentials::new(
            self.access_key_id.clone(),
            self.secret_access_key.expose().to_owned(),
            self.session_token.as_ref().map(|t| t.expose().to_owned()),
            self.expiration,
            "keybroker-parent",
        )
        .into()
    }
}

/// Credentials in use.
pub(crate) struct Cached {
    pub(crate) identity: Identity,
    expiration: Option<SystemTime>,
    fetched: Instant,
}

/// Credentials fetched from the parent, reused until `margin` before they
/// expire, refreshed then (and when KMS says `ExpiredTokenException`).
pub(crate) struct CredentialCache {
    current: Mutex<Option<Arc<Cached>>>,
    /// One refresh at a time; the others wait for its result.
    refresh: tokio::sync::Mutex<()>,
    margin: Duration,
}

/// Credentials fetched less than this long ago are used even if they expire
/// within the margin (a parent that hands out short-lived credentials is not
/// asked again on every request).
const MIN_REFETCH: Duration = Duration::from_secs(1);

impl CredentialCache {
    pub(crate) fn new(margin: Duration) -> Self {
        Self {
            current: Mutex::new(None),
            refresh: tokio::sync::Mutex::new(()),
            margin,
        }
    }

    fn load(&self) -> Option<Arc<Cached>> {
        self.current
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn fresh(&self, c: &Cached, now: SystemTime) -> bool {
        c.fetched.elapsed() < MIN_REFETCH || c.expiration.is_none_or(|exp| now + self.margin < exp)
    }

    /// Current credentials, fetched from `link` when there are none or they
    /// expire within the margin. `now` is the (skew-corrected) wall clock.
    /// Returns whether a fetch happened, for the counters.
    pub(crate) async fn get(
        &self,
        link: &dyn ParentLink,
        now: SystemTime,
        deadline: Instant,
    ) -> Result<(Arc<Cached>, bool), Error> {
        if let Some(c) = self.load().filter(|c| self.fresh(c, now)) {
            return Ok((c, false));
        }
        let _refreshing = self.refresh.lock().await;
        let old = self.load();
        if let Some(c) = old.clone().filter(|c| self.fresh(c, now)) {
            return Ok((c, false));
        }
        let timeout = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(timeout, link.credentials(timeout)).await {
            Ok(Ok(creds)) => {
                tracing::debug!(
                    access_key_id = %creds.access_key_id,
                    expiration = ?creds.expiration,
                    "credentials from the parent"
                );
                let c = Arc::new(Cached {
                    identity: creds.identity(),
                    expiration: creds.expiration,
                    fetched: Instant::now(),
                });
                *self.current.lock().unwrap_or_else(|p| p.into_inner()) = Some(c.clone());
                Ok((c, true))
            }
            failed => {
                let reason = match failed {
                    Ok(Err(e)) => e.to_string(),
                    _ => "timed out".to_owned(),
                };
                // Credentials not yet expired are still usable.
                if let Some(c) = old.filter(|c| c.expiration.is_none_or(|exp| now < exp)) {
                    tracing::warn!(%reason, "credential refresh failed; using the current ones");
                    return Ok((c, false));
                }
                Err(Error::Unavailable {
                    reason: format!("credentials from the parent: {reason}"),
                })
            }
        }
    }

    /// Forgets `stale` (KMS said the token expired), so the next call fetches.
    pub(crate) fn invalidate(&self, stale: &Arc<Cached>) {
        let mut current = self.current.lock().unwrap_or_else(|p| p.into_inner());
        if current.as_ref().is_some_and(|c| Arc::ptr_eq(c, stale)) {
            *current = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use keybroker_common::secret::SecretString;

    #[test]
    fn debug_redacts_secrets() {
        let c = AwsCredentials {
            access_key_id: "AKIDEXAMPLE".into(),
            secret_access_key: SecretString::new("wJalrXUtnFEMI-secret".into()),
            session_token: Some(SecretString::new("token-secret".into())),
            expiration: None,
        };
        let shown = format!("{c:?}");
        assert!(shown.contains("AKIDEXAMPLE"), "{shown}");
        assert!(!shown.contains("secret\""), "{shown}");
        assert!(
            !shown.contains("wJalr") && !shown.contains("token-secret"),
            "{shown}"
        );
    }
}
