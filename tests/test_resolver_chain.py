"""The chain resolver: members asked in order, NotFound falls through, failures are reported together.

The chain's own logic is tested with small in-test resolvers (they say what they were asked and whether they were
closed); loading through the entry points is tested with real static_file members on real files.
"""

from __future__ import annotations

import logging
import textwrap
from pathlib import Path
from typing import Any

import pytest
from cert_helpers import rsa_certificate

from aiobroker.errors import ConfigError
from aiobroker.resolver import BindingAnswer, NotFound, Resolver, ResolverError, RouteAnswer, Target, load_resolver
from resolvers.chain import ChainResolver, create
from resolvers.static_file import StaticFileResolver

pytestmark = pytest.mark.anyio


class Fake(Resolver):
    """Answers, says NotFound, or fails, as told; records the questions and whether it was closed. Binding
    questions: ``binding`` says what to do, or (None) the interface's default, "routes only"."""

    def __init__(self, name: str, outcome: RouteAnswer | BaseException,
                 binding: BindingAnswer | BaseException | None = None) -> None:
        self.name = name
        self.outcome = outcome
        self.binding = binding
        self.asked: list[str] = []
        self.asked_binding: list[str] = []
        self.closed = False

    async def resolve_route(self, service_name: str) -> RouteAnswer:
        self.asked.append(service_name)
        if isinstance(self.outcome, BaseException):
            raise self.outcome
        return self.outcome

    async def resolve_binding(self, service_name: str) -> BindingAnswer:
        self.asked_binding.append(service_name)
        if self.binding is None:
            return await super().resolve_binding(service_name)
        if isinstance(self.binding, BaseException):
            raise self.binding
        return self.binding

    async def aclose(self) -> None:
        self.closed = True

    def describe(self) -> dict[str, Any]:
        return {"resolver": self.name}


class FailsToClose(Fake):
    async def aclose(self) -> None:
        self.closed = True
        raise OSError(f"{self.name} would not close")


def answer(address: str, source: str) -> RouteAnswer:
    return RouteAnswer(service_name="//s", targets=(Target(address=address),), lifetime=10, source=source)


def answering(name: str, address: str = "tcp://h:1") -> Fake:
    return Fake(name, answer(address, name))


def not_found(name: str, retry_after: float | None = None) -> Fake:
    return Fake(name, NotFound(f"{name} knows no such service", retry_after=retry_after))


def failing(name: str, reason: str, retry_after: float | None = None) -> Fake:
    return Fake(name, ResolverError(reason, retry_after=retry_after))


# --- asking in order -------------------------------------------------------------------------------------------


async def test_the_first_answer_wins_and_later_members_are_not_asked() -> None:
    first, second = answering("first", "tcp://a:1"), answering("second", "tcp://b:1")
    chain = ChainResolver([first, second])

    result = await chain.resolve_route("//s")

    assert result is first.outcome
    assert (first.asked, second.asked) == (["//s"], [])


async def test_not_found_falls_through_to_the_next_member() -> None:
    members = [not_found("file", 60), not_found("dns", 5), answering("http", "tcp://c:1")]
    result = await ChainResolver(members).resolve_route("//s")
    assert result.source == "http" and result.targets[0].address == "tcp://c:1"
    assert [m.asked for m in members] == [["//s"]] * 3


async def test_a_failure_then_an_answer_is_an_answer() -> None:
    members = [failing("dns", "time-out after 2 s"), answering("file")]
    assert (await ChainResolver(members).resolve_route("//s")).source == "file"


@pytest.mark.parametrize(
    ("after", "expected"),
    [((60, 5, 30), 5), ((None, 7, None), 7), ((None, None), None), ((15,), 15)],
    ids=["smallest", "some not given", "none given", "one member"],
)
async def test_all_not_found_is_not_found_with_the_smallest_retry_after(
    after: tuple[float | None, ...], expected: float | None
) -> None:
    members = [not_found(f"r{i}", a) for i, a in enumerate(after)]
    with pytest.raises(NotFound) as info:
        await ChainResolver(members).resolve_route("//s")
    assert info.value.retry_after == expected
    assert "//s" in info.value.message
    assert all(m.asked == ["//s"] for m in members)


