"""The configuration loader: defaults < file < overrides, the documented example, every error's message."""

from __future__ import annotations

import dataclasses
import textwrap
from pathlib import Path
from typing import Any

import pytest

from aiobroker import config as config_module
from aiobroker.config import NodeConfig, load_config, parse_listen
from aiobroker.errors import ConfigError

MIB = 1024 * 1024


def write(tmp_path: Path, text: str, name: str = "aiobroker.toml") -> Path:
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def load_error(tmp_path: Path, text: str, overrides: dict[str, Any] | None = None) -> str:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path, overrides)
    message = info.value.message
    assert str(path) in message, message
    return message


def docstring_example() -> str:
    """The TOML block under ``.. code-block:: toml`` in the module docstring."""
    doc = config_module.__doc__
    assert doc is not None
    lines = doc.splitlines()
    start = lines.index(".. code-block:: toml") + 2
    block: list[str] = []
    for line in lines[start:]:
        if line and not line.startswith(" "):
            break
        block.append(line)
    return textwrap.dedent("\n".join(block))


# --- defaults, the example, precedence ----------------------------------------------------------------------


def test_defaults() -> None:
    config = load_config()
    assert config == NodeConfig()
    assert config.listen_host == "127.0.0.1"
    assert config.listen_port == 4022
    assert config.listen == "127.0.0.1:4022"
    assert config.data_dir == Path("aiobroker-data")
    assert config.store == "sqlite"
    assert config.durability == "normal"
    assert config.log_level == "info"
    assert config.max_message_size == 4 * MIB
    assert config.max_frame_size == 16 * MIB
    assert config.max_connections == 1000
    assert config.receive_lease == 30.0
    assert config.poison_rollbacks == 5
    assert config.objects == ()
    assert (config.node_identity, config.authorization, config.binding_failure_cache) == (None, False, 600.0)


def test_empty_file_gives_defaults_with_nothing_changed(tmp_path: Path) -> None:
    assert load_config(write(tmp_path, "")) == NodeConfig()
    assert load_config(write(tmp_path, "[node]\n[limits]\n[receive]\n")) == NodeConfig()


def test_documented_example_loads(tmp_path: Path) -> None:
    text = docstring_example()
    assert "[[service]]" in text  # the extraction found the whole block
    config = load_config(write(tmp_path, text))
    assert config.listen_host == "127.0.0.1"
    assert config.listen_port == 4022
    assert config.data_dir == tmp_path / "aiobroker-data"
    assert (config.store, config.durability, config.log_level) == ("sqlite", "normal", "info")
    assert (config.max_message_size, config.max_frame_size, config.max_connections) == (
        4 * MIB,
        16 * MIB,
        1000,
    )
    assert config.receive_lease == 30.0
    assert isinstance(config.receive_lease, float)
    assert config.poison_rollbacks == 5
    assert (config.node_identity, config.authorization, config.binding_failure_cache) == (None, False, 600.0)
    assert [(kind, definition["name"]) for kind, definition in config.objects] == [
        ("message_type", "//example/Request"),
        ("message_type", "//example/Reply"),
        ("contract", "//example/Contract"),
        ("queue", "requests"),
        ("identity", "operator"),
        ("service", "//example/Server"),
        ("route", "to-orders"),
    ]
    assert config.objects[4][1]["admin"] is True
    # Definitions are passed on as written.
    assert config.objects[0][1] == {"name": "//example/Request", "validation": "json"}
    assert config.objects[2][1]["messages"] == {"//example/Request": "initiator", "//example/Reply": "target"}
    assert config.objects[5][1] == {
        "name": "//example/Server",
        "queue": "requests",
        "contracts": ["//example/Contract"],
    }


