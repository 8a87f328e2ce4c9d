//! One framed connection: reading and writing [`Message`]s over an async
//! byte stream.
//!
//! [`keybroker_common::protocol`] is sans-I/O: it turns messages into frames
//! and frames into messages. This crate is the one place that moves those
//! frames over a tokio [`AsyncRead`]/[`AsyncWrite`] stream, for every party
//! of the protocol: the parent proxy's server, the enclave's client, and the
//! test doubles of both.
//!
//! - [`FramedReader`] reads one message at a time, enforcing the receiver's
//!   [`Limits`]. It is cancel-safe (a partial frame stays in its buffer), so
//!   it can be one branch of a `select!` and a read timeout is the caller's
//!   choice ([`FramedReader::next_within`] is the common case). An oversized
//!   length prefix fails as soon as its four bytes arrive, before any of the
//!   body is buffered; the end of the stream in the middle of a frame is
//!   [`ReadError::Truncated`], distinct from a clean end (`Ok(None)`).
//! - [`read_exact_message`] reads exactly one frame and not a byte more, for
//!   connections whose stream changes hands after a message (a tunnel after
//!   `TunnelOpened`); its buffer is zeroized.
//! - [`FramedWriter`] encodes messages into a [`Batch`] and writes the batch
//!   with one write and one flush; [`FramedWriter::run_queue`] drains a
//!   channel of outgoing items, coalescing whatever is ready into one batch
//!   of at most [`MAX_BATCH`] bytes, so many tasks can answer on one
//!   connection concurrently. A batch holding a `Credentials` frame is
//!   zeroized once written.
//!
//! Split a duplex stream with [`tokio::io::split`] (or use the halves of a
//! socket) and give the read half to a [`FramedReader`], the write half to a
//! [`FramedWriter`]; [`FramedReader::into_parts`] and
//! [`FramedWriter::into_inner`] give the halves back (with any bytes read
//! past the last frame) when the connection stops being framed.
//!
//! # Who uses what
//!
//! - A server multiplexing requests (the parent proxy): one
//!   [`FramedReader`] in the connection's `select!` loop
//!   ([`FramedReader::next_frame`] for the body length), and one writer
//!   task running [`FramedWriter::run_queue`] over a bounded channel of
//!   `Message`s that every request task sends its answer into; the push
//!   closure replaces an answer that cannot be encoded by an error answer.
//! - A client with many requests in flight (the enclave's broker client):
//!   the same, with callers encoding their frames before queueing them
//!   ([`Batch::push_encoded`]) and the read loop draining what is buffered
//!   ([`FramedReader::try_next`]) before it decides to read again.
//! - One request, one answer, then the stream changes hands (credentials,
//!   tunnels): [`FramedWriter::send`] and [`read_exact_message`].

#![forbid(unsafe_code)]

use core::fmt;
use core::future::Future;
use std::io;
use std::time::Duration;

use keybroker_common::protocol::{
    Decoded, LENGTH_PREFIX_LEN, Limits, Message, ProtocolError, decode_frame, encode_into,
};
use keybroker_common::secret::SecretBytes;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

/// The most bytes [`FramedWriter::run_queue`] coalesces into one write
/// before writing (a batch is started below this and may end above it by
/// one frame).
pub const MAX_BATCH: usize = 256 * 1024;

/// The most bytes [`FramedReader`] asks the stream for in one read.
pub const MAX_READ_CHUNK: usize = 64 * 1024;

/// The least bytes [`FramedReader`] makes room for before a read.
const MIN_READ_CHUNK: usize = 4096;

/// Why reading the next message failed. Every variant means the stream is
/// unusable for framing: the connection should be closed (after a
/// `Message::Error` if the peer is to learn why, for [`ReadError::Protocol`]).
#[derive(Debug)]
#[non_exhaustive]
pub enum ReadError {
    /// The bytes violate the protocol: an oversized or empty frame, a body
    /// that does not decode.
    Protocol(ProtocolError),
    /// The stream ended in the middle of a frame.
    Truncated {
        /// Bytes of the unfinished frame that had arrived.
        buffered: usize,
    },
    /// The transport failed.
    Io(io::Error),
    /// No whole message within the time given to
    /// [`FramedReader::next_within`].
    Timeout(Duration),
}

