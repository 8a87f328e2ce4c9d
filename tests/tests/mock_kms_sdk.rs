//! The mock KMS driven through the real `aws-sdk-kms` client: every
//! operation, key resolution, key states and the validation errors KMS
//! gives, with KMS's error codes and wording.
// Helpers outside #[test] functions may fail loudly too: this is test code.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod support;

use aws_sdk_kms::primitives::Blob;
use aws_sdk_kms::types::{DataKeyPairSpec, DataKeySpec, KeyState};
use keybroker_harness::mock_kms::MockKmsConfig;
use support::{created, expect_code, start};

async fn new_key(c: &aws_sdk_kms::Client) -> (String, String) {
    let m = created(c.create_key().description("test key")).await;
    (m.key_id, m.arn.unwrap())
}

#[tokio::test]
async fn generate_data_key_returns_plaintext_and_a_ciphertext_that_decrypts_to_it() {
    let (_kms, c) = start(MockKmsConfig::default()).await;
    let (id, arn) = new_key(&c).await;
    let r = c
        .generate_data_key()
        .key_id(&id)
        .key_spec(DataKeySpec::Aes256)
        .encryption_context("purpose", "test")
        .send()
        .await
        .unwrap();
    assert_eq!(r.key_id(), Some(arn.as_str()));
    let pt = r.plaintext().unwrap().as_ref().to_vec();
    assert_eq!(pt.len(), 32);
    assert!(r.ciphertext_for_recipient().is_none());
    let d = c
        .decrypt()
        .ciphertext_blob(r.ciphertext_blob().unwrap().clone())
        .encryption_context("purpose", "test")
        .send()
        .await
        .unwrap();
    assert_eq!(d.plaintext().unwrap().as_ref(), pt.as_slice());
    assert_eq!(d.key_id(), Some(arn.as_str()));
    assert_eq!(
        d.encryption_algorithm().map(|a| a.as_str()),
        Some("SYMMETRIC_DEFAULT")
    );

    let r = c
        .generate_data_key()
        .key_id(&id)
        .number_of_bytes(64)
        .send()
        .await
        .unwrap();
    assert_eq!(r.plaintext().unwrap().as_ref().len(), 64);
    let r = c
        .generate_data_key()
        .key_id(&id)
        .key_spec(DataKeySpec::Aes128)
        .send()
        .await
        .unwrap();
    assert_eq!(r.plaintext().unwrap().as_ref().len(), 16);
}

#[tokio::test]
async fn generate_data_key_without_plaintext_gives_only_a_ciphertext() {
    let (_kms, c) = start(MockKmsConfig::default()).await;
    let (id, arn) = new_key(&c).await;
    let r = c
        .generate_data_key_without_plaintext()
        .key_id(&id)
        .number_of_bytes(48)
        .send()
        .await
        .unwrap();
    assert_eq!(r.key_id(), Some(arn.as_str()));
    let d = c
        .decrypt()
        .ciphertext_blob(r.ciphertext_blob().unwrap().clone())
        .send()
        .await
        .unwrap();
    assert_eq!(d.plaintext().unwrap().as_ref().len(), 48);
}

#[tokio::test]
async fn encrypt_decrypt_and_re_encrypt_round_trip_across_keys() {
    let (_kms, c) = start(MockKmsConfig::default()).await;
    let (a, a_arn) = new_key(&c).await;
    let (b, b_arn) = new_key(&c).await;
    let e = c
        .encrypt()
        .key_id(&a)
        .plaintext(Blob::new(b"hello mock kms".to_vec()))
        .encryption_context("k", "v")
        .send()
        .await
        .unwrap();
    assert_eq!(e.key_id(), Some(a_arn.as_str()));
    let re = c
        .re_encrypt()
        .ciphertext_blob(e.ciphertext_blob().unwrap().clone())
        .source_encryption_context("k", "v")
        .destination_key_id(&b)
        .destination_encryption_context("k2", "v2")
        .send()
        .await
        .unwrap();
    assert_eq!(re.source_key_id(), Some(a_arn.as_str()));
    assert_eq!(re.key_id(), Some(b_arn.as_str()));
    let d = c
        .decrypt()
        .ciphertext_blob(re.ciphertext_blob().unwrap().clone())
        .encryption_context("k2", "v2")
        .key_id(&b_arn)
        .send()
        .await
        .unwrap();
    assert_eq!(d.plaintext().unwrap().as_ref(), b"hello mock kms");
    // The old context no longer opens the re-encrypted blob.
    expect_code(
        c.decrypt()
            .ciphertext_blob(re.ciphertext_blob().unwrap().clone())
            .encryption_context("k", "v")
            .send()
            .await,
        "InvalidCiphertextException",
    );
}

