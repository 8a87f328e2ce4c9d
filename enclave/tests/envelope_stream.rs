//! Streaming envelope encryption of an input far larger than its buffers,
//! in bounded memory.
//!
//! 256 MiB generated on the fly are sealed with `seal_stream` into an
//! in-memory pipe whose other end `open_stream` reads; the plaintext it
//! writes is compared, as it arrives, with the regenerated input. Neither
//! side ever holds the whole stream. A counting global allocator (this test
//! binary only) records the peak heap, which must stay far below the stream
//! size.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::alloc::System;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use cap::Cap;
use keybroker_common::kms::{Blob, EncryptionContext};
use keybroker_common::secret::SecretBytes;
use keybroker_enclave::envelope::{DataKeySource, Envelope};
use keybroker_enclave::{DataKey, Error};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

#[global_allocator]
static ALLOCATOR: Cap<System> = Cap::new(System, usize::MAX);

/// Stream length.
const TOTAL: u64 = 256 << 20;
/// Peak heap allowed for the whole test (runtime, pipe, frame buffers):
/// 1/64 of the stream. About 0.7 MiB is used with 64 KiB frames.
const PEAK_LIMIT: usize = 4 << 20;
/// Capacity of the pipe between sealer and opener.
const PIPE: usize = 256 << 10;
const BLOCK: usize = 4096;

/// Always the same data key, as if from KMS.
struct FixedKey;

impl DataKeySource for FixedKey {
    async fn generate_data_key(
        &self,
        _key_id: &str,
        _context: &EncryptionContext,
    ) -> Result<DataKey, Error> {
        Ok(DataKey {
            key_id: Some("arn:aws:kms:us-east-1:111122223333:key/stream".into()),
            ciphertext_blob: Blob(b"blob".to_vec()),
            plaintext: SecretBytes::from_slice(&[9; 32]),
            key_material_id: None,
        })
    }

    async fn decrypt_data_key(
        &self,
        _key_id: &str,
        ciphertext_blob: &[u8],
        _context: &EncryptionContext,
    ) -> Result<SecretBytes, Error> {
        assert_eq!(ciphertext_blob, b"blob");
        Ok(SecretBytes::from_slice(&[9; 32]))
    }
}

/// The test data: 4 KiB blocks of a fixed pseudo-random block, each stamped
/// with its index, so a reordered, repeated or dropped block shows.
struct Pattern {
    base: [u8; BLOCK],
}

impl Pattern {
    fn new() -> Self {
        let mut base = [0u8; BLOCK];
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for b in &mut base {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            *b = x.to_le_bytes()[0];
        }
        Self { base }
    }

    /// The stream's bytes from `pos` on, into `out`.
    fn fill(&self, mut pos: u64, out: &mut [u8]) {
        let mut done = 0;
        while done < out.len() {
            let block = pos / BLOCK as u64;
            let offset = usize::try_from(pos % BLOCK as u64).unwrap();
            let n = (BLOCK - offset).min(out.len() - done);
            let dst = &mut out[done..done + n];
            dst.copy_from_slice(&self.base[offset..offset + n]);
            // The block index over the block's first 8 bytes.
            let stamp = block.to_le_bytes();
            if offset < 8 {
                let end = 8.min(offset + n);
                dst[..end - offset].copy_from_slice(&stamp[offset..end]);
            }
            done += n;
            pos += n as u64;
        }
    }
}

/// Yields `TOTAL` bytes of the pattern.
struct PatternReader {
    pattern: Pattern,
    pos: u64,
}

impl AsyncRead for PatternReader {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let left = usize::try_from(TOTAL - self.pos).unwrap_or(usize::MAX);
        let n = buf.remaining().min(left);
        let pos = self.pos;
        self.pattern.fill(pos, buf.initialize_unfilled_to(n));
        buf.advance(n);
        self.pos += n as u64;
        Poll::Ready(Ok(()))
    }
}

/// Compares what is written with the pattern, as it arrives.
struct PatternChecker {
    pattern: Pattern,
    pos: u64,
    scratch: Vec<u8>,
}

impl AsyncWrite for PatternChecker {
    fn poll_write(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        this.scratch.resize(buf.len(), 0);
        this.pattern.fill(this.pos, &mut this.scratch);
        if this.scratch != buf {
            return Poll::Ready(Err(io::Error::other(format!(
                "plaintext differs from the input in the {} bytes at {}",
                buf.len(),
                this.pos
            ))));
        }
        this.pos += buf.len() as u64;
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[test]
fn a_256_mib_stream_round_trips_in_bounded_memory() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let before = ALLOCATOR.allocated();
    let (opened, checked) = runtime.block_on(async {
        let envelope = Envelope::new(FixedKey, "alias/stream");
        let context = EncryptionContext::from([("file".to_owned(), "big".to_owned())]);
        let (sealed_side, open_side) = tokio::io::duplex(PIPE);
        let reader = PatternReader {
            pattern: Pattern::new(),
            pos: 0,
        };
        let mut checker = PatternChecker {
            pattern: Pattern::new(),
            pos: 0,
            scratch: Vec::new(),
        };
        // The sealer owns its end of the pipe and drops it when done, which
        // is the end of the stream for the opener.
        let (sealed, opened) = tokio::join!(
            envelope.seal_stream(reader, sealed_side, &context),
            envelope.open_stream(open_side, &mut checker, &context),
        );
        assert_eq!(sealed.unwrap(), TOTAL);
        (opened.unwrap(), checker.pos)
    });
    assert_eq!((opened, checked), (TOTAL, TOTAL));
    let peak = ALLOCATOR.max_allocated();
    eprintln!(
        "peak heap {} KiB (before the stream: {} KiB) for a {} MiB stream",
        peak >> 10,
        before >> 10,
        TOTAL >> 20
    );
    assert!(
        peak < PEAK_LIMIT,
        "peak heap {peak} bytes, limit {PEAK_LIMIT}"
    );
}