impl fmt::Display for ReadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReadError::Protocol(e) => write!(f, "{e}"),
            ReadError::Truncated { buffered } => write!(
                f,
                "the stream ended in the middle of a frame ({buffered} bytes of it had arrived)"
            ),
            ReadError::Io(e) => write!(f, "read failed: {e}"),
            ReadError::Timeout(after) => {
                write!(f, "no message within {} ms", after.as_millis())
            }
        }
    }
}

impl std::error::Error for ReadError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ReadError::Protocol(e) => Some(e),
            ReadError::Io(e) => Some(e),
            ReadError::Truncated { .. } | ReadError::Timeout(_) => None,
        }
    }
}

impl From<ProtocolError> for ReadError {
    fn from(e: ProtocolError) -> Self {
        ReadError::Protocol(e)
    }
}

/// Why sending a message failed.
#[derive(Debug)]
#[non_exhaustive]
pub enum WriteError {
    /// The message cannot be encoded (larger than the frame limit, or a
    /// response carrying plaintext); nothing was written.
    Encode(ProtocolError),
    /// The transport failed.
    Io(io::Error),
}

impl fmt::Display for WriteError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WriteError::Encode(e) => write!(f, "cannot encode the message: {e}"),
            WriteError::Io(e) => write!(f, "write failed: {e}"),
        }
    }
}

impl std::error::Error for WriteError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            WriteError::Encode(e) => Some(e),
            WriteError::Io(e) => Some(e),
        }
    }
}

impl From<ProtocolError> for WriteError {
    fn from(e: ProtocolError) -> Self {
        WriteError::Encode(e)
    }
}

impl From<io::Error> for WriteError {
    fn from(e: io::Error) -> Self {
        WriteError::Io(e)
    }
}

/// A message as read, with the length of its frame's body (what limits and
/// audit lines are about).
#[derive(Clone, Debug, PartialEq)]
pub struct Frame {
    /// The message.
    pub message: Message,
    /// The body length in bytes (the frame without its length prefix).
    pub body_len: usize,
}

/// What the buffer of a [`FramedReader`] holds.
// Short-lived and matched at once: boxing the frame would cost an
// allocation per message for nothing.
#[allow(clippy::large_enum_variant)]
enum Buffered {
    /// A whole frame, now taken from the buffer.
    Frame(Frame),
    /// The start of a frame: at least this many more bytes are needed.
    Needs(usize),
}

/// Reads messages from the read half of a stream (see the [crate docs](crate)).
#[derive(Debug)]
pub struct FramedReader<R> {
    io: R,
    buf: Vec<u8>,
    limits: Limits,
    /// Set by the first protocol error: framing cannot resynchronize, so
    /// every later call fails the same way.
    failed: Option<ProtocolError>,
}

impl<R: AsyncRead + Unpin> FramedReader<R> {
    /// A reader of `io` enforcing `limits`.
    pub fn new(io: R, limits: Limits) -> Self {
        FramedReader {
            io,
            buf: Vec::new(),
            limits,
            failed: None,
        }
    }

    /// The next message; `Ok(None)` at a clean end of stream (between two
    /// frames).
    ///
    /// Cancel-safe: dropping the future keeps what was read for the next
    /// call.
    ///
    /// # Errors
    /// See [`ReadError`].
    pub async fn next(&mut self) -> Result<Option<Message>, ReadError> {
        Ok(self.next_frame().await?.map(|f| f.message))
    }

    /// [`FramedReader::next`], with the frame's body length.
    ///
    /// # Errors
    /// See [`ReadError`].
    pub async fn next_frame(&mut self) -> Result<Option<Frame>, ReadError> {
        loop {
            let needed = match self.decode_buffered()? {
                Buffered::Frame(frame) => return Ok(Some(frame)),
                Buffered::Needs(needed) => needed,
            };
            // Room for at least what the frame still needs (bounded by the
            // frame limit, checked above), at most MAX_READ_CHUNK at a time:
            // an announced length is never allocated up front.
            self.buf
                .reserve(needed.clamp(MIN_READ_CHUNK, MAX_READ_CHUNK));
            match self.io.read_buf(&mut self.buf).await {
                Ok(0) if self.buf.is_empty() => return Ok(None),
                Ok(0) => {
                    return Err(ReadError::Truncated {
                        buffered: self.buf.len(),
                    });
                }
                Ok(_) => {}
                Err(e) => return Err(ReadError::Io(e)),
            }
        }
    }

