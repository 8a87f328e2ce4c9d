//! The KMS operations: request validation with KMS's wording, key
//! resolution and state checks, key policy evaluation, and the operations
//! themselves. Transport-free: [`Engine::handle`] takes the operation name
//! (the `X-Amz-Target` suffix) and the JSON body and returns the JSON
//! response or a [`KmsError`].
//!
//! Order of checks for a key operation: schema validation
//! (`ValidationException`, "N validation error(s) detected"), semantic
//! validation (e.g. `KeySpec` xor `NumberOfBytes`), `Recipient` verification
//! (`ValidationException`), key resolution (`NotFoundException`; for
//! `Decrypt` the blob header, `InvalidCiphertextException` /
//! `IncorrectKeyException`), key policy (`AccessDeniedException`), key state
//! (`DisabledException`, `KMSInvalidStateException`), then `DryRun`
//! (`DryRunOperationException` when everything else would pass; `Decrypt`
//! and `ReEncrypt` also authenticate the blob first) and the operation.

use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use keybroker_common::UnixMillis;
use keybroker_common::kms::{
    Blob, DataKeyPairSpec, DataKeySpec, DecryptRequest, DecryptResponse, DescribeKeyResponse,
    DryRunModifier, EncryptRequest, EncryptResponse, EncryptionAlgorithm, EncryptionContext,
    GenerateDataKeyPairRequest, GenerateDataKeyPairResponse,
    GenerateDataKeyPairWithoutPlaintextRequest, GenerateDataKeyPairWithoutPlaintextResponse,
    GenerateDataKeyRequest, GenerateDataKeyResponse, GenerateDataKeyWithoutPlaintextRequest,
    GenerateDataKeyWithoutPlaintextResponse, GenerateRandomRequest, GenerateRandomResponse,
    KeyEncryptionAlgorithm, KeyMetadata, KmsError, KmsErrorCode, ReEncryptRequest,
    ReEncryptResponse, RecipientInfo,
};
use keybroker_common::secret::SecretBytes;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value, json};
use zeroize::Zeroizing;

mod asym;
mod control_plane;
mod data_plane;
mod keygen;
#[cfg(test)]
mod tests;
mod validation;

use keygen::generate_key_pair;
use validation::{
    Check, data_key_len, invalid_ciphertext, required_str, symmetric_only, unsupported,
};

use super::asymmetric::{AsymmetricKey, AsymmetricSpec};
use super::ciphertext::{self, BlobError};
use super::policy::{Decision, Policy, RequestContext, default_key_policy, evaluate};
use super::recipient::{AttestedRecipient, RecipientVerifier, encrypt_for};
use super::store::{AliasRecord, KeyMaterial, KeyRecord, KeyState, Store, valid_alias_name};

/// KMS limits from the API reference ("Length Constraints").
mod limits {
    pub const KEY_ID: (usize, usize) = (1, 2048);
    pub const CIPHERTEXT_BLOB: (usize, usize) = (1, 6144);
    pub const PLAINTEXT: (usize, usize) = (1, 4096);
    pub const ATTESTATION_DOCUMENT: (usize, usize) = (1, 262_144);
    pub const NUMBER_OF_BYTES: (i64, i64) = (1, 1024);
    pub const GRANT_TOKENS: usize = 10;
    pub const POLICY: (usize, usize) = (1, 32_768);
    pub const DESCRIPTION: (usize, usize) = (0, 8192);
    pub const LIMIT: (i64, i64) = (1, 1000);
    pub const MARKER: (usize, usize) = (1, 1024);
    pub const ALIAS_NAME: (usize, usize) = (1, 256);
    pub const PENDING_WINDOW: (i64, i64) = (1, 365);
}

