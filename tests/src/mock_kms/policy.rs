//! KMS key policies: parsing and evaluation of the IAM policy language subset
//! that KMS key policies use.
//!
//! This module is pure (no I/O, no clock, no logging) so that it can be unit
//! tested on its own and reused to check generated policies. It follows the
//! IAM policy evaluation logic ("Policy evaluation logic" in the IAM User
//! Guide) for a single resource-based policy:
//!
//! - a matching `Deny` statement wins over everything (explicit deny);
//! - otherwise a matching `Allow` statement allows;
//! - otherwise the request is denied (implicit deny).
//!
//! A statement matches when its `Principal`, `Action` (or `NotAction`),
//! `Resource` and every condition match. Supported:
//!
//! - `Principal`: `"*"`, `{"AWS": "*"}`, `{"AWS": <12-digit account id |
//!   arn:aws:iam::<account>:root | exact principal ARN>}` (string or list).
//!   `Service`/`Federated`/`CanonicalUser` principals never match the caller.
//! - `Action` / `NotAction`: string or list, `*` and `?` wildcards, matched
//!   case-insensitively as IAM does.
//! - `Resource`: string or list, wildcards, matched against the key ARN
//!   (KMS key policies normally say `"*"`, meaning "this key").
//! - `Condition` operators `StringEquals`, `StringNotEquals`,
//!   `StringEqualsIgnoreCase`, `StringNotEqualsIgnoreCase`, `StringLike`,
//!   `StringNotLike`, each optionally with the `ForAnyValue:` / `ForAllValues:`
//!   set prefix and the `IfExists` suffix, and `Null`. Condition key names are
//!   case-insensitive (IAM), values string or list (numbers and booleans are
//!   compared as their JSON text).
//!
//! Semantics of a condition (IAM): several operators in one `Condition` block
//! and several keys under one operator are ANDed; several values for one key
//! are ORed. A key absent from the request makes a positive operator false
//! and a negated one (`StringNot...`) true, unless `...IfExists` (true when
//! absent). `ForAllValues:` is true for an absent key, `ForAnyValue:` false.
//! Without a set prefix a multi-valued key matches when any of its values
//! matches (negated: when none does).
//!
//! Anything else (unknown operators, `NotPrincipal`, `NotResource`,
//! policy variables) is rejected at parse time as
//! `MalformedPolicyDocumentException` rather than silently mis-evaluated.

use std::collections::BTreeMap;
use std::fmt;

use keybroker_common::attestation::VerifiedAttestation;
use keybroker_common::measurements;
use serde_json::Value;

/// The policy KMS attaches when `CreateKey` has no `Policy`: the account's
/// root principal may do everything (`kms:*`), which delegates access control
/// to IAM ("Default key policy" in the KMS Developer Guide).
pub fn default_key_policy(account_id: &str) -> String {
    let doc = serde_json::json!({
        "Version": "2012-10-17",
        "Id": "key-default-1",
        "Statement": [{
            "Sid": "Enable IAM User Permissions",
            "Effect": "Allow",
            "Principal": {"AWS": format!("arn:aws:iam::{account_id}:root")},
            "Action": "kms:*",
            "Resource": "*"
        }]
    });
    // Serializing a `Value` built from literals cannot fail; fall back to
    // the compact form anyway rather than panic.
    serde_json::to_string_pretty(&doc).unwrap_or_else(|_| doc.to_string())
}

/// Why a policy document was rejected (KMS answers
/// `MalformedPolicyDocumentException` with this text).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct PolicyError(pub String);

fn malformed(msg: impl Into<String>) -> PolicyError {
    PolicyError(msg.into())
}

/// `Effect` of a statement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Effect {
    /// `"Allow"`
    Allow,
    /// `"Deny"`
    Deny,
}

/// A parsed key policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// The statements in document order.
    pub statements: Vec<Statement>,
}

