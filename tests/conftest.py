from __future__ import annotations

import pytest


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


# A real PostgreSQL for the stores' tests, started once per session when a test asks for it (tests/postgres.py).
from postgres import pg_dsn, postgres  # noqa: E402, F401
