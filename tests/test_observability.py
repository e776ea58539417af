"""The Grafana dashboard and the Prometheus alert rules query what the bridge exports.

The exported names come from a real ``bridge.metrics.Metrics``: its exposition, parsed with
prometheus_client's own text parser, after every labelled metric has been given a child (a
labelled metric with none exports no sample). The names the dashboard and the rules use come
from their PromQL by a small tokenizer. Pure parsing, except ``promtool`` where it is on PATH.
"""

from __future__ import annotations

import collections
import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from bridge.metrics import Metrics

ROOT = Path(__file__).resolve().parent.parent
DASHBOARD = ROOT / "deploy" / "grafana" / "bridge-dashboard.json"
RULES = ROOT / "deploy" / "prometheus" / "bridge-alerts.yml"
RULE_TESTS = ROOT / "deploy" / "prometheus" / "bridge-alerts.test.yml"
#: Series Prometheus makes itself for every target, not the bridge.
PROMETHEUS_MADE = frozenset({"up"})
#: Variables Grafana defines on every dashboard.
GRAFANA_BUILTINS = frozenset({"__rate_interval", "__interval", "__interval_ms", "__range", "__range_s"})
#: The sample names each type of family exports.
SUFFIXES = {
    "counter": ("_total",),
    "gauge": ("",),
    "histogram": ("_bucket", "_count", "_sum"),
    "summary": ("", "_count", "_sum"),
}
SEVERITIES = frozenset({"warning", "critical"})
NO_PROMTOOL = "promtool is not on PATH (Debian's prometheus package has it)"
DURATION = re.compile(r"(\d+(ms|s|m|h|d|w|y))+")

#: String literals (label values, regexes): their contents are not metric names.
PROMQL_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
#: An identifier followed by a selector, a range, a closing parenthesis, a comma, whitespace or
#: the end: a metric name wherever PromQL allows one (labels are followed by ``=``, ``!`` or ``~``).
PROMQL_NAME = re.compile(r"(?<![\w:$.])([A-Za-z_:][A-Za-z0-9_:]*)(?=[{\[),\s]|$)")
GRAFANA_VARIABLE = re.compile(r"\$\{?(\w+)")


# -- what the bridge exports ------------------------------------------------------------------


def exposition_families() -> dict[str, tuple[str, set[str]]]:
    """Every family the bridge exports: name → (type, names of its samples)."""
    metrics = Metrics(active_calls=lambda: 0, rejections=collections.Counter({"stream:too_many_calls": 1}))
    for wrapper in vars(metrics).values():  # a child for every labelled metric, whatever it is
        labelnames = getattr(wrapper, "_labelnames", ())
        if labelnames:
            wrapper.labels(*("x" for _ in labelnames))
    text = metrics.exposition().decode()
    families = {
        family.name: (family.type, {sample.name for sample in family.samples})
        for family in text_string_to_metric_families(text)
    }
    # The text format carries a counter's or histogram's creation time as a gauge of its own.
    created = {name + "_created" for name in families}
    return {name: family for name, family in families.items() if name not in created}


def exported_names() -> set[str]:
    return {name for _, samples in exposition_families().values() for name in samples}


def metric_names(expr: str) -> set[str]:
    """The bridge's, the process collector's and Prometheus' ``up`` series named in a PromQL
    expression (or a Grafana ``label_values(...)`` query)."""
    bare = PROMQL_STRING.sub('""', expr)
    return {
        name
        for name in PROMQL_NAME.findall(bare)
        if name.startswith(("bridge_", "process_")) or name in PROMETHEUS_MADE
    }


# -- the dashboard ----------------------------------------------------------------------------


def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    return loaded


def panels() -> Iterator[dict[str, Any]]:
    """Every panel, the ones nested in collapsed rows too."""
    for panel in dashboard()["panels"]:
        yield panel
        yield from panel.get("panels", [])


def variable_queries() -> list[str]:
    queries = []
    for variable in dashboard()["templating"]["list"]:
        if variable["type"] == "query":
            query = variable["query"]
            queries.append(query["query"] if isinstance(query, dict) else query)
    return queries