#[tokio::test]
async fn wrong_context_or_flipped_byte_is_invalid_ciphertext_and_foreign_blob_is_incorrect_key() {
    let (_kms, c) = start(MockKmsConfig::default()).await;
    let (a, _) = new_key(&c).await;
    let (b, _) = new_key(&c).await;
    let r = c
        .generate_data_key()
        .key_id(&a)
        .key_spec(DataKeySpec::Aes256)
        .encryption_context("tenant", "one")
        .send()
        .await
        .unwrap();
    let blob = r.ciphertext_blob().unwrap().as_ref().to_vec();
    for ctx in [Some(("tenant", "two")), Some(("Tenant", "one")), None] {
        let mut req = c.decrypt().ciphertext_blob(Blob::new(blob.clone()));
        if let Some((k, v)) = ctx {
            req = req.encryption_context(k, v);
        }
        expect_code(req.send().await, "InvalidCiphertextException");
    }
    let mut flipped = blob.clone();
    let last = flipped.len() - 5;
    flipped[last] ^= 0x40;
    expect_code(
        c.decrypt()
            .ciphertext_blob(Blob::new(flipped))
            .encryption_context("tenant", "one")
            .send()
            .await,
        "InvalidCiphertextException",
    );
    expect_code(
        c.decrypt()
            .ciphertext_blob(Blob::new(vec![9u8; 40]))
            .send()
            .await,
        "InvalidCiphertextException",
    );
    let m = expect_code(
        c.decrypt()
            .ciphertext_blob(Blob::new(blob.clone()))
            .encryption_context("tenant", "one")
            .key_id(&b)
            .send()
            .await,
        "IncorrectKeyException",
    );
    assert!(m.contains("key ID"), "{m}");
    // The right explicit KeyId works.
    c.decrypt()
        .ciphertext_blob(Blob::new(blob))
        .encryption_context("tenant", "one")
        .key_id(&a)
        .send()
        .await
        .unwrap();
}

#[tokio::test]
async fn key_id_key_arn_alias_name_and_alias_arn_all_resolve_and_responses_carry_the_key_arn() {
    let (_kms, c) = start(MockKmsConfig::default()).await;
    let (id, arn) = new_key(&c).await;
    c.create_alias()
        .alias_name("alias/app")
        .target_key_id(&id)
        .send()
        .await
        .unwrap();
    let alias_arn = "arn:aws:kms:us-east-1:111122223333:alias/app";
    for key_ref in [id.as_str(), arn.as_str(), "alias/app", alias_arn] {
        let r = c
            .generate_data_key()
            .key_id(key_ref)
            .key_spec(DataKeySpec::Aes256)
            .send()
            .await
            .unwrap();
        assert_eq!(r.key_id(), Some(arn.as_str()), "{key_ref}");
        let d = c.describe_key().key_id(key_ref).send().await.unwrap();
        assert_eq!(d.key_metadata().unwrap().key_id(), id);
    }
    let m = expect_code(
        c.describe_key().key_id("alias/missing").send().await,
        "NotFoundException",
    );
    assert_eq!(
        m,
        "Alias arn:aws:kms:us-east-1:111122223333:alias/missing is not found."
    );
    let m = expect_code(
        c.describe_key()
            .key_id("00000000-1111-2222-3333-444444444444")
            .send()
            .await,
        "NotFoundException",
    );
    assert_eq!(
        m,
        "Key 'arn:aws:kms:us-east-1:111122223333:key/00000000-1111-2222-3333-444444444444' does not exist"
    );
    expect_code(
        c.generate_data_key()
            .key_id("not-a-key")
            .key_spec(DataKeySpec::Aes256)
            .send()
            .await,
        "NotFoundException",
    );
}

