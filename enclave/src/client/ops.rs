//! The KMS operations of [`Client`]: the five that carry `Recipient` share
//! one path (`Client::with_recipient` over `RecipientCall`); the others
//! are relayed as they are (`Client::relay` over `KmsCall`).

use std::sync::Arc;

use keybroker_common::cms;
use keybroker_common::kms::{
    Blob, DecryptRequest, DecryptResponse, DeriveSharedSecretRequest, DeriveSharedSecretResponse,
    DescribeKeyRequest, DescribeKeyResponse, GenerateDataKeyPairRequest,
    GenerateDataKeyPairResponse, GenerateDataKeyPairWithoutPlaintextRequest,
    GenerateDataKeyPairWithoutPlaintextResponse, GenerateDataKeyRequest, GenerateDataKeyResponse,
    GenerateDataKeyWithoutPlaintextRequest, GenerateDataKeyWithoutPlaintextResponse,
    GenerateRandomRequest, GenerateRandomResponse, KmsRequest, KmsResponse, Operation,
    RecipientInfo,
};
use keybroker_common::protocol::ProtocolError;
use keybroker_common::secret::SecretBytes;

use super::{Client, DataKey, DataKeyPair, Decrypted, SharedSecret};
use crate::Error;
use crate::keys::RecipientKeyPair;

