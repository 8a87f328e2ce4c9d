//! The operations on asymmetric KMS keys ([`super::super::asymmetric`]):
//! `GetPublicKey`, `DeriveSharedSecret`, `Encrypt` and `Decrypt` under RSA
//! keys, `CreateKey`'s `KeySpec` / `KeyUsage` rules, and `Decrypt`'s dry run
//! with `DryRunModifiers` `IGNORE_CIPHERTEXT`.
//!
//! Order of checks, as for the symmetric operations (see [`super`]):
//! schema validation, `Recipient` verification, key resolution, key policy,
//! key state, then the key's usage and algorithm (`InvalidKeyUsageException`),
//! the request's fit to the key (`ValidationException`: another curve, a
//! malformed `PublicKey`, an `EncryptionContext`, a plaintext too long; for
//! `Decrypt` the ciphertext, `InvalidCiphertextException`), then `DryRun`.

use keybroker_common::kms::{
    DecryptRequest, DecryptResponse, DeriveSharedSecretRequest, DeriveSharedSecretResponse,
    EcdhCurve, EncryptRequest, EncryptResponse, EncryptionAlgorithm, GetPublicKeyResponse,
    KeyAgreementAlgorithm, KmsErrorCode, PUBLIC_KEY_MAX,
};
use keybroker_common::secret::SecretBytes;
use serde_json::{Map, Value};

use super::super::asymmetric::{AgreementError, RSA_ENCRYPTION_ALGORITHMS};
use super::{
    AsymmetricKey, AsymmetricSpec, Blob, Check, Engine, KmsError, PolicyInputs, ciphertext,
    dry_run_error, err, internal, invalid_ciphertext, symmetric_only, to_json, typed, unsupported,
};

/// `InvalidKeyUsageException` for an operation the key's `KeyUsage` /
/// `KeySpec` does not allow (a symmetric operation under an asymmetric key,
/// `DeriveSharedSecret` under a symmetric or RSA key, ...).
pub(super) fn wrong_usage(store: &super::Store, key: &super::KeyRecord, action: &str) -> KmsError {
    wrong_usage_of(
        &store.key_arn(&key.key_id),
        key.key_spec(),
        key.key_usage(),
        action,
    )
}

fn wrong_usage_of(arn: &str, spec: &str, usage: &str, action: &str) -> KmsError {
    let op = action.strip_prefix("kms:").unwrap_or(action);
    err(
        KmsErrorCode::InvalidKeyUsage,
        format!("{arn} has KeyUsage {usage} and KeySpec {spec}, which do not support {op}."),
    )
}

/// "Algorithm X is incompatible with key spec Y." (KMS's wording).
fn incompatible_algorithm(alg: EncryptionAlgorithm, spec: AsymmetricSpec) -> KmsError {
    err(
        KmsErrorCode::InvalidKeyUsage,
        format!(
            "Algorithm {} is incompatible with key spec {}.",
            alg.as_str(),
            spec.as_str()
        ),
    )
}

/// `KeyMetadata.EncryptionAlgorithms` / `GetPublicKey`'s: `None` (the
/// argument) is a symmetric key.
pub(super) fn encryption_algorithms(
    spec: Option<AsymmetricSpec>,
) -> Option<Vec<EncryptionAlgorithm>> {
    match spec {
        None => Some(vec![EncryptionAlgorithm::SymmetricDefault]),
        Some(AsymmetricSpec::Rsa(_)) => Some(RSA_ENCRYPTION_ALGORITHMS.to_vec()),
        Some(AsymmetricSpec::Ecc(_)) => None,
    }
}

/// `KeyMetadata.KeyAgreementAlgorithms`: `["ECDH"]` for ECC keys.
pub(super) fn key_agreement_algorithms(
    spec: Option<AsymmetricSpec>,
) -> Option<Vec<KeyAgreementAlgorithm>> {
    matches!(spec, Some(AsymmetricSpec::Ecc(_))).then(|| vec![KeyAgreementAlgorithm::Ecdh])
}