// The enum value sets KMS validates against, spelled once in common.
const KEY_SPECS: &[&str] = DataKeySpec::NAMES;
const KEY_PAIR_SPECS: &[&str] = DataKeyPairSpec::NAMES;
const ENCRYPTION_ALGORITHMS: &[&str] = EncryptionAlgorithm::NAMES;
const KEY_ENCRYPTION_ALGORITHMS: &[&str] = KeyEncryptionAlgorithm::NAMES;

/// What the engine needs from the configuration.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Region in ARNs.
    pub region: String,
    /// Account in ARNs and the default policy.
    pub account_id: String,
    /// The principal every request is treated as coming from.
    pub caller_principal: String,
    /// Where to persist state, if anywhere.
    pub state_file: Option<PathBuf>,
}

/// The mock KMS without its transport.
#[derive(Debug)]
pub struct Engine {
    cfg: EngineConfig,
    store: Mutex<Store>,
    rng: SystemRandom,
    recipient: RecipientVerifier,
}

/// A KMS error of type `code`, with the HTTP status and retryability of
/// [`KmsErrorCode`]'s table.
fn err(code: KmsErrorCode, message: impl Into<String>) -> KmsError {
    KmsError::new(code, message)
}

fn internal(message: impl Into<String>) -> KmsError {
    err(KmsErrorCode::KmsInternal, message)
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

#[allow(clippy::cast_precision_loss)] // epoch milliseconds fit f64's 53 bits until year 287396
fn now_secs() -> f64 {
    now_ms() as f64 / 1000.0
}

fn dry_run_error() -> KmsError {
    err(
        KmsErrorCode::DryRunOperation,
        "The request would have succeeded, but the DryRun option is set.",
    )
}

fn typed<T: DeserializeOwned>(raw: &Map<String, Value>) -> Result<T, KmsError> {
    serde_json::from_value(Value::Object(raw.clone())).map_err(|e| {
        err(
            KmsErrorCode::Serialization,
            format!("Cannot deserialize the request: {e}"),
        )
    })
}

fn to_json<T: serde::Serialize>(v: &T) -> Result<Value, KmsError> {
    serde_json::to_value(v).map_err(|e| internal(format!("response serialization failed: {e}")))
}

/// A key that passed resolution, policy and state checks: what an operation
/// needs, copied out of the store so the lock is not held during crypto.
struct UsableKey {
    key_id: String,
    arn: String,
    material: Zeroizing<[u8; 32]>,
    /// `KeyMaterialId` of the responses.
    key_material_id: Option<String>,
}

/// What the policy sees besides action, principal and resource.
#[derive(Default, Clone, Copy)]
struct PolicyInputs<'a> {
    context: Option<&'a EncryptionContext>,
    attestation: Option<&'a AttestedRecipient>,
}

impl Engine {
    /// An engine over `store`.
    pub fn new(cfg: EngineConfig, store: Store, recipient: RecipientVerifier) -> Self {
        Self {
            cfg,
            store: Mutex::new(store),
            rng: SystemRandom::new(),
            recipient,
        }
    }