async def test_a_failure_and_no_answer_is_an_error_listing_every_reason() -> None:
    members = [not_found("file", 60), failing("dns", "time-out after 2 s asking 10.0.0.53"), failing("http", "503")]
    with pytest.raises(ResolverError) as info:
        await ChainResolver(members).resolve_route("//s")
    error = info.value
    assert type(error) is ResolverError  # not a NotFound: one source could not say
    assert "#1 file: file knows no such service" in error.message
    assert "#2 dns: time-out after 2 s asking 10.0.0.53" in error.message
    assert "#3 http: 503" in error.message
    assert error.retry_after is None  # a failing member gave no time: the node's own back-off decides


@pytest.mark.parametrize(
    ("nf_after", "failed_after", "expected"),
    [(60, (5, 9), 5), (2, (5, 9), 2), (None, (5,), 5), (60, (5, None), None)],
    ids=["smallest failure", "sooner not-found", "only failures", "a failure without a time"],
)
async def test_an_error_retries_when_every_failed_member_might_work(
    nf_after: float | None, failed_after: tuple[float | None, ...], expected: float | None
) -> None:
    members = [not_found("file", nf_after)] + [failing(f"f{i}", "down", a) for i, a in enumerate(failed_after)]
    with pytest.raises(ResolverError) as info:
        await ChainResolver(members).resolve_route("//s")
    assert type(info.value) is ResolverError and info.value.retry_after == expected


async def test_a_member_that_breaks_its_contract_is_a_failure_not_a_crash(caplog: pytest.LogCaptureFixture) -> None:
    members = [Fake("buggy", RuntimeError("oops")), not_found("file")]
    with caplog.at_level(logging.ERROR, logger="aiobroker.resolvers.chain"):
        with pytest.raises(ResolverError) as info:
            await ChainResolver(members).resolve_route("//s")
    assert type(info.value) is ResolverError
    assert "#1 buggy: failed with RuntimeError: oops" in info.value.message
    assert members[1].asked == ["//s"]
    assert len(caplog.records) == 1 and caplog.records[0].exc_info is not None


# --- closing and describing ----------------------------------------------------------------------------------


async def test_aclose_closes_every_member_even_after_a_failure(caplog: pytest.LogCaptureFixture) -> None:
    members = [answering("a"), FailsToClose("b", NotFound("x")), FailsToClose("c", NotFound("x")), answering("d")]
    with caplog.at_level(logging.WARNING, logger="aiobroker.resolvers.chain"):
        with pytest.raises(OSError, match="b would not close"):
            await ChainResolver(members).aclose()
    assert all(m.closed for m in members)
    assert "c would not close" in caplog.text


async def test_describe_lists_the_members_in_order() -> None:
    chain = ChainResolver([answering("file"), not_found("dns")])
    assert chain.describe() == {"resolver": "chain", "resolvers": [{"resolver": "file"}, {"resolver": "dns"}]}
    await chain.aclose()


# --- building through the entry points ------------------------------------------------------------------------


def routes(path: Path, service: str, address: str) -> str:
    path.write_text(
        textwrap.dedent(
            f"""
            [services."{service}"]
            targets = [{{ address = "{address}" }}]
            """
        ),
        encoding="utf-8",
    )
    return str(path)


async def test_loaded_through_the_entry_point_with_static_file_members(tmp_path: Path) -> None:
    first = routes(tmp_path / "local.toml", "//shop/Orders", "tcp://10.0.0.1:4022")
    second = routes(tmp_path / "shared.toml", "//shop/Billing", "tcp://10.0.0.2:4022")
    chain = load_resolver(
        "chain",
        {
            "resolvers": [
                {"kind": "static_file", "path": first},
                {"kind": "static_file", "path": second, "default_lifetime": 7},
            ]
        },
    )
    assert isinstance(chain, ChainResolver) and chain.name == "chain"
    assert all(isinstance(m, StaticFileResolver) for m in chain.members)

    orders = await chain.resolve_route("//shop/Orders")
    billing = await chain.resolve_route("//shop/Billing")
    assert (orders.source, orders.targets[0].address) == (first, "tcp://10.0.0.1:4022")
    assert (billing.source, billing.targets[0].address) == (second, "tcp://10.0.0.2:4022")
    with pytest.raises(NotFound) as info:
        await chain.resolve_route("//shop/Nowhere")
    assert info.value.retry_after == 7  # the smaller of 60 (the default) and 7
    assert [m["path"] for m in chain.describe()["resolvers"]] == [first, second]
    await chain.aclose()


