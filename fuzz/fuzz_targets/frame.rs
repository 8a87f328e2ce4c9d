//! Fuzzes the enclave <-> proxy frame decoder (`keybroker_common::protocol`).
//!
//! Properties checked on arbitrary bytes:
//! - decoding never panics, and never consumes more than it was given (every
//!   kind, including the version 2 credentials and tunnel messages, whose
//!   host and credential checks run on decode and encode alike, and the
//!   version 3 metrics report, whose enclave id and tables are checked the
//!   same way);
//! - every decoded message re-encodes, and the re-encoding decodes to a
//!   message that encodes to the same bytes (encode is a fixed point);
//! - the streaming `FrameDecoder`, fed in small chunks, yields exactly the
//!   messages (and the same final outcome) as the slice decoder.
#![no_main]

use keybroker_common::protocol::{
    Decoded, FrameDecoder, Limits, ProtocolError, decode_frame, encode,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // A small limit too, so oversize handling is exercised on short inputs.
    for limits in [Limits::default(), Limits::new(64)] {
        check(data, limits);
    }
});

fn check(data: &[u8], limits: Limits) {
    // Slice decoder: frames until Incomplete or an error.
    let mut rest = data;
    let mut encodings = Vec::new();
    let outcome_ok = loop {
        match decode_frame(rest, &limits) {
            Ok(Decoded::Complete { message, consumed }) => {
                assert!(consumed > 4 && consumed <= rest.len());
                assert!(consumed - 4 <= limits.max_frame_len());
                let bytes = match encode(&message) {
                    Ok(b) => b,
                    // A decoded body can grow when re-encoded canonically
                    // (e.g. a struct sent as an array gains its field names).
                    Err(ProtocolError::FrameTooLarge { .. }) => break false,
                    Err(e) => panic!("decoded message does not re-encode: {e}"),
                };
                match decode_frame(&bytes, &Limits::default()) {
                    Ok(Decoded::Complete {
                        message: again,
                        consumed,
                    }) => {
                        assert_eq!(consumed, bytes.len());
                        assert_eq!(encode(&again).ok().as_deref(), Some(&bytes[..]));
                    }
                    other => panic!("re-encoded message does not decode: {other:?}"),
                }
                encodings.push(bytes);
                rest = &rest[consumed..];
            }
            Ok(Decoded::Incomplete { needed }) => {
                assert!(needed > 0);
                break true;
            }
            Err(_) => break false,
        }
    };

    // Streaming decoder in 7-byte chunks must agree.
    let mut dec = FrameDecoder::new(limits);
    let mut streamed = Vec::new();
    let mut stream_ok = true;
    'feed: for chunk in data.chunks(7) {
        dec.push(chunk);
        loop {
            match dec.next_message() {
                Ok(Some(m)) => streamed.push(m),
                Ok(None) => break,
                Err(_) => {
                    stream_ok = false;
                    break 'feed;
                }
            }
        }
    }
    if outcome_ok && stream_ok {
        assert_eq!(streamed.len(), encodings.len());
    }
    // Up to the first failure both saw the same messages.
    for (m, bytes) in streamed.iter().zip(&encodings) {
        assert_eq!(encode(m).ok().as_deref(), Some(&bytes[..]));
    }
    if outcome_ok {
        assert!(
            stream_ok,
            "stream decoder failed where the slice decoder did not"
        );
    }
}
