//! Request validation with KMS's wording: the schema checks ([`Check`],
//! "N validation error(s) detected") and the semantic checks and errors the
//! operations share.

use super::*;

// ---------------------------------------------------------------------------
// Schema validation with KMS's (Coral's) wording.

pub(super) struct Check<'a> {
    raw: &'a Map<String, Value>,
    errors: Vec<String>,
}

impl<'a> Check<'a> {
    pub(super) fn new(raw: &'a Map<String, Value>) -> Self {
        Self {
            raw,
            errors: Vec::new(),
        }
    }

    pub(super) fn get(&self, path: &[&str]) -> Option<&'a Value> {
        let (first, rest) = path.split_first()?;
        let mut v = self.raw.get(*first)?;
        for p in rest {
            v = v.get(*p)?;
        }
        (!v.is_null()).then_some(v)
    }

    pub(super) fn required(&mut self, path: &[&str], member: &str) -> &mut Self {
        if self.get(path).is_none() {
            self.errors.push(format!(
                "Value null at '{member}' failed to satisfy constraint: Member must not be null"
            ));
        }
        self
    }

    pub(super) fn length_error(
        &mut self,
        shown: Option<&str>,
        member: &str,
        len: usize,
        (min, max): (usize, usize),
    ) {
        let value = shown.map_or_else(String::new, |s| format!(" '{s}'"));
        if len < min {
            self.errors.push(format!(
                "Value{value} at '{member}' failed to satisfy constraint: Member must have length greater than or equal to {min}"
            ));
        } else if len > max {
            self.errors.push(format!(
                "Value{value} at '{member}' failed to satisfy constraint: Member must have length less than or equal to {max}"
            ));
        }
    }

    pub(super) fn string_len(
        &mut self,
        path: &[&str],
        member: &str,
        bounds: (usize, usize),
    ) -> &mut Self {
        if let Some(Value::String(s)) = self.get(path) {
            self.length_error(Some(s), member, s.chars().count(), bounds);
        }
        self
    }

    /// Blob lengths are of the decoded bytes; KMS does not echo blobs.
    pub(super) fn blob_len(
        &mut self,
        path: &[&str],
        member: &str,
        bounds: (usize, usize),
    ) -> &mut Self {
        if let Some(Value::String(s)) = self.get(path) {
            // Undecodable base64 is reported by the typed parse
            // (SerializationException).
            if let Ok(bytes) = STANDARD.decode(s) {
                let bytes = Zeroizing::new(bytes);
                self.length_error(None, member, bytes.len(), bounds);
            }
        }
        self
    }

    pub(super) fn int_range(
        &mut self,
        path: &[&str],
        member: &str,
        (min, max): (i64, i64),
    ) -> &mut Self {
        if let Some(Value::Number(n)) = self.get(path) {
            let v = n
                .as_i64()
                .unwrap_or(if n.is_f64() { i64::MIN } else { i64::MAX });
            if v < min {
                self.errors.push(format!(
                    "Value '{n}' at '{member}' failed to satisfy constraint: Member must have value greater than or equal to {min}"
                ));
            } else if v > max {
                self.errors.push(format!(
                    "Value '{n}' at '{member}' failed to satisfy constraint: Member must have value less than or equal to {max}"
                ));
            }
        }
        self
    }

    pub(super) fn enumeration(
        &mut self,
        path: &[&str],
        member: &str,
        allowed: &[&str],
    ) -> &mut Self {
        if let Some(Value::String(s)) = self.get(path)
            && !allowed.contains(&s.as_str())
        {
            self.errors.push(format!(
                "Value '{s}' at '{member}' failed to satisfy constraint: Member must satisfy enum value set: [{}]",
                allowed.join(", ")
            ));
        }
        self
    }

    pub(super) fn list_max(&mut self, path: &[&str], member: &str, max: usize) -> &mut Self {
        if let Some(Value::Array(a)) = self.get(path)
            && a.len() > max
        {
            let items: Vec<String> = a
                .iter()
                .map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_owned))
                .collect();
            self.errors.push(format!(
                "Value '[{}]' at '{member}' failed to satisfy constraint: Member must have length less than or equal to {max}",
                items.join(", ")
            ));
        }
        self
    }

    pub(super) fn key_id(&mut self, field: &str, member: &str, required: bool) -> &mut Self {
        if required {
            self.required(&[field], member);
        }
        self.string_len(&[field], member, limits::KEY_ID)
    }

    pub(super) fn grant_tokens(&mut self) -> &mut Self {
        self.list_max(&["GrantTokens"], "grantTokens", limits::GRANT_TOKENS)
    }

    pub(super) fn recipient(&mut self) -> &mut Self {
        self.blob_len(
            &["Recipient", "AttestationDocument"],
            "recipient.attestationDocument",
            limits::ATTESTATION_DOCUMENT,
        )
        .enumeration(
            &["Recipient", "KeyEncryptionAlgorithm"],
            "recipient.keyEncryptionAlgorithm",
            KEY_ENCRYPTION_ALGORITHMS,
        )
    }

    pub(super) fn finish(&mut self) -> Result<(), KmsError> {
        match self.errors.len() {
            0 => Ok(()),
            1 => Err(err(
                KmsErrorCode::Validation,
                format!("1 validation error detected: {}", self.errors.join("; ")),
            )),
            n => Err(err(
                KmsErrorCode::Validation,
                format!("{n} validation errors detected: {}", self.errors.join("; ")),
            )),
        }
    }
}

/// "Please specify either number of bytes or key spec." (KMS's text).
pub(super) fn data_key_len(
    spec: Option<keybroker_common::kms::DataKeySpec>,
    n: Option<u32>,
) -> Result<usize, KmsError> {
    match (spec, n) {
        (Some(s), None) => Ok(s.byte_len()),
        (None, Some(n)) => usize::try_from(n).map_err(|_| internal("NumberOfBytes overflow")),
        _ => Err(err(
            KmsErrorCode::Validation,
            "Please specify either number of bytes or key spec.",
        )),
    }
}

pub(super) fn symmetric_only(alg: Option<EncryptionAlgorithm>) -> Result<(), KmsError> {
    match alg {
        None | Some(EncryptionAlgorithm::SymmetricDefault) => Ok(()),
        Some(other) => Err(err(
            KmsErrorCode::InvalidKeyUsage,
            format!(
                "The KMS key's KeySpec SYMMETRIC_DEFAULT does not support the encryption algorithm {}.",
                other.as_str()
            ),
        )),
    }
}

pub(super) fn unsupported(what: &str) -> KmsError {
    err(
        KmsErrorCode::UnsupportedOperation,
        format!(
            "{what} is not supported by keybroker-mock-kms (it emulates SYMMETRIC_DEFAULT keys, ECC KEY_AGREEMENT keys and RSA ENCRYPT_DECRYPT keys)."
        ),
    )
}

pub(super) fn required_str<'a>(v: &'a Option<String>, member: &str) -> Result<&'a str, KmsError> {
    v.as_deref().ok_or_else(|| {
        err(
            KmsErrorCode::Validation,
            format!("1 validation error detected: Value null at '{member}' failed to satisfy constraint: Member must not be null"),
        )
    })
}

pub(super) fn invalid_ciphertext() -> KmsError {
    // Real KMS sends this error without a message.
    err(KmsErrorCode::InvalidCiphertext, "")
}
