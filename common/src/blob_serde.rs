//! Serde for KMS blobs: a base64 string in human-readable formats (the AWS
//! JSON 1.1 protocol's blobs) and a byte string in binary ones (CBOR on the
//! wire). Shared by `kms::Blob` and `secret::SecretBytes`.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use core::fmt;
use serde::de::Visitor;

pub(crate) fn serialize<S: serde::Serializer>(b: &[u8], s: S) -> Result<S::Ok, S::Error> {
    if s.is_human_readable() {
        s.serialize_str(&STANDARD.encode(b))
    } else {
        s.serialize_bytes(b)
    }
}

pub(crate) fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
    struct V;
    impl<'de> Visitor<'de> for V {
        type Value = Vec<u8>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a base64 string or a byte string")
        }
        fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Vec<u8>, E> {
            STANDARD
                .decode(v)
                .map_err(|_| E::custom("blob is not valid base64"))
        }
        fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Vec<u8>, E> {
            Ok(v.to_vec())
        }
        fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<Vec<u8>, E> {
            Ok(v)
        }
    }
    // `deserialize_byte_buf`, not `deserialize_bytes`: ciborium serves
    // borrowed bytes only from a 4 KiB scratch buffer and rejects longer
    // byte strings (attestation documents are ~4.5 KiB).
    if d.is_human_readable() {
        d.deserialize_str(V)
    } else {
        d.deserialize_byte_buf(V)
    }
}
