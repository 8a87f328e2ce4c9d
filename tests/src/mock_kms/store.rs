//! Keys, aliases and policies of the mock KMS, their resolution from the
//! four spellings KMS accepts, and their persistence.
//!
//! # State file (`--state FILE`)
//!
//! JSON, rewritten atomically (temporary file in the same directory, fsync,
//! rename) after every change, created with mode 0600. **It holds the keys'
//! material in base64: treat it as a secret.**
//!
//! ```json
//! {
//!   "format": 1,
//!   "keys": [{"key_id": "<uuid>", "material": "<base64 of 32 bytes>",
//!             "key_spec": "ECC_NIST_P256",  // only for asymmetric keys
//!             "state": "Enabled" | "Disabled" | "PendingDeletion",
//!             "description": "...", "creation_date": 1700000000.0,
//!             "deletion_date": null, "policy": "<policy JSON text>"}],
//!   "aliases": [{"name": "alias/app", "target_key_id": "<uuid>",
//!                "creation_date": 1700000000.0, "last_updated_date": 1700000000.0}]
//! }
//! ```
//!
//! # Seed file (`--seed FILE`)
//!
//! JSON; each key is created at start unless a key with that id already
//! exists (for example from the state file), so fixed ids and material give
//! reproducible ciphertexts across runs and machines:
//!
//! ```json
//! {"keys": [{"key_id": "11111111-2222-3333-4444-555555555555",
//!            "material": "<base64 of exactly 32 bytes>",
//!            "description": "optional",
//!            "aliases": ["alias/app"],
//!            "policy": {"Version": "2012-10-17", "Statement": [...]},
//!            "enabled": true}]}
//! ```
//!
//! `policy` may be a JSON object or a string holding one; it defaults to the
//! KMS default key policy.
//!
//! # Asymmetric keys
//!
//! A key with `key_spec` (`ECC_NIST_P256`, `ECC_NIST_P384`, `ECC_NIST_P521`,
//! `ECC_SECG_P256K1`: `KEY_AGREEMENT`; `RSA_2048`, `RSA_3072`, `RSA_4096`:
//! `ENCRYPT_DECRYPT`) is asymmetric, in the state and the seed file alike:
//! its `material` is the base64 of its unencrypted PKCS#8 DER private key
//! (`openssl genpkey ... -outform DER`), held zeroized like the symmetric
//! material. Without `key_spec` a key is `SYMMETRIC_DEFAULT`.

use std::collections::BTreeMap;
use std::path::Path;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use keybroker_common::kms::{KmsError, KmsErrorCode};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use super::asymmetric::{AsymmetricKey, AsymmetricSpec};
use super::policy::{Policy, default_key_policy};
use crate::Error;

/// KMS key states the mock models ("Key states of AWS KMS keys").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum KeyState {
    /// Usable.
    Enabled,
    /// `DisableKey`: cryptographic operations fail with `DisabledException`.
    Disabled,
    /// `ScheduleKeyDeletion`: operations fail with `KMSInvalidStateException`.
    PendingDeletion,
}

impl KeyState {
    /// The KMS spelling (`KeyMetadata.KeyState`).
    pub const fn as_str(self) -> &'static str {
        match self {
            KeyState::Enabled => "Enabled",
            KeyState::Disabled => "Disabled",
            KeyState::PendingDeletion => "PendingDeletion",
        }
    }
}

/// The key material of a KMS key.
#[derive(Clone)]
pub enum KeyMaterial {
    /// `SYMMETRIC_DEFAULT` (`ENCRYPT_DECRYPT`): 256-bit AES key material.
    Symmetric(Zeroizing<[u8; 32]>),
    /// An asymmetric key pair (`KeySpec` `ECC_*` or `RSA_*`).
    Asymmetric(AsymmetricKey),
}

/// One KMS key: symmetric (`SYMMETRIC_DEFAULT`, `ENCRYPT_DECRYPT`) or
/// asymmetric (see [`super::asymmetric`]).
pub struct KeyRecord {
    /// The key id (UUID).
    pub key_id: String,
    material: KeyMaterial,
    /// Current state.
    pub state: KeyState,
    /// `Description`.
    pub description: String,
    /// Epoch seconds.
    pub creation_date: f64,
    /// Epoch seconds, set while pending deletion.
    pub deletion_date: Option<f64>,
    /// The key policy document as JSON text (returned verbatim by
    /// `GetKeyPolicy`).
    pub policy: String,
}

