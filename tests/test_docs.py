"""The docs run: the README's command-line and Python examples and every config example, as written, against real
node processes (``aiobroker serve``, the venv's console script, as ``scripts/serve`` runs it).

Every example is read from its file when the test runs (README.md, docs/*.md, examples/, the documentation of
``aiobroker.config``), never copied here, so docs that drift from the code fail here. Where an example names a
node's address (the README's 127.0.0.1:4022, the pair's 127.0.0.1:4031 and 4032), it runs against a node on a free
port instead: command lines through ``$AIOBROKER_ADDRESS`` as a user's shell would, and otherwise with that
address, and nothing else, replaced.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

import aiobroker.config
from aiobroker.cli.common import DEFAULT_ADDRESS
from aiobroker.config import load_config
from markdown_blocks import fenced_blocks
from node_process import free_port, stop_by_pid, wait_for

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
BIN = Path(sys.executable).parent  # the venv's: its `aiobroker` is the one the README's commands mean
CALL_TIMEOUT = 60.0
START_TIMEOUT = 20.0
DEFAULT_HOSTPORT = DEFAULT_ADDRESS.removeprefix("tcp://")


# --- reading the docs ---------------------------------------------------------------------------------------


def block_under(path: Path, heading: str, lang: str, index: int = 0) -> str:
    found = [text for h, text in fenced_blocks(path, lang) if h == heading]
    assert len(found) > index, f"{path.name} has no {lang} block #{index + 1} under the heading {heading!r}"
    return found[index]


def command_lines(block: str) -> list[str]:
    """The commands of a ``sh`` block: its lines that are not blank or comments (a trailing comment stays: the
    shell drops it, as it would for a user who pastes the line)."""
    return [line for line in block.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def config_doc_example() -> str:
    """The complete example in ``aiobroker.config``'s documentation (its ``.. code-block:: toml``)."""
    doc = aiobroker.config.__doc__ or ""
    start = doc.index(".. code-block:: toml\n") + len(".. code-block:: toml\n")
    lines = []
    for line in doc[start:].splitlines():
        if line and not line.startswith(" "):
            break
        lines.append(line)
    return textwrap.dedent("\n".join(lines)).strip() + "\n"


# --- running things -----------------------------------------------------------------------------------------


def environment(address: str | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("AIOBROKER_ADDRESS", "AIOBROKER_TOKEN")}
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    if address is not None:
        env["AIOBROKER_ADDRESS"] = address
    return env


def shell(line: str, address: str | None, cwd: Path) -> subprocess.CompletedProcess[str]:
    """One line of a ``sh`` block, run by bash as a user's terminal would (with the venv's bin first on PATH)."""
    return subprocess.run(
        ["bash", "-c", line], cwd=cwd, env=environment(address), capture_output=True, text=True,
        stdin=subprocess.DEVNULL, timeout=CALL_TIMEOUT, check=False,
    )  # fmt: skip


def succeeded(line: str, r: subprocess.CompletedProcess[str]) -> str:
    assert r.returncode == 0, f"{line!r} exited {r.returncode}\nstdout: {r.stdout}\nstderr: {r.stderr}"
    assert "Traceback" not in r.stderr, r.stderr
    return r.stdout


def aiobroker_cli(*args: str, address: str | None) -> str:
    line = " ".join(args)
    r = subprocess.run([str(BIN / "aiobroker"), *args], env=environment(address), capture_output=True, text=True,
                       stdin=subprocess.DEVNULL, timeout=CALL_TIMEOUT, check=False)  # fmt: skip
    return succeeded(line, r)


def python_snippet(code: str, cwd: Path) -> str:
    r = subprocess.run([sys.executable, "-c", code], cwd=cwd, env=environment(None), capture_output=True,
                       text=True, stdin=subprocess.DEVNULL, timeout=CALL_TIMEOUT, check=False)  # fmt: skip
    return succeeded(code, r)


