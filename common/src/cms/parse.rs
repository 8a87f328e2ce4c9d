//! Decoding and profile checks (RFC 5652 section 6, the KMS shape).

use super::oid::{
    ID_AES256_CBC, ID_DATA, ID_ENVELOPED_DATA, ID_MGF1, ID_P_SPECIFIED, ID_RSAES_OAEP, ID_SHA1,
    ID_SHA256,
};
use super::{CmsError, IV_LEN, MAX_CIPHERTEXT_FOR_RECIPIENT_LEN};
use crate::Error;
use cms::content_info::{CmsVersion, ContentInfo};
use cms::enveloped_data::{EnvelopedData, RecipientIdentifier, RecipientInfo};
use der::asn1::ContextSpecific;
use der::{Any, Decode, EncodingRules, Reader, SliceReader, Tag, TagNumber, Tagged};
use spki::AlgorithmIdentifierRef;

/// The parts of a KMS `CiphertextForRecipient` that decryption needs, as
/// extracted by [`parse`]. None of them is secret.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvelopedParts {
    /// `KeyTransRecipientInfo.rid.subjectKeyIdentifier` (RFC 5652 section
    /// 6.2.1): 32 bytes from KMS, derivation undocumented; informational only.
    pub subject_key_identifier: Vec<u8>,
    /// `KeyTransRecipientInfo.encryptedKey`: the content-encryption key under
    /// RSAES-OAEP, as long as the recipient's RSA modulus (256 bytes for RSA-2048).
    pub encrypted_key: Vec<u8>,
    /// The AES-256-CBC IV, the `contentEncryptionAlgorithm` parameter (RFC 3565 section 4.1).
    pub iv: [u8; IV_LEN],
    /// `encryptedContent`, with the chunks of a constructed encoding
    /// concatenated: a non-zero multiple of 16 bytes.
    pub ciphertext: Vec<u8>,
}

fn malformed(e: der::Error) -> CmsError {
    CmsError::Malformed(e.to_string())
}

fn version_u8(v: CmsVersion) -> u8 {
    match v {
        CmsVersion::V0 => 0,
        CmsVersion::V1 => 1,
        CmsVersion::V2 => 2,
        CmsVersion::V3 => 3,
        CmsVersion::V4 => 4,
        CmsVersion::V5 => 5,
    }
}

/// Decodes a KMS `CiphertextForRecipient` (BER `ContentInfo` holding an
/// `EnvelopedData`, RFC 5652 sections 3 and 6.1) and checks it against the
/// one profile KMS uses (see the module docs): `EnvelopedData` version 2 with
/// no `originatorInfo` or `unprotectedAttrs`; exactly one
/// `KeyTransRecipientInfo` version 2 with a `subjectKeyIdentifier`;
/// RSAES-OAEP whose parameters say SHA-256, MGF1 with SHA-256 and an empty
/// label (RFC 8017 appendix A.2.1, RFC 4055 section 4.1; hash parameters
/// NULL or absent); `id-data` content encrypted with AES-256-CBC under a
/// 16-byte IV; content present, primitive or constructed.
///
/// The input length is checked against [`MAX_CIPHERTEXT_FOR_RECIPIENT_LEN`]
/// before anything is decoded. Never panics.
///
/// # Errors
/// [`Error::Cms`] with the [`CmsError`] variant naming the first violation.
pub fn parse(ber: &[u8]) -> Result<EnvelopedParts, Error> {
    Ok(parse_inner(ber)?)
}

