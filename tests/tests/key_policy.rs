//! The key policy `keybroker-proxy policy` generates, evaluated by the mock
//! KMS: a key created with it serves the attested enclave (mock NSM, through
//! the proxy and the enclave `Client`, as in production), and refuses
//! another image, requests without attestation, and the key administrators'
//! use of the key, while leaving the administrators in control.
//!
//! The mock KMS evaluates every request as one configured principal. Two
//! mock KMS instances share one state file so that the key has two callers:
//! the administrator's (creates the key, manages it) and the parent role's
//! (the proxy's credentials). The parent's instance loads the state after
//! the administrator wrote it; after a policy change it is restarted to see
//! the new policy.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::path::{Path, PathBuf};
use std::sync::Arc;

use aws_sdk_kms::error::ProvideErrorMetadata;
use aws_sdk_kms::primitives::Blob as SdkBlob;
use aws_sdk_kms::types::{
    DataKeyPairSpec as SdkPairSpec, DataKeySpec as SdkKeySpec, KeyEncryptionMechanism,
    RecipientInfo as SdkRecipient,
};
use keybroker_common::address::Address;
use keybroker_common::kms::{DataKeyPairSpec, DecryptRequest, GenerateDataKeyPairRequest};
use keybroker_enclave::{
    Client, MockCa, MockNsm, MockNsmConfig, RecipientKeys, RecipientKeysConfig,
};
use keybroker_harness::local::kms_client;
use keybroker_harness::mock_kms::policy::{Decision, Policy, RequestContext, evaluate};
use keybroker_harness::mock_kms::{DEFAULT_ACCOUNT_ID, MockKms, MockKmsConfig, RunningMockKms};
use keybroker_harness::testkit::{connect_enclave, gdk, start_proxy};
use keybroker_proxy::key_policy::{EnclaveKeyPolicy, ImageMeasurements};
use keybroker_proxy::server::{ProxyConfig, ProxyHandle};

/// The instance role the proxy runs as.
const PARENT: &str = "arn:aws:iam::111122223333:role/keybroker-parent";
/// The key administrators' role.
const ADMIN: &str = "arn:aws:iam::111122223333:role/KeyAdmins";
/// The enclave image the policy admits (its PCR0).
const IMAGE: [u8; 48] = [0x5a; 48];
/// An image the policy does not name.
const OTHER: [u8; 48] = [0x6b; 48];
const ALIAS: &str = "alias/keybroker";

fn policy_for(images: &[&ImageMeasurements]) -> EnclaveKeyPolicy {
    EnclaveKeyPolicy::new(PARENT, images.iter().map(|m| (*m).clone()).collect())
        .unwrap()
        .with_key_admin(ADMIN)
        .unwrap()
}

fn image(pcr0: [u8; 48]) -> ImageMeasurements {
    ImageMeasurements::new(&hex::encode(pcr0)).unwrap()
}

fn policy_json(policy: &EnclaveKeyPolicy) -> String {
    policy.document().to_json_pretty().unwrap()
}

/// A mock KMS that sees every request as `principal`, on the shared state.
fn mock_kms(principal: &str, state: &Path, ca: &MockCa) -> MockKms {
    let cfg = MockKmsConfig {
        caller_principal: principal.to_owned(),
        state_file: Some(state.to_owned()),
        attestation_roots_der: vec![ca.root_der().to_vec()],
        ..MockKmsConfig::default()
    };
    MockKms::new(cfg).unwrap()
}

/// What runs on the parent instance: KMS as the parent role sees it, and the
/// proxy relaying to it with the default (safe) proxy policy, which checks no
/// PCRs, so that KMS's key policy alone decides.
struct ParentSide {
    _kms: RunningMockKms,
    /// SDK client with the parent role's identity (no enclave involved).
    sdk: aws_sdk_kms::Client,
    proxy: ProxyHandle,
    addr: Address,
}

async fn parent_side(state: &Path, ca: &MockCa) -> ParentSide {
    let kms = mock_kms(PARENT, state, ca)
        .spawn("127.0.0.1:0")
        .await
        .unwrap();
    let sdk = kms_client(&kms.endpoint());
    let config = ProxyConfig::new(Address::Tcp("127.0.0.1:0".into()));
    let proxy = start_proxy(config, &sdk).await.unwrap();
    let addr = proxy.local_addr().clone();
    ParentSide {
        _kms: kms,
        sdk,
        proxy,
        addr,
    }
}

