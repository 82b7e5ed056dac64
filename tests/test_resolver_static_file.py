"""The static_file resolver: answers from TOML and JSON files, edits picked up, broken edits ignored, option errors.

Every test uses a real file in ``tmp_path``. An edit is followed by ``os.utime`` to a later time, so that the
change is seen even on a file system whose timestamps are coarser than the test is fast.
"""

from __future__ import annotations

import json
import logging
import os
import textwrap
from pathlib import Path
from typing import Any

import pytest
from cert_helpers import rsa_certificate

from aiobroker.errors import ConfigError
from resolvers import static_file
from aiobroker.resolver import BindingAnswer, NotFound, ResolverError, RouteAnswer, Target, load_resolver
from resolvers.static_file import StaticFileResolver, create

pytestmark = pytest.mark.anyio

ORDERS_TOML = """
    [services."//shop/Orders"]
    lifetime = 30
    targets = [
      { address = "tcp://10.0.0.2:4022", weight = 3, priority = 0 },
      { address = "tcp://10.0.0.3:4022" },
      { address = "tcp://10.0.0.9:4022", priority = 1, broker_instance = "backup-1" },
    ]

    [services."//shop/Billing"]
    targets = [{ address = "tcp://10.0.0.4:4022" }]
"""

ORDERS_JSON: dict[str, Any] = {
    "services": {
        "//shop/Orders": {
            "lifetime": 30,
            "targets": [
                {"address": "tcp://10.0.0.2:4022", "weight": 3, "priority": 0},
                {"address": "tcp://10.0.0.3:4022"},
                {"address": "tcp://10.0.0.9:4022", "priority": 1, "broker_instance": "backup-1"},
            ],
        },
        "//shop/Billing": {"targets": [{"address": "tcp://10.0.0.4:4022"}]},
    }
}

ORDERS_TARGETS = (
    Target(address="tcp://10.0.0.2:4022", weight=3, priority=0),
    Target(address="tcp://10.0.0.3:4022", weight=1, priority=0),
    Target(address="tcp://10.0.0.9:4022", weight=1, priority=1, broker_instance="backup-1"),
)


def write(path: Path, text: str) -> Path:
    """Write ``text`` (dedented) and move the mtime a step past the previous version's."""
    before = path.stat().st_mtime_ns if path.exists() else 0
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    later = max(path.stat().st_mtime_ns, before) + 10_000_000_000
    os.utime(path, ns=(later, later))
    return path


def one_target(address: str) -> str:
    return f'[services."//shop/Orders"]\ntargets = [{{ address = "{address}" }}]\n'



def docstring_block(language: str) -> str:
    """The block under ``.. code-block:: <language>`` in the module docstring."""
    doc = static_file.__doc__
    assert doc is not None
    lines = doc.splitlines()
    start = lines.index(f".. code-block:: {language}") + 2
    block: list[str] = []
    for line in lines[start:]:
        if line and not line.startswith(" "):
            break
        block.append(line)
    return textwrap.dedent("\n".join(block))


# --- answers ---------------------------------------------------------------------------------------------------


async def test_answers_from_toml_carry_weights_priorities_and_instance(tmp_path: Path) -> None:
    path = write(tmp_path / "routes.toml", ORDERS_TOML)
    resolver = create({"path": str(path), "default_lifetime": 45})

    answer = await resolver.resolve_route("//shop/Orders")

    assert answer == RouteAnswer(service_name="//shop/Orders", targets=ORDERS_TARGETS, lifetime=30, source=str(path))
    assert answer.preferred() == ORDERS_TARGETS[:2]
    billing = await resolver.resolve_route("//shop/Billing")
    assert billing.targets == (Target(address="tcp://10.0.0.4:4022"),)
    assert billing.lifetime == 45  # no lifetime in the entry: the option's default


async def test_answers_from_json_are_the_same(tmp_path: Path) -> None:
    toml_path = write(tmp_path / "routes.toml", ORDERS_TOML)
    json_path = write(tmp_path / "routes.JSON", json.dumps(ORDERS_JSON))  # the suffix is not case-sensitive
    from_toml, from_json = create({"path": str(toml_path)}), create({"path": str(json_path)})

    for service in ("//shop/Orders", "//shop/Billing"):
        a, b = await from_toml.resolve_route(service), await from_json.resolve_route(service)
        assert (a.targets, a.lifetime) == (b.targets, b.lifetime)
    assert (await from_json.resolve_route("//shop/Orders")).targets == ORDERS_TARGETS
    assert (await from_json.resolve_route("//shop/Billing")).lifetime == static_file.DEFAULT_LIFETIME == 60