impl Client {
    /// KMS `GenerateDataKey` with `Recipient`: a new data key, in plaintext
    /// (inside the enclave) and encrypted under the KMS key.
    ///
    /// The data key has the length the request names (module docs,
    /// "Decryption is not an oracle").
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] if `request.recipient` is set (the client
    /// attaches its own); `Error::Common(InvalidArgument(_))`, before
    /// anything is sent, unless exactly one of `KeySpec` and `NumberOfBytes`
    /// (1..=1024) is given; the errors of a call (module docs); a relayed KMS
    /// error as `Error::Common(Kms(_))`; a refusal by the proxy as
    /// `Error::Common(Protocol(Remote { code: PolicyDenied, .. }))`; a
    /// `CiphertextForRecipient` that does not parse as `Error::Common(Cms(_))`.
    pub async fn generate_data_key(
        &self,
        request: GenerateDataKeyRequest,
    ) -> Result<DataKey, Error> {
        // Refused here, before anything is sent, unless exactly one of
        // KeySpec and NumberOfBytes fixes the length to enforce.
        let expected = request.data_key_len()?;
        let (r, plaintext) = self.with_recipient(request, Some(expected)).await?;
        let ciphertext_blob = required(
            Operation::GenerateDataKey,
            r.ciphertext_blob,
            "no CiphertextBlob",
        )?;
        Ok(DataKey {
            key_id: r.key_id,
            ciphertext_blob,
            plaintext,
            key_material_id: r.key_material_id,
        })
    }

    /// KMS `Decrypt` with `Recipient`: the plaintext of a `CiphertextBlob`,
    /// inside the enclave. The encryption context must match the one used to
    /// encrypt.
    ///
    /// Prefer [`Client::decrypt_expecting`] when the plaintext's length is
    /// known: without it, a `CiphertextForRecipient` that does not decrypt
    /// yields a pseudorandom plaintext of a pseudorandom length, and a caller
    /// that reveals the length it got reveals whether the padding was valid.
    ///
    /// # Errors
    /// As [`Client::generate_data_key`].
    pub async fn decrypt(&self, request: DecryptRequest) -> Result<Decrypted, Error> {
        self.decrypt_with(request, None).await
    }

    /// [`Client::decrypt`] of a plaintext that must be `plaintext_len` bytes
    /// long (for example a 32-byte data key): any other result, and a
    /// `CiphertextForRecipient` that does not decrypt, yields a pseudorandom
    /// plaintext of exactly that length (module docs, "Decryption is not an
    /// oracle").
    ///
    /// # Errors
    /// As [`Client::decrypt`]; `Error::Common(InvalidArgument(_))` for a
    /// `plaintext_len` of 0 or above 6144, before anything is sent.
    pub async fn decrypt_expecting(
        &self,
        request: DecryptRequest,
        plaintext_len: usize,
    ) -> Result<Decrypted, Error> {
        if !(1..=cms::MAX_CIPHERTEXT_FOR_RECIPIENT_LEN).contains(&plaintext_len) {
            return Err(keybroker_common::Error::InvalidArgument(format!(
                "expected plaintext length {plaintext_len} is outside 1..={}",
                cms::MAX_CIPHERTEXT_FOR_RECIPIENT_LEN
            ))
            .into());
        }
        self.decrypt_with(request, Some(plaintext_len)).await
    }

    async fn decrypt_with(
        &self,
        request: DecryptRequest,
        expected_len: Option<usize>,
    ) -> Result<Decrypted, Error> {
        let (r, plaintext) = self.with_recipient(request, expected_len).await?;
        Ok(Decrypted {
            key_id: r.key_id,
            encryption_algorithm: r.encryption_algorithm,
            plaintext,
            key_material_id: r.key_material_id,
        })
    }

    /// KMS `GenerateDataKeyPair` with `Recipient`: a key pair whose private
    /// key is returned in plaintext (DER PKCS#8) inside the enclave.
    ///
    /// # Errors
    /// As [`Client::generate_data_key`].
    pub async fn generate_data_key_pair(
        &self,
        request: GenerateDataKeyPairRequest,
    ) -> Result<DataKeyPair, Error> {
        let (r, private_key_plaintext) = self.with_recipient(request, None).await?;
        let private_key_ciphertext_blob = required(
            Operation::GenerateDataKeyPair,
            r.private_key_ciphertext_blob,
            "no PrivateKeyCiphertextBlob",
        )?;
        Ok(DataKeyPair {
            key_id: r.key_id,
            key_pair_spec: r.key_pair_spec,
            public_key: r.public_key,
            private_key_ciphertext_blob,
            private_key_plaintext,
            key_material_id: r.key_material_id,
        })
    }

    /// KMS `GenerateRandom` with `Recipient`: random bytes from KMS, in
    /// plaintext only inside the enclave, XORed with as many bytes from the
    /// NSM (`GetRandom`), so that a parent that substitutes KMS's bytes does
    /// not choose the result (module docs).
    ///
    /// # Errors
    /// As [`Client::generate_data_key`]; `Error::Common(InvalidArgument(_))`,
    /// before anything is sent, without a `NumberOfBytes` in 1..=1024;
    /// [`Error::Nsm`] if the NSM's `GetRandom` fails.
    pub async fn generate_random(
        &self,
        request: GenerateRandomRequest,
    ) -> Result<SecretBytes, Error> {
        let expected = request.random_len()?;
        let (_, from_kms) = self.with_recipient(request, Some(expected)).await?;
        let nsm = self.inner.keys.nsm();
        tokio::task::spawn_blocking(move || {
            let mut out = from_kms;
            crate::nsm::xor_random(nsm.as_ref(), out.expose_mut())?;
            Ok(out)
        })
        .await
        .map_err(|_| Error::Shutdown)?
    }

    /// KMS `DeriveSharedSecret` with `Recipient`: the ECDH shared secret
    /// between the KMS key-agreement key `KeyId` and the caller's
    /// `PublicKey` (a DER SubjectPublicKeyInfo on the KMS key's curve),
    /// inside the enclave only.
    ///
    /// The secret has the length of the public key's curve (32, 48 or 66
    /// bytes), enforced as the other lengths are (module docs, "Decryption is
    /// not an oracle"). In broker mode the parent can substitute a secret of
    /// its choosing, as it can any data key (README, "Trust model"); in
    /// end-to-end mode TLS to KMS rules that out.
    ///
    /// # Errors
    /// As [`Client::generate_data_key`]; `Error::Common(InvalidArgument(_))`,
    /// before anything is sent, unless `KeyAgreementAlgorithm` is `ECDH` and
    /// `PublicKey` is an EC SubjectPublicKeyInfo on a curve KMS offers.
    pub async fn derive_shared_secret(
        &self,
        request: DeriveSharedSecretRequest,
    ) -> Result<SharedSecret, Error> {
        let expected = request.shared_secret_len()?;
        let (r, shared_secret) = self.with_recipient(request, Some(expected)).await?;
        Ok(SharedSecret {
            key_id: r.key_id,
            shared_secret,
            key_agreement_algorithm: r.key_agreement_algorithm,
            key_origin: r.key_origin,
        })
    }

    /// The one path of the operations that carry `Recipient`: attaches the
    /// current attestation document (refusing a caller's own), sends the
    /// request, refuses an answer with plaintext, and opens its
    /// `CiphertextForRecipient` with implicit rejection at `expected_len`
    /// (module docs). Returns the rest of the response and the plaintext.
    async fn with_recipient<R: RecipientCall>(
        &self,
        mut request: R,
        expected_len: Option<usize>,
    ) -> Result<(R::Response, SecretBytes), Error> {
        let slot = request.recipient_mut();
        no_recipient(slot.is_some())?;
        let pair = self.inner.keys.acquire();
        *slot = Some(pair.recipient());
        let mut r = self.relay(request).await?;
        let opened = async {
            refuse_plaintext(R::OP, R::has_plaintext(&r))?;
            let cfr = R::ciphertext_for_recipient(&mut r);
            let cfr = required(R::OP, cfr, "no CiphertextForRecipient")?;
            open(pair, cfr, expected_len).await
        }
        .await;
        if opened.is_err() {
            self.inner
                .counters
                .decrypt_failures
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        Ok((r, opened?))
    }

    /// KMS `GenerateDataKeyWithoutPlaintext`, relayed as is.
    ///
    /// # Errors
    /// The errors of a call (module docs) and relayed KMS errors.
    pub async fn generate_data_key_without_plaintext(
        &self,
        request: GenerateDataKeyWithoutPlaintextRequest,
    ) -> Result<GenerateDataKeyWithoutPlaintextResponse, Error> {
        self.relay(request).await
    }

    /// KMS `GenerateDataKeyPairWithoutPlaintext`, relayed as is.
    ///
    /// # Errors
    /// The errors of a call (module docs) and relayed KMS errors.
    pub async fn generate_data_key_pair_without_plaintext(
        &self,
        request: GenerateDataKeyPairWithoutPlaintextRequest,
    ) -> Result<GenerateDataKeyPairWithoutPlaintextResponse, Error> {
        self.relay(request).await
    }

    /// KMS `DescribeKey`, relayed as is.
    ///
    /// # Errors
    /// The errors of a call (module docs) and relayed KMS errors.
    pub async fn describe_key(
        &self,
        request: DescribeKeyRequest,
    ) -> Result<DescribeKeyResponse, Error> {
        self.relay(request).await
    }

    /// Sends a typed request as it is and returns its typed answer (an
    /// answer for another operation is [`Error::InvalidResponse`]).
    async fn relay<R: KmsCall>(&self, request: R) -> Result<R::Response, Error> {
        let response = self.call(request.into_request(), self.timeout).await?;
        R::from_response(response).ok_or_else(|| mismatch(R::OP))
    }

    /// Sends `request` exactly as given (no `Recipient` attached, nothing
    /// decrypted) and returns the proxy's answer. For tests and tools, e.g.
    /// to show that the proxy refuses a plaintext-returning request without
    /// `Recipient`.
    ///
    /// # Errors
    /// The errors of a call (module docs) and relayed KMS errors.
    pub async fn send_raw(&self, request: KmsRequest) -> Result<KmsResponse, Error> {
        self.call(request, self.timeout).await
    }
}

fn no_recipient(present: bool) -> Result<(), Error> {
    if present {
        return Err(Error::InvalidArgument(
            "request already has a Recipient; the client attaches its own attestation".into(),
        ));
    }
    Ok(())
}

/// A typed KMS request: how it becomes a [`KmsRequest`] and its answer
/// comes out of a [`KmsResponse`].
trait KmsCall {
    const OP: Operation;
    type Response;
    fn into_request(self) -> KmsRequest;
    fn from_response(response: KmsResponse) -> Option<Self::Response>;
}

macro_rules! kms_call {
    ($($op:ident: $req:ty => $resp:ty;)*) => {$(
        impl KmsCall for $req {
            const OP: Operation = Operation::$op;
            type Response = $resp;
            fn into_request(self) -> KmsRequest {
                KmsRequest::$op(self)
            }
            fn from_response(response: KmsResponse) -> Option<$resp> {
                match response {
                    KmsResponse::$op(r) => Some(r),
                    _ => None,
                }
            }
        }
    )*};
}

kms_call! {
    GenerateDataKey: GenerateDataKeyRequest => GenerateDataKeyResponse;
    Decrypt: DecryptRequest => DecryptResponse;
    GenerateDataKeyPair: GenerateDataKeyPairRequest => GenerateDataKeyPairResponse;
    GenerateRandom: GenerateRandomRequest => GenerateRandomResponse;
    DeriveSharedSecret: DeriveSharedSecretRequest => DeriveSharedSecretResponse;
    GenerateDataKeyWithoutPlaintext:
        GenerateDataKeyWithoutPlaintextRequest => GenerateDataKeyWithoutPlaintextResponse;
    GenerateDataKeyPairWithoutPlaintext:
        GenerateDataKeyPairWithoutPlaintextRequest => GenerateDataKeyPairWithoutPlaintextResponse;
    DescribeKey: DescribeKeyRequest => DescribeKeyResponse;
}

/// A KMS request that takes `Recipient` (the five operations that return
/// plaintext), with the fields of its response that [`Client`]'s one
/// `Recipient` path needs.
trait RecipientCall: KmsCall {
    fn recipient_mut(&mut self) -> &mut Option<RecipientInfo>;
    fn has_plaintext(response: &Self::Response) -> bool;
    fn ciphertext_for_recipient(response: &mut Self::Response) -> Option<Blob>;
}

macro_rules! recipient_call {
    ($($req:ty => $resp:ty, $plaintext:ident;)*) => {$(
        impl RecipientCall for $req {
            fn recipient_mut(&mut self) -> &mut Option<RecipientInfo> {
                &mut self.recipient
            }
            fn has_plaintext(response: &$resp) -> bool {
                response.$plaintext.is_some()
            }
            fn ciphertext_for_recipient(response: &mut $resp) -> Option<Blob> {
                response.ciphertext_for_recipient.take()
            }
        }
    )*};
}

recipient_call! {
    GenerateDataKeyRequest => GenerateDataKeyResponse, plaintext;
    DecryptRequest => DecryptResponse, plaintext;
    GenerateDataKeyPairRequest => GenerateDataKeyPairResponse, private_key_plaintext;
    GenerateRandomRequest => GenerateRandomResponse, plaintext;
    DeriveSharedSecretRequest => DeriveSharedSecretResponse, shared_secret;
}

fn refuse_plaintext(operation: Operation, present: bool) -> Result<(), Error> {
    if present {
        return Err(ProtocolError::PlaintextOnWire { operation }.into());
    }
    Ok(())
}

fn required(operation: Operation, blob: Option<Blob>, reason: &'static str) -> Result<Blob, Error> {
    blob.ok_or(Error::InvalidResponse { operation, reason })
}

fn mismatch(expected: Operation) -> Error {
    Error::InvalidResponse {
        operation: expected,
        reason: "response for another operation",
    }
}

/// Decrypts `CiphertextForRecipient` with `pair`'s key on the blocking pool
/// (an RSA private-key operation takes about a millisecond), with implicit
/// rejection: a ciphertext that parses but does not decrypt, or whose
/// plaintext is not `expected_len` bytes, yields its pseudorandom rejection
/// value (module docs). Broker and e2e mode both decrypt here.
async fn open(
    pair: Arc<RecipientKeyPair>,
    cfr: Blob,
    expected_len: Option<usize>,
) -> Result<SecretBytes, Error> {
    tokio::task::spawn_blocking(move || Ok(cms::decrypt(&cfr.0, pair.private_key(), expected_len)?))
        .await
        .map_err(|_| Error::Shutdown)?
}
