"""The deployment files (Procfile, deploy/Dockerfile, deploy/k8s) hold together.

Pure parsing: nothing is built or applied (no Docker engine, no cluster). Each test checks a
fact an operator would otherwise learn from a cut call: the grace period outlasts the drain,
probes hit the right paths, credentials come only from Secrets, the ledger is on the pod's
own volume (StatefulSet) or in the shared PostgreSQL (the fleet's Deployment), proxies do not
time out an hour-long WebSocket, the image runs as non-root.

Kubernetes comes in two variants, each a kustomization: ``deploy/k8s`` (a StatefulSet, SQLite on
each pod's volume) and ``deploy/k8s/fleet`` (a Deployment sharing one PostgreSQL ledger). The
checks that hold for both run on both.
"""

from __future__ import annotations

import copy
import functools
import json
import re
import shlex
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from bridge.app import FINALIZE_MARGIN_S, SHUTDOWN_GRACE_S
from bridge.config import Settings

SafeLoader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml's, where PyYAML has it

ROOT = Path(__file__).resolve().parent.parent
K8S = ROOT / "deploy" / "k8s"
DOCKERFILE = ROOT / "deploy" / "Dockerfile"
#: Environment variables that are credentials: they may only ever come from a Secret.
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
        "BRIDGE_DATABASE_URL",  # it holds the database password
    }
)
#: Any setting named like this is a credential too, listed above or not.
SECRET_NAME = re.compile(r"SECRET|TOKEN|_KEY$|PASSWORD")
AN_HOUR_S = 3600
#: What the kubelet would give the pod for a downward-API ``fieldRef``, for expanding ``$(VAR)``.
POD_FIELDS = {"status.podIP": "10.20.30.40"}
#: The bridge's own pods; other workloads (the optional PostgreSQL) are ``part-of`` it.
APP = "eka-phone-bridge"


@dataclass(frozen=True)
class Variant:
    """One way to run the bridge on Kubernetes: a kustomization and the kind of its workload."""

    name: str
    directory: str  # relative to deploy/k8s: "" for the base
    workload: str

    def __str__(self) -> str:
        return self.name


SINGLE = Variant("statefulset", "", "StatefulSet")
FLEET = Variant("fleet", "fleet", "Deployment")
VARIANTS = (SINGLE, FLEET)


@pytest.fixture(params=VARIANTS, ids=str)
def variant(request: pytest.FixtureRequest) -> Variant:
    chosen: Variant = request.param
    return chosen


# -- loading ----------------------------------------------------------------------------------


@functools.cache
def parsed() -> dict[str, list[dict[str, Any]]]:
    found = {}
    for path in sorted(K8S.rglob("*.yaml")):
        docs = [d for d in yaml.load_all(path.read_text(), Loader=SafeLoader) if d is not None]
        found[path.relative_to(K8S).as_posix()] = docs
    return found


def manifests() -> dict[str, list[dict[str, Any]]]:
    """Every YAML document under deploy/k8s, by path relative to it (parsed once; a copy, free to change)."""
    return copy.deepcopy(parsed())


def applied(variant: Variant = SINGLE) -> list[str]:
    """The manifests `kubectl apply -k deploy/k8s[/fleet]` applies, relative to deploy/k8s."""
    directory = K8S / variant.directory
    listed = yaml.safe_load((directory / "kustomization.yaml").read_text())["resources"]
    return [(directory / path).relative_to(K8S).as_posix() for path in listed]


def one(kind: str, path: str | None = None, name: str | None = None, variant: Variant = SINGLE) -> dict[str, Any]:
    """The single document of ``kind`` (in ``path``, or among the variant's applied manifests)."""
    docs = [
        d
        for p, ds in manifests().items()
        if (p == path if path else p in applied(variant))
        for d in ds
        if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)
    ]
    assert len(docs) == 1, f"expected one {kind}{' ' + name if name else ''}, found {len(docs)}"
    return docs[0]