fn parse_inner(ber: &[u8]) -> Result<EnvelopedParts, CmsError> {
    if ber.len() > MAX_CIPHERTEXT_FOR_RECIPIENT_LEN {
        return Err(CmsError::TooLarge {
            len: ber.len(),
            max: MAX_CIPHERTEXT_FOR_RECIPIENT_LEN,
        });
    }
    if ber.is_empty() {
        return Err(CmsError::Malformed("empty input".into()));
    }

    // RFC 5652 section 3: ContentInfo.
    let content_info = ContentInfo::from_ber(ber).map_err(malformed)?;
    if content_info.content_type != ID_ENVELOPED_DATA {
        return Err(CmsError::UnexpectedContentType {
            what: "ContentInfo",
            found: content_info.content_type,
        });
    }

    // RFC 5652 section 6.1: EnvelopedData.
    let enveloped: EnvelopedData = content_info
        .content
        .decode_as_encoding(EncodingRules::Ber)
        .map_err(malformed)?;
    if enveloped.version != CmsVersion::V2 {
        return Err(CmsError::UnsupportedVersion {
            what: "EnvelopedData",
            found: version_u8(enveloped.version),
        });
    }
    if enveloped.originator_info.is_some() {
        return Err(CmsError::Unsupported("originatorInfo"));
    }
    if enveloped.unprotected_attrs.is_some() {
        return Err(CmsError::Unsupported("unprotectedAttrs"));
    }

    // RFC 5652 section 6.2: exactly one RecipientInfo, a KeyTransRecipientInfo.
    let recipients = enveloped.recip_infos.0.as_slice();
    let [recipient] = recipients else {
        return Err(CmsError::RecipientCount(recipients.len()));
    };
    let ktri = match recipient {
        RecipientInfo::Ktri(ktri) => ktri,
        RecipientInfo::Kari(_) => {
            return Err(CmsError::UnsupportedRecipient("KeyAgreeRecipientInfo"));
        }
        RecipientInfo::Kekri(_) => return Err(CmsError::UnsupportedRecipient("KEKRecipientInfo")),
        RecipientInfo::Pwri(_) => {
            return Err(CmsError::UnsupportedRecipient("PasswordRecipientInfo"));
        }
        RecipientInfo::Ori(_) => return Err(CmsError::UnsupportedRecipient("OtherRecipientInfo")),
    };
    // RFC 5652 section 6.2.1: version 2 goes with a subjectKeyIdentifier rid.
    if ktri.version != CmsVersion::V2 {
        return Err(CmsError::UnsupportedVersion {
            what: "KeyTransRecipientInfo",
            found: version_u8(ktri.version),
        });
    }
    let subject_key_identifier = match &ktri.rid {
        RecipientIdentifier::SubjectKeyIdentifier(ski) => ski.0.as_bytes().to_vec(),
        RecipientIdentifier::IssuerAndSerialNumber(_) => {
            return Err(CmsError::UnsupportedRecipient(
                "rid is issuerAndSerialNumber, not subjectKeyIdentifier",
            ));
        }
    };
    if ktri.key_enc_alg.oid != ID_RSAES_OAEP {
        return Err(CmsError::UnsupportedAlgorithm {
            what: "key encryption algorithm",
            oid: ktri.key_enc_alg.oid,
        });
    }
    check_oaep_params(ktri.key_enc_alg.parameters.as_ref())?;
    let encrypted_key = ktri.enc_key.as_bytes().to_vec();
    // An RSAES-OAEP ciphertext is as long as the modulus: 2048..=4096 bits.
    if !(256..=512).contains(&encrypted_key.len()) {
        return Err(CmsError::BadLength {
            what: "encryptedKey",
            len: encrypted_key.len(),
            expected: "256..=512 (RSA-2048..RSA-4096)",
        });
    }

    // RFC 5652 section 6.1: EncryptedContentInfo.
    let content = &enveloped.encrypted_content;
    if content.content_type != ID_DATA {
        return Err(CmsError::UnexpectedContentType {
            what: "EncryptedContentInfo",
            found: content.content_type,
        });
    }
    if content.content_enc_alg.oid != ID_AES256_CBC {
        return Err(CmsError::UnsupportedAlgorithm {
            what: "content encryption algorithm",
            oid: content.content_enc_alg.oid,
        });
    }
    let iv = aes_cbc_iv(content.content_enc_alg.parameters.as_ref())?;
    let ciphertext = content
        .encrypted_content
        .as_ref()
        .ok_or(CmsError::Unsupported(
            "detached content (encryptedContent absent)",
        ))?
        .as_bytes()
        .to_vec();
    if ciphertext.is_empty() || ciphertext.len() % 16 != 0 {
        return Err(CmsError::BadLength {
            what: "encryptedContent",
            len: ciphertext.len(),
            expected: "a non-zero multiple of 16",
        });
    }

    Ok(EnvelopedParts {
        subject_key_identifier,
        encrypted_key,
        iv,
        ciphertext,
    })
}

/// RFC 3565 section 4.1: `AES-IV ::= OCTET STRING (SIZE(16))`.
///
/// der 0.8's `Any` does not keep the constructed bit of universal tags, so a
/// (non-KMS) encoding with identifier 0x24 and 16 content octets passes as
/// the IV. That is harmless: any 16 bytes are a possible IV.
fn aes_cbc_iv(params: Option<&Any>) -> Result<[u8; IV_LEN], CmsError> {
    let params = params.ok_or(CmsError::UnsupportedParameters("AES-256-CBC without an IV"))?;
    if params.tag() != Tag::OctetString {
        return Err(CmsError::UnsupportedParameters(
            "AES-256-CBC parameters are not an OCTET STRING",
        ));
    }
    <[u8; IV_LEN]>::try_from(params.value()).map_err(|_| CmsError::BadLength {
        what: "AES-256-CBC IV",
        len: params.value().len(),
        expected: "16",
    })
}

