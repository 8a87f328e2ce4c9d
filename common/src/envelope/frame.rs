//! The message body: frames sealed and opened one at a time.

use aws_lc_rs::aead::{Aad, LessSafeKey, NONCE_LEN, Nonce};
use zeroize::{Zeroize, Zeroizing};

use super::header::Header;
use super::{
    Decoded, EnvelopeError, FINAL_FRAME_MARKER, FINAL_FRAME_OVERHEAD, FRAME_OVERHEAD, HeaderParams,
    MESSAGE_ID_LEN, TAG_LEN,
};
use crate::Error;
use crate::kms::EncryptionContext;

/// The last sequence number a regular frame may carry: the final frame
/// needs one more, and it must differ from [`FINAL_FRAME_MARKER`].
const MAX_REGULAR_SEQUENCE: u32 = FINAL_FRAME_MARKER - 2;

/// Frame AAD: message id || sequence || final flag || plaintext length (u64).
const FRAME_AAD_LEN: usize = MESSAGE_ID_LEN + 4 + 1 + 8;

fn frame_aad(
    message_id: &[u8; MESSAGE_ID_LEN],
    sequence: u32,
    is_final: bool,
    len: usize,
) -> [u8; FRAME_AAD_LEN] {
    let mut aad = [0u8; FRAME_AAD_LEN];
    let (id, rest) = aad.split_at_mut(MESSAGE_ID_LEN);
    id.copy_from_slice(message_id);
    let (seq, rest) = rest.split_at_mut(4);
    seq.copy_from_slice(&sequence.to_be_bytes());
    let (flag, length) = rest.split_at_mut(1);
    flag.fill(u8::from(is_final));
    length.copy_from_slice(&(len as u64).to_be_bytes());
    aad
}

fn frame_nonce(sequence: u32) -> Nonce {
    let mut n = [0u8; NONCE_LEN];
    n.split_at_mut(NONCE_LEN - 4)
        .1
        .copy_from_slice(&sequence.to_be_bytes());
    Nonce::assume_unique_for_key(n)
}

/// Seals the frames of one message (layout in the [module docs](super)).
///
/// Call [`FrameSealer::seal_frame`] for every full frame of plaintext, then
/// [`FrameSealer::seal_final`] once with the remainder (fewer than
/// [`FrameSealer::frame_len`] bytes, possibly none).
pub struct FrameSealer {
    key: LessSafeKey,
    message_id: [u8; MESSAGE_ID_LEN],
    frame_len: usize,
    next_sequence: u32,
}

impl core::fmt::Debug for FrameSealer {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("FrameSealer")
            .field("frame_len", &self.frame_len)
            .field("next_sequence", &self.next_sequence)
            .finish_non_exhaustive()
    }
}

impl FrameSealer {
    /// Starts a message: derives its key from `data_key` and the message id,
    /// and builds its authenticated header (append [`Header::encode_into`]
    /// to the output first).
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for a key id, blob or frame length outside
    /// its limits or an encryption context too large to encode;
    /// [`EnvelopeError::DataKeyLength`] if `data_key` is not 32 bytes.
    pub fn new(
        data_key: &[u8],
        params: &HeaderParams<'_>,
        context: &EncryptionContext,
    ) -> Result<(Header, Self), Error> {
        let (header, key) = Header::seal(data_key, params, context)?;
        let sealer = Self {
            key,
            message_id: params.message_id,
            frame_len: params.frame_len as usize,
            next_sequence: 1,
        };
        Ok((header, sealer))
    }

    /// Plaintext bytes per regular frame.
    pub fn frame_len(&self) -> usize {
        self.frame_len
    }

    fn take_sequence(&mut self, is_final: bool) -> Result<u32, Error> {
        let sequence = self.next_sequence;
        if !is_final && sequence > MAX_REGULAR_SEQUENCE {
            return Err(Error::InvalidArgument(
                "envelope: message exceeds the maximum number of frames".into(),
            ));
        }
        self.next_sequence = sequence.saturating_add(1);
        Ok(sequence)
    }

    fn seal_into(
        &self,
        sequence: u32,
        is_final: bool,
        plaintext: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), Error> {
        let start = out.len();
        out.extend_from_slice(plaintext);
        let aad = frame_aad(&self.message_id, sequence, is_final, plaintext.len());
        let tag = self
            .key
            .seal_in_place_separate_tag(
                frame_nonce(sequence),
                Aad::from(&aad[..]),
                out.split_at_mut(start).1,
            )
            .map_err(|_| Error::Crypto("AES-256-GCM seal"))?;
        out.extend_from_slice(tag.as_ref());
        Ok(())
    }