async def test_a_missing_file_in_a_chain_is_reported_with_the_others(tmp_path: Path) -> None:
    good = routes(tmp_path / "shared.toml", "//shop/Billing", "tcp://10.0.0.2:4022")
    missing = str(tmp_path / "missing.toml")
    chain = create({"resolvers": [{"kind": "static_file", "path": missing}, {"kind": "static_file", "path": good}]})

    assert (await chain.resolve_route("//shop/Billing")).source == good  # the next member still answers
    with pytest.raises(ResolverError) as info:
        await chain.resolve_route("//shop/Orders")
    assert type(info.value) is ResolverError
    assert f"#1 static_file: {missing}: cannot read it" in info.value.message
    assert f"#2 static_file: {good} has no entry for service '//shop/Orders'" in info.value.message


BAD_OPTIONS: dict[str, tuple[dict[str, Any], str]] = {
    "no resolvers": ({}, "resolvers is required"),
    "empty resolvers": ({"resolvers": []}, "resolvers is required"),
    "resolvers not an array": ({"resolvers": {"kind": "static_file"}}, "resolvers is required"),
    "unknown option": (
        {"resolvers": [{"kind": "static_file", "path": "r.toml"}], "order": 1},
        "unknown option(s) order",
    ),
    "member not a table": ({"resolvers": ["static_file"]}, "resolvers #1: must be a table"),
    "member without kind": ({"resolvers": [{"path": "r.toml"}]}, "resolvers #1: kind is required"),
    "unknown kind": (
        {"resolvers": [{"kind": "static_file", "path": "r.toml"}, {"kind": "carrier_pigeon"}]},
        "resolvers #2 (carrier_pigeon): kind 'carrier_pigeon' is not a registered resolver",
    ),
    "bad member option": (
        {"resolvers": [{"kind": "static_file", "path": "r.toml", "default_lifetime": -1}]},
        "resolvers #1 (static_file): default_lifetime must be a number of seconds > 0",
    ),
    "member missing its path": (
        {"resolvers": [{"kind": "static_file"}]},
        "resolvers #1 (static_file): path is required",
    ),
}


@pytest.mark.parametrize(("options", "reason"), BAD_OPTIONS.values(), ids=BAD_OPTIONS.keys())
def test_bad_options_are_config_errors_naming_the_key(options: dict[str, Any], reason: str) -> None:
    with pytest.raises(ConfigError) as info:
        create(options)
    assert reason in info.value.message and info.value.message.startswith("[resolver] "), info.value.message


# --- remote service bindings ---------------------------------------------------------------------------------



def binding(source: str) -> BindingAnswer:
    return BindingAnswer(service_name="//s", certificate=rsa_certificate(), lifetime=10, source=source)


def binding_from(name: str) -> Fake:
    """Answers bindings (and says NotFound to routes)."""
    return Fake(name, NotFound(f"{name} knows no routes"), binding(name))


async def test_a_binding_falls_through_members_that_say_not_found() -> None:
    """A routes-only member (the interface's default NotFound), one without a binding, then one with it."""
    members = [answering("dns"), Fake("file", answer("tcp://a:1", "file"), NotFound("no binding", retry_after=5)),
               binding_from("http"), binding_from("later")]
    chain = ChainResolver(members)

    result = await chain.resolve_binding("//s")

    assert result is members[2].binding
    assert [m.asked_binding for m in members] == [["//s"], ["//s"], ["//s"], []]
    assert [m.asked for m in members] == [[], [], [], []]  # a binding question asks no routes
    assert (await chain.resolve_route("//s")).source == "dns"  # and routes still come from the first


