//! `Recipient` and key policies through the real `aws-sdk-kms` client:
//! attestation documents signed by a test CA (trusted via
//! `--attestation-root` PEM), policy outcomes on `kms:RecipientAttestation`
//! and encryption-context conditions, and `CiphertextForRecipient` decrypted
//! with `keybroker_common::cms` and with OpenSSL.
// Helpers outside #[test] functions may fail loudly too: this is test code.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod support;

use std::sync::{Arc, Mutex};

use aws_lc_rs::encoding::AsDer as _;
use aws_sdk_kms::types::{DataKeyPairSpec, DataKeySpec};
use keybroker_common::cms::{RecipientPrivateKey, decrypt as cms_decrypt};
use keybroker_harness::mock_kms::MockKms;
use support::{
    Enclave, attestation, config_trusting, created, expect_code, now_ms, pcrs, recipient, start,
    test_pki,
};

const PCR0: [u8; 48] = [0xA5; 48];

/// Admin actions for the account root, plaintext-returning actions only
/// with PCR0 = `pcr0`.
fn enclave_policy(pcr0: &[u8]) -> String {
    serde_json::json!({
        "Version": "2012-10-17",
        "Statement": [
            {"Sid": "KeyAdministration", "Effect": "Allow",
             "Principal": {"AWS": support::ROOT_PRINCIPAL},
             "Action": ["kms:DescribeKey", "kms:GetKeyPolicy", "kms:PutKeyPolicy", "kms:Encrypt",
                        "kms:GenerateDataKeyWithoutPlaintext", "kms:CreateAlias"],
             "Resource": "*"},
            {"Sid": "EnclaveOnly", "Effect": "Allow",
             "Principal": {"AWS": support::ROOT_PRINCIPAL},
             "Action": ["kms:Decrypt", "kms:GenerateDataKey", "kms:GenerateDataKeyPair"],
             "Resource": "*",
             "Condition": {"StringEqualsIgnoreCase": {
                 "kms:RecipientAttestation:ImageSha384": hex::encode(pcr0)}}}
        ]
    })
    .to_string()
}

struct Fixture {
    _kms: keybroker_harness::mock_kms::RunningMockKms,
    c: aws_sdk_kms::Client,
    enclave: Enclave,
    key_id: String,
}

async fn fixture(policy: String) -> Fixture {
    let pki = test_pki();
    let (kms, c) = start(config_trusting(&pki)).await;
    let key_id = created(c.create_key().policy(policy)).await.key_id;
    Fixture {
        _kms: kms,
        c,
        enclave: Enclave::new(pki),
        key_id,
    }
}

#[tokio::test]
async fn generate_data_key_with_allowed_pcr0_returns_cms_for_the_recipient_and_no_plaintext() {
    let f = fixture(enclave_policy(&PCR0)).await;
    let r =
        f.c.generate_data_key()
            .key_id(&f.key_id)
            .key_spec(DataKeySpec::Aes256)
            .recipient(recipient(f.enclave.doc(PCR0)))
            .send()
            .await
            .unwrap();
    assert!(
        r.plaintext().is_none(),
        "Plaintext must be absent with a Recipient"
    );
    assert!(r.key_id().unwrap().ends_with(&f.key_id));
    let cfr = r.ciphertext_for_recipient().unwrap().as_ref();
    assert!(cfr.len() <= 6144);
    // BER as KMS sends it: ContentInfo SEQUENCE with indefinite length.
    assert_eq!(&cfr[..2], &[0x30, 0x80]);
    let data_key = cms_decrypt(cfr, &f.enclave.key, None).unwrap();
    assert_eq!(data_key.len(), 32);

    // Decrypt with a Recipient gives the same key, again only for the recipient.
    let d =
        f.c.decrypt()
            .ciphertext_blob(r.ciphertext_blob().unwrap().clone())
            .recipient(recipient(f.enclave.doc(PCR0)))
            .send()
            .await
            .unwrap();
    assert!(d.plaintext().is_none());
    let again = cms_decrypt(
        d.ciphertext_for_recipient().unwrap().as_ref(),
        &f.enclave.key,
        None,
    )
    .unwrap();
    assert_eq!(again.expose(), data_key.expose());
}

