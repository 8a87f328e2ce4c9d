//! The KMS key policy that binds a key to an enclave image.
//!
//! `keybroker-proxy policy` writes this document; operators attach it with
//! `aws kms create-key --policy file://...` or `aws kms put-key-policy`. It
//! is what really guards the keys (DESIGN.md, trust model): the parent
//! instance holds the AWS credentials, so KMS itself must refuse to return
//! plaintext to anything but an enclave that proves, with a signed NSM
//! attestation document in the request's `Recipient`, that it runs one of
//! the listed images.
//!
//! # The statements
//!
//! Every statement has a `Sid` that says what it is for.
//!
//! 1. `KeyAdministratorsManageTheKeyButCannotUseIt` (Allow, key
//!    administrators): AWS's default "Allow access for Key Administrators"
//!    action list ([`ADMIN_ACTIONS`]) with one change: `kms:Create*` is
//!    narrowed to `kms:CreateAlias`, because `kms:Create*` includes
//!    `kms:CreateGrant`, and a grant can give any principal `kms:Decrypt`
//!    without the key policy's attestation conditions. No cryptographic
//!    operation is allowed. Administrators keep `kms:PutKeyPolicy`, so the
//!    key can never be locked out (KMS's lockout safety check at
//!    `CreateKey`/`PutKeyPolicy` requires the caller to be able to put the
//!    policy again; run those calls as one of the administrators).
//! 2. `ParentMayCallOperationsThatReturnNoPlaintext` (Allow, the parent
//!    principal): [`WITHOUT_PLAINTEXT_ACTIONS`], without conditions.
//! 3. `PlaintextOnlyToAttestedEnclaveImage<N>` (Allow, the parent principal),
//!    one per image: [`PLAINTEXT_ACTIONS`] only with
//!    `StringEqualsIgnoreCase` on `kms:RecipientAttestation:ImageSha384`
//!    (PCR0) and `kms:RecipientAttestation:PCR<n>` for every other PCR given
//!    for that image. Conditions of one statement are ANDed; one statement
//!    per image means a rollout with two images admits exactly those two
//!    measurement sets, never a mix of their PCRs. Without a `Recipient`
//!    the keys are absent and the condition is false (AWS KMS Developer
//!    Guide, "Condition keys for Nitro Enclaves").
//! 4. `DenyParentPlaintextUnlessAttestedImage` (Deny, the parent
//!    principal): [`PLAINTEXT_ACTIONS`] when
//!    `StringNotEqualsIgnoreCase` `kms:RecipientAttestation:ImageSha384` is
//!    none of the images' PCR0. A negated operator is true when the key is
//!    absent, so this explicit deny applies to every request without an
//!    attestation document as well as to other images. It keeps holding if
//!    someone later adds a broader Allow (an IAM policy through an account
//!    statement, or a grant): an explicit deny wins over every allow.
//! 5. `DenyParentEncryptReEncryptAndGrants` (Deny, the parent principal):
//!    [`PARENT_DENIED_ACTIONS`]. `kms:ReEncryptFrom` would let the parent
//!    re-encrypt a data key under a KMS key it controls and decrypt it
//!    there; `kms:Encrypt`/`kms:ReEncryptTo` would let it mint ciphertexts
//!    of data keys it chose (in the end-to-end mode the enclave would take
//!    them for KMS-generated keys; in broker mode the parent is trusted for
//!    integrity anyway, DESIGN.md); `kms:CreateGrant` would let it grant
//!    itself uses outside this policy.
//!
//! Not emitted, on purpose: AWS's default statement "Enable IAM User
//! Permissions" (account root, `kms:*`). It delegates the key to IAM, so any
//! IAM policy granting the parent role `kms:Decrypt` would release plaintext
//! without attestation. With this policy IAM policies in the key's account
//! cannot add permissions; a parent role in another account additionally
//! needs an IAM policy in its own account (cross-account access needs both).
//!
//! `kms:GenerateRandom` is not in the policy: it is not an operation on a
//! key, so a key policy cannot allow or restrict it; KMS authorizes it with
//! IAM policies only (resource `*`). To restrict it to attested enclaves,
//! give the parent role an IAM policy with the same `ImageSha384`
//! condition. (The proxy already refuses it without `Recipient`.)
//! `kms:DeriveSharedSecret` accepts a `Recipient` too, on key-agreement
//! keys: it is among the attested actions, so the same policy binds an ECC
//! `KEY_AGREEMENT` key to the image.
//!
//! # Debug-mode enclaves
//!
//! An enclave started with `--debug-mode` attests all-zero PCRs, and anyone
//! who can start an enclave on the parent can start one in debug mode and
//! read its memory. A policy that admits zeros therefore admits everyone,
//! so all-zero PCR values are refused ([`Error::KeyPolicy`]). There is no
//! switch to allow them: for development use the mock KMS, or a separate
//! key with a hand-written policy.
//!
//! These PCR rules (48-byte SHA-384 values, indices `0..=31`, lower-case
//! hex, no all-zero value) and the condition keys have one home,
//! [`keybroker_common::measurements`], which the proxy's admission policy
//! and the mock KMS use as well: what the proxy admits is what this policy
//! admits.