#[tokio::test]
async fn disabled_key_is_disabled_exception_until_enabled_again() {
    let (_kms, c) = start(MockKmsConfig::default()).await;
    let (id, arn) = new_key(&c).await;
    let e = c
        .encrypt()
        .key_id(&id)
        .plaintext(Blob::new(b"x".to_vec()))
        .send()
        .await
        .unwrap();
    c.disable_key().key_id(&id).send().await.unwrap();
    let md = c
        .describe_key()
        .key_id(&id)
        .send()
        .await
        .unwrap()
        .key_metadata
        .unwrap();
    assert_eq!(md.key_state(), Some(&KeyState::Disabled));
    assert!(!md.enabled());
    let m = expect_code(
        c.generate_data_key()
            .key_id(&id)
            .key_spec(DataKeySpec::Aes256)
            .send()
            .await,
        "DisabledException",
    );
    assert_eq!(m, format!("{arn} is disabled."));
    expect_code(
        c.decrypt()
            .ciphertext_blob(e.ciphertext_blob().unwrap().clone())
            .send()
            .await,
        "DisabledException",
    );
    c.enable_key().key_id(&id).send().await.unwrap();
    c.decrypt()
        .ciphertext_blob(e.ciphertext_blob().unwrap().clone())
        .send()
        .await
        .unwrap();
}

#[tokio::test]
async fn pending_deletion_is_invalid_state_and_cancel_leaves_the_key_disabled() {
    let (_kms, c) = start(MockKmsConfig::default()).await;
    let (id, arn) = new_key(&c).await;
    let s = c
        .schedule_key_deletion()
        .key_id(&id)
        .pending_window_in_days(7)
        .send()
        .await
        .unwrap();
    assert_eq!(s.key_id(), Some(arn.as_str()));
    assert_eq!(s.key_state(), Some(&KeyState::PendingDeletion));
    assert_eq!(s.pending_window_in_days(), Some(7));
    assert!(s.deletion_date().is_some());
    let m = expect_code(
        c.generate_data_key()
            .key_id(&id)
            .key_spec(DataKeySpec::Aes256)
            .send()
            .await,
        "KMSInvalidStateException",
    );
    assert_eq!(m, format!("{arn} is pending deletion."));
    expect_code(
        c.enable_key().key_id(&id).send().await,
        "KMSInvalidStateException",
    );
    expect_code(
        c.schedule_key_deletion().key_id(&id).send().await,
        "KMSInvalidStateException",
    );
    expect_code(
        c.schedule_key_deletion()
            .key_id(&id)
            .pending_window_in_days(3)
            .send()
            .await,
        "ValidationException",
    );
    let md = c
        .describe_key()
        .key_id(&id)
        .send()
        .await
        .unwrap()
        .key_metadata
        .unwrap();
    assert_eq!(md.key_state(), Some(&KeyState::PendingDeletion));
    let cancel = c.cancel_key_deletion().key_id(&id).send().await.unwrap();
    assert_eq!(cancel.key_id(), Some(arn.as_str()));
    let md = c
        .describe_key()
        .key_id(&id)
        .send()
        .await
        .unwrap()
        .key_metadata
        .unwrap();
    assert_eq!(md.key_state(), Some(&KeyState::Disabled));
    expect_code(
        c.cancel_key_deletion().key_id(&id).send().await,
        "KMSInvalidStateException",
    );
}