/// A deployment: the key (created by the administrator with the generated
/// policy) and the parent side.
struct Deployment {
    _dir: tempfile::TempDir,
    state: PathBuf,
    ca: MockCa,
    _admin_kms: RunningMockKms,
    /// SDK client with the administrator's identity.
    admin: aws_sdk_kms::Client,
    key_arn: String,
    parent: ParentSide,
}

impl Deployment {
    async fn new(policy: &EnclaveKeyPolicy) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("mock-kms-state.json");
        let ca = MockCa::generate().unwrap();
        let admin_kms = mock_kms(ADMIN, &state, &ca)
            .spawn("127.0.0.1:0")
            .await
            .unwrap();
        let admin = kms_client(&admin_kms.endpoint());
        let key_arn = admin
            .create_key()
            .description("keybroker key_policy test")
            .policy(policy_json(policy))
            .send()
            .await
            .unwrap()
            .key_metadata
            .unwrap()
            .arn
            .unwrap();
        admin
            .create_alias()
            .alias_name(ALIAS)
            .target_key_id(&key_arn)
            .send()
            .await
            .unwrap();
        let parent = parent_side(&state, &ca).await;
        Deployment {
            _dir: dir,
            state,
            ca,
            _admin_kms: admin_kms,
            admin,
            key_arn,
            parent,
        }
    }

    /// The parent side restarted (it then reads the current policy).
    async fn restart_parent(&mut self) {
        let fresh = parent_side(&self.state, &self.ca).await;
        let old = std::mem::replace(&mut self.parent, fresh);
        old.proxy.shutdown_and_wait().await.unwrap();
    }

    /// An enclave whose mock NSM reports `pcrs` (index, value), connected to
    /// the proxy.
    async fn enclave(&self, pcrs: &[(u16, [u8; 48])]) -> Client {
        let config = pcrs
            .iter()
            .fold(MockNsmConfig::default(), |c, (i, v)| c.with_pcr(*i, *v));
        connect_enclave(&self.ca, &self.parent.addr, config)
            .await
            .unwrap()
    }

    /// A CiphertextBlob of a data key, made without plaintext by the parent.
    async fn stored_data_key(&self) -> Vec<u8> {
        self.parent
            .sdk
            .generate_data_key_without_plaintext()
            .key_id(ALIAS)
            .key_spec(SdkKeySpec::Aes256)
            .send()
            .await
            .unwrap()
            .ciphertext_blob
            .unwrap()
            .into_inner()
    }
}

/// The KMS error of a failed enclave call, as `(code, message)`.
#[track_caller]
fn enclave_denial<T: std::fmt::Debug>(r: Result<T, keybroker_enclave::Error>) -> String {
    let err = r.expect_err("expected a KMS denial");
    let kms = err
        .kms_error()
        .unwrap_or_else(|| panic!("not a KMS error: {err:?}"));
    assert_eq!(kms.code, "AccessDeniedException", "{err:?}");
    kms.message.clone()
}

/// The message of an SDK call that KMS denied.
#[track_caller]
fn sdk_denial<T: std::fmt::Debug, E: ProvideErrorMetadata + std::fmt::Debug>(
    r: Result<T, E>,
) -> String {
    match r {
        Ok(v) => panic!("expected AccessDeniedException, got {v:?}"),
        Err(e) => {
            assert_eq!(e.code(), Some("AccessDeniedException"), "{e:?}");
            e.message().unwrap_or_default().to_owned()
        }
    }
}

const EXPLICIT_DENY: &str = "with an explicit deny in a resource-based policy";
const NO_ALLOW: &str = "because no resource-based policy allows";

