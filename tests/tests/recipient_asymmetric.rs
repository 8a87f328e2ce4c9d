//! `DeriveSharedSecret` and `Decrypt` of RSA ciphertext (made outside KMS)
//! through the enclave, in both modes (issue 14), against the mock KMS with
//! asymmetric keys whose key policy requires the enclave's PCR0.
//!
//! One mock KMS over HTTPS (test CA, SigV4 verified) serves both: the
//! in-process parent proxy forwards broker-mode calls to it with
//! `aws-sdk-kms`, and relays the e2e-mode enclave's TLS to it through a
//! tunnel, handing over the local credentials. For each mode the enclave's
//! `Client` and its KMS-compatible endpoint (driven by an unmodified
//! `aws-sdk-kms`) must give exactly what the caller computes itself: the
//! ECDH of its own private key with the KMS key's `GetPublicKey`, and the
//! plaintext it encrypted to the RSA key's public key.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::sync::Arc;

use aws_lc_rs::agreement::{self, PrivateKey, UnparsedPublicKey};
use aws_lc_rs::encoding::{AsDer, PublicKeyX509Der};
use aws_lc_rs::rsa::{OAEP_SHA1_MGF1SHA1, OAEP_SHA256_MGF1SHA256, OaepPublicEncryptingKey};
use aws_lc_rs::rsa::{OaepAlgorithm, PublicEncryptingKey};
use aws_sdk_kms::primitives::Blob as SdkBlob;
use aws_sdk_kms::types::{EncryptionAlgorithmSpec, KeySpec, KeyUsageType};
use keybroker_common::address::Address;
use keybroker_common::key_allowlist::KeyAllowlist;
use keybroker_common::kms::{
    Blob, DecryptRequest, DeriveSharedSecretRequest, EncryptionAlgorithm, KeyAgreementAlgorithm,
};
use keybroker_common::protocol::AwsCredentialsWire;
use keybroker_common::secret::SecretString;
use keybroker_enclave::e2e::{E2eConfig, KmsUrl, ParentLink, ProxyLink, TrustRoots};
use keybroker_enclave::{
    Client, ClientConfig, KmsEndpoint, MockCa, MockNsm, MockNsmConfig, RecipientKeys,
    RecipientKeysConfig,
};
use keybroker_harness::local::{
    LOCAL_ACCESS_KEY_ID, LOCAL_SECRET_ACCESS_KEY, enclave_key_policy, kms_client,
    kms_client_trusting,
};
use keybroker_harness::mock_kms::{
    DEFAULT_ACCOUNT_ID, MockKms, MockKmsConfig, MockKmsCredentials, MockKmsTls, RunningMockKms,
};
use keybroker_harness::testkit::{PCR0, connect_enclave, spawn_kms_endpoint};
use keybroker_proxy::backend::SdkKmsBackend;
use keybroker_proxy::credentials::StaticCredentials;
use keybroker_proxy::server::{Proxy, ProxyConfig, ProxyHandle};

const REGION: &str = "us-east-1";

/// The mock KMS, an admin SDK client of it, and the parent proxy in front.
struct Stack {
    _dir: tempfile::TempDir,
    ca: MockCa,
    kms: RunningMockKms,
    admin: aws_sdk_kms::Client,
    ca_pem: String,
    _proxy: ProxyHandle,
    addr: Address,
}

async fn stack() -> Stack {
    let dir = tempfile::tempdir().unwrap();
    let ca = MockCa::generate().unwrap();
    let tls = MockKmsTls::load_or_create(&dir.path().join("kms-tls"), &[]).unwrap();
    let ca_pem = tls.ca_pem().to_owned();
    let kms = MockKms::new(MockKmsConfig {
        attestation_roots_der: vec![ca.root_der().to_vec()],
        tls: Some(tls),
        credentials: Some(MockKmsCredentials::new(
            LOCAL_ACCESS_KEY_ID,
            LOCAL_SECRET_ACCESS_KEY,
            None,
        )),
        ..MockKmsConfig::default()
    })
    .unwrap()
    .spawn("127.0.0.1:0")
    .await
    .unwrap();
    let admin = kms_client_trusting(&kms.endpoint(), Some(&ca_pem));
    let mut config = ProxyConfig::new("tcp://127.0.0.1:0".parse().unwrap());
    config
        .tunnels
        .allowed
        .insert(format!("localhost:{}", kms.addr().port()).parse().unwrap());
    // The proxy hands the enclave the local credentials (e2e mode signs
    // with them inside the enclave).
    let credentials = AwsCredentialsWire {
        access_key_id: LOCAL_ACCESS_KEY_ID.into(),
        secret_access_key: SecretString::from_str_copy(LOCAL_SECRET_ACCESS_KEY),
        session_token: None,
        expiration_ms: None,
    };
    let proxy = Proxy::bind(config, SdkKmsBackend::new(admin.clone()))
        .await
        .unwrap()
        .with_credentials(Arc::new(StaticCredentials(credentials)))
        .spawn();
    let addr = proxy.local_addr().clone();
    Stack {
        _dir: dir,
        ca,
        kms,
        admin,
        ca_pem,
        _proxy: proxy,
        addr,
    }
}

