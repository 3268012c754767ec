"""The tests' Redis: one ``redis-server`` on a free loopback port for the whole run (one per
xdist worker), no persistence.

``redis_url`` starts it at first use and stops it at the end of the run; a
test that needs it is skipped, saying why, where the binary or the ``redis``
package is missing (CI installs both: ``.ci/run``, the ``test`` extra).
Each test gets a database emptied first (``FLUSHDB``): nothing leaks between tests.
"""

from __future__ import annotations

import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # benchmarks/ lives beside the package
    sys.path.insert(0, str(ROOT))


@pytest.fixture(scope="session")
def redis_server_url() -> Iterator[str]:
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed here (apt-get install redis-server; .ci/run does)")
    pytest.importorskip("redis", reason="the redis package is not installed (pip install -e '.[redis]')")
    from benchmarks.processes import redis_server

    with redis_server() as url:
        yield url


@pytest.fixture
def redis_url(redis_server_url: str) -> str:
    """The run's Redis, its database emptied for this test."""
    import redis

    client = redis.Redis.from_url(redis_server_url)
    client.flushdb()
    client.close()
    return redis_server_url