async def test_the_documented_examples_work_and_agree(tmp_path: Path) -> None:
    toml_path = write(tmp_path / "doc.toml", docstring_block("toml"))
    json_path = write(tmp_path / "doc.json", docstring_block("json"))
    (tmp_path / "certs").mkdir()
    (tmp_path / "certs" / "orders.crt").write_text(rsa_certificate())
    from_toml, from_json = create({"path": toml_path}), create({"path": json_path})

    orders = await from_toml.resolve_route("//shop/Orders")
    assert [(t.weight, t.priority) for t in orders.targets] == [(3, 0), (1, 0), (1, 1)]
    assert orders.targets[2].broker_instance is not None
    for service in ("//shop/Orders", "//shop/Billing"):
        a, b = await from_toml.resolve_route(service), await from_json.resolve_route(service)
        assert (a.targets, a.lifetime) == (b.targets, b.lifetime)
    a_binding = await from_toml.resolve_binding("//shop/Orders")
    b_binding = await from_json.resolve_binding("//shop/Orders")
    assert a_binding.certificate == b_binding.certificate == rsa_certificate()
    assert (a_binding.anonymous, a_binding.identity, a_binding.lifetime) == (False, "shop-frontend", 30)
    assert (b_binding.anonymous, b_binding.identity, b_binding.lifetime) == (False, "shop-frontend", 30)
    for resolver in (from_toml, from_json):
        with pytest.raises(NotFound):  # //shop/Audit has a binding only
            await resolver.resolve_route("//shop/Audit")
        with pytest.raises(NotFound):  # //shop/Billing has targets only
            await resolver.resolve_binding("//shop/Billing")


async def test_an_unknown_service_is_not_found_for_the_default_lifetime(tmp_path: Path) -> None:
    path = write(tmp_path / "routes.toml", ORDERS_TOML)
    resolver = create({"path": str(path), "default_lifetime": 12.5})

    with pytest.raises(NotFound) as info:
        await resolver.resolve_route("//shop/Nowhere")
    assert info.value.retry_after == 12.5
    assert "//shop/Nowhere" in info.value.message and str(path) in info.value.message


@pytest.mark.parametrize("text", ["", "services = {}\n"], ids=["empty file", "no services"])
async def test_a_file_without_services_knows_none(tmp_path: Path, text: str) -> None:
    resolver = create({"path": str(write(tmp_path / "routes.toml", text))})
    with pytest.raises(NotFound):
        await resolver.resolve_route("//shop/Orders")


# --- edits -----------------------------------------------------------------------------------------------------


async def test_an_edit_takes_effect_on_the_next_question(tmp_path: Path) -> None:
    path = write(tmp_path / "routes.toml", one_target("tcp://10.0.0.2:4022"))
    resolver = create({"path": str(path)})
    assert (await resolver.resolve_route("//shop/Orders")).targets[0].address == "tcp://10.0.0.2:4022"

    write(path, one_target("tcp://10.0.0.7:4022") + '[services."//shop/New"]\ntargets = [{address = "tcp://h:1"}]\n')
    assert (await resolver.resolve_route("//shop/Orders")).targets[0].address == "tcp://10.0.0.7:4022"
    assert (await resolver.resolve_route("//shop/New")).targets[0].address == "tcp://h:1"

    write(path, one_target("tcp://10.0.0.7:4022"))  # an entry removed: the service is unknown again
    with pytest.raises(NotFound):
        await resolver.resolve_route("//shop/New")


async def test_a_file_replaced_by_rename_is_read_again(tmp_path: Path) -> None:
    """The recommended way to edit: write a new file and rename it over the old one (a new inode)."""
    path = write(tmp_path / "routes.json", json.dumps(ORDERS_JSON))
    resolver = create({"path": str(path)})
    assert len((await resolver.resolve_route("//shop/Orders")).targets) == 3

    new = write(
        tmp_path / "routes.json.new",
        json.dumps({"services": {"//shop/Orders": {"targets": [{"address": "tcp://10.0.0.8:4022"}]}}}),
    )
    os.replace(new, path)
    assert (await resolver.resolve_route("//shop/Orders")).targets == (Target(address="tcp://10.0.0.8:4022"),)


