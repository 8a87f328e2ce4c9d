//! Key generation for `GenerateDataKeyPair*`.

use super::*;

/// Generates a data key pair: (PKCS#8 v1 DER private key, DER
/// SubjectPublicKeyInfo), the encodings `GenerateDataKeyPair` returns.
pub(super) fn generate_key_pair(
    spec: DataKeyPairSpec,
) -> Result<(Zeroizing<Vec<u8>>, Vec<u8>), KmsError> {
    use aws_lc_rs::encoding::AsDer as _;
    use aws_lc_rs::rsa::{KeyPair as RsaKeyPair, KeySize};
    use aws_lc_rs::signature::{self, EcdsaKeyPair, Ed25519KeyPair, KeyPair as _};
    let fail = |what: &str| internal(format!("{what} key pair generation failed"));
    let rsa = |size: KeySize| -> Result<(Zeroizing<Vec<u8>>, Vec<u8>), KmsError> {
        let kp = RsaKeyPair::generate(size).map_err(|_| fail("RSA"))?;
        let private =
            aws_lc_rs::encoding::AsDer::<aws_lc_rs::encoding::Pkcs8V1Der<'_>>::as_der(&kp)
                .map_err(|_| fail("RSA"))?;
        let public = kp.public_key().as_der().map_err(|_| fail("RSA"))?;
        Ok((
            Zeroizing::new(private.as_ref().to_vec()),
            public.as_ref().to_vec(),
        ))
    };
    let ec = |alg: &'static signature::EcdsaSigningAlgorithm| -> Result<(Zeroizing<Vec<u8>>, Vec<u8>), KmsError> {
        let kp = EcdsaKeyPair::generate(alg).map_err(|_| fail("EC"))?;
        let private = kp.to_pkcs8v1().map_err(|_| fail("EC"))?;
        let public = kp.public_key().as_der().map_err(|_| fail("EC"))?;
        Ok((Zeroizing::new(private.as_ref().to_vec()), public.as_ref().to_vec()))
    };
    match spec {
        DataKeyPairSpec::Rsa2048 => rsa(KeySize::Rsa2048),
        DataKeyPairSpec::Rsa3072 => rsa(KeySize::Rsa3072),
        DataKeyPairSpec::Rsa4096 => rsa(KeySize::Rsa4096),
        DataKeyPairSpec::EccNistP256 => ec(&signature::ECDSA_P256_SHA256_ASN1_SIGNING),
        DataKeyPairSpec::EccNistP384 => ec(&signature::ECDSA_P384_SHA384_ASN1_SIGNING),
        DataKeyPairSpec::EccNistP521 => ec(&signature::ECDSA_P521_SHA512_ASN1_SIGNING),
        DataKeyPairSpec::EccSecgP256k1 => ec(&signature::ECDSA_P256K1_SHA256_ASN1_SIGNING),
        DataKeyPairSpec::EccNistEdwards25519 => {
            let kp = Ed25519KeyPair::generate().map_err(|_| fail("Ed25519"))?;
            let private = kp.to_pkcs8v1().map_err(|_| fail("Ed25519"))?;
            let public = kp.public_key().as_der().map_err(|_| fail("Ed25519"))?;
            Ok((
                Zeroizing::new(private.as_ref().to_vec()),
                public.as_ref().to_vec(),
            ))
        }
        DataKeyPairSpec::Sm2 => Err(err(
            KmsErrorCode::UnsupportedOperation,
            "KeyPairSpec SM2 is not supported by keybroker-mock-kms (KMS offers SM2 only in China Regions).",
        )),
    }
}