#[tokio::test]
async fn wrong_pcr0_or_missing_recipient_is_access_denied() {
    let f = fixture(enclave_policy(&PCR0)).await;
    let arn = format!("arn:aws:kms:us-east-1:111122223333:key/{}", f.key_id);
    let m = expect_code(
        f.c.generate_data_key()
            .key_id(&f.key_id)
            .key_spec(DataKeySpec::Aes256)
            .recipient(recipient(f.enclave.doc([0x5A; 48])))
            .send()
            .await,
        "AccessDeniedException",
    );
    assert_eq!(
        m,
        format!(
            "User: arn:aws:iam::111122223333:root is not authorized to perform: kms:GenerateDataKey on resource: {arn} because no resource-based policy allows the kms:GenerateDataKey action"
        )
    );
    expect_code(
        f.c.generate_data_key()
            .key_id(&f.key_id)
            .key_spec(DataKeySpec::Aes256)
            .send()
            .await,
        "AccessDeniedException",
    );
    // The administration statement still allows the operations without
    // plaintext.
    let w =
        f.c.generate_data_key_without_plaintext()
            .key_id(&f.key_id)
            .key_spec(DataKeySpec::Aes256)
            .send()
            .await
            .unwrap();
    expect_code(
        f.c.decrypt()
            .ciphertext_blob(w.ciphertext_blob().unwrap().clone())
            .send()
            .await,
        "AccessDeniedException",
    );
    f.c.decrypt()
        .ciphertext_blob(w.ciphertext_blob().unwrap().clone())
        .recipient(recipient(f.enclave.doc(PCR0)))
        .send()
        .await
        .unwrap();
}

#[tokio::test]
async fn explicit_deny_wins_over_an_allow() {
    let policy = serde_json::json!({
        "Version": "2012-10-17",
        "Statement": [
            {"Sid": "Everything", "Effect": "Allow", "Principal": {"AWS": "111122223333"},
             "Action": "kms:*", "Resource": "*"},
            {"Sid": "NoPlaintextOutsideTheEnclave", "Effect": "Deny", "Principal": "*",
             "Action": ["kms:Decrypt", "kms:GenerateDataKey"], "Resource": "*",
             "Condition": {"StringNotEqualsIgnoreCase": {
                 "kms:RecipientAttestation:PCR0": hex::encode(PCR0)}}}
        ]
    })
    .to_string();
    let f = fixture(policy).await;
    let m = expect_code(
        f.c.generate_data_key()
            .key_id(&f.key_id)
            .key_spec(DataKeySpec::Aes256)
            .send()
            .await,
        "AccessDeniedException",
    );
    assert!(
        m.ends_with("with an explicit deny in a resource-based policy"),
        "{m}"
    );
    expect_code(
        f.c.generate_data_key()
            .key_id(&f.key_id)
            .key_spec(DataKeySpec::Aes256)
            .recipient(recipient(f.enclave.doc([1; 48])))
            .send()
            .await,
        "AccessDeniedException",
    );
    let ok =
        f.c.generate_data_key()
            .key_id(&f.key_id)
            .key_spec(DataKeySpec::Aes256)
            .recipient(recipient(f.enclave.doc(PCR0)))
            .send()
            .await
            .unwrap();
    assert!(ok.plaintext().is_none());
}