/// `CreateKey`'s `KeySpec` (or the deprecated `CustomerMasterKeySpec`) and
/// `KeyUsage`: `None` for a symmetric key, the asymmetric spec otherwise.
///
/// A combination KMS refuses is a `ValidationException` (the valid usages
/// per spec are those of the `CreateKey` `KeyUsage` documentation); a valid
/// one the mock does not emulate (signing, HMAC, SM2, ML-DSA) is an
/// `UnsupportedOperationException`. `ECC_SECG_P256K1` with `KEY_AGREEMENT`
/// is accepted although KMS documents only `SIGN_VERIFY` for it: the mock
/// offers ECDH on all four curves of [`EcdhCurve::ALL`].
pub(super) fn create_key_spec(
    key_spec: Option<&str>,
    customer_master_key_spec: Option<&str>,
    key_usage: Option<&str>,
) -> Result<Option<AsymmetricSpec>, KmsError> {
    if key_spec.is_some() && customer_master_key_spec.is_some() {
        return Err(err(
            KmsErrorCode::Validation,
            "You cannot specify both KeySpec and CustomerMasterKeySpec; CustomerMasterKeySpec is deprecated, use KeySpec.",
        ));
    }
    let spec = key_spec
        .or(customer_master_key_spec)
        .unwrap_or("SYMMETRIC_DEFAULT");
    // KMS: KeyUsage "is optional when you are creating a symmetric
    // encryption KMS key; otherwise, it is required."
    let usage = match key_usage {
        Some(u) => u,
        None if spec == "SYMMETRIC_DEFAULT" => "ENCRYPT_DECRYPT",
        None => {
            return Err(err(
                KmsErrorCode::Validation,
                format!("KeyUsage is required for a KMS key with KeySpec {spec}."),
            ));
        }
    };
    let valid: &[&str] = match spec {
        "SYMMETRIC_DEFAULT" => &["ENCRYPT_DECRYPT"],
        "HMAC_224" | "HMAC_256" | "HMAC_384" | "HMAC_512" => &["GENERATE_VERIFY_MAC"],
        "RSA_2048" | "RSA_3072" | "RSA_4096" => &["ENCRYPT_DECRYPT", "SIGN_VERIFY"],
        "ECC_NIST_P256" | "ECC_NIST_P384" | "ECC_NIST_P521" | "ECC_SECG_P256K1" => {
            &["SIGN_VERIFY", "KEY_AGREEMENT"]
        }
        "SM2" => &["ENCRYPT_DECRYPT", "SIGN_VERIFY", "KEY_AGREEMENT"],
        _ => &["SIGN_VERIFY"],
    };
    if !valid.contains(&usage) {
        return Err(err(
            KmsErrorCode::Validation,
            format!(
                "KeyUsage {usage} is not compatible with KeySpec {spec}; valid KeyUsage values for {spec}: {}.",
                valid.join(", ")
            ),
        ));
    }
    if spec == "SYMMETRIC_DEFAULT" {
        return Ok(None);
    }
    match AsymmetricSpec::from_key_spec(spec) {
        Some(s) if s.key_usage() == usage => Ok(Some(s)),
        _ => Err(unsupported(&format!(
            "KeySpec {spec} with KeyUsage {usage}"
        ))),
    }
}

impl Engine {
    /// The id of the asymmetric key `key_ref` names, if it names one that
    /// exists; otherwise `None`, and the symmetric path reports what is
    /// wrong with the reference.
    pub(super) fn asymmetric_key_named(
        &self,
        key_ref: Option<&str>,
    ) -> Result<Option<String>, KmsError> {
        let Some(r) = key_ref else { return Ok(None) };
        let store = self.lock()?;
        Ok(store
            .resolve(r)
            .ok()
            .filter(|id| store.key(id).is_some_and(|k| k.asymmetric().is_some())))
    }