/// One statement of a policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Statement {
    /// `Sid`, if any.
    pub sid: Option<String>,
    /// `Effect`.
    pub effect: Effect,
    principal: PrincipalSpec,
    actions: ActionSpec,
    /// Resource patterns; empty means "any".
    resources: Vec<String>,
    conditions: Vec<Condition>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum PrincipalSpec {
    Any,
    /// Values of the `AWS` member.
    Aws(Vec<String>),
    /// Only service/federated principals: never the caller.
    Other,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum ActionSpec {
    Action(Vec<String>),
    NotAction(Vec<String>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    StringEquals,
    StringEqualsIgnoreCase,
    StringLike,
    Null,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SetQualifier {
    None,
    ForAnyValue,
    ForAllValues,
}

/// One `operator: {key: values}` entry of a `Condition` block.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Condition {
    /// The operator as written, e.g. `ForAnyValue:StringEquals`.
    operator: String,
    op: Op,
    negated: bool,
    if_exists: bool,
    set: SetQualifier,
    /// The condition key as written.
    key: String,
    values: Vec<String>,
}

impl Policy {
    /// Parses a JSON key policy document. Rejects documents this evaluator
    /// cannot evaluate faithfully.
    pub fn parse(json: &str) -> Result<Self, PolicyError> {
        let doc: Value = serde_json::from_str(json)
            .map_err(|e| malformed(format!("policy is not valid JSON: {e}")))?;
        let obj = doc
            .as_object()
            .ok_or_else(|| malformed("policy must be a JSON object"))?;
        for k in obj.keys() {
            if !matches!(k.as_str(), "Version" | "Id" | "Statement") {
                return Err(malformed(format!("policy has unknown element `{k}`")));
            }
        }
        if let Some(v) = obj.get("Version") {
            match v.as_str() {
                Some("2012-10-17") | Some("2008-10-17") => {}
                _ => return Err(malformed("policy `Version` must be \"2012-10-17\"")),
            }
        }
        let raw = obj
            .get("Statement")
            .ok_or_else(|| malformed("policy has no `Statement`"))?;
        let list: Vec<&Value> = match raw {
            Value::Array(a) => a.iter().collect(),
            Value::Object(_) => vec![raw],
            _ => return Err(malformed("`Statement` must be an object or a list")),
        };
        if list.is_empty() {
            return Err(malformed("policy has an empty `Statement` list"));
        }
        let statements = list
            .into_iter()
            .enumerate()
            .map(|(i, s)| Statement::parse(i, s))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self { statements })
    }
}

fn string_or_list(v: &Value, what: &str) -> Result<Vec<String>, PolicyError> {
    let one = |x: &Value| -> Result<String, PolicyError> {
        match x {
            Value::String(s) => Ok(s.clone()),
            Value::Bool(b) => Ok(b.to_string()),
            Value::Number(n) => Ok(n.to_string()),
            _ => Err(malformed(format!(
                "{what} must be a string or a list of strings"
            ))),
        }
    };
    match v {
        Value::Array(a) => a.iter().map(one).collect(),
        other => Ok(vec![one(other)?]),
    }
}

impl Statement {
    fn parse(index: usize, v: &Value) -> Result<Self, PolicyError> {
        let at = |m: &str| format!("statement #{index}: {m}");
        let obj = v
            .as_object()
            .ok_or_else(|| malformed(at("must be a JSON object")))?;
        for k in obj.keys() {
            match k.as_str() {
                "Sid" | "Effect" | "Principal" | "Action" | "NotAction" | "Resource"
                | "Condition" => {}
                "NotPrincipal" | "NotResource" => {
                    return Err(malformed(at(&format!(
                        "`{k}` is not supported by keybroker-mock-kms"
                    ))));
                }
                _ => return Err(malformed(at(&format!("unknown element `{k}`")))),
            }
        }
        let sid = match obj.get("Sid") {
            None => None,
            Some(Value::String(s)) => Some(s.clone()),
            Some(_) => return Err(malformed(at("`Sid` must be a string"))),
        };
        let effect = match obj.get("Effect").and_then(Value::as_str) {
            Some("Allow") => Effect::Allow,
            Some("Deny") => Effect::Deny,
            _ => return Err(malformed(at("`Effect` must be \"Allow\" or \"Deny\""))),
        };
        let principal = match obj.get("Principal") {
            None => return Err(malformed(at("a key policy statement needs a `Principal`"))),
            Some(Value::String(s)) if s == "*" => PrincipalSpec::Any,
            Some(Value::Object(m)) => {
                let mut aws = Vec::new();
                for (kind, vals) in m {
                    let vals = string_or_list(vals, "`Principal` values")?;
                    match kind.as_str() {
                        "AWS" => aws.extend(vals),
                        "Service" | "Federated" | "CanonicalUser" => {}
                        other => {
                            return Err(malformed(at(&format!(
                                "unknown principal type `{other}`"
                            ))));
                        }
                    }
                }
                if aws.iter().any(|a| a == "*") {
                    PrincipalSpec::Any
                } else if aws.is_empty() {
                    PrincipalSpec::Other
                } else {
                    PrincipalSpec::Aws(aws)
                }
            }
            Some(_) => return Err(malformed(at("`Principal` must be \"*\" or an object"))),
        };
        let actions = match (obj.get("Action"), obj.get("NotAction")) {
            (Some(a), None) => ActionSpec::Action(string_or_list(a, "`Action`")?),
            (None, Some(a)) => ActionSpec::NotAction(string_or_list(a, "`NotAction`")?),
            _ => {
                return Err(malformed(at(
                    "exactly one of `Action` and `NotAction` is required",
                )));
            }
        };
        let resources = match obj.get("Resource") {
            None => Vec::new(),
            Some(r) => string_or_list(r, "`Resource`")?,
        };
        let conditions = match obj.get("Condition") {
            None => Vec::new(),
            Some(Value::Object(ops)) => {
                let mut out = Vec::new();
                for (operator, keys) in ops {
                    let (op, negated, if_exists, set) = parse_operator(operator)
                        .ok_or_else(|| {
                            malformed(at(&format!(
                                "condition operator `{operator}` is not supported by keybroker-mock-kms"
                            )))
                        })?;
                    let keys = keys.as_object().ok_or_else(|| {
                        malformed(at(&format!(
                            "`{operator}` must map condition keys to values"
                        )))
                    })?;
                    for (key, vals) in keys {
                        let values = string_or_list(vals, "condition values")?;
                        if values.iter().any(|v| v.contains("${")) {
                            return Err(malformed(at(
                                "policy variables (`${...}`) are not supported by keybroker-mock-kms",
                            )));
                        }
                        out.push(Condition {
                            operator: operator.clone(),
                            op,
                            negated,
                            if_exists,
                            set,
                            key: key.clone(),
                            values,
                        });
                    }
                }
                out
            }
            Some(_) => return Err(malformed(at("`Condition` must be an object"))),
        };
        Ok(Self {
            sid,
            effect,
            principal,
            actions,
            resources,
            conditions,
        })
    }
}

/// Splits `ForAnyValue:StringNotEqualsIgnoreCaseIfExists` into its parts.
fn parse_operator(raw: &str) -> Option<(Op, bool, bool, SetQualifier)> {
    let (set, rest) = if let Some(r) = raw.strip_prefix("ForAnyValue:") {
        (SetQualifier::ForAnyValue, r)
    } else if let Some(r) = raw.strip_prefix("ForAllValues:") {
        (SetQualifier::ForAllValues, r)
    } else {
        (SetQualifier::None, raw)
    };
    if rest == "Null" {
        return (set == SetQualifier::None).then_some((Op::Null, false, false, set));
    }
    let (rest, if_exists) = match rest.strip_suffix("IfExists") {
        Some(r) => (r, true),
        None => (rest, false),
    };
    let (op, negated) = match rest {
        "StringEquals" => (Op::StringEquals, false),
        "StringNotEquals" => (Op::StringEquals, true),
        "StringEqualsIgnoreCase" => (Op::StringEqualsIgnoreCase, false),
        "StringNotEqualsIgnoreCase" => (Op::StringEqualsIgnoreCase, true),
        "StringLike" => (Op::StringLike, false),
        "StringNotLike" => (Op::StringLike, true),
        _ => return None,
    };
    Some((op, negated, if_exists, set))
}

/// What a request looks like to the policy: who, what, on which key, and the
/// condition keys with their values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestContext {
    /// e.g. `kms:Decrypt`.
    pub action: String,
    /// The caller's principal ARN.
    pub principal_arn: String,
    /// The caller's 12-digit account id.
    pub principal_account: String,
    /// The key ARN.
    pub resource: String,
    /// Condition keys (lower-cased) to their values.
    values: BTreeMap<String, Vec<String>>,
}