    /// The next message if a whole frame is already buffered, without
    /// reading: `Ok(None)` when the buffer holds no whole frame (for a
    /// caller that decides between reads, e.g. to stop once it has handled
    /// everything that arrived).
    ///
    /// # Errors
    /// [`ReadError::Protocol`] for a buffered frame that is invalid.
    pub fn try_next(&mut self) -> Result<Option<Frame>, ReadError> {
        match self.decode_buffered()? {
            Buffered::Frame(frame) => Ok(Some(frame)),
            Buffered::Needs(_) => Ok(None),
        }
    }

    /// Decodes the frame at the start of the buffer, or says how many more
    /// bytes it needs.
    fn decode_buffered(&mut self) -> Result<Buffered, ReadError> {
        if let Some(e) = &self.failed {
            return Err(ReadError::Protocol(e.clone()));
        }
        if self.buf.is_empty() {
            return Ok(Buffered::Needs(LENGTH_PREFIX_LEN));
        }
        match decode_frame(&self.buf, &self.limits) {
            Ok(Decoded::Complete { message, consumed }) => {
                self.buf.drain(..consumed);
                Ok(Buffered::Frame(Frame {
                    message,
                    body_len: consumed - LENGTH_PREFIX_LEN,
                }))
            }
            Ok(Decoded::Incomplete { needed }) => Ok(Buffered::Needs(needed)),
            Err(e) => {
                self.buf = Vec::new();
                self.failed = Some(e.clone());
                Err(ReadError::Protocol(e))
            }
        }
    }

    /// [`FramedReader::next`] within `timeout`: [`ReadError::Timeout`]
    /// when no whole message arrived in time (what did arrive stays
    /// buffered).
    ///
    /// # Errors
    /// See [`ReadError`].
    pub async fn next_within(&mut self, timeout: Duration) -> Result<Option<Message>, ReadError> {
        tokio::time::timeout(timeout, self.next())
            .await
            .unwrap_or(Err(ReadError::Timeout(timeout)))
    }

    /// Bytes read and not yet decoded (the start of the next frame, or
    /// bytes that follow the last frame).
    pub fn buffered(&self) -> &[u8] {
        &self.buf
    }

    /// The limits in force.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// The stream (reading from it directly bypasses the buffer).
    pub fn get_mut(&mut self) -> &mut R {
        &mut self.io
    }

    /// The stream and the bytes read past the last message: what a peer
    /// sent after the last frame (the first bytes of a tunnel, say).
    pub fn into_parts(self) -> (R, Vec<u8>) {
        (self.io, self.buf)
    }
}

/// Reads exactly one frame from `io`, not a byte more, and decodes it:
/// after it returns, the stream is positioned right after the frame (a
/// tunnel's bytes after `TunnelOpened` are all still unread). The frame's
/// buffer may hold credentials and is zeroized. `Ok(None)` if the stream
/// ends before the first byte.
///
/// Not cancel-safe (bytes already read are lost): bound it with a timeout
/// around the whole exchange.
///
/// # Errors
/// See [`ReadError`]; an oversized length prefix fails before the body is
/// read or allocated.
pub async fn read_exact_message<R: AsyncRead + Unpin>(
    io: &mut R,
    limits: Limits,
) -> Result<Option<Message>, ReadError> {
    let mut prefix = [0u8; LENGTH_PREFIX_LEN];
    let mut got = 0;
    while let Some(rest) = prefix.get_mut(got..).filter(|r| !r.is_empty()) {
        match io.read(rest).await {
            Ok(0) if got == 0 => return Ok(None),
            Ok(0) => return Err(ReadError::Truncated { buffered: got }),
            Ok(n) => got += n,
            Err(e) => return Err(ReadError::Io(e)),
        }
    }
    // Checks the prefix against the limits before anything is allocated.
    let len = match decode_frame(&prefix, &limits)? {
        Decoded::Incomplete { needed } => needed,
        Decoded::Complete { .. } => {
            // A frame has a non-empty body (decode_frame refuses a zero
            // length), so four bytes are never a whole frame; typed all the
            // same rather than a panic.
            return Err(ReadError::Protocol(ProtocolError::Malformed(
                "a frame without a body".into(),
            )));
        }
    };
    let mut frame = SecretBytes::new(vec![0u8; LENGTH_PREFIX_LEN + len]);
    let (head, body) = frame.expose_mut().split_at_mut(LENGTH_PREFIX_LEN);
    head.copy_from_slice(&prefix);
    if let Err(e) = io.read_exact(body).await {
        return Err(if e.kind() == io::ErrorKind::UnexpectedEof {
            ReadError::Truncated {
                buffered: LENGTH_PREFIX_LEN,
            }
        } else {
            ReadError::Io(e)
        });
    }
    match decode_frame(frame.expose(), &limits)? {
        Decoded::Complete { message, .. } => Ok(Some(message)),
        // The whole frame is in the buffer, so this cannot happen; a typed
        // error rather than a panic all the same.
        Decoded::Incomplete { .. } => Err(ReadError::Protocol(ProtocolError::Malformed(
            "incomplete frame".into(),
        ))),
    }
}

