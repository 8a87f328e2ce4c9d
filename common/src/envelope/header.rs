//! The message header: decode, encode, authenticate.

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use aws_lc_rs::constant_time::verify_slices_are_equal;

use super::frame::FrameOpener;
use super::{
    Algorithm, COMMITMENT_LEN, DATA_KEY_LEN, Decoded, EnvelopeError, HEADER_OVERHEAD, MAGIC,
    MAX_CIPHERTEXT_BLOB_LEN, MAX_FRAME_LEN, MAX_KEY_ID_LEN, MESSAGE_ID_LEN, TAG_LEN, VERSION,
    derive_keys, encode_context,
};
use crate::Error;
use crate::kms::{Blob, EncryptionContext};

/// What the sealer puts into a new header.
#[derive(Clone, Copy, Debug)]
pub struct HeaderParams<'a> {
    /// The KMS key id (preferably the key ARN `GenerateDataKey` answered
    /// with), 1..=[`MAX_KEY_ID_LEN`] bytes.
    pub key_id: &'a str,
    /// The `CiphertextBlob` of the data key, 1..=[`MAX_CIPHERTEXT_BLOB_LEN`] bytes.
    pub ciphertext_blob: &'a [u8],
    /// A fresh random message id ([`super::new_message_id`]). Never reuse one
    /// with the same data key.
    pub message_id: [u8; MESSAGE_ID_LEN],
    /// Plaintext bytes per frame, 1..=[`MAX_FRAME_LEN`].
    pub frame_len: u32,
}

/// A decoded message header (layout in the [module docs](super)).
///
/// Decoding checks the structure and the limits only; [`Header::open`]
/// authenticates it with the data key and the encryption context.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header {
    algorithm: Algorithm,
    frame_len: u32,
    message_id: [u8; MESSAGE_ID_LEN],
    key_id: String,
    ciphertext_blob: Blob,
    commitment: [u8; COMMITMENT_LEN],
    tag: [u8; TAG_LEN],
}

/// Why a decoding step stopped.
enum Step {
    Need(usize),
    Fail(EnvelopeError),
}

impl From<EnvelopeError> for Step {
    fn from(e: EnvelopeError) -> Self {
        Step::Fail(e)
    }
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], Step> {
        let rest = self.buf.get(self.pos..).unwrap_or_default();
        match rest.get(..n) {
            Some(s) => {
                self.pos += n;
                Ok(s)
            }
            None => Err(Step::Need(n - rest.len())),
        }
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], Step> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }

    /// A u16 length prefix, checked against `1..=max` before its bytes are read.
    fn len_prefix(&mut self, field: &'static str, max: usize) -> Result<usize, Step> {
        let len = usize::from(u16::from_be_bytes(self.array()?));
        check_len(field, len, max)?;
        Ok(len)
    }
}

fn check_len(field: &'static str, len: usize, max: usize) -> Result<(), EnvelopeError> {
    if len == 0 {
        Err(EnvelopeError::InvalidField {
            field,
            reason: "empty",
        })
    } else if len > max {
        Err(EnvelopeError::FieldTooLarge { field, len, max })
    } else {
        Ok(())
    }
}

/// Checks a frame length against `1..=MAX_FRAME_LEN`.
pub(crate) fn check_frame_len(frame_len: u32) -> Result<(), EnvelopeError> {
    check_len("frame length", frame_len as usize, MAX_FRAME_LEN as usize)
}

fn zero_nonce() -> Nonce {
    Nonce::assume_unique_for_key([0u8; NONCE_LEN])
}

impl Header {
    /// The algorithm.
    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    /// Plaintext bytes per frame.
    pub fn frame_len(&self) -> u32 {
        self.frame_len
    }

    /// The random message id.
    pub fn message_id(&self) -> &[u8; MESSAGE_ID_LEN] {
        &self.message_id
    }