def test_file_over_defaults(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        [node]
        listen = "0.0.0.0:5000"
        store = "memory"
        durability = "full"
        log_level = "debug"
        [limits]
        max_message_size = 1000
        max_frame_size = 8192
        max_connections = 7
        [receive]
        lease_seconds = 2.5
        poison_rollbacks = 2
        """,
    )
    config = load_config(path)
    assert config.listen == "0.0.0.0:5000"
    assert (config.store, config.durability, config.log_level) == ("memory", "full", "debug")
    assert (config.max_message_size, config.max_frame_size, config.max_connections) == (1000, 8192, 7)
    assert (config.receive_lease, config.poison_rollbacks) == (2.5, 2)
    assert config.data_dir == Path("aiobroker-data")  # not in the file: the default, untouched


def test_override_over_file_and_none_ignored(tmp_path: Path) -> None:
    path = write(
        tmp_path, '[node]\nlisten = "0.0.0.0:5000"\nlog_level = "debug"\n[limits]\nmax_connections = 7\n'
    )
    config = load_config(
        path,
        {"listen_port": 6000, "log_level": None, "max_connections": 9, "store": None, "listen_host": None},
    )
    assert config.listen_port == 6000  # override over file
    assert config.listen_host == "0.0.0.0"  # None: the file's value stays
    assert config.log_level == "debug"  # None: the file's value stays
    assert config.max_connections == 9
    assert config.store == "sqlite"  # None, and not in the file: the default


def test_overrides_without_a_file() -> None:
    config = load_config(
        None, {"listen_host": "::1", "listen_port": 0, "data_dir": "here", "receive_lease": 1}
    )
    assert config.listen == "[::1]:0"
    assert config.data_dir == Path("here")  # a str override becomes a Path, relative to the current directory
    assert config.receive_lease == 1.0
    assert isinstance(config.receive_lease, float)


def test_override_objects_replace_the_files(tmp_path: Path) -> None:
    path = write(tmp_path, '[[queue]]\nname = "a"\n')
    assert load_config(path).objects == (("queue", {"name": "a"}),)
    config = load_config(path, {"objects": [("queue", {"name": "b"})]})
    assert config.objects == (("queue", {"name": "b"}),)


def test_bare_port_keeps_the_default_host_and_override_host_wins(tmp_path: Path) -> None:
    path = write(tmp_path, '[node]\nlisten = ":5000"\n')
    assert load_config(path).listen == "127.0.0.1:5000"
    assert load_config(path, {"listen_host": "0.0.0.0"}).listen == "0.0.0.0:5000"


def test_objects_keep_file_order_across_kinds(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        [[message_type]]
        name = "m1"
        [[queue]]
        name = "q1"
        [[message_type]]   # a comment after the header
        name = "m2"
        [[ "service" ]]
        name = "s1"
        queue = "q1"
        [[queue]]
        name = "q2"
        """,
    )
    names = [(kind, definition["name"]) for kind, definition in load_config(path).objects]
    assert names == [
        ("message_type", "m1"),
        ("queue", "q1"),
        ("message_type", "m2"),
        ("service", "s1"),
        ("queue", "q2"),
    ]


def test_objects_order_falls_back_to_kind_by_kind_when_headers_are_ambiguous(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        '''
        [[queue]]
        name = "q1"
        [[message_type]]
        name = "m1"
        description = """
        [[queue]]
        """
        queue2 = 1
        ''',
    )
    # One queue but two [[queue]] headers in the text: fall back to each kind in order of first appearance.
    # (queue2 is inside the message type's table, passed on as written.)
    config = load_config(path)
    assert [(kind, d["name"]) for kind, d in config.objects] == [("queue", "q1"), ("message_type", "m1")]


def test_inline_arrays_of_objects(tmp_path: Path) -> None:
    path = write(tmp_path, 'queue = [{ name = "a" }, { name = "b" }]\n')
    assert load_config(path).objects == (("queue", {"name": "a"}), ("queue", {"name": "b"}))


# --- data_dir -----------------------------------------------------------------------------------------------


def test_relative_data_dir_is_relative_to_the_files_directory(tmp_path: Path) -> None:
    path = write(tmp_path, '[node]\ndata_dir = "data"\n', name="etc/aiobroker.toml")
    assert load_config(path).data_dir == tmp_path / "etc" / "data"
    path = write(tmp_path, '[node]\ndata_dir = "../var/data"\n', name="etc/aiobroker.toml")
    assert load_config(path).data_dir == tmp_path / "etc" / ".." / "var" / "data"


