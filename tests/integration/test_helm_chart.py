"""charts/imx: `helm lint` passes and `helm template` renders what the cluster needs: five Deployments from
one image, native gRPC probes on each service's port, non-root read-only pods, the shared blob volume,
and no secret in the output. Needs the helm binary that `make setup` builds (infra/setup.sh); nothing is
installed into a cluster."""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from services.common.api_keys import api_key_digest
from services.common.control_server import HTTP_READY, LIVENESS
from services.common.topics import Topics
from services.delivery.dicomweb_wiring import GRACE_S
from services.ingest.settings import IngestSettings
from tests.settings_env import GRPC_PORTS, env_names
from tools.capacity import BASIS, chart_defaults, partitions_for, partner_partitions_default
from tools.services_stack import stage_inputs

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "imx"
SERVICES = list(GRPC_PORTS)
BLOB_SERVICES = {"ingest", "deid", "delivery"}
# Explicit, so the result does not depend on the Kubernetes version a helm binary was built to assume.
KUBE_VERSION = "1.30.0"


def _helm_binary() -> str | None:
    cached = Path(os.environ.get("IMX_CACHE", Path.home() / ".cache" / "imx")) / "bin" / "helm"
    if cached.is_file() and os.access(cached, os.X_OK):
        return str(cached)
    return shutil.which("helm")


HELM = _helm_binary()
pytestmark = pytest.mark.skipif(
    HELM is None, reason="helm not found in ~/.cache/imx/bin or on PATH: `make setup` builds it (infra/setup.sh)"
)


