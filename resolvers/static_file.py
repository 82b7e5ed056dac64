"""The ``static_file`` resolver: where services are, and how to secure conversations to them, written down in a
TOML or JSON file an operator edits.

For small federations and for tests, a file is the simplest source of routes: no DNS zone or HTTP service to run.
The node's config names it::

    [resolver]
    kind = "static_file"
    path = "routes.toml"        # .toml or .json; a relative path is resolved by the node
    default_lifetime = 60       # optional: seconds an answer (or a "no such service") holds; default 60

The file maps service names to targets, a remote service binding, or both. In TOML:

.. code-block:: toml

    [services."//shop/Orders"]
    lifetime = 30                       # optional, seconds; else default_lifetime
    targets = [
      { address = "tcp://10.0.0.2:4022", weight = 3, priority = 0 },
      { address = "tcp://10.0.0.3:4022" },              # weight 1, priority 0
      { address = "tcp://10.0.0.9:4022", priority = 1, broker_instance = "b7e1c0de-backup" },
    ]

    [services."//shop/Orders".binding]          # optional: answers binding requests
    certificate_file = "certs/orders.crt"       # PEM; relative to this file's directory
    anonymous = false                           # optional, default false
    identity = "shop-frontend"                  # optional: the local identity that signs

    [services."//shop/Billing"]
    targets = [{ address = "tcp://10.0.0.4:4022" }]

    [services."//shop/Audit".binding]           # a binding without targets (routes come from elsewhere)
    certificate_file = "/etc/aiobroker/audit.crt"
    anonymous = true

The same in JSON:

.. code-block:: json

    {
      "services": {
        "//shop/Orders": {
          "lifetime": 30,
          "targets": [
            {"address": "tcp://10.0.0.2:4022", "weight": 3, "priority": 0},
            {"address": "tcp://10.0.0.3:4022"},
            {"address": "tcp://10.0.0.9:4022", "priority": 1, "broker_instance": "b7e1c0de-backup"}
          ],
          "binding": {
            "certificate_file": "certs/orders.crt",
            "anonymous": false,
            "identity": "shop-frontend"
          }
        },
        "//shop/Billing": {
          "targets": [{"address": "tcp://10.0.0.4:4022"}]
        },
        "//shop/Audit": {
          "binding": {"certificate_file": "/etc/aiobroker/audit.crt", "anonymous": true}
        }
      }
    }

A target has ``address`` (``tcp://host:port``, required), ``weight`` (whole number >= 1, default 1: its share of
the load among targets of the same priority), ``priority`` (whole number >= 0, default 0: lower is preferred, only
the lowest present is used) and ``broker_instance`` (optional string: the instance that must be found there). A
service with no entry gets a "not found" answer, held for ``default_lifetime`` seconds. Any other key, at any level,
is an error: a misspelt ``wieght`` would otherwise be silently ignored.

A ``binding`` (see ``docs/security.md``, "Remote service bindings") answers a binding request for the service
(MissingRemoteServiceBinding) with the remote service owner's certificate. It has exactly one of ``certificate``
(the PEM text itself: in TOML a multi-line string, in JSON a string with ``\\n`` line breaks) and
``certificate_file`` (a path to a PEM file, relative to this file's directory unless absolute); ``anonymous``
(boolean, default false: the target does not learn the initiator's identity); and ``identity`` (optional: the local
identity that signs for the initiator; absent, the node's own). The entry's ``lifetime`` holds for the binding too.
An entry needs ``targets``, a ``binding`` or both: a route question about a service with only a binding, or a
binding question about one with only targets, is "not found" (held for the entry's lifetime).

Certificates are checked with :func:`aiobroker.resolver.load_certificate`: a certificate must parse as X.509
and have a key dialog security can use (RSA of at least 2048 bits, or EC on P-256, P-384 or P-521). A
``certificate`` written in the file is checked when the file is read: one that fails is a broken version, as below.
A ``certificate_file`` is read, and checked, at every binding question (they are rare: one per service per
lifetime), so a renewed certificate takes effect without touching this file; a missing or unreadable one, or one
that fails the check, fails that question with :class:`~aiobroker.resolver.ResolverError` naming the service and the
certificate file. The answer carries the certificate alone (the first one in the text), written out again as PEM.

A broken edit is reported and ignored: a version that does not parse or does not validate, or a file that
disappears, leaves the last good contents in service; one WARNING names the file and the problem (once per broken
version, not once per question), and :meth:`StaticFileResolver.describe` shows it until a good version is read. Only
when there has never been a good version does a question fail, with :class:`~aiobroker.resolver.ResolverError` giving
the reason: there is nothing better to answer with, and the node shows that reason and asks again later.
"""

