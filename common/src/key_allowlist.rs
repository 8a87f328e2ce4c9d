//! Key pinning for end-to-end mode: which KMS keys the enclave's image
//! allows, and the checks of every request and response against them.
//!
//! In end-to-end mode the parent hands in the AWS credentials, so it can hand
//! in *another account's*: a request for `alias/app` would then resolve to the
//! attacker's key, whose `CiphertextBlob` the attacker can decrypt (issue 10,
//! "Key pinning"; DESIGN.md "Trust model"). The enclave therefore
//!
//! - sends only full ARNs: a short `alias/NAME` or a bare key id is resolved
//!   against the allowlist ([`KeyAllowlist::resolve`]) or refused before
//!   anything is sent;
//! - accepts a response only if its `KeyId` is a key ARN the allowlist admits
//!   ([`KeyAllowlist::check_response_key`]).
//!
//! Entries ([`AllowedKey`]) are key ARNs (`arn:aws:kms:REGION:ACCOUNT:key/ID`,
//! admitting only themselves), alias ARNs
//! (`arn:aws:kms:REGION:ACCOUNT:alias/NAME`, admitting the alias and the key
//! ARNs of its account and region, since KMS answers with the key's ARN and an
//! alias can be re-pointed to any key of its account), and
//! `arn:aws:kms:REGION:ACCOUNT:*` (every key of an account and region).
//! Components are compared exactly: partition, region and account must all
//! be equal (`aws` is not `aws-cn`, `us-east-1` is not `us-east-1x`).
//!
//! Sans-I/O: parsing and matching only. Inputs are bounded: an ARN longer
//! than [`MAX_ARN_LEN`] (KMS's `KeyId` limit) is refused.

use core::fmt;

/// Longest key identifier accepted (KMS `KeyId` is 1..=2048 characters).
pub const MAX_ARN_LEN: usize = 2048;

/// Why a key identifier was refused. Carries the (non-secret) identifier.
#[non_exhaustive]
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum KeyPinError {
    /// An allowlist entry or a key identifier is not a KMS ARN (or id) this
    /// parser accepts.
    #[error("invalid KMS key identifier {id:?}: {reason}")]
    Invalid {
        /// The identifier (truncated to 128 characters).
        id: String,
        /// What is wrong.
        reason: &'static str,
    },
    /// A request names a key the allowlist does not admit (refused locally,
    /// nothing was sent).
    #[error("key {0:?} is not in the enclave's key allowlist")]
    RequestKeyNotAllowed(String),
    /// A short alias or bare key id matches no entry, or several.
    #[error("key {id:?} cannot be resolved to one allowed ARN: {reason}")]
    Unresolvable {
        /// The identifier as given.
        id: String,
        /// Why (no match, ambiguous).
        reason: &'static str,
    },
    /// A KMS response names a key the allowlist does not admit (or no key,
    /// or an alias): the response is refused and no plaintext released.
    #[error("KMS response for key {0:?}, which is not an allowed key ARN")]
    ResponseKeyNotAllowed(String),
}

fn shorten(s: &str) -> String {
    s.chars().take(128).collect()
}

/// The resource part of a KMS ARN.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Resource {
    /// `key/ID`: a key id (UUID, or `mrk-` and hex for multi-Region keys).
    Key(String),
    /// `alias/NAME` (the name without `alias/`).
    Alias(String),
    /// `*`: every key of the account and region (allowlist entries only).
    Any,
}

/// A parsed KMS ARN: `arn:PARTITION:kms:REGION:ACCOUNT:RESOURCE`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct KmsArn {
    /// `aws`, `aws-cn`, `aws-us-gov`, ...
    pub partition: String,
    /// e.g. `us-east-1`.
    pub region: String,
    /// 12-digit account id.
    pub account: String,
    /// What the ARN names.
    pub resource: Resource,
}

