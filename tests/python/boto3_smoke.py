#!/usr/bin/env python3
"""boto3 smoke test of keybroker-mock-kms: the common KMS calls from Python.

Usage: boto3_smoke.py ENDPOINT   (e.g. http://127.0.0.1:4566)

Exits 0 when every check passes, 1 otherwise. Run by the Rust integration
test tests/tests/boto3_smoke.rs, which starts the mock in-process.
"""

import base64
import json
import sys

import boto3
from botocore.config import Config
from checks import Checks, error_code

def main(endpoint):
    kms = boto3.client(
        "kms",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="AKIAMOCKKMSBOTO30000",
        aws_secret_access_key="mock-kms-boto3-secret",
        # Let the mock, not botocore, validate ranges (NumberOfBytes=1025).
        config=Config(parameter_validation=False, retries={"max_attempts": 1}),
    )
    state = {}

    checks = Checks("boto3 smoke")
    check = checks.check

    @check("CreateKey and DescribeKey")
    def _():
        md = kms.create_key(Description="boto3 smoke")["KeyMetadata"]
        assert md["KeyState"] == "Enabled", md
        assert md["Arn"].startswith("arn:aws:kms:us-east-1:111122223333:key/"), md
        state["id"], state["arn"] = md["KeyId"], md["Arn"]
        assert kms.describe_key(KeyId=state["id"])["KeyMetadata"]["Description"] == "boto3 smoke"

    @check("CreateAlias and ListAliases")
    def _():
        kms.create_alias(AliasName="alias/boto3", TargetKeyId=state["id"])
        names = [a["AliasName"] for a in kms.list_aliases(KeyId=state["id"])["Aliases"]]
        assert names == ["alias/boto3"], names
        assert any(k["KeyId"] == state["id"] for k in kms.list_keys()["Keys"])

    @check("GenerateDataKey and Decrypt with an encryption context")
    def _():
        r = kms.generate_data_key(
            KeyId="alias/boto3", KeySpec="AES_256", EncryptionContext={"app": "smoke"}
        )
        assert r["KeyId"] == state["arn"], r["KeyId"]
        assert len(r["Plaintext"]) == 32
        d = kms.decrypt(CiphertextBlob=r["CiphertextBlob"], EncryptionContext={"app": "smoke"})
        assert d["Plaintext"] == r["Plaintext"]
        code, _, _ = error_code(
            lambda: kms.decrypt(CiphertextBlob=r["CiphertextBlob"], EncryptionContext={"app": "x"})
        )
        assert code == "InvalidCiphertextException", code

    @check("Encrypt, ReEncrypt, GenerateDataKeyWithoutPlaintext")
    def _():
        e = kms.encrypt(KeyId=state["id"], Plaintext=b"boto3 says hi")
        other = kms.create_key()["KeyMetadata"]["KeyId"]
        re = kms.re_encrypt(CiphertextBlob=e["CiphertextBlob"], DestinationKeyId=other)
        assert re["KeyId"].endswith(other)
        assert kms.decrypt(CiphertextBlob=re["CiphertextBlob"])["Plaintext"] == b"boto3 says hi"
        w = kms.generate_data_key_without_plaintext(KeyId=state["id"], NumberOfBytes=16)
        assert "Plaintext" not in w
        assert len(kms.decrypt(CiphertextBlob=w["CiphertextBlob"])["Plaintext"]) == 16

    @check("GenerateDataKeyPair and GenerateRandom")
    def _():
        p = kms.generate_data_key_pair(KeyId=state["id"], KeyPairSpec="ECC_NIST_P256")
        assert p["PublicKey"][:1] == b"\x30" and p["PrivateKeyPlaintext"][:1] == b"\x30"
        assert len(kms.generate_random(NumberOfBytes=64)["Plaintext"]) == 64

    @check("Key policies")
    def _():
        policy = json.loads(kms.get_key_policy(KeyId=state["id"], PolicyName="default")["Policy"])
        assert policy["Statement"][0]["Action"] == "kms:*", policy
        kms.put_key_policy(KeyId=state["id"], PolicyName="default", Policy=json.dumps(policy))

    @check("Errors: NotFound, Validation, Disabled, pending deletion")
    def _():
        code, msg, _ = error_code(lambda: kms.describe_key(KeyId="alias/missing"))
        assert code == "NotFoundException", code
        code, msg, _ = error_code(
            lambda: kms.generate_data_key(KeyId=state["id"], NumberOfBytes=1025)
        )
        assert code == "ValidationException", code
        assert "Member must have value less than or equal to 1024" in msg, msg
        kms.disable_key(KeyId=state["id"])
        code, _, _ = error_code(lambda: kms.generate_data_key(KeyId=state["id"], KeySpec="AES_256"))
        assert code == "DisabledException", code
        kms.enable_key(KeyId=state["id"])
        kms.schedule_key_deletion(KeyId=state["id"], PendingWindowInDays=7)
        code, _, _ = error_code(lambda: kms.generate_data_key(KeyId=state["id"], KeySpec="AES_256"))
        assert code == "KMSInvalidStateException", code
        kms.cancel_key_deletion(KeyId=state["id"])
        md = kms.describe_key(KeyId=state["id"])["KeyMetadata"]
        assert md["KeyState"] == "Disabled", md

    @check("Raw blobs survive base64 both ways")
    def _():
        blob = bytes(range(256)) * 4
        kms.enable_key(KeyId=state["id"])
        e = kms.encrypt(KeyId=state["id"], Plaintext=blob)
        assert kms.decrypt(CiphertextBlob=e["CiphertextBlob"])["Plaintext"] == blob
        base64.b64encode(e["CiphertextBlob"])  # bytes, not text

    return checks.run()

if __name__ == "__main__":
    if len(sys.argv) != 2:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    sys.exit(main(sys.argv[1]))