from __future__ import annotations

import json
import logging
import math
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.serialization import Encoding

from aiobroker.resolver import (
    Answers,
    BindingAnswer,
    ConfigError,
    InvalidArgument,
    NotFound,
    Resolver,
    ResolverError,
    RouteAnswer,
    SecurityError,
    Target,
    check_name,
    load_certificate,
)

log = logging.getLogger("aiobroker.resolvers.static_file")

#: Seconds an answer from the file holds when neither the entry nor the options say.
DEFAULT_LIFETIME = 60.0

_OPTIONS = ("path", "default_lifetime")
_FORMATS = (".toml", ".json")
_TOP_KEYS = ("services",)
_SERVICE_KEYS = ("lifetime", "targets", "binding")
_TARGET_KEYS = ("address", "weight", "priority", "broker_instance")
_BINDING_KEYS = ("certificate", "certificate_file", "anonymous", "identity")
#: A certificate_file bigger than this is not a certificate (and is not read whole).
MAX_CERTIFICATE_BYTES = 1024 * 1024

#: What identifies one version of the file: (st_dev, st_ino, st_size, st_mtime_ns, st_ctime_ns). The ctime is in
#: there too because it changes on every write even when a tool puts the mtime back (``cp -p``, ``touch -r``).
_Version = tuple[int, int, int, int, int]


class _Invalid(Exception):
    """A problem with the file's contents; the message says where (``services."//x".targets[2].weight``)."""


@dataclass(frozen=True, slots=True)
class _Binding:
    certificate: str | None  #: PEM, already checked; None: read ``certificate_file`` when asked
    certificate_file: str | None  #: as written in the file (relative to the file's directory unless absolute)
    anonymous: bool
    identity: str | None


@dataclass(frozen=True, slots=True)
class _Entry:
    targets: tuple[Target, ...]  #: empty: a service with a binding only
    lifetime: float | None  #: None: the resolver's default_lifetime
    binding: _Binding | None = None


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _positive_seconds(value: Any) -> bool:
    return _is_number(value) and 0 < value < math.inf


def _unknown(where: str, given: Mapping[str, Any], allowed: tuple[str, ...]) -> None:
    extra = sorted(set(given) - set(allowed))
    if extra:
        names = ", ".join(repr(k) for k in extra)
        raise _Invalid(f"{where}: unknown key(s) {names}; allowed: {', '.join(allowed)}")


def _json_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """JSON keeps the last of two equal keys without a word; TOML refuses them. Refuse them here too, so that a
    service pasted twice is noticed instead of half ignored."""
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise _Invalid(f"key {key!r} appears twice in one object")
        result[key] = value
    return result


def _reject_constant(name: str) -> Any:
    raise _Invalid(f"{name} is not a number this file accepts")


def _parse(text: str, suffix: str) -> Any:
    kind = "TOML" if suffix == ".toml" else "JSON"
    try:
        if suffix == ".toml":
            return tomllib.loads(text)
        return json.loads(text, object_pairs_hook=_json_object, parse_constant=_reject_constant)
    except (tomllib.TOMLDecodeError, json.JSONDecodeError) as exc:
        raise _Invalid(f"not valid {kind}: {exc}") from None
    except RecursionError:  # both parsers recurse on nested arrays; a file of ten thousand "[" is not routes
        raise _Invalid(f"not valid {kind}: nested too deeply") from None


