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
//! The plaintext is returned as [`SecretBytes`]. A response that carries a
//! `Plaintext`/`PrivateKeyPlaintext` field is refused: the frame decoder
//! rejects it ([`ProtocolError::PlaintextOnWire`]) and, since framing cannot
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
//! One connection carries every request: each gets a fresh id, a writer task
//! sends frames, a reader task dispatches responses (in any order) to the
//! waiting callers. A supervisor task connects, performs the `Hello`
//! handshake (`keybroker_common::protocol`), and reconnects when the proxy
//! goes away or says `Goodbye`, with capped exponential backoff and jitter.
//!
//! # Deadlines and retries
//!
//! Every call has a deadline ([`ClientConfig::request_timeout`], default 10 s,
//! or [`Client::with_timeout`]); the remaining time goes to the proxy as
//! `timeout_ms`. Nothing outlives it: waiting for a connection ends in
//! [`Error::Unavailable`], waiting for the answer in [`Error::Timeout`].
//!
//! A request is retried (once, within the same deadline) only when that
//! cannot repeat an effect:
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

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use keybroker_common::address::Address;
use keybroker_common::cms;
use keybroker_common::kms::{
    Blob, DataKeyPairSpec, DecryptRequest, DecryptResponse, DeriveSharedSecretRequest,
    DeriveSharedSecretResponse, DescribeKeyRequest, DescribeKeyResponse, EncryptionAlgorithm,
    GenerateDataKeyPairRequest, GenerateDataKeyPairResponse,
    GenerateDataKeyPairWithoutPlaintextRequest, GenerateDataKeyPairWithoutPlaintextResponse,
    GenerateDataKeyRequest, GenerateDataKeyResponse, GenerateDataKeyWithoutPlaintextRequest,
    GenerateDataKeyWithoutPlaintextResponse, GenerateRandomRequest, GenerateRandomResponse,
    KeyAgreementAlgorithm, KmsRequest, KmsResponse, Operation, RecipientInfo,
};
use keybroker_common::protocol::{
    self, ErrorCode, FrameDecoder, Limits, MAX_FRAME_LEN, Message, ProtocolError,
    SUPPORTED_VERSIONS,
};
use keybroker_common::secret::SecretBytes;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;

use crate::Error;
use crate::e2e::{E2eConfig, E2eTransport, Mode, ParentLink};
use crate::keys::{RecipientKeyPair, RecipientKeys};
use crate::transport::{self, BoxStream};

/// Default [`ClientConfig::request_timeout`].
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Default [`ClientConfig::connect_timeout`].
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Default [`ClientConfig::backoff_initial`].
pub const DEFAULT_BACKOFF_INITIAL: Duration = Duration::from_millis(50);
/// Default [`ClientConfig::backoff_max`].
pub const DEFAULT_BACKOFF_MAX: Duration = Duration::from_secs(5);

/// Frames queued for the writer before callers wait for room.
const OUTGOING_QUEUE: usize = 1024;
/// A connection that lived at least this long resets the backoff.
const STABLE_CONNECTION: Duration = Duration::from_secs(1);
/// Read buffer size.
const READ_CHUNK: usize = 16 * 1024;

/// Configuration of a [`Client`].
#[derive(Clone, Debug)]
pub struct ClientConfig {
    /// Where the parent proxy listens (`vsock://3:PORT` in an enclave).
    pub address: Address,
    /// Deadline of each call, unless overridden with [`Client::with_timeout`].
    pub request_timeout: Duration,
    /// Limit on one connection attempt (connect plus `Hello` handshake), and
    /// how long [`Client::connect`] waits for the first connection.
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
    /// that lost the same proxy do not reconnect in lockstep.
    pub fn backoff(&self, attempt: u32) -> Duration {
        let factor = 1u32.checked_shl(attempt.min(20)).unwrap_or(u32::MAX);
        let d = self
            .backoff_initial
            .saturating_mul(factor)
            .min(self.backoff_max);
        let mut r = [0u8; 2];
        let jitter = match SystemRandom::new().fill(&mut r) {
            Ok(()) => f64::from(u16::from_le_bytes(r)) / f64::from(u16::MAX),
            Err(_) => 1.0,
        };
        d.mul_f64(0.5 + 0.5 * jitter)
    }
}

/// A data key from [`Client::generate_data_key`].
#[derive(Debug)]
pub struct DataKey {
    /// ARN of the KMS key (`KeyId` of the response).
    pub key_id: Option<String>,
    /// The data key encrypted under the KMS key: store it, and recover the
    /// data key later with [`Client::decrypt`].
    pub ciphertext_blob: Blob,
    /// The data key. Zeroized on drop.
    pub plaintext: SecretBytes,
    /// `KeyMaterialId` of the response.
    pub key_material_id: Option<String>,
}

/// The result of [`Client::decrypt`].
#[derive(Debug)]
pub struct Decrypted {
    /// ARN of the KMS key that decrypted.
    pub key_id: Option<String>,
    /// The algorithm used.
    pub encryption_algorithm: Option<EncryptionAlgorithm>,
    /// The plaintext. Zeroized on drop.
    pub plaintext: SecretBytes,
    /// `KeyMaterialId` of the response.
    pub key_material_id: Option<String>,
}