use std::collections::BTreeMap;

use keybroker_common::measurements::{self, MeasurementError, PcrIndex, PcrValue};
use serde::Serialize;

use crate::error::{Error, Result};

/// Length of a SHA-384 PCR value in bytes (Nitro Enclaves PCRs); the one
/// definition is [`keybroker_common::measurements::PCR_LEN`].
pub const PCR_LEN: usize = measurements::PCR_LEN;

pub use keybroker_common::measurements::MAX_NITRO_CLI_JSON_LEN;

/// Largest ARN accepted (the IAM limit for an ARN in a policy).
pub const MAX_ARN_LEN: usize = 2048;

/// The condition key for PCR0 (the enclave image file's SHA-384), as the KMS
/// Developer Guide names it; the one definition is
/// [`keybroker_common::measurements::IMAGE_SHA384_CONDITION_KEY`].
pub const IMAGE_SHA384_KEY: &str = measurements::IMAGE_SHA384_CONDITION_KEY;

/// Operations that return plaintext key material unless the request has a
/// `Recipient`: the three on symmetric keys and `kms:DeriveSharedSecret` on
/// key-agreement keys (plus the key-less `GenerateRandom`, see the
/// [module docs](self)). An action that does not apply to the key's type is
/// harmless in its policy, so one policy serves both kinds of key.
pub const PLAINTEXT_ACTIONS: [&str; 4] = [
    "kms:Decrypt",
    "kms:DeriveSharedSecret",
    "kms:GenerateDataKey",
    "kms:GenerateDataKeyPair",
];

/// Operations the parent may call without attestation: none returns
/// plaintext (`kms:GetPublicKey` gives a key-agreement key's public half,
/// which the other party needs).
pub const WITHOUT_PLAINTEXT_ACTIONS: [&str; 4] = [
    "kms:DescribeKey",
    "kms:GenerateDataKeyWithoutPlaintext",
    "kms:GenerateDataKeyPairWithoutPlaintext",
    "kms:GetPublicKey",
];

/// Operations explicitly denied to the parent principal (see statement 5 in
/// the [module docs](self)).
pub const PARENT_DENIED_ACTIONS: [&str; 3] = ["kms:Encrypt", "kms:ReEncrypt*", "kms:CreateGrant"];

/// The key administrators' actions: AWS's default key-administrator list
/// ("Default key policy", KMS Developer Guide) with `kms:Create*` narrowed
/// to `kms:CreateAlias` (no `kms:CreateGrant`).
pub const ADMIN_ACTIONS: [&str; 15] = [
    "kms:CreateAlias",
    "kms:Describe*",
    "kms:Enable*",
    "kms:List*",
    "kms:Put*",
    "kms:Update*",
    "kms:Revoke*",
    "kms:Disable*",
    "kms:Get*",
    "kms:Delete*",
    "kms:TagResource",
    "kms:UntagResource",
    "kms:ScheduleKeyDeletion",
    "kms:CancelKeyDeletion",
    "kms:RotateKeyOnDemand",
];

