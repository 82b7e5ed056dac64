"""The ``aiobroker`` command line: run a node (``serve``), make a key pair (``cert create``), and talk to a node
(every other command).

Each client command opens one connection to the node named by ``--address`` (or ``$AIOBROKER_ADDRESS``, else
``tcp://127.0.0.1:4022``), does one thing and exits. A ``tls://`` address takes ``--ca``, ``--cert`` and ``--key``
(or ``$AIOBROKER_CA``, ``$AIOBROKER_CERT``, ``$AIOBROKER_KEY``). Results go to stdout (plain text for people, ``--json``
for programs); notes and errors go to stderr.

Exit status: 0 on success; 1 when the node or the configuration refuses (one line, ``aiobroker: error:
<message>``); 2 for a usage error (argparse's own); 3 for ``receive`` when nothing arrived (a note on stderr, as
grep's "no match"); 130 when interrupted. ``common`` names them; each command's ``--help`` ends with its own.

The package, one module per concern:

- ``app``: ``main``, which parses, runs the command and maps its outcome to an exit status
- ``parser``: the argparse tree (in ``--help`` order) and the usage rules argparse cannot say by itself
- ``arguments``: argument value types, the help formatter, adding one command
- ``common``: the program's name, the default address, the environment variables, ``CommandError``
- ``render``: output: tables, JSON, message lines, the words for states, times and sizes
- ``objects``, ``conversations``, ``receive``, ``status``, ``serve``, ``cert``: each command's options, help text
  and work
"""

from __future__ import annotations

from .app import main

__all__ = ["main"]
