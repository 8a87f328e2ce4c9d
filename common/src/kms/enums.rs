//! The string enums of the KMS API (`KeySpec`, `KeyPairSpec`,
//! `EncryptionAlgorithm`, operation names, ...), each spelled once.
//!
//! Every enum here is declared through [`kms_enum!`], which takes one row per
//! variant, `Variant = "KMS_SPELLING"`, and generates from it the enum, `ALL`,
//! `as_str`, [`core::str::FromStr`], [`core::fmt::Display`] and serde
//! `Serialize`/`Deserialize`. The spelling in the row is the wire value of the
//! KMS API reference (AWS JSON 1.1 sends enum members as JSON strings), so
//! callers convert with `as_str()` and `parse()` instead of serde round trips.

use core::fmt;
use core::marker::PhantomData;

use serde::de::{self, DeserializeSeed, EnumAccess, Unexpected, VariantAccess, Visitor};

/// Declares a KMS string enum from rows `Variant = "SPELLING",` and generates:
///
/// - the enum (`Clone, Copy, Debug, PartialEq, Eq, Hash`);
/// - `ALL`, every variant in declaration order (an array, so it iterates by
///   value and indexes with `.get(i)`);
/// - `NAMES`, the spellings of `ALL` in the same order;
/// - `const fn as_str(self) -> &'static str`, the KMS spelling;
/// - `FromStr` with the exact spelling ([`UnknownKmsValue`] otherwise) and
///   `Display` writing the spelling;
/// - serde `Serialize`/`Deserialize` as that spelling: a unit variant, as
///   `#[derive]` with `#[serde(rename = "...")]` would give, so JSON carries
///   the string and CBOR a text string, and unknown spellings are refused
///   with serde's usual "unknown variant" message.
///
/// The variants must have no explicit discriminants (the serde variant index
/// is the declaration position).
macro_rules! kms_enum {
    (
        $(#[$m:meta])*
        pub enum $name:ident {
            $( $(#[$vm:meta])* $v:ident = $s:literal, )+
        }
    ) => {
        $(#[$m])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum $name {
            $( $(#[$vm])* $v, )+
        }

        impl $name {
            /// Every value, in declaration order.
            pub const ALL: [Self; [$($s),+].len()] = [$(Self::$v),+];

            /// The spellings of [`Self::ALL`], index for index (the enum
            /// value set of the KMS API reference, for validation messages).
            pub const NAMES: &'static [&'static str] = &[$($s),+];

            /// The KMS API spelling of this value.
            pub const fn as_str(self) -> &'static str {
                match self {
                    $(Self::$v => $s,)+
                }
            }
        }

        impl ::core::str::FromStr for $name {
            type Err = $crate::kms::UnknownKmsValue;

            /// Parses the exact KMS spelling (case-sensitive, as KMS is).
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                match s {
                    $($s => Ok(Self::$v),)+
                    _ => Err($crate::kms::UnknownKmsValue::new(stringify!($name), s)),
                }
            }
        }

        impl ::core::fmt::Display for $name {
            fn fmt(&self, f: &mut ::core::fmt::Formatter<'_>) -> ::core::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl ::serde::Serialize for $name {
            fn serialize<S: ::serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                // Fieldless enum without explicit discriminants: the cast is
                // the declaration index, which is what serde's derive passes.
                s.serialize_unit_variant(stringify!($name), *self as u32, self.as_str())
            }
        }

        impl<'de> ::serde::Deserialize<'de> for $name {
            fn deserialize<D: ::serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                $crate::kms::enums::deserialize_unit_enum(
                    d,
                    stringify!($name),
                    &Self::ALL,
                    Self::NAMES,
                )
            }
        }
    };
}

pub(crate) use kms_enum;

/// A string that is not the KMS spelling of any value of an enum (the error
/// of the `FromStr` impls that `kms_enum!` generates).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown {type_name} value {value:?}")]
pub struct UnknownKmsValue {
    /// The Rust name of the enum, e.g. `DataKeySpec`.
    pub type_name: &'static str,
    /// The string that was given.
    pub value: String,
}

impl UnknownKmsValue {
    /// The error for `value` as a `type_name`.
    pub fn new(type_name: &'static str, value: &str) -> Self {
        Self {
            type_name,
            value: value.to_owned(),
        }
    }
}

/// Deserializes a unit-only enum from its spellings the way serde's derive
/// does (`deserialize_enum`, identifier by name, bytes or index), so that
/// every format accepts and refuses exactly what it did with
/// `#[derive(Deserialize)]` and `#[serde(rename)]`.
pub(crate) fn deserialize_unit_enum<'de, D, T>(
    d: D,
    type_name: &'static str,
    all: &'static [T],
    names: &'static [&'static str],
) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Copy + 'static,
{
    d.deserialize_enum(
        type_name,
        names,
        EnumVisitor {
            type_name,
            table: Table { all, names },
        },
    )
}