fn invalid(msg: impl Into<String>) -> Error {
    Error::KeyPolicy(msg.into())
}

fn measurement(e: MeasurementError) -> Error {
    invalid(e.to_string())
}

/// The measurements of one enclave image (EIF): PCR0 and optionally other
/// PCRs, as the generator takes them.
///
/// A thin wrapper over
/// [`keybroker_common::measurements::ImageMeasurements`], which holds the
/// rules (48-byte SHA-384 values, no all-zero debug-mode value, indices
/// `0..=31`, lower-case hex); this type keeps the generator's hex-string
/// API and its [`Error::KeyPolicy`] errors for the CLI.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageMeasurements(measurements::ImageMeasurements);

impl ImageMeasurements {
    /// An image identified by its PCR0 (hex, either case).
    pub fn new(pcr0_hex: &str) -> Result<Self> {
        let pcr0 = PcrValue::parse(PcrIndex::IMAGE, pcr0_hex).map_err(measurement)?;
        Ok(ImageMeasurements(measurements::ImageMeasurements::new(
            pcr0,
        )))
    }

    /// Also requires PCR `index` (1..=31; use [`ImageMeasurements::new`]
    /// for PCR0) to equal `hex_value`. A PCR given twice is an error.
    pub fn with_pcr(self, index: u8, hex_value: &str) -> Result<Self> {
        let index = PcrIndex::new(index).map_err(measurement)?;
        if index == PcrIndex::IMAGE {
            return Err(invalid(
                "PCR index 0: expected 1..=31 (PCR0 is the image itself)",
            ));
        }
        let value = PcrValue::parse(index, hex_value).map_err(measurement)?;
        self.0
            .with_pcr(index, value)
            .map(ImageMeasurements)
            .map_err(measurement)
    }

    /// PCR0, lower-case hex.
    pub fn pcr0(&self) -> &str {
        self.0.image_sha384().as_hex()
    }

    /// Every PCR of the image (PCR0 first), lower-case hex.
    pub fn pcrs(&self) -> impl Iterator<Item = (u8, &str)> {
        self.0.pcrs().map(|(i, v)| (i.get(), v.as_hex()))
    }

    /// The shared measurement type (for matching documents and building
    /// the proxy's allowed images from the same values).
    pub fn measurements(&self) -> &measurements::ImageMeasurements {
        &self.0
    }

    /// Reads the measurements from the JSON that `nitro-cli build-enclave`,
    /// `nitro-cli describe-eif` and `nitro-cli sign-eif` print; see
    /// [`keybroker_common::measurements::ImageMeasurements::from_nitro_cli_json`]
    /// for the accepted forms and checks.
    pub fn from_nitro_cli_json(text: &str) -> Result<Self> {
        measurements::ImageMeasurements::from_nitro_cli_json(text)
            .map(ImageMeasurements)
            .map_err(measurement)
    }
}

impl From<measurements::ImageMeasurements> for ImageMeasurements {
    fn from(m: measurements::ImageMeasurements) -> Self {
        ImageMeasurements(m)
    }
}

/// A validated IAM principal ARN: `arn:PARTITION:iam::ACCOUNT:root`,
/// `...:role/NAME` or `...:user/NAME` (what a key policy's
/// `Principal.AWS` names).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IamPrincipal {
    arn: String,
    partition: String,
    account: String,
}

