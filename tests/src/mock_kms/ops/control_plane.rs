//! The control plane: `CreateKey`, `DescribeKey`, listing, aliases, key
//! state and key policies.

use super::*;

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

impl Engine {
    pub(super) fn metadata(store: &Store, key: &KeyRecord) -> KeyMetadata {
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

    pub(super) fn new_key_id(&self) -> Result<String, KmsError> {
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

    pub(super) fn create_key(&self, raw: &Map<String, Value>) -> Result<Value, KmsError> {
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
                    .map_err(|e| err(KmsErrorCode::MalformedPolicyDocument, e.to_string()))?;
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

    pub(super) fn describe_key(&self, raw: &Map<String, Value>) -> Result<Value, KmsError> {
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
    pub(super) fn page(
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
                .ok_or_else(|| err(KmsErrorCode::InvalidMarker, "The marker is not valid."))?,
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

    pub(super) fn list_keys(&self, raw: &Map<String, Value>) -> Result<Value, KmsError> {
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

    pub(super) fn list_aliases(&self, raw: &Map<String, Value>) -> Result<Value, KmsError> {
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

    pub(super) fn create_alias(&self, raw: &Map<String, Value>) -> Result<Value, KmsError> {
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
                KmsErrorCode::NotAuthorized,
                format!(
                    "Alias {name} cannot be created: the alias/aws/ prefix is reserved for AWS managed keys."
                ),
            ));
        }
        if !valid_alias_name(name) {
            return Err(err(
                KmsErrorCode::Validation,
                format!(
                    "Alias {name} must start with the prefix \"alias/\" followed by 1 to 250 characters of [a-zA-Z0-9/_-]."
                ),
            ));
        }
        if target.starts_with("alias/") || target.contains(":alias/") {
            return Err(err(
                KmsErrorCode::Validation,
                "TargetKeyId must be a key ID or key ARN, not an alias.",
            ));
        }
        let mut store = self.lock()?;
        let id = store.resolve(target)?;
        if store.alias(name).is_some() {
            return Err(err(
                KmsErrorCode::AlreadyExists,
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
                KmsErrorCode::KmsInvalidState,
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

    pub(super) fn delete_alias(&self, raw: &Map<String, Value>) -> Result<Value, KmsError> {
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
                    KmsErrorCode::NotFound,
                    format!("Alias {} is not found.", store.alias_arn(name)),
                )
            })?;
        let key = Self::lookup(&store, &target)?;
        self.authorize(&store, key, "kms:DeleteAlias", PolicyInputs::default())?;
        store.remove_alias(name);
        self.persist(&store)?;
        Ok(json!({}))
    }

    pub(super) fn set_enabled(
        &self,
        raw: &Map<String, Value>,
        enable: bool,
    ) -> Result<Value, KmsError> {
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
                KmsErrorCode::KmsInvalidState,
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

    pub(super) fn schedule_key_deletion(
        &self,
        raw: &Map<String, Value>,
    ) -> Result<Value, KmsError> {
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
                KmsErrorCode::Validation,
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
                KmsErrorCode::KmsInvalidState,
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

    pub(super) fn cancel_key_deletion(&self, raw: &Map<String, Value>) -> Result<Value, KmsError> {
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
                KmsErrorCode::KmsInvalidState,
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

    pub(super) fn check_policy_name(name: Option<&str>) -> Result<(), KmsError> {
        match name {
            None | Some("default") => Ok(()),
            Some(other) => Err(err(
                KmsErrorCode::NotFound,
                format!("Policy {other} does not exist: the only key policy name is \"default\"."),
            )),
        }
    }

    pub(super) fn put_key_policy(&self, raw: &Map<String, Value>) -> Result<Value, KmsError> {
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
            .map_err(|e| err(KmsErrorCode::MalformedPolicyDocument, e.to_string()))?;
        let mut store = self.lock()?;
        let id = store.resolve(req.key_id.as_deref().unwrap_or_default())?;
        let key = Self::lookup(&store, &id)?;
        self.authorize(&store, key, "kms:PutKeyPolicy", PolicyInputs::default())?;
        if key.state == KeyState::PendingDeletion {
            return Err(err(
                KmsErrorCode::KmsInvalidState,
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

    pub(super) fn get_key_policy(&self, raw: &Map<String, Value>) -> Result<Value, KmsError> {
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