impl std::fmt::Debug for KeyRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyRecord")
            .field("key_id", &self.key_id)
            .field("key_spec", &self.key_spec())
            .field("material", &"[REDACTED]")
            .field("state", &self.state)
            .finish_non_exhaustive()
    }
}

impl KeyRecord {
    /// A new enabled symmetric key.
    pub fn new(
        key_id: String,
        material: [u8; 32],
        description: String,
        policy: String,
        now: f64,
    ) -> Self {
        Self::with_material(
            key_id,
            KeyMaterial::Symmetric(Zeroizing::new(material)),
            description,
            policy,
            now,
        )
    }

    /// A new enabled key of any kind.
    pub fn with_material(
        key_id: String,
        material: KeyMaterial,
        description: String,
        policy: String,
        now: f64,
    ) -> Self {
        Self {
            key_id,
            material,
            state: KeyState::Enabled,
            description,
            creation_date: now,
            deletion_date: None,
            policy,
        }
    }

    /// The 256-bit AES key material of a symmetric key; `None` for an
    /// asymmetric key.
    pub fn material(&self) -> Option<&[u8; 32]> {
        match &self.material {
            KeyMaterial::Symmetric(m) => Some(m),
            KeyMaterial::Asymmetric(_) => None,
        }
    }

    /// The key pair of an asymmetric key; `None` for a symmetric key.
    pub fn asymmetric(&self) -> Option<&AsymmetricKey> {
        match &self.material {
            KeyMaterial::Symmetric(_) => None,
            KeyMaterial::Asymmetric(k) => Some(k),
        }
    }

    /// `KeyMetadata.KeySpec`: `SYMMETRIC_DEFAULT`, `ECC_NIST_P256`, ...
    pub fn key_spec(&self) -> &'static str {
        self.asymmetric()
            .map_or("SYMMETRIC_DEFAULT", |k| k.spec().as_str())
    }

    /// `KeyMetadata.KeyUsage`: `ENCRYPT_DECRYPT` or `KEY_AGREEMENT`.
    pub fn key_usage(&self) -> &'static str {
        self.asymmetric()
            .map_or("ENCRYPT_DECRYPT", |k| k.spec().key_usage())
    }

    /// `KeyMaterialId` of the data-key responses (64 lower-case hex
    /// characters, as KMS's): an HMAC-SHA-256 under the key material of the
    /// key id, so it is stable across restarts, differs per key and reveals
    /// nothing about the material. `None` for asymmetric keys (KMS sends it
    /// only for symmetric encryption keys).
    pub fn key_material_id(&self) -> Option<String> {
        let m = self.material()?;
        let tag = aws_lc_rs::hmac::sign(
            &aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, m.as_slice()),
            format!("keybroker-mock-kms KeyMaterialId {}", self.key_id).as_bytes(),
        );
        Some(hex::encode(tag.as_ref()))
    }
}

/// An alias (`alias/Name`) pointing at a key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AliasRecord {
    /// `alias/Name`.
    pub name: String,
    /// Key id of the target key.
    pub target_key_id: String,
    /// Epoch seconds.
    pub creation_date: f64,
    /// Epoch seconds.
    pub last_updated_date: f64,
}

/// Everything the mock knows, for one account and region.
#[derive(Debug)]
pub struct Store {
    region: String,
    account_id: String,
    keys: BTreeMap<String, KeyRecord>,
    aliases: BTreeMap<String, AliasRecord>,
}

/// Whether `s` is a KMS key id: a UUID in 8-4-4-4-12 hex form.
pub fn is_key_id(s: &str) -> bool {
    s.len() == 36
        && s.bytes().enumerate().all(|(i, b)| match i {
            8 | 13 | 18 | 23 => b == b'-',
            _ => b.is_ascii_hexdigit(),
        })
}