def workload(variant: Variant = SINGLE) -> dict[str, Any]:
    return one(variant.workload, variant=variant)


def pod_spec(variant: Variant = SINGLE) -> dict[str, Any]:
    spec: dict[str, Any] = workload(variant)["spec"]["template"]["spec"]
    return spec


def container(variant: Variant = SINGLE) -> dict[str, Any]:
    (bridge,) = [c for c in pod_spec(variant)["containers"] if c["name"] == "bridge"]
    return bridge


def config_data(variant: Variant = SINGLE) -> dict[str, str]:
    data: dict[str, str] = one("ConfigMap", variant=variant)["data"]
    return data


def secret_template() -> dict[str, Any]:
    return one("Secret", path="secret.example.yaml")


def secret_templates() -> dict[str, dict[str, Any]]:
    """Every Secret template (``*.example.yaml``), by the Secret's name."""
    return {
        d["metadata"]["name"]: d
        for p, ds in manifests().items()
        if p.endswith(".example.yaml")
        for d in ds
        if d["kind"] == "Secret"
    }


def expand(value: str, defined: dict[str, str]) -> str:
    """The kubelet's ``$(VAR)`` expansion, from the variables defined earlier in ``env``."""
    return re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", lambda m: defined.get(m.group(1), m.group(0)), value)


def pod_env(variant: Variant = SINGLE) -> dict[str, str]:
    """What the bridge in the pod would read: the ConfigMap and the Secret's keys (envFrom), then
    ``env`` in order: values expanded, secretKeyRefs read from the Secret templates, fieldRefs
    from ``POD_FIELDS``."""
    bridge = container(variant)
    env: dict[str, str] = {}
    for source in bridge["envFrom"]:
        if "configMapRef" in source:
            assert source["configMapRef"]["name"] == one("ConfigMap", variant=variant)["metadata"]["name"]
            env.update(config_data(variant))
        else:
            env.update(secret_templates()[source["secretRef"]["name"]]["stringData"])
    defined: dict[str, str] = {}
    for var in bridge.get("env", []):
        if "value" in var:
            value = expand(var["value"], defined)
        elif "fieldRef" in var["valueFrom"]:
            value = POD_FIELDS[var["valueFrom"]["fieldRef"]["fieldPath"]]
        else:
            ref = var["valueFrom"]["secretKeyRef"]
            value = secret_templates()[ref["name"]]["stringData"][ref["key"]]
        defined[var["name"]] = env[var["name"]] = value
    return env


def settings_from_manifests(variant: Variant = SINGLE) -> Settings:
    return Settings.from_env(pod_env(variant))  # raises ConfigError listing every bad value


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


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return selector.items() <= labels.items()


# -- Kubernetes: both variants ----------------------------------------------------------------


def test_every_manifest_parses_and_names_itself() -> None:
    found = manifests()
    assert found, "no manifests under deploy/k8s"
    for path, docs in found.items():
        assert docs, f"{path} is empty"
        for doc in docs:
            assert doc.get("apiVersion") and doc.get("kind"), path
            if doc["kind"] != "Kustomization":
                assert doc["metadata"]["name"], path
                labels = doc["metadata"]["labels"]
                assert APP in (labels.get("app.kubernetes.io/name"), labels.get("app.kubernetes.io/part-of")), path