impl RequestContext {
    /// A context without condition values except the global ones
    /// (`aws:PrincipalArn`, `aws:PrincipalAccount`, `kms:CallerAccount`).
    pub fn new(
        action: impl Into<String>,
        principal_arn: impl Into<String>,
        principal_account: impl Into<String>,
        resource: impl Into<String>,
    ) -> Self {
        let mut ctx = Self {
            action: action.into(),
            principal_arn: principal_arn.into(),
            principal_account: principal_account.into(),
            resource: resource.into(),
            values: BTreeMap::new(),
        };
        let (arn, acct) = (ctx.principal_arn.clone(), ctx.principal_account.clone());
        ctx.insert("aws:PrincipalArn", arn);
        ctx.insert("aws:PrincipalAccount", acct.clone());
        ctx.insert("kms:CallerAccount", acct);
        ctx
    }

    /// Adds a value to a condition key (keys are case-insensitive).
    pub fn insert(&mut self, key: &str, value: impl Into<String>) {
        self.values
            .entry(key.to_ascii_lowercase())
            .or_default()
            .push(value.into());
    }

    /// Adds the `kms:EncryptionContext:<k>` keys and the multi-valued
    /// `kms:EncryptionContextKeys` for an encryption context.
    pub fn with_encryption_context<'a>(
        mut self,
        context: impl IntoIterator<Item = (&'a String, &'a String)>,
    ) -> Self {
        for (k, v) in context {
            self.insert(&format!("kms:EncryptionContext:{k}"), v.clone());
            self.insert("kms:EncryptionContextKeys", k.clone());
        }
        self
    }

    /// Adds the `kms:RecipientAttestation:*` condition keys of a verified
    /// attestation document with these PCRs: `kms:RecipientAttestation:PCR<n>`
    /// for each PCR and `kms:RecipientAttestation:ImageSha384` (= PCR0),
    /// lower-case hex. The keys and values come from the one definition,
    /// [`keybroker_common::measurements::attested_condition_values`], which
    /// the key policy generator and the proxy's admission share.
    pub fn with_attestation_pcrs<'a>(
        mut self,
        pcrs: impl IntoIterator<Item = (u8, &'a [u8])>,
    ) -> Self {
        for (key, value) in measurements::attested_condition_values(pcrs) {
            self.insert(&key, value);
        }
        self
    }

    /// [`RequestContext::with_attestation_pcrs`] for a verified document.
    pub fn with_attestation(self, document: &VerifiedAttestation) -> Self {
        self.with_attestation_pcrs(document.pcrs().iter().map(|(i, v)| (*i, v.as_slice())))
    }

    /// The values of a condition key, if present.
    pub fn get(&self, key: &str) -> Option<&[String]> {
        self.values
            .get(&key.to_ascii_lowercase())
            .map(Vec::as_slice)
    }
}

/// Identifies a statement in logs and errors: its `Sid` or its index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatementRef {
    /// Zero-based position in the `Statement` list.
    pub index: usize,
    /// The `Sid`, if the statement has one.
    pub sid: Option<String>,
}