def test_relative_data_dir_with_a_relative_config_path_becomes_absolute(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(tmp_path, '[node]\ndata_dir = "data"\n', name="etc/aiobroker.toml")
    monkeypatch.chdir(tmp_path)
    data_dir = load_config(Path("etc/aiobroker.toml")).data_dir
    assert data_dir.is_absolute()
    assert data_dir == tmp_path / "etc" / "data"


def test_absolute_and_home_data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    elsewhere = tmp_path / "elsewhere"
    path = write(tmp_path, f"[node]\ndata_dir = '{elsewhere}'\n", name="etc/aiobroker.toml")
    assert load_config(path).data_dir == elsewhere
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    path = write(tmp_path, "[node]\ndata_dir = '~/broker'\n", name="etc/aiobroker.toml")
    assert load_config(path).data_dir == tmp_path / "home" / "broker"


def test_data_dir_override_is_not_relative_to_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, '[node]\ndata_dir = "data"\n', name="etc/aiobroker.toml")
    assert load_config(path, {"data_dir": "other"}).data_dir == Path("other")


# --- listen addresses ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:4022", ("127.0.0.1", 4022)),
        ("0.0.0.0:0", ("0.0.0.0", 0)),
        ("localhost:65535", ("localhost", 65535)),
        ("broker.example.com:80", ("broker.example.com", 80)),
        ("[::1]:4022", ("::1", 4022)),
        ("[::]:1", ("::", 1)),
        ("[2001:db8::17]:4022", ("2001:db8::17", 4022)),
        ("[fe80::1%eth0]:4022", ("fe80::1%eth0", 4022)),
        (":4022", ("127.0.0.1", 4022)),
    ],
)
def test_parse_listen(text: str, expected: tuple[str, int]) -> None:
    assert parse_listen(text) == expected


