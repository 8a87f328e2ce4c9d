//! Containers for plaintext key material and credentials.
//!
//! [`SecretBytes`] zeroizes its buffer on drop and never shows its contents in
//! `Debug`. It serializes (to carry a plaintext inside the enclave's own
//! endpoints), but it has no `Display` and no accessor that copies it out
//! un-zeroized: callers borrow it with [`SecretBytes::expose`].
//!
//! [`to_json_zeroizing`] writes JSON that carries secrets into a buffer
//! that is wiped on drop and never reallocated.
//!
//! [`SecretString`] is the same for text secrets (an AWS secret access key or
//! session token, handed from the parent proxy to the enclave in protocol
//! version 2): zeroized on drop, redacted in `Debug`, no `Display`.

use core::fmt;
use zeroize::{Zeroize, Zeroizing};

/// Plaintext key material: zeroized on drop, redacted in `Debug`.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct SecretBytes(Zeroizing<Vec<u8>>);

impl SecretBytes {
    /// Takes ownership of `bytes`; they are zeroized when this value drops.
    pub fn new(bytes: Vec<u8>) -> Self {
        Self(Zeroizing::new(bytes))
    }

    /// Copies `bytes` into a new zeroizing buffer. The caller remains
    /// responsible for its own copy.
    pub fn from_slice(bytes: &[u8]) -> Self {
        Self::new(bytes.to_vec())
    }

    /// Borrows the secret. Keep the borrow short and never log it.
    pub fn expose(&self) -> &[u8] {
        &self.0
    }

    /// Borrows the secret mutably, to transform it in place (no copy).
    pub fn expose_mut(&mut self) -> &mut [u8] {
        &mut self.0
    }

    /// Length in bytes (not secret).
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether the secret is empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl From<Vec<u8>> for SecretBytes {
    fn from(v: Vec<u8>) -> Self {
        Self::new(v)
    }
}

impl fmt::Debug for SecretBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretBytes([REDACTED; {} bytes])", self.0.len())
    }
}

impl Zeroize for SecretBytes {
    fn zeroize(&mut self) {
        self.0.zeroize();
    }
}

impl serde::Serialize for SecretBytes {
    /// As a KMS blob (base64 in JSON, a byte string in CBOR). The base64
    /// text is built in a zeroizing buffer of exactly its length, so no
    /// copy of the secret outlives the call un-wiped.
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if !s.is_human_readable() {
            return s.serialize_bytes(&self.0);
        }
        use base64::Engine as _;
        let engine = &base64::engine::general_purpose::STANDARD;
        let len = base64::encoded_len(self.0.len(), true)
            .ok_or_else(|| serde::ser::Error::custom("secret too large to encode"))?;
        let mut text = Zeroizing::new(vec![0u8; len]);
        let written = engine
            .encode_slice(&self.0[..], &mut text[..])
            .map_err(serde::ser::Error::custom)?;
        let text = text.get(..written).unwrap_or_default();
        s.serialize_str(core::str::from_utf8(text).map_err(serde::ser::Error::custom)?)
    }
}

/// Serializes `value` as JSON (pretty-printed if `pretty`) into a zeroizing
/// buffer allocated once at its final size, for JSON that carries secrets
/// (the enclave endpoint's answers, the enclave CLI's output). A `Vec` that
/// grew while being written would leave un-wiped copies of its earlier
/// contents in freed memory; this one never reallocates: the value is
/// serialized twice, first only to count the bytes.
///
/// # Errors
/// The `serde_json` error if `value` cannot be serialized.
pub fn to_json_zeroizing<T: serde::Serialize + ?Sized>(
    value: &T,
    pretty: bool,
) -> Result<Zeroizing<Vec<u8>>, serde_json::Error> {
    fn write<T: serde::Serialize + ?Sized, W: std::io::Write>(
        w: W,
        value: &T,
        pretty: bool,
    ) -> Result<(), serde_json::Error> {
        if pretty {
            serde_json::to_writer_pretty(w, value)
        } else {
            serde_json::to_writer(w, value)
        }
    }
    let mut counter = CountingSink(0);
    write(&mut counter, value, pretty)?;
    let mut out = Zeroizing::new(Vec::with_capacity(counter.0));
    write(FixedVec(&mut out), value, pretty)?;
    Ok(out)
}

/// Counts the bytes written to it.
struct CountingSink(usize);