impl IamPrincipal {
    /// Parses and checks an ARN. A role *session* ARN
    /// (`arn:aws:sts::ACCOUNT:assumed-role/ROLE/SESSION`, what
    /// `aws sts get-caller-identity` prints on an instance) is refused with
    /// the role ARN to use instead.
    pub fn parse(arn: &str) -> Result<Self> {
        let arn = arn.trim();
        if arn.len() > MAX_ARN_LEN {
            return Err(invalid(format!("ARN longer than {MAX_ARN_LEN} characters")));
        }
        let parts: Vec<&str> = arn.splitn(6, ':').collect();
        let [prefix, partition, service, region, account, resource] = parts.as_slice() else {
            return Err(invalid(format!(
                "{arn:?} is not an ARN (expected arn:aws:iam::ACCOUNT:role/NAME)"
            )));
        };
        let partition_ok = *partition == "aws"
            || partition.strip_prefix("aws-").is_some_and(|p| {
                !p.is_empty() && p.bytes().all(|b| b.is_ascii_lowercase() || b == b'-')
            });
        if *prefix != "arn" || !partition_ok {
            return Err(invalid(format!(
                "{arn:?} is not an AWS ARN (expected arn:aws:iam::ACCOUNT:role/NAME)"
            )));
        }
        if !(account.len() == 12 && account.bytes().all(|b| b.is_ascii_digit())) {
            return Err(invalid(format!("{arn:?}: the account must be 12 digits")));
        }
        if *service == "sts"
            && let Some(rest) = resource.strip_prefix("assumed-role/")
        {
            let role = rest.split('/').next().unwrap_or_default();
            return Err(invalid(format!(
                "{arn:?} is a role session; key policies name the role: \
                 arn:{partition}:iam::{account}:role/{role} (add the role's path if it has one)"
            )));
        }
        if *service != "iam" || !region.is_empty() {
            return Err(invalid(format!(
                "{arn:?} is not an IAM principal ARN (expected arn:{partition}:iam::{account}:role/NAME)"
            )));
        }
        let name_ok = |name: &str| {
            !name.is_empty()
                && !name.ends_with('/')
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"+=,.@_-/".contains(&b))
        };
        let resource_ok = *resource == "root"
            || resource.strip_prefix("role/").is_some_and(name_ok)
            || resource.strip_prefix("user/").is_some_and(name_ok);
        if !resource_ok {
            return Err(invalid(format!(
                "{arn:?}: expected root, role/NAME or user/NAME after the account (no wildcards)"
            )));
        }
        Ok(IamPrincipal {
            arn: arn.to_owned(),
            partition: (*partition).to_owned(),
            account: (*account).to_owned(),
        })
    }

    /// The ARN as given (trimmed).
    pub fn arn(&self) -> &str {
        &self.arn
    }

    /// The 12-digit account id.
    pub fn account(&self) -> &str {
        &self.account
    }

    /// Whether this is an account's root principal (`...:root`), which in a
    /// key policy means "every principal of the account that an IAM policy
    /// allows".
    pub fn is_account_root(&self) -> bool {
        self.arn.ends_with(":root")
    }
}

/// What the generator needs; [`EnclaveKeyPolicy::document`] makes the
/// policy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EnclaveKeyPolicy {
    principal: IamPrincipal,
    images: Vec<ImageMeasurements>,
    key_admins: Vec<IamPrincipal>,
    account_id: Option<String>,
}

impl EnclaveKeyPolicy {
    /// A policy for the parent principal `principal` (the instance role the
    /// proxy runs as, `arn:aws:iam::ACCOUNT:role/NAME`) and the enclave
    /// `images` (at least one; two or more during a rollout).
    pub fn new(principal: &str, images: Vec<ImageMeasurements>) -> Result<Self> {
        if images.is_empty() {
            return Err(invalid("at least one enclave image (PCR0) is required"));
        }
        Ok(EnclaveKeyPolicy {
            principal: IamPrincipal::parse(principal)?,
            images,
            key_admins: Vec::new(),
            account_id: None,
        })
    }

    /// Adds a key administrator (repeatable). Without any, the key's
    /// account root administers the key (IAM policies of that account
    /// decide who may). The parent principal itself cannot be an
    /// administrator unless it is the account root: an administrator can
    /// rewrite the policy.
    pub fn with_key_admin(mut self, arn: &str) -> Result<Self> {
        let admin = IamPrincipal::parse(arn)?;
        if admin.arn == self.principal.arn && !admin.is_account_root() {
            return Err(invalid(format!(
                "{} is the parent principal; it cannot also administer the key (an \
                 administrator can rewrite the policy and drop the attestation conditions)",
                admin.arn
            )));
        }
        if !self.key_admins.contains(&admin) {
            self.key_admins.push(admin);
        }
        Ok(self)
    }