impl fmt::Display for StatementRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.sid {
            Some(sid) => write!(f, "statement #{} (Sid \"{sid}\")", self.index),
            None => write!(f, "statement #{}", self.index),
        }
    }
}

/// A condition that did not hold, with what the policy expected and what the
/// request carried (`None` = the key was absent from the request).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConditionFailure {
    /// The operator as written.
    pub operator: String,
    /// The condition key as written.
    pub key: String,
    /// The policy's values.
    pub expected: Vec<String>,
    /// The request's values, `None` when absent.
    pub actual: Option<Vec<String>>,
}

impl fmt::Display for ConditionFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {}: expected {:?}, request has ",
            self.operator, self.key, self.expected
        )?;
        match &self.actual {
            Some(a) => write!(f, "{a:?}"),
            None => f.write_str("no value (key absent)"),
        }
    }
}

/// An `Allow` statement that matched principal, action and resource but
/// whose conditions failed: the usual reason for a surprising denial.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NearMiss {
    /// The statement.
    pub statement: StatementRef,
    /// The first condition that failed.
    pub failed: ConditionFailure,
}

/// The outcome of evaluating a policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// An `Allow` statement matched and no `Deny` did.
    Allow {
        /// The first matching `Allow` statement.
        statement: StatementRef,
    },
    /// A `Deny` statement matched.
    ExplicitDeny {
        /// The first matching `Deny` statement.
        statement: StatementRef,
    },
    /// No statement allowed the request.
    ImplicitDeny {
        /// `Allow` statements that failed only on a condition.
        near_misses: Vec<NearMiss>,
    },
}

impl Decision {
    /// Whether the request is allowed.
    pub fn is_allowed(&self) -> bool {
        matches!(self, Decision::Allow { .. })
    }
}

/// Evaluates `policy` for the request described by `ctx`.
pub fn evaluate(policy: &Policy, ctx: &RequestContext) -> Decision {
    let mut allow = None;
    let mut near_misses = Vec::new();
    for (index, st) in policy.statements.iter().enumerate() {
        let sref = || StatementRef {
            index,
            sid: st.sid.clone(),
        };
        if !st.matches_principal(ctx) || !st.matches_action(ctx) || !st.matches_resource(ctx) {
            continue;
        }
        match (st.first_failed_condition(ctx), st.effect) {
            (None, Effect::Deny) => return Decision::ExplicitDeny { statement: sref() },
            (None, Effect::Allow) => {
                if allow.is_none() {
                    allow = Some(sref());
                }
            }
            (Some(failed), Effect::Allow) => near_misses.push(NearMiss {
                statement: sref(),
                failed,
            }),
            (Some(_), Effect::Deny) => {}
        }
    }
    match allow {
        Some(statement) => Decision::Allow { statement },
        None => Decision::ImplicitDeny { near_misses },
    }
}

impl Statement {
    fn matches_principal(&self, ctx: &RequestContext) -> bool {
        match &self.principal {
            PrincipalSpec::Any => true,
            PrincipalSpec::Other => false,
            PrincipalSpec::Aws(list) => list.iter().any(|p| {
                if p.len() == 12 && p.bytes().all(|b| b.is_ascii_digit()) {
                    return *p == ctx.principal_account;
                }
                if let Some(acct) = p
                    .strip_prefix("arn:aws:iam::")
                    .and_then(|r| r.strip_suffix(":root"))
                {
                    return acct == ctx.principal_account;
                }
                *p == ctx.principal_arn
            }),
        }
    }

    fn matches_action(&self, ctx: &RequestContext) -> bool {
        match &self.actions {
            ActionSpec::Action(list) => list.iter().any(|a| wildcard_match(a, &ctx.action, true)),
            ActionSpec::NotAction(list) => {
                !list.iter().any(|a| wildcard_match(a, &ctx.action, true))
            }
        }
    }

    fn matches_resource(&self, ctx: &RequestContext) -> bool {
        self.resources.is_empty()
            || self
                .resources
                .iter()
                .any(|r| wildcard_match(r, &ctx.resource, false))
    }

    fn first_failed_condition(&self, ctx: &RequestContext) -> Option<ConditionFailure> {
        self.conditions
            .iter()
            .find(|c| !c.holds(ctx))
            .map(|c| ConditionFailure {
                operator: c.operator.clone(),
                key: c.key.clone(),
                expected: c.values.clone(),
                actual: ctx.get(&c.key).map(<[String]>::to_vec),
            })
    }
}

impl Condition {
    fn value_matches(&self, actual: &str, expected: &str) -> bool {
        match self.op {
            Op::StringEquals => actual == expected,
            Op::StringEqualsIgnoreCase => actual.eq_ignore_ascii_case(expected),
            Op::StringLike => wildcard_match(expected, actual, false),
            Op::Null => false,
        }
    }

    /// Whether one request value satisfies the operator against any policy
    /// value (already accounting for negation).
    fn single(&self, actual: &str) -> bool {
        let any = self.values.iter().any(|e| self.value_matches(actual, e));
        any != self.negated
    }