impl Store {
    /// An empty store.
    pub fn new(region: impl Into<String>, account_id: impl Into<String>) -> Self {
        Self {
            region: region.into(),
            account_id: account_id.into(),
            keys: BTreeMap::new(),
            aliases: BTreeMap::new(),
        }
    }

    /// `arn:aws:kms:<region>:<account>:key/<id>`.
    pub fn key_arn(&self, key_id: &str) -> String {
        format!(
            "arn:aws:kms:{}:{}:key/{key_id}",
            self.region, self.account_id
        )
    }

    /// `arn:aws:kms:<region>:<account>:alias/<name>` for `alias/<name>`.
    pub fn alias_arn(&self, alias_name: &str) -> String {
        format!(
            "arn:aws:kms:{}:{}:{alias_name}",
            self.region, self.account_id
        )
    }

    /// The account id.
    pub fn account_id(&self) -> &str {
        &self.account_id
    }

    /// Resolves a key id, key ARN, alias name or alias ARN to a key id,
    /// with KMS's `NotFoundException` wording when it names nothing.
    pub fn resolve(&self, key_ref: &str) -> Result<String, KmsError> {
        let not_found_key = |id: &str| {
            KmsError::new(
                KmsErrorCode::NotFound,
                format!("Key '{}' does not exist", self.key_arn(id)),
            )
        };
        let (key_part, via_arn) = match key_ref.strip_prefix("arn:") {
            Some(_) => {
                let prefix = format!("arn:aws:kms:{}:{}:", self.region, self.account_id);
                match key_ref.strip_prefix(&prefix) {
                    Some(rest) => (rest, true),
                    None => {
                        return Err(KmsError::new(
                            KmsErrorCode::NotFound,
                            format!("Invalid arn {key_ref}"),
                        ));
                    }
                }
            }
            None => (key_ref, false),
        };
        if let Some(name) = key_part.strip_prefix("alias/") {
            let alias = format!("alias/{name}");
            return self
                .aliases
                .get(&alias)
                .map(|a| a.target_key_id.clone())
                .ok_or_else(|| {
                    KmsError::new(
                        KmsErrorCode::NotFound,
                        format!("Alias {} is not found.", self.alias_arn(&alias)),
                    )
                });
        }
        let id = match (via_arn, key_part.strip_prefix("key/")) {
            (true, Some(id)) => id,
            (true, None) => {
                return Err(KmsError::new(
                    KmsErrorCode::NotFound,
                    format!("Invalid arn {key_ref}"),
                ));
            }
            (false, _) => key_part,
        };
        if !is_key_id(id) {
            return Err(KmsError::new(
                KmsErrorCode::NotFound,
                format!("Invalid keyId '{key_ref}'"),
            ));
        }
        let id = id.to_ascii_lowercase();
        if self.keys.contains_key(&id) {
            Ok(id)
        } else {
            Err(not_found_key(&id))
        }
    }

    /// The key with id `key_id`.
    pub fn key(&self, key_id: &str) -> Option<&KeyRecord> {
        self.keys.get(key_id)
    }

    /// The key with id `key_id`, mutably.
    pub fn key_mut(&mut self, key_id: &str) -> Option<&mut KeyRecord> {
        self.keys.get_mut(key_id)
    }

    /// Adds a key (replacing none: callers pick fresh ids).
    pub fn insert_key(&mut self, key: KeyRecord) {
        self.keys.insert(key.key_id.clone(), key);
    }

    /// All keys in key-id order.
    pub fn keys(&self) -> impl Iterator<Item = &KeyRecord> {
        self.keys.values()
    }

    /// All aliases in name order.
    pub fn aliases(&self) -> impl Iterator<Item = &AliasRecord> {
        self.aliases.values()
    }

    /// The alias named `name` (`alias/...`).
    pub fn alias(&self, name: &str) -> Option<&AliasRecord> {
        self.aliases.get(name)
    }

    /// Adds or replaces an alias.
    pub fn put_alias(&mut self, alias: AliasRecord) {
        self.aliases.insert(alias.name.clone(), alias);
    }

    /// Removes an alias; whether it existed.
    pub fn remove_alias(&mut self, name: &str) -> bool {
        self.aliases.remove(name).is_some()
    }

