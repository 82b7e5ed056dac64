"""aiobroker: an asyncio network message broker with SQL Server Service Broker's conversation model.

The public names live here; everything else is an implementation detail that may move.
"""

from .version import __version__  # noqa: F401  (aiobroker.__version__)

from .client import Client, Dialog, Message, ReceivedBatch, connect  # noqa: E402
from .config import NodeConfig, load_config  # noqa: E402
from .core.catalog import DEFAULT, DIALOG_TIMER, END_DIALOG, ERROR  # noqa: E402
from .core.dialog_errors import BrokerErrorCode  # noqa: E402
from .errors import *  # noqa: E402,F403
from .errors import BrokerError  # noqa: E402
from .node import Node  # noqa: E402

__all__ = [
    "BrokerError",
    "BrokerErrorCode",
    "Client",
    "DEFAULT",
    "DIALOG_TIMER",
    "Dialog",
    "END_DIALOG",
    "ERROR",
    "Message",
    "Node",
    "NodeConfig",
    "ReceivedBatch",
    "connect",
    "load_config",
]
