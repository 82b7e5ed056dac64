"""The node: the shell around the core, one module per job (docs/design.md, "The shell").

``Node`` is the public name (``aiobroker.Node``); the rest of the package is an implementation detail.
"""

from .server import Node

__all__ = ["Node"]