async def test_a_broken_edit_keeps_the_last_good_answer_and_warns_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = write(tmp_path / "routes.toml", ORDERS_TOML)
    resolver = create({"path": str(path)})
    good = await resolver.resolve_route("//shop/Orders")
    assert resolver.describe()["last_error"] is None

    with caplog.at_level(logging.WARNING, logger="aiobroker.resolvers.static_file"):
        write(path, ORDERS_TOML.replace("weight = 3", "weight = 0"))
        for _ in range(3):
            assert await resolver.resolve_route("//shop/Orders") == good
        with pytest.raises(NotFound):  # the last good contents answer "not found" too
            await resolver.resolve_route("//shop/Nowhere")

    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, caplog.text
    message = warnings[0].getMessage()
    assert str(path) in message and 'services."//shop/Orders".targets[0]' in message and "weight" in message
    described = resolver.describe()
    assert "weight" in described["last_error"] and described["services"] == 2

    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="aiobroker.resolvers.static_file"):
        write(path, "this is [not toml")  # another broken version: one more warning
        assert await resolver.resolve_route("//shop/Orders") == good
        assert await resolver.resolve_route("//shop/Orders") == good
    assert [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING] == [
        f"resolver file {path}: {resolver.describe()['last_error']}; keeping its last good contents"
    ]
    assert "not valid TOML" in resolver.describe()["last_error"]

    write(path, one_target("tcp://10.0.0.5:4022"))  # a good edit after the broken ones takes effect
    assert (await resolver.resolve_route("//shop/Orders")).targets == (Target(address="tcp://10.0.0.5:4022"),)
    assert resolver.describe()["last_error"] is None
    assert resolver.describe()["services"] == 1


