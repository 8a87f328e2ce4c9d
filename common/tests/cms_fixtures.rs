//! CMS against real KMS `CiphertextForRecipient` values (`../shared/fixtures/cms-kms/`).
//!
//! 1. `parse` extracts exactly the encrypted key, IV and ciphertext stored
//!    beside each real response.
//! 2. The encoder's output has the same BER skeleton (tags, definite or
//!    indefinite lengths, nesting, lengths, chunking) as a real response
//!    with the same content length, so a decoder tested against the mock KMS
//!    is tested against KMS's layout.

// A test crate: its helpers (outside #[test] fns) may panic on bad fixtures.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use keybroker_common::cms::{self, EnvelopedParts, RecipientPrivateKey, encrypt_for_recipient};
use keybroker_test_support::fixtures::{self, read};

/// (response, encrypted key, IV, ciphertext) file names.
const CASES: &[(&str, &str, &str, &str)] = &[
    (
        "input_ber.bin",
        "encrypted_key_out.bin",
        "iv_out.bin",
        "ciphertext_out.bin",
    ),
    (
        "input_ber_w_ctx.bin",
        "encrypted_key_out_w_ctx.bin",
        "iv_out_w_ctx.bin",
        "ciphertext_out_w_ctx.bin",
    ),
    (
        "rustcrypto_kms_1.ber",
        "rustcrypto_kms_1_encrypted_key.bin",
        "rustcrypto_kms_1_iv.bin",
        "rustcrypto_kms_1_ciphertext.bin",
    ),
    (
        "rustcrypto_kms_4.ber",
        "rustcrypto_kms_4_encrypted_key.bin",
        "rustcrypto_kms_4_iv.bin",
        "rustcrypto_kms_4_ciphertext.bin",
    ),
];

#[test]
fn real_kms_responses_parse_to_the_stored_parts() {
    let Some(dir) = fixtures::cms_kms() else {
        return;
    };
    for (input, key, iv, ct) in CASES {
        let parts: EnvelopedParts =
            cms::parse(&read(&dir, input)).unwrap_or_else(|e| panic!("{input}: {e}"));
        assert_eq!(parts.encrypted_key, read(&dir, key), "{input}");
        assert_eq!(parts.iv.as_slice(), read(&dir, iv).as_slice(), "{input}");
        assert_eq!(parts.ciphertext, read(&dir, ct), "{input}");
        assert_eq!(parts.subject_key_identifier.len(), 32, "{input}");
    }
}

#[test]
fn real_kms_responses_under_another_key_get_a_rejection_value() {
    // The private keys are not public: the full decrypt path runs and, as
    // for any ciphertext that does not decrypt, yields the deterministic
    // pseudorandom value of the expected length (implicit rejection).
    let Some(dir) = fixtures::cms_kms() else {
        return;
    };
    let key = RecipientPrivateKey::generate_2048().unwrap();
    for (input, ..) in CASES {
        let ber = read(&dir, input);
        let value = cms::decrypt(&ber, &key, Some(32)).unwrap();
        assert_eq!(value.len(), 32, "{input}");
        assert_eq!(
            cms::decrypt(&ber, &key, Some(32)).unwrap(),
            value,
            "{input}"
        );
    }
}

#[test]
fn truncated_real_responses_are_rejected() {
    let Some(dir) = fixtures::cms_kms() else {
        return;
    };
    for (input, ..) in CASES {
        let ber = read(&dir, input);
        for len in 0..ber.len() {
            assert!(cms::parse(&ber[..len]).is_err(), "{input} prefix {len}");
        }
    }
}

/// One TLV of a BER skeleton: depth, identifier octet, and the length
/// (`None` = indefinite). Values are dropped, lengths kept.
#[derive(Debug, PartialEq, Eq)]
struct Node {
    depth: usize,
    tag: u8,
    len: Option<usize>,
}

