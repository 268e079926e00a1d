"""The Grafana dashboard shipped in packaging/grafana: well-formed, and
every metric its PromQL queries name exists on a live facteurd's
/metrics (a histogram's _bucket, _sum and _count by its family)."""

import json
import os
import re

import pytest

import facteur_harness as h
from test_metrics import metrics_daemon, scrape

DASHBOARD = os.path.join(os.path.dirname(__file__), "..", "..", "packaging",
                         "grafana", "facteur.json")

# PromQL words that are not metric names.
KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right",
            "bool", "and", "or", "unless", "offset", "inf", "nan"}
IDENT = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")


def load():
    with open(DASHBOARD, encoding="utf-8") as f:
        return json.load(f)


def all_panels(panels):
    for p in panels:
        yield p
        yield from all_panels(p.get("panels", []))


def exprs(dash):
    out = []
    for p in all_panels(dash["panels"]):
        for target in p.get("targets", []):
            out.append((p["title"], target["expr"]))
    for var in dash.get("templating", {}).get("list", []):
        q = var.get("query")
        if isinstance(q, dict):
            out.append((var["name"], q["query"]))
    return out


def metric_names(expr):
    """The metric names a PromQL expression selects: what is left once
    strings, label matchers, grouping clauses, ranges and function calls
    are taken out."""
    e = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    e = re.sub(r"\{[^}]*\}", " ", e)
    e = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)",
               " ", e)
    e = re.sub(r"\[[^\]]*\]", " ", e)
    e = re.sub(r"label_values\(\s*([a-zA-Z_:][a-zA-Z0-9_:]*)\s*,[^)]*\)",
               r" \1 ", e)
    names = set()
    for m in IDENT.finditer(e):
        word = m.group(0)
        rest = e[m.end():].lstrip()
        if rest.startswith("("):
            continue  # a function
        if word.lower() in KEYWORDS:
            continue
        if e[:m.start()].endswith("$"):
            continue  # a dashboard variable
        names.add(word)
    return names


def test_metric_name_extraction():
    # the extractor itself: functions, labels, ranges and clauses are not
    # taken for metric names
    assert metric_names(
        'histogram_quantile(0.95, sum by (le) (rate('
        'facteur_delivery_delay_seconds_bucket{instance=~"$instance"}'
        '[$__rate_interval])))') == {"facteur_delivery_delay_seconds_bucket"}
    assert metric_names('sum(a_total{x="by (y)"}) / on (i) b_total > 0') == \
        {"a_total", "b_total"}
    assert metric_names("min(time() - process_start_time_seconds)") == \
        {"process_start_time_seconds"}
    assert metric_names("label_values(facteur_build_info, instance)") == \
        {"facteur_build_info"}


def test_dashboard_is_well_formed():
    dash = load()
    assert dash["title"] and dash["uid"]
    ids = [p["id"] for p in all_panels(dash["panels"])]
    assert len(ids) == len(set(ids)), "panel ids repeat"
    for p in all_panels(dash["panels"]):
        if p["type"] == "row":
            continue
        assert p["targets"], p["title"]
        refs = [t["refId"] for t in p["targets"]]
        assert len(refs) == len(set(refs)), p["title"]
        assert {"h", "w", "x", "y"} <= set(p["gridPos"]), p["title"]
        for t in p["targets"]:
            assert t["expr"].count("(") == t["expr"].count(")"), t["expr"]
            assert metric_names(t["expr"]), t["expr"]


def test_every_metric_the_dashboard_queries_exists(make_daemon):
    d = metrics_daemon(make_daemon)
    samples, types, _ = scrape(d)
    families = set(types)
    used = {}
    for where, expr in exprs(load()):
        for name in metric_names(expr):
            used.setdefault(name, where)
    assert len(used) >= 20, sorted(used)
    missing = []
    for name, where in sorted(used.items()):
        if name in families:
            continue
        base = next((name[:-len(s)] for s in HISTOGRAM_SUFFIXES
                     if name.endswith(s)), None)
        if base is not None and types.get(base) == "histogram":
            continue
        missing.append("%s (in %s)" % (name, where))
    assert not missing, "queried but not exposed: %s" % ", ".join(missing)


def test_every_label_the_dashboard_groups_by_exists(make_daemon):
    """A `by (label)` names a label that the metrics it sums carry (le of
    a histogram's buckets; instance and job come from Prometheus)."""
    d = metrics_daemon(make_daemon)
    samples, _, _ = scrape(d)
    labels_of = {}
    for series in samples:
        name, _, rest = series.partition("{")
        labels_of.setdefault(name, set()).update(
            re.findall(r'([a-zA-Z_][a-zA-Z0-9_]*)="', rest))
    wrong = []
    for where, expr in exprs(load()):
        names = metric_names(expr)
        carried = set().union(*(labels_of.get(n, set()) for n in names))
        for group in re.findall(r"\bby\s*\(([^)]*)\)", expr):
            for label in (l.strip() for l in group.split(",")):
                if label not in carried | {"instance", "job"}:
                    wrong.append("%s: by (%s) in %s" % (where, label, expr))
    assert not wrong, "\n".join(wrong)
