//! Envelope encryption: the message format, sans-I/O.
//!
//! A *message* is data encrypted with AES-256-GCM under a KMS data key,
//! together with what is needed to get that data key back from KMS (its
//! `CiphertextBlob` and the KMS key id). The format follows the AWS
//! Encryption SDK's message format version 2 (framed body, random message id,
//! per-message key derivation with key commitment) with one encrypted data
//! key and without the stored encryption context: the caller supplies the
//! context again to open a message, as KMS `Decrypt` needs it anyway, and it
//! is authenticated in the header tag. The format is Keybroker's own; it is
//! not byte-compatible with the AWS Encryption SDK.
//!
//! This module only turns bytes into bytes: the caller gets the data key (from
//! KMS, through `keybroker_enclave::envelope`) and the random message id, and
//! moves the bytes. [`FrameSealer`] and [`FrameOpener`] work one frame at a
//! time into caller buffers, so a message of any length is processed in
//! memory bounded by its frame length.
//!
//! # Format, version 1
//!
//! All integers are big-endian. `F` is the frame length, `K` the key id
//! length, `B` the `CiphertextBlob` length.
//!
//! ```text
//! header
//! offset    size  field
//! 0         4     magic "KBEV" (0x4b 0x42 0x45 0x56)
//! 4         1     version = 0x01
//! 5         1     algorithm = 0x01: AES-256-GCM, HKDF-SHA512 key derivation, key commitment
//! 6         4     frame length F, 1..=4 MiB (MAX_FRAME_LEN)
//! 10        32    message id (random, fresh per message)
//! 42        2     K, 1..=2048 (MAX_KEY_ID_LEN)
//! 44        K     KMS key id (UTF-8; the key ARN GenerateDataKey answered with)
//! 44+K      2     B, 1..=6144 (MAX_CIPHERTEXT_BLOB_LEN)
//! 46+K      B     KMS CiphertextBlob of the data key
//! 46+K+B    32    commitment value
//! 78+K+B    16    header tag
//!
//! body: frames with sequence numbers 1, 2, 3, ..., the last one final
//! regular frame (F plaintext bytes):
//! 0         4     sequence number, 1..=0xfffffffe
//! 4         F     ciphertext
//! 4+F       16    tag
//! final frame (exactly one, last; L plaintext bytes, 0 <= L < F):
//! 0         4     0xffffffff (final frame marker)
//! 4         4     sequence number
//! 8         4     L
//! 12        L     ciphertext
//! 12+L      16    tag
//! ```
//!
//! Nothing follows the final frame. A plaintext of `n` bytes is
//! `n / F` regular frames and a final frame of `n % F` bytes, so every
//! plaintext has exactly one encoding and a multiple of `F` ends with an
//! empty final frame.
//!
//! ## Keys (RFC 5869, HKDF with SHA-512, as the AWS Encryption SDK's committing suites)
//!
//! ```text
//! PRK        = HKDF-Extract(salt = message id, IKM = data key (32 bytes))
//! message key = HKDF-Expand(PRK, "KBEV" || 0x01 || 0x01 || "DERIVEKEY", 32)
//! commitment  = HKDF-Expand(PRK, "KBEV" || 0x01 || 0x01 || "COMMITKEY", 32)
//! ```
//!
//! The message key is fresh for every message (the message id is random), so
//! one data key, cached, can seal up to 2^32 messages without nonce reuse and
//! frame nonces can be counters. The commitment value binds the message to
//! one data key: a message cannot be made to open under two keys.
//!
//! ## Authentication (AES-256-GCM, NIST SP 800-38D, under the message key)
//!
//! - header tag: GCM over an empty plaintext, nonce = 12 zero bytes, AAD =
//!   header bytes 0..78+K+B (magic through commitment) || the canonical
//!   encryption context (below). A different context, data key, or any
//!   changed header byte fails here, before any frame is looked at;
//! - frame `s`: nonce = 8 zero bytes || `s` (u32), AAD = message id ||
//!   `s` (u32) || final flag (u8: 0 regular, 1 final) || plaintext length
//!   (u64). Frames are checked to arrive in sequence, so reordering, removal,
//!   duplication, truncation (no final frame) and extension (bytes after it)
//!   are all detected.
//!
//! ## Canonical encryption context
//!
//! The number of pairs (u16), then for each pair in ascending byte order of
//! the keys: key length (u16), key (UTF-8), value length (u16), value. The
//! empty context is `0x0000`. KMS binds the same context to the
//! `CiphertextBlob` (`EncryptionContext` of `GenerateDataKey`/`Decrypt`).
//!
//! # Opening releases no unauthenticated plaintext
//!
//! [`FrameOpener::open_frame`] appends a frame's plaintext only after its tag
//! verifies (on failure the bytes it decrypted are zeroed), and
//! [`FrameOpener::open_all`] returns nothing unless the whole message,
//! final frame included, authenticates. A streaming caller that writes each
//! frame as it opens must discard its output if the message later fails:
//! truncation is only detectable at the end.