    /// The account that owns the key (default: the parent principal's). It
    /// names the default administrator, the account root.
    pub fn with_account_id(mut self, account_id: &str) -> Result<Self> {
        let id = account_id.trim();
        if !(id.len() == 12 && id.bytes().all(|b| b.is_ascii_digit())) {
            return Err(invalid(format!("account id {id:?} is not 12 digits")));
        }
        self.account_id = Some(id.to_owned());
        Ok(self)
    }

    /// The enclave images the policy admits.
    pub fn images(&self) -> &[ImageMeasurements] {
        &self.images
    }

    /// The key administrators' ARNs: the ones given, or the key account's
    /// root.
    pub fn admin_arns(&self) -> Vec<String> {
        if self.key_admins.is_empty() {
            let account = self
                .account_id
                .as_deref()
                .unwrap_or(&self.principal.account);
            vec![format!(
                "arn:{}:iam::{account}:root",
                self.principal.partition
            )]
        } else {
            self.key_admins.iter().map(|a| a.arn.clone()).collect()
        }
    }

    /// Things an operator should know about these inputs that are not
    /// errors (the CLI prints them on standard error).
    pub fn warnings(&self) -> Vec<String> {
        let mut out = Vec::new();
        if self.principal.is_account_root() {
            out.push(format!(
                "the parent principal {} is an account root: every principal of that account \
                 whose IAM policies allow it may use the key through an attested enclave; name \
                 the parent instance's role instead",
                self.principal.arn
            ));
        }
        if self.key_admins.is_empty() {
            out.push(format!(
                "no --key-admin: {} administers the key, so IAM policies of that account decide \
                 who may change this policy",
                self.admin_arns().join(", ")
            ));
        }
        if let Some(account) = &self.account_id
            && *account != self.principal.account
        {
            out.push(format!(
                "the parent principal is in account {}, the key in {account}: the parent \
                 role also needs an IAM policy in its own account allowing these KMS actions \
                 on this key",
                self.principal.account
            ));
        }
        out
    }

    /// The key policy document.
    pub fn document(&self) -> KeyPolicyDocument {
        let parent = Principal::one(self.principal.arn.clone());
        let mut statements = vec![
            PolicyStatement {
                sid: "KeyAdministratorsManageTheKeyButCannotUseIt".into(),
                effect: Effect::Allow,
                principal: Principal {
                    aws: OneOrMany::from_vec(self.admin_arns()),
                },
                action: OneOrMany::from_strs(&ADMIN_ACTIONS),
                resource: "*",
                condition: None,
            },
            PolicyStatement {
                sid: "ParentMayCallOperationsThatReturnNoPlaintext".into(),
                effect: Effect::Allow,
                principal: parent.clone(),
                action: OneOrMany::from_strs(&WITHOUT_PLAINTEXT_ACTIONS),
                resource: "*",
                condition: None,
            },
        ];
        for (n, image) in self.images.iter().enumerate() {
            let keys: BTreeMap<String, OneOrMany> = image
                .measurements()
                .condition_values()
                .map(|(key, v)| (key, OneOrMany::One(v.to_owned())))
                .collect();
            statements.push(PolicyStatement {
                sid: format!("PlaintextOnlyToAttestedEnclaveImage{}", n + 1),
                effect: Effect::Allow,
                principal: parent.clone(),
                action: OneOrMany::from_strs(&PLAINTEXT_ACTIONS),
                resource: "*",
                condition: Some(BTreeMap::from([(
                    "StringEqualsIgnoreCase".to_owned(),
                    keys,
                )])),
            });
        }
        let mut pcr0s: Vec<String> = Vec::new();
        for image in &self.images {
            if !pcr0s.iter().any(|p| p == image.pcr0()) {
                pcr0s.push(image.pcr0().to_owned());
            }
        }
        statements.push(PolicyStatement {
            sid: "DenyParentPlaintextUnlessAttestedImage".into(),
            effect: Effect::Deny,
            principal: parent.clone(),
            action: OneOrMany::from_strs(&PLAINTEXT_ACTIONS),
            resource: "*",
            condition: Some(BTreeMap::from([(
                "StringNotEqualsIgnoreCase".to_owned(),
                BTreeMap::from([(IMAGE_SHA384_KEY.to_owned(), OneOrMany::from_vec(pcr0s))]),
            )])),
        });
        statements.push(PolicyStatement {
            sid: "DenyParentEncryptReEncryptAndGrants".into(),
            effect: Effect::Deny,
            principal: parent,
            action: OneOrMany::from_strs(&PARENT_DENIED_ACTIONS),
            resource: "*",
            condition: None,
        });
        KeyPolicyDocument {
            version: "2012-10-17",
            id: "keybroker-enclave-key-policy",
            statement: statements,
        }
    }
}