#[tokio::test]
async fn encryption_context_conditions_gate_the_call() {
    let policy = serde_json::json!({
        "Version": "2012-10-17",
        "Statement": [
            {"Sid": "Admin", "Effect": "Allow", "Principal": {"AWS": support::ROOT_PRINCIPAL},
             "Action": ["kms:DescribeKey", "kms:PutKeyPolicy", "kms:GetKeyPolicy"], "Resource": "*"},
            {"Sid": "TenantBlue", "Effect": "Allow", "Principal": {"AWS": support::ROOT_PRINCIPAL},
             "Action": ["kms:GenerateDataKey", "kms:Decrypt"], "Resource": "*",
             "Condition": {
                "StringEquals": {"kms:EncryptionContext:tenant": "blue"},
                "ForAllValues:StringEquals": {"kms:EncryptionContextKeys": ["tenant", "purpose"]}}}
        ]
    })
    .to_string();
    let f = fixture(policy).await;
    let gdk = |pairs: &[(&str, &str)]| {
        let mut req =
            f.c.generate_data_key()
                .key_id(&f.key_id)
                .key_spec(DataKeySpec::Aes256);
        for (k, v) in pairs {
            req = req.encryption_context(*k, *v);
        }
        req.send()
    };
    let r = gdk(&[("tenant", "blue"), ("purpose", "db")]).await.unwrap();
    assert!(r.plaintext().is_some());
    expect_code(gdk(&[("tenant", "red")]).await, "AccessDeniedException");
    expect_code(
        gdk(&[("tenant", "blue"), ("extra", "x")]).await,
        "AccessDeniedException",
    );
    expect_code(gdk(&[]).await, "AccessDeniedException");
}

#[tokio::test]
async fn generate_data_key_pair_and_generate_random_honour_recipient() {
    use aws_lc_rs::signature::KeyPair as _;
    let f = fixture(enclave_policy(&PCR0)).await;
    let r =
        f.c.generate_data_key_pair()
            .key_id(&f.key_id)
            .key_pair_spec(DataKeyPairSpec::EccNistP384)
            .recipient(recipient(f.enclave.doc(PCR0)))
            .send()
            .await
            .unwrap();
    assert!(r.private_key_plaintext().is_none());
    let pkcs8 = cms_decrypt(
        r.ciphertext_for_recipient().unwrap().as_ref(),
        &f.enclave.key,
        None,
    )
    .unwrap();
    let kp = aws_lc_rs::signature::EcdsaKeyPair::from_pkcs8(
        &aws_lc_rs::signature::ECDSA_P384_SHA384_ASN1_SIGNING,
        pkcs8.expose(),
    )
    .unwrap();
    assert_eq!(
        kp.public_key().as_der().unwrap().as_ref(),
        r.public_key().unwrap().as_ref()
    );

    // GenerateRandom has no key policy: only the attestation is checked.
    let g =
        f.c.generate_random()
            .number_of_bytes(32)
            .recipient(recipient(f.enclave.doc([3; 48])))
            .send()
            .await
            .unwrap();
    assert!(g.plaintext().is_none());
    let random = cms_decrypt(
        g.ciphertext_for_recipient().unwrap().as_ref(),
        &f.enclave.key,
        None,
    )
    .unwrap();
    assert_eq!(random.len(), 32);
}

#[tokio::test]
async fn invalid_stale_untrusted_or_non_rsa_attestations_are_validation_errors() {
    let f = fixture(enclave_policy(&PCR0)).await;
    let gdk = |doc: Vec<u8>| {
        f.c.generate_data_key()
            .key_id(&f.key_id)
            .key_spec(DataKeySpec::Aes256)
            .recipient(recipient(doc))
            .send()
    };
    let spki = f.enclave.key.public_key_spki_der();
    // Ten minutes old: older than the default 5 minute maximum.
    let stale = attestation(
        &f.enclave.pki,
        pcrs(PCR0),
        Some(spki.clone()),
        now_ms() - 600_000,
    );
    let m = expect_code(gdk(stale).await, "ValidationException");
    assert!(m.contains("maximum age"), "{m}");
    // Signed by a CA the mock does not trust.
    let other = test_pki();
    let untrusted = attestation(&other, pcrs(PCR0), Some(spki.clone()), now_ms());
    let m = expect_code(gdk(untrusted).await, "ValidationException");
    assert!(m.contains("not a trusted root"), "{m}");
    // An EC public key instead of RSA.
    let ec = aws_lc_rs::signature::EcdsaKeyPair::generate(
        &aws_lc_rs::signature::ECDSA_P256_SHA256_ASN1_SIGNING,
    )
    .unwrap();
    let ec_spki = aws_lc_rs::signature::KeyPair::public_key(&ec)
        .as_der()
        .unwrap()
        .as_ref()
        .to_vec();
    let m = expect_code(
        gdk(attestation(
            &f.enclave.pki,
            pcrs(PCR0),
            Some(ec_spki),
            now_ms(),
        ))
        .await,
        "ValidationException",
    );
    assert!(m.contains("RSA"), "{m}");
    // No public key at all.
    expect_code(
        gdk(attestation(&f.enclave.pki, pcrs(PCR0), None, now_ms())).await,
        "ValidationException",
    );
    // Garbage and a flipped byte in a genuine document.
    expect_code(gdk(vec![0x84, 0x44, 0xA1]).await, "ValidationException");
    let mut tampered = f.enclave.doc(PCR0);
    let n = tampered.len() - 10;
    tampered[n] ^= 1;
    expect_code(gdk(tampered).await, "ValidationException");
}

