"""A step's status passes read only the executions-list pages its executions are on (`ListPositions`),
against the strict sandbox: oldest first, 20 executions a page, whatever the client asks for."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from retouch_devtools.sandbox import SandboxServer
from retouch_devtools.sandbox.realism import Realism
from retouch_pipeline.autoretouch import AutoRetouchClient, ImageRef, RetryConfig
from retouch_pipeline.processing.list_positions import ListPositions
from retouch_pipeline.processing.statuses import read_statuses

Factory = Callable[..., SandboxServer]


class _Catalog:
    """A client on the sandbox, one uploaded image, and executions created on demand (each a list entry)."""

    def __init__(self, server: SandboxServer, client: AutoRetouchClient, image: ImageRef) -> None:
        self.server, self.client, self.image = server, client, image
        self.workflow = next(w for w in server.workflows if w["name"] == "Export Only")["id"]
        self.created: dict[str, datetime] = {}

    def create(self, count: int) -> list[str]:
        ids = []
        for _ in range(count):
            at = datetime.now(UTC)
            key = f"k{len(self.created)}"
            ids.append(self.client.create_execution(self.workflow, image=self.image, idempotency_key=key))
            self.created[ids[-1]] = at
        return ids

    def lag(self, seconds: float) -> None:
        config = self.server.state.config
        config.realism = replace(config.realism, list_lag=seconds)

    def pages_read(self, read: Callable[[], Any]) -> tuple[Any, int]:
        before = self.server.state.accounting.calls["E3"]
        result = read()
        return result, self.server.state.accounting.calls["E3"] - before

    def statuses(self, ids: list[str], positions: ListPositions | None) -> tuple[set[str], int]:
        found, pages = self.pages_read(
            lambda: read_statuses(
                self.client, self.workflow, ids, max_single_reads=0, created=self.created, positions=positions
            )
        )
        return set(found), pages


@contextmanager
def catalog(sandbox_factory: Factory, make_image: Callable[..., bytes], **realism: Any) -> Iterator[_Catalog]:
    server = sandbox_factory(realism=Realism.named("strict", **realism), processing_seconds=60.0)
    retry = RetryConfig(max_retries=3, initial_delay=0.01, max_delay=0.05, total_timeout=60)
    with AutoRetouchClient(
        server.api_url,
        server.auth_url,
        refresh_token=server.refresh_token,
        organization_id=server.organization_id,
        retry=retry,
    ) as client:
        image = ImageRef("p.png", client.upload_image(make_image(), filename="p.png").content_hash)
        yield _Catalog(server, client, image)


def test_a_step_reads_only_the_page_its_executions_are_on(
    sandbox_factory: Factory, make_image: Callable[..., bytes]
) -> None:
    with catalog(sandbox_factory, make_image, list_lag=0.0) as cat:
        cat.create(70)  # other runs' executions before the step: pages 0-3
        positions = ListPositions()
        positions.measure_floor(cat.client, cat.workflow)
        assert positions.floor == 70
        ours = cat.create(5)
        cat.create(100)  # other runs' executions after the step's: 5 more pages
        # the first pass reads from the floor and stops at the page holding all five
        assert cat.statuses(ours, positions) == (set(ours), 1)
        assert sorted(positions.positions.values()) == [70, 71, 72, 73, 74]
        # every later pass reads that one page, however long the list grew since
        cat.create(60)
        assert cat.statuses(ours, positions) == (set(ours), 1)
        # newest first without the memory: from the list's end back to the step's executions
        found, pages = cat.statuses(ours, None)
        assert found == set(ours) and pages >= 5


def test_positions_handed_to_another_step_spare_it_the_search(
    sandbox_factory: Factory, make_image: Callable[..., bytes]
) -> None:
    # a hand-over (processing/handover.py): the executions were created long before the successor's own
    with catalog(sandbox_factory, make_image, list_lag=0.0) as cat:
        cat.create(50)  # earlier runs' executions: pages 0-2
        handing = ListPositions()
        handing.measure_floor(cat.client, cat.workflow)
        theirs = cat.create(3)
        assert cat.statuses(theirs, handing) == (set(theirs), 1)
        cat.create(200)  # the runs since: 10 more pages
        successor = ListPositions()
        successor.measure_floor(cat.client, cat.workflow)
        found, pages = cat.statuses(theirs, successor)  # without the memory: back from the end
        assert found == set(theirs) and pages >= 10
        taking = ListPositions()
        taking.measure_floor(cat.client, cat.workflow)
        taking.remember(handing.of(theirs))
        assert handing.of(theirs) == {e: 50 + i for i, e in enumerate(theirs)}
        assert cat.statuses(theirs, taking) == (set(theirs), 1)


def test_executions_not_listed_yet_are_looked_for_only_beyond_where_the_list_ended(
    sandbox_factory: Factory, make_image: Callable[..., bytes]
) -> None:
    with catalog(sandbox_factory, make_image, list_lag=0.0) as cat:
        cat.create(45)
        positions = ListPositions()
        positions.measure_floor(cat.client, cat.workflow)
        cat.lag(1.5)
        ours = cat.create(3)
        # nothing of the step listed yet: the page at the floor is empty, and the floor stays
        assert cat.statuses(ours, positions) == (set(), 1)
        assert positions.floor == 45
        cat.lag(0.0)  # the list caught up
        assert cat.statuses(ours, positions) == (set(ours), 1)


def test_a_floor_measured_after_the_first_create_is_not_kept(
    sandbox_factory: Factory, make_image: Callable[..., bytes]
) -> None:
    with catalog(sandbox_factory, make_image, list_lag=0.0) as cat:
        cat.create(25)
        positions = ListPositions()
        positions.creating()
        ours = cat.create(2)
        positions.measure_floor(cat.client, cat.workflow)  # would count the step's own executions
        assert positions.floor is None
        found, _ = cat.statuses(ours, positions)  # looked for newest first instead
        assert found == set(ours)


def test_a_wrong_remembered_position_costs_pages_never_a_status(
    sandbox_factory: Factory, make_image: Callable[..., bytes]
) -> None:
    with catalog(sandbox_factory, make_image, list_lag=0.0) as cat:
        cat.create(30)
        positions = ListPositions()
        ours = cat.create(3)
        cat.create(50)
        positions.positions = {ours[0]: 0, ours[1]: 60, ours[2]: 31}  # two of them not there
        found, _ = cat.statuses(ours, positions)
        assert found == set(ours)
        assert positions.positions == {ours[0]: 30, ours[1]: 31, ours[2]: 32}
        assert cat.statuses(ours, positions) == (set(ours), 1)


def test_a_list_not_oldest_first_switches_the_memory_off(
    sandbox_factory: Factory, make_image: Callable[..., bytes]
) -> None:
    for order in ("newest", "unordered"):
        with catalog(sandbox_factory, make_image, list_lag=0.0, list_order=order) as cat:
            cat.create(30)
            positions = ListPositions()
            positions.measure_floor(cat.client, cat.workflow)
            assert not positions.usable and positions.floor is None
            ours = cat.create(3)
            cat.create(30)
            for _ in range(2):
                found, _ = cat.statuses(ours, positions)
                assert found == set(ours)
            assert not positions.positions
