//! Envelope encryption with KMS data keys, and a data-key cache.
//!
//! [`Envelope::seal`] encrypts data with AES-256-GCM under a data key from
//! KMS `GenerateDataKey` and returns a self-contained message: a versioned
//! header with the KMS key id and the data key's `CiphertextBlob`, then the
//! data in authenticated frames ([`keybroker_common::envelope`] documents
//! the format byte by byte). [`Envelope::open`] gets the data key back with
//! KMS `Decrypt` and returns the plaintext. Through [`crate::Client`] both
//! data keys reach only the enclave (`Recipient`).
//!
//! The encryption context is bound twice: KMS binds it to the
//! `CiphertextBlob`, and the message header authenticates it. A message
//! opened with another context, a modified header or frame, or a truncated or
//! extended message fails with a typed error
//! ([`keybroker_common::EnvelopeError`] inside [`Error::Common`], or the KMS
//! error `Decrypt` answered) and releases no plaintext.
//!
//! ```no_run
//! # async fn demo(client: keybroker_enclave::Client) -> Result<(), keybroker_enclave::Error> {
//! use std::time::Duration;
//! use keybroker_common::kms::EncryptionContext;
//! use keybroker_enclave::envelope::{CachingConfig, DataKeyCache, Envelope};
//!
//! let cache = DataKeyCache::new(
//!     CachingConfig::new(Duration::from_secs(300)).with_max_messages_encrypted(1000),
//! )?;
//! let envelope = Envelope::new(client, "arn:aws:kms:us-east-1:111122223333:key/...")
//!     .with_cache(cache);
//! let context = EncryptionContext::from([("tenant".to_owned(), "a".to_owned())]);
//! let message = envelope.seal(b"secret", &context).await?;
//! assert_eq!(&envelope.open(&message, &context).await?[..], b"secret");
//! # Ok(()) }
//! ```
//!
//! # Streaming
//!
//! [`Envelope::seal_stream`] and [`Envelope::open_stream`] process input of
//! any length with two frame buffers (64 KiB each by default). The opener
//! writes each frame's plaintext only once that frame authenticates, but it
//! can tell that the message was truncated or extended only at its end: **if
//! `open_stream` fails, discard everything it wrote** (the AWS Encryption SDK
//! documents the same for its streaming decryption).
//!
//! # Caching
//!
//! Without a cache every seal calls `GenerateDataKey` and every open calls
//! `Decrypt`. With a [`DataKeyCache`] a data key seals up to the configured
//! number of messages and bytes within its age, and a decrypted data key
//! opens further messages that carry the same `CiphertextBlob` and context
//! within its age (it is cached only once a message header authenticated
//! with it); see [`CachingConfig`] for the limits, which are the AWS
//! Encryption SDK's. As there, a message longer than `max_bytes_encrypted`
//! and a stream (whose length is not known in advance) get a data key of
//! their own that is not cached. Each message still has its own key derived
//! from the data key and a random message id, so caching does not reuse GCM
//! keys or nonces.
//!
//! # Which KMS key opens a message
//!
//! `open` asks KMS to decrypt with the envelope's key id (KMS `Decrypt`
//! `KeyId`), so a message whose data key belongs to another KMS key fails
//! with KMS's `IncorrectKeyException` instead of being opened under a key
//! the caller did not choose (the AWS Encryption SDK's strict mode). The key
//! id recorded in the header is informational ([`peek_header`]), except that
//! a source with a key allowlist ([`Client`] in e2e mode) refuses a header
//! whose key it does not allow ([`DataKeySource::check_key_allowed`]).

mod cache;

#[cfg(test)]
mod tests;

pub use cache::{CacheStats, CachingConfig, DataKeyCache};

use std::sync::Arc;

use aws_lc_rs::rand::SystemRandom;
use keybroker_common::EnvelopeError;
use keybroker_common::envelope::{
    DATA_KEY_LEN, DEFAULT_FRAME_LEN, Decoded, FINAL_FRAME_OVERHEAD, FrameOpener, FrameSealer,
    Header, HeaderParams, encode_context, new_message_id, seal_message,
};
use keybroker_common::kms::{
    Blob, DataKeySpec, DecryptRequest, EncryptionContext, GenerateDataKeyRequest,
};
use keybroker_common::secret::SecretBytes;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use zeroize::Zeroizing;

use crate::{Client, DataKey, Error};
use cache::Material;

