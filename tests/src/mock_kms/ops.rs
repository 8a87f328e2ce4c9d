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
    Blob, DataKeyPairSpec, DecryptRequest, DecryptResponse, DescribeKeyResponse, EncryptRequest,
    EncryptResponse, EncryptionAlgorithm, EncryptionContext, GenerateDataKeyPairRequest,
    GenerateDataKeyPairResponse, GenerateDataKeyPairWithoutPlaintextRequest,
    GenerateDataKeyPairWithoutPlaintextResponse, GenerateDataKeyRequest, GenerateDataKeyResponse,
    GenerateDataKeyWithoutPlaintextRequest, GenerateDataKeyWithoutPlaintextResponse,
    GenerateRandomRequest, GenerateRandomResponse, KeyMetadata, KmsError, ReEncryptRequest,
    ReEncryptResponse, RecipientInfo,
};
use keybroker_common::secret::SecretBytes;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value, json};
use zeroize::Zeroizing;

mod asym;

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

const KEY_SPECS: &[&str] = &["AES_256", "AES_128"];
const KEY_PAIR_SPECS: &[&str] = &[
    "RSA_2048",
    "RSA_3072",
    "RSA_4096",
    "ECC_NIST_P256",
    "ECC_NIST_P384",
    "ECC_NIST_P521",
    "ECC_SECG_P256K1",
    "SM2",
    "ECC_NIST_EDWARDS25519",
];
const ENCRYPTION_ALGORITHMS: &[&str] = &[
    "SYMMETRIC_DEFAULT",
    "RSAES_OAEP_SHA_1",
    "RSAES_OAEP_SHA_256",
    "SM2PKE",
];
const KEY_ENCRYPTION_ALGORITHMS: &[&str] = &["RSAES_OAEP_SHA_256"];

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

fn err(code: &str, message: impl Into<String>) -> KmsError {
    KmsError::new(code, message)
}

fn internal(message: impl Into<String>) -> KmsError {
    err("KMSInternalException", message)
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
        "DryRunOperationException",
        "The request would have succeeded, but the DryRun option is set.",
    )
}

// ---------------------------------------------------------------------------
// Schema validation with KMS's (Coral's) wording.

struct Check<'a> {
    raw: &'a Map<String, Value>,
    errors: Vec<String>,
}

impl<'a> Check<'a> {
    fn new(raw: &'a Map<String, Value>) -> Self {
        Self {
            raw,
            errors: Vec::new(),
        }
    }