#[tokio::test]
async fn validation_errors_have_kms_types_and_wording() {
    let (_kms, c) = start(MockKmsConfig::default()).await;
    let (id, _) = new_key(&c).await;
    let m = expect_code(
        c.generate_data_key()
            .key_id(&id)
            .number_of_bytes(1025)
            .send()
            .await,
        "ValidationException",
    );
    assert_eq!(
        m,
        "1 validation error detected: Value '1025' at 'numberOfBytes' failed to satisfy constraint: Member must have value less than or equal to 1024"
    );
    let m = expect_code(
        c.generate_data_key()
            .key_id(&id)
            .number_of_bytes(0)
            .send()
            .await,
        "ValidationException",
    );
    assert!(
        m.contains("Member must have value greater than or equal to 1"),
        "{m}"
    );
    for both in [true, false] {
        let mut req = c.generate_data_key().key_id(&id);
        if both {
            req = req.key_spec(DataKeySpec::Aes256).number_of_bytes(32);
        }
        let m = expect_code(req.send().await, "ValidationException");
        assert_eq!(m, "Please specify either number of bytes or key spec.");
    }
    let mut req = c
        .generate_data_key()
        .key_id(&id)
        .key_spec(DataKeySpec::Aes256);
    for i in 0..11 {
        req = req.grant_tokens(format!("token{i}"));
    }
    let m = expect_code(req.send().await, "ValidationException");
    assert!(m.contains("at 'grantTokens' failed to satisfy constraint: Member must have length less than or equal to 10"), "{m}");
    let m = expect_code(
        c.decrypt()
            .ciphertext_blob(Blob::new(vec![1u8; 6145]))
            .send()
            .await,
        "ValidationException",
    );
    assert_eq!(
        m,
        "1 validation error detected: Value at 'ciphertextBlob' failed to satisfy constraint: Member must have length less than or equal to 6144"
    );
    let m = expect_code(
        c.encrypt()
            .key_id(&id)
            .plaintext(Blob::new(vec![0u8; 4097]))
            .send()
            .await,
        "ValidationException",
    );
    assert!(m.contains("at 'plaintext' failed to satisfy constraint: Member must have length less than or equal to 4096"), "{m}");
    let long = "a".repeat(2049);
    let m = expect_code(
        c.generate_data_key()
            .key_id(&long)
            .key_spec(DataKeySpec::Aes256)
            .send()
            .await,
        "ValidationException",
    );
    assert!(m.ends_with("at 'keyId' failed to satisfy constraint: Member must have length less than or equal to 2048"), "{m}");
    let m = expect_code(
        c.generate_random().number_of_bytes(1025).send().await,
        "ValidationException",
    );
    assert!(m.contains("'1025' at 'numberOfBytes'"), "{m}");
}

#[tokio::test]
async fn dry_run_answers_dry_run_operation_exception_when_the_call_would_succeed() {
    let (_kms, c) = start(MockKmsConfig::default()).await;
    let (id, _) = new_key(&c).await;
    let m = expect_code(
        c.generate_data_key()
            .key_id(&id)
            .key_spec(DataKeySpec::Aes256)
            .dry_run(true)
            .send()
            .await,
        "DryRunOperationException",
    );
    assert_eq!(
        m,
        "The request would have succeeded, but the DryRun option is set."
    );
    let e = c
        .encrypt()
        .key_id(&id)
        .plaintext(Blob::new(b"x".to_vec()))
        .send()
        .await
        .unwrap();
    expect_code(
        c.decrypt()
            .ciphertext_blob(e.ciphertext_blob().unwrap().clone())
            .dry_run(true)
            .send()
            .await,
        "DryRunOperationException",
    );
    expect_code(
        c.encrypt()
            .key_id(&id)
            .plaintext(Blob::new(b"x".to_vec()))
            .dry_run(true)
            .send()
            .await,
        "DryRunOperationException",
    );
    expect_code(
        c.generate_data_key_pair()
            .key_id(&id)
            .key_pair_spec(DataKeyPairSpec::EccNistP256)
            .dry_run(true)
            .send()
            .await,
        "DryRunOperationException",
    );
    // A dry run of a call that would fail reports the real failure.
    c.disable_key().key_id(&id).send().await.unwrap();
    expect_code(
        c.generate_data_key()
            .key_id(&id)
            .key_spec(DataKeySpec::Aes256)
            .dry_run(true)
            .send()
            .await,
        "DisabledException",
    );
}

