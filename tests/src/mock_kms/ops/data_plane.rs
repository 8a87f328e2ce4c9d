//! The data plane on symmetric keys: `GenerateDataKey*`, `Encrypt`,
//! `Decrypt`, `ReEncrypt` and `GenerateRandom` (asymmetric keys: [`super::asym`]).

use super::*;

impl Engine {
    pub(super) fn generate_data_key(&self, raw: &Map<String, Value>) -> Result<Value, KmsError> {
        Check::new(raw)
            .key_id("KeyId", "keyId", true)
            .enumeration(&["KeySpec"], "keySpec", KEY_SPECS)
            .int_range(&["NumberOfBytes"], "numberOfBytes", limits::NUMBER_OF_BYTES)
            .grant_tokens()
            .recipient()
            .finish()?;
        let req: GenerateDataKeyRequest = typed(raw)?;
        let len = data_key_len(req.key_spec, req.number_of_bytes)?;
        let context = req.encryption_context.clone().unwrap_or_default();
        let attested = self.verify_recipient(req.recipient.as_ref())?;
        let key = self.usable_key(
            req.key_id.as_deref().unwrap_or_default(),
            "kms:GenerateDataKey",
            PolicyInputs {
                context: Some(&context),
                attestation: attested.as_ref(),
            },
        )?;
        if req.dry_run == Some(true) {
            return Err(dry_run_error());
        }
        let data_key = self.random(len)?;
        let blob = self.seal(&key, &context, data_key.expose())?;
        let mut resp = GenerateDataKeyResponse {
            key_id: Some(key.arn),
            ciphertext_blob: Some(Blob(blob)),
            key_material_id: key.key_material_id,
            ..Default::default()
        };
        (resp.plaintext, resp.ciphertext_for_recipient) =
            self.release(attested.as_ref(), data_key)?;
        to_json(&resp)
    }

    pub(super) fn generate_data_key_without_plaintext(
        &self,
        raw: &Map<String, Value>,
    ) -> Result<Value, KmsError> {
        Check::new(raw)
            .key_id("KeyId", "keyId", true)
            .enumeration(&["KeySpec"], "keySpec", KEY_SPECS)
            .int_range(&["NumberOfBytes"], "numberOfBytes", limits::NUMBER_OF_BYTES)
            .grant_tokens()
            .finish()?;
        let req: GenerateDataKeyWithoutPlaintextRequest = typed(raw)?;
        let len = data_key_len(req.key_spec, req.number_of_bytes)?;
        let context = req.encryption_context.clone().unwrap_or_default();
        let key = self.usable_key(
            req.key_id.as_deref().unwrap_or_default(),
            "kms:GenerateDataKeyWithoutPlaintext",
            PolicyInputs {
                context: Some(&context),
                attestation: None,
            },
        )?;
        if req.dry_run == Some(true) {
            return Err(dry_run_error());
        }
        let data_key = self.random(len)?;
        let blob = self.seal(&key, &context, data_key.expose())?;
        to_json(&GenerateDataKeyWithoutPlaintextResponse {
            key_id: Some(key.arn),
            ciphertext_blob: Some(Blob(blob)),
            key_material_id: key.key_material_id,
        })
    }

