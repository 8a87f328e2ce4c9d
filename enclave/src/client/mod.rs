//! The client: KMS operations with plaintext only inside the enclave, in
//! either mode behind one API.
//!
//! - **Broker mode** ([`Client::new`], [`Client::connect`]): typed requests
//!   over the framed protocol to the parent proxy, which calls KMS (the
//!   sections below describe this transport).
//! - **End-to-end mode** ([`Client::new_e2e`], [`Client::connect_e2e`]):
//!   HTTPS with SigV4 from the enclave to KMS through parent tunnels, with
//!   key pinning; see [`crate::e2e`] for its connections, retries and checks.
//!
//! `Recipient` attachment, `CiphertextForRecipient` decryption and the
//! refusal of plaintext on the wire are the same in both.
//!
//! # What a call does
//!
//! For the plaintext-returning operations (`GenerateDataKey`, `Decrypt`,
//! `GenerateDataKeyPair`, `GenerateRandom`, `DeriveSharedSecret`) the client takes the caller's KMS
//! request unchanged (key id, encryption context, grant tokens, dry run, ...
//! pass through), attaches a `Recipient` from [`RecipientKeys`] (the current
//! attestation document), sends it, and decrypts the `CiphertextForRecipient`
//! of the answer with the matching private key (`keybroker_common::cms`).
//! The plaintext is returned as [`SecretBytes`](keybroker_common::secret::SecretBytes). A response that carries a
//! `Plaintext`/`PrivateKeyPlaintext` field is refused: the frame decoder
//! rejects it ([`ProtocolError::PlaintextOnWire`](keybroker_common::protocol::ProtocolError::PlaintextOnWire)) and, since framing cannot
//! resynchronise, the connection is dropped and every request in flight on it
//! fails with that error.
//!
//! # Decryption is not an oracle
//!
//! A `CiphertextForRecipient` that parses never fails to decrypt: one that
//! does not decrypt yields a pseudorandom value derived from the recipient
//! key's secret and the ciphertext (implicit rejection,
//! `keybroker_common::cms`), so neither the answer nor what the caller does
//! next (an envelope header that does not authenticate, exactly as with a
//! wrong key) tells the sender whether it decrypted. The length is enforced
//! where it is known, by the same means: `GenerateDataKey` (its `KeySpec` or
//! `NumberOfBytes`; a request with neither or both is refused before
//! anything is sent), `GenerateRandom` (`NumberOfBytes`, required),
//! `DeriveSharedSecret` (the curve of its `PublicKey`), and
//! [`Client::decrypt_expecting`] (the envelope's 32-byte data keys). A
//! plaintext of another length gets the rejection value of the expected
//! length. A `CiphertextForRecipient` that does not parse is an error, never
//! a retryable one (`InvalidCiphertextException` at the endpoint).
//!
//! # Randomness the parent cannot choose
//!
//! `GenerateRandom` returns KMS's bytes XORed with as many bytes of the
//! NSM's own randomness (`GetRandom`): a parent that substitutes the bytes
//! (in broker mode it can encrypt any value to the enclave's public key)
//! does not determine the result, which is as random as the better of the
//! two sources.
//!
//! The other operations (`GenerateDataKeyWithoutPlaintext`,
//! `GenerateDataKeyPairWithoutPlaintext`, `DescribeKey`) are relayed as they are.
//!
//! # Connection
//!
//! One connection carries every request (module `connection`): each gets a fresh
//! id, a writer task sends frames, a reader task dispatches responses (in
//! any order) to the waiting callers. A supervisor task connects, performs
//! the `Hello` handshake (`keybroker_common::protocol`), and reconnects when
//! the proxy goes away or says `Goodbye`, with capped exponential backoff and
//! jitter.
//!
//! # Deadlines and retries
//!
//! Every call has a deadline ([`ClientConfig::request_timeout`], default 10 s,
//! or [`Client::with_timeout`]); the remaining time goes to the proxy as
//! `timeout_ms`. Nothing outlives it: waiting for a connection ends in
//! [`Error::Unavailable`], waiting for the answer in [`Error::Timeout`].
//!
//! A request is retried (once, within the same deadline) only when that
//! cannot repeat an effect ([`crate::retry`], the rules both modes share):
//! - it never reached the wire (its connection closed before the write);
//! - the proxy answered `Shutdown` (it is draining and did not forward it);
//! - its connection died while it was in flight and the operation is
//!   read-only at KMS: `Decrypt`, `GenerateRandom`, `DescribeKey`.
//!
//! A `Busy` answer (the proxy is at its in-flight limit and forwarded
//! nothing) is different: the request is sent again after the configured
//! back-off, as often as its deadline allows.
//!
//! In-flight `GenerateDataKey*` requests are not retried after a lost
//! connection: KMS may already have minted (and logged) the key, and the
//! caller, not the library, decides whether a second key is acceptable. They
//! fail with [`Error::ConnectionLost`], which is retryable.