/// Where an [`Envelope`] gets its data keys: KMS through [`Client`], or
/// anything else that behaves like it (a test double, another client).
pub trait DataKeySource: Send + Sync {
    /// KMS `GenerateDataKey` with `KeySpec` `AES_256` under `key_id`, with
    /// `context` as `EncryptionContext`. The answer's `key_id` (the key ARN)
    /// is recorded in the message header.
    fn generate_data_key(
        &self,
        key_id: &str,
        context: &EncryptionContext,
    ) -> impl Future<Output = Result<DataKey, Error>> + Send;

    /// KMS `Decrypt` of `ciphertext_blob` with `KeyId` = `key_id` and
    /// `context` as `EncryptionContext`: the 32-byte data key. A key of any
    /// other length fails the message header like a wrong key.
    fn decrypt_data_key(
        &self,
        key_id: &str,
        ciphertext_blob: &[u8],
        context: &EncryptionContext,
    ) -> impl Future<Output = Result<SecretBytes, Error>> + Send;

    /// Whether the key a message header names may be used at all, checked
    /// before any data key is fetched or taken from the cache. [`Client`] in
    /// e2e mode checks it against its key allowlist; the default allows any.
    ///
    /// # Errors
    /// [`Error::KeyNotAllowed`] for a key the source refuses.
    fn check_key_allowed(&self, key_id: &str) -> Result<(), Error> {
        let _ = key_id;
        Ok(())
    }
}

/// An empty context is sent as no context (KMS treats them alike).
fn kms_context(context: &EncryptionContext) -> Option<EncryptionContext> {
    (!context.is_empty()).then(|| context.clone())
}

/// KMS through the broker: `GenerateDataKey` and `Decrypt` with `Recipient`,
/// so the data key is decrypted only inside the enclave.
impl DataKeySource for Client {
    async fn generate_data_key(
        &self,
        key_id: &str,
        context: &EncryptionContext,
    ) -> Result<DataKey, Error> {
        Client::generate_data_key(
            self,
            GenerateDataKeyRequest {
                key_id: Some(key_id.to_owned()),
                key_spec: Some(DataKeySpec::Aes256),
                encryption_context: kms_context(context),
                ..Default::default()
            },
        )
        .await
    }

    async fn decrypt_data_key(
        &self,
        key_id: &str,
        ciphertext_blob: &[u8],
        context: &EncryptionContext,
    ) -> Result<SecretBytes, Error> {
        // The length is known: a ciphertext that does not decrypt to 32
        // bytes yields 32 pseudorandom bytes (implicit rejection), which then
        // fail the header exactly as a wrong key does.
        Client::decrypt_expecting(
            self,
            DecryptRequest {
                ciphertext_blob: Some(Blob(ciphertext_blob.to_vec())),
                encryption_context: kms_context(context),
                key_id: Some(key_id.to_owned()),
                ..Default::default()
            },
            DATA_KEY_LEN,
        )
        .await
        .map(|d| d.plaintext)
    }

    fn check_key_allowed(&self, key_id: &str) -> Result<(), Error> {
        Client::check_key_allowed(self, key_id)
    }
}

impl<S: DataKeySource + ?Sized> DataKeySource for Arc<S> {
    fn generate_data_key(
        &self,
        key_id: &str,
        context: &EncryptionContext,
    ) -> impl Future<Output = Result<DataKey, Error>> + Send {
        (**self).generate_data_key(key_id, context)
    }

    fn decrypt_data_key(
        &self,
        key_id: &str,
        ciphertext_blob: &[u8],
        context: &EncryptionContext,
    ) -> impl Future<Output = Result<SecretBytes, Error>> + Send {
        (**self).decrypt_data_key(key_id, ciphertext_blob, context)
    }

    fn check_key_allowed(&self, key_id: &str) -> Result<(), Error> {
        (**self).check_key_allowed(key_id)
    }
}

/// Seals and opens envelope-encrypted messages under one KMS key (see the
/// [module docs](self)).
pub struct Envelope<S> {
    source: S,
    key_id: String,
    frame_len: u32,
    cache: Option<DataKeyCache>,
    rng: SystemRandom,
}

impl<S> core::fmt::Debug for Envelope<S> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Envelope")
            .field("key_id", &self.key_id)
            .field("frame_len", &self.frame_len)
            .field("cache", &self.cache)
            .finish_non_exhaustive()
    }
}