@contextmanager
def serving(*args: str, port: int, cwd: Path) -> Iterator[str]:
    """``aiobroker serve ARGS`` listening on ``port`` (the args or the config file say so); yields its address and
    stops it by pid with SIGTERM at the end, which must exit it with 0."""
    log_path = cwd / f"node-{port}.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([str(BIN / "aiobroker"), "serve", *args], cwd=cwd, env=environment(None),
                                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)  # fmt: skip

    def output() -> str:
        return log_path.read_text(errors="replace")

    def listening() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"aiobroker serve {' '.join(args)} exited {proc.returncode}:\n{output()}")
        r = subprocess.run([str(BIN / "aiobroker"), "status"], env=environment(f"tcp://127.0.0.1:{port}"),
                           capture_output=True, timeout=CALL_TIMEOUT, check=False)  # fmt: skip
        return r.returncode == 0

    try:
        wait_for(listening, START_TIMEOUT, f"the node of {' '.join(args)} to answer on port {port}", interval=0.1)
        yield f"tcp://127.0.0.1:{port}"
    finally:
        code = stop_by_pid(proc)
    assert code == 0, f"the node exited {code} on SIGTERM:\n{output()}"
    assert "Traceback" not in output(), output()


def copy_config(source: Path, dest_dir: Path, addresses: dict[str, str]) -> Path:
    """``source`` copied into ``dest_dir`` (so relative paths in it resolve there) with ``addresses`` replaced."""
    text = source.read_text(encoding="utf-8")
    for old, new in addresses.items():
        assert old in text, f"{source} no longer names {old}; update the test's port mapping"
        text = text.replace(old, new)
    dest_dir.mkdir(parents=True, exist_ok=True)
    dest = dest_dir / source.name
    dest.write_text(text, encoding="utf-8")
    return dest


# --- the README ---------------------------------------------------------------------------------------------


def test_readme_first_conversation_runs_as_written(tmp_path: Path) -> None:
    quick_start = block_under(README, "Quick start", "sh")
    assert "scripts/serve" in quick_start and DEFAULT_HOSTPORT in quick_start  # the node the commands talk to
    port = free_port()
    with serving("--listen", f"127.0.0.1:{port}", "--data-dir", str(tmp_path / "data"), port=port,
                 cwd=tmp_path) as address:  # fmt: skip
        outputs = {}
        for line in command_lines(block_under(README, "A first conversation", "sh")):
            assert line.startswith("aiobroker "), line
            outputs[line] = succeeded(line, shell(line, address, tmp_path))
        sent = next(out for line, out in outputs.items() if " send " in line)
        assert re.fullmatch(r"[0-9a-f-]{36}\n", sent), sent  # "prints the conversation handle"
        received = next(out for line, out in outputs.items() if " receive " in line)
        assert received.rstrip().endswith("seq=0 type=DEFAULT body: two apples"), received
        assert "orders" in next(out for line, out in outputs.items() if line.startswith("aiobroker status"))

        # "The same from Python", with the README's address replaced by this node's
        code = block_under(README, "A first conversation", "python", 0)
        assert DEFAULT_ADDRESS in code
        out = python_snippet(code.replace(DEFAULT_ADDRESS, address), tmp_path)
        assert out.strip() == "b'two apples'", out
        reply = aiobroker_cli("receive", "shop", "--timeout", "5", address=address)  # the snippet's reply arrived
        assert reply.rstrip().endswith("body: on its way"), reply

    # Node inside a program: the fragment, as the body of a coroutine
    fragment = block_under(README, "A first conversation", "python", 1)
    code = "import anyio, aiobroker\n\nasync def main():\n" + textwrap.indent(fragment, "    ") + "\nanyio.run(main)\n"
    python_snippet(code, tmp_path)


def test_readme_two_nodes_on_one_machine_run_as_written(tmp_path: Path) -> None:
    ports = {f"127.0.0.1:{p}": f"127.0.0.1:{free_port()}" for p in (4031, 4032)}
    pair = ROOT / "examples" / "two-nodes"
    shop = copy_config(pair / "shop.toml", tmp_path / "two-nodes", ports)
    orders = copy_config(pair / "orders.toml", tmp_path / "two-nodes", ports)
    shop_port, orders_port = (int(ports[f"127.0.0.1:{p}"].rsplit(":", 1)[1]) for p in (4031, 4032))
    with serving("--config", str(shop), port=shop_port, cwd=tmp_path), \
            serving("--config", str(orders), port=orders_port, cwd=tmp_path):  # fmt: skip
        lines = command_lines(block_under(README, "Two nodes on one machine", "sh"))
        assert len(lines) == 2
        outputs = []
        for line in lines:
            for old, new in ports.items():
                line = line.replace(old, new)
            outputs.append(succeeded(line, shell(line, None, tmp_path)))
        assert outputs[1].rstrip().endswith("body: across"), outputs
    for name in ("shop", "orders"):  # data_dir is relative to the config file
        assert (tmp_path / "two-nodes" / "aiobroker-data" / name / "aiobroker.sqlite3").exists()