def test_parse_listen_default_host() -> None:
    assert parse_listen(":5000", default_host="0.0.0.0") == ("0.0.0.0", 5000)
    assert parse_listen("h:5000", default_host="0.0.0.0") == ("h", 5000)


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("", "empty"),
        ("localhost", "no port"),
        ("localhost:", "no port"),
        (":", "no port"),
        ("localhost:http", "not a number"),
        ("localhost:-1", "not a number"),
        ("localhost:+80", "not a number"),
        ("localhost:65536", "out of range"),
        ("localhost:99999999999999999999999", "out of range"),
        ("::1:4022", "must be in brackets"),
        ("::1", "must be in brackets"),
        ("[::1]", "no ':port'"),
        ("[::1]4022", "no ':port'"),
        ("[::1:4022", "no ']'"),
        ("[localhost]:4022", "not an IPv6 address"),
        ("[]:4022", "not an IPv6 address"),
        (" localhost:4022", "spaces"),
        ("local host:4022", "not a host name"),
    ],
)
def test_parse_listen_rejects(text: str, why: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_listen(text)
    message = info.value.message
    assert why in message
    assert repr(text) in message
    assert "host:port" in message  # says what is allowed


@pytest.mark.parametrize(
    ("host", "port", "listen"),
    [("127.0.0.1", 4022, "127.0.0.1:4022"), ("::1", 5, "[::1]:5"), ("example.com", 0, "example.com:0")],
)
def test_listen_property_round_trips(host: str, port: int, listen: str) -> None:
    config = NodeConfig(listen_host=host, listen_port=port)
    assert config.listen == listen
    assert parse_listen(config.listen) == (host, port)


def test_bad_listen_in_file(tmp_path: Path) -> None:
    message = load_error(tmp_path, '[node]\nlisten = "::1:4022"\n')
    assert "[node] listen" in message
    assert "brackets" in message
    message = load_error(tmp_path, "[node]\nlisten = 4022\n")
    assert "[node] listen" in message
    assert "must be a string" in message
    assert "an integer (4022)" in message


# --- NodeConfig built directly ------------------------------------------------------------------------------


def test_nodeconfig_is_frozen_slotted_and_keyword_only() -> None:
    config = NodeConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.listen_port = 1  # type: ignore[misc]
    assert not hasattr(config, "__dict__")
    with pytest.raises(TypeError):
        NodeConfig("127.0.0.1")  # type: ignore[call-arg]


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"listen_port": 70000}, ["NodeConfig.listen_port", "from 0 to 65535", "70000"]),
        ({"listen_port": True}, ["NodeConfig.listen_port", "a boolean"]),
        ({"listen_host": ""}, ["NodeConfig.listen_host", "empty"]),
        ({"listen_host": "[::1]"}, ["NodeConfig.listen_host", "brackets"]),
        ({"listen_host": "a:b"}, ["NodeConfig.listen_host", "not an IPv6 address"]),
        ({"data_dir": "data"}, ["NodeConfig.data_dir", "pathlib.Path", "a string"]),
        ({"store": "postgre"}, ["NodeConfig.store", '"sqlite", "memory" or "postgresql"', "'postgre'", 'did you mean "postgresql"?']),
        ({"durability": "fsync"}, ["NodeConfig.durability", '"normal" or "full"']),
        (
            {"log_level": "INFO"},
            ["NodeConfig.log_level", '"debug", "info", "warning" or "error"', 'mean "info"'],
        ),
        ({"max_frame_size": 8191}, ["NodeConfig.max_frame_size", "from 8192 to 268435456"]),
        ({"max_frame_size": 256 * MIB + 1}, ["NodeConfig.max_frame_size", "256 MiB"]),
        ({"max_message_size": 0}, ["NodeConfig.max_message_size", ">= 1"]),
        ({"max_message_size": 16 * MIB}, ["NodeConfig.max_message_size", "max_frame_size - 4096 = 16773120"]),
        ({"max_connections": 0}, ["NodeConfig.max_connections", ">= 1", "got 0"]),
        ({"receive_lease": 0}, ["NodeConfig.receive_lease", "> 0"]),
        ({"receive_lease": float("inf")}, ["NodeConfig.receive_lease", "finite"]),
        ({"receive_lease": float("nan")}, ["NodeConfig.receive_lease", "> 0"]),
        ({"receive_lease": "30"}, ["NodeConfig.receive_lease", "a string"]),
        ({"poison_rollbacks": 0}, ["NodeConfig.poison_rollbacks", ">= 1"]),
        (
            {"objects": [("queues", {"name": "q"})]},
            ["NodeConfig.objects[0]", "unknown object kind", '"queue"'],
        ),
        ({"objects": [("queue", {})]}, ["NodeConfig.objects[0]", "no name"]),
        ({"objects": [("queue", {"name": 1})]}, ["NodeConfig.objects[0]", "name must be a string"]),
        ({"objects": [("queue",)]}, ["NodeConfig.objects[0]", "(kind, definition) pair"]),
        ({"objects": "queue"}, ["NodeConfig.objects", "tuple of (kind, definition) pairs"]),
    ],
)
def test_nodeconfig_checks_when_built_directly(kwargs: dict[str, Any], words: list[str]) -> None:
    with pytest.raises(ConfigError) as info:
        NodeConfig(**kwargs)
    for word in words:
        assert word in info.value.message


def test_nodeconfig_normalizes() -> None:
    config = NodeConfig(receive_lease=2, objects=[["queue", {"name": "q"}]])  # type: ignore[arg-type]
    assert config.receive_lease == 2.0
    assert isinstance(config.receive_lease, float)
    assert config.objects == (("queue", {"name": "q"}),)
    assert isinstance(config.objects[0], tuple)


def test_replace_checks_again() -> None:
    config = NodeConfig()
    assert dataclasses.replace(config, listen_port=1).listen_port == 1
    with pytest.raises(ConfigError, match="listen_port"):
        dataclasses.replace(config, listen_port=-1)


# --- file errors --------------------------------------------------------------------------------------------


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.toml"
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.message == f"config file {path} does not exist"


def test_file_is_a_directory(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="is a directory"):
        load_config(tmp_path)


def test_invalid_toml_names_line_and_column(tmp_path: Path) -> None:
    message = load_error(tmp_path, '[node]\nstore = "sqlite"\nlisten 4022\n')
    assert "is not valid TOML" in message
    assert "line 3" in message
    assert "column" in message