    pub(super) fn generate_data_key_pair(
        &self,
        raw: &Map<String, Value>,
        with_plaintext: bool,
    ) -> Result<Value, KmsError> {
        let mut check = Check::new(raw);
        check
            .key_id("KeyId", "keyId", true)
            .required(&["KeyPairSpec"], "keyPairSpec")
            .enumeration(&["KeyPairSpec"], "keyPairSpec", KEY_PAIR_SPECS)
            .grant_tokens();
        if with_plaintext {
            check.recipient();
        }
        check.finish()?;
        let (key_ref, spec, context, recipient, dry_run, action) = if with_plaintext {
            let r: GenerateDataKeyPairRequest = typed(raw)?;
            (
                r.key_id,
                r.key_pair_spec,
                r.encryption_context,
                r.recipient,
                r.dry_run,
                "kms:GenerateDataKeyPair",
            )
        } else {
            let r: GenerateDataKeyPairWithoutPlaintextRequest = typed(raw)?;
            (
                r.key_id,
                r.key_pair_spec,
                r.encryption_context,
                None,
                r.dry_run,
                "kms:GenerateDataKeyPairWithoutPlaintext",
            )
        };
        let spec = spec.ok_or_else(|| internal("KeyPairSpec missing after validation"))?;
        let context = context.unwrap_or_default();
        let attested = self.verify_recipient(recipient.as_ref())?;
        let key = self.usable_key(
            key_ref.as_deref().unwrap_or_default(),
            action,
            PolicyInputs {
                context: Some(&context),
                attestation: attested.as_ref(),
            },
        )?;
        if dry_run == Some(true) {
            return Err(dry_run_error());
        }
        let (private_pkcs8, public_spki) = generate_key_pair(spec)?;
        let blob = self.seal(&key, &context, &private_pkcs8)?;
        if with_plaintext {
            let mut resp = GenerateDataKeyPairResponse {
                private_key_ciphertext_blob: Some(Blob(blob)),
                public_key: Some(Blob(public_spki)),
                key_id: Some(key.arn),
                key_pair_spec: Some(spec),
                key_material_id: key.key_material_id,
                ..Default::default()
            };
            (resp.private_key_plaintext, resp.ciphertext_for_recipient) =
                self.release(attested.as_ref(), SecretBytes::from_slice(&private_pkcs8))?;
            to_json(&resp)
        } else {
            to_json(&GenerateDataKeyPairWithoutPlaintextResponse {
                private_key_ciphertext_blob: Some(Blob(blob)),
                public_key: Some(Blob(public_spki)),
                key_id: Some(key.arn),
                key_pair_spec: Some(spec),
                key_material_id: key.key_material_id,
            })
        }
    }

    pub(super) fn encrypt(&self, raw: &Map<String, Value>) -> Result<Value, KmsError> {
        Check::new(raw)
            .key_id("KeyId", "keyId", true)
            .required(&["Plaintext"], "plaintext")
            .blob_len(&["Plaintext"], "plaintext", limits::PLAINTEXT)
            .enumeration(
                &["EncryptionAlgorithm"],
                "encryptionAlgorithm",
                ENCRYPTION_ALGORITHMS,
            )
            .grant_tokens()
            .finish()?;
        let req: EncryptRequest = typed(raw)?;
        if let Some(k) = self.asymmetric_key_named(req.key_id.as_deref())? {
            return self.encrypt_asymmetric(&req, k);
        }
        let context = req.encryption_context.clone().unwrap_or_default();
        let key = self.usable_key(
            req.key_id.as_deref().unwrap_or_default(),
            "kms:Encrypt",
            PolicyInputs {
                context: Some(&context),
                attestation: None,
            },
        )?;
        symmetric_only(req.encryption_algorithm)?;
        if req.dry_run == Some(true) {
            return Err(dry_run_error());
        }
        let plaintext = req
            .plaintext
            .as_ref()
            .map(SecretBytes::expose)
            .unwrap_or_default();
        let blob = self.seal(&key, &context, plaintext)?;
        to_json(&EncryptResponse {
            ciphertext_blob: Some(Blob(blob)),
            key_id: Some(key.arn),
            encryption_algorithm: Some(EncryptionAlgorithm::SymmetricDefault),
            // KMS's Encrypt response has no KeyMaterialId (the SDK models
            // it for GenerateDataKey*, Decrypt and ReEncrypt only).
            key_material_id: None,
        })
    }