    /// Resolution, policy and state of an asymmetric key: its ARN and key
    /// pair (copied out so that the lock is not held during crypto).
    fn usable_asymmetric(
        &self,
        key_ref: &str,
        action: &str,
        inputs: PolicyInputs<'_>,
    ) -> Result<(String, AsymmetricKey), KmsError> {
        let store = self.lock()?;
        let id = store.resolve(key_ref)?;
        let key = Self::lookup(&store, &id)?;
        self.authorize(&store, key, action, inputs)?;
        Self::check_state(&store, key)?;
        let pair = key
            .asymmetric()
            .ok_or_else(|| wrong_usage(&store, key, action))?;
        Ok((store.key_arn(&id), pair.clone()))
    }

    /// `GetPublicKey`: the DER SubjectPublicKeyInfo and what the key is for.
    pub(super) fn get_public_key(&self, raw: &Map<String, Value>) -> Result<Value, KmsError> {
        Check::new(raw)
            .key_id("KeyId", "keyId", true)
            .grant_tokens()
            .finish()?;
        let req: keybroker_common::kms::GetPublicKeyRequest = typed(raw)?;
        let (arn, pair) = {
            let store = self.lock()?;
            let id = store.resolve(req.key_id.as_deref().unwrap_or_default())?;
            let key = Self::lookup(&store, &id)?;
            self.authorize(&store, key, "kms:GetPublicKey", PolicyInputs::default())?;
            Self::check_state(&store, key)?;
            let arn = store.key_arn(&id);
            let pair = key.asymmetric().cloned().ok_or_else(|| {
                err(
                    KmsErrorCode::UnsupportedOperation,
                    format!("{arn} is a symmetric encryption KMS key (KeySpec SYMMETRIC_DEFAULT): it has no public key."),
                )
            })?;
            (arn, pair)
        };
        let spec = pair.spec();
        to_json(&GetPublicKeyResponse {
            key_id: Some(arn),
            public_key: Some(Blob(pair.public_key_spki().to_vec())),
            customer_master_key_spec: Some(spec.as_str().into()),
            key_spec: Some(spec.as_str().into()),
            key_usage: Some(spec.key_usage().into()),
            encryption_algorithms: encryption_algorithms(Some(spec)),
            signing_algorithms: None,
            key_agreement_algorithms: key_agreement_algorithms(Some(spec)),
        })
    }

    /// `DeriveSharedSecret` (`ECDH`): the raw shared secret of the KMS key
    /// and the caller's `PublicKey`; with `Recipient`, only as
    /// `CiphertextForRecipient`.
    pub(super) fn derive_shared_secret(&self, raw: &Map<String, Value>) -> Result<Value, KmsError> {
        Check::new(raw)
            .key_id("KeyId", "keyId", true)
            .required(&["KeyAgreementAlgorithm"], "keyAgreementAlgorithm")
            .enumeration(
                &["KeyAgreementAlgorithm"],
                "keyAgreementAlgorithm",
                KeyAgreementAlgorithm::NAMES,
            )
            .required(&["PublicKey"], "publicKey")
            .blob_len(&["PublicKey"], "publicKey", (1, PUBLIC_KEY_MAX))
            .grant_tokens()
            .recipient()
            .finish()?;
        let req: DeriveSharedSecretRequest = typed(raw)?;
        let attested = self.verify_recipient(req.recipient.as_ref())?;
        let action = "kms:DeriveSharedSecret";
        let (arn, pair) = self.usable_asymmetric(
            req.key_id.as_deref().unwrap_or_default(),
            action,
            PolicyInputs {
                context: None,
                attestation: attested.as_ref(),
            },
        )?;
        let spec = pair.spec();
        let AsymmetricSpec::Ecc(curve) = spec else {
            return Err(wrong_usage_of(
                &arn,
                spec.as_str(),
                spec.key_usage(),
                action,
            ));
        };
        let peer = req
            .public_key
            .as_ref()
            .map(|b| b.0.as_slice())
            .unwrap_or_default();
        let secret = pair.derive_shared_secret(peer).map_err(|e| match e {
            AgreementError::Malformed(why) => err(
                KmsErrorCode::Validation,
                format!("PublicKey is not a valid DER SubjectPublicKeyInfo of an elliptic-curve public key on {}: {why}", curve.as_str()),
            ),
            AgreementError::WrongCurve { expected, found } => err(
                KmsErrorCode::Validation,
                format!("PublicKey is on the curve {found}, but the KMS key {arn} has KeySpec {expected}: both must use the same curve."),
            ),
            AgreementError::Internal(why) => internal(format!("DeriveSharedSecret: {why}")),
        })?;
        if req.dry_run == Some(true) {
            return Err(dry_run_error());
        }
        debug_assert_eq!(secret.len(), EcdhCurve::shared_secret_len(curve));
        let mut resp = DeriveSharedSecretResponse {
            key_id: Some(arn),
            key_agreement_algorithm: Some(KeyAgreementAlgorithm::Ecdh),
            key_origin: Some("AWS_KMS".into()),
            ..Default::default()
        };
        (resp.shared_secret, resp.ciphertext_for_recipient) =
            self.release(attested.as_ref(), SecretBytes::from_slice(&secret))?;
        to_json(&resp)
    }