def test_duplicate_key_is_invalid_toml(tmp_path: Path) -> None:
    message = load_error(tmp_path, '[node]\nstore = "sqlite"\nstore = "memory"\n')
    assert "is not valid TOML" in message
    assert "line 3" in message


def test_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "aiobroker.toml"
    path.write_bytes(b'[node]\nstore = "\xff"\n')
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(path) in info.value.message
    assert "not UTF-8" in info.value.message
    assert "line 2" in info.value.message


def test_utf8_bom_is_accepted(tmp_path: Path) -> None:
    path = tmp_path / "aiobroker.toml"
    path.write_bytes(b'\xef\xbb\xbf[node]\nstore = "memory"\n')
    assert load_config(path).store == "memory"


def test_unknown_section(tmp_path: Path) -> None:
    message = load_error(tmp_path, '[nodes]\nstore = "memory"\n')
    assert "unknown section [nodes]" in message
    assert "did you mean [node]?" in message
    assert "[limits]" in message  # what is allowed


def test_unknown_section_without_a_close_match(tmp_path: Path) -> None:
    message = load_error(tmp_path, "[zzz]\n")
    assert "unknown section [zzz]" in message
    assert "did you mean" not in message
    assert "[node], [limits], [receive]" in message


def test_unknown_key(tmp_path: Path) -> None:
    message = load_error(tmp_path, '[node]\nlistn = "127.0.0.1:1"\n')
    assert "unknown key [node] listn" in message
    assert "did you mean listen?" in message
    assert "keys allowed in [node]: listen, data_dir, store, durability, log_level" in message


def test_field_name_used_as_a_file_key(tmp_path: Path) -> None:
    message = load_error(tmp_path, "[receive]\nreceive_lease = 3\n")
    assert "unknown key [receive] receive_lease" in message
    assert "did you mean lease_seconds?" in message


def test_key_in_the_wrong_section(tmp_path: Path) -> None:
    message = load_error(tmp_path, "[node]\nmax_connections = 5\n")
    assert "unknown key [node] max_connections" in message
    assert "belongs in [limits]" in message


def test_key_at_the_top_level(tmp_path: Path) -> None:
    message = load_error(tmp_path, 'listen = "127.0.0.1:1"\n')
    assert "unknown key listen at the top level" in message
    assert "belongs in [node]" in message
    message = load_error(tmp_path, "colour = 1\n")
    assert "unknown key colour at the top level" in message


