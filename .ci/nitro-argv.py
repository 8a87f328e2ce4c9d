#!/usr/bin/env python3
"""What `nitro-cli build-enclave` makes of an image configuration.

Reads the image's `Config` object (`podman image inspect --format '{{json .Config}}'`)
on stdin and prints, as JSON, the program the enclave's init will run:

  argv-json  the argv list
  env-json   the environment list (KEY=VALUE strings)

nitro-cli's rule (DESIGN.md, "How an enclave starts"): `Cmd` together with
`Env` when both are present; otherwise `Entrypoint` alone. The two are never
joined, unlike `docker run`. Exits 1 when the rule yields no program.
"""
import json
import sys


def resolve(config):
    cmd = config.get("Cmd") or []
    env = config.get("Env") or []
    if cmd and env:
        return cmd, env
    entrypoint = config.get("Entrypoint") or []
    return entrypoint, env


def main():
    if len(sys.argv) != 2 or sys.argv[1] not in ("argv-json", "env-json"):
        print("usage: nitro-argv.py argv-json|env-json < config.json", file=sys.stderr)
        return 2
    argv, env = resolve(json.load(sys.stdin) or {})
    if not argv:
        print("nitro-argv: the image configuration gives no program", file=sys.stderr)
        return 1
    print(json.dumps(argv if sys.argv[1] == "argv-json" else env))
    return 0


if __name__ == "__main__":
    sys.exit(main())