    fn lock(&self) -> Result<MutexGuard<'_, Store>, KmsError> {
        self.store
            .lock()
            .map_err(|_| internal("the mock's state lock is poisoned"))
    }

    fn persist(&self, store: &Store) -> Result<(), KmsError> {
        if let Some(path) = &self.cfg.state_file {
            store.save(path).map_err(|e| {
                tracing::error!(error = %e, "cannot persist the mock KMS state");
                internal("the mock could not persist its state")
            })?;
        }
        Ok(())
    }

    /// Handles one operation. `op` is the `X-Amz-Target` suffix after
    /// `TrentService.`, `body` the JSON request.
    pub fn handle(&self, op: &str, body: &[u8]) -> Result<Value, KmsError> {
        let raw: Value = if body.iter().all(u8::is_ascii_whitespace) {
            Value::Object(Map::new())
        } else {
            serde_json::from_slice(body).map_err(|e| {
                err(
                    KmsErrorCode::Serialization,
                    format!("The request body is not valid JSON: {e}"),
                )
            })?
        };
        let Value::Object(raw) = raw else {
            return Err(err(
                KmsErrorCode::Serialization,
                "The request body must be a JSON object.",
            ));
        };
        match op {
            "GenerateDataKey" => self.generate_data_key(&raw),
            "GenerateDataKeyWithoutPlaintext" => self.generate_data_key_without_plaintext(&raw),
            "GenerateDataKeyPair" => self.generate_data_key_pair(&raw, true),
            "GenerateDataKeyPairWithoutPlaintext" => self.generate_data_key_pair(&raw, false),
            "Encrypt" => self.encrypt(&raw),
            "Decrypt" => self.decrypt(&raw),
            "ReEncrypt" => self.re_encrypt(&raw),
            "GenerateRandom" => self.generate_random(&raw),
            "GetPublicKey" => self.get_public_key(&raw),
            "DeriveSharedSecret" => self.derive_shared_secret(&raw),
            "CreateKey" => self.create_key(&raw),
            "DescribeKey" => self.describe_key(&raw),
            "ListKeys" => self.list_keys(&raw),
            "CreateAlias" => self.create_alias(&raw),
            "ListAliases" => self.list_aliases(&raw),
            "DeleteAlias" => self.delete_alias(&raw),
            "EnableKey" => self.set_enabled(&raw, true),
            "DisableKey" => self.set_enabled(&raw, false),
            "ScheduleKeyDeletion" => self.schedule_key_deletion(&raw),
            "CancelKeyDeletion" => self.cancel_key_deletion(&raw),
            "PutKeyPolicy" => self.put_key_policy(&raw),
            "GetKeyPolicy" => self.get_key_policy(&raw),
            other => Err(err(
                KmsErrorCode::UnknownOperation,
                format!(
                    "Unknown operation TrentService.{other} (keybroker-mock-kms does not implement it)"
                ),
            )),
        }
    }

    // ---- shared steps ----

    fn verify_recipient(
        &self,
        r: Option<&RecipientInfo>,
    ) -> Result<Option<AttestedRecipient>, KmsError> {
        let Some(r) = r else { return Ok(None) };
        let attested = self
            .recipient
            .verify(&r.attestation_document.0, UnixMillis(now_ms()))?;
        tracing::debug!(module_id = %attested.module_id, "Recipient attestation document verified");
        Ok(Some(attested))
    }

    /// Evaluates the key's policy for `action`; logs why on denial.
    fn authorize(
        &self,
        store: &Store,
        key: &KeyRecord,
        action: &str,
        inputs: PolicyInputs<'_>,
    ) -> Result<(), KmsError> {
        let arn = store.key_arn(&key.key_id);
        let policy = Policy::parse(&key.policy)
            .map_err(|e| internal(format!("stored key policy does not parse: {e}")))?;
        let mut ctx =
            RequestContext::new(action, &self.cfg.caller_principal, store.account_id(), &arn);
        if let Some(c) = inputs.context {
            ctx = ctx.with_encryption_context(c);
        }
        if let Some(a) = inputs.attestation {
            ctx = ctx.with_attestation_pcrs(a.pcrs.iter().map(|(i, v)| (*i, v.as_slice())));
        }
        let principal = &self.cfg.caller_principal;
        match evaluate(&policy, &ctx) {
            Decision::Allow { statement } => {
                tracing::debug!(action, key = %arn, %statement, "key policy allows");
                Ok(())
            }
            Decision::ExplicitDeny { statement } => {
                tracing::warn!(
                    action, key = %arn, %principal, %statement,
                    "AccessDeniedException: explicit Deny in the key policy"
                );
                Err(err(
                    KmsErrorCode::AccessDenied,
                    format!(
                        "User: {principal} is not authorized to perform: {action} on resource: {arn} with an explicit deny in a resource-based policy"
                    ),
                ))
            }
            Decision::ImplicitDeny { near_misses } => {
                if near_misses.is_empty() {
                    tracing::warn!(
                        action, key = %arn, %principal,
                        "AccessDeniedException: no Allow statement in the key policy matches this principal and action"
                    );
                }
                for m in &near_misses {
                    tracing::warn!(
                        action, key = %arn, %principal,
                        statement = %m.statement,
                        operator = %m.failed.operator,
                        condition_key = %m.failed.key,
                        expected = ?m.failed.expected,
                        actual = ?m.failed.actual,
                        "AccessDeniedException: Allow statement matches but its condition failed: {}",
                        m.failed
                    );
                }
                Err(err(
                    KmsErrorCode::AccessDenied,
                    format!(
                        "User: {principal} is not authorized to perform: {action} on resource: {arn} because no resource-based policy allows the {action} action"
                    ),
                ))
            }
        }
    }

    fn check_state(store: &Store, key: &KeyRecord) -> Result<(), KmsError> {
        let arn = store.key_arn(&key.key_id);
        match key.state {
            KeyState::Enabled => Ok(()),
            KeyState::Disabled => Err(err(KmsErrorCode::Disabled, format!("{arn} is disabled."))),
            KeyState::PendingDeletion => Err(err(
                KmsErrorCode::KmsInvalidState,
                format!("{arn} is pending deletion."),
            )),
        }
    }

    fn lookup<'s>(store: &'s Store, key_id: &str) -> Result<&'s KeyRecord, KmsError> {
        store.key(key_id).ok_or_else(|| {
            err(
                KmsErrorCode::NotFound,
                format!("Key '{}' does not exist", store.key_arn(key_id)),
            )
        })
    }

    /// Resolution, policy and state for a cryptographic operation.
    fn usable_key(
        &self,
        key_ref: &str,
        action: &str,
        inputs: PolicyInputs<'_>,
    ) -> Result<UsableKey, KmsError> {
        let store = self.lock()?;
        let id = store.resolve(key_ref)?;
        self.usable_key_by_id(&store, &id, action, inputs)
    }

    fn usable_key_by_id(
        &self,
        store: &Store,
        id: &str,
        action: &str,
        inputs: PolicyInputs<'_>,
    ) -> Result<UsableKey, KmsError> {
        let key = Self::lookup(store, id)?;
        self.authorize(store, key, action, inputs)?;
        Self::check_state(store, key)?;
        let material = key
            .material()
            .ok_or_else(|| asym::wrong_usage(store, key, action))?;
        Ok(UsableKey {
            key_id: key.key_id.clone(),
            arn: store.key_arn(&key.key_id),
            material: Zeroizing::new(*material),
            key_material_id: key.key_material_id(),
        })
    }

    fn seal(
        &self,
        key: &UsableKey,
        context: &EncryptionContext,
        plaintext: &[u8],
    ) -> Result<Vec<u8>, KmsError> {
        ciphertext::seal(&key.material, &key.key_id, context, plaintext, &self.rng)
            .map_err(|e| internal(format!("cannot seal: {e}")))
    }

    /// A secret as the response carries it: without a `Recipient`
    /// (`attested` `None`) in the clear (`Plaintext`, `SharedSecret`, ...:
    /// the first of the pair), with one only as `CiphertextForRecipient`
    /// (the second), enveloped to the attested public key.
    fn release(
        &self,
        attested: Option<&AttestedRecipient>,
        secret: SecretBytes,
    ) -> Result<(Option<SecretBytes>, Option<Blob>), KmsError> {
        match attested {
            Some(a) => Ok((
                None,
                Some(Blob(encrypt_for(a, secret.expose(), &self.rng)?)),
            )),
            None => Ok((Some(secret), None)),
        }
    }

    fn random(&self, len: usize) -> Result<SecretBytes, KmsError> {
        let mut buf = Zeroizing::new(vec![0u8; len]);
        self.rng
            .fill(buf.as_mut_slice())
            .map_err(|_| internal("random generation failed"))?;
        Ok(SecretBytes::from_slice(&buf))
    }
}
