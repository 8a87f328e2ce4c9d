//! Framing: a 4-byte big-endian body length, then the body.

use super::ProtocolError;
use super::message::{Message, decode_body, encode_body};

/// Bytes of the length prefix.
pub const LENGTH_PREFIX_LEN: usize = 4;

/// The hard limit on a frame's body, in bytes: 512 KiB.
///
/// Sized so the largest request KMS accepts fits, with margin for the
/// encryption context (which the KMS API reference does not bound):
///
/// | field (KMS API limit)                          | bytes, with CBOR overhead |
/// |------------------------------------------------|---------------------------|
/// | `Recipient.AttestationDocument` (1..=262144)   | 262,144 + 40              |
/// | `GrantTokens` (10 x 1..=8192)                  | 81,920 + 50               |
/// | `KeyId` (1..=2048)                             | 2,048 + 10                |
/// | `CiphertextBlob` (Decrypt, 1..=6144)           | 6,144 + 20                |
/// | envelope, ids, other fields                    | < 1,024                   |
/// | **total without `EncryptionContext`**          | **< 353,300**             |
///
/// leaving about 170 KiB for the encryption context. Real NSM documents are
/// at most 0x3000 bytes (the NSM response limit), so real requests are a few
/// KiB; responses are smaller still (`CiphertextForRecipient` <= 6144 bytes).
/// Receivers may lower the limit with [`Limits::new`].
pub const MAX_FRAME_LEN: usize = 512 * 1024;

/// Receiver limits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    max_frame_len: usize,
}

impl Limits {
    /// Limits with frame bodies of at most `max_frame_len` bytes, clamped to
    /// `1..=`[`MAX_FRAME_LEN`].
    pub const fn new(max_frame_len: usize) -> Self {
        let max_frame_len = if max_frame_len > MAX_FRAME_LEN {
            MAX_FRAME_LEN
        } else if max_frame_len == 0 {
            1
        } else {
            max_frame_len
        };
        Self { max_frame_len }
    }

    /// The largest body accepted.
    pub const fn max_frame_len(&self) -> usize {
        self.max_frame_len
    }
}

impl Default for Limits {
    fn default() -> Self {
        Self::new(MAX_FRAME_LEN)
    }
}

/// The outcome of [`decode_frame`].
// A short-lived return value, moved once into the caller's match; boxing the
// message would cost an allocation per frame for nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq)]
pub enum Decoded {
    /// A whole frame: the message, and how many bytes of the buffer it took
    /// (prefix included).
    Complete {
        /// The message.
        message: Message,
        /// Bytes consumed from the start of the buffer.
        consumed: usize,
    },
    /// The buffer holds only the start of a frame; at least `needed` more
    /// bytes are required (exactly `needed` once the prefix is complete).
    Incomplete {
        /// Additional bytes required.
        needed: usize,
    },
}

/// The body length announced by the prefix at the start of `buf`, checked
/// against `limits`; `Ok(None)` if fewer than four bytes are present.
fn body_len(buf: &[u8], limits: &Limits) -> Result<Option<usize>, ProtocolError> {
    let Some(prefix) = buf.first_chunk::<LENGTH_PREFIX_LEN>() else {
        return Ok(None);
    };
    // u32 -> usize is lossless on every target this crate supports (>= 32 bits).
    let len = usize::try_from(u32::from_be_bytes(*prefix)).unwrap_or(usize::MAX);
    if len == 0 {
        return Err(ProtocolError::EmptyFrame);
    }
    if len > limits.max_frame_len {
        return Err(ProtocolError::FrameTooLarge {
            len,
            max: limits.max_frame_len,
        });
    }
    Ok(Some(len))
}

/// Decodes the frame at the start of `buf`.
///
/// An error means the byte stream is unusable (the connection should be
/// closed, after a [`Message::Error`] if the peer is to learn why): framing
/// cannot resynchronize. A prefix over the limit is rejected as soon as its
/// four bytes are in `buf`, whatever follows.
pub fn decode_frame(buf: &[u8], limits: &Limits) -> Result<Decoded, ProtocolError> {
    let Some(len) = body_len(buf, limits)? else {
        return Ok(Decoded::Incomplete {
            needed: LENGTH_PREFIX_LEN - buf.len(),
        });
    };
    let total = LENGTH_PREFIX_LEN + len;
    let Some(body) = buf.get(LENGTH_PREFIX_LEN..total) else {
        return Ok(Decoded::Incomplete {
            needed: total - buf.len(),
        });
    };
    Ok(Decoded::Complete {
        message: decode_body(body)?,
        consumed: total,
    })
}

