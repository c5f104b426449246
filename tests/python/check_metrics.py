"""Parses Prometheus text from stdin with prometheus_client's parser (it raises on
anything malformed) and prints {family: [label sets]} as JSON."""

import json
import sys

from prometheus_client.parser import text_string_to_metric_families

families = {}
for family in text_string_to_metric_families(sys.stdin.read()):
    families[family.name] = [dict(sample.labels) for sample in family.samples]
print(json.dumps(families))
