"""The deployment files (Procfile, deploy/Dockerfile, deploy/k8s) hold together.

Pure parsing: nothing is built or applied (no Docker engine, no cluster). Each test checks a
fact an operator would otherwise learn from a cut call: the grace period outlasts the drain,
probes hit the right paths, credentials come only from the Secret, the ledger is on the pod's
own volume, proxies do not time out an hour-long WebSocket, the image runs as non-root.
"""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from bridge.app import FINALIZE_MARGIN_S, SHUTDOWN_GRACE_S
from bridge.config import Settings

ROOT = Path(__file__).resolve().parent.parent
K8S = ROOT / "deploy" / "k8s"
DOCKERFILE = ROOT / "deploy" / "Dockerfile"
#: Environment variables that are credentials: they may only ever come from the Secret.
CREDENTIALS = frozenset(
    {
        "EKA_CLIENT_ID",
        "EKA_CLIENT_SECRET",
        "EKA_ACCESS_TOKEN",
        "TWILIO_AUTH_TOKEN",
        "VOBIZ_AUTH_TOKEN",
        "VOBIZ_STREAM_TOKEN",
        "EKA_WEBHOOK_SIGNING_KEY",
        "RESULT_WEBHOOK_SECRET",
        "BRIDGE_API_KEY",
    }
)
#: Any setting named like this is a credential too, listed above or not.
SECRET_NAME = re.compile(r"SECRET|TOKEN|_KEY$|PASSWORD")
AN_HOUR_S = 3600


# -- loading ----------------------------------------------------------------------------------


def manifests() -> dict[str, list[dict[str, Any]]]:
    """Every YAML document under deploy/k8s, by path relative to it."""
    found = {}
    for path in sorted(K8S.rglob("*.yaml")):
        docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
        found[path.relative_to(K8S).as_posix()] = docs
    return found


def one(kind: str, path: str | None = None, name: str | None = None) -> dict[str, Any]:
    """The single document of ``kind`` (in ``path``, or among the applied manifests)."""
    docs = [
        d
        for p, ds in manifests().items()
        if (p == path if path else p in applied())
        for d in ds
        if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)
    ]
    assert len(docs) == 1, f"expected one {kind}{' ' + name if name else ''}, found {len(docs)}"
    return docs[0]


def applied() -> list[str]:
    """The manifests `kubectl apply -k deploy/k8s` applies."""
    return list(yaml.safe_load((K8S / "kustomization.yaml").read_text())["resources"])


def pod_spec() -> dict[str, Any]:
    return one("StatefulSet")["spec"]["template"]["spec"]


def container() -> dict[str, Any]:
    (bridge,) = [c for c in pod_spec()["containers"] if c["name"] == "bridge"]
    return bridge


def config_data() -> dict[str, str]:
    return one("ConfigMap")["data"]


def secret_template() -> dict[str, Any]:
    return one("Secret", path="secret.example.yaml")


def settings_from_manifests() -> Settings:
    """What the bridge in the pod would read: the ConfigMap plus the Secret's keys (envFrom)."""
    env = {**config_data(), **secret_template()["stringData"]}
    return Settings.from_env(env)  # raises ConfigError listing every bad value


def dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs: continuation lines joined, comments dropped."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for raw in DOCKERFILE.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        keyword, _, rest = (pending + line).partition(" ")
        instructions.append((keyword.upper(), rest.strip()))
        pending = ""
    return instructions


def final_stage() -> list[tuple[str, str]]:
    steps = dockerfile()
    last_from = max(i for i, (keyword, _) in enumerate(steps) if keyword == "FROM")
    return steps[last_from:]


def seconds(value: str) -> float:
    return float(value.rstrip("s"))


# -- Kubernetes -------------------------------------------------------------------------------


def test_every_manifest_parses_and_names_itself() -> None:
    found = manifests()
    assert found, "no manifests under deploy/k8s"
    for path, docs in found.items():
        assert docs, f"{path} is empty"
        for doc in docs:
            assert doc.get("apiVersion") and doc.get("kind"), path
            if doc["kind"] != "Kustomization":
                assert doc["metadata"]["name"], path
                assert doc["metadata"]["labels"]["app.kubernetes.io/name"] == "eka-phone-bridge", path


def test_kustomization_applies_everything_but_the_secret_template_and_optional_files() -> None:
    listed = applied()
    for path in listed:
        assert (K8S / path).is_file(), f"kustomization lists missing {path}"
    expected = {p for p in manifests() if p != "kustomization.yaml" and p != "secret.example.yaml"}
    expected = {p for p in expected if not p.startswith("optional/")}
    assert set(listed) == expected
    kinds = {d["kind"] for p in listed for d in manifests()[p]}
    required = {"ConfigMap", "Service", "StatefulSet", "Ingress", "PodDisruptionBudget", "HorizontalPodAutoscaler"}
    assert required <= kinds


def test_configmap_is_a_valid_bridge_configuration() -> None:
    settings = settings_from_manifests()
    assert not settings.development
    assert settings.public_url and urlsplit(settings.public_url).scheme == "https"
    assert config_data()["FORWARDED_ALLOW_IPS"]  # behind the Ingress, proxy headers are trusted


