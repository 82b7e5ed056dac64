"""A third-party resolver, as docs/resolvers.md shows one: its code and its entry point are read from the page and
installed (the module and a dist-info directory on the path, as pip would leave them), then loaded by name as a
node loads it, and used by a real node whose config file names its kind."""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any

import pytest
from dynamic_helpers import LOOPBACK, assert_exactly_once_in_order, cid, node_pair, numbered, receive
from node_process import free_port

import aiobroker
from aiobroker.resolver import ConfigError, NotFound, load_resolver
from markdown_blocks import fenced_blocks

PAGE = Path(__file__).resolve().parent.parent / "docs" / "resolvers.md"
HEADING = "A resolver plug-in"


def blocks(lang: str) -> list[str]:
    """The fenced blocks of ``lang`` ("" for a bare fence) under the page's HEADING, in order."""
    return [text for heading, text in fenced_blocks(PAGE, lang) if heading == HEADING]


def install_the_plugin(where: Path) -> str:
    """Write the page's module and its entry points (from the page's pyproject fragment) under ``where``; the
    kind it registers."""
    (code,) = blocks("python")
    (pyproject,) = blocks("")
    points = tomllib.loads(pyproject)["project"]["entry-points"]["aiobroker.resolvers"]
    (kind, target) = next(iter(points.items()))
    module = target.partition(":")[0]
    (where / f"{module}.py").write_text(code, encoding="utf-8")
    info = where / f"{module}-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {module}\nVersion: 1.0\n", encoding="utf-8")
    lines = "".join(f"{name} = {value}\n" for name, value in points.items())
    (info / "entry_points.txt").write_text(f"[aiobroker.resolvers]\n{lines}", encoding="utf-8")
    return kind


def the_pages_resolver_table() -> dict[str, Any]:
    (config,) = blocks("toml")
    table: dict[str, Any] = tomllib.loads(config)["resolver"]
    return table


@pytest.fixture
def kind(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    site = tmp_path / "site"
    site.mkdir()
    registered = install_the_plugin(site)
    monkeypatch.syspath_prepend(str(site))  # this process finds the entry point; a node started from here too:
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")])))
    return registered


@pytest.mark.anyio
async def test_the_pages_resolver_loads_by_its_kind_and_answers_from_its_table(kind: str) -> None:
    table = the_pages_resolver_table()
    assert table["kind"] == kind == "fixed"
    resolver = load_resolver(kind, {k: v for k, v in table.items() if k != "kind"})
    answer = await resolver.resolve_route("//shop/Orders")
    assert [t.address for t in answer.targets] == ["tcp://10.0.0.5:4032"]
    assert answer.lifetime == 120 and resolver.name == "fixed"
    with pytest.raises(NotFound, match="no entry for '//shop/Nowhere'"):
        await resolver.resolve_route("//shop/Nowhere")


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"services": {"//shop/Orders": "10.0.0.5:4032"}}, r"\[resolver.services\] address '10.0.0.5:4032' must be"),
        ({"services": {"//shop/Orders": "tcp://10.0.0.5:4032"}, "ttl": 5}, "unknown key.*'fixed': ttl"),
        ({}, r"\[resolver.services\] is required"),
        ({"services": {"//shop/Orders": "tcp://10.0.0.5:4032"}, "lifetime": 0}, "lifetime must be a number"),
    ],
    ids=["not an address", "unknown key", "no services", "lifetime 0"],
)
def test_the_pages_resolver_says_which_key_is_wrong(kind: str, options: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_resolver(kind, options)


@pytest.mark.slow
@pytest.mark.anyio
async def test_a_node_routes_through_the_pages_resolver(kind: str, tmp_path: Path) -> None:
    b_port = free_port()
    resolver = {"kind": kind, "services": {"svcB": f"tcp://{LOOPBACK}:{b_port}"}, "lifetime": 30}
    with node_pair(tmp_path, resolver, b_port=b_port) as pair:
        async with aiobroker.connect(pair.a.url) as ca, aiobroker.connect(pair.b.url) as cb:
            dialog = await ca.begin_dialog("svcA", "svcB")
            await dialog.send_many(numbered(0, 5))
            received = await receive(cb, "qb", 5, 20.0)
            assert_exactly_once_in_order(received, {cid(dialog): 5})
            made = [r for r in (await ca.diagnose("svcB"))["routes"] if r["origin"] == "fixed"]
            assert [r["address"] for r in made] == [pair.b_address], made