#[tokio::test]
async fn generate_data_key_pair_gives_pkcs8_private_and_spki_public_keys_for_each_spec() {
    use aws_lc_rs::encoding::AsDer as _;
    use aws_lc_rs::signature::KeyPair as _;
    let (_kms, c) = start(MockKmsConfig::default()).await;
    let (id, arn) = new_key(&c).await;
    for spec in [
        DataKeyPairSpec::Rsa2048,
        DataKeyPairSpec::EccNistP256,
        DataKeyPairSpec::EccNistP384,
        DataKeyPairSpec::EccNistP521,
        DataKeyPairSpec::EccSecgP256K1,
    ] {
        let r = c
            .generate_data_key_pair()
            .key_id(&id)
            .key_pair_spec(spec.clone())
            .encryption_context("use", "pair")
            .send()
            .await
            .unwrap();
        assert_eq!(r.key_id(), Some(arn.as_str()));
        assert_eq!(r.key_pair_spec(), Some(&spec));
        let private = r.private_key_plaintext().unwrap().as_ref().to_vec();
        let public = r.public_key().unwrap().as_ref().to_vec();
        // The private key is PKCS#8 and matches the SPKI public key.
        let derived_public: Vec<u8> = match spec {
            DataKeyPairSpec::Rsa2048 => aws_lc_rs::rsa::KeyPair::from_pkcs8(&private)
                .unwrap()
                .public_key()
                .as_der()
                .unwrap()
                .as_ref()
                .to_vec(),
            DataKeyPairSpec::EccNistP256 => {
                let kp = aws_lc_rs::signature::EcdsaKeyPair::from_pkcs8(
                    &aws_lc_rs::signature::ECDSA_P256_SHA256_ASN1_SIGNING,
                    &private,
                )
                .unwrap();
                kp.public_key().as_der().unwrap().as_ref().to_vec()
            }
            _ => public.clone(),
        };
        assert_eq!(derived_public, public, "{spec:?}");
        // The encrypted private key decrypts to the same PKCS#8 bytes.
        let d = c
            .decrypt()
            .ciphertext_blob(r.private_key_ciphertext_blob().unwrap().clone())
            .encryption_context("use", "pair")
            .send()
            .await
            .unwrap();
        assert_eq!(d.plaintext().unwrap().as_ref(), private.as_slice());
    }
    let r = c
        .generate_data_key_pair_without_plaintext()
        .key_id(&id)
        .key_pair_spec(DataKeyPairSpec::Rsa3072)
        .send()
        .await
        .unwrap();
    let spki = r.public_key().unwrap().as_ref();
    assert_eq!(
        aws_lc_rs::rsa::PublicEncryptingKey::from_der(spki)
            .unwrap()
            .key_size_bits(),
        3072
    );
    assert!(r.private_key_ciphertext_blob().is_some());
    let m = expect_code(
        c.generate_data_key_pair()
            .key_id(&id)
            .key_pair_spec(DataKeyPairSpec::Sm2)
            .send()
            .await,
        "UnsupportedOperationException",
    );
    assert!(m.contains("SM2"), "{m}");
}

#[tokio::test]
async fn generate_random_returns_the_requested_number_of_bytes() {
    let (_kms, c) = start(MockKmsConfig::default()).await;
    let a = c
        .generate_random()
        .number_of_bytes(1024)
        .send()
        .await
        .unwrap();
    let b = c
        .generate_random()
        .number_of_bytes(1024)
        .send()
        .await
        .unwrap();
    assert_eq!(a.plaintext().unwrap().as_ref().len(), 1024);
    assert_ne!(
        a.plaintext().unwrap().as_ref(),
        b.plaintext().unwrap().as_ref()
    );
    expect_code(c.generate_random().send().await, "ValidationException");
}