#[tokio::test(flavor = "multi_thread")]
async fn the_attested_enclave_gets_data_keys_and_decrypts() {
    let d = Deployment::new(&policy_for(&[&image(IMAGE)])).await;
    let enclave = d.enclave(&[(0, IMAGE)]).await;

    let key = enclave.generate_data_key(gdk(ALIAS)).await.unwrap();
    assert_eq!(key.plaintext.len(), 32);
    assert_eq!(key.key_id.as_deref(), Some(d.key_arn.as_str()));
    let back = enclave
        .decrypt(DecryptRequest {
            ciphertext_blob: Some(key.ciphertext_blob.clone()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(back.plaintext.expose(), key.plaintext.expose());

    // A data key the parent stored without ever seeing its plaintext.
    let stored = d.stored_data_key().await;
    let opened = enclave
        .decrypt(DecryptRequest {
            ciphertext_blob: Some(stored.into()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(opened.plaintext.len(), 32);

    // The third plaintext-returning operation.
    let pair = enclave
        .generate_data_key_pair(GenerateDataKeyPairRequest {
            key_id: Some(ALIAS.to_owned()),
            key_pair_spec: Some(DataKeyPairSpec::EccNistP256),
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(!pair.private_key_plaintext.expose().is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn another_image_is_denied_by_the_explicit_deny() {
    let d = Deployment::new(&policy_for(&[&image(IMAGE)])).await;
    let other = d.enclave(&[(0, OTHER)]).await;
    let m = enclave_denial(other.generate_data_key(gdk(ALIAS)).await);
    assert!(m.ends_with(EXPLICIT_DENY), "{m}");
    let stored = d.stored_data_key().await;
    let m = enclave_denial(
        other
            .decrypt(DecryptRequest {
                ciphertext_blob: Some(stored.into()),
                ..Default::default()
            })
            .await,
    );
    assert!(m.ends_with(EXPLICIT_DENY), "{m}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_parent_without_attestation_gets_no_plaintext() {
    let d = Deployment::new(&policy_for(&[&image(IMAGE)])).await;
    let sdk = &d.parent.sdk;
    let m = sdk_denial(
        sdk.generate_data_key()
            .key_id(ALIAS)
            .key_spec(SdkKeySpec::Aes256)
            .send()
            .await,
    );
    assert!(m.ends_with(EXPLICIT_DENY), "{m}");
    assert!(m.starts_with(&format!("User: {PARENT} ")), "{m}");
    let stored = d.stored_data_key().await;
    let m = sdk_denial(
        sdk.decrypt()
            .ciphertext_blob(SdkBlob::new(stored.clone()))
            .send()
            .await,
    );
    assert!(m.ends_with(EXPLICIT_DENY), "{m}");
    sdk_denial(
        sdk.generate_data_key_pair()
            .key_id(ALIAS)
            .key_pair_spec(SdkPairSpec::EccNistP256)
            .send()
            .await,
    );
    // Nor can it mint ciphertexts of its own plaintexts, or move data keys
    // to a key it controls.
    let m = sdk_denial(
        sdk.encrypt()
            .key_id(ALIAS)
            .plaintext(SdkBlob::new(vec![7u8; 32]))
            .send()
            .await,
    );
    assert!(m.ends_with(EXPLICIT_DENY), "{m}");
    let m = sdk_denial(
        sdk.re_encrypt()
            .ciphertext_blob(SdkBlob::new(stored))
            .destination_key_id(&d.key_arn)
            .send()
            .await,
    );
    assert!(m.ends_with(EXPLICIT_DENY), "{m}");
}

#[tokio::test(flavor = "multi_thread")]
async fn operations_without_plaintext_need_no_attestation() {
    let d = Deployment::new(&policy_for(&[&image(IMAGE)])).await;
    let sdk = &d.parent.sdk;
    let wp = sdk
        .generate_data_key_without_plaintext()
        .key_id(ALIAS)
        .key_spec(SdkKeySpec::Aes256)
        .send()
        .await
        .unwrap();
    assert!(wp.ciphertext_blob.is_some());
    let pair = sdk
        .generate_data_key_pair_without_plaintext()
        .key_id(ALIAS)
        .key_pair_spec(SdkPairSpec::EccNistP256)
        .send()
        .await
        .unwrap();
    assert!(pair.public_key.is_some() && pair.private_key_ciphertext_blob.is_some());
    let described = sdk.describe_key().key_id(ALIAS).send().await.unwrap();
    assert_eq!(
        described.key_metadata.unwrap().arn.as_deref(),
        Some(d.key_arn.as_str())
    );
    // Administration is not the parent's.
    let m = sdk_denial(
        sdk.put_key_policy()
            .key_id(&d.key_arn)
            .policy_name("default")
            .policy(policy_json(&policy_for(&[&image(OTHER)])))
            .send()
            .await,
    );
    assert!(
        m.ends_with(&format!("{NO_ALLOW} the kms:PutKeyPolicy action")),
        "{m}"
    );
    sdk_denial(sdk.disable_key().key_id(&d.key_arn).send().await);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_key_administrator_manages_the_key_but_cannot_use_it() {
    let policy = policy_for(&[&image(IMAGE)]);
    let d = Deployment::new(&policy).await;
    let admin = &d.admin;
    admin.describe_key().key_id(ALIAS).send().await.unwrap();
    let current = admin
        .get_key_policy()
        .key_id(&d.key_arn)
        .policy_name("default")
        .send()
        .await
        .unwrap()
        .policy
        .unwrap();
    assert_eq!(current, policy_json(&policy));
    admin
        .put_key_policy()
        .key_id(&d.key_arn)
        .policy_name("default")
        .policy(current)
        .send()
        .await
        .unwrap();
    admin.disable_key().key_id(&d.key_arn).send().await.unwrap();
    admin.enable_key().key_id(&d.key_arn).send().await.unwrap();

    let stored = d.stored_data_key().await;
    let m = sdk_denial(
        admin
            .decrypt()
            .ciphertext_blob(SdkBlob::new(stored.clone()))
            .send()
            .await,
    );
    assert!(
        m.ends_with(&format!("{NO_ALLOW} the kms:Decrypt action")),
        "{m}"
    );
    sdk_denial(
        admin
            .generate_data_key()
            .key_id(ALIAS)
            .key_spec(SdkKeySpec::Aes256)
            .send()
            .await,
    );
    sdk_denial(
        admin
            .generate_data_key_without_plaintext()
            .key_id(ALIAS)
            .key_spec(SdkKeySpec::Aes256)
            .send()
            .await,
    );
    // Not even with a genuine attestation of the admitted image: the
    // enclave statement names the parent role only.
    let nsm = MockNsm::new(&d.ca, MockNsmConfig::default().with_pcr(0, IMAGE)).unwrap();
    let keys = RecipientKeys::new(Arc::new(nsm), RecipientKeysConfig::default())
        .await
        .unwrap();
    let recipient = SdkRecipient::builder()
        .key_encryption_algorithm(KeyEncryptionMechanism::RsaesOaepSha256)
        .attestation_document(SdkBlob::new(keys.acquire().attestation_document().to_vec()))
        .build();
    let m = sdk_denial(
        admin
            .decrypt()
            .ciphertext_blob(SdkBlob::new(stored))
            .recipient(recipient)
            .send()
            .await,
    );
    assert!(
        m.ends_with(&format!("{NO_ALLOW} the kms:Decrypt action")),
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rollout_admits_both_images_until_the_old_one_is_removed() {
    const NEW: [u8; 48] = [0x7c; 48];
    let mut d = Deployment::new(&policy_for(&[&image(IMAGE), &image(NEW)])).await;
    let old_enclave = d.enclave(&[(0, IMAGE)]).await;
    let new_enclave = d.enclave(&[(0, NEW)]).await;
    old_enclave.generate_data_key(gdk(ALIAS)).await.unwrap();
    let kept = new_enclave.generate_data_key(gdk(ALIAS)).await.unwrap();
    let m = enclave_denial(
        d.enclave(&[(0, OTHER)])
            .await
            .generate_data_key(gdk(ALIAS))
            .await,
    );
    assert!(m.ends_with(EXPLICIT_DENY), "{m}");

    // The rollout is over: the administrator removes the old image.
    d.admin
        .put_key_policy()
        .key_id(&d.key_arn)
        .policy_name("default")
        .policy(policy_json(&policy_for(&[&image(NEW)])))
        .send()
        .await
        .unwrap();
    d.restart_parent().await;
    let old_enclave = d.enclave(&[(0, IMAGE)]).await;
    let new_enclave = d.enclave(&[(0, NEW)]).await;
    let m = enclave_denial(old_enclave.generate_data_key(gdk(ALIAS)).await);
    assert!(m.ends_with(EXPLICIT_DENY), "{m}");
    // Keys made during the rollout stay readable by the new image.
    let back = new_enclave
        .decrypt(DecryptRequest {
            ciphertext_blob: Some(kept.ciphertext_blob.clone()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(back.plaintext.expose(), kept.plaintext.expose());
}

#[tokio::test(flavor = "multi_thread")]
async fn every_given_pcr_must_match() {
    let (p1, p2, p8) = ([0x01; 48], [0x02; 48], [0x08; 48]);
    let measured = image(IMAGE)
        .with_pcr(1, &hex::encode(p1))
        .unwrap()
        .with_pcr(2, &hex::encode(p2))
        .unwrap()
        .with_pcr(8, &hex::encode(p8))
        .unwrap();
    let d = Deployment::new(&policy_for(&[&measured])).await;
    let all = [(0, IMAGE), (1, p1), (2, p2), (8, p8)];
    d.enclave(&all)
        .await
        .generate_data_key(gdk(ALIAS))
        .await
        .unwrap();
    // Same image, signed with another certificate (PCR8): the PCR0 deny
    // does not fire, but no Allow matches either.
    let resigned = [(0, IMAGE), (1, p1), (2, p2), (8, [0x09; 48])];
    let m = enclave_denial(
        d.enclave(&resigned)
            .await
            .generate_data_key(gdk(ALIAS))
            .await,
    );
    assert!(
        m.ends_with(&format!("{NO_ALLOW} the kms:GenerateDataKey action")),
        "{m}"
    );
}

/// The generated policy under the mock's evaluator, without a server: who may
/// do what, for principals the servers above do not play.
#[test]
fn decision_matrix_of_the_generated_policy() {
    let policy = Policy::parse(&policy_json(&policy_for(&[&image(IMAGE)]))).unwrap();
    let key = format!(
        "arn:aws:kms:us-east-1:{DEFAULT_ACCOUNT_ID}:key/1234abcd-12ab-34cd-56ef-1234567890ab"
    );
    let decide = |principal: &str, action: &str, pcr0: Option<[u8; 48]>| {
        let mut ctx = RequestContext::new(action, principal, DEFAULT_ACCOUNT_ID, &key);
        if let Some(p) = pcr0 {
            ctx = ctx.with_attestation_pcrs([(0u8, p.as_slice())]);
        }
        evaluate(&policy, &ctx)
    };
    let allowed = |d: Decision| d.is_allowed();
    let explicit = |d: Decision| matches!(d, Decision::ExplicitDeny { .. });
    for action in [
        "kms:Decrypt",
        "kms:GenerateDataKey",
        "kms:GenerateDataKeyPair",
    ] {
        assert!(allowed(decide(PARENT, action, Some(IMAGE))), "{action}");
        assert!(explicit(decide(PARENT, action, None)), "{action}");
        assert!(explicit(decide(PARENT, action, Some(OTHER))), "{action}");
        assert!(!allowed(decide(ADMIN, action, Some(IMAGE))), "{action}");
    }
    for action in [
        "kms:DescribeKey",
        "kms:GenerateDataKeyWithoutPlaintext",
        "kms:GenerateDataKeyPairWithoutPlaintext",
    ] {
        assert!(allowed(decide(PARENT, action, None)), "{action}");
    }
    for action in [
        "kms:Encrypt",
        "kms:ReEncryptFrom",
        "kms:ReEncryptTo",
        "kms:CreateGrant",
    ] {
        assert!(explicit(decide(PARENT, action, Some(IMAGE))), "{action}");
    }
    for action in [
        "kms:PutKeyPolicy",
        "kms:GetKeyPolicy",
        "kms:DescribeKey",
        "kms:DisableKey",
        "kms:EnableKey",
        "kms:CreateAlias",
        "kms:ScheduleKeyDeletion",
        "kms:CancelKeyDeletion",
        "kms:TagResource",
        "kms:RotateKeyOnDemand",
    ] {
        assert!(allowed(decide(ADMIN, action, None)), "{action}");
        assert!(
            !allowed(decide(PARENT, action, None)) || action == "kms:DescribeKey",
            "{action}"
        );
    }
    for action in [
        "kms:CreateGrant",
        "kms:Encrypt",
        "kms:GenerateDataKeyWithoutPlaintext",
        "kms:ReEncryptFrom",
    ] {
        assert!(!allowed(decide(ADMIN, action, None)), "{action}");
    }
    // Nobody else in the account gets anything: there is no delegation to
    // IAM policies (no "Enable IAM User Permissions" statement).
    for principal in [
        "arn:aws:iam::111122223333:role/someone-else",
        "arn:aws:iam::111122223333:root",
    ] {
        for action in [
            "kms:Decrypt",
            "kms:PutKeyPolicy",
            "kms:DescribeKey",
            "kms:CreateGrant",
        ] {
            assert!(
                !allowed(decide(principal, action, Some(IMAGE))),
                "{principal} {action}"
            );
        }
    }
}

/// `keybroker-local` and the in-process stacks create their keys with the
/// generated policy (the account root playing both roles, the mock's one
/// caller), and refuse to build one from a debug-mode PCR0.
#[test]
fn the_local_stack_uses_the_generated_policy() {
    use keybroker_harness::local::enclave_key_policy;
    let root = format!("arn:aws:iam::{DEFAULT_ACCOUNT_ID}:root");
    let expected = EnclaveKeyPolicy::new(&root, vec![image(IMAGE)])
        .unwrap()
        .with_key_admin(&root)
        .unwrap()
        .document()
        .to_value()
        .unwrap();
    assert_eq!(
        enclave_key_policy(DEFAULT_ACCOUNT_ID, &hex::encode(IMAGE)),
        expected
    );
    let debug = enclave_key_policy(DEFAULT_ACCOUNT_ID, &hex::encode([0u8; 48]));
    assert!(Policy::parse(&debug.to_string()).is_err(), "{debug}");
}