impl KmsArn {
    /// Parses a KMS key ARN, alias ARN or (with `allow_any`) account ARN.
    ///
    /// # Errors
    /// [`KeyPinError::Invalid`].
    fn parse(s: &str, allow_any: bool) -> Result<Self, KeyPinError> {
        let bad = |reason| KeyPinError::Invalid {
            id: shorten(s),
            reason,
        };
        if s.len() > MAX_ARN_LEN {
            return Err(bad("longer than 2048 characters"));
        }
        let mut parts = s.splitn(6, ':');
        let (Some("arn"), Some(partition), Some(service), Some(region), Some(account), Some(res)) = (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) else {
            return Err(bad(
                "not an ARN (arn:PARTITION:kms:REGION:ACCOUNT:RESOURCE)",
            ));
        };
        if !(partition == "aws"
            || partition
                .strip_prefix("aws-")
                .is_some_and(|p| !p.is_empty() && p.bytes().all(is_lower_or_dash)))
        {
            return Err(bad("unknown partition"));
        }
        if service != "kms" {
            return Err(bad("not a KMS ARN"));
        }
        if region.is_empty()
            || region.len() > 32
            || !region
                .bytes()
                .all(|b| is_lower_or_dash(b) || b.is_ascii_digit())
            || region.starts_with('-')
            || region.ends_with('-')
        {
            return Err(bad("invalid region"));
        }
        if account.len() != 12 || !account.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad("account is not 12 digits"));
        }
        let resource = if res == "*" {
            if !allow_any {
                return Err(bad("a wildcard is allowed only in the allowlist"));
            }
            Resource::Any
        } else if let Some(id) = res.strip_prefix("key/") {
            if !valid_key_id(id) {
                return Err(bad("invalid key id"));
            }
            Resource::Key(id.to_owned())
        } else if let Some(name) = res.strip_prefix("alias/") {
            if !valid_alias_name(name) {
                return Err(bad("invalid alias name"));
            }
            Resource::Alias(name.to_owned())
        } else {
            return Err(bad("resource is not key/ID, alias/NAME or *"));
        };
        Ok(Self {
            partition: partition.to_owned(),
            region: region.to_owned(),
            account: account.to_owned(),
            resource,
        })
    }

    /// Parses a key ARN or alias ARN (no wildcard).
    ///
    /// # Errors
    /// [`KeyPinError::Invalid`].
    pub fn parse_key_or_alias(s: &str) -> Result<Self, KeyPinError> {
        Self::parse(s, false)
    }

    fn same_scope(&self, other: &KmsArn) -> bool {
        self.partition == other.partition
            && self.region == other.region
            && self.account == other.account
    }

    fn with_resource(&self, resource: Resource) -> Self {
        Self {
            resource,
            ..self.clone()
        }
    }
}

impl fmt::Display for KmsArn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "arn:{}:kms:{}:{}:",
            self.partition, self.region, self.account
        )?;
        match &self.resource {
            Resource::Key(id) => write!(f, "key/{id}"),
            Resource::Alias(name) => write!(f, "alias/{name}"),
            Resource::Any => f.write_str("*"),
        }
    }
}

fn is_lower_or_dash(b: u8) -> bool {
    b.is_ascii_lowercase() || b == b'-'
}

/// KMS key ids: a UUID, or `mrk-` and 32 hex digits (multi-Region keys).
fn valid_key_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

/// KMS alias names: 1..=256 of `[A-Za-z0-9/_-]`.
fn valid_alias_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 256
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'/' | b'_' | b'-'))
}

/// One allowlist entry (see the [module docs](self)).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct AllowedKey(KmsArn);

impl AllowedKey {
    /// Parses a key ARN, an alias ARN or `arn:PARTITION:kms:REGION:ACCOUNT:*`.
    ///
    /// # Errors
    /// [`KeyPinError::Invalid`].
    pub fn parse(s: &str) -> Result<Self, KeyPinError> {
        KmsArn::parse(s, true).map(Self)
    }

    /// The parsed ARN.
    pub fn arn(&self) -> &KmsArn {
        &self.0
    }

    /// Whether this entry admits the key ARN `key` (a `Resource::Key`).
    fn admits_key(&self, key: &KmsArn) -> bool {
        match &self.0.resource {
            Resource::Key(_) => self.0 == *key,
            Resource::Alias(_) | Resource::Any => self.0.same_scope(key),
        }
    }

    /// Whether this entry admits the alias ARN `alias` in a request.
    fn admits_alias(&self, alias: &KmsArn) -> bool {
        match &self.0.resource {
            Resource::Key(_) => false,
            Resource::Alias(_) => self.0 == *alias,
            Resource::Any => self.0.same_scope(alias),
        }
    }
}