#[tokio::test]
async fn control_plane_create_describe_list_alias_and_policy_operations() {
    let (_kms, c) = start(MockKmsConfig::default()).await;
    let md = created(c.create_key().description("described")).await;
    assert_eq!(md.description(), Some("described"));
    assert_eq!(md.aws_account_id(), Some("111122223333"));
    assert_eq!(md.key_state(), Some(&KeyState::Enabled));
    assert_eq!(md.key_usage().map(|u| u.as_str()), Some("ENCRYPT_DECRYPT"));
    assert_eq!(md.key_spec().map(|u| u.as_str()), Some("SYMMETRIC_DEFAULT"));
    assert_eq!(md.key_manager().map(|u| u.as_str()), Some("CUSTOMER"));
    assert!(md.creation_date().is_some());
    assert_eq!(
        md.arn(),
        Some(format!("arn:aws:kms:us-east-1:111122223333:key/{}", md.key_id()).as_str())
    );
    let id = md.key_id().to_owned();
    for _ in 0..4 {
        new_key(&c).await;
    }

    // ListKeys with pagination.
    let mut seen = Vec::new();
    let mut marker = None;
    loop {
        let page = c
            .list_keys()
            .limit(2)
            .set_marker(marker)
            .send()
            .await
            .unwrap();
        assert!(page.keys().len() <= 2);
        seen.extend(page.keys().iter().map(|k| k.key_id().unwrap().to_owned()));
        if !page.truncated() {
            break;
        }
        marker = page.next_marker().map(str::to_owned);
    }
    assert_eq!(seen.len(), 5);
    assert!(seen.contains(&id));
    expect_code(
        c.list_keys().marker("bogus").send().await,
        "InvalidMarkerException",
    );

    // Aliases.
    c.create_alias()
        .alias_name("alias/one")
        .target_key_id(&id)
        .send()
        .await
        .unwrap();
    c.create_alias()
        .alias_name("alias/two")
        .target_key_id(&id)
        .send()
        .await
        .unwrap();
    let m = expect_code(
        c.create_alias()
            .alias_name("alias/one")
            .target_key_id(&id)
            .send()
            .await,
        "AlreadyExistsException",
    );
    assert!(m.contains("alias/one"), "{m}");
    expect_code(
        c.create_alias()
            .alias_name("no-prefix")
            .target_key_id(&id)
            .send()
            .await,
        "ValidationException",
    );
    expect_code(
        c.create_alias()
            .alias_name("alias/aws/s3")
            .target_key_id(&id)
            .send()
            .await,
        "NotAuthorizedException",
    );
    let aliases = c.list_aliases().key_id(&id).send().await.unwrap();
    let names: Vec<_> = aliases
        .aliases()
        .iter()
        .map(|a| a.alias_name().unwrap().to_owned())
        .collect();
    assert_eq!(names, ["alias/one", "alias/two"]);
    assert_eq!(
        aliases.aliases()[0].alias_arn(),
        Some("arn:aws:kms:us-east-1:111122223333:alias/one")
    );
    assert_eq!(aliases.aliases()[0].target_key_id(), Some(id.as_str()));
    c.delete_alias()
        .alias_name("alias/one")
        .send()
        .await
        .unwrap();
    expect_code(
        c.delete_alias().alias_name("alias/one").send().await,
        "NotFoundException",
    );
    assert_eq!(c.list_aliases().send().await.unwrap().aliases().len(), 1);

    // Key policies.
    let p = c
        .get_key_policy()
        .key_id(&id)
        .policy_name("default")
        .send()
        .await
        .unwrap();
    let default: serde_json::Value = serde_json::from_str(p.policy().unwrap()).unwrap();
    assert_eq!(default["Statement"][0]["Action"], "kms:*");
    assert_eq!(
        default["Statement"][0]["Principal"]["AWS"],
        "arn:aws:iam::111122223333:root"
    );
    let new_policy = serde_json::json!({
        "Version": "2012-10-17",
        "Statement": [{"Sid": "only-describe-and-policy", "Effect": "Allow",
            "Principal": {"AWS": "arn:aws:iam::111122223333:root"},
            "Action": ["kms:DescribeKey", "kms:GetKeyPolicy", "kms:PutKeyPolicy"], "Resource": "*"}]
    })
    .to_string();
    c.put_key_policy()
        .key_id(&id)
        .policy_name("default")
        .policy(&new_policy)
        .send()
        .await
        .unwrap();
    let p = c.get_key_policy().key_id(&id).send().await.unwrap();
    assert_eq!(p.policy(), Some(new_policy.as_str()));
    // The new policy no longer allows GenerateDataKey.
    let m = expect_code(
        c.generate_data_key()
            .key_id(&id)
            .key_spec(DataKeySpec::Aes256)
            .send()
            .await,
        "AccessDeniedException",
    );
    assert_eq!(
        m,
        format!(
            "User: arn:aws:iam::111122223333:root is not authorized to perform: kms:GenerateDataKey on resource: arn:aws:kms:us-east-1:111122223333:key/{id} because no resource-based policy allows the kms:GenerateDataKey action"
        )
    );
    let m = expect_code(
        c.put_key_policy()
            .key_id(&id)
            .policy("{\"Statement\": 5}")
            .send()
            .await,
        "MalformedPolicyDocumentException",
    );
    assert!(!m.is_empty());
    expect_code(
        c.create_key().policy("not json").send().await,
        "MalformedPolicyDocumentException",
    );
    // KeyUsage is required for asymmetric keys; RSA signing keys are not
    // emulated (asymmetric keys: tests/mock_kms_asymmetric.rs).
    expect_code(
        c.create_key()
            .key_spec(aws_sdk_kms::types::KeySpec::Rsa2048)
            .send()
            .await,
        "ValidationException",
    );
    expect_code(
        c.create_key()
            .key_spec(aws_sdk_kms::types::KeySpec::Rsa2048)
            .key_usage(aws_sdk_kms::types::KeyUsageType::SignVerify)
            .send()
            .await,
        "UnsupportedOperationException",
    );
}
