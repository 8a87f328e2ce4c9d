//! The one-call KMS subcommands (`generate-data-key`, `decrypt`,
//! `generate-data-key-pair`, `generate-random`, `derive-shared-secret`):
//! one [`Client`] call each, with `Recipient`, printed as
//! the KMS response a call without `Recipient` gets (the client's `From`
//! conversions), fields given a `--*-file` written there raw instead.

use std::path::Path;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use keybroker_common::kms::{
    Blob, DataKeySpec, DecryptRequest, DecryptResponse, DeriveSharedSecretRequest,
    DeriveSharedSecretResponse, GenerateDataKeyPairRequest, GenerateDataKeyPairResponse,
    GenerateDataKeyRequest, GenerateDataKeyResponse, GenerateRandomRequest, KeyAgreementAlgorithm,
};

use super::args::{
    DecryptArgs, DeriveSharedSecretArgs, GenerateDataKeyArgs, GenerateDataKeyPairArgs,
    GenerateRandomArgs,
};
use super::connect::connect;
use super::output::{SecretOutput, read_file, to_file};
#[cfg(doc)]
use crate::Client;
use crate::Error;

/// `generate-data-key`: the KMS response as JSON (`KeyId`, `CiphertextBlob`,
/// `Plaintext`, `KeyMaterialId`), blobs written to files where asked.
///
/// # Errors
/// As [`Client::generate_data_key`]; I/O errors writing the files.
pub async fn generate_data_key(args: &GenerateDataKeyArgs) -> Result<SecretOutput, Error> {
    let client = connect(&args.broker).await?;
    let key_spec = match (args.key_spec, args.number_of_bytes) {
        (None, None) => Some(DataKeySpec::Aes256),
        (spec, _) => spec,
    };
    let key = client
        .generate_data_key(GenerateDataKeyRequest {
            key_id: Some(args.key_id.clone()),
            key_spec,
            number_of_bytes: args.number_of_bytes,
            encryption_context: args.context.context(),
            grant_tokens: args.context.grant_tokens(),
            ..Default::default()
        })
        .await?;
    let mut r = GenerateDataKeyResponse::from(key);
    to_file(&mut r.ciphertext_blob, args.ciphertext_file.as_ref())?;
    to_file(&mut r.plaintext, args.plaintext_file.as_ref())?;
    SecretOutput::of(&r)
}

/// `decrypt`: `KeyId`, `Plaintext`, `EncryptionAlgorithm`, `KeyMaterialId`.
///
/// With `--plaintext-length`, [`Client::decrypt_expecting`].
///
/// # Errors
/// [`Error::InvalidArgument`] for a ciphertext that is not base64; I/O
/// errors reading or writing files; as [`Client::decrypt`].
pub async fn decrypt(args: &DecryptArgs) -> Result<SecretOutput, Error> {
    let blob = base64_or_file(
        ("--ciphertext-blob", args.ciphertext_blob.as_ref()),
        ("--ciphertext-file", args.ciphertext_file.as_deref()),
        |path| read_file(path, None),
    )?;
    let client = connect(&args.broker).await?;
    let request = DecryptRequest {
        ciphertext_blob: Some(Blob(blob)),
        key_id: args.key_id.clone(),
        encryption_algorithm: args.encryption_algorithm,
        encryption_context: args.context.context(),
        grant_tokens: args.context.grant_tokens(),
        ..Default::default()
    };
    let d = match args.plaintext_length {
        Some(n) => client.decrypt_expecting(request, n).await?,
        None => client.decrypt(request).await?,
    };
    let mut r = DecryptResponse::from(d);
    to_file(&mut r.plaintext, args.plaintext_file.as_ref())?;
    SecretOutput::of(&r)
}

