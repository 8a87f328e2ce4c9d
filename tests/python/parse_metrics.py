#!/usr/bin/env python3
"""Parses a Prometheus text exposition (the proxy's /metrics) with the
reference parser of the Prometheus Python client.

Usage: parse_metrics.py < metrics.txt

Prints one JSON array of samples, each {"family", "type", "name", "labels",
"value"}, and exits 0; a text the parser rejects makes it exit non-zero with
the parser's error. Run by tests/tests/proxy_metrics.rs.
"""

import json
import sys

from prometheus_client.parser import text_string_to_metric_families


def main():
    text = sys.stdin.read()
    samples = []
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.append(
                {
                    "family": family.name,
                    "type": family.type,
                    "name": sample.name,
                    "labels": dict(sample.labels),
                    "value": sample.value,
                }
            )
    json.dump(samples, sys.stdout)


if __name__ == "__main__":
    main()