# --- the config examples ------------------------------------------------------------------------------------


def test_example_node_toml_starts_a_node_with_its_objects(tmp_path: Path) -> None:
    port = free_port()
    config = copy_config(ROOT / "examples" / "node.toml", tmp_path, {DEFAULT_HOSTPORT: f"127.0.0.1:{port}"})
    with serving("--config", str(config), port=port, cwd=tmp_path) as address:
        services = {s["name"]: s for s in json.loads(aiobroker_cli("list", "services", "--json", address=address))}
        assert services["//shop/Orders"]["contracts"] == ["//shop/OrderContract", "DEFAULT"]
        queues = {q["name"]: q for q in json.loads(aiobroker_cli("list", "queues", "--json", address=address))}
        assert queues["orders"] == {"name": "orders", "status": "on", "retention": "off",
                                    "poison_message_handling": "on"}  # fmt: skip
        aiobroker_cli("send", "--from", "//shop/Client", "--to", "//shop/Orders", "--contract", "//shop/OrderContract",
                      "--type", "//shop/Order", "--body", '{"apples": 2}', address=address)  # fmt: skip
        [message] = [json.loads(x) for x in aiobroker_cli("receive", "orders", "--json", address=address).splitlines()]
        assert message["body"] == '{"apples": 2}'
    assert (tmp_path / "aiobroker-data" / "aiobroker.sqlite3").exists()  # relative to the file, as it says


def test_the_config_documentation_example_starts_a_node(tmp_path: Path) -> None:
    port = free_port()
    example = tmp_path / "aiobroker.toml"
    text = config_doc_example()
    assert f'listen = "{DEFAULT_HOSTPORT}"' in text
    example.write_text(text.replace(DEFAULT_HOSTPORT, f"127.0.0.1:{port}"), encoding="utf-8")
    with serving("--config", str(example), port=port, cwd=tmp_path) as address:
        routes = {r["name"]: r for r in json.loads(aiobroker_cli("list", "routes", "--json", address=address))}
        assert routes["to-orders"]["service_name"] == "//shop/Orders"
        queues = {q["name"]: q for q in json.loads(aiobroker_cli("list", "queues", "--json", address=address))}
        assert queues["requests"]["status"] == "on"


@pytest.mark.parametrize(
    ("doc", "heading"),
    [(path, heading) for path in [README, *DOCS] for heading, _ in fenced_blocks(path, "toml")],
    ids=lambda v: v.name if isinstance(v, Path) else str(v),
)
def test_every_toml_block_in_the_docs_loads(doc: Path, heading: str, tmp_path: Path) -> None:
    """Each ``toml`` block of README.md and docs/*.md is a config file the node accepts (the certificates it names
    are made with ``aiobroker cert create``, as docs/security.md says)."""
    for text in [t for h, t in fenced_blocks(doc, "toml") if h == heading]:
        if "[project" in text:
            continue  # a package's pyproject.toml (a plug-in registering itself), not a node's config
        for name in sorted(set(re.findall(r"certs/([\w-]+)\.(?:crt|key|pem)", text))):
            (tmp_path / "certs").mkdir(exist_ok=True)
            aiobroker_cli("cert", "create", "--name", name, "--out", str(tmp_path / "certs" / name), address=None)
            # a .pem the docs name is a bundle of certificates to trust (`cat alice.crt bob.crt > clients.pem`)
            bundle = tmp_path / "certs" / f"{name}.pem"
            bundle.write_bytes((tmp_path / "certs" / f"{name}.crt").read_bytes())
        config = tmp_path / "block.toml"
        config.write_text(text, encoding="utf-8")
        load_config(config)