def test_section_that_is_not_a_table(tmp_path: Path) -> None:
    message = load_error(tmp_path, "node = 5\n")
    assert "[node] must be a table" in message
    assert "an integer (5)" in message


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("[limits]\nmax_connections = true\n", ["[limits] max_connections", "integer", "a boolean (true)"]),
        ('[limits]\nmax_connections = "10"\n', ["[limits] max_connections", "integer", "a string ('10')"]),
        ("[limits]\nmax_frame_size = 2048.0\n", ["[limits] max_frame_size", "integer", "a float (2048.0)"]),
        ("[receive]\npoison_rollbacks = false\n", ["[receive] poison_rollbacks", "a boolean (false)"]),
        ("[receive]\nlease_seconds = true\n", ["[receive] lease_seconds", "number of seconds", "a boolean"]),
        ('[receive]\nlease_seconds = "30s"\n', ["[receive] lease_seconds", "number of seconds", "a string"]),
        ("[node]\nstore = 1\n", ["[node] store", '"sqlite", "memory", "postgresql"', "an integer (1)"]),
        ('[node]\nlog_level = ["info"]\n', ["[node] log_level", "an array"]),
        ("[node]\ndata_dir = 5\n", ["[node] data_dir", "directory path", "an integer (5)"]),
        ('[node]\ndata_dir = ""\n', ["[node] data_dir", "an empty string"]),
        ("[node]\nlisten = 1979-05-27\n", ["[node] listen", "a date"]),
    ],
)
def test_wrong_types(tmp_path: Path, text: str, words: list[str]) -> None:
    message = load_error(tmp_path, text)
    for word in words:
        assert word in message


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ('[node]\nlisten = "h:65536"\n', ["[node] listen", "out of range 0..65535"]),
        ("[limits]\nmax_connections = 0\n", ["[limits] max_connections", ">= 1", "got 0"]),
        (
            "[limits]\nmax_frame_size = 1000\n",
            ["[limits] max_frame_size", "from 8192 to 268435456", "got 1000"],
        ),
        ("[limits]\nmax_message_size = 0\n", ["[limits] max_message_size", ">= 1"]),
        ("[receive]\nlease_seconds = 0\n", ["[receive] lease_seconds", "> 0", "got 0"]),
        ("[receive]\nlease_seconds = -1.5\n", ["[receive] lease_seconds", "> 0"]),
        ("[receive]\nlease_seconds = inf\n", ["[receive] lease_seconds", "finite"]),
        ("[receive]\nlease_seconds = nan\n", ["[receive] lease_seconds", "> 0"]),
        ("[receive]\npoison_rollbacks = 0\n", ["[receive] poison_rollbacks", ">= 1"]),
        ('[node]\nstore = "sqllite"\n', ["[node] store", '"sqlite", "memory" or "postgresql"', 'did you mean "sqlite"?']),
        ('[node]\ndurability = "fsync"\n', ["[node] durability", '"normal" or "full"', "'fsync'"]),
        ('[node]\nlog_level = "warn"\n', ["[node] log_level", '"warning"', 'did you mean "warning"?']),
    ],
)
def test_out_of_range(tmp_path: Path, text: str, words: list[str]) -> None:
    message = load_error(tmp_path, text)
    for word in words:
        assert word in message


def test_message_size_against_frame_size_names_both_sources(tmp_path: Path) -> None:
    # The file lowers the frame size; the default message size no longer fits: blame the file's key.
    message = load_error(tmp_path, "[limits]\nmax_frame_size = 16384\n")
    assert message.startswith(f"{tmp_path / 'aiobroker.toml'}: [limits] max_frame_size:")
    assert "max_frame_size - 4096 = 12288" in message
    assert "max_message_size is 4194304 (built-in default)" in message
    # Both in the file: blame max_message_size.
    message = load_error(tmp_path, "[limits]\nmax_frame_size = 16384\nmax_message_size = 12289\n")
    assert ": [limits] max_message_size: " in message
    # Exactly at the limit is fine.
    path = write(tmp_path, "[limits]\nmax_frame_size = 16384\nmax_message_size = 12288\n")
    assert load_config(path).max_message_size == 12288


