#!/usr/bin/env python3
"""boto3 against keybroker-mock-kms over HTTPS with SigV4 verification.

Usage: boto3_auth.py ENDPOINT CA_PEM ACCESS_KEY_ID SECRET_ACCESS_KEY
       (e.g. https://127.0.0.1:4566 /tmp/tls/ca.pem AKID secret)

The mock must serve TLS under the test CA in CA_PEM and verify signatures
for the given credentials. Exits 0 when every check passes, 1 otherwise.
Run by the Rust integration test tests/tests/mock_kms_auth.rs.
"""

import sys

import boto3
from botocore.config import Config
from botocore.exceptions import SSLError
from checks import Checks, error_code


def client(endpoint, verify, key_id, secret):
    return boto3.client(
        "kms",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id=key_id,
        aws_secret_access_key=secret,
        verify=verify,
        config=Config(retries={"max_attempts": 1}),
    )


def main(endpoint, ca_pem, key_id, secret):
    checks = Checks("boto3 auth")
    check = checks.check
    kms = client(endpoint, ca_pem, key_id, secret)

    @check("HTTPS trusting the test CA, correct credentials: GenerateDataKey")
    def _():
        key = kms.create_key(Description="boto3 auth")["KeyMetadata"]["KeyId"]
        r = kms.generate_data_key(KeyId=key, KeySpec="AES_256")
        assert len(r["Plaintext"]) == 32
        assert kms.decrypt(CiphertextBlob=r["CiphertextBlob"])["Plaintext"] == r["Plaintext"]

    @check("A wrong secret gets InvalidSignatureException (400)")
    def _():
        bad = client(endpoint, ca_pem, key_id, secret + "-wrong")
        code, msg, status = error_code(lambda: bad.list_keys())
        assert (code, status) == ("InvalidSignatureException", 400), (code, status)
        assert "signature we calculated does not match" in msg, msg

    @check("An unknown access key id gets UnrecognizedClientException (400)")
    def _():
        bad = client(endpoint, ca_pem, "AKIAUNKNOWN000000000", secret)
        code, _, status = error_code(lambda: bad.list_keys())
        assert (code, status) == ("UnrecognizedClientException", 400), (code, status)

    @check("Without the test CA the certificate is refused")
    def _():
        # certifi's public roots (botocore's default) do not include the test CA.
        untrusting = client(endpoint, True, key_id, secret)
        try:
            untrusting.list_keys()
        except SSLError:
            return
        raise AssertionError("the TLS handshake succeeded without trusting the test CA")

    return checks.run()


if __name__ == "__main__":
    if len(sys.argv) != 5:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    sys.exit(main(*sys.argv[1:]))