/// The values of an enum and their spellings, index for index.
struct Table<T: 'static> {
    all: &'static [T],
    names: &'static [&'static str],
}

impl<T> Clone for Table<T> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<T> Copy for Table<T> {}

impl<T: Copy> Table<T> {
    fn by_name<E: de::Error>(self, name: &str) -> Result<T, E> {
        self.names
            .iter()
            .position(|n| *n == name)
            .and_then(|i| self.all.get(i).copied())
            .ok_or_else(|| E::unknown_variant(name, self.names))
    }
}

struct EnumVisitor<T: 'static> {
    type_name: &'static str,
    table: Table<T>,
}

impl<'de, T: Copy + 'static> Visitor<'de> for EnumVisitor<T> {
    type Value = T;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "enum {}", self.type_name)
    }

    fn visit_enum<A: EnumAccess<'de>>(self, data: A) -> Result<T, A::Error> {
        let (value, variant) = data.variant_seed(IdentSeed(self.table))?;
        variant.unit_variant()?;
        Ok(value)
    }
}

/// Reads the variant identifier: its spelling (as text or bytes) or its index.
struct IdentSeed<T: 'static>(Table<T>);

impl<'de, T: Copy + 'static> DeserializeSeed<'de> for IdentSeed<T> {
    type Value = T;

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<T, D::Error> {
        d.deserialize_identifier(IdentVisitor(self.0, PhantomData))
    }
}