/// The mock's verification cache: a repeated document is answered from it
/// with the same result, and the age limit and the chain's expiry still
/// apply to a cached document.
#[test]
fn repeated_documents_come_from_the_cache_and_still_age_and_expire() {
    use keybroker_common::UnixMillis;
    use keybroker_common::attestation::Verifier;
    use keybroker_harness::mock_kms::recipient::RecipientVerifier;
    let pki = test_pki();
    let v = RecipientVerifier::new([pki.root_der.as_slice()], 300_000).unwrap();
    let spki = RecipientPrivateKey::generate_2048()
        .unwrap()
        .public_key_spki_der();
    let t = now_ms();
    let doc = attestation(&pki, pcrs(PCR0), Some(spki.clone()), t);
    let first = v.verify(&doc, UnixMillis(t)).unwrap();
    let again = v.verify(&doc, UnixMillis(t + 1000)).unwrap();
    assert_eq!(again, first);
    let stats = v.cache().stats();
    assert_eq!((stats.hits, stats.misses), (1, 1));
    // Another document is a miss.
    let other = attestation(&pki, pcrs(PCR0), Some(spki.clone()), t + 1);
    v.verify(&other, UnixMillis(t + 1000)).unwrap();
    assert_eq!(v.cache().stats().misses, 2);
    // Older than the maximum age: refused, cached or not.
    let err = v.verify(&doc, UnixMillis(t + 300_001)).unwrap_err();
    assert_eq!(err.code, "ValidationException");
    assert!(err.message.contains("maximum age"), "{}", err.message);

    // A document made a minute before its chain ends: cached until then,
    // verified again (and expired) one millisecond later.
    let end = Verifier::from_trusted_roots([pki.root_der.as_slice()])
        .unwrap()
        .verify(&doc, UnixMillis(t))
        .unwrap()
        .chain_not_after();
    let late = attestation(&pki, pcrs(PCR0), Some(spki), end.0 - 60_000);
    v.verify(&late, end).unwrap();
    let hits = v.cache().stats().hits;
    v.verify(&late, end).unwrap();
    assert_eq!(v.cache().stats().hits, hits + 1);
    let err = v.verify(&late, UnixMillis(end.0 + 1)).unwrap_err();
    assert_eq!(err.code, "ValidationException");
    assert!(err.message.contains("expired"), "{}", err.message);
}