def helm(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    assert HELM is not None
    result = subprocess.run([HELM, *args], capture_output=True, text=True, timeout=120, cwd=ROOT)
    if check and result.returncode != 0:
        pytest.fail(f"helm {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}", pytrace=False)
    return result


# A throw-away chart that turns rendered manifests (its file rendered.yaml) into one JSON List, with
# Helm's own YAML parser (sigs.k8s.io/yaml, the one Kubernetes uses): the project has no YAML library.
TO_JSON_TEMPLATE = """\
{{- $items := list }}
{{- range $chunk := regexSplit "(?m)^---[ \\t]*$" (.Files.Get "rendered.yaml") -1 }}
{{- $doc := fromYaml $chunk }}
{{- if $doc }}{{ $items = append $items $doc }}{{ end }}
{{- end }}
{{ dict "apiVersion" "v1" "kind" "List" "items" $items | toJson }}
"""


@pytest.fixture(scope="module")
def converter(tmp_path_factory: pytest.TempPathFactory) -> Path:
    chart = tmp_path_factory.mktemp("yaml-to-json")
    (chart / "Chart.yaml").write_text("apiVersion: v2\nname: yaml-to-json\nversion: 0.0.0\n")
    (chart / "templates").mkdir()
    (chart / "templates" / "list.yaml").write_text(TO_JSON_TEMPLATE)
    return chart


def as_json(manifests: str, converter: Path) -> list[dict[str, Any]]:
    (converter / "rendered.yaml").write_text(manifests)
    output = helm("template", "convert", str(converter)).stdout
    body = "\n".join(line for line in output.splitlines() if line.strip() != "---" and not line.startswith("#"))
    items: list[dict[str, Any]] = json.loads(body)["items"]
    unparsed = [item["Error"] for item in items if set(item) == {"Error"}]  # fromYaml's way of failing
    assert not unparsed, unparsed
    return items


@pytest.fixture(scope="module")
def render(converter: Path) -> Callable[..., list[dict[str, Any]]]:
    """render("key=value", ...) -> the chart's manifests as dicts, with those --set values."""

    def _render(*sets: str) -> list[dict[str, Any]]:
        args = ["template", "imx", str(CHART), "--namespace", "imx", "--kube-version", KUBE_VERSION]
        for value in sets:
            args += ["--set", value]
        return as_json(helm(*args).stdout, converter)

    return _render


def of_kind(docs: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {doc["metadata"]["name"]: doc for doc in docs if doc["kind"] == kind}


def container(deployment: dict[str, Any]) -> dict[str, Any]:
    (only,) = deployment["spec"]["template"]["spec"]["containers"]
    return only


def env_of(deployment: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {entry["name"]: entry for entry in container(deployment)["env"]}


Render = Callable[..., list[dict[str, Any]]]


@pytest.fixture(scope="module")
def default_docs(render: Render) -> list[dict[str, Any]]:
    return render()


def test_chart_lints_cleanly_with_defaults_and_with_every_option_on() -> None:
    helm("lint", "--strict", "--kube-version", KUBE_VERSION, str(CHART))
    helm(
        "lint",
        "--strict",
        "--kube-version",
        KUBE_VERSION,
        str(CHART),
        "--set",
        "networkPolicy.enabled=true,kafka.strimziTopics.enabled=true,blobStore.persistence.storageClass=nfs,keda.enabled=true,"
        "services.ingest.tls.existingSecret=t,services.delivery.tls.existingSecret=t,services.audit.tls.existingSecret=t",
    )


def test_one_deployment_and_service_per_service_all_from_one_image(default_docs: list[dict[str, Any]]) -> None:
    deployments = of_kind(default_docs, "Deployment")
    services = of_kind(default_docs, "Service")
    assert sorted(deployments) == sorted(f"imx-{name}" for name in SERVICES)
    assert sorted(services) == sorted(deployments)
    assert {container(d)["image"] for d in deployments.values()} == {"imx:0.1.0"}
    for name in SERVICES:
        assert container(deployments[f"imx-{name}"])["args"] == [f"services.{name}"]


def test_probes_are_native_grpc_on_each_services_own_port(default_docs: list[dict[str, Any]]) -> None:
    deployments = of_kind(default_docs, "Deployment")
    for name, port in GRPC_PORTS.items():
        main = container(deployments[f"imx-{name}"])
        # Readiness asks the whole server (connected and consuming); startup and liveness that the process
        # answers, so a broker outage takes pods out of service without restarting them. Delivery's and
        # audit's readiness is their HTTP API's: it reads MongoDB only.
        ready = {"port": port, "service": HTTP_READY} if name in ("audit", "delivery") else {"port": port}
        assert main["readinessProbe"]["grpc"] == ready, name
        for probe in ("startupProbe", "livenessProbe"):
            assert main[probe]["grpc"] == {"port": port, "service": LIVENESS}, (name, probe)
        env = env_of(deployments[f"imx-{name}"])
        assert env["IMX_GRPC_PORT"]["value"] == str(port)
        # The services bind 127.0.0.1 by default, which the kubelet's probe could not reach.
        assert env["IMX_GRPC_HOST"]["value"] == "0.0.0.0"


def test_audit_is_replaced_not_rolled(default_docs: list[dict[str, Any]]) -> None:
    deployments = of_kind(default_docs, "Deployment")
    # rollingUpdate set to null: an upgrade of a release whose live audit has the default's is refused otherwise
    assert deployments["imx-audit"]["spec"]["strategy"] == {"type": "Recreate", "rollingUpdate": None}
    assert "strategy" not in deployments["imx-routing"]["spec"]  # the stages roll (several replicas)


def test_delivery_has_time_to_finish_its_stage_and_then_the_downloads_in_flight(
    default_docs: list[dict[str, Any]],
) -> None:
    """Delivery finishes its stage, then gives partners' downloads in flight GRACE_S: 30 s in all cut the
    large downloads of every rolling update off."""
    deployments = of_kind(default_docs, "Deployment")
    grace = deployments["imx-delivery"]["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert grace >= GRACE_S + 20


def test_tmp_holds_deflated_data_sets_inflated(default_docs: list[dict[str, Any]]) -> None:
    """Ingest inflates deflated data sets under /tmp to check them, up to IMX_MAX_INFLATED_BYTES (1 GiB) each,
    IMX_MAX_SPILLED_INFLATIONS at once; the kubelet evicts a pod whose emptyDir outgrows its limit (256Mi
    was: one such instance evicted ingest)."""
    units = {"Mi": 1 << 20, "Gi": 1 << 30}
    settings = IngestSettings()
    at_most = settings.max_spilled_inflations * settings.max_inflated_bytes  # the others wait their turn
    for name in ("ingest", "deid"):
        pod = of_kind(default_docs, "Deployment")[f"imx-{name}"]["spec"]["template"]["spec"]
        limit = next(v["emptyDir"]["sizeLimit"] for v in pod["volumes"] if v["name"] == "tmp")
        assert int(limit[:-2]) * units[limit[-2:]] >= at_most, (name, limit)
    # Requested too: scheduled where it fits, and not the first evicted when the node's disk runs short.
    ingest = of_kind(default_docs, "Deployment")["imx-ingest"]["spec"]["template"]["spec"]["containers"][0]
    requested = ingest["resources"]["requests"]["ephemeral-storage"]
    assert int(requested[:-2]) * units[requested[-2:]] >= at_most


def test_pods_run_as_non_root_with_a_read_only_root_and_no_capabilities(default_docs: list[dict[str, Any]]) -> None:
    for deployment in of_kind(default_docs, "Deployment").values():
        pod = deployment["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] == 10001
        assert pod["automountServiceAccountToken"] is False
        assert pod["enableServiceLinks"] is False
        security = container(deployment)["securityContext"]
        assert security["readOnlyRootFilesystem"] is True
        assert security["allowPrivilegeEscalation"] is False
        assert security["capabilities"]["drop"] == ["ALL"]
        mounts = {mount["name"]: mount["mountPath"] for mount in container(deployment)["volumeMounts"]}
        volumes = {volume["name"]: volume for volume in pod["volumes"]}
        assert mounts["tmp"] == "/tmp"
        assert "emptyDir" in volumes["tmp"]


def test_ingest_audit_and_delivery_services_expose_their_doors(default_docs: list[dict[str, Any]]) -> None:
    services = of_kind(default_docs, "Service")

    def ports(name: str) -> dict[str, int]:
        return {port["name"]: port["port"] for port in services[f"imx-{name}"]["spec"]["ports"]}

    assert ports("ingest") == {"grpc": 15051, "dicom": 11112, "http": 8041}
    assert ports("audit") == {"grpc": 15055, "http": 8045}
    assert ports("delivery") == {"grpc": 15054, "http": 8046}, "the partners' DICOMweb API"
    for name in ("routing", "deid"):
        assert ports(name) == {"grpc": GRPC_PORTS[name]}


def test_partners_feeds_point_at_the_public_dicomweb_url(render: Render) -> None:
    default = env_of(of_kind(render(), "Deployment")["imx-delivery"])
    assert default["IMX_DELIVERY_PUBLIC_URL"]["value"] == "http://imx-delivery:8046/dicomweb"
    public = render("services.delivery.publicUrl=https://imx.example.org/dicomweb")
    assert env_of(of_kind(public, "Deployment")["imx-delivery"])["IMX_DELIVERY_PUBLIC_URL"]["value"] == (
        "https://imx.example.org/dicomweb"
    )


def test_http_services_serve_https_from_a_tls_secret_only_when_one_is_given(
    render: Render, default_docs: list[dict[str, Any]]
) -> None:
    for deployment in of_kind(default_docs, "Deployment").values():
        assert "IMX_HTTP_TLS_CERT_FILE" not in env_of(deployment)
    docs = render(*(f"services.{name}.tls.existingSecret={name}-tls" for name in ("ingest", "delivery", "audit")))
    deployments = of_kind(docs, "Deployment")
    for name in ("ingest", "delivery", "audit"):
        deployment = deployments[f"imx-{name}"]
        env = env_of(deployment)
        mount = {m["name"]: m for m in container(deployment)["volumeMounts"]}["http-tls"]
        assert mount["readOnly"]
        assert env["IMX_HTTP_TLS_CERT_FILE"]["value"] == mount["mountPath"] + "/tls.crt"
        assert env["IMX_HTTP_TLS_KEY_FILE"]["value"] == mount["mountPath"] + "/tls.key"
        assert set(env) <= env_names(name)
        volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
        assert volumes["http-tls"]["secret"]["secretName"] == f"{name}-tls"
    for name in ("routing", "deid"):
        assert "IMX_HTTP_TLS_CERT_FILE" not in env_of(deployments[f"imx-{name}"])
    assert env_of(deployments["imx-delivery"])["IMX_DELIVERY_PUBLIC_URL"]["value"] == (
        "https://imx-delivery:8046/dicomweb"
    )


def test_blob_volume_is_one_read_write_many_claim_shared_by_ingest_deid_and_delivery(render: Render) -> None:
    docs = render("blobStore.persistence.storageClass=nfs-client")
    (claim,) = of_kind(docs, "PersistentVolumeClaim").values()
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]
    assert claim["spec"]["storageClassName"] == "nfs-client"
    for name, deployment in of_kind(docs, "Deployment").items():
        volumes = {
            volume["persistentVolumeClaim"]["claimName"]
            for volume in deployment["spec"]["template"]["spec"]["volumes"]
            if "persistentVolumeClaim" in volume
        }
        mounts = {mount["mountPath"] for mount in container(deployment)["volumeMounts"]}
        blob_dir = env_of(deployment)["IMX_BLOB_DIR"]["value"]
        if name.removeprefix("imx-") in BLOB_SERVICES:
            assert volumes == {claim["metadata"]["name"]}
            assert blob_dir in mounts
        else:
            assert volumes == set()
            assert blob_dir not in mounts


def test_existing_claim_is_used_instead_of_a_new_one(render: Render) -> None:
    docs = render("blobStore.persistence.existingClaim=dicom-store")
    assert of_kind(docs, "PersistentVolumeClaim") == {}
    claims = {
        volume["persistentVolumeClaim"]["claimName"]
        for deployment in of_kind(docs, "Deployment").values()
        for volume in deployment["spec"]["template"]["spec"]["volumes"]
        if "persistentVolumeClaim" in volume
    }
    assert claims == {"dicom-store"}


def test_no_secret_is_rendered_the_mongo_uri_comes_from_an_existing_secret(render: Render) -> None:
    docs = render(
        "mongo.existingSecret=imx-db,mongo.uriKey=connection,services.audit.signingKey.existingSecret=k,"
        "controlPlane.bootstrapToken.existingSecret=t,kafka.serviceCredentials.existingSecret=kafka-passwords"
    )
    assert of_kind(docs, "Secret") == {}
    assert "mongodb://" not in json.dumps(docs)
    for deployment in of_kind(docs, "Deployment").values():
        uri = env_of(deployment)["IMX_MONGO_URI"]
        assert "value" not in uri
        assert uri["valueFrom"]["secretKeyRef"] == {"name": "imx-db", "key": "connection"}


def test_audit_signs_with_a_key_the_chart_makes_once_or_one_the_operator_gives(render: Render) -> None:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    docs = render()
    secret = of_kind(docs, "Secret")["imx-audit-signing-key"]
    assert secret["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    pem = base64.b64decode(secret["data"]["signing-key.pem"])
    assert isinstance(load_pem_private_key(pem, password=None), Ed25519PrivateKey)
    audit = of_kind(docs, "Deployment")["imx-audit"]
    key_file = env_of(audit)["IMX_AUDIT_SIGNING_KEY_FILE"]["value"]
    mounts = {m["name"]: m for m in container(audit)["volumeMounts"]}
    key_mount = mounts["audit-signing-key"]
    assert key_file.startswith(key_mount["mountPath"] + "/") and key_mount["readOnly"]
    volumes = {v["name"]: v for v in audit["spec"]["template"]["spec"]["volumes"]}
    assert volumes["audit-signing-key"]["secret"]["secretName"] == secret["metadata"]["name"]

    given = render("services.audit.signingKey.existingSecret=audit-key,services.audit.signingKey.key=k.pem")
    assert "imx-audit-signing-key" not in of_kind(given, "Secret")
    audit = of_kind(given, "Deployment")["imx-audit"]
    assert env_of(audit)["IMX_AUDIT_SIGNING_KEY_FILE"]["value"].endswith("/k.pem")
    volumes = {v["name"]: v for v in audit["spec"]["template"]["spec"]["volumes"]}
    assert volumes["audit-signing-key"]["secret"]["secretName"] == "audit-key"


def test_every_service_takes_the_control_planes_bootstrap_token_from_a_secret(render: Render) -> None:
    docs = render()
    secret = of_kind(docs, "Secret")["imx-control-token"]
    assert secret["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    token = base64.b64decode(secret["data"]["token"]).decode()
    assert token.startswith("imx_ctl_")
    # The services are given only its digest: a pod broken into holds no administrator's token.
    digest = base64.b64decode(secret["data"]["digest"]).decode()
    assert digest == "sha256:" + api_key_digest(token)
    for name, deployment in of_kind(docs, "Deployment").items():
        token_file = env_of(deployment)["IMX_CONTROL_BOOTSTRAP_TOKEN_FILE"]["value"]
        mount = {m["name"]: m for m in container(deployment)["volumeMounts"]}["control-token"]
        assert token_file == mount["mountPath"] + "/digest" and mount["readOnly"], name
        volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
        assert volumes["control-token"]["secret"]["secretName"] == "imx-control-token", name
        assert volumes["control-token"]["secret"]["items"] == [{"key": "digest", "path": "digest"}], name

    given = render("controlPlane.bootstrapToken.existingSecret=ops-token,controlPlane.bootstrapToken.key=digest")
    assert "imx-control-token" not in of_kind(given, "Secret")
    for deployment in of_kind(given, "Deployment").values():
        assert env_of(deployment)["IMX_CONTROL_BOOTSTRAP_TOKEN_FILE"]["value"].endswith("/digest")
        volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
        assert volumes["control-token"]["secret"]["secretName"] == "ops-token"


def test_a_literal_mongo_uri_in_values_is_rejected() -> None:
    for value in ("mongo.uri=mongodb://user:pw@db:27017/", "services.deid.env.IMX_MONGO_URI=mongodb://user:pw@db/"):
        result = helm("template", "imx", str(CHART), "--kube-version", KUBE_VERSION, "--set", value, check=False)
        assert result.returncode != 0, value
        assert "pw@" not in result.stdout


def test_every_environment_variable_is_one_the_service_reads(default_docs: list[dict[str, Any]]) -> None:
    deployments = of_kind(default_docs, "Deployment")
    for name in SERVICES:
        unknown = set(env_of(deployments[f"imx-{name}"])) - env_names(name)
        assert not unknown, f"{name} is given variables its settings do not read: {sorted(unknown)}"


def test_partitions_prefix_and_otlp_reach_every_service(render: Render) -> None:
    docs = render(
        "kafka.topicPartitions=48,kafka.topicPrefix=prod.,otlp.endpoint=http://otel:4317",
        "kafka.topicReplicationFactor=5",
    )
    for deployment in [*of_kind(docs, "Deployment").values(), *of_kind(docs, "Job").values()]:
        env = env_of(deployment)
        assert env["IMX_TOPIC_PARTITIONS"]["value"] == "48"
        assert env["IMX_TOPIC_REPLICATION_FACTOR"]["value"] == "5"  # topics the services and the Job create
        if deployment["kind"] == "Job":
            continue
        assert env["IMX_TOPIC_PREFIX"]["value"] == "prod."
        assert env["IMX_OTLP_ENDPOINT"]["value"] == "http://otel:4317"


def test_the_partner_listener_reaches_delivery_only_when_set(render: Render) -> None:
    assert "IMX_KAFKA_PARTNER_BOOTSTRAP" not in env_of(of_kind(render(), "Deployment")["imx-delivery"])
    deployments = of_kind(
        render(
            "kafka.partnerListener.bootstrap=kafka-partners.example:9094",
            "services.delivery.publicUrl=https://imx.example/dicomweb",
        ),
        "Deployment",
    )
    env = env_of(deployments["imx-delivery"])
    assert env["IMX_KAFKA_PARTNER_BOOTSTRAP"]["value"] == "kafka-partners.example:9094"
    assert env["IMX_KAFKA_PARTNER_SECURITY_PROTOCOL"]["value"] == "SASL_SSL", "TLS by default off this machine"
    assert set(env) <= env_names("delivery")
    assert "IMX_KAFKA_PARTNER_BOOTSTRAP" not in env_of(deployments["imx-routing"])


def test_optional_network_policies_and_strimzi_topics(render: Render) -> None:
    docs = render("networkPolicy.enabled=true", "kafka.strimziTopics.enabled=true", "kafka.topicPrefix=prod.")
    assert sorted(of_kind(docs, "NetworkPolicy")) == sorted(f"imx-{name}" for name in SERVICES)
    topics = {doc["spec"]["topicName"]: doc for doc in docs if doc["kind"] == "KafkaTopic"}
    assert sorted(topics) == sorted(Topics("prod.").pipeline()), "every topic the services would create"
    for topic in topics.values():
        assert topic["spec"]["partitions"] == 24
        assert topic["spec"]["replicas"] == 3
        assert topic["spec"]["config"]["min.insync.replicas"] == 2
        assert topic["metadata"]["labels"]["strimzi.io/cluster"] == "imx"
    # Dead letters stay kafka.deadLetterRetentionDays (as the services create their topic); the others a week.
    kept = {name: t["spec"]["config"]["retention.ms"] for name, t in topics.items()}
    assert kept.pop(Topics("prod.").dead_letter) == 30 * 86400000
    assert set(kept.values()) == {604800000}
    until_deleted = render("kafka.strimziTopics.enabled=true", "kafka.deadLetterRetentionDays=0")
    dead_letters = [
        d for d in until_deleted if d["kind"] == "KafkaTopic" and d["spec"]["topicName"].endswith("deadletter.v1")
    ]
    assert dead_letters[0]["spec"]["config"]["retention.ms"] == -1
    # A single broker: one copy, one in sync (two in sync of one copy failed every acks=all write).
    single = render("kafka.strimziTopics.enabled=true", "kafka.topicReplicationFactor=1")
    for topic in (doc for doc in single if doc["kind"] == "KafkaTopic"):
        assert (topic["spec"]["replicas"], topic["spec"]["config"]["min.insync.replicas"]) == (1, 1)
    defaults = render()
    assert of_kind(defaults, "NetworkPolicy") == {}
    assert not [doc for doc in defaults if doc["kind"] == "KafkaTopic"]


def test_a_disabled_service_renders_nothing(render: Render) -> None:
    docs = render("services.audit.enabled=false")
    assert "imx-audit" not in of_kind(docs, "Deployment")
    assert "imx-audit" not in of_kind(docs, "Service")
    assert len(of_kind(docs, "Deployment")) == 4


KAFKA_PASSWORD_MOUNT = "/var/run/imx/kafka"


def test_each_service_signs_in_to_kafka_as_its_own_user_with_only_its_own_password(
    default_docs: list[dict[str, Any]],
) -> None:
    secret = of_kind(default_docs, "Secret")["imx-kafka-services"]
    for name in SERVICES:
        deployment = of_kind(default_docs, "Deployment")[f"imx-{name}"]
        env = env_of(deployment)
        assert env["IMX_KAFKA_SECURITY_PROTOCOL"]["value"] == "SASL_PLAINTEXT"
        assert env["IMX_KAFKA_SASL_MECHANISM"]["value"] == "SCRAM-SHA-512"
        assert env["IMX_KAFKA_SASL_USERNAME"]["value"] == f"imx-{name}"
        assert "IMX_KAFKA_SASL_PASSWORD" not in env, "the password is a file, never a variable"
        assert env["IMX_KAFKA_SASL_PASSWORD_FILE"]["value"] == f"{KAFKA_PASSWORD_MOUNT}/password"
        mounts = {m["name"]: m for m in container(deployment)["volumeMounts"]}
        assert mounts["kafka-password"] == {
            "name": "kafka-password",
            "mountPath": KAFKA_PASSWORD_MOUNT,
            "readOnly": True,
        }
        volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
        projected = volumes["kafka-password"]["secret"]
        assert projected["secretName"] == secret["metadata"]["name"]
        assert projected["items"] == [{"key": name, "path": "password"}], "no other service's password"


def test_the_chart_makes_the_kafka_passwords_once_before_anything_else_or_takes_a_given_secret(
    render: Render, default_docs: list[dict[str, Any]]
) -> None:
    secret = of_kind(default_docs, "Secret")["imx-kafka-services"]
    passwords = {key: base64.b64decode(value).decode() for key, value in secret["data"].items()}
    assert sorted(passwords) == sorted(SERVICES)
    assert all(len(p) == 40 and p.isalnum() for p in passwords.values())
    assert len(set(passwords.values())) == len(SERVICES)
    annotations = secret["metadata"]["annotations"]
    assert annotations["helm.sh/hook"] == "pre-install,pre-upgrade", "exists before the set-up Job and the pods"
    job = of_kind(default_docs, "Job")["imx-kafka-setup"]
    assert int(annotations["helm.sh/hook-weight"]) < int(job["metadata"]["annotations"]["helm.sh/hook-weight"])
    assert annotations["helm.sh/resource-policy"] == "keep"
    # On upgrade the template reuses what the cluster holds (lookup); new keys only for a new service.
    template = (CHART / "templates" / "kafka-credentials.yaml").read_text()
    assert 'lookup "v1" "Secret"' in template and "randAlphaNum" in template

    given = render("kafka.serviceCredentials.existingSecret=kafka-passwords")
    assert "imx-kafka-services" not in of_kind(given, "Secret")
    for deployment in of_kind(given, "Deployment").values():
        volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
        assert volumes["kafka-password"]["secret"]["secretName"] == "kafka-passwords"
    job = of_kind(given, "Job")["imx-kafka-setup"]
    volumes = {v["name"]: v for v in job["spec"]["template"]["spec"]["volumes"]}
    assert volumes["kafka-services"]["secret"]["secretName"] == "kafka-passwords"


def test_a_hook_job_sets_up_the_services_kafka_users_and_acls_as_the_admin(default_docs: list[dict[str, Any]]) -> None:
    job = of_kind(default_docs, "Job")["imx-kafka-setup"]
    assert job["metadata"]["annotations"]["helm.sh/hook"] == "pre-install,pre-upgrade"
    pod = job["spec"]["template"]["spec"]
    assert pod["restartPolicy"] == "Never" and pod["automountServiceAccountToken"] is False
    assert pod["securityContext"]["runAsNonRoot"] is True
    (main,) = pod["containers"]
    assert main["image"] == "imx:0.1.0"
    args = main["args"]
    assert args[:5] == [
        "services.cli.main",
        "kafka",
        "setup-services",
        "--passwords-dir",
        "/var/run/imx/kafka-services",
    ]
    assert [args[i + 1] for i, arg in enumerate(args) if arg == "--service"] == SERVICES
    assert "--no-create-topics" not in args
    assert main["securityContext"]["readOnlyRootFilesystem"] is True
    env = {entry["name"]: entry for entry in main["env"]}
    assert set(env) <= env_names("routing"), "only settings every service reads"
    assert env["IMX_KAFKA_SASL_USERNAME"]["valueFrom"]["secretKeyRef"] == {"name": "imx-kafka-admin", "key": "username"}
    assert env["IMX_KAFKA_SASL_MECHANISM"]["value"] == "SCRAM-SHA-512"
    assert env["IMX_KAFKA_SECURITY_PROTOCOL"]["value"] == "SASL_PLAINTEXT"
    assert "IMX_KAFKA_SASL_PASSWORD" not in env and "IMX_MONGO_URI" not in env
    mounts = {m["name"]: m["mountPath"] for m in main["volumeMounts"]}
    assert env["IMX_KAFKA_SASL_PASSWORD_FILE"]["value"] == mounts["kafka-admin"] + "/password"
    assert mounts["kafka-services"] == args[4]
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["kafka-admin"]["secret"]["items"] == [{"key": "password", "path": "password"}]
    assert volumes["kafka-services"]["secret"]["secretName"] == "imx-kafka-services"


def test_the_job_sets_up_enabled_services_only_and_leaves_strimzi_topics_to_strimzi(render: Render) -> None:
    docs = render("services.audit.enabled=false", "kafka.strimziTopics.enabled=true")
    args = of_kind(docs, "Job")["imx-kafka-setup"]["spec"]["template"]["spec"]["containers"][0]["args"]
    assert [args[i + 1] for i, arg in enumerate(args) if arg == "--service"] == [n for n in SERVICES if n != "audit"]
    assert "--no-create-topics" in args


def test_the_names_services_env_may_not_set_are_every_one_the_chart_sets(render: Render) -> None:
    helpers = (CHART / "templates" / "_helpers.tpl").read_text()
    listed = helpers.split('define "imx.reservedEnvNames" -}}')[1].split("{{- end }}")[0].split()
    docs = render(
        "kafka.securityProtocol=SASL_SSL",
        "kafka.tls.caSecret=ca",
        "kafka.partnerListener.bootstrap=partners:9094",
        "services.delivery.publicUrl=https://imx.example/dicomweb",
        "services.ingest.tls.existingSecret=stow-tls",
        "otlp.endpoint=http://collector:4317",
    )
    rendered = {name for d in of_kind(docs, "Deployment").values() for name in env_of(d)}
    assert rendered <= set(listed), sorted(rendered - set(listed))


def test_a_kafka_cluster_with_its_own_ca_is_trusted_by_every_service_the_job_and_keda(render: Render) -> None:
    """kafka-python trusts only the system's CAs: over SASL_SSL to a cluster with its own CA (Strimzi's by
    default) every service, the pre-install Job (so `helm install` itself) and KEDA's triggers were refused."""
    docs = render("kafka.securityProtocol=SASL_SSL", "kafka.tls.caSecret=imx-cluster-ca-cert", "keda.enabled=true")
    pods = [*of_kind(docs, "Deployment").values(), *of_kind(docs, "Job").values()]
    assert len(pods) == 6
    for pod in pods:
        assert env_of(pod)["IMX_KAFKA_SSL_CAFILE"]["value"] == "/var/run/imx/kafka-ca/ca.crt"
        mounts = {m["name"]: m["mountPath"] for m in container(pod)["volumeMounts"]}
        assert mounts["kafka-ca"] == "/var/run/imx/kafka-ca"
        volumes = {v["name"]: v for v in pod["spec"]["template"]["spec"]["volumes"]}
        ca = volumes["kafka-ca"]["secret"]
        assert ca["secretName"] == "imx-cluster-ca-cert" and ca["items"] == [{"key": "ca.crt", "path": "ca.crt"}]
    for auth in of_kind(docs, "TriggerAuthentication").values():
        refs = {ref["parameter"]: ref for ref in auth["spec"]["secretTargetRef"]}
        assert (refs["ca"]["name"], refs["ca"]["key"]) == ("imx-cluster-ca-cert", "ca.crt")
    # Not over TLS: no CA, whatever is set.
    plain = render("kafka.tls.caSecret=imx-cluster-ca-cert")
    assert not [d for d in of_kind(plain, "Deployment").values() if "IMX_KAFKA_SSL_CAFILE" in env_of(d)]


def test_without_a_sign_in_no_kafka_secret_job_or_sasl_settings(render: Render) -> None:
    docs = render("kafka.securityProtocol=PLAINTEXT")
    assert "imx-kafka-services" not in of_kind(docs, "Secret")
    assert of_kind(docs, "Job") == {}
    for deployment in of_kind(docs, "Deployment").values():
        env = env_of(deployment)
        assert env["IMX_KAFKA_SECURITY_PROTOCOL"]["value"] == "PLAINTEXT"
        assert "IMX_KAFKA_SASL_USERNAME" not in env
        assert "kafka-password" not in {m["name"] for m in container(deployment)["volumeMounts"]}


def test_strimzi_kafka_users_carry_exactly_the_declared_acls_instead_of_the_job(render: Render) -> None:
    from kafka.admin import ACLResourcePatternType

    from services.common.service_access import service_acls

    docs = render("kafka.strimziUsers.enabled=true", "kafka.topicPrefix=prod.")
    assert of_kind(docs, "Job") == {}
    users = of_kind(docs, "KafkaUser")
    assert sorted(users) == sorted(f"imx-{name}" for name in SERVICES)
    for name in SERVICES:
        spec = users[f"imx-{name}"]["spec"]
        assert spec["authentication"]["type"] == "scram-sha-512"
        password = spec["authentication"]["password"]["valueFrom"]["secretKeyRef"]
        assert password == {"name": "imx-kafka-services", "key": name}
        rendered = {
            (
                acl["resource"]["type"],
                acl["resource"].get("name", "kafka-cluster"),
                acl["resource"].get("patternType", "literal"),
                operation,
            )
            for acl in spec["authorization"]["acls"]
            for operation in acl["operations"]
        }
        declared = {
            (
                acl.resource_pattern.resource_type.name.lower(),
                acl.resource_pattern.resource_name,
                "prefix" if acl.resource_pattern.pattern_type == ACLResourcePatternType.PREFIXED else "literal",
                "".join(part.capitalize() for part in acl.operation.name.split("_")),
            )
            for acl in service_acls(name, Topics("prod."))
        }
        assert rendered == declared, name


# --- scaling (issue 10 item 5; docs/capacity.md sizes the defaults for 500 instances/s) ---------------

AUTOSCALED = ["ingest", "routing", "deid", "delivery"]
CONSUMERS = ["routing", "deid", "delivery"]


def values_of(name: str) -> dict[str, Any]:
    """The chart's default replicas, autoscaling bounds and KEDA lag threshold of a service, read back
    through `helm show values` (the lag None for ingest, which has none)."""
    shown = helm("show", "values", str(CHART)).stdout
    found = {key: _value_after(shown, name, key) for key in ("replicas", "minReplicas", "maxReplicas", "lagThreshold")}
    return {key: None if value is None else int(value) for key, value in found.items()}


def _value_after(values_yaml: str, service: str, key: str) -> str | None:
    """The first `key:` in `service`'s own section of `services:` (it ends where the next service
    starts); None when that section has none."""
    section = re.split(r"\n  \w+:\n", values_yaml.split(f"\n  {service}:\n", 1)[1], maxsplit=1)[0]
    lines = (line for line in section.splitlines() if line.strip().startswith(f"{key}:"))
    line = next(lines, None)
    return None if line is None else line.split(":", 1)[1].strip()


def test_each_stage_but_audit_autoscales_on_cpu_within_its_partitions(default_docs: list[dict[str, Any]]) -> None:
    hpas = of_kind(default_docs, "HorizontalPodAutoscaler")
    deployments = of_kind(default_docs, "Deployment")
    assert sorted(hpas) == sorted(f"imx-{name}" for name in AUTOSCALED)
    partitions = int(env_of(deployments["imx-routing"])["IMX_TOPIC_PARTITIONS"]["value"])
    for name in AUTOSCALED:
        spec = hpas[f"imx-{name}"]["spec"]
        assert spec["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": f"imx-{name}"}
        (metric,) = spec["metrics"]
        assert metric["resource"]["name"] == "cpu" and metric["resource"]["target"]["type"] == "Utilization"
        assert container(deployments[f"imx-{name}"])["resources"]["requests"]["cpu"], "utilisation is of the request"
        assert 1 <= spec["minReplicas"] <= spec["maxReplicas"]
        if name in CONSUMERS:
            assert spec["maxReplicas"] <= partitions, name
        # Scaling down is a rebalance of the group: gently.
        assert spec["behavior"]["scaleDown"]["policies"] == [{"type": "Pods", "value": 1, "periodSeconds": 60}]
        assert "replicas" not in deployments[f"imx-{name}"]["spec"], "the autoscaler owns the replica count"
    assert deployments["imx-audit"]["spec"]["replicas"] == 1, "audit's log has a single writer"
    # The 500/s sizing of docs/capacity.md, as tools.capacity works it out from the measured figures:
    # replicas when autoscaling is off, room for twice that, and KEDA's lag per replica.
    for name, sized in chart_defaults(BASIS).items():
        assert values_of(name) == {
            "replicas": sized.replicas,
            "minReplicas": sized.min_replicas,
            "maxReplicas": sized.max_replicas,
            "lagThreshold": sized.lag_threshold,
        }, name
    assert partitions == partitions_for(BASIS.ms, 500)
    partner = env_of(deployments["imx-delivery"])["IMX_PARTNER_TOPIC_PARTITIONS"]["value"]
    assert int(partner) == partner_partitions_default(BASIS)


def test_without_autoscaling_a_deployment_keeps_its_replica_count(render: Render) -> None:
    docs = render("services.deid.autoscaling.enabled=false", "services.deid.replicas=7")
    assert "imx-deid" not in of_kind(docs, "HorizontalPodAutoscaler")
    assert of_kind(docs, "Deployment")["imx-deid"]["spec"]["replicas"] == 7


def test_keda_scales_the_consuming_stages_on_their_own_groups_lag(render: Render) -> None:
    prefix = "stg."
    docs = render("keda.enabled=true", f"kafka.topicPrefix={prefix}")
    scaled = of_kind(docs, "ScaledObject")
    auths = of_kind(docs, "TriggerAuthentication")
    deployments = of_kind(docs, "Deployment")
    assert sorted(scaled) == sorted(f"imx-{name}" for name in CONSUMERS)
    assert sorted(of_kind(docs, "HorizontalPodAutoscaler")) == ["imx-ingest"], "KEDA makes the others' HPAs"
    inputs = stage_inputs(Topics(prefix))
    for name in CONSUMERS:
        spec = scaled[f"imx-{name}"]["spec"]
        assert spec["scaleTargetRef"]["name"] == f"imx-{name}"
        assert spec["maxReplicaCount"] <= 24
        kinds = [trigger["type"] for trigger in spec["triggers"]]
        assert kinds[0] == "cpu" and set(kinds[1:]) == {"kafka"}
        lag = [trigger for trigger in spec["triggers"] if trigger["type"] == "kafka"]
        assert sorted(t["metadata"]["topic"] for t in lag) == sorted(inputs[name]), "every lane of its input"
        # The group the stage joins: services/<name>/main.py names it "<prefix>imx-<name>".
        assert f'group_id=f"{{settings.topic_prefix}}imx-{name}"' in (ROOT / "services" / name / "main.py").read_text()
        for trigger in lag:
            meta = trigger["metadata"]
            assert meta["consumerGroup"] == f"{prefix}imx-{name}"
            # KEDA's operator resolves names in its own namespace: a short name is qualified with ours.
            assert meta["bootstrapServers"] == "imx-kafka-bootstrap.imx.svc:9092"
            assert meta["sasl"] == "scram_sha512" and meta["tls"] == "disable"
            assert int(meta["lagThreshold"]) > 0
            assert trigger["authenticationRef"] == {"name": f"imx-{name}-kafka"}
        # Signed in as the stage's own user, its password from its own key of the services' Secret.
        auth = auths[f"imx-{name}-kafka"]["spec"]
        assert auth["env"] == [{"parameter": "username", "name": "IMX_KAFKA_SASL_USERNAME", "containerName": name}]
        assert env_of(deployments[f"imx-{name}"])["IMX_KAFKA_SASL_USERNAME"]["value"] == f"imx-{name}"
        assert auth["secretTargetRef"] == [{"parameter": "password", "name": "imx-kafka-services", "key": name}]
    listed = render("keda.enabled=true", "kafka.bootstrap=kafka.example.org:9093\\,kafka-1:9093")
    servers = {
        t["metadata"]["bootstrapServers"]
        for so in of_kind(listed, "ScaledObject").values()
        for t in so["spec"]["triggers"][1:]
    }
    assert servers == {"kafka.example.org:9093,kafka-1.imx.svc:9093"}
    plain = render("keda.enabled=true", "kafka.securityProtocol=PLAINTEXT")
    assert not of_kind(plain, "TriggerAuthentication")
    for so in of_kind(plain, "ScaledObject").values():
        assert all("authenticationRef" not in trigger for trigger in so["spec"]["triggers"])


def test_each_service_has_a_disruption_budget_over_its_own_pods(default_docs: list[dict[str, Any]]) -> None:
    budgets = of_kind(default_docs, "PodDisruptionBudget")
    deployments = of_kind(default_docs, "Deployment")
    assert sorted(budgets) == sorted(deployments)
    for name, budget in budgets.items():
        assert budget["spec"]["maxUnavailable"] == 1
        # Not ready while Kafka is away, by design: such pods stay evictable, or a drain stalls.
        assert budget["spec"]["unhealthyPodEvictionPolicy"] == "AlwaysAllow"
        assert budget["spec"]["selector"] == deployments[name]["spec"]["selector"]


@pytest.mark.parametrize(
    ("sets", "message"),
    [
        (["kafka.topicPartitions=3"], "can run 4 replicas but kafka.topicPartitions is 3"),
        (
            ["services.routing.autoscaling.enabled=false", "services.routing.replicas=30"],
            "services.routing can run 30 replicas but kafka.topicPartitions is 24",
        ),
        (["keda.enabled=true", "services.deid.autoscaling.maxReplicas=25"], "services.deid can run 25 replicas"),
        (["services.audit.replicas=2"], "services.audit.replicas must be 1"),
        (["services.routing.autoscaling.minReplicas=7"], "minReplicas (7) is above its maxReplicas (4)"),
        # Partners outside the cluster were sent references to the in-cluster Service.
        (["kafka.partnerListener.bootstrap=partners:9094"], "services.delivery.publicUrl is required"),
        # Rendered twice, the last won: ingest on a port its Service and NetworkPolicy do not name.
        (["services.ingest.env.IMX_HTTP_PORT=9000"], "the chart sets IMX_HTTP_PORT itself"),
        (["services.audit.env.IMX_KAFKA_SASL_PASSWORD=x"], "the chart sets IMX_KAFKA_SASL_PASSWORD itself"),
        # audit reads IMX_AUDIT_HTTP_PORT before IMX_HTTP_PORT: the same setting under its own prefix
        (["services.audit.env.IMX_AUDIT_HTTP_PORT=9999"], "the chart sets IMX_AUDIT_HTTP_PORT itself"),
        (
            [
                "kafka.strimziTopics.enabled=true",
                "kafka.strimziTopics.replicas=1",
                "kafka.strimziTopics.config.min\\.insync\\.replicas=2",
            ],
            "min.insync.replicas (2) is more than its replicas (1)",
        ),
    ],
)
def test_rendering_fails_when_a_stage_could_outnumber_its_partitions(sets: list[str], message: str) -> None:
    args = ["template", "imx", str(CHART), "--namespace", "imx", "--kube-version", KUBE_VERSION]
    for value in sets:
        args += ["--set", value]
    result = helm(*args, check=False)
    assert result.returncode != 0 and message in result.stderr, result.stderr


def test_a_service_exposed_outside_the_cluster_leaves_its_control_port_inside(render: Render) -> None:
    """The gRPC control port speaks plain text with control tokens: a LoadBalancer (what deploy.md advises
    for ingest) published it too."""
    docs = render("services.ingest.service.type=LoadBalancer", "services.ingest.tls.existingSecret=stow-tls")
    services = of_kind(docs, "Service")
    public = {p["name"]: p for p in services["imx-ingest"]["spec"]["ports"]}
    assert set(public) == {"dicom", "http"} and public["http"]["appProtocol"] == "https"
    control = services["imx-ingest-control"]["spec"]
    assert control["type"] == "ClusterIP" and [p["name"] for p in control["ports"]] == ["grpc"]
    assert "imx-routing-control" not in services  # a ClusterIP Service keeps its gRPC port
    assert "grpc" in {p["name"] for p in services["imx-routing"]["spec"]["ports"]}
    # Behind a LoadBalancer, ipBlocks in networkPolicyFrom see the senders only with Local.
    local = render("services.ingest.service.type=LoadBalancer", "services.ingest.service.externalTrafficPolicy=Local")
    assert of_kind(local, "Service")["imx-ingest"]["spec"]["externalTrafficPolicy"] == "Local"
    assert "externalTrafficPolicy" not in services["imx-routing"]["spec"]
    # The longest name the chart allows still names valid Services (63 characters at most).
    exposed = [f"services.{name}.service.type=LoadBalancer" for name in ("ingest", "delivery", "audit")]
    long_named = of_kind(render(f"fullnameOverride={'a' * 50}", *exposed), "Service")
    assert len(long_named) == 8 and max(len(name) for name in long_named) <= 63, sorted(long_named)


def test_the_setup_job_gets_the_pods_affinity_but_not_their_annotations(render: Render) -> None:
    """Affinity places it as the pods are placed; annotations and labels that ask a mesh for a sidecar
    would give the hook Job one that never exits."""
    docs = render(
        "podAnnotations.example\\.org/owner=imaging",
        "podLabels.team=imaging",
        "affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution.nodeSelectorTerms[0]"
        ".matchExpressions[0].key=pool",
        "affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution.nodeSelectorTerms[0]"
        ".matchExpressions[0].operator=Exists",
    )
    (job,) = of_kind(docs, "Job").values()
    template = job["spec"]["template"]
    assert "annotations" not in template["metadata"] and "team" not in template["metadata"]["labels"]
    assert "nodeAffinity" in template["spec"]["affinity"]


def test_keda_needs_a_cpu_request_for_its_cpu_trigger() -> None:
    args = ["template", "imx", str(CHART), "--namespace", "imx", "--kube-version", KUBE_VERSION]
    result = helm(*args, "--set", "keda.enabled=true", "--set", "services.deid.resources=null", check=False)
    assert result.returncode != 0 and "services.deid.autoscaling needs services.deid.resources.requests.cpu" in (
        result.stderr
    ), result.stderr


def test_strimzi_users_refuse_a_mechanism_strimzi_cannot_make() -> None:
    """Strimzi's KafkaUser has SCRAM-SHA-512 only: with SHA-256 the pods could never sign in."""
    args = ["template", "imx", str(CHART), "--namespace", "imx", "--kube-version", KUBE_VERSION]
    args += ["--set", "kafka.strimziUsers.enabled=true", "--set", "kafka.strimziUsers.cluster=main"]
    result = helm(*args, "--set", "kafka.saslMechanism=SCRAM-SHA-256", check=False)
    assert result.returncode != 0 and "needs kafka.saslMechanism SCRAM-SHA-512" in result.stderr, result.stderr
    assert helm(*args, check=False).returncode == 0


def test_ingest_scales_beyond_the_partitions_since_it_reads_no_topic(render: Render) -> None:
    docs = render("services.ingest.autoscaling.maxReplicas=40")
    assert of_kind(docs, "HorizontalPodAutoscaler")["imx-ingest"]["spec"]["maxReplicas"] == 40


def test_a_setting_that_names_a_file_can_be_given_its_file(render: Render) -> None:
    """`env` took plain values only and no volume could be added: file-based settings (delivery's
    retrieval key, audit's syslog TLS files) could not be used."""
    docs = render(
        "services.delivery.extraVolumes[0].name=retrieval",
        "services.delivery.extraVolumes[0].secret.secretName=imx-retrieval-key",
        "services.delivery.extraVolumeMounts[0].name=retrieval",
        "services.delivery.extraVolumeMounts[0].mountPath=/var/run/imx/retrieval",
        "services.delivery.extraVolumeMounts[0].readOnly=true",
        "services.delivery.env.IMX_DELIVERY_RETRIEVAL_KEY_FILE=/var/run/imx/retrieval/key",
    )
    delivery = of_kind(docs, "Deployment")["imx-delivery"]
    pod = delivery["spec"]["template"]["spec"]
    assert {"name": "retrieval", "secret": {"secretName": "imx-retrieval-key"}} in pod["volumes"]
    mounts = container(delivery)["volumeMounts"]
    assert {"name": "retrieval", "mountPath": "/var/run/imx/retrieval", "readOnly": True} in mounts
    assert env_of(delivery)["IMX_DELIVERY_RETRIEVAL_KEY_FILE"]["value"] == "/var/run/imx/retrieval/key"
    assert "retrieval" not in {
        v["name"] for v in of_kind(docs, "Deployment")["imx-audit"]["spec"]["template"]["spec"]["volumes"]
    }