impl std::io::Write for CountingSink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0 = self.0.saturating_add(buf.len());
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Appends to a `Vec` but refuses to grow it past its capacity (so a
/// second serialization that differed from the count could not leave a
/// reallocated copy behind).
struct FixedVec<'a>(&'a mut Vec<u8>);

impl std::io::Write for FixedVec<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.0.capacity() - self.0.len() < buf.len() {
            return Err(std::io::Error::other("JSON longer than counted"));
        }
        self.0.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'de> serde::Deserialize<'de> for SecretBytes {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        crate::blob_serde::deserialize(d).map(Self::new)
    }
}

/// A text secret (AWS secret access key, session token): zeroized on drop,
/// redacted in `Debug`, no `Display`. Borrow it with [`SecretString::expose`].
#[derive(Clone, Default, PartialEq, Eq)]
pub struct SecretString(Zeroizing<String>);

impl SecretString {
    /// Takes ownership of `s`; it is zeroized when this value drops.
    pub fn new(s: String) -> Self {
        Self(Zeroizing::new(s))
    }

    /// Copies `s` into a new zeroizing string. The caller remains
    /// responsible for its own copy.
    pub fn from_str_copy(s: &str) -> Self {
        Self::new(s.to_owned())
    }

    /// Borrows the secret. Keep the borrow short and never log it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Length in bytes (not secret).
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether the secret is empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl From<String> for SecretString {
    fn from(s: String) -> Self {
        Self::new(s)
    }
}

impl fmt::Debug for SecretString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretString([REDACTED])")
    }
}

impl Zeroize for SecretString {
    fn zeroize(&mut self) {
        self.0.zeroize();
    }
}

impl serde::Serialize for SecretString {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> serde::Deserialize<'de> for SecretString {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = SecretString;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a text string")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<SecretString, E> {
                Ok(SecretString::from_str_copy(v))
            }
            fn visit_string<E: serde::de::Error>(self, v: String) -> Result<SecretString, E> {
                Ok(SecretString::new(v))
            }
        }
        d.deserialize_str(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_string_debug_is_redacted_and_round_trips() {
        let s = SecretString::from_str_copy("wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY");
        let shown = format!("{s:?}");
        assert!(!shown.contains("wJalr"), "{shown}");
        assert_eq!(shown, "SecretString([REDACTED])");
        let mut cbor = Vec::new();
        ciborium::into_writer(&s, &mut cbor).unwrap();
        let back: SecretString = ciborium::from_reader(&cbor[..]).unwrap();
        assert_eq!(back.expose(), s.expose());
        assert!(ciborium::from_reader::<SecretString, _>(&[0x01][..]).is_err());
    }

    #[test]
    fn json_of_secrets_is_built_at_its_final_size() {
        // An RSA-4096 PKCS#8 key is about 2.4 KB: 3.2 KB of base64, more
        // than any small initial buffer.
        let key = SecretBytes::new(
            (0..2374u32)
                .map(|i| u8::try_from(i % 251).unwrap())
                .collect(),
        );
        let value = crate::kms::GenerateDataKeyPairResponse {
            private_key_plaintext: Some(key.clone()),
            key_id: Some("arn:aws:kms:us-east-1:111122223333:key/k".into()),
            ..Default::default()
        };
        for pretty in [false, true] {
            let json = to_json_zeroizing(&value, pretty).unwrap();
            let plain = if pretty {
                serde_json::to_vec_pretty(&value).unwrap()
            } else {
                serde_json::to_vec(&value).unwrap()
            };
            assert_eq!(&json[..], &plain[..]);
            assert_eq!(json.capacity(), json.len(), "allocated once, exactly");
        }
        let back: crate::kms::GenerateDataKeyPairResponse =
            serde_json::from_slice(&to_json_zeroizing(&value, false).unwrap()).unwrap();
        assert_eq!(back.private_key_plaintext, Some(key));
    }

    #[test]
    fn debug_is_redacted() {
        let s = SecretBytes::from_slice(b"super secret key material");
        let shown = format!("{s:?}");
        assert!(!shown.contains("secret key"), "{shown}");
        assert!(shown.contains("REDACTED"));
        assert!(shown.contains("25 bytes"));
        let s = SecretString::new("wJalrXUtnFEMI".into());
        assert_eq!(format!("{s:?}"), "SecretString([REDACTED])");
        assert_eq!(s.expose(), "wJalrXUtnFEMI");
    }
}