fn io_err(context: &'static str) -> impl FnOnce(std::io::Error) -> Error {
    move |e| Error::io(context, e)
}

/// Reads until `buf` is full or the input ends; returns the bytes read.
async fn read_full(reader: &mut (impl AsyncRead + Unpin), buf: &mut [u8]) -> Result<usize, Error> {
    let mut filled = 0;
    while let Some(rest) = buf.get_mut(filled..).filter(|r| !r.is_empty()) {
        let n = reader
            .read(rest)
            .await
            .map_err(io_err("reading the plaintext"))?;
        if n == 0 {
            break;
        }
        filled += n;
    }
    Ok(filled)
}

/// Appends exactly `n` more bytes of the message to `buf`.
async fn read_more(
    reader: &mut (impl AsyncRead + Unpin),
    buf: &mut Vec<u8>,
    n: usize,
) -> Result<(), Error> {
    let start = buf.len();
    buf.resize(start + n, 0);
    match reader.read_exact(buf.split_at_mut(start).1).await {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
            Err(Error::Common(EnvelopeError::Truncated.into()))
        }
        Err(e) => Err(Error::io("reading the message", e)),
    }
}

fn check_data_key(key: &SecretBytes) -> Result<(), Error> {
    if key.len() == DATA_KEY_LEN {
        Ok(())
    } else {
        Err(Error::Common(
            EnvelopeError::DataKeyLength { len: key.len() }.into(),
        ))
    }
}

/// Decodes a message's header without authenticating it or calling KMS (to
/// see which KMS key id it records, or its frame length).
///
/// # Errors
/// `Error::Common(Envelope(_))` for a malformed or truncated header.
pub fn peek_header(message: &[u8]) -> Result<Header, Error> {
    match Header::decode(message)? {
        Decoded::Complete { value, .. } => Ok(value),
        Decoded::Incomplete { .. } => Err(Error::Common(EnvelopeError::Truncated.into())),
    }
}

impl<S: DataKeySource> Envelope<S> {
    /// Seals under the KMS key `key_id` (key id, key ARN, alias name or
    /// alias ARN; prefer the ARN, as `open` asks KMS to decrypt with exactly
    /// this key id), without a cache, with frames of
    /// [`DEFAULT_FRAME_LEN`] (64 KiB).
    pub fn new(source: S, key_id: impl Into<String>) -> Self {
        Self {
            source,
            key_id: key_id.into(),
            frame_len: DEFAULT_FRAME_LEN,
            cache: None,
            rng: SystemRandom::new(),
        }
    }

    /// Uses `cache` for data keys (it may be shared with other envelopes of
    /// the same source: clones share entries).
    pub fn with_cache(mut self, cache: DataKeyCache) -> Self {
        self.cache = Some(cache);
        self
    }

    /// Plaintext bytes per frame of new messages (1..=4 MiB). Streaming
    /// buffers are about one frame each.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] outside 1..=4 MiB.
    pub fn with_frame_len(mut self, frame_len: u32) -> Result<Self, Error> {
        if !(1..=keybroker_common::envelope::MAX_FRAME_LEN).contains(&frame_len) {
            return Err(Error::InvalidArgument(format!(
                "frame length {frame_len} is outside 1..=4 MiB"
            )));
        }
        self.frame_len = frame_len;
        Ok(self)
    }

    /// The KMS key id data keys are generated and decrypted under.
    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    /// The data-key cache, if any.
    pub fn cache(&self) -> Option<&DataKeyCache> {
        self.cache.as_ref()
    }

    /// The data-key source.
    pub fn source(&self) -> &S {
        &self.source
    }

    /// A data key for sealing a message of `len` bytes (`None`: unknown),
    /// from the cache when allowed, else from KMS.
    async fn encryption_material(
        &self,
        context: &EncryptionContext,
        context_bytes: &[u8],
        len: Option<u64>,
    ) -> Result<Arc<Material>, Error> {
        let cache = match (&self.cache, len) {
            (Some(cache), Some(len)) if cache.cacheable(len) => Some((cache, len)),
            _ => None,
        };
        if let Some((cache, len)) = cache
            && let Some(m) = cache.take_encrypt(&self.key_id, context_bytes, len)
        {
            return Ok(m);
        }
        let key = self.source.generate_data_key(&self.key_id, context).await?;
        check_data_key(&key.plaintext)?;
        let material = Arc::new(Material {
            key: key.plaintext,
            key_id: key.key_id.unwrap_or_else(|| self.key_id.clone()),
            ciphertext_blob: key.ciphertext_blob,
        });
        if let Some((cache, len)) = cache {
            cache.put_encrypt(&self.key_id, context_bytes, material.clone(), len);
        }
        Ok(material)
    }