#[tokio::test]
async fn access_denied_logs_the_statement_and_condition_with_expected_and_actual_values() {
    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);
    impl std::io::Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let buf = Buf::default();
    let writer = buf.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .with_max_level(tracing::Level::WARN)
        .finish();

    let pki = test_pki();
    let kms = MockKms::new(config_trusting(&pki)).unwrap();
    let key = RecipientPrivateKey::generate_2048().unwrap();
    let created = kms
        .call(
            "CreateKey",
            &serde_json::json!({"Policy": enclave_policy(&PCR0)}),
        )
        .unwrap();
    let key_id = created["KeyMetadata"]["KeyId"].as_str().unwrap().to_owned();
    let wrong = [0x11u8; 48];
    let doc = attestation(&pki, pcrs(wrong), Some(key.public_key_spki_der()), now_ms());
    use base64::Engine as _;
    let body = serde_json::json!({
        "KeyId": key_id, "KeySpec": "AES_256",
        "Recipient": {"KeyEncryptionAlgorithm": "RSAES_OAEP_SHA_256",
                      "AttestationDocument": base64::engine::general_purpose::STANDARD.encode(&doc)}
    });
    let e = tracing::subscriber::with_default(subscriber, || {
        // Another test's thread may have cached this callsite's interest
        // as "never" (no subscriber there) while this one was being set:
        // ask every callsite again, so the warning reaches this subscriber.
        tracing::callsite::rebuild_interest_cache();
        kms.call("GenerateDataKey", &body)
    })
    .unwrap_err();
    assert_eq!(e.code, "AccessDeniedException");
    let log = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
    assert!(log.contains("WARN"), "{log}");
    assert!(log.contains("statement #1 (Sid \"EnclaveOnly\")"), "{log}");
    assert!(
        log.contains("kms:RecipientAttestation:ImageSha384"),
        "{log}"
    );
    assert!(
        log.contains(&hex::encode(PCR0)),
        "expected value missing: {log}"
    );
    assert!(
        log.contains(&hex::encode(wrong)),
        "actual value missing: {log}"
    );
}

#[tokio::test]
async fn ciphertext_for_recipient_decrypts_with_openssl_cms() {
    let Some(openssl) = which_openssl() else {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "openssl is required under CI=true"
        );
        eprintln!("note: openssl not found; skipping the OpenSSL interop test");
        return;
    };
    // A recipient key whose private half we can hand to OpenSSL.
    let rsa =
        aws_lc_rs::rsa::PrivateDecryptingKey::generate(aws_lc_rs::rsa::KeySize::Rsa2048).unwrap();
    let pkcs8 = rsa.as_der().unwrap().as_ref().to_vec();
    let key = RecipientPrivateKey::from_pkcs8_der(&pkcs8).unwrap();

    let pki = test_pki();
    let (_kms, c) = start(config_trusting(&pki)).await;
    let key_id = created(c.create_key().policy(enclave_policy(&PCR0)))
        .await
        .key_id;
    let doc = attestation(&pki, pcrs(PCR0), Some(key.public_key_spki_der()), now_ms());
    let r = c
        .generate_data_key()
        .key_id(&key_id)
        .number_of_bytes(1024)
        .recipient(recipient(doc))
        .send()
        .await
        .unwrap();
    let cfr = r.ciphertext_for_recipient().unwrap().as_ref().to_vec();
    let ours = cms_decrypt(&cfr, &key, None).unwrap();
    assert_eq!(ours.len(), 1024);

    let dir = tempfile::tempdir().unwrap();
    let key_pem = dir.path().join("key.pem");
    let cfr_der = dir.path().join("cfr.der");
    let out = dir.path().join("out.bin");
    std::fs::write(&key_pem, pem("PRIVATE KEY", &pkcs8)).unwrap();
    std::fs::write(&cfr_der, &cfr).unwrap();
    let status = std::process::Command::new(openssl)
        .args(["cms", "-decrypt", "-inform", "DER", "-binary", "-in"])
        .arg(&cfr_der)
        .arg("-inkey")
        .arg(&key_pem)
        .arg("-out")
        .arg(&out)
        .status()
        .unwrap();
    assert!(status.success(), "openssl cms -decrypt failed");
    assert_eq!(std::fs::read(&out).unwrap(), ours.expose());
}

fn which_openssl() -> Option<std::path::PathBuf> {
    let ok = std::process::Command::new("openssl")
        .arg("version")
        .output()
        .is_ok_and(|o| o.status.success());
    ok.then(|| std::path::PathBuf::from("openssl"))
}

fn pem(label: &str, der: &[u8]) -> String {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut s = format!("-----BEGIN {label}-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        s.push_str(std::str::from_utf8(chunk).unwrap());
        s.push('\n');
    }
    s.push_str(&format!("-----END {label}-----\n"));
    s
}
