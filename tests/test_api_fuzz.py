"""Schemathesis fuzzes every operation of ``/openapi.json``: no 5xx, only JSON answers (never NaN), bounded memory.

Bounded so it fits CI: ``FUZZ_EXAMPLES`` examples per operation (``HYPERNET_FUZZ_EXAMPLES`` raises it), on a server
with tight per-request limits (two steps, 64x64), so that a valid generation costs a fraction of a second.
"""

from __future__ import annotations

import json
import os
import resource
from collections import Counter

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings

from hypernet.server import Limits, ServerState, create_app
from hypernet.server.app import BackgroundServer
from hypernet.server.testing import tiny_server_config

pytestmark = pytest.mark.slow  # every test here builds models, servers or browsers

FUZZ_EXAMPLES = int(os.environ.get("HYPERNET_FUZZ_EXAMPLES", "12"))
RSS_GROWTH_LIMIT_MB = 1024  # the process (server and test together) may grow at most this much during the fuzz run


def _rss_mb() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _strict_json(text: str) -> object:
    def refuse(constant: str) -> None:
        raise ValueError(f"{constant} is not JSON")

    return json.loads(text, parse_constant=refuse)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    limits = Limits(max_steps=2, max_pixels=64 * 64, max_batch_size=1, max_n_iter=1, max_train_steps=2)
    state = ServerState.start(tiny_server_config(tmp_path_factory.mktemp("fuzz"), limits=limits))
    with BackgroundServer(create_app(state)) as running:
        yield running, state


def test_every_operation_answers_json_and_never_5xx(server) -> None:
    running, _ = server
    spec = requests.get(f"{running.url}/openapi.json", timeout=30).json()
    schema = schemathesis.openapi.from_dict(spec)
    session = requests.Session()
    statuses: Counter[int] = Counter()
    failures: list[str] = []
    before = _rss_mb()

    for result in schema.get_all_operations():
        operation = result.ok()

        @settings(max_examples=FUZZ_EXAMPLES, deadline=None, database=None, derandomize=True,
                  phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
        @given(case=operation.as_strategy())
        def fuzz(case: schemathesis.Case) -> None:
            response = case.call(base_url=running.url, session=session, timeout=120)
            statuses[response.status_code] += 1
            where = f"{case.method} {case.formatted_path} {case.body!r:.200}"
            if response.status_code >= 500:
                failures.append(f"{response.status_code} from {where}: {response.text[:300]}")
                return
            kind = response.headers.get("content-type") or ""
            kind = kind[0] if isinstance(kind, list) else kind  # schemathesis keeps every header as a list
            if "json" in kind:
                try:
                    _strict_json(response.text)
                except ValueError as e:
                    failures.append(f"not JSON ({e}) from {where}")
            elif response.status_code != 204:
                failures.append(f"{kind!r} answer from {where}")

        fuzz()

    growth = _rss_mb() - before
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    total = sum(statuses.values())
    print(f"\nfuzz: {total} requests, {sum(n for s, n in statuses.items() if s >= 500)} 5xx, statuses "
          f"{dict(sorted(statuses.items()))}, RSS growth {growth:.0f} MB, peak RSS {peak:.0f} MB")
    assert not failures, "\n".join(failures[:20])
    assert total >= 10 * FUZZ_EXAMPLES // 2
    assert growth < RSS_GROWTH_LIMIT_MB