/// Reduces BER to its skeleton (X.690 section 8.1): every TLV with its depth,
/// identifier octet and length form; end-of-contents octets close a level.
/// Only low tag numbers and lengths up to 4 octets, enough for CMS here.
fn skeleton(ber: &[u8]) -> Vec<Node> {
    fn walk(
        ber: &[u8],
        mut pos: usize,
        end: Option<usize>,
        depth: usize,
        out: &mut Vec<Node>,
    ) -> usize {
        loop {
            match end {
                Some(end) if pos == end => return pos,
                None if ber[pos..].starts_with(&[0, 0]) => return pos + 2,
                _ => {}
            }
            let tag = ber[pos];
            assert_ne!(tag & 0x1f, 0x1f, "high tag numbers are not expected");
            let first = ber[pos + 1];
            pos += 2;
            let len = match first {
                0x80 => None,
                l if l < 0x80 => Some(usize::from(l)),
                l => {
                    let n = usize::from(l & 0x7f);
                    let v = ber[pos..pos + n]
                        .iter()
                        .fold(0usize, |a, b| a << 8 | usize::from(*b));
                    pos += n;
                    Some(v)
                }
            };
            out.push(Node { depth, tag, len });
            let constructed = tag & 0x20 != 0;
            pos = match (constructed, len) {
                (true, Some(len)) => walk(ber, pos, Some(pos + len), depth + 1, out),
                (true, None) => walk(ber, pos, None, depth + 1, out),
                (false, Some(len)) => pos + len,
                (false, None) => panic!("primitive with indefinite length"),
            };
        }
    }
    let mut out = Vec::new();
    let end = walk(ber, 0, Some(ber.len()), 0, &mut out);
    assert_eq!(end, ber.len());
    out
}

#[test]
fn skeleton_helper_sees_chunking() {
    let Some(dir) = fixtures::cms_kms() else {
        return;
    };
    let s = skeleton(&read(&dir, "rustcrypto_kms_4.ber"));
    // The OCTET STRINGs inside the constructed [0] encryptedContent (depth 4).
    let content_at = s
        .iter()
        .position(|n| n.depth == 4 && n.tag == 0xa0)
        .unwrap();
    let chunks: Vec<_> = s[content_at + 1..]
        .iter()
        .take_while(|n| n.depth == 5)
        .map(|n| (n.tag, n.len))
        .collect();
    let chunks: Vec<_> = chunks
        .iter()
        .map(|(tag, len)| {
            assert_eq!(*tag, 0x04);
            *len
        })
        .collect();
    assert_eq!(
        chunks,
        [Some(1000), Some(1000), Some(1000), Some(1000), Some(112)]
    );
    assert_eq!(
        s[0],
        Node {
            depth: 0,
            tag: 0x30,
            len: None
        }
    );
    // The primitive [0] shape differs from the constructed one.
    assert_ne!(
        skeleton(&read(&dir, "input_ber.bin")),
        skeleton(&read(&dir, "input_ber_w_ctx.bin"))
    );
}

#[test]
fn encoder_output_has_the_kms_skeleton() {
    let Some(dir) = fixtures::cms_kms() else {
        return;
    };
    let key = RecipientPrivateKey::generate_2048().unwrap();
    let spki = key.public_key_spki_der();
    let rng = aws_lc_rs::rand::SystemRandom::new();
    // (real response, a plaintext length giving the same content length)
    for (input, plaintext_len) in [
        ("input_ber.bin", 32),          // 48 bytes of content: a 32-byte data key
        ("rustcrypto_kms_1.ber", 10),   // 16 bytes
        ("rustcrypto_kms_4.ber", 4100), // 4112 bytes in five chunks
    ] {
        let real = read(&dir, input);
        let ours = encrypt_for_recipient(&spki, &vec![0x5a; plaintext_len], &rng).unwrap();
        assert_eq!(skeleton(&ours), skeleton(&real), "{input}");
        assert_eq!(ours.len(), real.len(), "{input}");
        // And it decrypts.
        assert_eq!(
            cms::decrypt(&ours, &key, Some(plaintext_len))
                .unwrap()
                .expose(),
            vec![0x5a; plaintext_len].as_slice()
        );
    }
}