async def test_no_binding_anywhere_is_not_found_with_the_smallest_retry_after() -> None:
    members = [answering("dns"), Fake("file", answer("tcp://a:1", "file"), NotFound("no binding", retry_after=5)),
               Fake("http", answer("tcp://a:1", "http"), NotFound("404", retry_after=30))]
    with pytest.raises(NotFound) as info:
        await ChainResolver(members).resolve_binding("//s")
    message = info.value.message
    assert message.startswith("no resolver has a binding for service '//s' ("), message
    assert "#1 dns: the dns resolver answers route requests only" in message
    assert "#2 file: no binding" in message and "#3 http: 404" in message
    assert info.value.retry_after == 5


async def test_a_binding_failure_and_no_answer_is_an_error_listing_every_reason(
    caplog: pytest.LogCaptureFixture,
) -> None:
    members = [Fake("file", answer("tcp://a:1", "file"), ResolverError("bad certificate for '//s'", retry_after=9)),
               Fake("buggy", answer("tcp://a:1", "buggy"), RuntimeError("oops")), answering("dns")]
    with caplog.at_level(logging.ERROR, logger="aiobroker.resolvers.chain"):
        with pytest.raises(ResolverError) as info:
            await ChainResolver(members).resolve_binding("//s")
    error = info.value
    assert type(error) is ResolverError
    assert error.message.startswith("no resolver answered for a binding for service '//s': "), error.message
    assert "#1 file: bad certificate for '//s'" in error.message
    assert "#2 buggy: failed with RuntimeError: oops" in error.message
    assert "#3 dns: the dns resolver answers route requests only" in error.message
    assert error.retry_after is None  # the buggy member gave no time
    assert len(caplog.records) == 1 and "binding request" in caplog.records[0].getMessage()


async def test_a_binding_failure_then_an_answer_is_an_answer() -> None:
    members = [Fake("file", answer("tcp://a:1", "file"), ResolverError("cannot read it")), binding_from("http")]
    assert (await ChainResolver(members).resolve_binding("//s")).source == "http"


async def test_static_file_members_answer_routes_and_bindings_from_different_files(tmp_path: Path) -> None:
    """The first file knows where //shop/Orders is but has no binding for it; the second has the binding."""
    first = routes(tmp_path / "routes.toml", "//shop/Orders", "tcp://10.0.0.1:4022")
    (tmp_path / "orders.crt").write_text(rsa_certificate())
    second = tmp_path / "bindings.json"
    second.write_text(
        '{"services": {"//shop/Orders": {"lifetime": 20, "binding": {"certificate_file": "orders.crt", '
        '"identity": "fe"}}}}',
        encoding="utf-8",
    )
    chain = create({"resolvers": [{"kind": "static_file", "path": first},
                                  {"kind": "static_file", "path": str(second), "default_lifetime": 7}]})

    route = await chain.resolve_route("//shop/Orders")
    found = await chain.resolve_binding("//shop/Orders")
    assert (route.source, route.targets[0].address) == (first, "tcp://10.0.0.1:4022")
    assert (found.certificate, found.identity, found.lifetime) == (rsa_certificate(), "fe", 20)
    assert str(second) in found.source
    with pytest.raises(NotFound) as info:
        await chain.resolve_binding("//shop/Nowhere")
    assert f"#1 static_file: {first} has no binding for service '//shop/Nowhere'" in info.value.message
    assert info.value.retry_after == 7
    await chain.aclose()


def test_what_a_chain_asks_names_each_member_in_turn(tmp_path: Path) -> None:
    routes = tmp_path / "routes.toml"
    chain = ChainResolver([StaticFileResolver(routes), not_found("dns")])
    # what diagnose says dynamic routing asks: the members in order, each as precisely as it can say
    assert chain.asks("//s") == (
        f"the chain resolver (in turn, #1 static_file: the static_file resolver (file {routes}); #2 dns: the dns resolver)"
    )
