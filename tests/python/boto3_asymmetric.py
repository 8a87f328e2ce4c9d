#!/usr/bin/env python3
"""boto3 test of keybroker-mock-kms's asymmetric keys: CreateKey ECC_NIST_P256
KEY_AGREEMENT, GetPublicKey, DeriveSharedSecret against the ECDH that this
script computes with its own key pair, and RSA-OAEP Encrypt/Decrypt.

Usage: boto3_asymmetric.py ENDPOINT [--openssl]

The caller's own EC key and ECDH come from the `cryptography` package when
it is importable (botocore does not need it, so CI may not have it), else
from the openssl CLI; --openssl forces the openssl CLI.
Exits 0 when every check passes, 1 otherwise. Run by the Rust integration
test tests/tests/boto3_smoke.rs, which starts the mock in-process.
"""

import os
import subprocess
import sys
import tempfile

import boto3
from botocore.config import Config
from checks import Checks, error_code

try:
    if "--openssl" in sys.argv[2:]:
        raise ImportError("forced off")
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec, padding

    BACKEND = "cryptography"
except ImportError:
    BACKEND = "openssl"

CURVES = {"ECC_NIST_P256": "P-256", "ECC_NIST_P384": "P-384"}


class CallerKey:
    """The caller's own EC key pair: its DER SubjectPublicKeyInfo and ECDH."""

    def __init__(self, key_spec):
        if BACKEND == "cryptography":
            curve = {"ECC_NIST_P256": ec.SECP256R1(), "ECC_NIST_P384": ec.SECP384R1()}[key_spec]
            self._key = ec.generate_private_key(curve)
            self.spki = self._key.public_key().public_bytes(
                serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        else:
            self._dir = tempfile.TemporaryDirectory()
            self._pem = os.path.join(self._dir.name, "mine.pem")
            openssl("genpkey", "-algorithm", "EC", "-pkeyopt",
                    f"ec_paramgen_curve:{CURVES[key_spec]}", "-out", self._pem)
            self.spki = openssl("pkey", "-in", self._pem, "-pubout", "-outform", "DER")

    def ecdh(self, peer_spki):
        if BACKEND == "cryptography":
            peer = serialization.load_der_public_key(peer_spki)
            return self._key.exchange(ec.ECDH(), peer)
        peer = os.path.join(self._dir.name, "peer.der")
        with open(peer, "wb") as f:
            f.write(peer_spki)
        return openssl("pkeyutl", "-derive", "-inkey", self._pem,
                       "-peerkey", peer, "-peerform", "DER")


def openssl(*args):
    return subprocess.run(["openssl", *args], check=True, capture_output=True).stdout


def rsa_oaep_sha256_encrypt(spki, plaintext):
    if BACKEND == "cryptography":
        key = serialization.load_der_public_key(spki)
        return key.encrypt(plaintext, padding.OAEP(
            mgf=padding.MGF1(algorithm=hashes.SHA256()), algorithm=hashes.SHA256(), label=None))
    with tempfile.TemporaryDirectory() as d:
        pub, pt = os.path.join(d, "pub.der"), os.path.join(d, "pt.bin")
        with open(pub, "wb") as f:
            f.write(spki)
        with open(pt, "wb") as f:
            f.write(plaintext)
        return openssl("pkeyutl", "-encrypt", "-pubin", "-keyform", "DER", "-inkey", pub,
                       "-in", pt, "-pkeyopt", "rsa_padding_mode:oaep",
                       "-pkeyopt", "rsa_oaep_md:sha256", "-pkeyopt", "rsa_mgf1_md:sha256")


def main(endpoint):
    kms = boto3.client(
        "kms",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="AKIAMOCKKMSBOTO30000",
        aws_secret_access_key="mock-kms-boto3-secret",
        config=Config(retries={"max_attempts": 1}),
    )
    print(f"caller-side crypto: {BACKEND}")
    state = {}
    checks = Checks("boto3 asymmetric")
    check = checks.check

    @check("CreateKey ECC_NIST_P256 KEY_AGREEMENT and GetPublicKey")
    def _():
        md = kms.create_key(KeySpec="ECC_NIST_P256", KeyUsage="KEY_AGREEMENT")["KeyMetadata"]
        assert md["KeySpec"] == "ECC_NIST_P256" and md["KeyUsage"] == "KEY_AGREEMENT", md
        assert md["KeyAgreementAlgorithms"] == ["ECDH"], md
        assert "EncryptionAlgorithms" not in md, md
        state["ecc"], state["ecc_arn"] = md["KeyId"], md["Arn"]
        g = kms.get_public_key(KeyId=state["ecc"])
        assert g["KeyId"] == state["ecc_arn"], g["KeyId"]
        assert g["KeySpec"] == "ECC_NIST_P256" and g["CustomerMasterKeySpec"] == "ECC_NIST_P256"
        assert g["KeyUsage"] == "KEY_AGREEMENT" and g["KeyAgreementAlgorithms"] == ["ECDH"], g
        assert g["PublicKey"][:1] == b"\x30", g["PublicKey"][:4]
        state["ecc_pub"] = g["PublicKey"]

    @check("DeriveSharedSecret equals the caller's own ECDH")
    def _():
        mine = CallerKey("ECC_NIST_P256")
        expected = mine.ecdh(state["ecc_pub"])
        assert len(expected) == 32, len(expected)
        r = kms.derive_shared_secret(
            KeyId=state["ecc"], KeyAgreementAlgorithm="ECDH", PublicKey=mine.spki
        )
        assert r["SharedSecret"] == expected, (r["SharedSecret"].hex(), expected.hex())
        assert r["KeyId"] == state["ecc_arn"] and r["KeyAgreementAlgorithm"] == "ECDH", r
        assert r["KeyOrigin"] == "AWS_KMS", r
        assert "CiphertextForRecipient" not in r

    @check("DeriveSharedSecret errors: another curve, a symmetric key, DryRun")
    def _():
        other = CallerKey("ECC_NIST_P384")
        code, msg, status = error_code(lambda: kms.derive_shared_secret(
            KeyId=state["ecc"], KeyAgreementAlgorithm="ECDH", PublicKey=other.spki))
        assert (code, status) == ("ValidationException", 400), (code, msg)
        sym = kms.create_key()["KeyMetadata"]["KeyId"]
        code, _, _ = error_code(lambda: kms.derive_shared_secret(
            KeyId=sym, KeyAgreementAlgorithm="ECDH", PublicKey=CallerKey("ECC_NIST_P256").spki))
        assert code == "InvalidKeyUsageException", code
        code, _, _ = error_code(lambda: kms.derive_shared_secret(
            KeyId=state["ecc"], KeyAgreementAlgorithm="ECDH",
            PublicKey=CallerKey("ECC_NIST_P256").spki, DryRun=True))
        assert code == "DryRunOperationException", code

    @check("RSA_2048: Encrypt/Decrypt and Decrypt of ciphertext made outside KMS")
    def _():
        rsa = kms.create_key(KeySpec="RSA_2048", KeyUsage="ENCRYPT_DECRYPT")["KeyMetadata"]
        assert rsa["EncryptionAlgorithms"] == ["RSAES_OAEP_SHA_1", "RSAES_OAEP_SHA_256"], rsa
        e = kms.encrypt(KeyId=rsa["KeyId"], Plaintext=b"boto3 rsa",
                        EncryptionAlgorithm="RSAES_OAEP_SHA_1")
        assert len(e["CiphertextBlob"]) == 256
        d = kms.decrypt(KeyId=rsa["KeyId"], CiphertextBlob=e["CiphertextBlob"],
                        EncryptionAlgorithm="RSAES_OAEP_SHA_1")
        assert d["Plaintext"] == b"boto3 rsa" and d["EncryptionAlgorithm"] == "RSAES_OAEP_SHA_1"
        pub = kms.get_public_key(KeyId=rsa["KeyId"])["PublicKey"]
        ct = rsa_oaep_sha256_encrypt(pub, b"made outside")
        d = kms.decrypt(KeyId=rsa["KeyId"], CiphertextBlob=ct,
                        EncryptionAlgorithm="RSAES_OAEP_SHA_256")
        assert d["Plaintext"] == b"made outside", d
        code, msg, _ = error_code(lambda: kms.encrypt(KeyId=rsa["KeyId"], Plaintext=b"x"))
        assert code == "InvalidKeyUsageException", (code, msg)

    @check("KeyMaterialId on GenerateDataKey and Decrypt")
    def _():
        k = kms.create_key()["KeyMetadata"]["KeyId"]
        g = kms.generate_data_key(KeyId=k, KeySpec="AES_256")
        assert len(g["KeyMaterialId"]) == 64, g["KeyMaterialId"]
        d = kms.decrypt(CiphertextBlob=g["CiphertextBlob"])
        assert d["KeyMaterialId"] == g["KeyMaterialId"]
        code, _, _ = error_code(lambda: kms.decrypt(
            KeyId=k, CiphertextBlob=b"\x00" * 32, DryRun=True,
            DryRunModifiers=["IGNORE_CIPHERTEXT"]))
        assert code == "DryRunOperationException", code

    return checks.run()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