    /// Finds the key of a ciphertext blob; with an explicit `KeyId`, checks
    /// that it names that key (`IncorrectKeyException` otherwise).
    pub(super) fn blob_key_id(
        &self,
        store: &Store,
        blob: &[u8],
        key_ref: Option<&str>,
    ) -> Result<String, KmsError> {
        let header = ciphertext::parse_header(blob).map_err(|e| {
            tracing::warn!("InvalidCiphertextException: {e}");
            invalid_ciphertext()
        })?;
        let embedded = header.key_id.to_owned();
        if let Some(r) = key_ref {
            let named = store.resolve(r)?;
            if named != embedded {
                return Err(err(
                    KmsErrorCode::IncorrectKey,
                    "The key ID in the request does not identify a CMK that can perform this operation.",
                ));
            }
        }
        if store.key(&embedded).is_none() {
            tracing::warn!(key_id = %embedded, "InvalidCiphertextException: the blob names a key this mock does not have");
            return Err(invalid_ciphertext());
        }
        Ok(embedded)
    }

    pub(super) fn open(
        key: &UsableKey,
        context: &EncryptionContext,
        blob: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, KmsError> {
        ciphertext::open(&key.material, context, blob).map_err(|e| {
            if e == BlobError::Crypto {
                return internal("crypto backend failure");
            }
            tracing::warn!(key = %key.arn, "InvalidCiphertextException: {e} (wrong encryption context or altered blob)");
            invalid_ciphertext()
        })
    }

    pub(super) fn decrypt(&self, raw: &Map<String, Value>) -> Result<Value, KmsError> {
        // KMS: CiphertextBlob "is required in all cases except when DryRun
        // is true and DryRunModifiers is set to IGNORE_CIPHERTEXT".
        let ignore_ciphertext = raw.get("DryRun") == Some(&Value::Bool(true))
            && raw
                .get("DryRunModifiers")
                .and_then(Value::as_array)
                .is_some_and(|m| {
                    m.iter()
                        .any(|v| v == DryRunModifier::IgnoreCiphertext.as_str())
                });
        let mut check = Check::new(raw);
        if !ignore_ciphertext {
            check.required(&["CiphertextBlob"], "ciphertextBlob");
        }
        check
            .blob_len(
                &["CiphertextBlob"],
                "ciphertextBlob",
                limits::CIPHERTEXT_BLOB,
            )
            .key_id("KeyId", "keyId", false)
            .enumeration(
                &["EncryptionAlgorithm"],
                "encryptionAlgorithm",
                ENCRYPTION_ALGORITHMS,
            )
            .grant_tokens()
            .recipient()
            .finish()?;
        let req: DecryptRequest = typed(raw)?;
        if ignore_ciphertext {
            return self.decrypt_dry_run_ignoring_ciphertext(&req);
        }
        if let Some(k) = self.asymmetric_key_named(req.key_id.as_deref())? {
            return self.decrypt_asymmetric(&req, k);
        }
        let blob = req
            .ciphertext_blob
            .as_ref()
            .map(|b| b.0.as_slice())
            .unwrap_or_default();
        let context = req.encryption_context.clone().unwrap_or_default();
        let attested = self.verify_recipient(req.recipient.as_ref())?;
        let key = {
            let store = self.lock()?;
            let id = self.blob_key_id(&store, blob, req.key_id.as_deref())?;
            self.usable_key_by_id(
                &store,
                &id,
                "kms:Decrypt",
                PolicyInputs {
                    context: Some(&context),
                    attestation: attested.as_ref(),
                },
            )?
        };
        symmetric_only(req.encryption_algorithm)?;
        let plaintext = Self::open(&key, &context, blob)?;
        if req.dry_run == Some(true) {
            return Err(dry_run_error());
        }
        let mut resp = DecryptResponse {
            key_id: Some(key.arn),
            encryption_algorithm: Some(EncryptionAlgorithm::SymmetricDefault),
            ..Default::default()
        };
        (resp.plaintext, resp.ciphertext_for_recipient) =
            self.release(attested.as_ref(), SecretBytes::from_slice(&plaintext))?;
        // KMS omits KeyMaterialId when the request has a Recipient.
        if attested.is_none() {
            resp.key_material_id = key.key_material_id;
        }
        to_json(&resp)
    }

    pub(super) fn re_encrypt(&self, raw: &Map<String, Value>) -> Result<Value, KmsError> {
        Check::new(raw)
            .required(&["CiphertextBlob"], "ciphertextBlob")
            .blob_len(
                &["CiphertextBlob"],
                "ciphertextBlob",
                limits::CIPHERTEXT_BLOB,
            )
            .key_id("SourceKeyId", "sourceKeyId", false)
            .key_id("DestinationKeyId", "destinationKeyId", true)
            .enumeration(
                &["SourceEncryptionAlgorithm"],
                "sourceEncryptionAlgorithm",
                ENCRYPTION_ALGORITHMS,
            )
            .enumeration(
                &["DestinationEncryptionAlgorithm"],
                "destinationEncryptionAlgorithm",
                ENCRYPTION_ALGORITHMS,
            )
            .grant_tokens()
            .finish()?;
        let req: ReEncryptRequest = typed(raw)?;
        let blob = req
            .ciphertext_blob
            .as_ref()
            .map(|b| b.0.as_slice())
            .unwrap_or_default();
        let src_ctx = req.source_encryption_context.clone().unwrap_or_default();
        let dst_ctx = req
            .destination_encryption_context
            .clone()
            .unwrap_or_default();
        let (src, dst) = {
            let store = self.lock()?;
            let src_id = self.blob_key_id(&store, blob, req.source_key_id.as_deref())?;
            let dst_id = store.resolve(req.destination_key_id.as_deref().unwrap_or_default())?;
            let src = self.usable_key_by_id(
                &store,
                &src_id,
                "kms:ReEncryptFrom",
                PolicyInputs {
                    context: Some(&src_ctx),
                    attestation: None,
                },
            )?;
            let dst = self.usable_key_by_id(
                &store,
                &dst_id,
                "kms:ReEncryptTo",
                PolicyInputs {
                    context: Some(&dst_ctx),
                    attestation: None,
                },
            )?;
            (src, dst)
        };
        symmetric_only(req.source_encryption_algorithm)?;
        symmetric_only(req.destination_encryption_algorithm)?;
        let plaintext = Self::open(&src, &src_ctx, blob)?;
        if req.dry_run == Some(true) {
            return Err(dry_run_error());
        }
        let new_blob = self.seal(&dst, &dst_ctx, &plaintext)?;
        to_json(&ReEncryptResponse {
            ciphertext_blob: Some(Blob(new_blob)),
            source_key_id: Some(src.arn),
            key_id: Some(dst.arn),
            source_encryption_algorithm: Some(EncryptionAlgorithm::SymmetricDefault),
            destination_encryption_algorithm: Some(EncryptionAlgorithm::SymmetricDefault),
            source_key_material_id: src.key_material_id,
            destination_key_material_id: dst.key_material_id,
        })
    }

    pub(super) fn generate_random(&self, raw: &Map<String, Value>) -> Result<Value, KmsError> {
        Check::new(raw)
            .int_range(&["NumberOfBytes"], "numberOfBytes", limits::NUMBER_OF_BYTES)
            .recipient()
            .finish()?;
        let req: GenerateRandomRequest = typed(raw)?;
        if let Some(id) = &req.custom_key_store_id {
            return Err(err(
                KmsErrorCode::CustomKeyStoreNotFound,
                format!(
                    "Custom key store {id} does not exist (keybroker-mock-kms has no custom key stores)."
                ),
            ));
        }
        let n = req.number_of_bytes.ok_or_else(|| {
            err(
                KmsErrorCode::Validation,
                "Please specify either number of bytes or key spec.",
            )
        })?;
        let attested = self.verify_recipient(req.recipient.as_ref())?;
        let bytes =
            self.random(usize::try_from(n).map_err(|_| internal("NumberOfBytes overflow"))?)?;
        let mut resp = GenerateRandomResponse::default();
        (resp.plaintext, resp.ciphertext_for_recipient) = self.release(attested.as_ref(), bytes)?;
        to_json(&resp)
    }
}