def _target(where: str, raw: Any) -> Target:
    if not isinstance(raw, dict):
        raise _Invalid(f"{where}: must be a table with an address, got {type(raw).__name__}")
    _unknown(where, raw, _TARGET_KEYS)
    if "address" not in raw:
        raise _Invalid(f"{where}: address is required (tcp://host:port)")
    instance = raw.get("broker_instance")
    if instance is not None and (not isinstance(instance, str) or not instance):
        raise _Invalid(f"{where}: broker_instance must be a non-empty string, got {instance!r}")
    try:
        return Target(
            address=raw["address"],
            weight=raw.get("weight", 1),
            priority=raw.get("priority", 0),
            broker_instance=instance,
        )
    except InvalidArgument as exc:
        raise _Invalid(f"{where}: {exc.message}") from None


def _pem_certificate(pem: str | bytes, *, what: str) -> str:
    """The certificate in ``pem``, checked (it parses, and its key is one dialog security can use) and written out
    again as PEM; :class:`~aiobroker.errors.SecurityError` whose message starts with ``what`` if not."""
    certificate = load_certificate(pem, what=what)
    return str(certificate.public_bytes(Encoding.PEM).decode("ascii"))


def _binding(where: str, raw: Any) -> _Binding:
    if not isinstance(raw, dict):
        raise _Invalid(f"{where}: must be a table/object with a certificate or certificate_file, got "
                       f"{type(raw).__name__}")
    _unknown(where, raw, _BINDING_KEYS)
    given = [key for key in ("certificate", "certificate_file") if key in raw]
    if len(given) != 1:
        raise _Invalid(f"{where}: needs exactly one of certificate (PEM text) and certificate_file (a path), got "
                       f"{' and '.join(given) or 'neither'}")
    certificate: str | None = None
    certificate_file: str | None = None
    if "certificate" in raw:
        text = raw["certificate"]
        if not isinstance(text, str):
            raise _Invalid(f"{where}.certificate: must be PEM text (a string), got {type(text).__name__}")
        try:
            certificate = _pem_certificate(text, what=f"{where}.certificate")
        except SecurityError as exc:
            raise _Invalid(exc.message) from None
    else:
        certificate_file = raw["certificate_file"]
        if not isinstance(certificate_file, str) or not certificate_file or "\0" in certificate_file:
            raise _Invalid(f"{where}.certificate_file: must be a non-empty path, got {certificate_file!r}")
    anonymous = raw.get("anonymous", False)
    if not isinstance(anonymous, bool):
        raise _Invalid(f"{where}.anonymous: must be true or false, got {anonymous!r}")
    identity = raw.get("identity")
    if identity is not None:
        try:
            check_name("identity", identity)
        except InvalidArgument as exc:
            raise _Invalid(f"{where}.identity: {exc.message}") from None
    return _Binding(certificate=certificate, certificate_file=certificate_file, anonymous=anonymous,
                    identity=identity)


def _validate(data: Any) -> dict[str, _Entry]:
    """The parsed file → service name → entry; any deviation from the documented shape is an error."""
    if not isinstance(data, dict):
        raise _Invalid(f"the top level must be a table/object with a 'services' key, got {type(data).__name__}")
    _unknown("top level", data, _TOP_KEYS)
    services = data.get("services", {})
    if not isinstance(services, dict):
        raise _Invalid(f"services must be a table/object of service name → entry, got {type(services).__name__}")
    entries: dict[str, _Entry] = {}
    for name, raw in services.items():
        where = f"services.{json.dumps(name, ensure_ascii=False)}"
        try:
            check_name("service", name)
        except InvalidArgument as exc:
            raise _Invalid(f"{where}: {exc.message}") from None
        if not isinstance(raw, dict):
            raise _Invalid(f"{where}: must be a table/object with targets, a binding or both, got {type(raw).__name__}")
        _unknown(where, raw, _SERVICE_KEYS)
        lifetime = raw.get("lifetime")
        if lifetime is not None and not _positive_seconds(lifetime):
            raise _Invalid(f"{where}.lifetime: must be a number of seconds > 0, got {lifetime!r}")
        binding = _binding(f"{where}.binding", raw["binding"]) if "binding" in raw else None
        targets = raw.get("targets")
        if (binding is None or "targets" in raw) and (not isinstance(targets, list) or not targets):
            raise _Invalid(
                f"{where}.targets: must be a non-empty array of targets, got {targets!r} (an entry needs targets, "
                "a binding or both; to make a service unknown, remove its entry)"
            )
        entries[name] = _Entry(
            targets=tuple(_target(f"{where}.targets[{i}]", t) for i, t in enumerate(targets or ())),
            lifetime=float(lifetime) if lifetime is not None else None,
            binding=binding,
        )
    return entries