    /// The KMS key id recorded by the sealer. Informational: an opener should
    /// ask KMS to decrypt with the key it expects, not with this one.
    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    /// The `CiphertextBlob` of the data key, for KMS `Decrypt`.
    pub fn ciphertext_blob(&self) -> &[u8] {
        &self.ciphertext_blob.0
    }

    /// Length of the encoded header in bytes.
    pub fn encoded_len(&self) -> usize {
        HEADER_OVERHEAD + self.key_id.len() + self.ciphertext_blob.0.len()
    }

    /// Builds and authenticates the header of a new message; returns it with
    /// the message key.
    pub(crate) fn seal(
        data_key: &[u8],
        params: &HeaderParams<'_>,
        context: &EncryptionContext,
    ) -> Result<(Self, LessSafeKey), Error> {
        let invalid = |e: EnvelopeError| Error::InvalidArgument(format!("envelope: {e}"));
        check_len("key id", params.key_id.len(), MAX_KEY_ID_LEN).map_err(invalid)?;
        check_len(
            "ciphertext blob",
            params.ciphertext_blob.len(),
            MAX_CIPHERTEXT_BLOB_LEN,
        )
        .map_err(invalid)?;
        check_frame_len(params.frame_len).map_err(invalid)?;
        let algorithm = Algorithm::Aes256GcmHkdfSha512Commit;
        let keys = derive_keys(algorithm, data_key, &params.message_id)?;
        let key = message_key(&keys.message_key[..])?;
        let mut header = Header {
            algorithm,
            frame_len: params.frame_len,
            message_id: params.message_id,
            key_id: params.key_id.to_owned(),
            ciphertext_blob: Blob(params.ciphertext_blob.to_vec()),
            commitment: keys.commitment,
            tag: [0u8; TAG_LEN],
        };
        let aad = header.aad(context)?;
        let tag = key
            .seal_in_place_separate_tag(zero_nonce(), Aad::from(&aad[..]), &mut [])
            .map_err(|_| Error::Crypto("AES-256-GCM seal"))?;
        header.tag.copy_from_slice(tag.as_ref());
        Ok((header, key))
    }

    /// Authenticates the header with the data key (from KMS `Decrypt` of
    /// [`Header::ciphertext_blob`]) and the encryption context, and returns
    /// the opener of the body.
    ///
    /// A data key that is not 32 bytes is a wrong key like any other: the
    /// same [`EnvelopeError::HeaderAuthentication`], so that a caller that
    /// got its key from someone who tampered with a ciphertext (a decryption
    /// with implicit rejection, `cms`) cannot tell a length from a value.
    ///
    /// # Errors
    /// [`EnvelopeError::HeaderAuthentication`] if the data key is not 32
    /// bytes or the commitment value or the tag does not match (wrong key,
    /// wrong context, modified header).
    pub fn open(&self, data_key: &[u8], context: &EncryptionContext) -> Result<FrameOpener, Error> {
        if data_key.len() != DATA_KEY_LEN {
            return Err(EnvelopeError::HeaderAuthentication.into());
        }
        let keys = derive_keys(self.algorithm, data_key, &self.message_id)?;
        verify_slices_are_equal(&keys.commitment, &self.commitment)
            .map_err(|_| EnvelopeError::HeaderAuthentication)?;
        let key = message_key(&keys.message_key[..])?;
        let aad = self.aad(context)?;
        key.open_in_place_separate_tag(zero_nonce(), Aad::from(&aad[..]), &self.tag, &mut [])
            .map_err(|_| EnvelopeError::HeaderAuthentication)?;
        Ok(FrameOpener::new(key, self.message_id, self.frame_len))
    }

    /// The header tag's associated data: the header bytes before the tag,
    /// then the canonical encryption context.
    fn aad(&self, context: &EncryptionContext) -> Result<Vec<u8>, Error> {
        let mut aad = Vec::with_capacity(self.encoded_len() + 64);
        self.encode_unauthenticated(&mut aad);
        aad.extend_from_slice(&encode_context(context)?);
        Ok(aad)
    }