    /// Appends a regular frame sealing `plaintext`, which must be exactly
    /// [`FrameSealer::frame_len`] bytes.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for another length or past the maximum
    /// number of frames (2^32 - 2).
    pub fn seal_frame(&mut self, plaintext: &[u8], out: &mut Vec<u8>) -> Result<(), Error> {
        if plaintext.len() != self.frame_len {
            return Err(Error::InvalidArgument(format!(
                "envelope: a regular frame is {} bytes, got {}",
                self.frame_len,
                plaintext.len()
            )));
        }
        let sequence = self.take_sequence(false)?;
        out.reserve(self.frame_len + FRAME_OVERHEAD);
        out.extend_from_slice(&sequence.to_be_bytes());
        self.seal_into(sequence, false, plaintext, out)
    }

    /// Appends the final frame sealing `plaintext`, fewer than
    /// [`FrameSealer::frame_len`] bytes (possibly none), and ends the message.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] if `plaintext` is a whole frame or more.
    pub fn seal_final(mut self, plaintext: &[u8], out: &mut Vec<u8>) -> Result<(), Error> {
        let len = u32::try_from(plaintext.len())
            .ok()
            .filter(|_| plaintext.len() < self.frame_len)
            .ok_or_else(|| {
                Error::InvalidArgument(format!(
                    "envelope: the final frame holds fewer than {} bytes, got {}",
                    self.frame_len,
                    plaintext.len()
                ))
            })?;
        let sequence = self.take_sequence(true)?;
        out.reserve(plaintext.len() + FINAL_FRAME_OVERHEAD);
        out.extend_from_slice(&FINAL_FRAME_MARKER.to_be_bytes());
        out.extend_from_slice(&sequence.to_be_bytes());
        out.extend_from_slice(&len.to_be_bytes());
        self.seal_into(sequence, true, plaintext, out)
    }

    /// Length of the body sealing `plaintext_len` bytes with frames of
    /// `frame_len` bytes (`frame_len` must not be zero).
    pub fn body_len(frame_len: usize, plaintext_len: usize) -> Option<usize> {
        let frames = plaintext_len.checked_div(frame_len)?;
        frames
            .checked_mul(frame_len.checked_add(FRAME_OVERHEAD)?)?
            .checked_add(plaintext_len % frame_len + FINAL_FRAME_OVERHEAD)
    }
}

/// Seals a whole message held in memory: header, then `plaintext` in frames.
///
/// # Errors
/// As [`FrameSealer::new`].
pub fn seal_message(
    data_key: &[u8],
    params: &HeaderParams<'_>,
    context: &EncryptionContext,
    plaintext: &[u8],
) -> Result<Vec<u8>, Error> {
    let (header, mut sealer) = FrameSealer::new(data_key, params, context)?;
    let frame_len = sealer.frame_len();
    let body_len = FrameSealer::body_len(frame_len, plaintext.len())
        .ok_or_else(|| Error::InvalidArgument("envelope: plaintext too large".into()))?;
    let mut out = Vec::with_capacity(header.encoded_len().saturating_add(body_len));
    header.encode_into(&mut out);
    let mut frames = plaintext.chunks_exact(frame_len);
    for frame in &mut frames {
        sealer.seal_frame(frame, &mut out)?;
    }
    sealer.seal_final(frames.remainder(), &mut out)?;
    Ok(out)
}

/// Opens the frames of one message, from [`Header::open`] (layout in the
/// [module docs](super)).
pub struct FrameOpener {
    key: LessSafeKey,
    message_id: [u8; MESSAGE_ID_LEN],
    frame_len: usize,
    next_sequence: u32,
    finished: bool,
}

impl core::fmt::Debug for FrameOpener {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("FrameOpener")
            .field("frame_len", &self.frame_len)
            .field("next_sequence", &self.next_sequence)
            .field("finished", &self.finished)
            .finish_non_exhaustive()
    }
}

/// Reads a big-endian u32 at `at`, if present.
fn be_u32(buf: &[u8], at: usize) -> Option<u32> {
    buf.get(at..)?
        .first_chunk::<4>()
        .map(|b| u32::from_be_bytes(*b))
}