impl fmt::Display for AllowedKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl core::str::FromStr for AllowedKey {
    type Err = KeyPinError;
    fn from_str(s: &str) -> Result<Self, KeyPinError> {
        Self::parse(s)
    }
}

/// The keys an enclave in end-to-end mode may use (see the
/// [module docs](self)). An empty allowlist admits nothing.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KeyAllowlist {
    entries: Vec<AllowedKey>,
}

impl KeyAllowlist {
    /// An allowlist of `entries`.
    pub fn new(entries: impl IntoIterator<Item = AllowedKey>) -> Self {
        Self {
            entries: entries.into_iter().collect(),
        }
    }

    /// Parses each string as an [`AllowedKey`].
    ///
    /// # Errors
    /// The first [`KeyPinError::Invalid`].
    pub fn parse<S: AsRef<str>>(entries: impl IntoIterator<Item = S>) -> Result<Self, KeyPinError> {
        entries
            .into_iter()
            .map(|s| AllowedKey::parse(s.as_ref()))
            .collect::<Result<Vec<_>, _>>()
            .map(|entries| Self { entries })
    }

    /// The entries.
    pub fn entries(&self) -> &[AllowedKey] {
        &self.entries
    }

    /// Whether there are no entries.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Whether `arn` (a key ARN) is admitted.
    pub fn admits_key_arn(&self, arn: &str) -> bool {
        match KmsArn::parse(arn, false) {
            Ok(a) if matches!(a.resource, Resource::Key(_)) => {
                self.entries.iter().any(|e| e.admits_key(&a))
            }
            _ => false,
        }
    }

    /// The full ARN to send for the `KeyId` a caller gave:
    /// - a key ARN or alias ARN: itself, if admitted;
    /// - `alias/NAME`: the one alias entry of that name, else the alias in
    ///   the one account entry;
    /// - a bare key id: the one key entry with that id, else the key in the
    ///   one account entry.
    ///
    /// # Errors
    /// [`KeyPinError::RequestKeyNotAllowed`] for an ARN not admitted,
    /// [`KeyPinError::Unresolvable`] for a short name with no or several
    /// candidates, [`KeyPinError::Invalid`] for malformed input.
    pub fn resolve(&self, key_id: &str) -> Result<String, KeyPinError> {
        if key_id.starts_with("arn:") {
            let arn = KmsArn::parse(key_id, false)?;
            let ok = match arn.resource {
                Resource::Key(_) => self.entries.iter().any(|e| e.admits_key(&arn)),
                Resource::Alias(_) => self.entries.iter().any(|e| e.admits_alias(&arn)),
                Resource::Any => false,
            };
            return if ok {
                Ok(arn.to_string())
            } else {
                Err(KeyPinError::RequestKeyNotAllowed(shorten(key_id)))
            };
        }
        let unresolvable = |reason| KeyPinError::Unresolvable {
            id: shorten(key_id),
            reason,
        };
        // The entries whose resource is `r`.
        let named = |r: &Resource| -> Vec<&KmsArn> {
            self.entries
                .iter()
                .map(AllowedKey::arn)
                .filter(|a| a.resource == *r)
                .collect()
        };
        let (wanted, named): (Resource, Vec<&KmsArn>) =
            if let Some(name) = key_id.strip_prefix("alias/") {
                if !valid_alias_name(name) {
                    return Err(KeyPinError::Invalid {
                        id: shorten(key_id),
                        reason: "invalid alias name",
                    });
                }
                let r = Resource::Alias(name.to_owned());
                let named = named(&r);
                (r, named)
            } else {
                if !valid_key_id(key_id) {
                    return Err(KeyPinError::Invalid {
                        id: shorten(key_id),
                        reason: "not a key id, alias/NAME or KMS ARN",
                    });
                }
                let r = Resource::Key(key_id.to_owned());
                let named = named(&r);
                (r, named)
            };
        match named.as_slice() {
            [one] => return Ok(one.to_string()),
            [] => {}
            _ => return Err(unresolvable("several allowlist entries match")),
        }
        let accounts: Vec<&KmsArn> = self
            .entries
            .iter()
            .map(AllowedKey::arn)
            .filter(|a| a.resource == Resource::Any)
            .collect();
        match accounts.as_slice() {
            [one] => Ok(one.with_resource(wanted).to_string()),
            [] => Err(unresolvable("no allowlist entry matches")),
            _ => Err(unresolvable(
                "several account entries could hold it; give the full ARN",
            )),
        }
    }