class StaticFileResolver(Resolver):
    """Answers from a file, re-read when it changes; a broken version never replaces a good one."""

    name = "static_file"
    answers_bindings = True  # a service's entry may carry a binding table

    def __init__(self, path: Path, *, default_lifetime: float = DEFAULT_LIFETIME) -> None:
        self.path = path
        self.default_lifetime = default_lifetime
        self._suffix = path.suffix.lower()
        #: the last good contents; None until a good version has been read
        self._entries: dict[str, _Entry] | None = None
        #: the version last looked at (good or broken); None: none yet, or the file was missing
        self._seen: _Version | None = None
        #: what is wrong with the file as it is now; None when the version in service is the current one
        self._error: str | None = None

    async def resolve_route(self, service_name: str) -> RouteAnswer:
        return self._route(self._current(), service_name)

    def _route(self, entries: dict[str, _Entry], service_name: str) -> RouteAnswer:
        entry = entries.get(service_name)
        if entry is None:
            raise NotFound(f"{self.path} has no entry for service {service_name!r}", retry_after=self.default_lifetime)
        if not entry.targets:
            raise NotFound(f"{self.path} has no targets for service {service_name!r} (only a binding)",
                           retry_after=self._lifetime(entry))
        return RouteAnswer(
            service_name=service_name,
            targets=entry.targets,
            lifetime=self._lifetime(entry),
            source=str(self.path),
        )

    async def resolve_binding(self, service_name: str) -> BindingAnswer:
        return self._binding(self._current(), service_name)

    def _binding(self, entries: dict[str, _Entry], service_name: str) -> BindingAnswer:
        entry = entries.get(service_name)
        if entry is None or entry.binding is None:
            raise NotFound(f"{self.path} has no binding for service {service_name!r}",
                           retry_after=self.default_lifetime if entry is None else self._lifetime(entry))
        binding = entry.binding
        certificate, source = binding.certificate, str(self.path)
        if certificate is None:
            assert binding.certificate_file is not None
            cert_path = self.path.parent / binding.certificate_file  # an absolute certificate_file stays as it is
            source = f"{self.path} (certificate_file {cert_path})"
            certificate = self._read_certificate(service_name, cert_path)
        return BindingAnswer(
            service_name=service_name,
            certificate=certificate,
            anonymous=binding.anonymous,
            identity=binding.identity,
            lifetime=self._lifetime(entry),
            source=source,
        )

    async def resolve_together(self, service_name: str) -> Answers:
        """The route and the binding from one look at the file: both come from the same version of it, so an edit
        made meanwhile cannot pair one version's targets with another's binding."""
        try:
            entries = self._current()
        except ResolverError as exc:
            # never a good version: no answer to either; the binding is left to be asked once the route is known
            # (a failed binding question would be remembered for binding_failure_cache, past the file's repair)
            return Answers(route=exc, binding=None)
        route: RouteAnswer | Exception
        binding: BindingAnswer | Exception
        try:
            route = self._route(entries, service_name)
        except ResolverError as exc:
            route = exc
        try:
            binding = self._binding(entries, service_name)
        except ResolverError as exc:
            binding = exc
        return Answers(route=route, binding=binding)

    def _lifetime(self, entry: _Entry) -> float:
        return entry.lifetime if entry.lifetime is not None else self.default_lifetime

    def _read_certificate(self, service_name: str, cert_path: Path) -> str:
        """The binding's certificate file, read now (a small local file, on the event loop like the routes file)."""
        where = f"{self.path}: the binding for service {service_name!r}: certificate_file {cert_path}"
        try:
            with open(cert_path, "rb") as file:
                raw = file.read(MAX_CERTIFICATE_BYTES + 1)
        except OSError as exc:
            raise ResolverError(f"{where}: cannot read it: {exc.strerror or exc}") from None
        if len(raw) > MAX_CERTIFICATE_BYTES:
            raise ResolverError(f"{where}: over {MAX_CERTIFICATE_BYTES} bytes, not a certificate")
        try:
            return _pem_certificate(raw, what=where)
        except SecurityError as exc:
            raise ResolverError(exc.message) from None

    def asks(self, service_name: str) -> str:
        return f"the {self.name} resolver (file {self.path})"

    def describe(self) -> dict[str, Any]:
        return {
            "resolver": self.name,
            "path": str(self.path),
            "default_lifetime": self.default_lifetime,
            "services": None if self._entries is None else len(self._entries),
            "last_error": self._error,
        }

    # --- the file ---------------------------------------------------------------------------------------------

    def _current(self) -> dict[str, _Entry]:
        """The contents to answer from: the file as it is if it changed and is good, else the last good version.

        Nothing here awaits, so two questions in flight for different services never see the state half updated.
        """
        try:
            version = self._version(os.stat(self.path))
        except OSError as exc:
            self._broken(None, f"cannot read it: {exc.strerror or exc}")
        else:
            if version != self._seen:
                self._reload()
        if self._entries is None:
            raise ResolverError(f"{self.path}: {self._error}")
        return self._entries

    def _reload(self) -> None:
        version: _Version | None = None
        try:
            with open(self.path, "rb") as file:
                # The version of what is read, not of what was stat'ed a moment ago: if a writer got in between,
                # the next question sees a different version and reads again.
                version = self._version(os.fstat(file.fileno()))
                raw = file.read()
            entries = _validate(_parse(raw.decode("utf-8"), self._suffix))
        except OSError as exc:
            self._broken(version, f"cannot read it: {exc.strerror or exc}")
        except UnicodeDecodeError as exc:
            self._broken(version, f"not UTF-8 text: {exc}")
        except _Invalid as exc:
            self._broken(version, str(exc))
        else:
            if self._error is not None and self._entries is not None:
                log.info("resolver file %s is good again (%d service(s))", self.path, len(entries))
            self._entries, self._seen, self._error = entries, version, None

    def _broken(self, version: _Version | None, problem: str) -> None:
        """Note a broken (or missing) version; warn once about it if a good version stays in service.

        With no good version at all, the caller raises :class:`ResolverError` with the problem on every question,
        and the node reports that; a warning as well would say the same thing twice.
        """
        already = (version is not None and version == self._seen) or (version is None and self._error == problem)
        self._seen, self._error = version, problem
        if not already and self._entries is not None:
            log.warning("resolver file %s: %s; keeping its last good contents", self.path, problem)

    @staticmethod
    def _version(st: os.stat_result) -> _Version:
        return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def create(options: Mapping[str, Any]) -> StaticFileResolver:
    """The factory registered as ``static_file``: checks the options; the file itself may not exist yet (it is read
    at the first question, so a node can start before its routes file is deployed)."""
    unknown = sorted(set(options) - set(_OPTIONS))
    if unknown:
        raise ConfigError(
            f"[resolver] unknown option(s) {', '.join(unknown)} for static_file; allowed: {', '.join(_OPTIONS)}"
        )
    if "path" not in options:
        raise ConfigError("[resolver] path is required for static_file: the .toml or .json file that lists services")
    given = options["path"]
    text = os.fspath(given) if isinstance(given, (str, os.PathLike)) else None
    if not isinstance(text, str) or not text:
        raise ConfigError(f"[resolver] path must be a non-empty string (a .toml or .json file), got {given!r}")
    path = Path(text)
    if path.suffix.lower() not in _FORMATS:
        raise ConfigError(f"[resolver] path {str(path)!r} must end in .toml or .json: the suffix says how to read it")
    lifetime = options.get("default_lifetime", DEFAULT_LIFETIME)
    if not _positive_seconds(lifetime):
        raise ConfigError(f"[resolver] default_lifetime must be a number of seconds > 0, got {lifetime!r}")
    return StaticFileResolver(path, default_lifetime=float(lifetime))