def dashboard_exprs() -> list[str]:
    return [target["expr"] for panel in panels() for target in panel.get("targets", [])] + variable_queries()


# -- the rules --------------------------------------------------------------------------------


def rules() -> list[dict[str, Any]]:
    loaded = yaml.safe_load(RULES.read_text(encoding="utf-8"))
    return [rule for group in loaded["groups"] for rule in group["rules"]]


def rule_test_series() -> list[str]:
    """The input series of the rules' promtool unit tests."""
    loaded = yaml.safe_load(RULE_TESTS.read_text(encoding="utf-8"))
    return [series["series"] for test in loaded["tests"] for series in test["input_series"]]


# -- the exposition and the tokenizer ---------------------------------------------------------


def test_the_exposition_holds_the_bridges_and_the_process_metrics() -> None:
    names = exported_names()
    for expected in (
        "bridge_active_calls",
        "bridge_calls_total",
        "bridge_rejections_total",
        "bridge_event_loop_lag_seconds_bucket",
        "bridge_sessions_end_pending",
        "bridge_fleet_members",
        "bridge_fleet_adopted_total",
        "bridge_fleet_relayed_streams_total",
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
    ):
        assert expected in names


def test_every_family_exports_the_samples_its_type_implies() -> None:
    """So that a family's sample names are known from its type (checked on every family, each of
    which has a child by now)."""
    for name, (kind, samples) in exposition_families().items():
        assert samples, f"{name} exports no sample: a labelled metric the test did not give a child"
        assert samples == {name + suffix for suffix in SUFFIXES[kind]}, (name, kind, samples)


def test_the_tokenizer_finds_metric_names_and_nothing_else() -> None:
    expr = (
        'histogram_quantile(0.99, sum by (le, instance) (rate(bridge_relay_lag_seconds_bucket{job=~"$job",'
        ' reason="bridge_not_a_metric"}[$__rate_interval])))'
    )
    assert metric_names(expr) == {"bridge_relay_lag_seconds_bucket"}
    assert metric_names("up == 0 and on (job, instance) present_over_time(bridge_active_calls[1d])") == {
        "up",
        "bridge_active_calls",
    }
    assert metric_names("max(bridge_fleet_members) - count(bridge_fleet_members offset 10m)") == {
        "bridge_fleet_members"
    }
    assert metric_names("rate(process_cpu_seconds_total{instance=~'$instance'}[5m])") == {"process_cpu_seconds_total"}
    assert metric_names("label_values(bridge_active_calls, job)") == {"bridge_active_calls"}
    assert metric_names("bridge_sessions_end_pending") == {"bridge_sessions_end_pending"}
    assert metric_names("sum by (upstream) (rate(bridge_x_total[5m]))") == {"bridge_x_total"}


# -- the dashboard ----------------------------------------------------------------------------


def test_every_metric_the_dashboard_queries_is_exported() -> None:
    exported = exported_names() | PROMETHEUS_MADE
    used = {name for expr in dashboard_exprs() for name in metric_names(expr)}
    assert used, "no metric names found in the dashboard"
    assert not used - exported, f"the dashboard queries what the bridge does not export: {sorted(used - exported)}"


def test_the_dashboard_charts_every_bridge_metric() -> None:
    used = {name for expr in dashboard_exprs() for name in metric_names(expr)}
    families = exposition_families()
    missing = [name for name, (_, samples) in families.items() if name.startswith("bridge_") and not samples & used]
    assert not missing, f"bridge metrics with no panel: {missing}"


def test_the_dashboard_is_well_formed() -> None:
    board = dashboard()
    assert board["title"] and board["uid"] and isinstance(board["schemaVersion"], int)
    ids = [panel["id"] for panel in panels()]
    assert len(ids) == len(set(ids)), "panel ids repeat"
    charts = [panel for panel in panels() if panel["type"] != "row"]
    assert len(charts) >= 20
    for panel in charts:
        assert panel["title"] and panel["gridPos"]["w"] > 0 and panel["gridPos"]["h"] > 0, panel["id"]
        targets = panel["targets"]
        assert targets, f"panel {panel['title']!r} has no query"
        assert all(target["expr"].strip() for target in targets), panel["title"]
        ref_ids = [target["refId"] for target in targets]
        assert len(ref_ids) == len(set(ref_ids)), panel["title"]
    for row in (panel for panel in panels() if panel["type"] == "row"):
        assert "targets" not in row