/// A data key pair from [`Client::generate_data_key_pair`].
#[derive(Debug)]
pub struct DataKeyPair {
    /// ARN of the KMS key.
    pub key_id: Option<String>,
    /// The spec generated.
    pub key_pair_spec: Option<DataKeyPairSpec>,
    /// DER `SubjectPublicKeyInfo`.
    pub public_key: Option<Blob>,
    /// The private key encrypted under the KMS key.
    pub private_key_ciphertext_blob: Blob,
    /// The private key, DER PKCS#8. Zeroized on drop.
    pub private_key_plaintext: SecretBytes,
    /// `KeyMaterialId` of the response.
    pub key_material_id: Option<String>,
}

/// A shared secret from [`Client::derive_shared_secret`].
#[derive(Debug)]
pub struct SharedSecret {
    /// ARN of the KMS key-agreement key (`KeyId` of the response).
    pub key_id: Option<String>,
    /// The raw ECDH shared secret (as KMS's `SharedSecret`: the
    /// x-coordinate of the shared point, no KDF applied; derive keys from it
    /// with a KDF). Zeroized on drop.
    pub shared_secret: SecretBytes,
    /// `KeyAgreementAlgorithm` of the response (`ECDH`).
    pub key_agreement_algorithm: Option<KeyAgreementAlgorithm>,
    /// `KeyOrigin` of the response (`AWS_KMS` or `EXTERNAL`).
    pub key_origin: Option<String>,
}

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
    next_id: AtomicU64,
    counters: Arc<Counters>,
    link: Link,
}

/// How requests reach KMS.
enum Link {
    /// Framed requests to the parent proxy over one supervised connection.
    Broker {
        state: watch::Receiver<ConnState>,
        _supervisor: TaskGuard,
    },
    /// HTTPS to KMS through parent tunnels ([`crate::e2e`]).
    E2e(Arc<E2eTransport>),
}

#[derive(Default)]
struct Counters {
    connections: AtomicU64,
    requests_sent: AtomicU64,
    retries: AtomicU64,
}

#[derive(Clone)]
enum ConnState {
    Connecting { last_error: Option<Arc<str>> },
    Connected(Arc<Conn>),
}

/// Aborts a task when dropped.
struct TaskGuard(tokio::task::JoinHandle<()>);