/// Encoded frames waiting to be written together (one write, one flush).
#[derive(Debug, Default)]
pub struct Batch {
    buf: Vec<u8>,
    /// The batch holds secrets (a `Credentials` frame): zeroized once
    /// written.
    secret: bool,
}

impl Batch {
    /// An empty batch.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends the frame of `msg` and returns its length. A `Credentials`
    /// message marks the batch secret, even when it fails to encode (its
    /// partial encoding may linger in the buffer's spare capacity). On
    /// error no bytes are added.
    ///
    /// # Errors
    /// As [`encode_into`]: the body exceeds the frame limit, or a response
    /// carries plaintext key material.
    pub fn push(&mut self, msg: &Message) -> Result<usize, ProtocolError> {
        self.secret |= matches!(msg, Message::Credentials { .. });
        encode_into(msg, &mut self.buf)
    }

    /// Appends bytes as they are: a frame encoded earlier, or (in tests)
    /// bytes that are not a frame at all.
    pub fn push_encoded(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// Marks the batch as holding secrets: it is zeroized once written.
    pub fn mark_secret(&mut self) {
        self.secret = true;
    }

    /// Whether the batch is zeroized once written.
    pub fn is_secret(&self) -> bool {
        self.secret
    }

    /// Bytes in the batch.
    pub fn len(&self) -> usize {
        self.buf.len()
    }

    /// Whether the batch is empty.
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// Empties the batch, zeroizing it first if it is secret.
    fn clear(&mut self) {
        if std::mem::take(&mut self.secret) {
            // SecretBytes zeroizes the whole allocation when dropped.
            drop(SecretBytes::new(std::mem::take(&mut self.buf)));
        } else {
            self.buf.clear();
        }
    }
}

/// A source of outgoing items for [`FramedWriter::run_queue`]: a tokio
/// channel receiver, bounded or not.
pub trait Queue<T> {
    /// The next item, waiting for one; `None` once every sender is gone and
    /// the queue is empty.
    fn recv(&mut self) -> impl Future<Output = Option<T>> + Send;
    /// The next item if one is ready.
    fn try_recv(&mut self) -> Option<T>;
}

impl<T: Send> Queue<T> for mpsc::Receiver<T> {
    fn recv(&mut self) -> impl Future<Output = Option<T>> + Send {
        mpsc::Receiver::recv(self)
    }
    fn try_recv(&mut self) -> Option<T> {
        mpsc::Receiver::try_recv(self).ok()
    }
}

impl<T: Send> Queue<T> for mpsc::UnboundedReceiver<T> {
    fn recv(&mut self) -> impl Future<Output = Option<T>> + Send {
        mpsc::UnboundedReceiver::recv(self)
    }
    fn try_recv(&mut self) -> Option<T> {
        mpsc::UnboundedReceiver::try_recv(self).ok()
    }
}

/// Writes messages to the write half of a stream (see the [crate
/// docs](crate)).
#[derive(Debug)]
pub struct FramedWriter<W> {
    io: W,
    batch: Batch,
}

impl<W: AsyncWrite + Unpin> FramedWriter<W> {
    /// A writer to `io`.
    pub fn new(io: W) -> Self {
        FramedWriter {
            io,
            batch: Batch::new(),
        }
    }