mod frame;
mod header;

#[cfg(test)]
mod tests;

pub use frame::{FrameOpener, FrameSealer, seal_message};
pub use header::{Header, HeaderParams};

use aws_lc_rs::hkdf::{HKDF_SHA512, KeyType, Salt};
use aws_lc_rs::rand::SecureRandom;
use zeroize::Zeroizing;

use crate::Error;
use crate::kms::EncryptionContext;

/// The first four bytes of every message.
pub const MAGIC: [u8; 4] = *b"KBEV";
/// The format version this module reads and writes.
pub const VERSION: u8 = 1;
/// Length of the random message id.
pub const MESSAGE_ID_LEN: usize = 32;
/// Length of the data key: AES-256.
pub const DATA_KEY_LEN: usize = 32;
/// Length of the key commitment value.
pub const COMMITMENT_LEN: usize = 32;
/// Length of an AES-GCM tag.
pub const TAG_LEN: usize = 16;
/// Longest KMS key id: the KMS API's limit for `KeyId` (1..=2048).
pub const MAX_KEY_ID_LEN: usize = 2048;
/// Longest `CiphertextBlob`: the KMS API's limit (1..=6144 bytes).
pub const MAX_CIPHERTEXT_BLOB_LEN: usize = 6144;
/// Largest frame length a message may declare. It bounds the buffer a
/// streaming reader needs.
pub const MAX_FRAME_LEN: u32 = 4 << 20;
/// The frame length of new messages unless the caller chooses another.
pub const DEFAULT_FRAME_LEN: u32 = 64 << 10;
/// Header bytes besides the key id and the blob.
pub const HEADER_OVERHEAD: usize =
    4 + 1 + 1 + 4 + MESSAGE_ID_LEN + 2 + 2 + COMMITMENT_LEN + TAG_LEN;
/// Largest possible header.
pub const MAX_HEADER_LEN: usize = HEADER_OVERHEAD + MAX_KEY_ID_LEN + MAX_CIPHERTEXT_BLOB_LEN;
/// Bytes a regular frame adds to its plaintext (sequence number, tag).
pub const FRAME_OVERHEAD: usize = 4 + TAG_LEN;
/// Bytes the final frame adds to its plaintext (marker, sequence number,
/// length, tag).
pub const FINAL_FRAME_OVERHEAD: usize = 12 + TAG_LEN;
/// The value in a frame's first four bytes that marks the final frame.
pub const FINAL_FRAME_MARKER: u32 = u32::MAX;

/// A message's algorithm (header byte 5).
#[non_exhaustive]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Algorithm {
    /// `0x01`: AES-256-GCM with a per-message key and a key commitment value,
    /// both derived with HKDF-SHA512 from the data key and the message id
    /// (the construction of the AWS Encryption SDK's
    /// `AES_256_GCM_HKDF_SHA512_COMMIT_KEY` suite).
    Aes256GcmHkdfSha512Commit,
}

impl Algorithm {
    /// The header byte.
    pub const fn id(self) -> u8 {
        match self {
            Self::Aes256GcmHkdfSha512Commit => 1,
        }
    }

    /// The algorithm of a header byte, if this build knows it.
    pub const fn from_id(id: u8) -> Option<Self> {
        match id {
            1 => Some(Self::Aes256GcmHkdfSha512Commit),
            _ => None,
        }
    }
}

/// The outcome of decoding from a buffer that may hold only part of the input.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decoded<T> {
    /// Done: the value, and how many bytes of the buffer it took.
    Complete {
        /// The decoded value.
        value: T,
        /// Bytes consumed from the start of the buffer.
        consumed: usize,
    },
    /// The buffer holds only the start; at least `needed` more bytes are
    /// required (exactly `needed` when the lengths are known). A streaming
    /// reader that reads exactly `needed` bytes never reads past the message.
    Incomplete {
        /// Additional bytes required.
        needed: usize,
    },
}