    // ---- persistence ----

    /// Loads a state file written by [`Store::save`].
    pub fn load(path: &Path, region: &str, account_id: &str) -> Result<Self, Error> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::State(format!("cannot read {}: {e}", path.display())))?;
        let st: PersistedState = serde_json::from_str(&text).map_err(|e| {
            Error::State(format!(
                "{} is not a mock KMS state file: {e}",
                path.display()
            ))
        })?;
        if st.format != STATE_FORMAT {
            return Err(Error::State(format!(
                "{}: unsupported state format {}",
                path.display(),
                st.format
            )));
        }
        let mut store = Store::new(region, account_id);
        for k in st.keys {
            let material = decode_material(&k.material, k.key_spec.as_deref())
                .map_err(|e| Error::State(format!("key {}: {e}", k.key_id)))?;
            Policy::parse(&k.policy)
                .map_err(|e| Error::State(format!("key {}: bad policy: {e}", k.key_id)))?;
            store.keys.insert(
                k.key_id.clone(),
                KeyRecord {
                    key_id: k.key_id.clone(),
                    material,
                    state: k.state,
                    description: k.description.clone(),
                    creation_date: k.creation_date,
                    deletion_date: k.deletion_date,
                    policy: k.policy.clone(),
                },
            );
        }
        for a in st.aliases {
            if !store.keys.contains_key(&a.target_key_id) {
                return Err(Error::State(format!(
                    "alias {} points to unknown key {}",
                    a.name, a.target_key_id
                )));
            }
            store.aliases.insert(a.name.clone(), a);
        }
        Ok(store)
    }

    /// Writes the state file atomically: a temporary file beside `path`
    /// (mode 0600), fsync, then rename over `path`.
    pub fn save(&self, path: &Path) -> Result<(), Error> {
        let st = PersistedState {
            format: STATE_FORMAT,
            keys: self
                .keys
                .values()
                .map(|k| PersistedKey {
                    key_id: k.key_id.clone(),
                    material: match &k.material {
                        KeyMaterial::Symmetric(m) => STANDARD.encode(m.as_slice()),
                        KeyMaterial::Asymmetric(a) => STANDARD.encode(a.private_pkcs8()),
                    },
                    key_spec: k.asymmetric().map(|a| a.spec().as_str().to_owned()),
                    state: k.state,
                    description: k.description.clone(),
                    creation_date: k.creation_date,
                    deletion_date: k.deletion_date,
                    policy: k.policy.clone(),
                })
                .collect(),
            aliases: self.aliases.values().cloned().collect(),
        };
        let text = Zeroizing::new(
            serde_json::to_string_pretty(&st).map_err(|e| Error::State(e.to_string()))?,
        );
        write_atomically(path, text.as_bytes())
    }

    /// Creates the keys of a seed file that do not exist yet.
    pub fn apply_seed(&mut self, seed: &SeedFile, now: f64) -> Result<(), Error> {
        for k in &seed.keys {
            let id = k.key_id.to_ascii_lowercase();
            if !is_key_id(&id) {
                return Err(Error::Seed(format!("key_id `{}` is not a UUID", k.key_id)));
            }
            let material = decode_material(&k.material, k.key_spec.as_deref())
                .map_err(|e| Error::Seed(format!("key {id}: {e}")))?;
            let policy = match &k.policy {
                None => default_key_policy(&self.account_id),
                Some(serde_json::Value::String(s)) => s.clone(),
                Some(v) => {
                    serde_json::to_string_pretty(v).map_err(|e| Error::Seed(e.to_string()))?
                }
            };
            Policy::parse(&policy)
                .map_err(|e| Error::Seed(format!("key {id}: bad policy: {e}")))?;
            if let Some(existing) = self.keys.get(&id) {
                if !same_material(&existing.material, &material) {
                    return Err(Error::Seed(format!(
                        "key {id} exists in the state with different material"
                    )));
                }
            } else {
                let mut rec = KeyRecord::with_material(
                    id.clone(),
                    material,
                    k.description.clone(),
                    policy,
                    now,
                );
                if !k.enabled {
                    rec.state = KeyState::Disabled;
                }
                self.keys.insert(id.clone(), rec);
            }
            for alias in &k.aliases {
                if !valid_alias_name(alias) {
                    return Err(Error::Seed(format!("`{alias}` is not a valid alias name")));
                }
                match self.aliases.get(alias) {
                    Some(a) if a.target_key_id != id => {
                        return Err(Error::Seed(format!(
                            "alias {alias} already points to key {}",
                            a.target_key_id
                        )));
                    }
                    Some(_) => {}
                    None => {
                        self.aliases.insert(
                            alias.clone(),
                            AliasRecord {
                                name: alias.clone(),
                                target_key_id: id.clone(),
                                creation_date: now,
                                last_updated_date: now,
                            },
                        );
                    }
                }
            }
        }
        Ok(())
    }
}

