#!/usr/bin/env python3
"""boto3 against the Keybroker in-enclave KMS endpoint (`keybroker-enclave serve`).

Usage: enclave_endpoint_boto3.py ENDPOINT KEY_ARN

An unmodified boto3 KMS client whose endpoint_url is the enclave's endpoint:
the plaintext-returning operations answer with Plaintext / PrivateKeyPlaintext
(decrypted inside the enclave), the others are relayed, unsupported operations
and KMS errors come back as botocore ClientErrors with KMS's codes.
Exits 0 when every check passes, 1 otherwise. Run by
tests/tests/enclave_endpoint.rs, which starts the stack in-process.
"""

import sys

import boto3
from botocore.config import Config
from checks import Checks, error_code

def main(endpoint, key_arn):
    kms = boto3.client(
        "kms",
        endpoint_url=endpoint,
        region_name="us-east-1",
        # The enclave endpoint ignores signatures; boto3 signs anyway.
        aws_access_key_id="AKIAENCLAVEBOTO30000",
        aws_secret_access_key="enclave-boto3-secret",
        config=Config(retries={"max_attempts": 1}),
    )

    checks = Checks("enclave endpoint boto3")
    check = checks.check

    @check("GenerateDataKey and Decrypt with an encryption context")
    def _():
        ctx = {"app": "boto3", "tenant": "t1"}
        r = kms.generate_data_key(KeyId=key_arn, KeySpec="AES_256", EncryptionContext=ctx)
        assert r["KeyId"] == key_arn, r["KeyId"]
        assert len(r["Plaintext"]) == 32
        assert "CiphertextForRecipient" not in r, r.keys()
        d = kms.decrypt(CiphertextBlob=r["CiphertextBlob"], EncryptionContext=ctx)
        assert d["Plaintext"] == r["Plaintext"]
        assert d["KeyId"] == key_arn
        code, _, status = error_code(
            lambda: kms.decrypt(CiphertextBlob=r["CiphertextBlob"], EncryptionContext={"app": "x"})
        )
        assert (code, status) == ("InvalidCiphertextException", 400), (code, status)

    @check("GenerateDataKey with NumberOfBytes")
    def _():
        assert len(kms.generate_data_key(KeyId=key_arn, NumberOfBytes=64)["Plaintext"]) == 64

    @check("GenerateDataKeyPair returns PrivateKeyPlaintext")
    def _():
        p = kms.generate_data_key_pair(KeyId=key_arn, KeyPairSpec="ECC_NIST_P256")
        assert p["PublicKey"][:1] == b"\x30" and p["PrivateKeyPlaintext"][:1] == b"\x30"
        d = kms.decrypt(CiphertextBlob=p["PrivateKeyCiphertextBlob"])
        assert d["Plaintext"] == p["PrivateKeyPlaintext"]

    @check("GenerateRandom")
    def _():
        assert len(kms.generate_random(NumberOfBytes=48)["Plaintext"]) == 48

    @check("Without-plaintext operations and DescribeKey are relayed")
    def _():
        w = kms.generate_data_key_without_plaintext(KeyId=key_arn, KeySpec="AES_256")
        assert "Plaintext" not in w
        assert len(kms.decrypt(CiphertextBlob=w["CiphertextBlob"])["Plaintext"]) == 32
        assert kms.describe_key(KeyId=key_arn)["KeyMetadata"]["Arn"] == key_arn

    @check("Encrypt is refused with UnsupportedOperationException")
    def _():
        code, msg, status = error_code(lambda: kms.encrypt(KeyId=key_arn, Plaintext=b"x"))
        assert (code, status) == ("UnsupportedOperationException", 400), (code, status)
        assert "parent" in msg, msg

    @check("KMS errors keep their code")
    def _():
        code, _, status = error_code(
            lambda: kms.generate_data_key(KeyId="alias/missing", KeySpec="AES_256")
        )
        assert (code, status) == ("NotFoundException", 400), (code, status)

    return checks.run()

if __name__ == "__main__":
    if len(sys.argv) != 3:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    sys.exit(main(sys.argv[1], sys.argv[2]))