    fn holds(&self, ctx: &RequestContext) -> bool {
        let actual = ctx.get(&self.key).filter(|v| !v.is_empty());
        if self.op == Op::Null {
            // {"Null": {"key": "true"}} holds when the key is absent.
            return self.values.iter().any(|v| {
                let want_absent = v.eq_ignore_ascii_case("true");
                want_absent == actual.is_none()
            });
        }
        match self.set {
            SetQualifier::ForAnyValue => actual.is_some_and(|a| a.iter().any(|v| self.single(v))),
            SetQualifier::ForAllValues => actual.is_none_or(|a| a.iter().all(|v| self.single(v))),
            SetQualifier::None => match actual {
                None => self.if_exists || self.negated,
                Some(a) => {
                    let any_positive = a
                        .iter()
                        .any(|v| self.values.iter().any(|e| self.value_matches(v, e)));
                    any_positive != self.negated
                }
            },
        }
    }
}

/// IAM wildcard match: `*` matches any run of characters, `?` exactly one.
/// Iterative with single backtracking point, so linear-ish and never
/// recursive on attacker-chosen patterns.
pub fn wildcard_match(pattern: &str, text: &str, ignore_case: bool) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    let eq = |a: char, b: char| {
        if ignore_case {
            a.to_lowercase().eq(b.to_lowercase())
        } else {
            a == b
        }
    };
    let (mut pi, mut ti) = (0usize, 0usize);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        match (p.get(pi), t.get(ti)) {
            (Some('*'), _) => {
                star = Some((pi, ti));
                pi += 1;
            }
            (Some(&pc), Some(&tc)) if pc == '?' || eq(pc, tc) => {
                pi += 1;
                ti += 1;
            }
            _ => match star {
                Some((sp, st)) => {
                    pi = sp + 1;
                    ti = st + 1;
                    star = Some((sp, st + 1));
                }
                None => return false,
            },
        }
    }
    p.get(pi..)
        .is_some_and(|rest| rest.iter().all(|&c| c == '*'))
}

#[cfg(test)]
mod tests {
    use super::*;

    const ACCT: &str = "111122223333";
    const ROOT: &str = "arn:aws:iam::111122223333:root";
    const KEY: &str = "arn:aws:kms:us-east-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab";
    const PCR0: &str = "a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f90";

    fn ctx(action: &str) -> RequestContext {
        RequestContext::new(action, ROOT, ACCT, KEY)
    }

    fn with_pcr0(c: RequestContext, pcr0_hex: &str) -> RequestContext {
        let bytes = hex::decode(pcr0_hex).unwrap();
        c.with_attestation_pcrs([(0u8, bytes.as_slice())])
    }

    fn enclave_policy(op: &str) -> Policy {
        enclave_policy_for(op, PCR0)
    }

    fn enclave_policy_for(op: &str, pcr0: &str) -> Policy {
        Policy::parse(
            &serde_json::json!({
                "Version": "2012-10-17",
                "Statement": [
                    {"Sid": "admin", "Effect": "Allow", "Principal": {"AWS": ROOT},
                     "Action": ["kms:Describe*", "kms:PutKeyPolicy", "kms:GetKeyPolicy"], "Resource": "*"},
                    {"Sid": "enclave", "Effect": "Allow", "Principal": {"AWS": ROOT},
                     "Action": ["kms:Decrypt", "kms:GenerateDataKey"], "Resource": "*",
                     "Condition": {op: {"kms:RecipientAttestation:ImageSha384": pcr0}}}
                ]
            })
            .to_string(),
        )
        .unwrap()
    }

    #[test]
    fn default_policy_allows_everything_for_account_root() {
        let p = Policy::parse(&default_key_policy(ACCT)).unwrap();
        for action in ["kms:Decrypt", "kms:CreateAlias", "kms:PutKeyPolicy"] {
            assert!(evaluate(&p, &ctx(action)).is_allowed(), "{action}");
        }
        let other = RequestContext::new(
            "kms:Decrypt",
            "arn:aws:iam::444455556666:root",
            "444455556666",
            KEY,
        );
        assert!(!evaluate(&p, &other).is_allowed());
    }

    #[test]
    fn attestation_condition_allows_matching_pcr0_only() {
        let p = enclave_policy("StringEqualsIgnoreCase");
        assert!(evaluate(&p, &with_pcr0(ctx("kms:Decrypt"), PCR0)).is_allowed());
        let wrong = PCR0.replace("a1", "00");
        match evaluate(&p, &with_pcr0(ctx("kms:Decrypt"), &wrong)) {
            Decision::ImplicitDeny { near_misses } => {
                assert_eq!(near_misses.len(), 1);
                let m = &near_misses[0];
                assert_eq!(m.statement.sid.as_deref(), Some("enclave"));
                assert_eq!(m.statement.index, 1);
                assert_eq!(m.failed.expected, vec![PCR0.to_string()]);
                assert_eq!(m.failed.actual, Some(vec![wrong.clone()]));
            }
            d => panic!("expected implicit deny, got {d:?}"),
        }
    }

    #[test]
    fn missing_attestation_fails_positive_condition() {
        let p = enclave_policy("StringEqualsIgnoreCase");
        match evaluate(&p, &ctx("kms:GenerateDataKey")) {
            Decision::ImplicitDeny { near_misses } => {
                assert_eq!(near_misses[0].failed.actual, None);
                assert!(near_misses[0].failed.to_string().contains("key absent"));
            }
            d => panic!("{d:?}"),
        }
    }