/// Whether `name` is a valid customer alias name: `alias/` followed by
/// 1..=250 of `[A-Za-z0-9/_-]`, not in the reserved `alias/aws/` namespace
/// (KMS `CreateAlias` constraints).
pub fn valid_alias_name(name: &str) -> bool {
    match name.strip_prefix("alias/") {
        Some(rest) => {
            !rest.is_empty()
                && name.len() <= 256
                && !name.starts_with("alias/aws/")
                && rest
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'/' | b'_' | b'-'))
        }
        None => false,
    }
}

/// Decodes a `material` field: 32 bytes of AES key material without a
/// `key_spec` (or with `SYMMETRIC_DEFAULT`), else the PKCS#8 private key of
/// that asymmetric spec.
fn decode_material(b64: &str, key_spec: Option<&str>) -> Result<KeyMaterial, String> {
    let bytes = Zeroizing::new(
        STANDARD
            .decode(b64.trim())
            .map_err(|_| "material is not valid base64".to_string())?,
    );
    match key_spec {
        None | Some("SYMMETRIC_DEFAULT") => {
            let m = <[u8; 32]>::try_from(bytes.as_slice())
                .map_err(|_| format!("material must be 32 bytes, found {}", bytes.len()))?;
            Ok(KeyMaterial::Symmetric(Zeroizing::new(m)))
        }
        Some(s) => {
            let spec = AsymmetricSpec::from_key_spec(s)
                .ok_or_else(|| format!("key_spec {s} is not one the mock offers"))?;
            Ok(KeyMaterial::Asymmetric(AsymmetricKey::from_pkcs8(
                spec, &bytes,
            )?))
        }
    }
}

fn same_material(a: &KeyMaterial, b: &KeyMaterial) -> bool {
    match (a, b) {
        (KeyMaterial::Symmetric(x), KeyMaterial::Symmetric(y)) => x.as_slice() == y.as_slice(),
        (KeyMaterial::Asymmetric(x), KeyMaterial::Asymmetric(y)) => {
            x.spec() == y.spec() && x.private_pkcs8() == y.private_pkcs8()
        }
        _ => false,
    }
}

fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), Error> {
    use std::io::Write as _;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => std::path::PathBuf::from("."),
    };
    let name = path
        .file_name()
        .ok_or_else(|| Error::State(format!("{} is not a file path", path.display())))?;
    let mut tmp_name = name.to_os_string();
    tmp_name.push(format!(".tmp-{}", std::process::id()));
    let tmp = dir.join(tmp_name);
    let io = |what: &str, e: std::io::Error| Error::State(format!("{what} {}: {e}", tmp.display()));
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        opts.mode(0o600);
    }
    let mut f = opts.open(&tmp).map_err(|e| io("cannot create", e))?;
    f.write_all(bytes).map_err(|e| io("cannot write", e))?;
    f.sync_all().map_err(|e| io("cannot sync", e))?;
    drop(f);
    std::fs::rename(&tmp, path).map_err(|e| {
        Error::State(format!(
            "cannot rename {} to {}: {e}",
            tmp.display(),
            path.display()
        ))
    })
}

const STATE_FORMAT: u32 = 1;

#[derive(Serialize, Deserialize)]
struct PersistedState {
    format: u32,
    keys: Vec<PersistedKey>,
    aliases: Vec<AliasRecord>,
}