/// The condition key for PCR `index`: [`IMAGE_SHA384_KEY`] for PCR0, else
/// `kms:RecipientAttestation:PCR<index>` (one definition:
/// [`keybroker_common::measurements::PcrIndex::condition_key`]).
pub fn condition_key(index: u8) -> String {
    match PcrIndex::new(index) {
        Ok(index) => index.condition_key(),
        Err(_) => format!("{}{index}", measurements::PCR_CONDITION_KEY_PREFIX),
    }
}

/// A key policy document (IAM policy grammar, as KMS `PutKeyPolicy`
/// accepts it). Serializes with the members in the conventional order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct KeyPolicyDocument {
    /// Policy language version, `2012-10-17`.
    pub version: &'static str,
    /// Policy id (informational).
    pub id: &'static str,
    /// The statements.
    pub statement: Vec<PolicyStatement>,
}

impl KeyPolicyDocument {
    /// The document as pretty-printed JSON.
    pub fn to_json_pretty(&self) -> Result<String> {
        serde_json::to_string_pretty(self).map_err(|e| invalid(format!("JSON output: {e}")))
    }

    /// The document as a JSON value (object members sorted by name).
    pub fn to_value(&self) -> Result<serde_json::Value> {
        serde_json::to_value(self).map_err(|e| invalid(format!("JSON output: {e}")))
    }

    /// The statement with this `Sid`.
    pub fn statement(&self, sid: &str) -> Option<&PolicyStatement> {
        self.statement.iter().find(|s| s.sid == sid)
    }
}

/// `Effect` of a statement.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Effect {
    /// `"Allow"`.
    Allow,
    /// `"Deny"`.
    Deny,
}

/// `Principal`: `{"AWS": ARN or [ARN, ...]}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Principal {
    /// The IAM principal ARNs.
    #[serde(rename = "AWS")]
    pub aws: OneOrMany,
}

impl Principal {
    fn one(arn: String) -> Self {
        Principal {
            aws: OneOrMany::One(arn),
        }
    }
}

/// A string, or a list when there are several (the policy grammar's
/// shorthand).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum OneOrMany {
    /// One value.
    One(String),
    /// Several values (ORed in a condition).
    Many(Vec<String>),
}

impl OneOrMany {
    fn from_vec(mut v: Vec<String>) -> Self {
        if v.len() == 1
            && let Some(one) = v.pop()
        {
            return OneOrMany::One(one);
        }
        OneOrMany::Many(v)
    }

    fn from_strs(v: &[&str]) -> Self {
        Self::from_vec(v.iter().map(|s| (*s).to_owned()).collect())
    }

    /// The values.
    pub fn values(&self) -> Vec<&str> {
        match self {
            OneOrMany::One(s) => vec![s.as_str()],
            OneOrMany::Many(v) => v.iter().map(String::as_str).collect(),
        }
    }
}

/// One statement of a [`KeyPolicyDocument`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct PolicyStatement {
    /// What the statement is for.
    pub sid: String,
    /// Allow or Deny.
    pub effect: Effect,
    /// Who.
    pub principal: Principal,
    /// Which KMS actions.
    pub action: OneOrMany,
    /// `*`: in a key policy, "this key".
    pub resource: &'static str,
    /// Operator -> condition key -> values.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub condition: Option<BTreeMap<String, BTreeMap<String, OneOrMany>>>,
}

#[cfg(test)]
mod tests;