def test_override_that_breaks_the_frame_limit_is_blamed(tmp_path: Path) -> None:
    path = write(tmp_path, "[limits]\nmax_message_size = 10000\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, {"max_frame_size": 12288})
    message = info.value.message
    assert message.startswith("override max_frame_size:")
    assert f"max_message_size is 10000 ({path}: [limits] max_message_size)" in message


# --- objects ------------------------------------------------------------------------------------------------


def test_object_without_a_name(tmp_path: Path) -> None:
    message = load_error(
        tmp_path,
        """
        [[service]]
        name = "a"
        [[service]]
        queue = "q"
        """,
    )
    assert "service #2" in message
    assert "has no name" in message
    assert 'name = "..."' in message


def test_object_name_not_a_string(tmp_path: Path) -> None:
    message = load_error(tmp_path, "[[queue]]\nname = 5\n")
    assert "queue #1" in message
    assert "name must be a string" in message
    assert "an integer (5)" in message


def test_object_that_is_not_a_table(tmp_path: Path) -> None:
    message = load_error(tmp_path, 'queue = [{ name = "a" }, "b"]\n')
    assert "queue #2" in message
    assert "must be a table" in message
    assert "a string ('b')" in message


def test_object_kind_written_as_a_single_table(tmp_path: Path) -> None:
    message = load_error(tmp_path, '[queue]\nname = "a"\n')
    assert "queue must be an array of tables" in message
    assert "write [[queue]], not [queue]" in message


def test_unknown_object_kind(tmp_path: Path) -> None:
    message = load_error(tmp_path, '[[queues]]\nname = "a"\n')
    assert "unknown object kind [[queues]]" in message
    assert "did you mean [[queue]]?" in message
    assert "[[message_type]], [[contract]], [[queue]], [[service]]" in message


def test_unknown_object_kind_without_a_close_match(tmp_path: Path) -> None:
    message = load_error(tmp_path, '[[widget]]\nname = "a"\n')
    assert "unknown object kind [[widget]]" in message
    assert "did you mean" not in message


# --- override errors ----------------------------------------------------------------------------------------


def test_unknown_override() -> None:
    with pytest.raises(ConfigError) as info:
        load_config(None, {"max_conections": 5})
    assert "unknown override 'max_conections'" in info.value.message
    assert "did you mean max_connections?" in info.value.message
    with pytest.raises(ConfigError, match="parse_listen"):
        load_config(None, {"listen": "127.0.0.1:1"})


def test_bad_override_values() -> None:
    with pytest.raises(ConfigError) as info:
        load_config(None, {"listen_port": "4022"})
    assert info.value.message.startswith("override listen_port:")
    assert "a string ('4022')" in info.value.message
    with pytest.raises(ConfigError, match="override max_connections: must be an integer >= 1; got a boolean"):
        load_config(None, {"max_connections": True})
    with pytest.raises(ConfigError, match=r"override data_dir: .*empty"):
        load_config(None, {"data_dir": ""})


def test_error_is_a_config_error_with_its_code(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "missing.toml")
    assert info.value.code == "config_error"
    assert str(info.value) == info.value.message


# --- security -------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pems() -> dict[str, str]:
    """Two EC key pairs (certificate and key PEM), made once for the module."""
    from aiobroker.security.certs import create_self_signed

    out: dict[str, str] = {}
    for name in ("node", "other"):
        out[name + ".crt"], out[name + ".key"] = create_self_signed(name, key_type="ec")
    return out


def test_security_section(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        [security]
        identity = "node"
        authorization = true
        binding_failure_cache = 30
        """,
    )
    config = load_config(path)
    assert (config.node_identity, config.authorization, config.binding_failure_cache) == ("node", True, 30.0)
    assert isinstance(config.binding_failure_cache, float)
    assert load_config(path, {"authorization": False}).authorization is False


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ('[security]\nauthorization = "yes"\n', ["[security] authorization", "true or false", "a string ('yes')"]),
        ("[security]\nbinding_failure_cache = 0\n", ["[security] binding_failure_cache", "> 0", "got 0"]),
        ("[security]\nbinding_failure_cache = -5\n", ["[security] binding_failure_cache", "> 0"]),
        ('[security]\nbinding_failure_cache = "10m"\n', ["[security] binding_failure_cache", "a string"]),
        ("[security]\nidentity = 5\n", ["[security] identity", "[[identity]]", "an integer (5)"]),
        ('[security]\nidentity = ""\n', ["[security] identity", "an empty string"]),
        ("[security]\nauthorisation = true\n", ["unknown key [security] authorisation", "did you mean authorization?"]),
        ("[security]\ncert = 1\n", ["unknown key [security] cert", "belongs in [tls]"]),
        ('identity = "node"\n', ["identity must be an array of tables", "belongs in [security]"]),
        ("authorization = true\n", ["unknown key authorization at the top level", "belongs in [security]"]),
    ],
)
def test_bad_security_values(tmp_path: Path, text: str, words: list[str]) -> None:
    message = load_error(tmp_path, text)
    for word in words:
        assert word in message, (word, message)


def test_identity_and_binding_files_are_read_relative_to_the_config_file(
    tmp_path: Path, pems: dict[str, str]
) -> None:
    certs = tmp_path / "etc" / "certs"
    certs.mkdir(parents=True)
    (certs / "node.crt").write_text(pems["node.crt"])
    (certs / "node.key").write_text(pems["node.key"])
    (certs / "other.crt").write_text(pems["other.crt"])
    inline = pems["other.crt"].strip().replace("\n", "\n        ")  # indented like the rest, for dedent
    path = write(
        tmp_path,
        f"""
        [[identity]]
        name = "node"
        certificate = "certs/node.crt"
        private_key = "certs/node.key"
        tokens = ["a-long-enough-token"]

        [[identity]]
        name = "remote"
        certificate = \"\"\"
        {inline}
        \"\"\"

        [[queue]]
        name = "q"

        [[service]]
        name = "svc"
        queue = "q"
        owner = "node"

        [[binding]]
        name = "to-far"
        to_service = "//far/Service"
        certificate = "{certs / "other.crt"}"
        """,
        name="etc/aiobroker.toml",
    )
    config = load_config(path)
    defs = {(kind, d["name"]): d for kind, d in config.objects}
    assert defs[("identity", "node")]["certificate"] == pems["node.crt"]
    assert defs[("identity", "node")]["private_key"] == pems["node.key"]
    assert defs[("identity", "node")]["tokens"] == ["a-long-enough-token"]  # passed on; the node keeps a digest
    assert defs[("identity", "remote")]["certificate"].strip() == pems["other.crt"].strip()  # PEM text as it is
    assert defs[("binding", "to-far")]["certificate"] == pems["other.crt"]  # an absolute path
    assert defs[("service", "svc")]["owner"] == "node"


def test_a_missing_certificate_file_names_the_identity_the_key_and_the_path(tmp_path: Path) -> None:
    message = load_error(tmp_path, '[[identity]]\nname = "alice"\ncertificate = "certs/alice.crt"\n')
    assert "identity #1" in message and "identity 'alice'" in message
    assert f"certificate file {tmp_path / 'certs' / 'alice.crt'} does not exist" in message
    (tmp_path / "adir").mkdir()
    message = load_error(
        tmp_path, '[[binding]]\nname = "b"\nto_service = "s"\ncertificate = "adir"\n'
    )
    assert "binding #1" in message and "binding 'b'" in message and "certificate file" in message
    assert "is a directory" in message


def test_a_private_key_that_is_not_the_certificates_names_the_identity(
    tmp_path: Path, pems: dict[str, str]
) -> None:
    (tmp_path / "node.crt").write_text(pems["node.crt"])
    (tmp_path / "other.key").write_text(pems["other.key"])
    message = load_error(
        tmp_path,
        """
        [[queue]]
        name = "q"
        [[identity]]
        name = "node"
        certificate = "node.crt"
        private_key = "other.key"
        """,
    )
    assert "identity #1: identity 'node'" in message
    assert "does not belong to the certificate" in message
    assert "BEGIN" not in message  # names the key, never shows it


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ('[[identity]]\nname = "a"\ncertificate = 5\n', ["identity #1", "certificate must be PEM text or a file path"]),
        ('[[identity]]\nname = "a"\ntokens = ["short"]\n', ["identity #1", "identity 'a'", "at least 8 characters"]),
        ('[[identity]]\nname = "a"\nsend = "svc"\n', ["identity #1", "send must be a list"]),
        ('[[identity]]\nname = "a"\nadmin = "yes"\n', ["identity #1", "admin must be true or false"]),
        ('[[identity]]\nname = "a"\nrole = "x"\n', ["identity #1", "unknown field(s) role"]),
        ('[[binding]]\nname = "b"\nto_service = "s"\n', ["binding #1", "binding 'b'", "certificate", "required"]),
    ],
)
def test_bad_identities_and_bindings(tmp_path: Path, text: str, words: list[str]) -> None:
    message = load_error(tmp_path, text)
    for word in words:
        assert word in message, (word, message)


def test_nodeconfig_reads_path_values_of_pem_fields(tmp_path: Path, pems: dict[str, str]) -> None:
    (tmp_path / "node.crt").write_text(pems["node.crt"])
    config = NodeConfig(objects=(("identity", {"name": "n", "certificate": tmp_path / "node.crt"}),))
    assert config.objects[0][1]["certificate"] == pems["node.crt"]
    with pytest.raises(ConfigError) as info:
        NodeConfig(objects=(("identity", {"name": "n", "certificate": tmp_path / "missing.crt"}),))
    assert "NodeConfig.objects[0]" in info.value.message and "missing.crt does not exist" in info.value.message