/// Why a message was rejected.
///
/// Details are field names, lengths and sequence numbers, never key material
/// or plaintext.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvelopeError {
    /// The message ends inside its header or a frame, or before its final frame.
    #[error("message truncated")]
    Truncated,
    /// The input does not start with [`MAGIC`]: not an envelope message.
    #[error("not a keybroker envelope message (bad magic)")]
    BadMagic,
    /// A format version this build does not read.
    #[error("unsupported envelope version {0}")]
    UnsupportedVersion(u8),
    /// An algorithm id this build does not know.
    #[error("unsupported envelope algorithm {0}")]
    UnsupportedAlgorithm(u8),
    /// A length field exceeds its limit; nothing of the field was read.
    #[error("{field} is {len} bytes, more than the {max}-byte limit")]
    FieldTooLarge {
        /// The field.
        field: &'static str,
        /// Its declared length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A field has a value the format does not allow (an empty key id, a
    /// zero frame length, a key id that is not UTF-8).
    #[error("invalid {field}: {reason}")]
    InvalidField {
        /// The field.
        field: &'static str,
        /// What is wrong.
        reason: &'static str,
    },
    /// The header does not authenticate: wrong data key, wrong encryption
    /// context, or a modified header. Deliberately one error for all three.
    #[error(
        "message header does not authenticate (wrong encryption context or data key, or modified)"
    )]
    HeaderAuthentication,
    /// A frame's tag does not verify: the frame was modified.
    #[error("frame {sequence} does not authenticate")]
    FrameAuthentication {
        /// The frame's sequence number.
        sequence: u32,
    },
    /// A frame arrived out of sequence: frames were reordered, removed or
    /// duplicated.
    #[error("frame out of sequence: expected {expected}, found {found}")]
    FrameSequence {
        /// The sequence number due.
        expected: u32,
        /// The sequence number found.
        found: u32,
    },
    /// Bytes follow the final frame.
    #[error("data after the final frame")]
    TrailingData,
    /// Sealing: the data key is not 32 bytes (the source returned something
    /// else). Opening reports a key of the wrong length as
    /// [`EnvelopeError::HeaderAuthentication`], like any wrong key.
    #[error("data key is {len} bytes, not {DATA_KEY_LEN}")]
    DataKeyLength {
        /// The length received.
        len: usize,
    },
}

/// The canonical serialization of an encryption context (module docs), the
/// associated data of the header tag.
///
/// # Errors
/// [`Error::InvalidArgument`] if the context has more than 65,535 pairs or a
/// key or value longer than 65,535 bytes.
pub fn encode_context(context: &EncryptionContext) -> Result<Vec<u8>, Error> {
    let too_large = |what: &str| Error::InvalidArgument(format!("encryption context: {what}"));
    let count = u16::try_from(context.len()).map_err(|_| too_large("more than 65535 pairs"))?;
    let mut out = Vec::with_capacity(
        2 + context
            .iter()
            .map(|(k, v)| 4 + k.len() + v.len())
            .sum::<usize>(),
    );
    out.extend_from_slice(&count.to_be_bytes());
    // BTreeMap<String, _> iterates in ascending byte order of the keys.
    for (k, v) in context {
        for s in [k, v] {
            let len = u16::try_from(s.len())
                .map_err(|_| too_large("a key or value longer than 65535 bytes"))?;
            out.extend_from_slice(&len.to_be_bytes());
            out.extend_from_slice(s.as_bytes());
        }
    }
    Ok(out)
}

/// A fresh random message id.
///
/// # Errors
/// [`Error::Crypto`] if the random generator fails.
pub fn new_message_id(rng: &dyn SecureRandom) -> Result<[u8; MESSAGE_ID_LEN], Error> {
    let mut id = [0u8; MESSAGE_ID_LEN];
    rng.fill(&mut id)
        .map_err(|_| Error::Crypto("random message id"))?;
    Ok(id)
}

/// The per-message key and the commitment value of a data key and message id.
pub(crate) struct DerivedKeys {
    pub(crate) message_key: Zeroizing<[u8; DATA_KEY_LEN]>,
    pub(crate) commitment: [u8; COMMITMENT_LEN],
}

struct Len32;

impl KeyType for Len32 {
    fn len(&self) -> usize {
        32
    }
}

/// HKDF-SHA512 derivation of the module docs.
pub(crate) fn derive_keys(
    algorithm: Algorithm,
    data_key: &[u8],
    message_id: &[u8; MESSAGE_ID_LEN],
) -> Result<DerivedKeys, Error> {
    if data_key.len() != DATA_KEY_LEN {
        return Err(EnvelopeError::DataKeyLength {
            len: data_key.len(),
        }
        .into());
    }
    let prk = Salt::new(HKDF_SHA512, message_id).extract(data_key);
    let alg = [VERSION, algorithm.id()];
    let mut message_key = Zeroizing::new([0u8; DATA_KEY_LEN]);
    let mut commitment = [0u8; COMMITMENT_LEN];
    for (label, out) in [
        (&b"DERIVEKEY"[..], &mut message_key[..]),
        (&b"COMMITKEY"[..], &mut commitment[..]),
    ] {
        prk.expand(&[&MAGIC[..], &alg[..], label], Len32)
            .and_then(|okm| okm.fill(out))
            .map_err(|_| Error::Crypto("HKDF-SHA512"))?;
    }
    Ok(DerivedKeys {
        message_key,
        commitment,
    })
}