    #[test]
    fn string_equals_is_case_sensitive_but_ignore_case_is_not() {
        // The request side is always lower-case hex (as in KMS).
        let upper = PCR0.to_uppercase();
        let p = enclave_policy_for("StringEquals", &upper);
        assert!(!evaluate(&p, &with_pcr0(ctx("kms:Decrypt"), PCR0)).is_allowed());
        let p = enclave_policy_for("StringEqualsIgnoreCase", &upper);
        assert!(evaluate(&p, &with_pcr0(ctx("kms:Decrypt"), PCR0)).is_allowed());
        let p = enclave_policy("StringEquals");
        assert!(evaluate(&p, &with_pcr0(ctx("kms:Decrypt"), PCR0)).is_allowed());
    }

    #[test]
    fn action_wildcards_are_case_insensitive_and_scoped() {
        let p = enclave_policy("StringEquals");
        assert!(evaluate(&p, &ctx("kms:DescribeKey")).is_allowed());
        assert!(evaluate(&p, &ctx("KMS:describekey")).is_allowed());
        assert!(!evaluate(&p, &ctx("kms:Encrypt")).is_allowed());
        let q = Policy::parse(
            &serde_json::json!({"Statement": {"Effect": "Allow", "Principal": "*",
            "Action": "kms:GenerateDataKey?ithoutPlaintext"}})
            .to_string(),
        )
        .unwrap();
        assert!(evaluate(&q, &ctx("kms:GenerateDataKeyWithoutPlaintext")).is_allowed());
        assert!(!evaluate(&q, &ctx("kms:GenerateDataKey")).is_allowed());
    }

    #[test]
    fn derive_shared_secret_is_governed_by_the_attestation_conditions() {
        let p = Policy::parse(
            &serde_json::json!({"Version": "2012-10-17", "Statement": [
                {"Sid": "public", "Effect": "Allow", "Principal": {"AWS": ROOT},
                 "Action": ["kms:GetPublicKey", "kms:DescribeKey"], "Resource": "*"},
                {"Sid": "enclave", "Effect": "Allow", "Principal": {"AWS": ROOT},
                 "Action": "kms:DeriveSharedSecret", "Resource": "*",
                 "Condition": {"StringEqualsIgnoreCase": {
                     "kms:RecipientAttestation:ImageSha384": PCR0,
                     "kms:RecipientAttestation:PCR8": hex::encode([8u8; 48])}}}
            ]})
            .to_string(),
        )
        .unwrap();
        assert!(evaluate(&p, &ctx("kms:GetPublicKey")).is_allowed());
        // Without a Recipient the attestation keys are absent: denied.
        match evaluate(&p, &ctx("kms:DeriveSharedSecret")) {
            Decision::ImplicitDeny { near_misses } => {
                assert_eq!(near_misses[0].statement.sid.as_deref(), Some("enclave"));
                assert_eq!(near_misses[0].failed.actual, None);
            }
            d => panic!("expected implicit deny, got {d:?}"),
        }
        let attested = |pcr8: [u8; 48]| {
            let pcr0 = hex::decode(PCR0).unwrap();
            ctx("kms:DeriveSharedSecret")
                .with_attestation_pcrs([(0u8, pcr0.as_slice()), (8u8, pcr8.as_slice())])
        };
        assert!(evaluate(&p, &attested([8; 48])).is_allowed());
        assert!(!evaluate(&p, &attested([9; 48])).is_allowed());
        // The public statement does not reach DeriveSharedSecret, nor the
        // enclave statement GetPublicKey's neighbours.
        assert!(!evaluate(&p, &ctx("kms:Decrypt")).is_allowed());
    }

    #[test]
    fn deny_without_attestation_covers_derive_shared_secret_and_wildcards_match_it() {
        let p = Policy::parse(
            &serde_json::json!({"Statement": [
                {"Effect": "Allow", "Principal": {"AWS": ACCT}, "Action": "kms:*", "Resource": "*"},
                {"Sid": "attested-only", "Effect": "Deny", "Principal": "*",
                 "Action": ["kms:Decrypt", "kms:Derive*"], "Resource": "*",
                 "Condition": {"Null": {"kms:RecipientAttestation:ImageSha384": "true"}}}
            ]})
            .to_string(),
        )
        .unwrap();
        match evaluate(&p, &ctx("kms:DeriveSharedSecret")) {
            Decision::ExplicitDeny { statement } => {
                assert_eq!(statement.sid.as_deref(), Some("attested-only"));
            }
            d => panic!("expected explicit deny, got {d:?}"),
        }
        assert!(evaluate(&p, &with_pcr0(ctx("kms:DeriveSharedSecret"), PCR0)).is_allowed());
        assert!(evaluate(&p, &ctx("kms:GetPublicKey")).is_allowed());
        let q = Policy::parse(
            &serde_json::json!({"Statement": {"Effect": "Allow", "Principal": "*",
                "Action": "kms:Get*", "Resource": "*"}})
            .to_string(),
        )
        .unwrap();
        assert!(evaluate(&q, &ctx("kms:GetPublicKey")).is_allowed());
        assert!(!evaluate(&q, &ctx("kms:DeriveSharedSecret")).is_allowed());
    }

