"""The Grafana dashboard in ``examples/grafana/aiobroker.json``, checked against a real node's ``/metrics``: every
metric a panel queries exists (a renamed metric would leave a panel silently empty), every label a panel groups or
filters by is one the metric has, and the file is a dashboard Grafana imports (a Prometheus data source input, a
node variable, panels on the grid)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

import aiobroker
from aiobroker.config import NodeConfig

DASHBOARD = Path(__file__).resolve().parent.parent / "examples" / "grafana" / "aiobroker.json"
METRIC = re.compile(r"\b(aiobroker_[a-z_]+)")
#: labels Prometheus itself adds to every series (instance, job) or that histograms carry (le)
SCRAPE_LABELS = {"instance", "job", "le"}


def panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    return [p for p in dashboard["panels"] if p["type"] != "row"]


async def scrape(tmp_path: Path) -> dict[str, set[str]]:
    """Each sample name a node exposes, with its label names: a node with a queue and traffic, a route to a node
    that is not there (a link), and a static_file resolver that knows nothing (DELAYED, resolver failures), so that
    the labelled families have samples."""
    routes = tmp_path / "routes.toml"
    routes.write_text("")
    config = NodeConfig(
        store="memory", listen_port=0, http_port=0, resolver={"kind": "static_file", "path": str(routes)}
    )
    async with aiobroker.Node(config) as node, aiobroker.connect(node.url) as client:
        await client.create_queue("q")
        await client.create_service("s", "q", ["DEFAULT"])
        await client.create_route("far", "tcp://127.0.0.1:9", service_name="//far")  # nobody there: a failing link
        dialog = await client.begin_dialog("s", "s")
        await dialog.send_many([("DEFAULT", b"x")] * 3)
        async with await client.receive("q", max_messages=10, timeout=5):
            pass
        await (await client.begin_dialog("s", "//far")).send("DEFAULT", b"y")
        await (await client.begin_dialog("s", "//nowhere")).send("DEFAULT", b"z")  # DELAYED: the resolver is asked
        status = await client.status()
        assert status["dynamic_routing"]["delayed_messages"] == 1
        assert node.http_url is not None
        async with httpx.AsyncClient(base_url=node.http_url, timeout=10) as http:
            # the resolver's answer and the link's failure come a moment later: poll for them, with a deadline
            with anyio.fail_after(15):
                while True:
                    exposed = _parse((await http.get("/metrics")).text)
                    if {"aiobroker_resolver_failures_total", "aiobroker_link_failures_total"} <= set(exposed):
                        return exposed
                    await anyio.sleep(0.05)


def _parse(text: str) -> dict[str, set[str]]:
    exposed: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(text):
        exposed.setdefault(family.name, set())
        for sample in family.samples:
            exposed.setdefault(sample.name, set()).update(sample.labels)
    return exposed


def test_the_dashboard_is_one_grafana_imports() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["__inputs"][0]["pluginId"] == "prometheus"
    assert [v["name"] for v in dashboard["templating"]["list"]] == ["instance"]
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids)), "panel ids are unique"
    for panel in panels(dashboard):
        assert panel["datasource"]["uid"] == "${DS_PROMETHEUS}", panel["title"]
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, f"{panel['title']} runs off the grid"
        assert panel["targets"] and all('instance=~"$instance"' in t["expr"] for t in panel["targets"]), panel["title"]


@pytest.mark.anyio
async def test_every_metric_and_label_a_panel_asks_for_is_exposed(tmp_path: Path) -> None:
    exposed = await scrape(tmp_path)
    dashboard = json.loads(DASHBOARD.read_text())
    missing = []
    for panel in panels(dashboard):
        for target in panel["targets"]:
            expr = target["expr"]
            for name in METRIC.findall(expr):
                if name not in exposed:
                    missing.append(f"{panel['title']}: {name} is not in /metrics")
                    continue
                # the labels it is filtered by inside its braces, and those the query groups by
                selector = re.search(re.escape(name) + r"\{([^}]*)\}", expr)
                used = set(re.findall(r"(\w+)\s*[!=]~?", selector.group(1))) if selector else set()
                used |= {label.strip() for group in re.findall(r"by \(([^)]*)\)", expr) for label in group.split(",")}
                unknown = used - exposed[name] - SCRAPE_LABELS
                if unknown:
                    missing.append(f"{panel['title']}: {name} has no label(s) {sorted(unknown)}")
    assert not missing, "the dashboard asks for what the node does not expose:\n" + "\n".join(missing)