/// RFC 8017 appendix A.2.1:
///
/// ```text
/// RSAES-OAEP-params ::= SEQUENCE {
///     hashAlgorithm      [0] HashAlgorithm     DEFAULT sha1,
///     maskGenAlgorithm   [1] MaskGenAlgorithm  DEFAULT mgf1SHA1,
///     pSourceAlgorithm   [2] PSourceAlgorithm  DEFAULT pSpecifiedEmpty }
/// ```
///
/// Accepted: SHA-256, MGF1 with SHA-256, and the label absent or
/// `pSpecified` with an empty OCTET STRING. Absent parameters (or an absent
/// hash) mean SHA-1 and are rejected.
fn check_oaep_params(params: Option<&Any>) -> Result<(), CmsError> {
    const DEFAULT_SHA1: CmsError = CmsError::UnsupportedAlgorithm {
        what: "RSAES-OAEP hash (default)",
        oid: ID_SHA1,
    };
    let params = params.ok_or(DEFAULT_SHA1)?;
    if params.tag() != Tag::Sequence {
        return Err(CmsError::Malformed(
            "RSAES-OAEP parameters are not a SEQUENCE".into(),
        ));
    }
    let mut reader = SliceReader::new_with_encoding_rules(params.value(), EncodingRules::Ber)
        .map_err(malformed)?;
    let hash =
        ContextSpecific::<AlgorithmIdentifierRef<'_>>::decode_explicit(&mut reader, TagNumber(0))
            .map_err(malformed)?;
    let mgf =
        ContextSpecific::<AlgorithmIdentifierRef<'_>>::decode_explicit(&mut reader, TagNumber(1))
            .map_err(malformed)?;
    let p_source =
        ContextSpecific::<AlgorithmIdentifierRef<'_>>::decode_explicit(&mut reader, TagNumber(2))
            .map_err(malformed)?;
    reader.finish().map_err(malformed)?;

    let hash = hash.ok_or(DEFAULT_SHA1)?.value;
    check_sha256(&hash, "RSAES-OAEP hash")?;

    let mgf = mgf
        .ok_or(CmsError::UnsupportedAlgorithm {
            what: "RSAES-OAEP MGF1 hash (default)",
            oid: ID_SHA1,
        })?
        .value;
    if mgf.oid != ID_MGF1 {
        return Err(CmsError::UnsupportedAlgorithm {
            what: "RSAES-OAEP mask generation function",
            oid: mgf.oid,
        });
    }
    let mgf_hash: AlgorithmIdentifierRef<'_> = mgf
        .parameters
        .ok_or(CmsError::UnsupportedParameters(
            "MGF1 without a hash algorithm",
        ))?
        .decode_as_encoding(EncodingRules::Ber)
        .map_err(malformed)?;
    check_sha256(&mgf_hash, "RSAES-OAEP MGF1 hash")?;

    if let Some(p_source) = p_source {
        let p_source = p_source.value;
        if p_source.oid != ID_P_SPECIFIED {
            return Err(CmsError::UnsupportedAlgorithm {
                what: "RSAES-OAEP pSourceAlgorithm",
                oid: p_source.oid,
            });
        }
        match p_source.parameters {
            Some(label) if label.tag() == Tag::OctetString && label.value().is_empty() => {}
            _ => {
                return Err(CmsError::UnsupportedParameters(
                    "RSAES-OAEP label is not empty",
                ));
            }
        }
    }
    Ok(())
}

/// SHA-256 with parameters NULL or absent (RFC 4055 section 2.1 says
/// implementations must accept both; KMS sends NULL, OpenSSL omits them).
fn check_sha256(alg: &AlgorithmIdentifierRef<'_>, what: &'static str) -> Result<(), CmsError> {
    if alg.oid != ID_SHA256 {
        return Err(CmsError::UnsupportedAlgorithm { what, oid: alg.oid });
    }
    match alg.parameters {
        None => Ok(()),
        Some(p) if p.is_null() => Ok(()),
        Some(_) => Err(CmsError::UnsupportedParameters(
            "SHA-256 parameters are neither NULL nor absent",
        )),
    }
}