struct IdentVisitor<'de, T: 'static>(Table<T>, PhantomData<&'de ()>);

impl<'de, T: Copy + 'static> Visitor<'de> for IdentVisitor<'de, T> {
    type Value = T;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("variant identifier")
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<T, E> {
        usize::try_from(v)
            .ok()
            .and_then(|i| self.0.all.get(i).copied())
            .ok_or_else(|| {
                E::invalid_value(
                    Unexpected::Unsigned(v),
                    &format!("variant index 0 <= i < {}", self.0.all.len()).as_str(),
                )
            })
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<T, E> {
        self.0.by_name(v)
    }

    fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<T, E> {
        self.0.by_name(&String::from_utf8_lossy(v))
    }
}

kms_enum! {
    /// KMS `KeySpec` for `GenerateDataKey`.
    pub enum DataKeySpec {
        /// 256-bit symmetric key.
        Aes256 = "AES_256",
        /// 128-bit symmetric key.
        Aes128 = "AES_128",
    }
}

impl DataKeySpec {
    /// Key length in bytes.
    pub const fn byte_len(self) -> usize {
        match self {
            DataKeySpec::Aes256 => 32,
            DataKeySpec::Aes128 => 16,
        }
    }
}

kms_enum! {
    /// KMS `KeyPairSpec` for `GenerateDataKeyPair[WithoutPlaintext]`, in the
    /// order of the KMS API reference.
    pub enum DataKeyPairSpec {
        /// RSA, 2048-bit modulus.
        Rsa2048 = "RSA_2048",
        /// RSA, 3072-bit modulus.
        Rsa3072 = "RSA_3072",
        /// RSA, 4096-bit modulus.
        Rsa4096 = "RSA_4096",
        /// NIST P-256 (secp256r1).
        EccNistP256 = "ECC_NIST_P256",
        /// NIST P-384 (secp384r1).
        EccNistP384 = "ECC_NIST_P384",
        /// NIST P-521 (secp521r1).
        EccNistP521 = "ECC_NIST_P521",
        /// secp256k1 (SEC 2).
        EccSecgP256k1 = "ECC_SECG_P256K1",
        /// SM2 (China Regions only).
        Sm2 = "SM2",
        /// Ed25519.
        EccNistEdwards25519 = "ECC_NIST_EDWARDS25519",
    }
}

kms_enum! {
    /// KMS `KeyEncryptionAlgorithm` of a `Recipient`. KMS supports exactly one.
    pub enum KeyEncryptionAlgorithm {
        /// RSAES-OAEP with SHA-256 and MGF1-SHA-256.
        RsaesOaepSha256 = "RSAES_OAEP_SHA_256",
    }
}

kms_enum! {
    /// KMS `EncryptionAlgorithm` (`Encrypt`, `Decrypt`, `ReEncrypt`).
    pub enum EncryptionAlgorithm {
        /// AES-256-GCM under a symmetric KMS key.
        SymmetricDefault = "SYMMETRIC_DEFAULT",
        /// RSAES-OAEP with SHA-1 (RSA keys).
        RsaesOaepSha1 = "RSAES_OAEP_SHA_1",
        /// RSAES-OAEP with SHA-256 (RSA keys).
        RsaesOaepSha256 = "RSAES_OAEP_SHA_256",
        /// SM2 public-key encryption (China Regions only).
        Sm2Pke = "SM2PKE",
    }
}

kms_enum! {
    /// KMS `KeyAgreementAlgorithm` (`DeriveSharedSecret`). KMS supports exactly
    /// one: ECDH, whose result is the raw shared secret (the x-coordinate of the
    /// shared point, NIST SP 800-56A rev. 3 section 5.7.1.2), with no KDF applied.
    pub enum KeyAgreementAlgorithm {
        /// Elliptic-curve Diffie-Hellman.
        Ecdh = "ECDH",
    }
}

kms_enum! {
    /// KMS `DryRunModifiers` of `Decrypt`: `IGNORE_CIPHERTEXT` makes a dry run
    /// check permissions without validating the ciphertext.
    pub enum DryRunModifier {
        /// Skip ciphertext validation in a dry run.
        IgnoreCiphertext = "IGNORE_CIPHERTEXT",
    }
}

kms_enum! {
    /// KMS `KeySpec` of a key-agreement key: the elliptic curve of
    /// `DeriveSharedSecret`'s `PublicKey` must be the KMS key's. `ALL` is
    /// every curve KMS offers for `KEY_AGREEMENT` outside China Regions.
    pub enum EcdhCurve {
        /// NIST P-256 (secp256r1).
        NistP256 = "ECC_NIST_P256",
        /// NIST P-384 (secp384r1).
        NistP384 = "ECC_NIST_P384",
        /// NIST P-521 (secp521r1).
        NistP521 = "ECC_NIST_P521",
        /// secp256k1 (SEC 2).
        SecgP256k1 = "ECC_SECG_P256K1",
    }
}

impl EcdhCurve {
    /// The named-curve OID of an `id-ecPublicKey` SubjectPublicKeyInfo
    /// (RFC 5480 section 2.1.1.1; secp256k1 from SEC 2).
    pub const fn oid(self) -> const_oid::ObjectIdentifier {
        use const_oid::ObjectIdentifier as Oid;
        match self {
            Self::NistP256 => Oid::new_unwrap("1.2.840.10045.3.1.7"),
            Self::NistP384 => Oid::new_unwrap("1.3.132.0.34"),
            Self::NistP521 => Oid::new_unwrap("1.3.132.0.35"),
            Self::SecgP256k1 => Oid::new_unwrap("1.3.132.0.10"),
        }
    }

    /// The length of an ECDH shared secret on this curve: the size of a
    /// field element (SEC 1 section 3.3.1).
    pub const fn shared_secret_len(self) -> usize {
        match self {
            Self::NistP256 | Self::SecgP256k1 => 32,
            Self::NistP384 => 48,
            Self::NistP521 => 66,
        }
    }

    /// The curve of a DER SubjectPublicKeyInfo (`id-ecPublicKey` with a
    /// named curve, RFC 5480 section 2), as `DeriveSharedSecret` takes it.
    ///
    /// # Errors
    /// [`crate::Error::InvalidArgument`] if it is longer than KMS's bound
    /// ([`super::PUBLIC_KEY_MAX`]), does not parse, is not an EC key or names
    /// another curve.
    pub fn of_spki(der: &[u8]) -> Result<Self, crate::Error> {
        use der::Decode;
        const ID_EC_PUBLIC_KEY: const_oid::ObjectIdentifier =
            const_oid::ObjectIdentifier::new_unwrap("1.2.840.10045.2.1");
        let bad = |why: &str| crate::Error::InvalidArgument(format!("PublicKey: {why}"));
        if der.len() > super::PUBLIC_KEY_MAX {
            return Err(bad("longer than 8192 bytes"));
        }
        let spki = spki::SubjectPublicKeyInfoRef::from_der(der)
            .map_err(|_| bad("not a DER SubjectPublicKeyInfo"))?;
        if spki.algorithm.oid != ID_EC_PUBLIC_KEY {
            return Err(bad("not an elliptic-curve key"));
        }
        let curve = spki
            .algorithm
            .parameters
            .and_then(|p| p.decode_as::<const_oid::ObjectIdentifier>().ok())
            .ok_or_else(|| bad("no named curve"))?;
        Self::ALL
            .into_iter()
            .find(|c| c.oid() == curve)
            .ok_or_else(|| bad("a curve KMS does not offer for key agreement"))
    }
}

kms_enum! {
    /// The KMS operations the broker carries between enclave and parent. The
    /// spellings are the `X-Amz-Target` suffixes (`TrentService.<name>`).
    pub enum Operation {
        /// `GenerateDataKey`
        GenerateDataKey = "GenerateDataKey",
        /// `GenerateDataKeyWithoutPlaintext`
        GenerateDataKeyWithoutPlaintext = "GenerateDataKeyWithoutPlaintext",
        /// `Decrypt`
        Decrypt = "Decrypt",
        /// `GenerateDataKeyPair`
        GenerateDataKeyPair = "GenerateDataKeyPair",
        /// `GenerateDataKeyPairWithoutPlaintext`
        GenerateDataKeyPairWithoutPlaintext = "GenerateDataKeyPairWithoutPlaintext",
        /// `GenerateRandom`
        GenerateRandom = "GenerateRandom",
        /// `DescribeKey`
        DescribeKey = "DescribeKey",
        /// `DeriveSharedSecret`
        DeriveSharedSecret = "DeriveSharedSecret",
    }
}

impl Operation {
    /// Parses a KMS operation name (the [`core::str::FromStr`] impl, as an
    /// `Option`).
    pub fn from_name(name: &str) -> Option<Self> {
        name.parse().ok()
    }

    /// Whether KMS returns plaintext key material for this operation unless
    /// the request carries a `Recipient` (the five operations that accept
    /// one; `DeriveSharedSecret`'s shared secret is key material).
    pub const fn returns_plaintext(self) -> bool {
        matches!(
            self,
            Self::GenerateDataKey
                | Self::Decrypt
                | Self::GenerateDataKeyPair
                | Self::GenerateRandom
                | Self::DeriveSharedSecret
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The spellings serde wrote before these enums had one home
    /// (`#[derive(Serialize)]` with `#[serde(rename)]`), checked in both
    /// formats so the wire does not change.
    #[test]
    fn spellings_round_trip_through_str_json_and_cbor() {
        fn check<T>(all: &[T])
        where
            T: Copy
                + PartialEq
                + fmt::Debug
                + fmt::Display
                + core::str::FromStr<Err = UnknownKmsValue>
                + serde::Serialize
                + serde::de::DeserializeOwned,
        {
            for v in all {
                let s = v.to_string();
                assert_eq!(s.parse::<T>(), Ok(*v));
                assert_eq!(serde_json::to_value(v).unwrap(), serde_json::json!(s));
                assert_eq!(
                    serde_json::from_value::<T>(serde_json::json!(s)).unwrap(),
                    *v
                );
                let mut cbor = Vec::new();
                ciborium::into_writer(v, &mut cbor).unwrap();
                let mut text = Vec::new();
                ciborium::into_writer(&s, &mut text).unwrap();
                assert_eq!(cbor, text, "{s} is a CBOR text string");
                assert_eq!(ciborium::from_reader::<T, _>(cbor.as_slice()).unwrap(), *v);
            }
            let bad = "aes_256".parse::<T>().unwrap_err();
            assert_eq!(bad.value, "aes_256");
            assert!(serde_json::from_str::<T>(r#""NOPE""#).is_err());
            assert!(serde_json::from_str::<T>("7").is_err());
        }
        check(&DataKeySpec::ALL);
        check(&DataKeyPairSpec::ALL);
        check(&KeyEncryptionAlgorithm::ALL);
        check(&EncryptionAlgorithm::ALL);
        check(&KeyAgreementAlgorithm::ALL);
        check(&DryRunModifier::ALL);
        check(&EcdhCurve::ALL);
        check(&Operation::ALL);
        assert_eq!(DataKeySpec::Aes256.as_str(), "AES_256");
        assert_eq!(DataKeyPairSpec::EccSecgP256k1.as_str(), "ECC_SECG_P256K1");
        assert_eq!(EncryptionAlgorithm::Sm2Pke.to_string(), "SM2PKE");
        assert_eq!(
            "RSAES_OAEP_SHA_256".parse(),
            Ok(KeyEncryptionAlgorithm::RsaesOaepSha256)
        );
    }

    #[test]
    fn unknown_spellings_get_serdes_message() {
        let e = serde_json::from_str::<DataKeySpec>(r#""AES_512""#).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("unknown variant `AES_512`, expected `AES_256` or `AES_128`"),
            "{e}"
        );
        assert_eq!(
            "AES_512".parse::<DataKeySpec>().unwrap_err().to_string(),
            r#"unknown DataKeySpec value "AES_512""#
        );
    }

    #[test]
    fn operation_names_round_trip() {
        for op in Operation::ALL {
            assert_eq!(Operation::from_name(op.as_str()), Some(op));
        }
        assert_eq!(Operation::from_name("Encrypt"), None);
    }
}