    fn get(&self, path: &[&str]) -> Option<&'a Value> {
        let (first, rest) = path.split_first()?;
        let mut v = self.raw.get(*first)?;
        for p in rest {
            v = v.get(*p)?;
        }
        (!v.is_null()).then_some(v)
    }

    fn required(&mut self, path: &[&str], member: &str) -> &mut Self {
        if self.get(path).is_none() {
            self.errors.push(format!(
                "Value null at '{member}' failed to satisfy constraint: Member must not be null"
            ));
        }
        self
    }

    fn length_error(
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

    fn string_len(&mut self, path: &[&str], member: &str, bounds: (usize, usize)) -> &mut Self {
        if let Some(Value::String(s)) = self.get(path) {
            self.length_error(Some(s), member, s.chars().count(), bounds);
        }
        self
    }

    /// Blob lengths are of the decoded bytes; KMS does not echo blobs.
    fn blob_len(&mut self, path: &[&str], member: &str, bounds: (usize, usize)) -> &mut Self {
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

    fn int_range(&mut self, path: &[&str], member: &str, (min, max): (i64, i64)) -> &mut Self {
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

    fn enumeration(&mut self, path: &[&str], member: &str, allowed: &[&str]) -> &mut Self {
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

    fn list_max(&mut self, path: &[&str], member: &str, max: usize) -> &mut Self {
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

    fn key_id(&mut self, field: &str, member: &str, required: bool) -> &mut Self {
        if required {
            self.required(&[field], member);
        }
        self.string_len(&[field], member, limits::KEY_ID)
    }

    fn grant_tokens(&mut self) -> &mut Self {
        self.list_max(&["GrantTokens"], "grantTokens", limits::GRANT_TOKENS)
    }

    fn recipient(&mut self) -> &mut Self {
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

    fn finish(&mut self) -> Result<(), KmsError> {
        match self.errors.len() {
            0 => Ok(()),
            1 => Err(err(
                "ValidationException",
                format!("1 validation error detected: {}", self.errors.join("; ")),
            )),
            n => Err(err(
                "ValidationException",
                format!("{n} validation errors detected: {}", self.errors.join("; ")),
            )),
        }
    }
}

fn typed<T: DeserializeOwned>(raw: &Map<String, Value>) -> Result<T, KmsError> {
    serde_json::from_value(Value::Object(raw.clone())).map_err(|e| {
        err(
            "SerializationException",
            format!("Cannot deserialize the request: {e}"),
        )
    })
}

fn to_json<T: serde::Serialize>(v: &T) -> Result<Value, KmsError> {
    serde_json::to_value(v).map_err(|e| internal(format!("response serialization failed: {e}")))
}

/// "Please specify either number of bytes or key spec." (KMS's text).
fn data_key_len(
    spec: Option<keybroker_common::kms::DataKeySpec>,
    n: Option<u32>,
) -> Result<usize, KmsError> {
    match (spec, n) {
        (Some(s), None) => Ok(s.byte_len()),
        (None, Some(n)) => usize::try_from(n).map_err(|_| internal("NumberOfBytes overflow")),
        _ => Err(err(
            "ValidationException",
            "Please specify either number of bytes or key spec.",
        )),
    }
}

fn symmetric_only(alg: Option<EncryptionAlgorithm>) -> Result<(), KmsError> {
    match alg {
        None | Some(EncryptionAlgorithm::SymmetricDefault) => Ok(()),
        Some(other) => Err(err(
            "InvalidKeyUsageException",
            format!(
                "The KMS key's KeySpec SYMMETRIC_DEFAULT does not support the encryption algorithm {}.",
                serde_json::to_value(other)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_owned))
                    .unwrap_or_default()
            ),
        )),
    }
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

// ---------------------------------------------------------------------------
// Control-plane request shapes (KMS API reference), defined here because
// only the mock serves them.

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
struct CreateKeyRequest {
    policy: Option<String>,
    description: Option<String>,
    key_usage: Option<String>,
    key_spec: Option<String>,
    customer_master_key_spec: Option<String>,
    origin: Option<String>,
    multi_region: Option<bool>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
struct KeyIdRequest {
    key_id: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
struct ListRequest {
    key_id: Option<String>,
    limit: Option<u32>,
    marker: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
struct AliasRequest {
    alias_name: Option<String>,
    target_key_id: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
struct ScheduleKeyDeletionRequest {
    key_id: Option<String>,
    pending_window_in_days: Option<u32>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
struct KeyPolicyRequest {
    key_id: Option<String>,
    policy_name: Option<String>,
    policy: Option<String>,
}

const KEY_USAGES: &[&str] = &[
    "SIGN_VERIFY",
    "ENCRYPT_DECRYPT",
    "GENERATE_VERIFY_MAC",
    "KEY_AGREEMENT",
];
const CREATE_KEY_SPECS: &[&str] = &[
    "RSA_2048",
    "RSA_3072",
    "RSA_4096",
    "ECC_NIST_P256",
    "ECC_NIST_P384",
    "ECC_NIST_P521",
    "ECC_SECG_P256K1",
    "ECC_NIST_EDWARDS25519",
    "SYMMETRIC_DEFAULT",
    "HMAC_224",
    "HMAC_256",
    "HMAC_384",
    "HMAC_512",
    "SM2",
    "ML_DSA_44",
    "ML_DSA_65",
    "ML_DSA_87",
];
const ORIGINS: &[&str] = &["AWS_KMS", "EXTERNAL", "AWS_CLOUDHSM", "EXTERNAL_KEY_STORE"];

fn unsupported(what: &str) -> KmsError {
    err(
        "UnsupportedOperationException",
        format!(
            "{what} is not supported by keybroker-mock-kms (it emulates SYMMETRIC_DEFAULT keys, ECC KEY_AGREEMENT keys and RSA ENCRYPT_DECRYPT keys)."
        ),
    )
}

fn required_str<'a>(v: &'a Option<String>, member: &str) -> Result<&'a str, KmsError> {
    v.as_deref().ok_or_else(|| {
        err(
            "ValidationException",
            format!("1 validation error detected: Value null at '{member}' failed to satisfy constraint: Member must not be null"),
        )
    })
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
                    "SerializationException",
                    format!("The request body is not valid JSON: {e}"),
                )
            })?
        };
        let Value::Object(raw) = raw else {
            return Err(err(
                "SerializationException",
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
                "UnknownOperationException",
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
                    "AccessDeniedException",
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
                    "AccessDeniedException",
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
            KeyState::Disabled => Err(err("DisabledException", format!("{arn} is disabled."))),
            KeyState::PendingDeletion => Err(err(
                "KMSInvalidStateException",
                format!("{arn} is pending deletion."),
            )),
        }
    }

    fn lookup<'s>(store: &'s Store, key_id: &str) -> Result<&'s KeyRecord, KmsError> {
        store.key(key_id).ok_or_else(|| {
            err(
                "NotFoundException",
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

    fn random(&self, len: usize) -> Result<SecretBytes, KmsError> {
        let mut buf = Zeroizing::new(vec![0u8; len]);
        self.rng
            .fill(buf.as_mut_slice())
            .map_err(|_| internal("random generation failed"))?;
        Ok(SecretBytes::from_slice(&buf))
    }

    // ---- data plane ----

    fn generate_data_key(&self, raw: &Map<String, Value>) -> Result<Value, KmsError> {
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
        match &attested {
            Some(a) => {
                resp.ciphertext_for_recipient =
                    Some(Blob(encrypt_for(a, data_key.expose(), &self.rng)?))
            }
            None => resp.plaintext = Some(data_key),
        }
        to_json(&resp)
    }

    fn generate_data_key_without_plaintext(
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

    fn generate_data_key_pair(
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
            match &attested {
                Some(a) => {
                    resp.ciphertext_for_recipient =
                        Some(Blob(encrypt_for(a, &private_pkcs8, &self.rng)?))
                }
                None => resp.private_key_plaintext = Some(SecretBytes::from_slice(&private_pkcs8)),
            }
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

    fn encrypt(&self, raw: &Map<String, Value>) -> Result<Value, KmsError> {
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
    fn blob_key_id(
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
                    "IncorrectKeyException",
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

    fn open(
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

    fn decrypt(&self, raw: &Map<String, Value>) -> Result<Value, KmsError> {
        // KMS: CiphertextBlob "is required in all cases except when DryRun
        // is true and DryRunModifiers is set to IGNORE_CIPHERTEXT".
        let ignore_ciphertext = raw.get("DryRun") == Some(&Value::Bool(true))
            && raw
                .get("DryRunModifiers")
                .and_then(Value::as_array)
                .is_some_and(|m| m.iter().any(|v| v == "IGNORE_CIPHERTEXT"));
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
        match &attested {
            // KMS omits KeyMaterialId when the request has a Recipient.
            Some(a) => {
                resp.ciphertext_for_recipient = Some(Blob(encrypt_for(a, &plaintext, &self.rng)?))
            }
            None => {
                resp.plaintext = Some(SecretBytes::from_slice(&plaintext));
                resp.key_material_id = key.key_material_id;
            }
        }
        to_json(&resp)
    }

    fn re_encrypt(&self, raw: &Map<String, Value>) -> Result<Value, KmsError> {
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

    fn generate_random(&self, raw: &Map<String, Value>) -> Result<Value, KmsError> {
        Check::new(raw)
            .int_range(&["NumberOfBytes"], "numberOfBytes", limits::NUMBER_OF_BYTES)
            .recipient()
            .finish()?;
        let req: GenerateRandomRequest = typed(raw)?;
        if let Some(id) = &req.custom_key_store_id {
            return Err(err(
                "CustomKeyStoreNotFoundException",
                format!(
                    "Custom key store {id} does not exist (keybroker-mock-kms has no custom key stores)."
                ),
            ));
        }
        let n = req.number_of_bytes.ok_or_else(|| {
            err(
                "ValidationException",
                "Please specify either number of bytes or key spec.",
            )
        })?;
        let attested = self.verify_recipient(req.recipient.as_ref())?;
        let bytes =
            self.random(usize::try_from(n).map_err(|_| internal("NumberOfBytes overflow"))?)?;
        let mut resp = GenerateRandomResponse::default();
        match &attested {
            Some(a) => {
                resp.ciphertext_for_recipient =
                    Some(Blob(encrypt_for(a, bytes.expose(), &self.rng)?))
            }
            None => resp.plaintext = Some(bytes),
        }
        to_json(&resp)
    }

    // ---- control plane ----

    fn metadata(store: &Store, key: &KeyRecord) -> KeyMetadata {
        let spec = key.asymmetric().map(AsymmetricKey::spec);
        KeyMetadata {
            aws_account_id: Some(store.account_id().to_owned()),
            key_id: key.key_id.clone(),
            arn: Some(store.key_arn(&key.key_id)),
            creation_date: Some(key.creation_date),
            enabled: key.state == KeyState::Enabled,
            description: Some(key.description.clone()),
            key_usage: Some(key.key_usage().into()),
            key_state: Some(key.state.as_str().into()),
            deletion_date: key.deletion_date,
            origin: Some("AWS_KMS".into()),
            key_manager: Some("CUSTOMER".into()),
            key_spec: Some(key.key_spec().into()),
            customer_master_key_spec: Some(key.key_spec().into()),
            encryption_algorithms: asym::encryption_algorithms(spec),
            signing_algorithms: None,
            key_agreement_algorithms: asym::key_agreement_algorithms(spec),
            multi_region: Some(false),
        }
    }

    fn new_key_id(&self) -> Result<String, KmsError> {
        let mut b = [0u8; 16];
        self.rng
            .fill(&mut b)
            .map_err(|_| internal("random generation failed"))?;
        // RFC 9562 version 4 (random) UUID.
        b[6] = (b[6] & 0x0f) | 0x40;
        b[8] = (b[8] & 0x3f) | 0x80;
        let h = hex::encode(b);
        Ok(format!(
            "{}-{}-{}-{}-{}",
            h.get(0..8).unwrap_or_default(),
            h.get(8..12).unwrap_or_default(),
            h.get(12..16).unwrap_or_default(),
            h.get(16..20).unwrap_or_default(),
            h.get(20..32).unwrap_or_default()
        ))
    }

    fn create_key(&self, raw: &Map<String, Value>) -> Result<Value, KmsError> {
        Check::new(raw)
            .string_len(&["Policy"], "policy", limits::POLICY)
            .string_len(&["Description"], "description", limits::DESCRIPTION)
            .enumeration(&["KeyUsage"], "keyUsage", KEY_USAGES)
            .enumeration(&["KeySpec"], "keySpec", CREATE_KEY_SPECS)
            .enumeration(
                &["CustomerMasterKeySpec"],
                "customerMasterKeySpec",
                CREATE_KEY_SPECS,
            )
            .enumeration(&["Origin"], "origin", ORIGINS)
            .finish()?;
        let req: CreateKeyRequest = typed(raw)?;
        let spec = asym::create_key_spec(
            req.key_spec.as_deref(),
            req.customer_master_key_spec.as_deref(),
            req.key_usage.as_deref(),
        )?;
        if let Some(o) = req.origin.as_deref().filter(|o| *o != "AWS_KMS") {
            return Err(unsupported(&format!("Origin {o}")));
        }
        if req.multi_region == Some(true) {
            return Err(unsupported("MultiRegion"));
        }
        let policy = match req.policy {
            Some(p) => {
                Policy::parse(&p)
                    .map_err(|e| err("MalformedPolicyDocumentException", e.to_string()))?;
                p
            }
            None => default_key_policy(&self.cfg.account_id),
        };
        let material = match spec {
            Some(spec) => KeyMaterial::Asymmetric(
                AsymmetricKey::generate(spec).map_err(|e| internal(format!("CreateKey: {e}")))?,
            ),
            None => {
                let mut m = Zeroizing::new([0u8; 32]);
                self.rng
                    .fill(m.as_mut_slice())
                    .map_err(|_| internal("random generation failed"))?;
                KeyMaterial::Symmetric(m)
            }
        };
        let id = self.new_key_id()?;
        let mut store = self.lock()?;
        store.insert_key(KeyRecord::with_material(
            id.clone(),
            material,
            req.description.unwrap_or_default(),
            policy,
            now_secs(),
        ));
        self.persist(&store)?;
        let key = Self::lookup(&store, &id)?;
        tracing::info!(key = %store.key_arn(&id), "CreateKey");
        to_json(&DescribeKeyResponse {
            key_metadata: Some(Self::metadata(&store, key)),
        })
    }

    fn describe_key(&self, raw: &Map<String, Value>) -> Result<Value, KmsError> {
        Check::new(raw)
            .key_id("KeyId", "keyId", true)
            .grant_tokens()
            .finish()?;
        let req: KeyIdRequest = typed(raw)?;
        let store = self.lock()?;
        let id = store.resolve(req.key_id.as_deref().unwrap_or_default())?;
        let key = Self::lookup(&store, &id)?;
        self.authorize(&store, key, "kms:DescribeKey", PolicyInputs::default())?;
        to_json(&DescribeKeyResponse {
            key_metadata: Some(Self::metadata(&store, key)),
        })
    }

    /// Pagination shared by ListKeys and ListAliases: the marker is the
    /// index of the next item (opaque to callers, as in KMS).
    /// One page of a list response: `{field: [...], "Truncated": bool}` plus
    /// `NextMarker` when more remain (KMS pagination; the marker is an offset).
    fn page(
        field: &str,
        items: Vec<Value>,
        limit: Option<u32>,
        marker: Option<&str>,
    ) -> Result<Value, KmsError> {
        let start = match marker {
            None => 0,
            Some(m) => m
                .parse::<usize>()
                .ok()
                .filter(|s| *s <= items.len())
                .ok_or_else(|| err("InvalidMarkerException", "The marker is not valid."))?,
        };
        let limit = usize::try_from(limit.unwrap_or(100)).unwrap_or(100);
        let end = start.saturating_add(limit).min(items.len());
        let next = (end < items.len()).then(|| end.to_string());
        let page: Vec<Value> = items.into_iter().skip(start).take(end - start).collect();
        let mut out = serde_json::Map::new();
        out.insert(field.into(), Value::Array(page));
        out.insert("Truncated".into(), Value::Bool(next.is_some()));
        if let Some(n) = next {
            out.insert("NextMarker".into(), Value::String(n));
        }
        Ok(Value::Object(out))
    }

    fn list_keys(&self, raw: &Map<String, Value>) -> Result<Value, KmsError> {
        Check::new(raw)
            .int_range(&["Limit"], "limit", limits::LIMIT)
            .string_len(&["Marker"], "marker", limits::MARKER)
            .finish()?;
        let req: ListRequest = typed(raw)?;
        let store = self.lock()?;
        let all: Vec<Value> = store
            .keys()
            .map(|k| json!({"KeyId": k.key_id, "KeyArn": store.key_arn(&k.key_id)}))
            .collect();
        Self::page("Keys", all, req.limit, req.marker.as_deref())
    }

    fn list_aliases(&self, raw: &Map<String, Value>) -> Result<Value, KmsError> {
        Check::new(raw)
            .key_id("KeyId", "keyId", false)
            .int_range(&["Limit"], "limit", limits::LIMIT)
            .string_len(&["Marker"], "marker", limits::MARKER)
            .finish()?;
        let req: ListRequest = typed(raw)?;
        let store = self.lock()?;
        let filter = match req.key_id.as_deref() {
            Some(r) => Some(store.resolve(r)?),
            None => None,
        };
        let all: Vec<Value> = store
            .aliases()
            .filter(|a| filter.as_ref().is_none_or(|f| *f == a.target_key_id))
            .map(|a| {
                json!({
                    "AliasName": a.name,
                    "AliasArn": store.alias_arn(&a.name),
                    "TargetKeyId": a.target_key_id,
                    "CreationDate": a.creation_date,
                    "LastUpdatedDate": a.last_updated_date,
                })
            })
            .collect();
        Self::page("Aliases", all, req.limit, req.marker.as_deref())
    }

    fn create_alias(&self, raw: &Map<String, Value>) -> Result<Value, KmsError> {
        Check::new(raw)
            .required(&["AliasName"], "aliasName")
            .string_len(&["AliasName"], "aliasName", limits::ALIAS_NAME)
            .key_id("TargetKeyId", "targetKeyId", true)
            .finish()?;
        let req: AliasRequest = typed(raw)?;
        let name = required_str(&req.alias_name, "aliasName")?;
        let target = required_str(&req.target_key_id, "targetKeyId")?;
        if name.starts_with("alias/aws/") {
            return Err(err(
                "NotAuthorizedException",
                format!(
                    "Alias {name} cannot be created: the alias/aws/ prefix is reserved for AWS managed keys."
                ),
            ));
        }
        if !valid_alias_name(name) {
            return Err(err(
                "ValidationException",
                format!(
                    "Alias {name} must start with the prefix \"alias/\" followed by 1 to 250 characters of [a-zA-Z0-9/_-]."
                ),
            ));
        }
        if target.starts_with("alias/") || target.contains(":alias/") {
            return Err(err(
                "ValidationException",
                "TargetKeyId must be a key ID or key ARN, not an alias.",
            ));
        }
        let mut store = self.lock()?;
        let id = store.resolve(target)?;
        if store.alias(name).is_some() {
            return Err(err(
                "AlreadyExistsException",
                format!(
                    "An alias with the name {} already exists",
                    store.alias_arn(name)
                ),
            ));
        }
        let key = Self::lookup(&store, &id)?;
        self.authorize(&store, key, "kms:CreateAlias", PolicyInputs::default())?;
        if key.state == KeyState::PendingDeletion {
            return Err(err(
                "KMSInvalidStateException",
                format!("{} is pending deletion.", store.key_arn(&id)),
            ));
        }
        let now = now_secs();
        store.put_alias(AliasRecord {
            name: name.to_owned(),
            target_key_id: id,
            creation_date: now,
            last_updated_date: now,
        });
        self.persist(&store)?;
        Ok(json!({}))
    }

    fn delete_alias(&self, raw: &Map<String, Value>) -> Result<Value, KmsError> {
        Check::new(raw)
            .required(&["AliasName"], "aliasName")
            .string_len(&["AliasName"], "aliasName", limits::ALIAS_NAME)
            .finish()?;
        let req: AliasRequest = typed(raw)?;
        let name = required_str(&req.alias_name, "aliasName")?;
        let mut store = self.lock()?;
        let target = store
            .alias(name)
            .map(|a| a.target_key_id.clone())
            .ok_or_else(|| {
                err(
                    "NotFoundException",
                    format!("Alias {} is not found.", store.alias_arn(name)),
                )
            })?;
        let key = Self::lookup(&store, &target)?;
        self.authorize(&store, key, "kms:DeleteAlias", PolicyInputs::default())?;
        store.remove_alias(name);
        self.persist(&store)?;
        Ok(json!({}))
    }

    fn set_enabled(&self, raw: &Map<String, Value>, enable: bool) -> Result<Value, KmsError> {
        Check::new(raw).key_id("KeyId", "keyId", true).finish()?;
        let req: KeyIdRequest = typed(raw)?;
        let mut store = self.lock()?;
        let id = store.resolve(req.key_id.as_deref().unwrap_or_default())?;
        let arn = store.key_arn(&id);
        let key = Self::lookup(&store, &id)?;
        let action = if enable {
            "kms:EnableKey"
        } else {
            "kms:DisableKey"
        };
        self.authorize(&store, key, action, PolicyInputs::default())?;
        if key.state == KeyState::PendingDeletion {
            return Err(err(
                "KMSInvalidStateException",
                format!("{arn} is pending deletion."),
            ));
        }
        if let Some(k) = store.key_mut(&id) {
            k.state = if enable {
                KeyState::Enabled
            } else {
                KeyState::Disabled
            };
        }
        self.persist(&store)?;
        tracing::info!(key = %arn, enable, "EnableKey/DisableKey");
        Ok(json!({}))
    }

    fn schedule_key_deletion(&self, raw: &Map<String, Value>) -> Result<Value, KmsError> {
        Check::new(raw)
            .key_id("KeyId", "keyId", true)
            .int_range(
                &["PendingWindowInDays"],
                "pendingWindowInDays",
                limits::PENDING_WINDOW,
            )
            .finish()?;
        let req: ScheduleKeyDeletionRequest = typed(raw)?;
        let days = req.pending_window_in_days.unwrap_or(30);
        if !(7..=30).contains(&days) {
            return Err(err(
                "ValidationException",
                format!("PendingWindowInDays must be between 7 and 30 days; {days} was given."),
            ));
        }
        let mut store = self.lock()?;
        let id = store.resolve(req.key_id.as_deref().unwrap_or_default())?;
        let arn = store.key_arn(&id);
        let key = Self::lookup(&store, &id)?;
        self.authorize(
            &store,
            key,
            "kms:ScheduleKeyDeletion",
            PolicyInputs::default(),
        )?;
        if key.state == KeyState::PendingDeletion {
            return Err(err(
                "KMSInvalidStateException",
                format!("{arn} is pending deletion."),
            ));
        }
        let deletion = now_secs() + f64::from(days) * 86_400.0;
        if let Some(k) = store.key_mut(&id) {
            k.state = KeyState::PendingDeletion;
            k.deletion_date = Some(deletion);
        }
        self.persist(&store)?;
        tracing::info!(key = %arn, days, "ScheduleKeyDeletion (the mock never actually deletes keys)");
        Ok(json!({
            "KeyId": arn,
            "DeletionDate": deletion,
            "KeyState": "PendingDeletion",
            "PendingWindowInDays": days,
        }))
    }

    fn cancel_key_deletion(&self, raw: &Map<String, Value>) -> Result<Value, KmsError> {
        Check::new(raw).key_id("KeyId", "keyId", true).finish()?;
        let req: KeyIdRequest = typed(raw)?;
        let mut store = self.lock()?;
        let id = store.resolve(req.key_id.as_deref().unwrap_or_default())?;
        let arn = store.key_arn(&id);
        let key = Self::lookup(&store, &id)?;
        self.authorize(
            &store,
            key,
            "kms:CancelKeyDeletion",
            PolicyInputs::default(),
        )?;
        if key.state != KeyState::PendingDeletion {
            return Err(err(
                "KMSInvalidStateException",
                format!("{arn} is not pending deletion."),
            ));
        }
        if let Some(k) = store.key_mut(&id) {
            // KMS leaves a key whose deletion was cancelled disabled.
            k.state = KeyState::Disabled;
            k.deletion_date = None;
        }
        self.persist(&store)?;
        Ok(json!({"KeyId": arn}))
    }

    fn check_policy_name(name: Option<&str>) -> Result<(), KmsError> {
        match name {
            None | Some("default") => Ok(()),
            Some(other) => Err(err(
                "NotFoundException",
                format!("Policy {other} does not exist: the only key policy name is \"default\"."),
            )),
        }
    }

    fn put_key_policy(&self, raw: &Map<String, Value>) -> Result<Value, KmsError> {
        Check::new(raw)
            .key_id("KeyId", "keyId", true)
            .required(&["Policy"], "policy")
            .string_len(&["Policy"], "policy", limits::POLICY)
            .string_len(&["PolicyName"], "policyName", (1, 128))
            .finish()?;
        let req: KeyPolicyRequest = typed(raw)?;
        Self::check_policy_name(req.policy_name.as_deref())?;
        let policy = required_str(&req.policy, "policy")?;
        Policy::parse(policy)
            .map_err(|e| err("MalformedPolicyDocumentException", e.to_string()))?;
        let mut store = self.lock()?;
        let id = store.resolve(req.key_id.as_deref().unwrap_or_default())?;
        let key = Self::lookup(&store, &id)?;
        self.authorize(&store, key, "kms:PutKeyPolicy", PolicyInputs::default())?;
        if key.state == KeyState::PendingDeletion {
            return Err(err(
                "KMSInvalidStateException",
                format!("{} is pending deletion.", store.key_arn(&id)),
            ));
        }
        if let Some(k) = store.key_mut(&id) {
            k.policy = policy.to_owned();
        }
        self.persist(&store)?;
        tracing::info!(key = %store.key_arn(&id), "PutKeyPolicy");
        Ok(json!({}))
    }

    fn get_key_policy(&self, raw: &Map<String, Value>) -> Result<Value, KmsError> {
        Check::new(raw)
            .key_id("KeyId", "keyId", true)
            .string_len(&["PolicyName"], "policyName", (1, 128))
            .finish()?;
        let req: KeyPolicyRequest = typed(raw)?;
        Self::check_policy_name(req.policy_name.as_deref())?;
        let store = self.lock()?;
        let id = store.resolve(req.key_id.as_deref().unwrap_or_default())?;
        let key = Self::lookup(&store, &id)?;
        self.authorize(&store, key, "kms:GetKeyPolicy", PolicyInputs::default())?;
        Ok(json!({"Policy": key.policy, "PolicyName": "default"}))
    }
}

fn invalid_ciphertext() -> KmsError {
    // Real KMS sends this error without a message.
    err("InvalidCiphertextException", "")
}

/// Generates a data key pair: (PKCS#8 v1 DER private key, DER
/// SubjectPublicKeyInfo), the encodings `GenerateDataKeyPair` returns.
fn generate_key_pair(spec: DataKeyPairSpec) -> Result<(Zeroizing<Vec<u8>>, Vec<u8>), KmsError> {
    use aws_lc_rs::encoding::AsDer as _;
    use aws_lc_rs::rsa::{KeyPair as RsaKeyPair, KeySize};
    use aws_lc_rs::signature::{self, EcdsaKeyPair, Ed25519KeyPair, KeyPair as _};
    let fail = |what: &str| internal(format!("{what} key pair generation failed"));
    let rsa = |size: KeySize| -> Result<(Zeroizing<Vec<u8>>, Vec<u8>), KmsError> {
        let kp = RsaKeyPair::generate(size).map_err(|_| fail("RSA"))?;
        let private =
            aws_lc_rs::encoding::AsDer::<aws_lc_rs::encoding::Pkcs8V1Der<'_>>::as_der(&kp)
                .map_err(|_| fail("RSA"))?;
        let public = kp.public_key().as_der().map_err(|_| fail("RSA"))?;
        Ok((
            Zeroizing::new(private.as_ref().to_vec()),
            public.as_ref().to_vec(),
        ))
    };
    let ec = |alg: &'static signature::EcdsaSigningAlgorithm| -> Result<(Zeroizing<Vec<u8>>, Vec<u8>), KmsError> {
        let kp = EcdsaKeyPair::generate(alg).map_err(|_| fail("EC"))?;
        let private = kp.to_pkcs8v1().map_err(|_| fail("EC"))?;
        let public = kp.public_key().as_der().map_err(|_| fail("EC"))?;
        Ok((Zeroizing::new(private.as_ref().to_vec()), public.as_ref().to_vec()))
    };
    match spec {
        DataKeyPairSpec::Rsa2048 => rsa(KeySize::Rsa2048),
        DataKeyPairSpec::Rsa3072 => rsa(KeySize::Rsa3072),
        DataKeyPairSpec::Rsa4096 => rsa(KeySize::Rsa4096),
        DataKeyPairSpec::EccNistP256 => ec(&signature::ECDSA_P256_SHA256_ASN1_SIGNING),
        DataKeyPairSpec::EccNistP384 => ec(&signature::ECDSA_P384_SHA384_ASN1_SIGNING),
        DataKeyPairSpec::EccNistP521 => ec(&signature::ECDSA_P521_SHA512_ASN1_SIGNING),
        DataKeyPairSpec::EccSecgP256k1 => ec(&signature::ECDSA_P256K1_SHA256_ASN1_SIGNING),
        DataKeyPairSpec::EccNistEdwards25519 => {
            let kp = Ed25519KeyPair::generate().map_err(|_| fail("Ed25519"))?;
            let private = kp.to_pkcs8v1().map_err(|_| fail("Ed25519"))?;
            let public = kp.public_key().as_der().map_err(|_| fail("Ed25519"))?;
            Ok((
                Zeroizing::new(private.as_ref().to_vec()),
                public.as_ref().to_vec(),
            ))
        }
        DataKeyPairSpec::Sm2 => Err(err(
            "UnsupportedOperationException",
            "KeyPairSpec SM2 is not supported by keybroker-mock-kms (KMS offers SM2 only in China Regions).",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn engine() -> Engine {
        Engine::new(
            EngineConfig {
                region: "us-east-1".into(),
                account_id: "111122223333".into(),
                caller_principal: "arn:aws:iam::111122223333:root".into(),
                state_file: None,
            },
            Store::new("us-east-1", "111122223333"),
            RecipientVerifier::new([], 300_000).unwrap(),
        )
    }

    fn call(e: &Engine, op: &str, body: Value) -> Result<Value, KmsError> {
        e.handle(op, body.to_string().as_bytes())
    }

    #[test]
    fn validation_messages_use_kms_wording() {
        let e = engine();
        let m = call(
            &e,
            "GenerateDataKey",
            json!({"KeyId": "alias/x", "NumberOfBytes": 1025}),
        )
        .unwrap_err();
        assert_eq!(m.code, "ValidationException");
        assert_eq!(
            m.message,
            "1 validation error detected: Value '1025' at 'numberOfBytes' failed to satisfy constraint: Member must have value less than or equal to 1024"
        );
        let m = call(
            &e,
            "GenerateDataKey",
            json!({"NumberOfBytes": 0, "KeySpec": "AES-256"}),
        )
        .unwrap_err();
        assert!(
            m.message.starts_with("3 validation errors detected: "),
            "{}",
            m.message
        );
        assert!(m.message.contains(
            "Value null at 'keyId' failed to satisfy constraint: Member must not be null"
        ));
        assert!(m.message.contains("Value 'AES-256' at 'keySpec' failed to satisfy constraint: Member must satisfy enum value set: [AES_256, AES_128]"));
        let m = call(&e, "GenerateDataKey", json!({"KeyId": "alias/x"})).unwrap_err();
        assert_eq!(
            m.message,
            "Please specify either number of bytes or key spec."
        );
        let m = call(
            &e,
            "Decrypt",
            json!({"CiphertextBlob": STANDARD.encode(vec![0u8; 6145])}),
        )
        .unwrap_err();
        assert_eq!(
            m.message,
            "1 validation error detected: Value at 'ciphertextBlob' failed to satisfy constraint: Member must have length less than or equal to 6144"
        );
        let tokens: Vec<String> = (0..11).map(|i| format!("t{i}")).collect();
        let m = call(
            &e,
            "GenerateDataKey",
            json!({"KeyId": "k", "KeySpec": "AES_256", "GrantTokens": tokens}),
        )
        .unwrap_err();
        assert!(
            m.message
                .contains("Value '[t0, t1, t2, t3, t4, t5, t6, t7, t8, t9, t10]' at 'grantTokens'"),
            "{}",
            m.message
        );
    }

    #[test]
    fn bad_bodies_are_serialization_errors() {
        let e = engine();
        assert_eq!(
            e.handle("ListKeys", b"{").unwrap_err().code,
            "SerializationException"
        );
        assert_eq!(
            e.handle("ListKeys", b"[1]").unwrap_err().code,
            "SerializationException"
        );
        assert_eq!(
            e.handle("Decrypt", br#"{"CiphertextBlob": "!!notbase64"}"#)
                .unwrap_err()
                .code,
            "SerializationException"
        );
        assert!(e.handle("ListKeys", b"").is_ok());
        assert_eq!(
            e.handle("Frobnicate", b"{}").unwrap_err().code,
            "UnknownOperationException"
        );
    }

    #[test]
    fn key_pairs_of_every_supported_spec_are_pkcs8_and_spki() {
        for spec in DataKeyPairSpec::ALL {
            match generate_key_pair(spec) {
                Ok((private, public)) => {
                    // Both are DER SEQUENCEs.
                    assert_eq!(private[0], 0x30, "{spec:?}");
                    assert_eq!(public[0], 0x30, "{spec:?}");
                    if spec == DataKeyPairSpec::EccNistP256 {
                        use aws_lc_rs::signature::KeyPair as _;
                        let kp = aws_lc_rs::signature::EcdsaKeyPair::from_pkcs8(
                            &aws_lc_rs::signature::ECDSA_P256_SHA256_ASN1_SIGNING,
                            &private,
                        )
                        .unwrap();
                        assert!(public.ends_with(kp.public_key().as_ref()));
                    }
                }
                Err(e) => {
                    assert_eq!(spec, DataKeyPairSpec::Sm2);
                    assert_eq!(e.code, "UnsupportedOperationException");
                }
            }
        }
    }

    #[test]
    fn key_ids_are_v4_uuids() {
        let e = engine();
        let id = e.new_key_id().unwrap();
        assert!(super::super::store::is_key_id(&id), "{id}");
        assert_eq!(id.as_bytes()[14], b'4');
    }
}