    /// The RSA algorithm of an `Encrypt`/`Decrypt` under an asymmetric key:
    /// the key must be an RSA key (`InvalidKeyUsageException`), the
    /// algorithm an RSAES-OAEP one (absent means `SYMMETRIC_DEFAULT`, which
    /// KMS refuses), and there must be no `EncryptionContext`.
    fn rsa_algorithm(
        arn: &str,
        pair: &AsymmetricKey,
        alg: Option<EncryptionAlgorithm>,
        context: Option<&keybroker_common::kms::EncryptionContext>,
        action: &str,
    ) -> Result<EncryptionAlgorithm, KmsError> {
        let spec = pair.spec();
        if !matches!(spec, AsymmetricSpec::Rsa(_)) {
            return Err(wrong_usage_of(arn, spec.as_str(), spec.key_usage(), action));
        }
        let alg = alg.unwrap_or(EncryptionAlgorithm::SymmetricDefault);
        if !RSA_ENCRYPTION_ALGORITHMS.contains(&alg) {
            return Err(incompatible_algorithm(alg, spec));
        }
        if context.is_some_and(|c| !c.is_empty()) {
            return Err(err(
                KmsErrorCode::Validation,
                "EncryptionContext is not supported when encrypting/decrypting with asymmetric CMKs.",
            ));
        }
        Ok(alg)
    }

    /// `Encrypt` under an RSA key (`key_id` names an asymmetric key).
    pub(super) fn encrypt_asymmetric(
        &self,
        req: &EncryptRequest,
        key_id: String,
    ) -> Result<Value, KmsError> {
        let action = "kms:Encrypt";
        let (arn, pair) = self.usable_asymmetric(
            &key_id,
            action,
            PolicyInputs {
                context: req.encryption_context.as_ref(),
                attestation: None,
            },
        )?;
        let alg = Self::rsa_algorithm(
            &arn,
            &pair,
            req.encryption_algorithm,
            req.encryption_context.as_ref(),
            action,
        )?;
        let plaintext = req
            .plaintext
            .as_ref()
            .map(SecretBytes::expose)
            .unwrap_or_default();
        let max = pair
            .max_plaintext_len(alg)
            .ok_or_else(|| internal("no plaintext bound for an RSA algorithm"))?;
        if plaintext.len() > max {
            return Err(err(
                KmsErrorCode::Validation,
                format!(
                    "Plaintext is {} bytes long; {} under a {} key encrypts at most {max} bytes.",
                    plaintext.len(),
                    alg.as_str(),
                    pair.spec().as_str()
                ),
            ));
        }
        if req.dry_run == Some(true) {
            return Err(dry_run_error());
        }
        let blob = pair
            .rsa_encrypt(alg, plaintext)
            .map_err(|e| internal(format!("Encrypt: {e}")))?;
        to_json(&EncryptResponse {
            ciphertext_blob: Some(Blob(blob)),
            key_id: Some(arn),
            encryption_algorithm: Some(alg),
            key_material_id: None,
        })
    }