/// `generate-data-key-pair`: `KeyId`, `KeyPairSpec`, `PublicKey`,
/// `PrivateKeyCiphertextBlob`, `PrivateKeyPlaintext`, `KeyMaterialId`.
///
/// # Errors
/// As [`Client::generate_data_key_pair`]; I/O errors writing the files.
pub async fn generate_data_key_pair(args: &GenerateDataKeyPairArgs) -> Result<SecretOutput, Error> {
    let client = connect(&args.broker).await?;
    let p = client
        .generate_data_key_pair(GenerateDataKeyPairRequest {
            key_id: Some(args.key_id.clone()),
            key_pair_spec: Some(args.key_pair_spec),
            encryption_context: args.context.context(),
            grant_tokens: args.context.grant_tokens(),
            ..Default::default()
        })
        .await?;
    let mut r = GenerateDataKeyPairResponse::from(p);
    to_file(&mut r.public_key, args.public_key_file.as_ref())?;
    to_file(
        &mut r.private_key_ciphertext_blob,
        args.ciphertext_file.as_ref(),
    )?;
    to_file(&mut r.private_key_plaintext, args.private_key_file.as_ref())?;
    SecretOutput::of(&r)
}

/// `generate-random`: `Plaintext`.
///
/// # Errors
/// As [`Client::generate_random`]; I/O errors writing the file.
pub async fn generate_random(args: &GenerateRandomArgs) -> Result<SecretOutput, Error> {
    let client = connect(&args.broker).await?;
    let bytes = client
        .generate_random(GenerateRandomRequest {
            number_of_bytes: Some(args.number_of_bytes),
            ..Default::default()
        })
        .await?;
    let mut r = crate::client::random_response(bytes);
    to_file(&mut r.plaintext, args.plaintext_file.as_ref())?;
    SecretOutput::of(&r)
}

/// `derive-shared-secret`: `KeyId`, `SharedSecret`, `KeyAgreementAlgorithm`,
/// `KeyOrigin`.
///
/// # Errors
/// [`Error::InvalidArgument`] for a public key that is not base64, DER or
/// PEM; I/O errors on the files; as [`Client::derive_shared_secret`].
pub async fn derive_shared_secret(args: &DeriveSharedSecretArgs) -> Result<SecretOutput, Error> {
    let public_key = base64_or_file(
        ("--public-key", args.public_key.as_ref()),
        ("--public-key-file", args.public_key_file.as_deref()),
        public_key_file,
    )?;
    let client = connect(&args.broker).await?;
    let d = client
        .derive_shared_secret(DeriveSharedSecretRequest {
            key_id: Some(args.key_id.clone()),
            key_agreement_algorithm: Some(KeyAgreementAlgorithm::Ecdh),
            public_key: Some(Blob(public_key)),
            grant_tokens: (!args.grant_tokens.is_empty()).then(|| args.grant_tokens.clone()),
            ..Default::default()
        })
        .await?;
    let mut r = DeriveSharedSecretResponse::from(d);
    to_file(&mut r.shared_secret, args.shared_secret_file.as_ref())?;
    SecretOutput::of(&r)
}

/// Bytes given in base64 on the command line (`inline`) or in a file
/// (`file`, read with `read`; it wins when both are given).
fn base64_or_file(
    (inline_flag, inline): (&str, Option<&String>),
    (file_flag, file): (&str, Option<&Path>),
    read: impl FnOnce(&Path) -> Result<Vec<u8>, Error>,
) -> Result<Vec<u8>, Error> {
    match (inline, file) {
        (_, Some(path)) => read(path),
        (Some(b64), None) => B64
            .decode(b64.trim())
            .map_err(|e| Error::InvalidArgument(format!("{inline_flag} is not base64: {e}"))),
        (None, None) => Err(Error::InvalidArgument(format!(
            "give {inline_flag} or {file_flag}"
        ))),
    }
}

/// A public key file: DER, or PEM with one `PUBLIC KEY` block (RFC 7468
/// section 13, [`keybroker_common::pem::parse_public_key`]), read up to
/// four times [`keybroker_common::kms::PUBLIC_KEY_MAX`] bytes (the DER
/// bound, base64 and line breaks).
fn public_key_file(path: &Path) -> Result<Vec<u8>, Error> {
    let max = 4 * keybroker_common::kms::PUBLIC_KEY_MAX;
    let bytes = read_file(path, Some(max))?;
    keybroker_common::pem::parse_public_key(&bytes, max)
        .map_err(|e| Error::InvalidArgument(format!("{}: {e}", path.display())))
}
