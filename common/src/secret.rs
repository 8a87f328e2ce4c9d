//! Containers for plaintext key material and credentials.
//!
//! [`SecretBytes`] zeroizes its buffer on drop and never shows its contents in
//! `Debug`. It serializes (to carry a plaintext inside the enclave's own
//! endpoints), but it has no `Display` and no accessor that copies it out
//! un-zeroized: callers borrow it with [`SecretBytes::expose`].
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
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        crate::kms::blob_serde::serialize(&self.0, s)
    }
}

impl<'de> serde::Deserialize<'de> for SecretBytes {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        crate::kms::blob_serde::deserialize(d).map(Self::new)
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