#[derive(Serialize, Deserialize)]
struct PersistedKey {
    key_id: String,
    material: String,
    /// Absent for symmetric keys (state files of earlier versions).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    key_spec: Option<String>,
    state: KeyState,
    #[serde(default)]
    description: String,
    creation_date: f64,
    #[serde(default)]
    deletion_date: Option<f64>,
    policy: String,
}

impl Drop for PersistedKey {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.material);
    }
}

/// The seed file format (see the module documentation).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SeedFile {
    /// Keys to create.
    pub keys: Vec<SeedKey>,
}

/// One key of a seed file.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SeedKey {
    /// Fixed key id (UUID).
    pub key_id: String,
    /// Base64 of exactly 32 bytes of AES-256 key material; with an
    /// asymmetric `key_spec`, base64 of the PKCS#8 DER private key.
    pub material: String,
    /// `KeySpec`: absent or `SYMMETRIC_DEFAULT` for a symmetric key, else
    /// one of the asymmetric specs of [`super::asymmetric`].
    #[serde(default)]
    pub key_spec: Option<String>,
    /// `Description`.
    #[serde(default)]
    pub description: String,
    /// Aliases (`alias/...`) to point at the key.
    #[serde(default)]
    pub aliases: Vec<String>,
    /// Key policy (object or JSON string); default policy if absent.
    #[serde(default)]
    pub policy: Option<serde_json::Value>,
    /// `false` creates the key disabled.
    #[serde(default = "yes")]
    pub enabled: bool,
}

impl std::fmt::Debug for SeedKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SeedKey")
            .field("key_id", &self.key_id)
            .field("material", &"[REDACTED]")
            .field("aliases", &self.aliases)
            .finish_non_exhaustive()
    }
}

impl Drop for SeedKey {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.material);
    }
}

fn yes() -> bool {
    true
}