impl Drop for TaskGuard {
    fn drop(&mut self) {
        self.0.abort();
    }
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
        let (state_tx, state) = watch::channel(ConnState::Connecting { last_error: None });
        let counters = Arc::new(Counters::default());
        let supervisor = handle.spawn(supervise(config.clone(), state_tx, counters.clone()));
        let timeout = config.request_timeout;
        Ok(Self {
            inner: Arc::new(Inner {
                config,
                keys,
                next_id: AtomicU64::new(1),
                counters,
                link: Link::Broker {
                    state,
                    _supervisor: TaskGuard(supervisor),
                },
            }),
            timeout,
        })
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
        let timeout = config.request_timeout;
        Ok(Self {
            inner: Arc::new(Inner {
                config,
                keys,
                next_id: AtomicU64::new(1),
                counters: Arc::new(Counters::default()),
                link: Link::E2e(Arc::new(transport)),
            }),
            timeout,
        })
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
            Link::Broker { .. } => Mode::Broker,
            Link::E2e(_) => Mode::E2e,
        }
    }

    /// The end-to-end configuration (`None` in broker mode).
    pub fn e2e_config(&self) -> Option<&E2eConfig> {
        match &self.inner.link {
            Link::E2e(t) => Some(t.config()),
            Link::Broker { .. } => None,
        }
    }

    /// E2e mode: KMS's clock minus the local clock as last measured from a
    /// response `Date`, in milliseconds (0 in broker mode).
    pub fn clock_skew_ms(&self) -> i64 {
        match &self.inner.link {
            Link::E2e(t) => t.clock_skew(),
            Link::Broker { .. } => 0,
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
            Link::Broker { .. } => Ok(()),
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

    /// Waits until a connection is established, up to `timeout`.
    ///
    /// # Errors
    /// [`Error::Unavailable`] with the last connection error.
    pub async fn wait_connected(&self, timeout: Duration) -> Result<(), Error> {
        if let Link::E2e(t) = &self.inner.link {
            return t.prefetch_credentials(timeout).await;
        }
        match tokio::time::timeout(timeout, self.connection()).await {
            Ok(r) => r.map(|_| ()),
            Err(_) => Err(self.unavailable()),
        }
    }

    /// Whether a usable connection exists right now.
    /// (In e2e mode connections are made per call: always `true`.)
    pub fn is_connected(&self) -> bool {
        match &self.inner.link {
            Link::Broker { state, .. } => {
                matches!(&*state.borrow(), ConnState::Connected(c) if c.is_usable())
            }
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
        match &self.inner.link {
            Link::Broker { state, .. } => {
                let in_flight = match &*state.borrow() {
                    ConnState::Connected(conn) => conn.in_flight(),
                    ConnState::Connecting { .. } => 0,
                };
                ClientStats {
                    connections: c.connections.load(Ordering::Relaxed),
                    requests_sent: c.requests_sent.load(Ordering::Relaxed),
                    retries: c.retries.load(Ordering::Relaxed),
                    in_flight,
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
                }
            }
        }
    }

    /// KMS `GenerateDataKey` with `Recipient`: a new data key, in plaintext
    /// (inside the enclave) and encrypted under the KMS key.
    ///
    /// The data key has the length the request names (module docs,
    /// "Decryption is not an oracle").
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] if `request.recipient` is set (the client
    /// attaches its own); `Error::Common(InvalidArgument(_))`, before
    /// anything is sent, unless exactly one of `KeySpec` and `NumberOfBytes`
    /// (1..=1024) is given; the errors of a call (module docs); a relayed KMS
    /// error as `Error::Common(Kms(_))`; a refusal by the proxy as
    /// `Error::Common(Protocol(Remote { code: PolicyDenied, .. }))`; a
    /// `CiphertextForRecipient` that does not parse as `Error::Common(Cms(_))`.
    pub async fn generate_data_key(
        &self,
        request: GenerateDataKeyRequest,
    ) -> Result<DataKey, Error> {
        // Refused here, before anything is sent, unless exactly one of
        // KeySpec and NumberOfBytes fixes the length to enforce.
        let expected = request.data_key_len()?;
        let (r, plaintext) = self.with_recipient(request, Some(expected)).await?;
        let ciphertext_blob = required(
            Operation::GenerateDataKey,
            r.ciphertext_blob,
            "no CiphertextBlob",
        )?;
        Ok(DataKey {
            key_id: r.key_id,
            ciphertext_blob,
            plaintext,
            key_material_id: r.key_material_id,
        })
    }

    /// KMS `Decrypt` with `Recipient`: the plaintext of a `CiphertextBlob`,
    /// inside the enclave. The encryption context must match the one used to
    /// encrypt.
    ///
    /// Prefer [`Client::decrypt_expecting`] when the plaintext's length is
    /// known: without it, a `CiphertextForRecipient` that does not decrypt
    /// yields a pseudorandom plaintext of a pseudorandom length, and a caller
    /// that reveals the length it got reveals whether the padding was valid.
    ///
    /// # Errors
    /// As [`Client::generate_data_key`].
    pub async fn decrypt(&self, request: DecryptRequest) -> Result<Decrypted, Error> {
        self.decrypt_with(request, None).await
    }

    /// [`Client::decrypt`] of a plaintext that must be `plaintext_len` bytes
    /// long (for example a 32-byte data key): any other result, and a
    /// `CiphertextForRecipient` that does not decrypt, yields a pseudorandom
    /// plaintext of exactly that length (module docs, "Decryption is not an
    /// oracle").
    ///
    /// # Errors
    /// As [`Client::decrypt`]; `Error::Common(InvalidArgument(_))` for a
    /// `plaintext_len` of 0 or above 6144, before anything is sent.
    pub async fn decrypt_expecting(
        &self,
        request: DecryptRequest,
        plaintext_len: usize,
    ) -> Result<Decrypted, Error> {
        if !(1..=cms::MAX_CIPHERTEXT_FOR_RECIPIENT_LEN).contains(&plaintext_len) {
            return Err(keybroker_common::Error::InvalidArgument(format!(
                "expected plaintext length {plaintext_len} is outside 1..={}",
                cms::MAX_CIPHERTEXT_FOR_RECIPIENT_LEN
            ))
            .into());
        }
        self.decrypt_with(request, Some(plaintext_len)).await
    }

    async fn decrypt_with(
        &self,
        request: DecryptRequest,
        expected_len: Option<usize>,
    ) -> Result<Decrypted, Error> {
        let (r, plaintext) = self.with_recipient(request, expected_len).await?;
        Ok(Decrypted {
            key_id: r.key_id,
            encryption_algorithm: r.encryption_algorithm,
            plaintext,
            key_material_id: r.key_material_id,
        })
    }

    /// KMS `GenerateDataKeyPair` with `Recipient`: a key pair whose private
    /// key is returned in plaintext (DER PKCS#8) inside the enclave.
    ///
    /// # Errors
    /// As [`Client::generate_data_key`].
    pub async fn generate_data_key_pair(
        &self,
        request: GenerateDataKeyPairRequest,
    ) -> Result<DataKeyPair, Error> {
        let (r, private_key_plaintext) = self.with_recipient(request, None).await?;
        let private_key_ciphertext_blob = required(
            Operation::GenerateDataKeyPair,
            r.private_key_ciphertext_blob,
            "no PrivateKeyCiphertextBlob",
        )?;
        Ok(DataKeyPair {
            key_id: r.key_id,
            key_pair_spec: r.key_pair_spec,
            public_key: r.public_key,
            private_key_ciphertext_blob,
            private_key_plaintext,
            key_material_id: r.key_material_id,
        })
    }

    /// KMS `GenerateRandom` with `Recipient`: random bytes from KMS, in
    /// plaintext only inside the enclave, XORed with as many bytes from the
    /// NSM (`GetRandom`), so that a parent that substitutes KMS's bytes does
    /// not choose the result (module docs).
    ///
    /// # Errors
    /// As [`Client::generate_data_key`]; `Error::Common(InvalidArgument(_))`,
    /// before anything is sent, without a `NumberOfBytes` in 1..=1024;
    /// [`Error::Nsm`] if the NSM's `GetRandom` fails.
    pub async fn generate_random(
        &self,
        request: GenerateRandomRequest,
    ) -> Result<SecretBytes, Error> {
        let expected = request.random_len()?;
        let (_, from_kms) = self.with_recipient(request, Some(expected)).await?;
        let nsm = self.inner.keys.nsm();
        tokio::task::spawn_blocking(move || {
            let mut out = from_kms;
            crate::nsm::xor_random(nsm.as_ref(), out.expose_mut())?;
            Ok(out)
        })
        .await
        .map_err(|_| Error::Shutdown)?
    }

    /// KMS `DeriveSharedSecret` with `Recipient`: the ECDH shared secret
    /// between the KMS key-agreement key `KeyId` and the caller's
    /// `PublicKey` (a DER SubjectPublicKeyInfo on the KMS key's curve),
    /// inside the enclave only.
    ///
    /// The secret has the length of the public key's curve (32, 48 or 66
    /// bytes), enforced as the other lengths are (module docs, "Decryption is
    /// not an oracle"). In broker mode the parent can substitute a secret of
    /// its choosing, as it can any data key (README, "Trust model"); in
    /// end-to-end mode TLS to KMS rules that out.
    ///
    /// # Errors
    /// As [`Client::generate_data_key`]; `Error::Common(InvalidArgument(_))`,
    /// before anything is sent, unless `KeyAgreementAlgorithm` is `ECDH` and
    /// `PublicKey` is an EC SubjectPublicKeyInfo on a curve KMS offers.
    pub async fn derive_shared_secret(
        &self,
        request: DeriveSharedSecretRequest,
    ) -> Result<SharedSecret, Error> {
        let expected = request.shared_secret_len()?;
        let (r, shared_secret) = self.with_recipient(request, Some(expected)).await?;
        Ok(SharedSecret {
            key_id: r.key_id,
            shared_secret,
            key_agreement_algorithm: r.key_agreement_algorithm,
            key_origin: r.key_origin,
        })
    }

    /// The one path of the operations that carry `Recipient`: attaches the
    /// current attestation document (refusing a caller's own), sends the
    /// request, refuses an answer with plaintext, and opens its
    /// `CiphertextForRecipient` with implicit rejection at `expected_len`
    /// (module docs). Returns the rest of the response and the plaintext.
    async fn with_recipient<R: RecipientCall>(
        &self,
        mut request: R,
        expected_len: Option<usize>,
    ) -> Result<(R::Response, SecretBytes), Error> {
        let slot = request.recipient_mut();
        no_recipient(slot.is_some())?;
        let pair = self.inner.keys.acquire();
        *slot = Some(pair.recipient());
        let response = self.call(request.into_request(), self.timeout).await?;
        let mut r = R::from_response(response).ok_or_else(|| mismatch(R::OP))?;
        refuse_plaintext(R::OP, R::has_plaintext(&r))?;
        let cfr = R::ciphertext_for_recipient(&mut r);
        let cfr = required(R::OP, cfr, "no CiphertextForRecipient")?;
        let plaintext = open(pair, cfr, expected_len).await?;
        Ok((r, plaintext))
    }

    /// KMS `GenerateDataKeyWithoutPlaintext`, relayed as is.
    ///
    /// # Errors
    /// The errors of a call (module docs) and relayed KMS errors.
    pub async fn generate_data_key_without_plaintext(
        &self,
        request: GenerateDataKeyWithoutPlaintextRequest,
    ) -> Result<GenerateDataKeyWithoutPlaintextResponse, Error> {
        match self
            .call(
                KmsRequest::GenerateDataKeyWithoutPlaintext(request),
                self.timeout,
            )
            .await?
        {
            KmsResponse::GenerateDataKeyWithoutPlaintext(r) => Ok(r),
            _ => Err(mismatch(Operation::GenerateDataKeyWithoutPlaintext)),
        }
    }

    /// KMS `GenerateDataKeyPairWithoutPlaintext`, relayed as is.
    ///
    /// # Errors
    /// The errors of a call (module docs) and relayed KMS errors.
    pub async fn generate_data_key_pair_without_plaintext(
        &self,
        request: GenerateDataKeyPairWithoutPlaintextRequest,
    ) -> Result<GenerateDataKeyPairWithoutPlaintextResponse, Error> {
        match self
            .call(
                KmsRequest::GenerateDataKeyPairWithoutPlaintext(request),
                self.timeout,
            )
            .await?
        {
            KmsResponse::GenerateDataKeyPairWithoutPlaintext(r) => Ok(r),
            _ => Err(mismatch(Operation::GenerateDataKeyPairWithoutPlaintext)),
        }
    }

    /// KMS `DescribeKey`, relayed as is.
    ///
    /// # Errors
    /// The errors of a call (module docs) and relayed KMS errors.
    pub async fn describe_key(
        &self,
        request: DescribeKeyRequest,
    ) -> Result<DescribeKeyResponse, Error> {
        match self
            .call(KmsRequest::DescribeKey(request), self.timeout)
            .await?
        {
            KmsResponse::DescribeKey(r) => Ok(r),
            _ => Err(mismatch(Operation::DescribeKey)),
        }
    }

    /// Sends `request` exactly as given (no `Recipient` attached, nothing
    /// decrypted) and returns the proxy's answer. For tests and tools, e.g.
    /// to show that the proxy refuses a plaintext-returning request without
    /// `Recipient`.
    ///
    /// # Errors
    /// The errors of a call (module docs) and relayed KMS errors.
    pub async fn send_raw(&self, request: KmsRequest) -> Result<KmsResponse, Error> {
        self.call(request, self.timeout).await
    }

    /// The usable connection, waiting for one.
    async fn connection(&self) -> Result<Arc<Conn>, Error> {
        let Link::Broker { state, .. } = &self.inner.link else {
            return Err(Error::InvalidArgument(
                "internal: no proxy connection in e2e mode".into(),
            ));
        };
        let mut rx = state.clone();
        loop {
            if let ConnState::Connected(c) = &*rx.borrow_and_update()
                && c.is_usable()
            {
                return Ok(c.clone());
            }
            if rx.changed().await.is_err() {
                return Err(Error::Shutdown);
            }
        }
    }

    fn unavailable(&self) -> Error {
        let Link::Broker { state, .. } = &self.inner.link else {
            return Error::Unavailable {
                reason: "KMS unreachable".into(),
            };
        };
        let reason = match &*state.borrow() {
            ConnState::Connecting {
                last_error: Some(e),
            } => e.to_string(),
            ConnState::Connecting { last_error: None } => "not connected yet".to_owned(),
            ConnState::Connected(_) => "connection closing".to_owned(),
        };
        Error::Unavailable { reason }
    }

    /// One call in either mode.
    async fn call(&self, request: KmsRequest, timeout: Duration) -> Result<KmsResponse, Error> {
        match &self.inner.link {
            Link::E2e(t) => {
                let deadline = Instant::now() + timeout;
                t.call(request, deadline, timeout, &self.inner.config).await
            }
            Link::Broker { .. } => self.call_broker(request, timeout).await,
        }
    }

    /// One broker call: send, await the answer, retry when safe (module docs).
    async fn call_broker(
        &self,
        request: KmsRequest,
        timeout: Duration,
    ) -> Result<KmsResponse, Error> {
        let operation = request.operation();
        let deadline = Instant::now() + timeout;
        let mut request = request;
        let mut retried = false;
        // `Busy` answers so far: the proxy forwarded nothing, so any operation
        // may be sent again after a back-off, as often as the deadline allows.
        let mut busy_answers: u32 = 0;
        loop {
            let conn = match tokio::time::timeout_at(deadline, self.connection()).await {
                Ok(c) => c?,
                Err(_) => return Err(self.unavailable()),
            };
            let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
            let remaining = deadline.saturating_duration_since(Instant::now());
            let timeout_ms = u32::try_from(remaining.as_millis()).unwrap_or(u32::MAX);
            let message = Message::Request {
                id,
                timeout_ms: Some(timeout_ms),
                request,
            };
            let encoded = protocol::encode(&message);
            let Message::Request { request: r, .. } = message else {
                // The message was built as a Request just above.
                return Err(Error::InvalidArgument("internal: request lost".into()));
            };
            request = r;
            let frame = encoded?;

            let (tx, rx) = oneshot::channel();
            if !conn.register(id, operation, tx) {
                // Closed before anything was sent: safe to try again.
                continue;
            }
            let _pending = PendingGuard {
                conn: conn.clone(),
                id,
            };
            match tokio::time::timeout_at(deadline, conn.outgoing.send(frame)).await {
                Err(_) => {
                    return Err(Error::Timeout {
                        operation,
                        after: timeout,
                    });
                }
                // The connection closed before the frame was queued.
                Ok(Err(_)) => continue,
                Ok(Ok(())) => {}
            }
            self.inner
                .counters
                .requests_sent
                .fetch_add(1, Ordering::Relaxed);
            let outcome = match tokio::time::timeout_at(deadline, rx).await {
                Err(_) => {
                    return Err(Error::Timeout {
                        operation,
                        after: timeout,
                    });
                }
                Ok(outcome) => outcome,
            };
            if let Ok(Err(e)) = &outcome
                && e.remote_error().map(|(code, _)| code) == Some(ErrorCode::Busy)
            {
                let pause = self.inner.config.backoff(busy_answers);
                busy_answers = busy_answers.saturating_add(1);
                if tokio::time::Instant::now() + pause < deadline {
                    self.inner.counters.retries.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(pause).await;
                    continue;
                }
            }
            let retry = match &outcome {
                // The proxy is draining and did not forward the request.
                Ok(Err(e)) => {
                    if e.remote_error().map(|(code, _)| code) == Some(ErrorCode::Shutdown) {
                        conn.mark_draining();
                        true
                    } else {
                        false
                    }
                }
                Ok(Ok(_)) => false,
                // The connection died with the request in flight.
                Err(_) => retry_safe(operation),
            };
            if retry && !retried {
                retried = true;
                self.inner.counters.retries.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(operation = operation.as_str(), "retrying request");
                continue;
            }
            return match outcome {
                Ok(result) => result,
                Err(_) => Err(Error::ConnectionLost { operation }),
            };
        }
    }
}

/// Operations KMS answers without creating anything, so a duplicate is harmless.
pub(crate) fn retry_safe(op: Operation) -> bool {
    matches!(
        op,
        Operation::Decrypt
            | Operation::GenerateRandom
            | Operation::DescribeKey
            | Operation::DeriveSharedSecret
    )
}

fn no_recipient(present: bool) -> Result<(), Error> {
    if present {
        return Err(Error::InvalidArgument(
            "request already has a Recipient; the client attaches its own attestation".into(),
        ));
    }
    Ok(())
}

/// A KMS request that takes `Recipient` (the five operations that return
/// plaintext), with the fields of its response that [`Client`]'s one
/// `Recipient` path needs.
trait RecipientCall {
    const OP: Operation;
    type Response;
    fn recipient_mut(&mut self) -> &mut Option<RecipientInfo>;
    fn into_request(self) -> KmsRequest;
    fn from_response(response: KmsResponse) -> Option<Self::Response>;
    fn has_plaintext(response: &Self::Response) -> bool;
    fn ciphertext_for_recipient(response: &mut Self::Response) -> Option<Blob>;
}

macro_rules! recipient_call {
    ($($op:ident: $req:ty => $resp:ty, $plaintext:ident;)*) => {$(
        impl RecipientCall for $req {
            const OP: Operation = Operation::$op;
            type Response = $resp;
            fn recipient_mut(&mut self) -> &mut Option<RecipientInfo> {
                &mut self.recipient
            }
            fn into_request(self) -> KmsRequest {
                KmsRequest::$op(self)
            }
            fn from_response(response: KmsResponse) -> Option<$resp> {
                match response {
                    KmsResponse::$op(r) => Some(r),
                    _ => None,
                }
            }
            fn has_plaintext(response: &$resp) -> bool {
                response.$plaintext.is_some()
            }
            fn ciphertext_for_recipient(response: &mut $resp) -> Option<Blob> {
                response.ciphertext_for_recipient.take()
            }
        }
    )*};
}

recipient_call! {
    GenerateDataKey: GenerateDataKeyRequest => GenerateDataKeyResponse, plaintext;
    Decrypt: DecryptRequest => DecryptResponse, plaintext;
    GenerateDataKeyPair: GenerateDataKeyPairRequest => GenerateDataKeyPairResponse,
        private_key_plaintext;
    GenerateRandom: GenerateRandomRequest => GenerateRandomResponse, plaintext;
    DeriveSharedSecret: DeriveSharedSecretRequest => DeriveSharedSecretResponse, shared_secret;
}

fn refuse_plaintext(operation: Operation, present: bool) -> Result<(), Error> {
    if present {
        return Err(ProtocolError::PlaintextOnWire { operation }.into());
    }
    Ok(())
}

fn required(operation: Operation, blob: Option<Blob>, reason: &'static str) -> Result<Blob, Error> {
    blob.ok_or(Error::InvalidResponse { operation, reason })
}

fn mismatch(expected: Operation) -> Error {
    Error::InvalidResponse {
        operation: expected,
        reason: "response for another operation",
    }
}

/// Decrypts `CiphertextForRecipient` with `pair`'s key on the blocking pool
/// (an RSA private-key operation takes about a millisecond), with implicit
/// rejection: a ciphertext that parses but does not decrypt, or whose
/// plaintext is not `expected_len` bytes, yields its pseudorandom rejection
/// value (module docs). Broker and e2e mode both decrypt here.
async fn open(
    pair: Arc<RecipientKeyPair>,
    cfr: Blob,
    expected_len: Option<usize>,
) -> Result<SecretBytes, Error> {
    tokio::task::spawn_blocking(move || Ok(cms::decrypt(&cfr.0, pair.private_key(), expected_len)?))
        .await
        .map_err(|_| Error::Shutdown)?
}

/// A request waiting for its answer.
struct Pending {
    operation: Operation,
    tx: oneshot::Sender<Result<KmsResponse, Error>>,
}

/// One established connection.
struct Conn {
    outgoing: mpsc::Sender<Vec<u8>>,
    /// `None` once the connection is closed: nothing can be registered.
    pending: Mutex<Option<HashMap<u64, Pending>>>,
    /// `true` once the connection takes no new requests (closed, or the
    /// proxy said `Goodbye`/`Shutdown`).
    unusable: watch::Sender<bool>,
}

impl Conn {
    fn is_usable(&self) -> bool {
        !*self.unusable.borrow()
    }

    fn in_flight(&self) -> usize {
        self.lock().as_ref().map_or(0, HashMap::len)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<HashMap<u64, Pending>>> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers a waiter; `false` if the connection is already closed.
    fn register(
        &self,
        id: u64,
        operation: Operation,
        tx: oneshot::Sender<Result<KmsResponse, Error>>,
    ) -> bool {
        match self.lock().as_mut() {
            Some(map) if self.is_usable() => {
                map.insert(id, Pending { operation, tx });
                true
            }
            _ => false,
        }
    }

    fn take(&self, id: u64) -> Option<Pending> {
        self.lock().as_mut().and_then(|m| m.remove(&id))
    }

    fn mark_draining(&self) {
        self.unusable.send_replace(true);
    }

    /// Closes the connection. With `error`, every waiter gets it; without,
    /// waiters see their channel dropped (connection lost).
    fn close(&self, error: Option<keybroker_common::Error>) {
        self.unusable.send_replace(true);
        let pending = self.lock().take().unwrap_or_default();
        if let Some(e) = error {
            for (_, p) in pending {
                let _ = p.tx.send(Err(Error::Common(e.clone())));
            }
        }
    }
}

/// Removes a request's waiter when the caller stops waiting (timeout,
/// cancellation), so late answers are dropped.
struct PendingGuard {
    conn: Arc<Conn>,
    id: u64,
}

impl Drop for PendingGuard {
    fn drop(&mut self) {
        let _ = self.conn.take(self.id);
    }
}

/// Connects, reconnects, and publishes the current connection.
async fn supervise(config: ClientConfig, state: watch::Sender<ConnState>, counters: Arc<Counters>) {
    let mut attempt: u32 = 0;
    let mut tasks: Vec<TaskGuard> = Vec::new();
    loop {
        tasks.retain(|t| !t.0.is_finished());
        let connected = match tokio::time::timeout(config.connect_timeout, establish(&config)).await
        {
            Ok(r) => r,
            Err(_) => Err(Error::Unavailable {
                reason: format!(
                    "connecting to {} timed out after {:?}",
                    config.address, config.connect_timeout
                ),
            }),
        };
        match connected {
            Ok((stream, decoder)) => {
                counters.connections.fetch_add(1, Ordering::Relaxed);
                let (tx, rx) = mpsc::channel(OUTGOING_QUEUE);
                let conn = Arc::new(Conn {
                    outgoing: tx,
                    pending: Mutex::new(Some(HashMap::new())),
                    unusable: watch::Sender::new(false),
                });
                let mut unusable = conn.unusable.subscribe();
                tasks.push(TaskGuard(tokio::spawn(drive(
                    conn.clone(),
                    stream,
                    decoder,
                    rx,
                ))));
                tracing::info!(address = %config.address, "connected to the proxy");
                let since = Instant::now();
                state.send_replace(ConnState::Connected(conn));
                let _ = unusable.wait_for(|u| *u).await;
                state.send_replace(ConnState::Connecting {
                    last_error: Some(Arc::from("connection to the proxy closed")),
                });
                tracing::info!(address = %config.address, "proxy connection ended; reconnecting");
                if since.elapsed() >= STABLE_CONNECTION {
                    attempt = 0;
                } else {
                    tokio::time::sleep(config.backoff(attempt)).await;
                    attempt = attempt.saturating_add(1);
                }
            }
            Err(e) => {
                tracing::debug!(address = %config.address, error = %e, "connection attempt failed");
                state.send_replace(ConnState::Connecting {
                    last_error: Some(Arc::from(e.to_string())),
                });
                tokio::time::sleep(config.backoff(attempt)).await;
                attempt = attempt.saturating_add(1);
            }
        }
    }
}

/// Connects and performs the handshake: `Hello`, then `HelloAck` with a
/// version this build offered. Returns the decoder, which may already hold
/// bytes that followed the `HelloAck`.
async fn establish(config: &ClientConfig) -> Result<(BoxStream, FrameDecoder), Error> {
    let mut stream = transport::connect(&config.address).await?;
    let hello = protocol::encode(&Message::hello(config.client_id.clone()))?;
    stream
        .write_all(&hello)
        .await
        .map_err(|e| Error::io("send Hello", e))?;
    let mut decoder = FrameDecoder::new(Limits::new(config.max_frame_len));
    let first = read_message(&mut stream, &mut decoder).await?;
    match first {
        Some(Message::HelloAck { version, server }) => {
            protocol::check_hello_ack(SUPPORTED_VERSIONS, version)?;
            tracing::debug!(version, server = %server, "handshake complete");
            Ok((stream, decoder))
        }
        Some(Message::Error { error }) => Err(Error::Common(error.into())),
        Some(other) => Err(ProtocolError::UnexpectedMessage {
            expected: "HelloAck",
            got: other.kind(),
        }
        .into()),
        None => Err(Error::io(
            "handshake",
            std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "proxy closed the connection",
            ),
        )),
    }
}

/// Reads until one message is decoded; `None` at end of stream.
async fn read_message(
    stream: &mut (impl AsyncRead + Unpin),
    decoder: &mut FrameDecoder,
) -> Result<Option<Message>, Error> {
    let mut buf = vec![0u8; READ_CHUNK];
    loop {
        if let Some(m) = decoder.next_message()? {
            return Ok(Some(m));
        }
        let n = stream
            .read(&mut buf)
            .await
            .map_err(|e| Error::io("read from the proxy", e))?;
        if n == 0 {
            return Ok(None);
        }
        decoder.push(buf.get(..n).unwrap_or_default());
    }
}

/// Runs one connection: the writer and the reader, until either ends.
async fn drive(
    conn: Arc<Conn>,
    stream: BoxStream,
    decoder: FrameDecoder,
    outgoing: mpsc::Receiver<Vec<u8>>,
) {
    let (read_half, write_half) = tokio::io::split(stream);
    let error = tokio::select! {
        e = read_loop(&conn, read_half, decoder) => e,
        e = write_loop(write_half, outgoing) => e,
    };
    if let Some(e) = &error {
        tracing::warn!(error = %e, "proxy connection failed");
    }
    conn.close(error);
}

/// Writes queued frames, batching what is ready. Returns on a write error
/// (the waiters then see a lost connection).
async fn write_loop(
    mut w: impl AsyncWrite + Unpin,
    mut outgoing: mpsc::Receiver<Vec<u8>>,
) -> Option<keybroker_common::Error> {
    let mut batch = Vec::new();
    while let Some(frame) = outgoing.recv().await {
        batch.clear();
        batch.extend_from_slice(&frame);
        while batch.len() < 256 * 1024 {
            match outgoing.try_recv() {
                Ok(f) => batch.extend_from_slice(&f),
                Err(_) => break,
            }
        }
        if let Err(e) = w.write_all(&batch).await {
            tracing::debug!(error = %e, "write to the proxy failed");
            return None;
        }
        if w.flush().await.is_err() {
            return None;
        }
    }
    std::future::pending().await
}

/// Reads and dispatches messages. Returns `None` when the stream ends (or,
/// after `Goodbye`, when nothing is left in flight), or the error every
/// waiter must get (a protocol violation, a fatal `Error` from the proxy).
async fn read_loop(
    conn: &Conn,
    mut r: impl AsyncRead + Unpin,
    mut decoder: FrameDecoder,
) -> Option<keybroker_common::Error> {
    let mut buf = vec![0u8; READ_CHUNK];
    let mut goodbye = false;
    loop {
        loop {
            let message = match decoder.next_message() {
                Ok(Some(m)) => m,
                Ok(None) => break,
                Err(e) => return Some(e.into()),
            };
            match message {
                Message::Response { id, result } => {
                    let Some(p) = conn.take(id) else {
                        // Late answer to a request that timed out or was
                        // cancelled.
                        tracing::debug!(id, "response for a request no longer waiting");
                        continue;
                    };
                    let result = match result {
                        Ok(resp) if resp.operation() != p.operation => {
                            Err(Error::from(ProtocolError::ResponseMismatch {
                                expected: p.operation,
                                got: resp.operation(),
                            }))
                        }
                        Ok(resp) if resp.has_plaintext() => {
                            Err(Error::from(ProtocolError::PlaintextOnWire {
                                operation: resp.operation(),
                            }))
                        }
                        Ok(resp) => Ok(resp),
                        Err(wire) => Err(Error::Common(wire.into())),
                    };
                    let _ = p.tx.send(result);
                }
                Message::Goodbye => {
                    tracing::info!("proxy said Goodbye; draining this connection");
                    goodbye = true;
                    conn.mark_draining();
                }
                Message::Error { error } => return Some(error.into()),
                other => {
                    return Some(
                        ProtocolError::UnexpectedMessage {
                            expected: "Response",
                            got: other.kind(),
                        }
                        .into(),
                    );
                }
            }
        }
        if goodbye && conn.in_flight() == 0 {
            return None;
        }
        match r.read(&mut buf).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => decoder.push(buf.get(..n).unwrap_or_default()),
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

    #[test]
    fn only_read_only_operations_are_retried_in_flight() {
        assert!(retry_safe(Operation::Decrypt));
        assert!(retry_safe(Operation::GenerateRandom));
        assert!(retry_safe(Operation::DescribeKey));
        assert!(retry_safe(Operation::DeriveSharedSecret));
        assert!(!retry_safe(Operation::GenerateDataKey));
        assert!(!retry_safe(Operation::GenerateDataKeyPair));
        assert!(!retry_safe(Operation::GenerateDataKeyWithoutPlaintext));
        assert!(!retry_safe(Operation::GenerateDataKeyPairWithoutPlaintext));
    }
}