def test_the_docs_cert_create_commands_run_as_written_in_an_empty_directory(tmp_path: Path) -> None:
    """``aiobroker cert create`` talks to no node, so each such line of the docs' shell blocks runs as written,
    in a fresh directory as a new user's (``--out certs/node1`` must not need ``certs/`` made first)."""
    blocks = [block for doc in [README, *DOCS] for lang in ("sh", "") for _, block in fenced_blocks(doc, lang)]
    lines = [line for block in blocks for line in command_lines(block) if line.startswith("aiobroker cert create")]
    assert lines, "the docs show no aiobroker cert create"
    for i, line in enumerate(lines):
        cwd = tmp_path / str(i)
        cwd.mkdir()
        succeeded(line, shell(line, None, cwd))
        assert list(cwd.rglob("*.crt")) and list(cwd.rglob("*.key")), f"{line!r} wrote no certificate and key"


# --- the docs as a whole ------------------------------------------------------------------------------------


def test_docs_stand_alone_and_their_links_resolve() -> None:
    for doc in [README, *DOCS]:
        text = doc.read_text(encoding="utf-8")
        assert "../shared" not in text and "shared/" not in text, f"{doc.name} points outside the repository"
        for target in re.findall(r"\]\(([^)\s#]+)(?:#[^)]*)?\)", text):
            if re.match(r"[a-z]+:", target):
                continue
            assert (doc.parent / target).exists(), f"{doc.name} links to {target}, which does not exist"


def summary_commands(block: str) -> list[tuple[list[str], list[str]]]:
    """The README's command summary as (command words, flags shown) per command it names: a line may name several
    (``aiobroker end HANDLE   aiobroker timer ...``), and ``a|b|c`` names each of a, b and c."""
    found = []
    for segment in re.split(r"\s{2,}(?=aiobroker )", block):
        for line in segment.splitlines():
            words = line.split()
            if not words or words[0] != "aiobroker":
                continue
            path: list[str] = []
            for word in words[1:]:
                if not re.fullmatch(r"[a-z][a-z-]*(\|[a-z][a-z-]*|\|\.\.\.)*", word):
                    break
                path.append(word)
            flags = re.findall(r"(?<![\w-])--[a-z][a-z-]*", line)
            alternatives = [w for w in path[-1].split("|") if w != "..."] if path else []
            for last in alternatives:
                found.append(([*path[:-1], last], flags))
    return found


def test_the_readmes_command_summary_names_commands_and_flags_that_exist() -> None:
    block = block_under(README, "The command line", "")
    commands = summary_commands(block)
    assert len(commands) >= 20, commands
    for path, flags in commands:
        r = subprocess.run([str(BIN / "aiobroker"), *path, "--help"], env=environment(None), capture_output=True,
                           text=True, stdin=subprocess.DEVNULL, timeout=CALL_TIMEOUT, check=False)  # fmt: skip
        shown = " ".join(["aiobroker", *path])
        assert r.returncode == 0, f"README names {shown!r}, which has no --help: {r.stderr}"
        for flag in flags:
            assert re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", r.stdout), (
                f"README shows {shown} {flag}, which its --help does not know"
            )


def test_readme_layout_matches_the_tree() -> None:
    layout = block_under(README, "Layout", "")
    entries = re.findall(r"^( *)([\w.*-]+/?) ", layout, re.M)
    top = [name for indent, name in entries if not indent]
    inner = [name for indent, name in entries if indent == "  "]
    for name in top:
        assert (ROOT / name).exists(), f"the layout names {name}, which is not in the repository"
    assert len(inner) == len(set(inner)), f"the layout names something twice under aiobroker/: {inner}"
    packages = sorted(p.name + "/" for p in (ROOT / "aiobroker").iterdir() if (p / "__init__.py").exists())
    assert sorted(n for n in inner if n.endswith("/")) == packages
    for name in inner:
        assert list((ROOT / "aiobroker").glob(name.rstrip("/"))), f"aiobroker/{name} does not exist"


def test_license_and_changelog_exist() -> None:
    assert (ROOT / "LICENSE").read_text(encoding="utf-8").startswith("MIT License")
    assert 'license = { text = "MIT" }' in (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    assert "## [Unreleased]" in (ROOT / "CHANGELOG.md").read_text(encoding="utf-8")
