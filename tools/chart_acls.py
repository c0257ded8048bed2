"""charts/imx/files/service-acls.json: the services' Kafka ACLs (services/common/service_access.py) as
the chart's Strimzi KafkaUser resources declare them, so the chart never keeps a second copy by hand.

`python -m tools.chart_acls` writes the file; a unit test fails when it is stale. Names carry the
placeholder PREFIX where the deployment's topic prefix goes (kafka.topicPrefix).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from kafka.admin import ACLResourcePatternType

from services.common.service_access import SERVICES, service_grants
from services.common.topics import Topics

PREFIX = "@PREFIX@"
FILE = Path(__file__).resolve().parent.parent / "charts" / "imx" / "files" / "service-acls.json"


def strimzi_operation(name: str) -> str:
    """kafka-python's DESCRIBE_CONFIGS → Strimzi's DescribeConfigs."""
    return "".join(part.capitalize() for part in name.split("_"))


def _resource(kind: str, name: str, pattern: ACLResourcePatternType) -> dict[str, str]:
    """A Strimzi ACL resource; the cluster has neither name nor pattern there."""
    if kind == "CLUSTER":
        return {"type": "cluster"}
    prefixed = pattern == ACLResourcePatternType.PREFIXED
    return {"type": kind.lower(), "name": name, "patternType": "prefix" if prefixed else "literal"}


def declared() -> dict[str, list[dict[str, Any]]]:
    """{service: [Strimzi `spec.authorization.acls` entries]}, names with the PREFIX placeholder."""
    topics = Topics(PREFIX)
    return {
        service: [
            {
                "resource": _resource(grant.kind.name, grant.name, grant.pattern),
                "operations": [strimzi_operation(op.name) for op in grant.operations],
            }
            for grant in service_grants(service, topics)
        ]
        for service in SERVICES
    }


def render() -> str:
    return json.dumps(declared(), indent=1, sort_keys=True) + "\n"


def main() -> int:
    FILE.parent.mkdir(parents=True, exist_ok=True)
    FILE.write_text(render())
    print(f"wrote {FILE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