    /// Queues the frame of `msg` for the next [`FramedWriter::flush`].
    ///
    /// # Errors
    /// As [`Batch::push`]; nothing is queued then.
    pub fn queue(&mut self, msg: &Message) -> Result<usize, ProtocolError> {
        self.batch.push(msg)
    }

    /// Queues bytes as they are for the next [`FramedWriter::flush`].
    pub fn queue_encoded(&mut self, bytes: &[u8]) {
        self.batch.push_encoded(bytes);
    }

    /// The batch the next [`FramedWriter::flush`] writes.
    pub fn batch_mut(&mut self) -> &mut Batch {
        &mut self.batch
    }

    /// Writes what is queued with one write, then flushes the stream. The
    /// batch is emptied (and zeroized if secret) whatever the outcome.
    ///
    /// # Errors
    /// The transport's.
    pub async fn flush(&mut self) -> io::Result<()> {
        let result = async {
            if !self.batch.is_empty() {
                self.io.write_all(&self.batch.buf).await?;
            }
            self.io.flush().await
        }
        .await;
        self.batch.clear();
        result
    }

    /// Queues `msg` (after anything already queued) and flushes.
    ///
    /// # Errors
    /// [`WriteError::Encode`] before anything is written,
    /// [`WriteError::Io`] from the transport.
    pub async fn send(&mut self, msg: &Message) -> Result<(), WriteError> {
        self.queue(msg)?;
        Ok(self.flush().await?)
    }

    /// Queues every message of `msgs` and writes them with one write.
    ///
    /// # Errors
    /// [`WriteError::Encode`] if any message cannot be encoded (then
    /// nothing of `msgs` is written), [`WriteError::Io`] from the
    /// transport.
    pub async fn send_all<'a>(
        &mut self,
        msgs: impl IntoIterator<Item = &'a Message>,
    ) -> Result<(), WriteError> {
        let start = self.batch.buf.len();
        for msg in msgs {
            if let Err(e) = self.batch.push(msg) {
                self.batch.buf.truncate(start);
                return Err(WriteError::Encode(e));
            }
        }
        Ok(self.flush().await?)
    }

    /// Writes `bytes` as they are (after anything queued) and flushes.
    ///
    /// # Errors
    /// The transport's.
    pub async fn send_encoded(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.queue_encoded(bytes);
        self.flush().await
    }

    /// Drains `queue` until every sender is gone: each round takes the next
    /// item, then whatever else is ready until the batch reaches
    /// [`MAX_BATCH`] bytes, `push`es each into the batch and writes the batch
    /// with one write and one flush. `push` decides what an item becomes
    /// (encode a message, append a pre-encoded frame, replace a message
    /// that cannot be encoded by an error answer).
    ///
    /// Returns `Ok(())` once the queue is closed and everything is written
    /// (the stream is not shut down: see [`FramedWriter::shutdown`] and
    /// [`FramedWriter::into_inner`]).
    ///
    /// # Errors
    /// The transport's: the peer stopped accepting bytes.
    pub async fn run_queue<T, Q: Queue<T>>(
        &mut self,
        queue: &mut Q,
        mut push: impl FnMut(&mut Batch, T),
    ) -> io::Result<()> {
        while let Some(first) = queue.recv().await {
            push(&mut self.batch, first);
            while self.batch.len() < MAX_BATCH {
                match queue.try_recv() {
                    Some(item) => push(&mut self.batch, item),
                    None => break,
                }
            }
            self.flush().await?;
        }
        Ok(())
    }

    /// Writes what is queued, then shuts the stream's write side down.
    ///
    /// # Errors
    /// The transport's.
    pub async fn shutdown(&mut self) -> io::Result<()> {
        self.flush().await?;
        self.io.shutdown().await
    }

    /// The stream (writing to it directly bypasses the batch).
    pub fn get_mut(&mut self) -> &mut W {
        &mut self.io
    }

    /// The stream. Anything queued and not flushed is dropped (zeroized if
    /// secret).
    pub fn into_inner(mut self) -> W {
        self.batch.clear();
        self.io
    }
}

#[cfg(test)]
mod tests;