mod broker;
mod config;
mod connection;
mod ops;
mod results;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use keybroker_common::kms::{KmsRequest, KmsResponse};
use tokio::time::Instant;

pub use config::{
    ClientConfig, DEFAULT_BACKOFF_INITIAL, DEFAULT_BACKOFF_MAX, DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_REQUEST_TIMEOUT,
};
pub use results::{DataKey, DataKeyPair, Decrypted, SharedSecret, random_response};

use crate::Error;
use crate::e2e::{E2eConfig, E2eTransport, Mode, ParentLink};
use crate::keys::RecipientKeys;
use broker::BrokerLink;

/// Counters of a [`Client`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ClientStats {
    /// Connections established (handshake completed): proxy connections in
    /// broker mode, TLS connections to KMS in e2e mode.
    pub connections: u64,
    /// E2e mode: TLS handshakes with the KMS endpoint (0 in broker mode).
    pub tls_handshakes: u64,
    /// E2e mode: credential fetches from the parent (0 in broker mode).
    pub credential_fetches: u64,
    /// Request frames handed to a connection (retries included).
    pub requests_sent: u64,
    /// Requests sent again after a lost connection or a `Shutdown` answer.
    pub retries: u64,
    /// Requests waiting for an answer right now (broker mode).
    pub in_flight: usize,
    /// Answers whose `CiphertextForRecipient` was missing or did not parse
    /// (or that carried plaintext): never one that parsed but did not
    /// decrypt, which implicit rejection makes indistinguishable from one
    /// that did (module docs).
    pub decrypt_failures: u64,
}

/// The broker client (see the [module docs](self)). Cheap to clone; the
/// connection and its tasks stop when the last clone drops.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
    timeout: Duration,
}

impl core::fmt::Debug for Client {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Client")
            .field("mode", &self.mode())
            .field("address", &self.inner.config.address)
            .field("timeout", &self.timeout)
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

struct Inner {
    config: ClientConfig,
    keys: RecipientKeys,
    counters: Arc<Counters>,
    link: Link,
}

/// How requests reach KMS.
enum Link {
    /// Framed requests to the parent proxy over one supervised connection.
    Broker(BrokerLink),
    /// HTTPS to KMS through parent tunnels ([`crate::e2e`]).
    E2e(Arc<E2eTransport>),
}

impl Link {
    /// Waits until a connection is established (broker mode) or
    /// credentials are cached (e2e mode), up to `timeout`.
    async fn wait_connected(&self, timeout: Duration) -> Result<(), Error> {
        match self {
            Link::E2e(t) => t.prefetch_credentials(timeout).await,
            Link::Broker(b) => match tokio::time::timeout(timeout, b.connection()).await {
                Ok(r) => r.map(|_| ()),
                Err(_) => Err(b.unavailable()),
            },
        }
    }
}

/// Broker mode's counters (e2e mode has its own, [`crate::e2e`]), and
/// both modes' decryption failures.
#[derive(Default)]
struct Counters {
    connections: AtomicU64,
    requests_sent: AtomicU64,
    retries: AtomicU64,
    decrypt_failures: AtomicU64,
}

impl Client {
    /// A client that connects in the background (now, and again whenever the
    /// connection is lost). Calls made before the first connection wait for
    /// it, within their deadline.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] when called outside a tokio runtime.
    pub fn new(config: ClientConfig, keys: RecipientKeys) -> Result<Self, Error> {
        let handle = tokio::runtime::Handle::try_current()
            .map_err(|_| Error::InvalidArgument("Client::new needs a tokio runtime".into()))?;
        let counters = Arc::new(Counters::default());
        let link = BrokerLink::spawn(&handle, &config, counters.clone());
        Ok(Self::assemble(config, keys, counters, Link::Broker(link)))
    }

    /// The client over `link`, with the request timeout of `config`.
    fn assemble(
        config: ClientConfig,
        keys: RecipientKeys,
        counters: Arc<Counters>,
        link: Link,
    ) -> Self {
        let timeout = config.request_timeout;
        Self {
            inner: Arc::new(Inner {
                config,
                keys,
                counters,
                link,
            }),
            timeout,
        }
    }