    /// Appends the header bytes before the tag.
    fn encode_unauthenticated(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&MAGIC);
        out.push(VERSION);
        out.push(self.algorithm.id());
        out.extend_from_slice(&self.frame_len.to_be_bytes());
        out.extend_from_slice(&self.message_id);
        // Both lengths were checked against limits below 65536 when the
        // header was built or decoded.
        for field in [self.key_id.as_bytes(), &self.ciphertext_blob.0[..]] {
            let len = u16::try_from(field.len()).unwrap_or(u16::MAX);
            out.extend_from_slice(&len.to_be_bytes());
            out.extend_from_slice(field);
        }
        out.extend_from_slice(&self.commitment);
    }

    /// Appends the encoded header to `out`.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        self.encode_unauthenticated(out);
        out.extend_from_slice(&self.tag);
    }

    /// The encoded header.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.encoded_len());
        self.encode_into(&mut out);
        out
    }

    /// Decodes a header from the start of `buf`, checking every length
    /// against its limit before reading the field, so at most
    /// [`super::MAX_HEADER_LEN`] bytes are ever needed. Does not
    /// authenticate ([`Header::open`] does).
    ///
    /// Encoding the result gives back exactly the bytes consumed.
    ///
    /// # Errors
    /// [`EnvelopeError::BadMagic`], [`EnvelopeError::UnsupportedVersion`],
    /// [`EnvelopeError::UnsupportedAlgorithm`], [`EnvelopeError::FieldTooLarge`],
    /// [`EnvelopeError::InvalidField`], as soon as the offending field is
    /// present. A buffer holding only part of a valid header is
    /// [`Decoded::Incomplete`], not an error.
    pub fn decode(buf: &[u8]) -> Result<Decoded<Header>, Error> {
        match Self::decode_steps(buf) {
            Ok((value, consumed)) => Ok(Decoded::Complete { value, consumed }),
            Err(Step::Need(needed)) => Ok(Decoded::Incomplete { needed }),
            Err(Step::Fail(e)) => Err(e.into()),
        }
    }

    fn decode_steps(buf: &[u8]) -> Result<(Header, usize), Step> {
        let mut r = Reader { buf, pos: 0 };
        if r.array::<4>()? != MAGIC {
            return Err(EnvelopeError::BadMagic.into());
        }
        let [version] = r.array::<1>()?;
        if version != VERSION {
            return Err(EnvelopeError::UnsupportedVersion(version).into());
        }
        let [alg] = r.array::<1>()?;
        let algorithm = Algorithm::from_id(alg).ok_or(EnvelopeError::UnsupportedAlgorithm(alg))?;
        let frame_len = u32::from_be_bytes(r.array()?);
        check_frame_len(frame_len)?;
        let message_id = r.array::<MESSAGE_ID_LEN>()?;
        let key_id_len = r.len_prefix("key id", MAX_KEY_ID_LEN)?;
        let key_id = core::str::from_utf8(r.take(key_id_len)?)
            .map_err(|_| EnvelopeError::InvalidField {
                field: "key id",
                reason: "not UTF-8",
            })?
            .to_owned();
        let blob_len = r.len_prefix("ciphertext blob", MAX_CIPHERTEXT_BLOB_LEN)?;
        let ciphertext_blob = Blob(r.take(blob_len)?.to_vec());
        let commitment = r.array::<COMMITMENT_LEN>()?;
        let tag = r.array::<TAG_LEN>()?;
        let header = Header {
            algorithm,
            frame_len,
            message_id,
            key_id,
            ciphertext_blob,
            commitment,
            tag,
        };
        Ok((header, r.pos))
    }
}

fn message_key(bytes: &[u8]) -> Result<LessSafeKey, Error> {
    UnboundKey::new(&AES_256_GCM, bytes)
        .map(LessSafeKey::new)
        .map_err(|_| Error::Crypto("AES-256-GCM key"))
}