impl FrameOpener {
    pub(crate) fn new(key: LessSafeKey, message_id: [u8; MESSAGE_ID_LEN], frame_len: u32) -> Self {
        Self {
            key,
            message_id,
            frame_len: frame_len as usize,
            next_sequence: 1,
            finished: false,
        }
    }

    /// Plaintext bytes per regular frame.
    pub fn frame_len(&self) -> usize {
        self.frame_len
    }

    /// Whether the final frame has been opened: the message is complete.
    pub fn is_finished(&self) -> bool {
        self.finished
    }

    /// Opens the frame at the start of `input` and appends its plaintext to
    /// `out`, only once its tag has verified. Returns whether it was the
    /// final frame and how many bytes of `input` it took, or how many more
    /// bytes it needs ([`Decoded::Incomplete`]; `out` unchanged).
    ///
    /// The largest frame is [`super::MAX_FRAME_LEN`] + 20 bytes, so a caller
    /// needs a buffer of `frame_len() + 28` bytes at most.
    ///
    /// # Errors
    /// [`EnvelopeError::FrameSequence`] for a frame out of order,
    /// [`EnvelopeError::FieldTooLarge`] for a final frame not shorter than
    /// the frame length, [`EnvelopeError::FrameAuthentication`] for a
    /// modified frame, [`EnvelopeError::TrailingData`] after the final frame.
    pub fn open_frame(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<Decoded<bool>, Error> {
        if self.finished {
            return Err(EnvelopeError::TrailingData.into());
        }
        let Some(first) = be_u32(input, 0) else {
            return Ok(Decoded::Incomplete {
                needed: 4 - input.len(),
            });
        };
        let is_final = first == FINAL_FRAME_MARKER;
        let (sequence, len, prefix) = if is_final {
            let (Some(sequence), Some(len)) = (be_u32(input, 4), be_u32(input, 8)) else {
                return Ok(Decoded::Incomplete {
                    needed: 12 - input.len(),
                });
            };
            (sequence, len as usize, 12)
        } else {
            (first, self.frame_len, 4)
        };
        if sequence != self.next_sequence || (!is_final && sequence > MAX_REGULAR_SEQUENCE) {
            return Err(EnvelopeError::FrameSequence {
                expected: self.next_sequence,
                found: sequence,
            }
            .into());
        }
        if len >= self.frame_len && is_final {
            return Err(EnvelopeError::FieldTooLarge {
                field: "final frame",
                len,
                max: self.frame_len - 1,
            }
            .into());
        }
        let total = prefix + len + TAG_LEN;
        let Some(frame) = input.get(prefix..total) else {
            return Ok(Decoded::Incomplete {
                needed: total - input.len(),
            });
        };
        let (ciphertext, tag) = frame.split_at(len);
        let aad = frame_aad(&self.message_id, sequence, is_final, len);
        let start = out.len();
        out.resize(start + len, 0);
        let plaintext = out.split_at_mut(start).1;
        if self
            .key
            .open_separate_gather(
                frame_nonce(sequence),
                Aad::from(&aad[..]),
                ciphertext,
                tag,
                plaintext,
            )
            .is_err()
        {
            plaintext.zeroize();
            out.truncate(start);
            return Err(EnvelopeError::FrameAuthentication { sequence }.into());
        }
        self.next_sequence = sequence.saturating_add(1);
        self.finished = is_final;
        Ok(Decoded::Complete {
            value: is_final,
            consumed: total,
        })
    }

    /// Opens a whole body held in memory (the bytes after the header). The
    /// plaintext is returned only if every frame, the final one included,
    /// authenticates and nothing follows it.
    ///
    /// # Errors
    /// As [`FrameOpener::open_frame`]; [`EnvelopeError::Truncated`] if the
    /// body ends before its final frame.
    pub fn open_all(mut self, body: &[u8]) -> Result<Zeroizing<Vec<u8>>, Error> {
        // The plaintext is shorter than the body: no reallocation leaves
        // unzeroized copies behind.
        let mut out = Zeroizing::new(Vec::with_capacity(body.len()));
        let mut rest = body;
        loop {
            match self.open_frame(rest, &mut out)? {
                Decoded::Incomplete { .. } => return Err(EnvelopeError::Truncated.into()),
                Decoded::Complete { value, consumed } => {
                    rest = rest.get(consumed..).unwrap_or_default();
                    if value {
                        break;
                    }
                }
            }
        }
        if !rest.is_empty() {
            return Err(EnvelopeError::TrailingData.into());
        }
        Ok(out)
    }
}