    /// A client in end-to-end mode ([`crate::e2e`]): HTTPS to the KMS
    /// endpoint of `e2e` over tunnels and with credentials from `link`, keys
    /// pinned to `e2e.allowlist`. `config` supplies the deadlines and
    /// back-off (its `address` is not used by the client itself). Nothing
    /// is connected until the first call.
    ///
    /// # Errors
    /// [`Error::Tls`] if the TLS configuration cannot be built.
    pub fn new_e2e(
        config: ClientConfig,
        e2e: E2eConfig,
        link: Arc<dyn ParentLink>,
        keys: RecipientKeys,
    ) -> Result<Self, Error> {
        let transport = E2eTransport::new(e2e, link)?;
        let link = Link::E2e(Arc::new(transport));
        Ok(Self::assemble(config, keys, Arc::default(), link))
    }

    /// [`Client::new_e2e`], then fetches credentials from the parent within
    /// [`ClientConfig::connect_timeout`] (so a parent that cannot serve them
    /// is found at start-up).
    ///
    /// # Errors
    /// As [`Client::new_e2e`]; [`Error::Unavailable`] without credentials.
    pub async fn connect_e2e(
        config: ClientConfig,
        e2e: E2eConfig,
        link: Arc<dyn ParentLink>,
        keys: RecipientKeys,
    ) -> Result<Self, Error> {
        let wait = config.connect_timeout;
        let client = Self::new_e2e(config, e2e, link, keys)?;
        client.wait_connected(wait).await?;
        Ok(client)
    }

    /// Which mode this client runs in.
    pub fn mode(&self) -> Mode {
        match self.inner.link {
            Link::Broker(_) => Mode::Broker,
            Link::E2e(_) => Mode::E2e,
        }
    }

    /// The end-to-end configuration (`None` in broker mode).
    pub fn e2e_config(&self) -> Option<&E2eConfig> {
        match &self.inner.link {
            Link::E2e(t) => Some(t.config()),
            Link::Broker(_) => None,
        }
    }

    /// E2e mode: KMS's clock minus the local clock as last measured from a
    /// response `Date`, in milliseconds (0 in broker mode).
    pub fn clock_skew_ms(&self) -> i64 {
        match &self.inner.link {
            Link::E2e(t) => t.clock_skew(),
            Link::Broker(_) => 0,
        }
    }

    /// Whether a key named by stored data (an envelope header) may be used:
    /// in e2e mode it must resolve against the key allowlist; broker mode
    /// has no allowlist.
    ///
    /// # Errors
    /// [`Error::KeyNotAllowed`].
    pub fn check_key_allowed(&self, key_id: &str) -> Result<(), Error> {
        match &self.inner.link {
            Link::E2e(t) => t
                .config()
                .allowlist
                .resolve(key_id)
                .map(|_| ())
                .map_err(Into::into),
            Link::Broker(_) => Ok(()),
        }
    }

    /// [`Client::new`], then waits up to [`ClientConfig::connect_timeout`] for
    /// the first connection.
    ///
    /// # Errors
    /// [`Error::Unavailable`] with the last connection error if no connection
    /// was established in time.
    pub async fn connect(config: ClientConfig, keys: RecipientKeys) -> Result<Self, Error> {
        let wait = config.connect_timeout;
        let client = Self::new(config, keys)?;
        client.wait_connected(wait).await?;
        Ok(client)
    }

    /// [`Client::connect`] while the recipient keys are still being made:
    /// the connection is established while `keys` runs (typically
    /// [`RecipientKeys::open`], whose RSA key generation dominates a cold
    /// start), so start-up waits for the slower of the two, not for both
    /// one after the other.
    ///
    /// # Errors
    /// The error of `keys` (as soon as it happens); [`Error::Unavailable`]
    /// as [`Client::connect`]; [`Error::InvalidArgument`] outside a tokio
    /// runtime.
    pub async fn connect_while<F>(config: ClientConfig, keys: F) -> Result<Self, Error>
    where
        F: Future<Output = Result<RecipientKeys, Error>>,
    {
        let handle = tokio::runtime::Handle::try_current().map_err(|_| {
            Error::InvalidArgument("Client::connect_while needs a tokio runtime".into())
        })?;
        let counters = Arc::new(Counters::default());
        let link = Link::Broker(BrokerLink::spawn(&handle, &config, counters.clone()));
        Self::assemble_while(config, counters, link, keys).await
    }