impl Stack {
    /// The enclave's client in `mode` ("broker" or "e2e"), its mock NSM
    /// reporting PCR0.
    async fn client(&self, mode: &str) -> Client {
        let nsm = MockNsmConfig::default().with_pcr(0, PCR0);
        if mode == "broker" {
            return connect_enclave(&self.ca, &self.addr, nsm).await.unwrap();
        }
        let keys = RecipientKeys::new(
            Arc::new(MockNsm::new(&self.ca, nsm).unwrap()),
            RecipientKeysConfig::default(),
        )
        .await
        .unwrap();
        let port = self.kms.addr().port();
        let e2e = E2eConfig::new(
            REGION,
            KeyAllowlist::parse([format!("arn:aws:kms:{REGION}:{DEFAULT_ACCOUNT_ID}:*")]).unwrap(),
        )
        .unwrap()
        .with_endpoint(KmsUrl::parse(&format!("https://localhost:{port}")).unwrap())
        .with_trust(TrustRoots::mock_with_dev_ca_pem(self.ca_pem.as_bytes()).unwrap());
        let link: Arc<dyn ParentLink> = Arc::new(ProxyLink::new(self.addr.clone()));
        Client::connect_e2e(ClientConfig::new(self.addr.clone()), e2e, link, keys)
            .await
            .unwrap()
    }

    /// A key of `spec` and `usage` whose policy gives plaintext only to an
    /// enclave with PCR0; its ARN and `GetPublicKey`'s DER public key.
    async fn key(&self, spec: KeySpec, usage: KeyUsageType) -> (String, Vec<u8>) {
        let policy = enclave_key_policy(DEFAULT_ACCOUNT_ID, &hex::encode(PCR0));
        let created = self
            .admin
            .create_key()
            .key_spec(spec)
            .key_usage(usage)
            .policy(policy.to_string())
            .send()
            .await
            .unwrap();
        let arn = created.key_metadata().unwrap().arn().unwrap().to_owned();
        let public = self
            .admin
            .get_public_key()
            .key_id(&arn)
            .send()
            .await
            .unwrap();
        (arn, public.public_key().unwrap().as_ref().to_vec())
    }
}

/// A fresh ECDH key of the caller's: its DER public key and the shared
/// secret with the KMS key's DER public key `kms_public`.
fn caller_ecdh(alg: &'static agreement::Algorithm, kms_public: &[u8]) -> (Vec<u8>, Vec<u8>) {
    let mine = PrivateKey::generate(alg).unwrap();
    let der: PublicKeyX509Der<'_> = mine.compute_public_key().unwrap().as_der().unwrap();
    let secret = agreement::agree(
        &mine,
        UnparsedPublicKey::new(alg, kms_public),
        aws_lc_rs::error::Unspecified,
        |k| Ok(k.to_vec()),
    )
    .unwrap();
    (der.as_ref().to_vec(), secret)
}

fn rsa_encrypt(alg: &'static OaepAlgorithm, public_der: &[u8], plaintext: &[u8]) -> Vec<u8> {
    let key =
        OaepPublicEncryptingKey::new(PublicEncryptingKey::from_der(public_der).unwrap()).unwrap();
    let mut out = vec![0; key.ciphertext_size()];
    key.encrypt(alg, plaintext, &mut out, None)
        .unwrap()
        .to_vec()
}