    /// Authenticates `header` with its data key, from the cache or KMS
    /// `Decrypt`, and returns the frame opener.
    ///
    /// A key from `Decrypt` enters the cache only once the header
    /// authenticates with it: a wrong key (a tampered or substituted
    /// `CiphertextForRecipient`, which decrypts to a pseudorandom key) is
    /// never cached, so it cannot fail later messages, and a failed open
    /// looks the same whatever the reason (`Decrypt` again next time).
    async fn opener(
        &self,
        header: &Header,
        context: &EncryptionContext,
        context_bytes: &[u8],
    ) -> Result<FrameOpener, Error> {
        // E2e mode: a header naming a key outside the allowlist is refused
        // before anything else (issue 10, "Key pinning").
        self.source.check_key_allowed(header.key_id())?;
        let blob = header.ciphertext_blob();
        if let Some(m) = self
            .cache
            .as_ref()
            .and_then(|c| c.get_decrypt(&self.key_id, blob, context_bytes))
        {
            return Ok(header.open(m.key.expose(), context)?);
        }
        let key = self
            .source
            .decrypt_data_key(&self.key_id, blob, context)
            .await?;
        // A key of the wrong length fails here as a wrong key does.
        let opener = header.open(key.expose(), context)?;
        if let Some(cache) = &self.cache {
            let material = Arc::new(Material {
                key,
                key_id: self.key_id.clone(),
                ciphertext_blob: Blob(blob.to_vec()),
            });
            cache.put_decrypt(&self.key_id, blob, context_bytes, material);
        }
        Ok(opener)
    }