async def test_a_removed_file_keeps_the_last_good_answer(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = write(tmp_path / "routes.toml", ORDERS_TOML)
    resolver = create({"path": str(path)})
    good = await resolver.resolve_route("//shop/Orders")

    path.unlink()
    with caplog.at_level(logging.WARNING, logger="aiobroker.resolvers.static_file"):
        assert await resolver.resolve_route("//shop/Orders") == good
        assert await resolver.resolve_route("//shop/Orders") == good
    assert len(caplog.records) == 1 and "cannot read it" in caplog.records[0].getMessage()

    write(path, one_target("tcp://10.0.0.6:4022"))
    assert (await resolver.resolve_route("//shop/Orders")).targets[0].address == "tcp://10.0.0.6:4022"


# --- never a good version ------------------------------------------------------------------------------------

BROKEN_TOML = {
    "not TOML": ("[services.\n", "not valid TOML"),
    "bad address": (one_target("10.0.0.2:4022"), "targets[0]: address '10.0.0.2:4022' must be tcp://host:port"),
    "bad port": (one_target("tcp://10.0.0.2:99999"), "port from 1 to 65535"),
    "weight 0": (
        '[services."//s"]\ntargets = [{ address = "tcp://h:1", weight = 0 }]',
        'services."//s".targets[0]: target tcp://h:1: weight must be a whole number >= 1',
    ),
    "weight a string": ('[services."//s"]\ntargets = [{ address = "tcp://h:1", weight = "3" }]', "weight"),
    "weight a float": ('[services."//s"]\ntargets = [{ address = "tcp://h:1", weight = 1.5 }]', "weight"),
    "priority negative": ('[services."//s"]\ntargets = [{ address = "tcp://h:1", priority = -1 }]', "priority"),
    "instance not a string": (
        '[services."//s"]\ntargets = [{ address = "tcp://h:1", broker_instance = 7 }]',
        "broker_instance must be a non-empty string",
    ),
    "unknown target key": (
        '[services."//s"]\ntargets = [{ address = "tcp://h:1", wieght = 2 }]',
        "targets[0]: unknown key(s) 'wieght'",
    ),
    "no address": ('[services."//s"]\ntargets = [{ weight = 2 }]', "targets[0]: address is required"),
    "target not a table": ('[services."//s"]\ntargets = ["tcp://h:1"]', "targets[0]: must be a table"),
    "unknown service key": ('[services."//s"]\nttl = 5\ntargets = [{ address = "tcp://h:1" }]', "unknown key(s) 'ttl'"),
    "no targets": ('[services."//s"]\nlifetime = 5\n', 'services."//s".targets: must be a non-empty array'),
    "empty targets": ('[services."//s"]\ntargets = []\n', "remove its entry"),
    "lifetime zero": ('[services."//s"]\nlifetime = 0\ntargets = [{ address = "tcp://h:1" }]', "lifetime"),
    "lifetime a string": ('[services."//s"]\nlifetime = "30"\ntargets = [{ address = "tcp://h:1" }]', "lifetime"),
    "lifetime a bool": ('[services."//s"]\nlifetime = true\ntargets = [{ address = "tcp://h:1" }]', "lifetime"),
    "lifetime infinite": ('[services."//s"]\nlifetime = inf\ntargets = [{ address = "tcp://h:1" }]', "lifetime"),
    "service not a table": ('services = { "//s" = 5 }', 'services."//s": must be a table'),
    "services not a table": ('services = ["//s"]', "services must be a table"),
    "unknown top-level key": ("service = {}\n", "top level: unknown key(s) 'service'"),
    "nested too deeply": ("x = " + "[" * 100_000 + "]" * 100_000, "nested too deeply"),
    "bad service name": ('[services."a\\u0001b"]\ntargets = [{ address = "tcp://h:1" }]', "control character"),
    "binding not a table": ('[services."//s"]\nbinding = "x.crt"\n', 'services."//s".binding: must be a table'),
    "binding without a certificate": (
        '[services."//s".binding]\nanonymous = true\n',
        'services."//s".binding: needs exactly one of certificate (PEM text) and certificate_file (a path), '
        "got neither",
    ),
    "binding with both": (
        '[services."//s".binding]\ncertificate = "x"\ncertificate_file = "x.crt"\n',
        "got certificate and certificate_file",
    ),
    "unknown binding key": (
        '[services."//s".binding]\ncertificate_file = "x.crt"\nanonymus = true\n',
        'services."//s".binding: unknown key(s) \'anonymus\'',
    ),
    "certificate not a string": ('[services."//s".binding]\ncertificate = 5\n', "binding.certificate: must be PEM"),
    "certificate_file empty": ('[services."//s".binding]\ncertificate_file = ""\n', "must be a non-empty path"),
    "anonymous a string": (
        '[services."//s".binding]\ncertificate_file = "x.crt"\nanonymous = "yes"\n',
        'services."//s".binding.anonymous: must be true or false',
    ),
    "identity empty": (
        '[services."//s".binding]\ncertificate_file = "x.crt"\nidentity = ""\n',
        'services."//s".binding.identity: identity name must be a non-empty string',
    ),
    "binding and empty targets": ('[services."//s"]\ntargets = []\nbinding = { certificate_file = "x.crt" }\n',
                                  "targets: must be a non-empty array"),
}


@pytest.mark.parametrize(("text", "reason"), BROKEN_TOML.values(), ids=BROKEN_TOML.keys())
async def test_a_file_broken_from_the_start_is_an_error_with_the_reason(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, text: str, reason: str
) -> None:
    path = write(tmp_path / "routes.toml", text)
    resolver = create({"path": str(path)})
    with caplog.at_level(logging.WARNING, logger="aiobroker.resolvers.static_file"):
        for _ in range(2):  # the same reason every time, not a NotFound
            with pytest.raises(ResolverError) as info:
                await resolver.resolve_route("//s")
            assert type(info.value) is ResolverError
            assert reason in info.value.message and str(path) in info.value.message, info.value.message
    assert not caplog.records  # the raised error is the report; the node shows it
    assert reason in resolver.describe()["last_error"]
    assert resolver.describe()["services"] is None


BROKEN_JSON = {
    "not JSON": ('{"services": ', "not valid JSON"),
    "a list at the top": ("[]", "the top level must be a table/object"),
    "a duplicate service": (
        '{"services": {"//s": {"targets": [{"address": "tcp://h:1"}]}, "//s": {"targets": []}}}',
        "key '//s' appears twice",
    ),
    "NaN lifetime": ('{"services": {"//s": {"lifetime": NaN, "targets": [{"address": "tcp://h:1"}]}}}', "NaN"),
    "null targets": ('{"services": {"//s": {"targets": null}}}', "targets: must be a non-empty array"),
    "weight 2.0": ('{"services": {"//s": {"targets": [{"address": "tcp://h:1", "weight": 2.0}]}}}', "weight"),
    "nested too deeply": ("[" * 100_000 + "]" * 100_000, "not valid JSON"),
}


@pytest.mark.parametrize(("text", "reason"), BROKEN_JSON.values(), ids=BROKEN_JSON.keys())
async def test_a_broken_json_file_is_an_error_with_the_reason(tmp_path: Path, text: str, reason: str) -> None:
    resolver = create({"path": str(write(tmp_path / "routes.json", text))})
    with pytest.raises(ResolverError) as info:
        await resolver.resolve_route("//s")
    assert type(info.value) is ResolverError and reason in info.value.message, info.value.message


async def test_a_file_that_is_not_utf8_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "routes.toml"
    path.write_bytes(b'[services."\xff"]\n')
    with pytest.raises(ResolverError, match="not UTF-8"):
        await create({"path": str(path)}).resolve_route("//s")


async def test_a_missing_file_is_an_error_until_it_appears(tmp_path: Path) -> None:
    path = tmp_path / "later" / "routes.toml"
    resolver = create({"path": str(path)})  # the file need not exist when the resolver is made
    for _ in range(2):
        with pytest.raises(ResolverError) as info:
            await resolver.resolve_route("//shop/Orders")
        assert type(info.value) is ResolverError
        assert str(path) in info.value.message and "cannot read it" in info.value.message

    path.parent.mkdir()
    write(path, ORDERS_TOML)
    assert (await resolver.resolve_route("//shop/Orders")).targets == ORDERS_TARGETS


async def test_a_broken_start_then_a_good_edit_answers(tmp_path: Path) -> None:
    path = write(tmp_path / "routes.toml", "nonsense =")
    resolver = create({"path": str(path)})
    with pytest.raises(ResolverError):
        await resolver.resolve_route("//shop/Orders")
    write(path, ORDERS_TOML)
    assert (await resolver.resolve_route("//shop/Orders")).targets == ORDERS_TARGETS
    assert resolver.describe() == {
        "resolver": "static_file",
        "path": str(path),
        "default_lifetime": 60.0,
        "services": 2,
        "last_error": None,
    }


# --- options, and loading through the entry point -----------------------------------------------------------

BAD_OPTIONS: dict[str, tuple[dict[str, Any], str]] = {
    "no path": ({}, "path is required"),
    "path not a string": ({"path": 5}, "path must be a non-empty string"),
    "empty path": ({"path": ""}, "path must be a non-empty string"),
    "path with another suffix": ({"path": "routes.yaml"}, "path 'routes.yaml' must end in .toml or .json"),
    "default_lifetime a string": ({"path": "r.toml", "default_lifetime": "60"}, "default_lifetime"),
    "default_lifetime zero": ({"path": "r.toml", "default_lifetime": 0}, "default_lifetime"),
    "default_lifetime negative": ({"path": "r.toml", "default_lifetime": -5}, "default_lifetime"),
    "default_lifetime a bool": ({"path": "r.toml", "default_lifetime": True}, "default_lifetime"),
    "default_lifetime infinite": ({"path": "r.toml", "default_lifetime": float("inf")}, "default_lifetime"),
    "unknown option": ({"path": "r.toml", "lifetime": 5}, "unknown option(s) lifetime"),
}


@pytest.mark.parametrize(("options", "reason"), BAD_OPTIONS.values(), ids=BAD_OPTIONS.keys())
def test_bad_options_are_config_errors_naming_the_key(options: dict[str, Any], reason: str) -> None:
    with pytest.raises(ConfigError) as info:
        create(options)
    assert reason in info.value.message and info.value.message.startswith("[resolver] ")


async def test_loaded_through_the_entry_point(tmp_path: Path) -> None:
    path = write(tmp_path / "routes.toml", ORDERS_TOML)
    resolver = load_resolver("static_file", {"path": str(path), "default_lifetime": 5})
    assert isinstance(resolver, StaticFileResolver) and resolver.name == "static_file"
    assert (await resolver.resolve_route("//shop/Orders")).targets == ORDERS_TARGETS
    await resolver.aclose()
    with pytest.raises(ConfigError, match="path is required"):
        load_resolver("static_file", {})


# --- remote service bindings -----------------------------------------------------------------------------------


def inline_binding(service: str, pem: str, extra: str = "") -> str:
    """A TOML entry with one target and a binding that holds the certificate itself, in a multi-line string."""
    return (
        f'[services."{service}"]\nlifetime = 30\ntargets = [{{ address = "tcp://10.0.0.2:4022" }}]\n'
        f'[services."{service}".binding]\n{extra}certificate = """\n{pem}"""\n'
    )


async def test_a_binding_with_the_certificate_in_the_file(tmp_path: Path) -> None:
    """Text around the PEM block (as openssl writes it) is left out of the answer."""
    pem = "Bag Attributes\n    friendlyName: orders\n" + rsa_certificate()
    options = 'anonymous = true\nidentity = "fe"\n'
    path = write(tmp_path / "routes.toml", inline_binding("//shop/Orders", pem, options))
    resolver = create({"path": str(path), "default_lifetime": 45})

    answer = await resolver.resolve_binding("//shop/Orders")

    assert answer == BindingAnswer(service_name="//shop/Orders", certificate=rsa_certificate(), anonymous=True,
                                   identity="fe", lifetime=30, source=str(path))
    assert (await resolver.resolve_route("//shop/Orders")).targets == (Target(address="tcp://10.0.0.2:4022"),)


async def test_a_binding_from_a_certificate_file_in_json(tmp_path: Path) -> None:
    """The path is relative to the routes file's directory (not the working directory); the default lifetime
    holds when the entry gives none."""
    (tmp_path / "certs").mkdir()
    cert_path = tmp_path / "certs" / "orders.crt"
    cert_path.write_text(rsa_certificate())
    path = write(tmp_path / "routes.json", json.dumps(
        {"services": {"//shop/Orders": {"binding": {"certificate_file": "certs/orders.crt"}}}}))
    resolver = create({"path": str(path), "default_lifetime": 45})

    answer = await resolver.resolve_binding("//shop/Orders")

    assert (answer.certificate, answer.anonymous, answer.identity, answer.lifetime) == (rsa_certificate(), False, None, 45)
    assert str(path) in answer.source and str(cert_path) in answer.source
    with pytest.raises(NotFound, match="has no targets for service '//shop/Orders'") as info:
        await resolver.resolve_route("//shop/Orders")  # a binding only
    assert info.value.retry_after == 45


async def test_a_renewed_certificate_file_is_read_at_the_next_question(tmp_path: Path) -> None:
    cert_path = tmp_path / "orders.crt"
    cert_path.write_text(rsa_certificate("first"))
    path = write(tmp_path / "routes.toml", '[services."//shop/Orders".binding]\ncertificate_file = "orders.crt"\n')
    resolver = create({"path": str(path)})
    assert (await resolver.resolve_binding("//shop/Orders")).certificate == rsa_certificate("first")

    cert_path.write_text(rsa_certificate("second"))  # the routes file is not touched
    assert (await resolver.resolve_binding("//shop/Orders")).certificate == rsa_certificate("second")


async def test_an_absolute_certificate_file_is_used_as_it_is(tmp_path: Path) -> None:
    cert_path = tmp_path / "elsewhere" / "orders.pem"
    cert_path.parent.mkdir()
    cert_path.write_text(rsa_certificate())
    (tmp_path / "conf").mkdir()
    path = write(tmp_path / "conf" / "routes.json",
                 json.dumps({"services": {"//shop/Orders": {"binding": {"certificate_file": str(cert_path)}}}}))
    assert (await create({"path": str(path)}).resolve_binding("//shop/Orders")).certificate == rsa_certificate()


async def test_no_binding_is_not_found(tmp_path: Path) -> None:
    path = write(tmp_path / "routes.toml", ORDERS_TOML)
    resolver = create({"path": str(path), "default_lifetime": 12.5})
    with pytest.raises(NotFound) as has_targets_only:
        await resolver.resolve_binding("//shop/Orders")
    with pytest.raises(NotFound) as unknown:
        await resolver.resolve_binding("//shop/Nowhere")
    assert f"{path} has no binding for service '//shop/Orders'" == has_targets_only.value.message
    assert has_targets_only.value.retry_after == 30  # the entry's lifetime
    assert "'//shop/Nowhere'" in unknown.value.message and unknown.value.retry_after == 12.5


CERTIFICATE_PROBLEMS = {
    "no PEM block": ("MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8A", "no -----BEGIN CERTIFICATE----- line"),
    "bad base64": ("-----BEGIN CERTIFICATE-----\nnot base64!!\n-----END CERTIFICATE-----\n",
                   "the certificate does not parse"),
    "not a certificate inside": ("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
                                 "the certificate does not parse"),
    "RSA 1024": (rsa_certificate("weak", 1024), "an RSA key of 1024 bits, too small for dialog security"),
}


@pytest.mark.parametrize(("pem", "reason"), CERTIFICATE_PROBLEMS.values(), ids=CERTIFICATE_PROBLEMS.keys())
async def test_a_certificate_in_the_file_that_does_not_parse_or_cannot_be_used_is_an_error_naming_the_service(
    tmp_path: Path, pem: str, reason: str
) -> None:
    """Part of the file: the file is broken (for routes too) until it is fixed, as with any other mistake."""
    path = write(tmp_path / "routes.toml", inline_binding("//shop/Orders", pem))
    resolver = create({"path": str(path)})
    for ask in (resolver.resolve_binding, resolver.resolve_route):
        with pytest.raises(ResolverError) as info:
            await ask("//shop/Orders")
        message = info.value.message
        assert type(info.value) is ResolverError
        assert message.startswith(f'{path}: services."//shop/Orders".binding.certificate: '), message
        assert reason in message, message


async def test_a_broken_certificate_edit_keeps_the_last_good_binding(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = write(tmp_path / "routes.toml", inline_binding("//shop/Orders", rsa_certificate()))
    resolver = create({"path": str(path)})
    good = await resolver.resolve_binding("//shop/Orders")

    with caplog.at_level(logging.WARNING, logger="aiobroker.resolvers.static_file"):
        write(path, inline_binding("//shop/Orders", rsa_certificate().replace("MII", "MIJ", 1)))
        assert await resolver.resolve_binding("//shop/Orders") == good
        assert await resolver.resolve_binding("//shop/Orders") == good
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and 'services."//shop/Orders".binding.certificate' in warnings[0], warnings

    write(path, one_target("tcp://10.0.0.5:4022"))  # the binding removed: not found any more
    with pytest.raises(NotFound):
        await resolver.resolve_binding("//shop/Orders")


@pytest.mark.parametrize(("contents", "reason"), [
    (None, "cannot read it: No such file or directory"),
    ("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n", "the certificate does not parse"),
    ("just text", "no -----BEGIN CERTIFICATE----- line"),
    (b"\x30\x82\x01\x0a", "this looks like a DER (binary) certificate"),
], ids=["missing", "not a certificate", "no PEM block", "DER"])
async def test_a_bad_certificate_file_is_an_error_naming_the_service_and_the_file(
    tmp_path: Path, contents: str | bytes | None, reason: str
) -> None:
    """Read when asked: routes, and the bindings of other services, keep working."""
    cert_path = tmp_path / "orders.crt"
    if isinstance(contents, bytes):
        cert_path.write_bytes(contents)
    elif contents is not None:
        cert_path.write_text(contents)
    (tmp_path / "billing.crt").write_text(rsa_certificate())
    path = write(tmp_path / "routes.toml", one_target("tcp://10.0.0.2:4022") + textwrap.dedent("""
        [services."//shop/Orders".binding]
        certificate_file = "orders.crt"
        [services."//shop/Billing".binding]
        certificate_file = "billing.crt"
        """))
    resolver = create({"path": str(path)})

    with pytest.raises(ResolverError) as info:
        await resolver.resolve_binding("//shop/Orders")
    message = info.value.message
    assert type(info.value) is ResolverError
    assert f"{path}: the binding for service '//shop/Orders': certificate_file {cert_path}: " in message, message
    assert reason in message, message
    assert (await resolver.resolve_route("//shop/Orders")).targets == (Target(address="tcp://10.0.0.2:4022"),)
    assert (await resolver.resolve_binding("//shop/Billing")).certificate == rsa_certificate()
    assert resolver.describe()["last_error"] is None  # the routes file itself is fine


async def test_a_certificate_file_over_the_limit_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(static_file, "MAX_CERTIFICATE_BYTES", 100)
    (tmp_path / "orders.crt").write_text(rsa_certificate())
    path = write(tmp_path / "routes.toml", '[services."//shop/Orders".binding]\ncertificate_file = "orders.crt"\n')
    with pytest.raises(ResolverError, match="over 100 bytes"):
        await create({"path": str(path)}).resolve_binding("//shop/Orders")