    #[test]
    fn explicit_deny_wins_over_allow() {
        let p = Policy::parse(&serde_json::json!({"Statement": [
            {"Effect": "Allow", "Principal": {"AWS": ACCT}, "Action": "kms:*", "Resource": "*"},
            {"Sid": "no-plaintext", "Effect": "Deny", "Principal": "*", "Action": "kms:Decrypt", "Resource": "*",
             "Condition": {"Null": {"kms:RecipientAttestation:ImageSha384": "true"}}}
        ]}).to_string()).unwrap();
        match evaluate(&p, &ctx("kms:Decrypt")) {
            Decision::ExplicitDeny { statement } => {
                assert_eq!(statement.sid.as_deref(), Some("no-plaintext"));
                assert_eq!(statement.index, 1);
            }
            d => panic!("{d:?}"),
        }
        // With an attestation the Null condition is false: the deny does not apply.
        assert!(evaluate(&p, &with_pcr0(ctx("kms:Decrypt"), PCR0)).is_allowed());
        assert!(evaluate(&p, &ctx("kms:Encrypt")).is_allowed());
    }

    #[test]
    fn encryption_context_conditions() {
        let p = Policy::parse(
            &serde_json::json!({"Statement": [
                {"Effect": "Allow", "Principal": "*", "Action": "kms:Decrypt", "Resource": "*",
                 "Condition": {
                    "StringEquals": {"kms:EncryptionContext:app": ["billing", "ledger"]},
                    "ForAllValues:StringEquals": {"kms:EncryptionContextKeys": ["app", "tenant"]}
                 }}
            ]})
            .to_string(),
        )
        .unwrap();
        let ec = |pairs: &[(&str, &str)]| {
            let m: BTreeMap<String, String> = pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            ctx("kms:Decrypt").with_encryption_context(&m)
        };
        assert!(evaluate(&p, &ec(&[("app", "billing")])).is_allowed());
        assert!(evaluate(&p, &ec(&[("app", "ledger"), ("tenant", "t1")])).is_allowed());
        assert!(!evaluate(&p, &ec(&[("app", "other")])).is_allowed());
        assert!(!evaluate(&p, &ec(&[("app", "billing"), ("extra", "x")])).is_allowed());
        assert!(!evaluate(&p, &ec(&[])).is_allowed());
    }

    #[test]
    fn for_any_value_and_string_like_and_not_equals() {
        let p = Policy::parse(&serde_json::json!({"Statement": [
            {"Effect": "Allow", "Principal": "*", "Action": "kms:Encrypt", "Resource": "*",
             "Condition": {"ForAnyValue:StringLike": {"kms:EncryptionContextKeys": "tenant-*"}}},
            {"Effect": "Allow", "Principal": "*", "Action": "kms:Decrypt", "Resource": "*",
             "Condition": {"StringNotEquals": {"kms:EncryptionContext:env": "prod"}}}
        ]}).to_string()).unwrap();
        let ec = |action: &str, pairs: &[(&str, &str)]| {
            let m: BTreeMap<String, String> = pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            ctx(action).with_encryption_context(&m)
        };
        assert!(evaluate(&p, &ec("kms:Encrypt", &[("a", "1"), ("tenant-7", "x")])).is_allowed());
        assert!(!evaluate(&p, &ec("kms:Encrypt", &[("a", "1")])).is_allowed());
        assert!(!evaluate(&p, &ec("kms:Encrypt", &[])).is_allowed());
        assert!(evaluate(&p, &ec("kms:Decrypt", &[("env", "dev")])).is_allowed());
        assert!(!evaluate(&p, &ec("kms:Decrypt", &[("env", "prod")])).is_allowed());
        // IAM: a negated operator holds when the key is absent.
        assert!(evaluate(&p, &ec("kms:Decrypt", &[])).is_allowed());
    }

    #[test]
    fn condition_key_names_are_case_insensitive_and_values_may_be_lists() {
        let p = Policy::parse(&serde_json::json!({"Statement": {"Effect": "Allow", "Principal": "*",
            "Action": "kms:Decrypt", "Resource": "*",
            "Condition": {"StringEqualsIgnoreCase": {"KMS:recipientattestation:pcr0": ["00", PCR0]}}}}).to_string()).unwrap();
        assert!(evaluate(&p, &with_pcr0(ctx("kms:Decrypt"), PCR0)).is_allowed());
    }

    #[test]
    fn several_pcr_conditions_are_anded() {
        let pcr1 = "11".repeat(48);
        let p = Policy::parse(
            &serde_json::json!({"Statement": {"Effect": "Allow", "Principal": "*",
            "Action": "kms:Decrypt", "Resource": "*",
            "Condition": {"StringEqualsIgnoreCase": {
                "kms:RecipientAttestation:PCR0": PCR0,
                "kms:RecipientAttestation:PCR1": pcr1.clone()}}}})
            .to_string(),
        )
        .unwrap();
        let pcr0 = hex::decode(PCR0).unwrap();
        let good1 = hex::decode(&pcr1).unwrap();
        let bad1 = vec![0u8; 48];
        let ok = ctx("kms:Decrypt")
            .with_attestation_pcrs([(0u8, pcr0.as_slice()), (1, good1.as_slice())]);
        let bad = ctx("kms:Decrypt")
            .with_attestation_pcrs([(0u8, pcr0.as_slice()), (1, bad1.as_slice())]);
        assert!(evaluate(&p, &ok).is_allowed());
        match evaluate(&p, &bad) {
            Decision::ImplicitDeny { near_misses } => {
                assert_eq!(near_misses[0].failed.key, "kms:RecipientAttestation:PCR1");
            }
            d => panic!("{d:?}"),
        }
    }