def test_kustomization_applies_everything_but_templates_and_optional_files(variant: Variant) -> None:
    listed = applied(variant)
    for path in listed:
        assert (K8S / path).is_file(), f"kustomization lists missing {path}"
    here = PurePosixPath(variant.directory or ".")
    expected = {
        p
        for p in manifests()
        if PurePosixPath(p).parent == here and not p.endswith(("kustomization.yaml", ".example.yaml"))
    }
    assert set(listed) == expected
    kinds = [d["kind"] for p in listed for d in manifests()[p]]
    required = {"ConfigMap", "Service", variant.workload, "Ingress", "PodDisruptionBudget", "HorizontalPodAutoscaler"}
    assert required <= set(kinds)
    assert kinds.count("StatefulSet") + kinds.count("Deployment") == 1, "one bridge workload per variant"


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not on PATH (its kustomize builds offline)")
def test_kustomize_builds_exactly_the_listed_files(variant: Variant) -> None:
    """`kubectl kustomize` (what `apply -k` applies) accepts the kustomization and renders the
    listed files' objects unchanged: what the other tests read is what a cluster gets."""
    built = subprocess.run(
        ["kubectl", "kustomize", str(K8S / variant.directory)], capture_output=True, text=True, timeout=30
    )
    assert built.returncode == 0, built.stderr
    rendered = {(d["kind"], d["metadata"]["name"]): d for d in yaml.safe_load_all(built.stdout) if d}
    files = {(d["kind"], d["metadata"]["name"]): d for p in applied(variant) for d in manifests()[p]}
    assert rendered == files


def test_configmap_is_a_valid_bridge_configuration(variant: Variant) -> None:
    settings = settings_from_manifests(variant)
    assert not settings.development
    assert settings.public_url and urlsplit(settings.public_url).scheme == "https"
    assert config_data(variant)["FORWARDED_ALLOW_IPS"]  # behind the Ingress, proxy headers are trusted