impl SeedFile {
    /// Reads and parses a seed file.
    pub fn load(path: &Path) -> Result<Self, Error> {
        let text = Zeroizing::new(
            std::fs::read_to_string(path)
                .map_err(|e| Error::Seed(format!("cannot read {}: {e}", path.display())))?,
        );
        serde_json::from_str(&text)
            .map_err(|e| Error::Seed(format!("{} is not a valid seed file: {e}", path.display())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "1234abcd-12ab-34cd-56ef-1234567890ab";

    fn store() -> Store {
        let mut s = Store::new("us-east-1", "111122223333");
        s.insert_key(KeyRecord::new(
            ID.into(),
            [3; 32],
            String::new(),
            default_key_policy("111122223333"),
            1.0,
        ));
        s.put_alias(AliasRecord {
            name: "alias/app".into(),
            target_key_id: ID.into(),
            creation_date: 1.0,
            last_updated_date: 1.0,
        });
        s
    }

    #[test]
    fn all_four_spellings_resolve() {
        let s = store();
        for r in [
            ID.to_string(),
            s.key_arn(ID),
            "alias/app".to_string(),
            s.alias_arn("alias/app"),
        ] {
            assert_eq!(s.resolve(&r).unwrap(), ID, "{r}");
        }
    }

    #[test]
    fn unknown_references_are_not_found_with_kms_wording() {
        let s = store();
        let e = s
            .resolve("00000000-0000-0000-0000-000000000000")
            .unwrap_err();
        assert_eq!(e.code, "NotFoundException");
        assert_eq!(
            e.message,
            "Key 'arn:aws:kms:us-east-1:111122223333:key/00000000-0000-0000-0000-000000000000' does not exist"
        );
        let e = s.resolve("alias/nope").unwrap_err();
        assert_eq!(
            e.message,
            "Alias arn:aws:kms:us-east-1:111122223333:alias/nope is not found."
        );
        assert_eq!(
            s.resolve("not-a-key").unwrap_err().message,
            "Invalid keyId 'not-a-key'"
        );
        assert_eq!(
            s.resolve("arn:aws:kms:eu-west-1:111122223333:key/x")
                .unwrap_err()
                .code,
            "NotFoundException"
        );
    }

    #[test]
    fn state_round_trips_through_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        let s = store();
        s.save(&path).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            assert_eq!(
                std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
                0o600
            );
        }
        let back = Store::load(&path, "us-east-1", "111122223333").unwrap();
        assert_eq!(back.key(ID).unwrap().material(), Some(&[3; 32]));
        assert_eq!(back.resolve("alias/app").unwrap(), ID);
        // No temporary file is left behind.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn asymmetric_keys_persist_their_private_key_and_spec() {
        use super::super::asymmetric::RsaSize;
        use keybroker_common::kms::EcdhCurve;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        let mut s = store();
        let ec = AsymmetricKey::generate(AsymmetricSpec::Ecc(EcdhCurve::SecgP256k1)).unwrap();
        let rsa = AsymmetricKey::generate(AsymmetricSpec::Rsa(RsaSize::Rsa2048)).unwrap();
        let (ec_id, rsa_id) = (
            "00000000-0000-4000-8000-000000000001",
            "00000000-0000-4000-8000-000000000002",
        );
        for (id, k) in [(ec_id, &ec), (rsa_id, &rsa)] {
            s.insert_key(KeyRecord::with_material(
                id.into(),
                KeyMaterial::Asymmetric(k.clone()),
                String::new(),
                default_key_policy("111122223333"),
                1.0,
            ));
        }
        s.save(&path).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains("\"key_spec\": \"ECC_SECG_P256K1\""), "{text}");
        let back = Store::load(&path, "us-east-1", "111122223333").unwrap();
        let k = back.key(ec_id).unwrap();
        assert_eq!(k.key_spec(), "ECC_SECG_P256K1");
        assert_eq!(k.key_usage(), "KEY_AGREEMENT");
        assert!(k.material().is_none() && k.key_material_id().is_none());
        assert_eq!(
            k.asymmetric().unwrap().public_key_spki(),
            ec.public_key_spki()
        );
        let k = back.key(rsa_id).unwrap();
        assert_eq!(
            (k.key_spec(), k.key_usage()),
            ("RSA_2048", "ENCRYPT_DECRYPT")
        );
        assert_eq!(k.asymmetric().unwrap().private_pkcs8(), rsa.private_pkcs8());
        // Symmetric keys still have no key_spec in the file and keep theirs.
        let sym = back.key(ID).unwrap();
        assert_eq!(sym.key_spec(), "SYMMETRIC_DEFAULT");
        let id = sym.key_material_id().unwrap();
        assert_eq!(id.len(), 64);
        assert_eq!(Some(id), s.key(ID).unwrap().key_material_id());
        // A seed key with a key_spec whose material does not match it.
        let bad: SeedFile = serde_json::from_value(serde_json::json!({"keys": [{
            "key_id": ID, "key_spec": "ECC_NIST_P384",
            "material": STANDARD.encode(ec.private_pkcs8())
        }]}))
        .unwrap();
        assert!(Store::new("r", "a").apply_seed(&bad, 0.0).is_err());
    }

    #[test]
    fn seed_creates_keys_and_rejects_bad_material() {
        let seed: SeedFile = serde_json::from_value(serde_json::json!({"keys": [{
            "key_id": ID, "material": STANDARD.encode([9u8; 32]), "aliases": ["alias/seeded"], "enabled": false
        }]}))
        .unwrap();
        let mut s = Store::new("us-east-1", "111122223333");
        s.apply_seed(&seed, 5.0).unwrap();
        assert_eq!(s.key(ID).unwrap().state, KeyState::Disabled);
        assert_eq!(s.resolve("alias/seeded").unwrap(), ID);
        // Applying twice is idempotent.
        s.apply_seed(&seed, 6.0).unwrap();

        let bad: SeedFile = serde_json::from_value(serde_json::json!({"keys": [{
            "key_id": ID, "material": STANDARD.encode([9u8; 31])
        }]}))
        .unwrap();
        assert!(Store::new("r", "a").apply_seed(&bad, 0.0).is_err());
    }

    #[test]
    fn alias_names() {
        assert!(valid_alias_name("alias/app-1/x_y"));
        assert!(!valid_alias_name("alias/"));
        assert!(!valid_alias_name("app"));
        assert!(!valid_alias_name("alias/aws/s3"));
        assert!(!valid_alias_name("alias/sp ace"));
    }
}