    /// The `KeyId` to send with a `Decrypt` that names none: the one key or
    /// alias entry when the allowlist has exactly one entry of those kinds
    /// and no account entry; `None` otherwise (the caller must name a key).
    pub fn default_decrypt_key(&self) -> Option<String> {
        match self.entries.as_slice() {
            [one] if one.0.resource != Resource::Any => Some(one.to_string()),
            _ => None,
        }
    }

    /// Checks the `KeyId` of a KMS response: present, a key ARN, admitted.
    ///
    /// # Errors
    /// [`KeyPinError::ResponseKeyNotAllowed`].
    pub fn check_response_key(&self, key_id: Option<&str>) -> Result<(), KeyPinError> {
        match key_id {
            Some(k) if self.admits_key_arn(k) => Ok(()),
            Some(k) => Err(KeyPinError::ResponseKeyNotAllowed(shorten(k))),
            None => Err(KeyPinError::ResponseKeyNotAllowed(String::new())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "arn:aws:kms:us-east-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab";
    const OTHER_KEY: &str =
        "arn:aws:kms:us-east-1:111122223333:key/0987dcba-09fe-87dc-65ba-ab0987654321";
    const ALIAS: &str = "arn:aws:kms:us-east-1:111122223333:alias/app";
    const ACCOUNT: &str = "arn:aws:kms:eu-west-1:444455556666:*";

    fn list(entries: &[&str]) -> KeyAllowlist {
        KeyAllowlist::parse(entries).unwrap()
    }

    #[test]
    fn parses_the_three_entry_kinds_and_round_trips() {
        for s in [
            KEY,
            ALIAS,
            ACCOUNT,
            "arn:aws-us-gov:kms:us-gov-west-1:111122223333:key/mrk-1234abcd12ab34cd56ef1234567890ab",
        ] {
            assert_eq!(AllowedKey::parse(s).unwrap().to_string(), s);
        }
        let a = AllowedKey::parse(ALIAS).unwrap();
        assert_eq!(a.arn().resource, Resource::Alias("app".into()));
        assert_eq!(a.arn().account, "111122223333");
    }

    #[test]
    fn malformed_entries_are_refused() {
        for bad in [
            "",
            "alias/app",
            "1234abcd-12ab-34cd-56ef-1234567890ab",
            "arn:aws:kms:us-east-1:111122223333",
            "arn:aws:s3:us-east-1:111122223333:key/x",
            "arn:aws:kms:us-east-1:11112222333:key/x",
            "arn:aws:kms:us-east-1:1111222233334:key/x",
            "arn:aws:kms:US-EAST-1:111122223333:key/x",
            "arn:aws:kms::111122223333:key/x",
            "arn:awsx:kms:us-east-1:111122223333:key/x",
            "arn:aws-:kms:us-east-1:111122223333:key/x",
            "arn:aws:kms:us-east-1:111122223333:key/",
            "arn:aws:kms:us-east-1:111122223333:key/a b",
            "arn:aws:kms:us-east-1:111122223333:alias/",
            "arn:aws:kms:us-east-1:111122223333:keys/x",
            "arn:aws:kms:us-east-1:111122223333:key/*",
        ] {
            assert!(
                matches!(AllowedKey::parse(bad), Err(KeyPinError::Invalid { .. })),
                "{bad:?}"
            );
        }
        let long = format!("{ALIAS}{}", "a".repeat(MAX_ARN_LEN));
        assert!(AllowedKey::parse(&long).is_err());
    }

    #[test]
    fn a_key_entry_admits_only_itself() {
        let l = list(&[KEY]);
        assert!(l.admits_key_arn(KEY));
        assert!(!l.admits_key_arn(OTHER_KEY));
        assert!(l.check_response_key(Some(KEY)).is_ok());
        assert_eq!(
            l.check_response_key(Some(OTHER_KEY)),
            Err(KeyPinError::ResponseKeyNotAllowed(OTHER_KEY.into()))
        );
        assert!(l.check_response_key(None).is_err());
        assert_eq!(
            l.resolve(ALIAS),
            Err(KeyPinError::RequestKeyNotAllowed(ALIAS.into()))
        );
    }

    #[test]
    fn alias_and_account_entries_admit_keys_of_their_account_and_region() {
        let l = list(&[ALIAS, ACCOUNT]);
        assert!(l.admits_key_arn(KEY));
        assert!(l.admits_key_arn(OTHER_KEY));
        assert!(l.admits_key_arn("arn:aws:kms:eu-west-1:444455556666:key/abc"));
        // An alias ARN is never a valid response KeyId.
        assert!(l.check_response_key(Some(ALIAS)).is_err());
        // Another alias in the alias entry's account is not admitted, one in
        // the account entry's is.
        assert!(
            l.resolve("arn:aws:kms:us-east-1:111122223333:alias/other")
                .is_err()
        );
        assert!(
            l.resolve("arn:aws:kms:eu-west-1:444455556666:alias/other")
                .is_ok()
        );
    }

    #[test]
    fn another_account_and_look_alike_partitions_and_regions_are_refused() {
        let l = list(&[ALIAS, KEY]);
        for other in [
            // Another account.
            "arn:aws:kms:us-east-1:999988887777:key/1234abcd-12ab-34cd-56ef-1234567890ab",
            // Same account and id, other partition.
            "arn:aws-cn:kms:us-east-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab",
            // Look-alike regions.
            "arn:aws:kms:us-east-2:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab",
            "arn:aws:kms:us-east-1x:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab",
            // Not a KMS ARN at all, or with a trailing part.
            "arn:aws:kms:us-east-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab:x",
            "1234abcd-12ab-34cd-56ef-1234567890ab",
        ] {
            assert!(!l.admits_key_arn(other), "{other}");
            assert!(l.check_response_key(Some(other)).is_err(), "{other}");
        }
        assert!(matches!(
            l.resolve("arn:aws:kms:us-east-1:999988887777:alias/app"),
            Err(KeyPinError::RequestKeyNotAllowed(_))
        ));
    }

    #[test]
    fn short_names_resolve_to_full_arns_or_are_refused() {
        let l = list(&[ALIAS, KEY]);
        assert_eq!(l.resolve("alias/app").unwrap(), ALIAS);
        assert_eq!(
            l.resolve("1234abcd-12ab-34cd-56ef-1234567890ab").unwrap(),
            KEY
        );
        assert!(matches!(
            l.resolve("alias/other"),
            Err(KeyPinError::Unresolvable { .. })
        ));
        assert!(matches!(
            l.resolve("0987dcba-09fe-87dc-65ba-ab0987654321"),
            Err(KeyPinError::Unresolvable { .. })
        ));
        assert!(matches!(
            l.resolve("alias/bad name"),
            Err(KeyPinError::Invalid { .. })
        ));
        // One account entry: short names resolve into it.
        let acct = list(&[ACCOUNT]);
        assert_eq!(
            acct.resolve("alias/x").unwrap(),
            "arn:aws:kms:eu-west-1:444455556666:alias/x"
        );
        assert_eq!(
            acct.resolve("abc-1").unwrap(),
            "arn:aws:kms:eu-west-1:444455556666:key/abc-1"
        );
        // Two account entries: ambiguous.
        let two = list(&[ACCOUNT, "arn:aws:kms:us-east-1:111122223333:*"]);
        assert!(matches!(
            two.resolve("alias/x"),
            Err(KeyPinError::Unresolvable { .. })
        ));
        // Same alias name in two accounts: ambiguous.
        let dup = list(&[ALIAS, "arn:aws:kms:us-east-1:999988887777:alias/app"]);
        assert!(matches!(
            dup.resolve("alias/app"),
            Err(KeyPinError::Unresolvable { .. })
        ));
        assert!(KeyAllowlist::default().resolve("alias/app").is_err());
        assert!(KeyAllowlist::default().resolve(KEY).is_err());
    }

    #[test]
    fn default_decrypt_key_only_when_unambiguous() {
        assert_eq!(list(&[KEY]).default_decrypt_key().as_deref(), Some(KEY));
        assert_eq!(list(&[ALIAS]).default_decrypt_key().as_deref(), Some(ALIAS));
        assert_eq!(list(&[ACCOUNT]).default_decrypt_key(), None);
        assert_eq!(list(&[KEY, ALIAS]).default_decrypt_key(), None);
    }
}