def test_grace_period_outlasts_prestop_drain_and_finalize(variant: Variant) -> None:
    """A rollout or scale-in must drain calls, not SIGKILL them mid-call."""
    settings = settings_from_manifests(variant)
    spec = pod_spec(variant)
    pre_stop = container(variant)["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    needed = float(pre_stop[1]) + settings.drain_s + settings.finalize_budget_s + FINALIZE_MARGIN_S + SHUTDOWN_GRACE_S
    assert spec["terminationGracePeriodSeconds"] > needed
    assert settings.drain_s >= AN_HOUR_S  # an hour-long consultation is drained, not cut


def test_probes_readiness_on_readyz_liveness_on_healthz(variant: Variant) -> None:
    bridge = container(variant)
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


def test_credentials_come_only_from_secrets(variant: Variant) -> None:
    bridge = container(variant)
    secret = secret_template()
    templates = secret_templates()
    assert not CREDENTIALS & set(config_data(variant)), "a credential in the ConfigMap"
    assert not [k for k in config_data(variant) if SECRET_NAME.search(k)], "a credential-like setting in the ConfigMap"
    for var in bridge.get("env", []):
        if var["name"] in CREDENTIALS or SECRET_NAME.search(var["name"]):
            assert "value" not in var, f"{var['name']} written inline"
            ref = var["valueFrom"]["secretKeyRef"]
            assert ref["key"] in templates[ref["name"]]["stringData"], f"{ref} is in no Secret template"
            assert not ref.get("optional", False), f"{var['name']} may be missing"
    sources = [s["secretRef"]["name"] for s in bridge["envFrom"] if "secretRef" in s]
    assert sources == [secret["metadata"]["name"]]
    # The template holds credentials only, as placeholders, never real values.
    values = secret["stringData"]
    assert set(values) <= CREDENTIALS
    assert all(v.startswith("REPLACE_WITH_") for v in values.values()), values
    assert {"TWILIO_AUTH_TOKEN", "EKA_CLIENT_ID", "EKA_CLIENT_SECRET"} <= set(values)


def test_services_select_the_pods(variant: Variant) -> None:
    labels = workload(variant)["spec"]["template"]["metadata"]["labels"]
    assert selects(workload(variant)["spec"]["selector"]["matchLabels"], labels)
    services = [d for p in applied(variant) for d in manifests()[p] if d["kind"] == "Service"]
    port_names = {p["name"] for p in container(variant)["ports"]}
    for service in services:
        assert selects(service["spec"]["selector"], labels)
        assert all(p["targetPort"] in port_names for p in service["spec"]["ports"])


def test_ingress_keeps_hour_long_websockets_and_serves_the_public_host(variant: Variant) -> None:
    ingress = one("Ingress", variant=variant)
    notes = ingress["metadata"]["annotations"]
    for timeout in ("proxy-read-timeout", "proxy-send-timeout"):
        assert seconds(notes[f"nginx.ingress.kubernetes.io/{timeout}"]) > AN_HOUR_S
    host = urlsplit(config_data(variant)["BRIDGE_PUBLIC_URL"]).hostname
    (rule,) = ingress["spec"]["rules"]
    assert rule["host"] == host
    assert any(host in tls["hosts"] for tls in ingress["spec"]["tls"])
    backend = rule["http"]["paths"][0]["backend"]["service"]
    service = one("Service", name=backend["name"], variant=variant)
    assert backend["port"]["name"] in {p["name"] for p in service["spec"]["ports"]}
    assert "clusterIP" not in service["spec"] or service["spec"]["clusterIP"] != "None"


def test_disruption_budget_covers_the_pods(variant: Variant) -> None:
    budget = one("PodDisruptionBudget", variant=variant)
    labels = workload(variant)["spec"]["template"]["metadata"]["labels"]
    assert selects(budget["spec"]["selector"]["matchLabels"], labels)
    assert "maxUnavailable" in budget["spec"] or "minAvailable" in budget["spec"]


@pytest.mark.parametrize(
    ("variant", "path"),
    [(SINGLE, "hpa.yaml"), (SINGLE, "optional/hpa-active-calls.yaml"), (FLEET, "fleet/hpa.yaml")],
    ids=["statefulset", "statefulset-active-calls", "fleet"],
)
def test_autoscaler_targets_the_workload_on_cpu(variant: Variant, path: str) -> None:
    hpa = one("HorizontalPodAutoscaler", path=path)
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == (variant.workload, workload(variant)["metadata"]["name"])
    assert 1 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
    cpu = [m for m in hpa["spec"]["metrics"] if m["type"] == "Resource" and m["resource"]["name"] == "cpu"]
    assert cpu and cpu[0]["resource"]["target"]["type"] == "Utilization"
    assert container(variant)["resources"]["requests"]["cpu"]  # Utilization is relative to the request
    # Scale-in is slow: every removed pod drains its calls.
    assert hpa["spec"]["behavior"]["scaleDown"]["stabilizationWindowSeconds"] >= 300


def test_pod_runs_as_the_images_non_root_user(variant: Variant) -> None:
    security = pod_spec(variant)["securityContext"]
    assert security["runAsNonRoot"] is True
    (user,) = [args for keyword, args in final_stage() if keyword == "USER"]
    assert security["runAsUser"] == int(user.split(":")[0]) != 0
    bridge = container(variant)["securityContext"]
    assert bridge["allowPrivilegeEscalation"] is False
    assert bridge["readOnlyRootFilesystem"] is True and bridge["capabilities"]["drop"] == ["ALL"]


# -- Kubernetes: the StatefulSet and SQLite ---------------------------------------------------


def test_ledger_lives_on_the_pods_own_volume() -> None:
    statefulset = one("StatefulSet")
    claims = {t["metadata"]["name"]: t for t in statefulset["spec"]["volumeClaimTemplates"]}
    ledger = PurePosixPath(config_data()["BRIDGE_LEDGER_PATH"])
    assert settings_from_manifests().database_url is None  # SQLite: one process, one pod, one volume
    mounts = [m for m in container()["volumeMounts"] if ledger.is_relative_to(m["mountPath"])]
    assert mounts, f"nothing is mounted over {ledger}"
    deepest = max(mounts, key=lambda m: len(m["mountPath"]))  # the mount the file actually lands on
    assert deepest["name"] in claims, f"{ledger} is not on a volumeClaimTemplate"
    assert claims[deepest["name"]]["spec"]["accessModes"] == ["ReadWriteOnce"]
    assert statefulset["spec"]["persistentVolumeClaimRetentionPolicy"]["whenScaled"] == "Retain"


def test_statefulset_is_governed_by_the_headless_service() -> None:
    statefulset = one("StatefulSet")
    services = {d["metadata"]["name"]: d for d in manifests()["service.yaml"]}
    assert services[statefulset["spec"]["serviceName"]]["spec"]["clusterIP"] == "None"


def test_optional_autoscaler_adds_the_active_calls_metric_in_place_of_the_default() -> None:
    default = one("HorizontalPodAutoscaler", path="hpa.yaml")
    optional = one("HorizontalPodAutoscaler", path="optional/hpa-active-calls.yaml")
    assert optional["metadata"]["name"] == default["metadata"]["name"]  # replaces it, never both
    (pods,) = [m["pods"] for m in optional["spec"]["metrics"] if m["type"] == "Pods"]
    assert pods["metric"]["name"] == "bridge_active_calls"
    average = float(pods["target"]["averageValue"])
    assert 0 < average < settings_from_manifests().max_calls  # scale before pods refuse calls


# -- Kubernetes: the fleet (a Deployment and PostgreSQL) --------------------------------------


def test_fleet_ledger_is_the_shared_postgresql_from_a_secret_with_no_pod_volume() -> None:
    spec = pod_spec(FLEET)
    assert "volumeClaimTemplates" not in workload(FLEET)["spec"]
    assert all(set(volume) == {"name", "emptyDir"} for volume in spec["volumes"]), "a fleet pod keeps nothing"
    assert "BRIDGE_LEDGER_PATH" not in config_data(FLEET)
    (database,) = [v for v in container(FLEET)["env"] if v["name"] == "BRIDGE_DATABASE_URL"]
    assert database["valueFrom"]["secretKeyRef"]["name"] == "eka-phone-bridge-database"
    settings = settings_from_manifests(FLEET)
    assert settings.database_url and urlsplit(settings.database_url).scheme == "postgresql"
    assert float(config_data(FLEET)["BRIDGE_LEASE_TTL_S"]) == settings.lease_ttl_s
    # The template's password is a placeholder; nothing else in it is secret.
    template = secret_templates()["eka-phone-bridge-database"]["stringData"]
    assert set(template) == {"BRIDGE_DATABASE_URL"}
    assert (urlsplit(template["BRIDGE_DATABASE_URL"]).password or "").startswith("REPLACE_WITH_")


def test_fleet_internal_url_is_the_pods_own_address() -> None:
    """Other processes relay a call's reconnect, hang-up or webhook to this pod directly, even
    while it drains outside the Service: its pod IP, from the downward API."""
    env = container(FLEET)["env"]
    names = [v["name"] for v in env]
    (pod_ip,) = [v for v in env if v["name"] == "POD_IP"]
    assert pod_ip["valueFrom"]["fieldRef"]["fieldPath"] == "status.podIP"
    assert names.index("POD_IP") < names.index("BRIDGE_INTERNAL_URL"), "$(POD_IP) expands only if defined before"
    internal = urlsplit(settings_from_manifests(FLEET).internal_url or "")
    assert internal.scheme == "http" and internal.hostname == POD_FIELDS["status.podIP"]
    assert internal.port == {p["name"]: p["containerPort"] for p in container(FLEET)["ports"]}["http"]


def test_fleet_pod_is_the_statefulset_pod_but_for_the_ledger() -> None:
    """The same probes, grace period, preStop, resources, security context and image: only the
    ledger differs (a volume there, a Secret and the pod's address here)."""
    single = copy.deepcopy(workload(SINGLE)["spec"]["template"])
    fleet = copy.deepcopy(workload(FLEET)["spec"]["template"])
    (single_bridge,) = single["spec"]["containers"]
    (fleet_bridge,) = fleet["spec"]["containers"]
    ledger_mount = PurePosixPath(config_data(SINGLE)["BRIDGE_LEDGER_PATH"]).parent.as_posix()
    assert [m for m in single_bridge.pop("volumeMounts") if m["mountPath"] != ledger_mount] == fleet_bridge.pop(
        "volumeMounts"
    )
    assert {v["name"] for v in fleet_bridge.pop("env")} == {"POD_IP", "BRIDGE_INTERNAL_URL", "BRIDGE_DATABASE_URL"}
    assert "env" not in single_bridge
    assert single == fleet


def test_fleet_files_are_the_bases_but_for_the_fleets_differences() -> None:
    """fleet/ holds copies (kustomize cannot include the parent directory): they may differ from
    the base only where a fleet must."""

    def base(kind: str, name: str | None = None) -> dict[str, Any]:
        return copy.deepcopy(one(kind, name=name))

    def fleet(kind: str) -> dict[str, Any]:
        return copy.deepcopy(one(kind, variant=FLEET))

    configmap = base("ConfigMap")
    del configmap["data"]["BRIDGE_LEDGER_PATH"]
    configmap["data"]["BRIDGE_LEASE_TTL_S"] = config_data(FLEET)["BRIDGE_LEASE_TTL_S"]
    assert fleet("ConfigMap") == configmap
    hpa = base("HorizontalPodAutoscaler")
    hpa["spec"]["scaleTargetRef"]["kind"] = "Deployment"
    assert fleet("HorizontalPodAutoscaler") == hpa
    assert fleet("Service") == base("Service", name="eka-phone-bridge")  # and no headless one
    for kind in ("PodDisruptionBudget", "Ingress"):
        assert fleet(kind) == base(kind)


def test_fleet_rollout_keeps_every_ready_pod_until_its_replacement_is_ready() -> None:
    strategy = workload(FLEET)["spec"]["strategy"]
    assert strategy["type"] == "RollingUpdate"
    assert strategy["rollingUpdate"]["maxUnavailable"] == 0 and strategy["rollingUpdate"]["maxSurge"] >= 1


def test_optional_postgres_is_apart_from_the_bridge_and_matches_the_database_url() -> None:
    path = "fleet/optional/postgres.yaml"
    statefulset, service = one("StatefulSet", path=path), one("Service", path=path)
    labels = statefulset["spec"]["template"]["metadata"]["labels"]
    # The bridge's Service and budget never pick up the database's pod, and its Service does.
    for bridge_selector in (
        one("Service", variant=FLEET)["spec"]["selector"],
        one("PodDisruptionBudget", variant=FLEET)["spec"]["selector"]["matchLabels"],
    ):
        assert not selects(bridge_selector, labels)
    assert selects(service["spec"]["selector"], labels)
    assert selects(statefulset["spec"]["selector"]["matchLabels"], labels)
    (postgres,) = statefulset["spec"]["template"]["spec"]["containers"]
    env = {v["name"]: v for v in postgres["env"]}
    # The bridge's URL names this database: its Service, port, user and database.
    url = urlsplit(secret_templates()["eka-phone-bridge-database"]["stringData"]["BRIDGE_DATABASE_URL"])
    assert url.hostname == service["metadata"]["name"]
    assert url.port == service["spec"]["ports"][0]["port"]
    assert url.username == env["POSTGRES_USER"]["value"]
    assert url.path == "/" + env["POSTGRES_DB"]["value"]
    # Its password comes from a Secret; its data is on its own volume, below the mount point.
    assert "value" not in env["POSTGRES_PASSWORD"] and env["POSTGRES_PASSWORD"]["valueFrom"]["secretKeyRef"]
    claims = {t["metadata"]["name"] for t in statefulset["spec"]["volumeClaimTemplates"]}
    data = PurePosixPath(env["PGDATA"]["value"])
    (mount,) = [m for m in postgres["volumeMounts"] if data.is_relative_to(m["mountPath"])]
    assert mount["name"] in claims and data != PurePosixPath(mount["mountPath"])
    assert statefulset["spec"]["template"]["spec"]["securityContext"]["runAsNonRoot"] is True
    assert statefulset["spec"]["replicas"] == 1


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
