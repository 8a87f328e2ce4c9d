"""Shared scaffolding of the boto3 test scripts: named checks, KMS error codes, a runner."""

from botocore.exceptions import ClientError


class Checks:
    """A list of named checks, run in order; every failure is reported."""

    def __init__(self, title):
        self.title = title
        self.checks = []

    def check(self, name):
        def wrap(fn):
            self.checks.append((name, fn))
            return fn

        return wrap

    def run(self):
        """Runs every check; returns the process exit code (0: all passed)."""
        passed = failed = 0
        for name, fn in self.checks:
            try:
                fn()
                passed += 1
                print(f"ok: {name}")
            except Exception as e:  # noqa: BLE001 - report every failure
                failed += 1
                print(f"FAILED: {name}: {type(e).__name__}: {e}")
        print(f"{self.title}: {passed} checks passed, {failed} failed")
        return 0 if failed == 0 else 1


def error_code(fn):
    """Calls fn, which must raise a ClientError; returns (code, message, HTTP status)."""
    try:
        fn()
    except ClientError as e:
        return (
            e.response["Error"]["Code"],
            e.response["Error"].get("Message", ""),
            e.response["ResponseMetadata"]["HTTPStatusCode"],
        )
    raise AssertionError("expected a ClientError")
