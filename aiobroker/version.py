"""The version of aiobroker, in a module of its own so that any module may import it without importing the
package's public names (``aiobroker/__init__.py`` imports the node, which says its version at the handshake)."""

__version__ = "0.1.0"