async fn both_operations_in(mode: &str) {
    let s = stack().await;
    let client = s.client(mode).await;
    let endpoint = spawn_kms_endpoint(KmsEndpoint::new(client.clone()))
        .await
        .unwrap();
    let sdk = kms_client(&format!("http://{endpoint}"));

    // DeriveSharedSecret on each NIST curve: the Client and the endpoint.
    for (spec, alg, len) in [
        (KeySpec::EccNistP256, &agreement::ECDH_P256, 32),
        (KeySpec::EccNistP384, &agreement::ECDH_P384, 48),
        (KeySpec::EccNistP521, &agreement::ECDH_P521, 66),
    ] {
        let (arn, kms_public) = s.key(spec.clone(), KeyUsageType::KeyAgreement).await;
        let (mine, expected) = caller_ecdh(alg, &kms_public);
        assert_eq!(expected.len(), len);
        let got = client
            .derive_shared_secret(DeriveSharedSecretRequest {
                key_id: Some(arn.clone()),
                key_agreement_algorithm: Some(KeyAgreementAlgorithm::Ecdh),
                public_key: Some(Blob(mine.clone())),
                ..Default::default()
            })
            .await
            .unwrap_or_else(|e| panic!("{mode} {spec:?}: {e}"));
        assert_eq!(got.shared_secret.expose(), expected, "{mode} {spec:?}");
        assert_eq!(got.key_id.as_deref(), Some(arn.as_str()));

        let out = sdk
            .derive_shared_secret()
            .key_id(&arn)
            .key_agreement_algorithm(aws_sdk_kms::types::KeyAgreementAlgorithmSpec::Ecdh)
            .public_key(SdkBlob::new(mine))
            .send()
            .await
            .unwrap_or_else(|e| panic!("{mode} {spec:?} endpoint: {e:?}"));
        assert_eq!(out.shared_secret().unwrap().as_ref(), expected);
        assert!(out.ciphertext_for_recipient().is_none());
    }

    // Decrypt of RSA-OAEP ciphertext made outside KMS with GetPublicKey's key.
    let (arn, rsa_public) = s.key(KeySpec::Rsa2048, KeyUsageType::EncryptDecrypt).await;
    for (alg, spec, sdk_spec) in [
        (
            &OAEP_SHA256_MGF1SHA256,
            EncryptionAlgorithm::RsaesOaepSha256,
            EncryptionAlgorithmSpec::RsaesOaepSha256,
        ),
        (
            &OAEP_SHA1_MGF1SHA1,
            EncryptionAlgorithm::RsaesOaepSha1,
            EncryptionAlgorithmSpec::RsaesOaepSha1,
        ),
    ] {
        let secret = format!("{mode}: made outside KMS with {spec:?}");
        let ciphertext = rsa_encrypt(alg, &rsa_public, secret.as_bytes());
        let d = client
            .decrypt_expecting(
                DecryptRequest {
                    ciphertext_blob: Some(Blob(ciphertext.clone())),
                    key_id: Some(arn.clone()),
                    encryption_algorithm: Some(spec),
                    ..Default::default()
                },
                secret.len(),
            )
            .await
            .unwrap_or_else(|e| panic!("{mode} {spec:?}: {e}"));
        assert_eq!(d.plaintext.expose(), secret.as_bytes());
        assert_eq!(d.encryption_algorithm, Some(spec));
        let out = sdk
            .decrypt()
            .key_id(&arn)
            .encryption_algorithm(sdk_spec)
            .ciphertext_blob(SdkBlob::new(ciphertext))
            .send()
            .await
            .unwrap_or_else(|e| panic!("{mode} {spec:?} endpoint: {e:?}"));
        assert_eq!(out.plaintext().unwrap().as_ref(), secret.as_bytes());
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn derive_shared_secret_and_rsa_decrypt_in_broker_mode() {
    both_operations_in("broker").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn derive_shared_secret_and_rsa_decrypt_in_e2e_mode() {
    both_operations_in("e2e").await;
}

/// The generated key policy attests `kms:DeriveSharedSecret`: an enclave of
/// another image gets no shared secret, and the parent gets none without a
/// `Recipient`.
#[tokio::test(flavor = "multi_thread")]
async fn another_image_gets_no_shared_secret() {
    let s = stack().await;
    let (arn, kms_public) = s
        .key(KeySpec::EccNistP256, KeyUsageType::KeyAgreement)
        .await;
    let (mine, _) = caller_ecdh(&agreement::ECDH_P256, &kms_public);
    let other = connect_enclave(
        &s.ca,
        &s.addr,
        MockNsmConfig::default().with_pcr(0, [0x99; 48]),
    )
    .await
    .unwrap();
    let request = DeriveSharedSecretRequest {
        key_id: Some(arn.clone()),
        key_agreement_algorithm: Some(KeyAgreementAlgorithm::Ecdh),
        public_key: Some(Blob(mine.clone())),
        ..Default::default()
    };
    let e = other
        .derive_shared_secret(request.clone())
        .await
        .unwrap_err();
    assert_eq!(e.to_kms_error().code, "AccessDeniedException", "{e}");
    // The parent itself, without Recipient (what a stolen role could do).
    let e = s
        .admin
        .derive_shared_secret()
        .key_id(&arn)
        .key_agreement_algorithm(aws_sdk_kms::types::KeyAgreementAlgorithmSpec::Ecdh)
        .public_key(SdkBlob::new(mine))
        .send()
        .await
        .unwrap_err();
    let code = aws_sdk_kms::error::ProvideErrorMetadata::code(&e).map(str::to_owned);
    assert_eq!(code.as_deref(), Some("AccessDeniedException"), "{e:?}");
}