def test_the_dashboard_uses_its_datasource_variable() -> None:
    variables = dashboard()["templating"]["list"]
    (source,) = [v for v in variables if v["type"] == "datasource"]
    assert source["query"] == "prometheus"
    reference = "${" + source["name"] + "}"
    users = [p for p in panels() if p["type"] != "row"] + [v for v in variables if v["type"] == "query"]
    for user in users:
        assert user["datasource"]["uid"] == reference, user.get("title", user.get("name"))
        for target in user.get("targets", []):
            assert target["datasource"]["uid"] == reference, user["title"]
    # Every $variable the queries use is the dashboard's or Grafana's.
    defined = {v["name"] for v in variables} | GRAFANA_BUILTINS
    used = {name for expr in dashboard_exprs() for name in GRAFANA_VARIABLE.findall(expr)}
    assert used <= defined, sorted(used - defined)


# -- the alert rules --------------------------------------------------------------------------


def test_every_metric_the_alert_rules_query_is_exported() -> None:
    exported = exported_names() | PROMETHEUS_MADE
    used = {name for rule in rules() for name in metric_names(rule["expr"])}
    assert not used - exported, f"the rules query what the bridge does not export: {sorted(used - exported)}"
    # The conditions the rules are there for: failing calls, Ends pending, deliveries, flush timeouts,
    # event-loop lag, the fleet's members and targets that are down.
    assert {
        "bridge_calls_total",
        "bridge_sessions_end_pending",
        "bridge_result_deliveries_total",
        "bridge_upstream_flush_timeouts_total",
        "bridge_event_loop_lag_seconds_bucket",
        "bridge_fleet_members",
        "up",
    } <= used
    # The rules' unit tests feed series of the same, real names.
    fed = {name for series in rule_test_series() for name in metric_names(series)}
    assert fed and not fed - exported, sorted(fed - exported)


def test_the_alert_rules_are_well_formed() -> None:
    loaded = yaml.safe_load(RULES.read_text(encoding="utf-8"))
    groups = loaded["groups"]
    assert groups and len({g["name"] for g in groups}) == len(groups)
    names = []
    for group in groups:
        assert group["rules"], group["name"]
        for rule in group["rules"]:
            assert set(rule) <= {"alert", "expr", "for", "labels", "annotations"}, rule.get("alert")
            name = rule["alert"]
            names.append(name)
            assert re.fullmatch(r"Bridge[A-Z][A-Za-z]+", name), name
            assert isinstance(rule["expr"], str) and rule["expr"].strip(), name
            assert DURATION.fullmatch(str(rule["for"])), (name, rule["for"])
            assert rule["labels"]["severity"] in SEVERITIES, name
            annotations = rule["annotations"]
            assert annotations["summary"].strip() and annotations["description"].strip(), name
    assert len(names) == len(set(names)), "alert names repeat"


@pytest.mark.skipif(shutil.which("promtool") is None, reason=NO_PROMTOOL)
def test_promtool_accepts_the_rules() -> None:
    checked = subprocess.run(["promtool", "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60)
    assert checked.returncode == 0, checked.stdout + checked.stderr


@pytest.mark.skipif(shutil.which("promtool") is None, reason=NO_PROMTOOL)
def test_the_rules_fire_when_they_should_and_only_then() -> None:
    """bridge-alerts.test.yml: each alert fires on its condition; a scale-in, a rollout or SQLite
    processes do not set off the fleet's member alert."""
    tested = subprocess.run(
        ["promtool", "test", "rules", RULE_TESTS.name],
        cwd=RULE_TESTS.parent,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert tested.returncode == 0, tested.stdout + tested.stderr
