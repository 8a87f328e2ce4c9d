//! Fuzzes the envelope-encryption message decoder and opener
//! (`keybroker_common::envelope`).
//!
//! Properties checked:
//! - arbitrary bytes as a message: `Header::decode` never panics, never asks
//!   for more than `MAX_HEADER_LEN` bytes in all, and a decoded header
//!   re-encodes to exactly the bytes it consumed; opening with a fixed key
//!   never panics;
//! - arbitrary bytes as the body after a valid header: the frame opener never
//!   panics, and the incremental opener (fed exactly the bytes it asks for)
//!   reaches the same outcome as `open_all`;
//! - the input as plaintext (its first byte choosing the frame length): the
//!   sealed message opens to it, and the same message with one bit flipped
//!   or one byte cut (positions chosen by the input) does not open.
#![no_main]

use keybroker_common::Error;
use keybroker_common::envelope::{Decoded, Header, HeaderParams, MAX_HEADER_LEN, seal_message};
use keybroker_common::kms::EncryptionContext;
use libfuzzer_sys::fuzz_target;

const KEY: [u8; 32] = [0x42; 32];

fn context() -> EncryptionContext {
    EncryptionContext::from([("fuzz".to_owned(), "1".to_owned())])
}

fn params(frame_len: u32) -> HeaderParams<'static> {
    HeaderParams {
        key_id: "arn:aws:kms:us-east-1:111122223333:key/fuzz",
        ciphertext_blob: b"blob",
        message_id: [7; 32],
        frame_len,
    }
}

fn open(message: &[u8]) -> Result<Vec<u8>, Error> {
    match Header::decode(message)? {
        Decoded::Complete { value, consumed } => {
            assert!(consumed <= MAX_HEADER_LEN && consumed <= message.len());
            assert_eq!(value.encoded_len(), consumed);
            assert_eq!(value.encode(), &message[..consumed]);
            let opener = value.open(&KEY, &context())?;
            Ok(opener.open_all(&message[consumed..])?.to_vec())
        }
        Decoded::Incomplete { needed } => {
            assert!(needed > 0 && message.len() + needed <= MAX_HEADER_LEN);
            Err(keybroker_common::EnvelopeError::Truncated.into())
        }
    }
}

/// Opens `body` after `header` frame by frame, reading exactly what the
/// opener asks for; returns the plaintext or whether it failed.
fn open_incrementally(header: &Header, body: &[u8]) -> Result<Vec<u8>, ()> {
    let mut opener = header.open(&KEY, &context()).map_err(|_| ())?;
    let mut out = Vec::new();
    let (mut at, mut have) = (0usize, 0usize);
    while !opener.is_finished() {
        let input = body.get(at..at + have).ok_or(())?;
        match opener.open_frame(input, &mut out).map_err(|_| ())? {
            Decoded::Incomplete { needed } => {
                assert!(needed > 0);
                have += needed;
            }
            Decoded::Complete { consumed, .. } => {
                assert_eq!(consumed, have);
                at += consumed;
                have = 0;
            }
        }
    }
    if at != body.len() {
        return Err(());
    }
    Ok(out)
}

fuzz_target!(|data: &[u8]| {
    // Arbitrary bytes as a whole message.
    let _ = open(data);

    let Some((&first, plaintext)) = data.split_first() else {
        return;
    };
    let frame_len = 1 + u32::from(first % 64);

    // Arbitrary bytes as the body of a message with a valid header.
    let sealed = seal_message(&KEY, &params(frame_len), &context(), b"").unwrap();
    let Ok(Decoded::Complete {
        value: header,
        consumed,
    }) = Header::decode(&sealed)
    else {
        panic!("a sealed header does not decode");
    };
    let mut forged = sealed[..consumed].to_vec();
    forged.extend_from_slice(plaintext);
    let whole = open(&forged);
    let incremental = open_incrementally(&header, plaintext);
    assert_eq!(whole.ok(), incremental.ok());

    // The input as plaintext: round trip, then damage.
    let message = seal_message(&KEY, &params(frame_len), &context(), plaintext).unwrap();
    assert_eq!(open(&message).unwrap(), plaintext);
    let pick = data.iter().fold(0usize, |h, &b| {
        h.wrapping_mul(31).wrapping_add(usize::from(b))
    });
    let mut flipped = message.clone();
    flipped[pick % message.len()] ^= 1 << (pick % 8);
    assert!(open(&flipped).is_err());
    assert!(open(&message[..pick % message.len()]).is_err());
});