    /// [`Client::connect_e2e`] while the recipient keys are still being
    /// made: the credentials are fetched, and the first connection to KMS
    /// opened (tunnel, TLS handshake), while `keys` runs (as
    /// [`Client::connect_while`]).
    ///
    /// # Errors
    /// The error of `keys`; otherwise as [`Client::connect_e2e`].
    pub async fn connect_e2e_while<F>(
        config: ClientConfig,
        e2e: E2eConfig,
        link: Arc<dyn ParentLink>,
        keys: F,
    ) -> Result<Self, Error>
    where
        F: Future<Output = Result<RecipientKeys, Error>>,
    {
        let handle = tokio::runtime::Handle::try_current().map_err(|_| {
            Error::InvalidArgument("Client::connect_e2e_while needs a tokio runtime".into())
        })?;
        let transport = Arc::new(E2eTransport::new(e2e, link)?);
        let warm_up = handle.spawn({
            let (transport, timeout) = (transport.clone(), config.connect_timeout);
            async move { transport.warm_up(timeout).await }
        });
        let link = Link::E2e(transport);
        let client = Self::assemble_while(config, Arc::new(Counters::default()), link, keys).await;
        if client.is_ok() {
            // The first call then finds the connection in the pool.
            let _ = warm_up.await;
        } else {
            warm_up.abort();
        }
        client
    }

    /// Waits for `keys` and for `link`'s first connection together.
    async fn assemble_while<F>(
        config: ClientConfig,
        counters: Arc<Counters>,
        link: Link,
        keys: F,
    ) -> Result<Self, Error>
    where
        F: Future<Output = Result<RecipientKeys, Error>>,
    {
        let (keys, ()) = tokio::try_join!(keys, link.wait_connected(config.connect_timeout))?;
        Ok(Self::assemble(config, keys, counters, link))
    }

    /// Waits until a connection is established, up to `timeout`.
    ///
    /// # Errors
    /// [`Error::Unavailable`] with the last connection error.
    pub async fn wait_connected(&self, timeout: Duration) -> Result<(), Error> {
        self.inner.link.wait_connected(timeout).await
    }

    /// Whether a usable connection exists right now.
    /// (In e2e mode connections are made per call: always `true`.)
    pub fn is_connected(&self) -> bool {
        match &self.inner.link {
            Link::Broker(b) => b.is_connected(),
            Link::E2e(_) => true,
        }
    }

    /// A handle whose calls use `timeout` as their deadline (sharing this
    /// client's connection).
    pub fn with_timeout(&self, timeout: Duration) -> Self {
        Self {
            inner: self.inner.clone(),
            timeout,
        }
    }

    /// The recipient keys the client attaches.
    pub fn keys(&self) -> &RecipientKeys {
        &self.inner.keys
    }

    /// The configuration.
    pub fn config(&self) -> &ClientConfig {
        &self.inner.config
    }

    /// Counters.
    pub fn stats(&self) -> ClientStats {
        let c = &self.inner.counters;
        let decrypt_failures = c.decrypt_failures.load(Ordering::Relaxed);
        match &self.inner.link {
            Link::Broker(b) => {
                let in_flight = b.in_flight();
                ClientStats {
                    connections: c.connections.load(Ordering::Relaxed),
                    requests_sent: c.requests_sent.load(Ordering::Relaxed),
                    retries: c.retries.load(Ordering::Relaxed),
                    in_flight,
                    decrypt_failures,
                    ..ClientStats::default()
                }
            }
            Link::E2e(t) => {
                let handshakes = t.tls_handshakes();
                ClientStats {
                    connections: handshakes,
                    tls_handshakes: handshakes,
                    credential_fetches: t.counters.credential_fetches.load(Ordering::Relaxed),
                    requests_sent: t.counters.requests_sent.load(Ordering::Relaxed),
                    retries: t.counters.retries.load(Ordering::Relaxed),
                    in_flight: 0,
                    decrypt_failures,
                }
            }
        }
    }

    /// One call in either mode.
    async fn call(&self, request: KmsRequest, timeout: Duration) -> Result<KmsResponse, Error> {
        match &self.inner.link {
            Link::E2e(t) => {
                let deadline = Instant::now() + timeout;
                t.call(request, deadline, timeout, &self.inner.config.policy())
                    .await
            }
            Link::Broker(b) => {
                b.call(request, timeout, &self.inner.config, &self.inner.counters)
                    .await
            }
        }
    }
}