    /// `Decrypt` of raw RSAES-OAEP ciphertext under the RSA key `key_id`
    /// (KMS requires `KeyId` and `EncryptionAlgorithm` for asymmetric
    /// ciphertext), with or without `Recipient`.
    pub(super) fn decrypt_asymmetric(
        &self,
        req: &DecryptRequest,
        key_id: String,
    ) -> Result<Value, KmsError> {
        let action = "kms:Decrypt";
        let attested = self.verify_recipient(req.recipient.as_ref())?;
        let (arn, pair) = self.usable_asymmetric(
            &key_id,
            action,
            PolicyInputs {
                context: req.encryption_context.as_ref(),
                attestation: attested.as_ref(),
            },
        )?;
        let alg = Self::rsa_algorithm(
            &arn,
            &pair,
            req.encryption_algorithm,
            req.encryption_context.as_ref(),
            action,
        )?;
        let blob = req
            .ciphertext_blob
            .as_ref()
            .map(|b| b.0.as_slice())
            .unwrap_or_default();
        let plaintext = pair
            .rsa_decrypt(alg, blob)
            .map_err(|e| internal(format!("Decrypt: {e}")))?
            .ok_or_else(|| {
                tracing::warn!(key = %arn, "InvalidCiphertextException: the ciphertext does not decrypt with this RSA key and algorithm");
                invalid_ciphertext()
            })?;
        if req.dry_run == Some(true) {
            return Err(dry_run_error());
        }
        let mut resp = DecryptResponse {
            key_id: Some(arn),
            encryption_algorithm: Some(alg),
            ..Default::default()
        };
        (resp.plaintext, resp.ciphertext_for_recipient) =
            self.release(attested.as_ref(), SecretBytes::from_slice(&plaintext))?;
        to_json(&resp)
    }

    /// `Decrypt` with `DryRun` and `DryRunModifiers` `IGNORE_CIPHERTEXT`:
    /// permissions, key state and algorithm are checked, the ciphertext is
    /// not (it may be absent). The key is `KeyId`, else the one a
    /// well-formed blob header names.
    pub(super) fn decrypt_dry_run_ignoring_ciphertext(
        &self,
        req: &DecryptRequest,
    ) -> Result<Value, KmsError> {
        let attested = self.verify_recipient(req.recipient.as_ref())?;
        let store = self.lock()?;
        let id = match (&req.key_id, &req.ciphertext_blob) {
            (Some(r), _) => store.resolve(r)?,
            (None, Some(b)) => match ciphertext::parse_header(&b.0) {
                Ok(h) if store.key(h.key_id).is_some() => h.key_id.to_owned(),
                _ => return Err(ignore_ciphertext_needs_key_id()),
            },
            (None, None) => return Err(ignore_ciphertext_needs_key_id()),
        };
        let key = Self::lookup(&store, &id)?;
        let action = "kms:Decrypt";
        self.authorize(
            &store,
            key,
            action,
            PolicyInputs {
                context: req.encryption_context.as_ref(),
                attestation: attested.as_ref(),
            },
        )?;
        Self::check_state(&store, key)?;
        match key.asymmetric() {
            None => symmetric_only(req.encryption_algorithm)?,
            Some(pair) => {
                Self::rsa_algorithm(
                    &store.key_arn(&id),
                    pair,
                    req.encryption_algorithm,
                    req.encryption_context.as_ref(),
                    action,
                )?;
            }
        }
        Err(dry_run_error())
    }
}

fn ignore_ciphertext_needs_key_id() -> KmsError {
    err(
        KmsErrorCode::Validation,
        "A dry run with DryRunModifiers IGNORE_CIPHERTEXT does not read the ciphertext: specify the KMS key in KeyId.",
    )
}