/// Appends one frame holding `msg` to `out` and returns its length (prefix
/// included). On error `out` is left as it was.
///
/// Fails with [`ProtocolError::FrameTooLarge`] if the body exceeds
/// [`MAX_FRAME_LEN`], and with [`ProtocolError::PlaintextOnWire`] for a
/// response that carries plaintext key material.
pub fn encode_into(msg: &Message, out: &mut Vec<u8>) -> Result<usize, ProtocolError> {
    let start = out.len();
    out.extend_from_slice(&[0; LENGTH_PREFIX_LEN]);
    let result = encode_body(msg, out).and_then(|()| {
        let len = out.len() - start - LENGTH_PREFIX_LEN;
        if len > MAX_FRAME_LEN {
            return Err(ProtocolError::FrameTooLarge {
                len,
                max: MAX_FRAME_LEN,
            });
        }
        let prefix = u32::try_from(len)
            .map_err(|_| ProtocolError::FrameTooLarge {
                len,
                max: MAX_FRAME_LEN,
            })?
            .to_be_bytes();
        if let Some(slot) = out.get_mut(start..start + LENGTH_PREFIX_LEN) {
            slot.copy_from_slice(&prefix);
        }
        Ok(LENGTH_PREFIX_LEN + len)
    });
    if result.is_err() {
        out.truncate(start);
    }
    result
}

/// One frame holding `msg` (see [`encode_into`]).
pub fn encode(msg: &Message) -> Result<Vec<u8>, ProtocolError> {
    let mut out = Vec::new();
    encode_into(msg, &mut out)?;
    Ok(out)
}

/// A buffering decoder for a byte stream: [`push`](Self::push) what the
/// transport read, then call [`next_message`](Self::next_message) until it
/// returns `Ok(None)`.
///
/// The buffer holds at most one partial frame plus what the last `push`
/// added: an oversized prefix fails `next_message` before its body is
/// buffered. After an error the decoder stays failed and drops input.
#[derive(Debug, Default)]
pub struct FrameDecoder {
    buf: Vec<u8>,
    limits: Limits,
    failed: Option<ProtocolError>,
}

impl FrameDecoder {
    /// An empty decoder enforcing `limits`.
    pub fn new(limits: Limits) -> Self {
        Self {
            buf: Vec::new(),
            limits,
            failed: None,
        }
    }

    /// Appends bytes read from the transport.
    pub fn push(&mut self, bytes: &[u8]) {
        if self.failed.is_none() {
            self.buf.extend_from_slice(bytes);
        }
    }

    /// The next complete message, `Ok(None)` if more bytes are needed.
    pub fn next_message(&mut self) -> Result<Option<Message>, ProtocolError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        match decode_frame(&self.buf, &self.limits) {
            Ok(Decoded::Complete { message, consumed }) => {
                self.buf.drain(..consumed);
                Ok(Some(message))
            }
            Ok(Decoded::Incomplete { .. }) => Ok(None),
            Err(e) => {
                self.buf = Vec::new();
                self.failed = Some(e.clone());
                Err(e)
            }
        }
    }

    /// How many more bytes the next frame needs at least (0 when a frame
    /// is complete or the decoder has failed): a hint for sizing reads.
    pub fn needed(&self) -> usize {
        if self.failed.is_some() {
            return 0;
        }
        match body_len(&self.buf, &self.limits) {
            Ok(None) => LENGTH_PREFIX_LEN - self.buf.len(),
            Ok(Some(len)) => (LENGTH_PREFIX_LEN + len).saturating_sub(self.buf.len()),
            Err(_) => 0,
        }
    }

    /// Bytes buffered and not yet decoded.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// The limits in force.
    pub fn limits(&self) -> Limits {
        self.limits
    }
}

#[cfg(test)]
mod tests;