    fn header_params<'a>(&self, material: &'a Material) -> Result<HeaderParams<'a>, Error> {
        Ok(HeaderParams {
            key_id: &material.key_id,
            ciphertext_blob: &material.ciphertext_blob.0,
            message_id: new_message_id(&self.rng)?,
            frame_len: self.frame_len,
        })
    }

    /// Encrypts `plaintext` under a data key bound to `context`; returns the
    /// message (header and frames). Calls KMS `GenerateDataKey` unless the
    /// cache has a usable key.
    ///
    /// The encryption runs on the calling task; for large inputs prefer
    /// [`Envelope::seal_stream`], which also bounds memory.
    ///
    /// # Errors
    /// The source's errors (KMS, proxy, connection);
    /// [`Error::InvalidArgument`] for a context too large to encode;
    /// `EnvelopeError::DataKeyLength` if the source returned a key that is
    /// not 32 bytes.
    pub async fn seal(
        &self,
        plaintext: &[u8],
        context: &EncryptionContext,
    ) -> Result<Vec<u8>, Error> {
        let context_bytes = encode_context(context)?;
        let len = u64::try_from(plaintext.len()).ok();
        let material = self
            .encryption_material(context, &context_bytes, len)
            .await?;
        let params = self.header_params(&material)?;
        Ok(seal_message(
            material.key.expose(),
            &params,
            context,
            plaintext,
        )?)
    }

    /// Decrypts a message sealed under this envelope's KMS key with the same
    /// `context`. The plaintext is returned only if the whole message
    /// authenticates. Calls KMS `Decrypt` unless the cache holds the data key.
    ///
    /// # Errors
    /// `Error::Common(Envelope(_))` for a malformed, modified, truncated or
    /// extended message, a wrong context, or a data key from `Decrypt` that
    /// is not the message's (whatever its length:
    /// [`EnvelopeError::HeaderAuthentication`]); the KMS error of `Decrypt`
    /// (`InvalidCiphertextException` for a context KMS did not bind,
    /// `IncorrectKeyException` for another KMS key); the source's other
    /// errors.
    pub async fn open(
        &self,
        message: &[u8],
        context: &EncryptionContext,
    ) -> Result<Zeroizing<Vec<u8>>, Error> {
        let context_bytes = encode_context(context)?;
        let (header, consumed) = match Header::decode(message)? {
            Decoded::Complete { value, consumed } => (value, consumed),
            Decoded::Incomplete { .. } => {
                return Err(Error::Common(EnvelopeError::Truncated.into()));
            }
        };
        let opener = self.opener(&header, context, &context_bytes).await?;
        Ok(opener.open_all(message.get(consumed..).unwrap_or_default())?)
    }

    /// Seals everything `reader` yields into `writer`, one frame at a time
    /// (memory: about two frames), and flushes `writer`; returns the number
    /// of plaintext bytes. The length is not known in advance, so the data
    /// key is always fresh from KMS and not cached (as in the AWS Encryption
    /// SDK).
    ///
    /// Pass `&mut reader` / `&mut writer` to keep using them afterwards;
    /// shut the writer down when the receiving side waits for the end of
    /// the stream.
    ///
    /// # Errors
    /// As [`Envelope::seal`]; [`Error::Io`] when reading or writing fails
    /// (the output is then incomplete and does not open).
    pub async fn seal_stream<R, W>(
        &self,
        mut reader: R,
        mut writer: W,
        context: &EncryptionContext,
    ) -> Result<u64, Error>
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        let context_bytes = encode_context(context)?;
        let material = self
            .encryption_material(context, &context_bytes, None)
            .await?;
        let params = self.header_params(&material)?;
        let (header, mut sealer) = FrameSealer::new(material.key.expose(), &params, context)?;
        drop(material);
        let frame_len = sealer.frame_len();
        let mut out = Vec::with_capacity(frame_len + FINAL_FRAME_OVERHEAD);
        header.encode_into(&mut out);
        let mut buf = Zeroizing::new(vec![0u8; frame_len]);
        let mut total = 0u64;
        let last = loop {
            let n = read_full(&mut reader, &mut buf).await?;
            total += n as u64;
            if n < frame_len {
                break n;
            }
            sealer.seal_frame(&buf, &mut out)?;
            writer
                .write_all(&out)
                .await
                .map_err(io_err("writing the message"))?;
            out.clear();
        };
        sealer.seal_final(buf.get(..last).unwrap_or_default(), &mut out)?;
        writer
            .write_all(&out)
            .await
            .map_err(io_err("writing the message"))?;
        writer
            .flush()
            .await
            .map_err(io_err("writing the message"))?;
        Ok(total)
    }

    /// Opens the message `reader` yields, writing the plaintext to `writer`
    /// frame by frame (memory: about two frames), and flushes `writer`;
    /// returns the number of plaintext bytes. The input must end after the
    /// message.
    ///
    /// **On error, discard what was written**: each frame is written only
    /// once it authenticates, but a truncated message, a missing final frame
    /// or data after it is detected only at the end.
    ///
    /// # Errors
    /// As [`Envelope::open`]; [`Error::Io`] when reading or writing fails.
    pub async fn open_stream<R, W>(
        &self,
        mut reader: R,
        mut writer: W,
        context: &EncryptionContext,
    ) -> Result<u64, Error>
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        let context_bytes = encode_context(context)?;
        // Reads exactly what the decoder asks for, so never past the header
        // (at most MAX_HEADER_LEN bytes).
        let mut buf = Vec::with_capacity(512);
        let header = loop {
            match Header::decode(&buf)? {
                Decoded::Complete { value, .. } => break value,
                Decoded::Incomplete { needed } => read_more(&mut reader, &mut buf, needed).await?,
            }
        };
        let mut opener = self.opener(&header, context, &context_bytes).await?;
        buf.clear();
        buf.reserve(opener.frame_len() + FINAL_FRAME_OVERHEAD);
        let mut plaintext = Zeroizing::new(Vec::with_capacity(opener.frame_len()));
        let mut total = 0u64;
        while !opener.is_finished() {
            match opener.open_frame(&buf, &mut plaintext)? {
                Decoded::Incomplete { needed } => read_more(&mut reader, &mut buf, needed).await?,
                Decoded::Complete { .. } => {
                    writer
                        .write_all(&plaintext)
                        .await
                        .map_err(io_err("writing the plaintext"))?;
                    total += plaintext.len() as u64;
                    plaintext.clear();
                    buf.clear();
                }
            }
        }
        let mut probe = [0u8; 1];
        if reader
            .read(&mut probe)
            .await
            .map_err(io_err("reading the message"))?
            != 0
        {
            return Err(Error::Common(EnvelopeError::TrailingData.into()));
        }
        writer
            .flush()
            .await
            .map_err(io_err("writing the plaintext"))?;
        Ok(total)
    }
}