def test_grace_period_outlasts_prestop_drain_and_finalize() -> None:
    """A rollout or scale-in must drain calls, not SIGKILL them mid-call."""
    settings = settings_from_manifests()
    spec = pod_spec()
    pre_stop = container()["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    needed = float(pre_stop[1]) + settings.drain_s + settings.finalize_budget_s + FINALIZE_MARGIN_S + SHUTDOWN_GRACE_S
    assert spec["terminationGracePeriodSeconds"] > needed
    assert settings.drain_s >= AN_HOUR_S  # an hour-long consultation is drained, not cut


def test_probes_readiness_on_readyz_liveness_on_healthz() -> None:
    bridge = container()
    port_names = {p["name"]: p["containerPort"] for p in bridge["ports"]}
    assert bridge["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert bridge["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert bridge["startupProbe"]["httpGet"]["path"] == "/healthz"
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        assert bridge[probe]["httpGet"]["port"] in port_names
    # The container's port is the one the bridge listens on.
    args = bridge["args"]
    assert int(args[args.index("--port") + 1]) == port_names["http"]
    # Liveness is lenient: restarting cuts every live call.
    live = bridge["livenessProbe"]
    assert live["periodSeconds"] * live["failureThreshold"] >= 30


def test_credentials_come_only_from_the_secret() -> None:
    bridge = container()
    secret = secret_template()
    assert not CREDENTIALS & set(config_data()), "a credential in the ConfigMap"
    assert not [k for k in config_data() if SECRET_NAME.search(k)], "a credential-like setting in the ConfigMap"
    for var in bridge.get("env", []):
        if var["name"] in CREDENTIALS:
            assert "value" not in var and var["valueFrom"]["secretKeyRef"]["name"] == secret["metadata"]["name"]
    sources = [s["secretRef"]["name"] for s in bridge["envFrom"] if "secretRef" in s]
    assert sources == [secret["metadata"]["name"]]
    # The template holds credentials only, as placeholders, never real values.
    values = secret["stringData"]
    assert set(values) <= CREDENTIALS
    assert all(v.startswith("REPLACE_WITH_") for v in values.values()), values
    assert {"TWILIO_AUTH_TOKEN", "EKA_CLIENT_ID", "EKA_CLIENT_SECRET"} <= set(values)


def test_ledger_lives_on_the_pods_own_volume() -> None:
    statefulset = one("StatefulSet")
    claims = {t["metadata"]["name"]: t for t in statefulset["spec"]["volumeClaimTemplates"]}
    ledger = PurePosixPath(config_data()["BRIDGE_LEDGER_PATH"])
    mounts = [m for m in container()["volumeMounts"] if ledger.is_relative_to(m["mountPath"])]
    assert mounts, f"nothing is mounted over {ledger}"
    deepest = max(mounts, key=lambda m: len(m["mountPath"]))  # the mount the file actually lands on
    assert deepest["name"] in claims, f"{ledger} is not on a volumeClaimTemplate"
    assert claims[deepest["name"]]["spec"]["accessModes"] == ["ReadWriteOnce"]
    assert statefulset["spec"]["persistentVolumeClaimRetentionPolicy"]["whenScaled"] == "Retain"


def test_services_select_the_pods_and_the_statefulset_is_governed_by_the_headless_one() -> None:
    statefulset = one("StatefulSet")
    labels = statefulset["spec"]["template"]["metadata"]["labels"]
    assert statefulset["spec"]["selector"]["matchLabels"].items() <= labels.items()
    services = {d["metadata"]["name"]: d for d in manifests()["service.yaml"]}
    port_names = {p["name"] for p in container()["ports"]}
    for service in services.values():
        assert service["spec"]["selector"].items() <= labels.items()
        assert all(p["targetPort"] in port_names for p in service["spec"]["ports"])
    assert services[statefulset["spec"]["serviceName"]]["spec"]["clusterIP"] == "None"


def test_ingress_keeps_hour_long_websockets_and_serves_the_public_host() -> None:
    ingress = one("Ingress")
    notes = ingress["metadata"]["annotations"]
    for timeout in ("proxy-read-timeout", "proxy-send-timeout"):
        assert seconds(notes[f"nginx.ingress.kubernetes.io/{timeout}"]) > AN_HOUR_S
    host = urlsplit(config_data()["BRIDGE_PUBLIC_URL"]).hostname
    (rule,) = ingress["spec"]["rules"]
    assert rule["host"] == host
    assert any(host in tls["hosts"] for tls in ingress["spec"]["tls"])
    backend = rule["http"]["paths"][0]["backend"]["service"]
    service = one("Service", path="service.yaml", name=backend["name"])
    assert backend["port"]["name"] in {p["name"] for p in service["spec"]["ports"]}
    assert "clusterIP" not in service["spec"] or service["spec"]["clusterIP"] != "None"


def test_disruption_budget_covers_the_pods() -> None:
    budget = one("PodDisruptionBudget")
    labels = one("StatefulSet")["spec"]["template"]["metadata"]["labels"]
    assert budget["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert "maxUnavailable" in budget["spec"] or "minAvailable" in budget["spec"]


@pytest.mark.parametrize("path", ["hpa.yaml", "optional/hpa-active-calls.yaml"])
def test_autoscaler_targets_the_statefulset_on_cpu(path: str) -> None:
    hpa = one("HorizontalPodAutoscaler", path=path)
    statefulset = one("StatefulSet")
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("StatefulSet", statefulset["metadata"]["name"])
    assert 1 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
    cpu = [m for m in hpa["spec"]["metrics"] if m["type"] == "Resource" and m["resource"]["name"] == "cpu"]
    assert cpu and cpu[0]["resource"]["target"]["type"] == "Utilization"
    assert container()["resources"]["requests"]["cpu"]  # Utilization is relative to the request
    # Scale-in is slow: every removed pod drains its calls.
    assert hpa["spec"]["behavior"]["scaleDown"]["stabilizationWindowSeconds"] >= 300


def test_optional_autoscaler_adds_the_active_calls_metric_in_place_of_the_default() -> None:
    default = one("HorizontalPodAutoscaler", path="hpa.yaml")
    optional = one("HorizontalPodAutoscaler", path="optional/hpa-active-calls.yaml")
    assert optional["metadata"]["name"] == default["metadata"]["name"]  # replaces it, never both
    (pods,) = [m["pods"] for m in optional["spec"]["metrics"] if m["type"] == "Pods"]
    assert pods["metric"]["name"] == "bridge_active_calls"
    average = float(pods["target"]["averageValue"])
    assert 0 < average < settings_from_manifests().max_calls  # scale before pods refuse calls


def test_pod_runs_as_the_images_non_root_user() -> None:
    security = pod_spec()["securityContext"]
    assert security["runAsNonRoot"] is True
    (user,) = [args for keyword, args in final_stage() if keyword == "USER"]
    assert security["runAsUser"] == int(user.split(":")[0]) != 0
    assert container()["securityContext"]["allowPrivilegeEscalation"] is False


# -- Dockerfile -------------------------------------------------------------------------------


def test_dockerfile_is_multi_stage_on_python_313_slim() -> None:
    stages = [args.split() for keyword, args in dockerfile() if keyword == "FROM"]
    assert len(stages) >= 2
    for stage in stages:
        assert stage[0] == "python:3.13-slim" and stage[1].upper() == "AS"
    build_name = stages[0][2]
    assert any(k == "COPY" and f"--from={build_name}" in a for k, a in final_stage())


def test_dockerfile_runtime_is_non_root_with_entrypoint_healthcheck_port_and_volume() -> None:
    steps = final_stage()
    by_keyword: dict[str, list[str]] = {}
    for keyword, args in steps:
        by_keyword.setdefault(keyword, []).append(args)
    (user,) = by_keyword["USER"]
    assert user.split(":")[0] not in ("root", "0")
    assert json.loads(by_keyword["ENTRYPOINT"][0])[:2] == ["bridge", "serve"]
    (exposed,) = by_keyword["EXPOSE"]
    env = " ".join(by_keyword["ENV"])
    assert f"PORT={exposed}" in env
    ledger = next(word.split("=", 1)[1] for word in env.split() if word.startswith("BRIDGE_LEDGER_PATH="))
    (volume,) = by_keyword["VOLUME"]
    assert PurePosixPath(ledger).parent == PurePosixPath(volume)
    (healthcheck,) = by_keyword["HEALTHCHECK"]
    command = json.loads(healthcheck.split("CMD", 1)[1])
    assert command[:2] == ["python", "-c"] and "/healthz" in command[2] and "urllib" in command[2]
    assert "curl" not in healthcheck
    # USER comes after everything that needs root (useradd, chown).
    user_at = [k for k, _ in steps].index("USER")
    assert all(k != "RUN" for k, _ in steps[user_at:])


def test_dockerignore_lets_in_exactly_what_the_dockerfile_copies() -> None:
    patterns = [p for p in (ROOT / ".dockerignore").read_text().splitlines() if p and not p.startswith("#")]
    assert patterns[0] == "*"  # everything else stays out of the build context
    included = {p[1:].rstrip("/") for p in patterns if p.startswith("!")}
    for keyword, args in dockerfile():
        if keyword == "COPY" and not args.startswith("--from"):
            *sources, _ = args.split()
            assert {s.rstrip("/") for s in sources} <= included, sources


# -- Procfile ---------------------------------------------------------------------------------


def procfile_web() -> list[str]:
    lines = [line for line in (ROOT / "Procfile").read_text().splitlines() if line.strip()]
    (web,) = [line for line in lines if line.startswith("web:")]
    return shlex.split(web.removeprefix("web:"))


def test_procfile_serves_on_port_and_trusts_the_platform_proxy() -> None:
    words = procfile_web()
    assert words[:2] == ["bridge", "serve"]
    assert words[words.index("--port") + 1] == "$PORT"
    assert words[words.index("--host") + 1] == "0.0.0.0"
    assert words[words.index("--forwarded-allow-ips") + 1] == "*"
    assert "--dev" not in words
