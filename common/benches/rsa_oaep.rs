//! RSA-2048 OAEP-SHA-256 decryption and KMS `CiphertextForRecipient` handling.
//!
//! `cargo bench -p keybroker-common --bench rsa_oaep`
//!
//! Compares AWS-LC (the project's provider: constant-time, blinded RSA) with
//! RustCrypto `rsa` 0.10 (crypto-bigint, constant-time, blinded with the OS
//! RNG), on the same key and ciphertext, then times the full CMS decrypt of a
//! 32-byte data key and the parse alone. Prints medians of individual timings
//! and the ratios; runs in a few seconds.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::rsa::{
    KeySize, OAEP_SHA256_MGF1SHA256, OaepPrivateDecryptingKey, PrivateDecryptingKey,
};
use keybroker_common::cms::{self, RecipientPrivateKey};
use keybroker_test_support::bench::median_of;
use rsa::pkcs8::DecodePrivateKey;
use std::hint::black_box;
use std::time::Duration;

fn show(name: &str, d: Duration) {
    println!("{name:<44} {:>10.1} us", d.as_secs_f64() * 1e6);
}

fn main() {
    // One RSA-2048 key, loaded into both implementations from PKCS#8.
    let generated = PrivateDecryptingKey::generate(KeySize::Rsa2048).unwrap();
    let pkcs8 = generated.as_der().unwrap();
    let recipient = RecipientPrivateKey::from_pkcs8_der(pkcs8.as_ref()).unwrap();
    let aws_lc = OaepPrivateDecryptingKey::new(generated.clone()).unwrap();
    let rust_crypto = rsa::RsaPrivateKey::from_pkcs8_der(pkcs8.as_ref()).unwrap();

    // A KMS-shaped CiphertextForRecipient holding a 32-byte data key.
    let data_key = [0x42u8; 32];
    let ber = cms::encrypt_for_recipient(
        &recipient.public_key_spki_der(),
        &data_key,
        &SystemRandom::new(),
    )
    .unwrap();
    let encrypted_key = cms::parse(&ber).unwrap().encrypted_key;

    // Both implementations agree on the unwrapped content-encryption key.
    let mut buf = vec![0u8; aws_lc.min_output_size()];
    let cek_aws = aws_lc
        .decrypt(&OAEP_SHA256_MGF1SHA256, &encrypted_key, &mut buf, None)
        .unwrap()
        .to_vec();
    let cek_rc = rust_crypto
        .decrypt(rsa::Oaep::<rsa::sha2::Sha256>::new(), &encrypted_key)
        .unwrap();
    assert_eq!(cek_aws, cek_rc);
    assert_eq!(
        cms::decrypt(&ber, &recipient, Some(32)).unwrap().expose(),
        &data_key
    );

    println!("RSA-2048 OAEP-SHA-256 ({} bytes of CMS)", ber.len());
    let t_aws = median_of(201, 1, || {
        let out = aws_lc
            .decrypt(
                &OAEP_SHA256_MGF1SHA256,
                black_box(&encrypted_key),
                &mut buf,
                None,
            )
            .unwrap();
        black_box(out);
    });
    let t_rc = median_of(101, 1, || {
        let out = rust_crypto
            .decrypt(
                rsa::Oaep::<rsa::sha2::Sha256>::new(),
                black_box(&encrypted_key),
            )
            .unwrap();
        black_box(out);
    });
    let t_cms = median_of(201, 1, || {
        black_box(cms::decrypt(black_box(&ber), &recipient, Some(32)).unwrap());
    });
    let t_parse = median_of(101, 100, || {
        black_box(cms::parse(black_box(&ber)).unwrap());
    });
    show("OAEP decrypt, aws-lc-rs", t_aws);
    show("OAEP decrypt, rsa 0.10.0-rc.20", t_rc);
    show("cms::decrypt (parse + OAEP + AES-CBC), 32 B", t_cms);
    show("cms::parse alone", t_parse);
    println!(
        "rsa-0.10 / aws-lc-rs = {:.2}x",
        t_rc.as_secs_f64() / t_aws.as_secs_f64()
    );
    println!(
        "cms::decrypt / aws-lc-rs OAEP = {:.2}x (parse = {:.1}% of cms::decrypt)",
        t_cms.as_secs_f64() / t_aws.as_secs_f64(),
        100.0 * t_parse.as_secs_f64() / t_cms.as_secs_f64()
    );
}