    #[test]
    fn principals_match_account_root_or_exact_arn() {
        let p = |principal: serde_json::Value| {
            Policy::parse(
                &serde_json::json!({"Statement": {"Effect": "Allow", "Principal": principal,
                "Action": "kms:*", "Resource": "*"}})
                .to_string(),
            )
            .unwrap()
        };
        let user = RequestContext::new(
            "kms:Decrypt",
            "arn:aws:iam::111122223333:user/alice",
            ACCT,
            KEY,
        );
        assert!(evaluate(&p(serde_json::json!({"AWS": ACCT})), &user).is_allowed());
        assert!(evaluate(&p(serde_json::json!({"AWS": ROOT})), &user).is_allowed());
        assert!(
            evaluate(
                &p(serde_json::json!({"AWS": ["arn:aws:iam::111122223333:user/alice"]})),
                &user
            )
            .is_allowed()
        );
        assert!(
            !evaluate(
                &p(serde_json::json!({"AWS": "arn:aws:iam::111122223333:user/bob"})),
                &user
            )
            .is_allowed()
        );
        assert!(
            !evaluate(
                &p(serde_json::json!({"Service": "ec2.amazonaws.com"})),
                &user
            )
            .is_allowed()
        );
        assert!(evaluate(&p(serde_json::json!({"AWS": "*"})), &user).is_allowed());
    }

    #[test]
    fn resource_must_match_the_key_arn() {
        let p = Policy::parse(
            &serde_json::json!({"Statement": {"Effect": "Allow", "Principal": "*",
            "Action": "kms:*", "Resource": "arn:aws:kms:us-east-1:111122223333:key/other"}})
            .to_string(),
        )
        .unwrap();
        assert!(!evaluate(&p, &ctx("kms:Decrypt")).is_allowed());
        let q = Policy::parse(
            &serde_json::json!({"Statement": {"Effect": "Allow", "Principal": "*",
            "Action": "kms:*", "Resource": "arn:aws:kms:*:111122223333:key/*"}})
            .to_string(),
        )
        .unwrap();
        assert!(evaluate(&q, &ctx("kms:Decrypt")).is_allowed());
    }

    #[test]
    fn malformed_or_unsupported_policies_are_rejected() {
        for bad in [
            "not json",
            "[]",
            r#"{"Statement": []}"#,
            r#"{"Version": "2099-01-01", "Statement": {"Effect": "Allow", "Principal": "*", "Action": "kms:*"}}"#,
            r#"{"Statement": {"Effect": "Maybe", "Principal": "*", "Action": "kms:*"}}"#,
            r#"{"Statement": {"Effect": "Allow", "Action": "kms:*"}}"#,
            r#"{"Statement": {"Effect": "Allow", "Principal": "*"}}"#,
            r#"{"Statement": {"Effect": "Allow", "Principal": "*", "Action": "kms:*", "Condition": {"NumericLessThan": {"x": "1"}}}}"#,
            r#"{"Statement": {"Effect": "Allow", "Principal": "*", "Action": "kms:*", "Condition": {"StringEquals": {"x": "${aws:username}"}}}}"#,
            r#"{"Statement": {"Effect": "Allow", "NotPrincipal": {"AWS": "x"}, "Action": "kms:*"}}"#,
        ] {
            assert!(Policy::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn if_exists_and_for_all_values_on_absent_keys() {
        let p = Policy::parse(
            &serde_json::json!({"Statement": [
                {"Effect": "Allow", "Principal": "*", "Action": "kms:Encrypt", "Resource": "*",
                 "Condition": {"StringEqualsIfExists": {"kms:EncryptionContext:app": "x"}}},
                {"Effect": "Allow", "Principal": "*", "Action": "kms:Decrypt", "Resource": "*",
                 "Condition": {"ForAllValues:StringEquals": {"kms:EncryptionContextKeys": "app"}}}
            ]})
            .to_string(),
        )
        .unwrap();
        assert!(evaluate(&p, &ctx("kms:Encrypt")).is_allowed());
        assert!(evaluate(&p, &ctx("kms:Decrypt")).is_allowed());
    }

    #[test]
    fn wildcard_matching() {
        assert!(wildcard_match("*", "", false));
        assert!(wildcard_match("kms:*", "kms:Decrypt", false));
        assert!(wildcard_match("a*b*c", "axxbyyc", false));
        assert!(!wildcard_match("a*b*c", "axxbyy", false));
        assert!(wildcard_match("a?c", "abc", false));
        assert!(!wildcard_match("a?c", "ac", false));
        assert!(wildcard_match("KMS:DECRYPT", "kms:Decrypt", true));
        assert!(!wildcard_match("KMS:DECRYPT", "kms:Decrypt", false));
        assert!(wildcard_match("**a", "bba", false));
    }
}
