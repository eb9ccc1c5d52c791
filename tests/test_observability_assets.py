"""deploy/observability: the alert rules and the Grafana dashboard refer only to
metrics the services export, under their exported names."""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml
from prometheus_client import REGISTRY

import shared.metrics  # noqa: F401 - registers the catalogue

ROOT = Path(__file__).resolve().parent.parent / "deploy" / "observability"
_NAME = re.compile(r"\bjetty_[a-z_]+")
_SUFFIXES = ("_bucket", "_count", "_sum", "_total", "_created")


def exported() -> set[str]:
    names: set[str] = set()
    for family in REGISTRY.collect():
        names.add(family.name)
        names.update(sample.name for sample in family.samples)
        names.update(family.name + s for s in _SUFFIXES)
    return names


def test_alert_rules_name_exported_metrics() -> None:
    rules = yaml.safe_load((ROOT / "alerts.yaml").read_text())
    found = [r for group in rules["groups"] for r in group["rules"]]
    assert {r["alert"] for r in found} >= {
        "JettyRecorderLagHigh",
        "JettyGatewayErrorRate",
        "JettyKeyBudgetExhausted",
    }
    known = exported()
    for rule in found:
        assert set(rule) <= {"alert", "expr", "for", "labels", "annotations"}
        assert rule["labels"]["severity"] in ("info", "warning", "critical")
        names = set(_NAME.findall(rule["expr"]))
        assert names and names <= known, (rule["alert"], names - known)


def test_dashboard_queries_name_exported_metrics() -> None:
    dashboard = json.loads((ROOT / "grafana-dashboard.json").read_text())
    known = exported()
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    assert len(exprs) >= 15
    used = {n for e in exprs for n in _NAME.findall(e)}
    assert used <= known, used - known
    # Every metric of the catalogue is on the dashboard somewhere.
    catalogue = {f.name for f in REGISTRY.collect() if f.name.startswith("jetty_")}
    families = {n.removesuffix("_bucket").removesuffix("_total") for n in used}
    assert families >= catalogue - {"jetty_recorder_events"}
