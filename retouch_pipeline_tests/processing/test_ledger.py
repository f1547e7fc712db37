"""The claim protocol of the S3 ledger over moto's server (real HTTP, real conditional PUTs).

Of two claimants of one key exactly one wins, also when they race; the loser is told who holds the key; an
intent is taken over only when its owner has ended or it is stale, and a takeover races safely too. The probe
every step runs first tells a store that ignores conditional writes from one that honours them.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

import pytest

from retouch_devtools.stack.s3 import ignoring_conditional_writes, new_bucket, s3_client
from retouch_pipeline.processing.deliver import check_output_writable
from retouch_pipeline.processing.ledger import (
    STALE_INTENT_SECONDS,
    S3Ledger,
    conditional_write_problem,
    is_ledger_key,
)
from retouch_pipeline.processing.records import PurchaseEntry

KEY = "rp1-" + "ab" * 24


def never_ended(owner: str) -> bool:
    return False


@pytest.fixture
def ledger(moto_url: str) -> S3Ledger:
    client: Any = s3_client(moto_url)
    return S3Ledger(client, new_bucket(client, "ledger"), "retouched/")


def intent(owner: str, age_seconds: float = 0.0) -> PurchaseEntry:
    at = (datetime.now(UTC) - timedelta(seconds=age_seconds)).isoformat()
    return PurchaseEntry(partition="p", at=at, owner=owner)


def test_first_claim_wins_and_the_second_learns_the_holder(ledger: S3Ledger) -> None:
    assert ledger.claim({KEY: intent("run-a")}, never_ended) == {}
    held = ledger.claim({KEY: intent("run-b")}, never_ended)
    assert held[KEY].owner == "run-a" and held[KEY].execution_id is None
    ledger.write({KEY: PurchaseEntry(execution_id="ex-1", owner="run-a")})
    assert ledger.claim({KEY: intent("run-c")}, lambda owner: True)[KEY].execution_id == "ex-1"
    assert ledger.read([KEY])[KEY].entry.execution_id == "ex-1"
    assert ledger.key(KEY) == f"retouched/.retouch-pipeline/ledger/{KEY}.json" and is_ledger_key(
        ledger.key(KEY), "retouched/"
    )


def test_racing_claimants_one_winner(ledger: S3Ledger) -> None:
    keys = [f"rp1-{i:048d}" for i in range(20)]
    owners = [f"run-{n}" for n in range(4)]

    def claim(owner: str) -> set[str]:
        return set(keys) - set(ledger.claim(dict.fromkeys(keys, intent(owner)), never_ended))

    with ThreadPoolExecutor(len(owners)) as pool:
        won = list(pool.map(claim, owners))
    assert sorted(k for w in won for k in w) == sorted(keys)  # every key won exactly once
    recorded = ledger.read(keys)
    for owner, keys_won in zip(owners, won, strict=True):
        assert all(recorded[k].entry.owner == owner for k in keys_won)


def test_an_intent_is_taken_over_only_when_abandoned(ledger: S3Ledger) -> None:
    ledger.claim({KEY: intent("run-a")}, never_ended)
    assert KEY in ledger.claim({KEY: intent("run-b")}, never_ended)  # young, owner alive: held
    assert ledger.claim({KEY: intent("run-b")}, lambda owner: owner == "run-a") == {}  # owner ended
    assert ledger.read([KEY])[KEY].entry.owner == "run-b"

    other = "rp1-" + "cd" * 24
    ledger.write({other: intent("run-x", age_seconds=STALE_INTENT_SECONDS + 1)})
    with ThreadPoolExecutor(3) as pool:  # a stale intent: three contenders, one takeover
        results = list(pool.map(lambda o: ledger.claim({other: intent(o)}, never_ended), ["c", "d", "e"]))
    assert sum(1 for r in results if not r) == 1
    assert ledger.read([other])[other].entry.owner in {"c", "d", "e"}


def test_the_probe_passes_on_a_store_that_refuses_conditional_overwrites(moto_url: str) -> None:
    """moto, like AWS S3 since 2024, answers 412 to both conditions a claim uses: nothing to report."""
    client: Any = s3_client(moto_url)
    bucket = new_bucket(client, "probe")
    client.put_object(Bucket=bucket, Key="probe", Body=b"first")
    assert conditional_write_problem(client, bucket, "probe") is None
    assert client.get_object(Bucket=bucket, Key="probe")["Body"].read() == b"first"  # nothing overwritten


def test_the_probe_names_a_store_that_ignores_conditional_writes(moto_url: str) -> None:
    """The same store reached without the headers, as a store that ignores them behaves: the overwrite
    happens, the probe reports it, and the ledger's claims would all be won (two winners of one key)."""
    client: Any = ignoring_conditional_writes(s3_client(moto_url))
    bucket = new_bucket(client, "probe")
    client.put_object(Bucket=bucket, Key="probe", Body=b"first")
    problem = conditional_write_problem(client, bucket, "probe")
    assert (
        problem == "accepted a PUT with If-None-Match: * over an existing object (the condition was ignored)"
    )
    assert client.get_object(Bucket=bucket, Key="probe")["Body"].read() == b""  # really overwritten

    ledger = S3Ledger(client, bucket, "retouched/")
    assert ledger.claim({KEY: intent("run-a")}, never_ended) == {}
    assert ledger.claim({KEY: intent("run-b")}, never_ended) == {}  # what the probe exists to prevent


def test_two_steps_checking_the_store_at_once_do_not_see_each_others_probe(moto_url: str) -> None:
    """Step B runs its whole check (PUT, two conditional PUTs, DELETE) between step A's PUT and A's first
    conditional PUT, as two runs starting together can. With one probe name for every step, B's DELETE let
    A's `If-None-Match: *` PUT succeed, and A failed every image with ConditionalWritesUnsupported."""
    client: Any = s3_client(moto_url)
    bucket = new_bucket(client, "probes")

    def step(s3: Any) -> Any:
        catalog = SimpleNamespace(output_bucket=bucket, output_prefix_normalized=lambda: "retouched/")
        return SimpleNamespace(catalog=catalog, s3=s3, log=SimpleNamespace(warning=print))

    class Interleaved:
        """Step A's S3 client: B's check runs just before A's first conditional PUT."""

        def __init__(self) -> None:
            self.b_result: Any = "not run"

        def put_object(self, **kwargs: Any) -> Any:
            if "IfNoneMatch" in kwargs and self.b_result == "not run":
                self.b_result = check_output_writable(step(client))
            return client.put_object(**kwargs)

        def __getattr__(self, name: str) -> Any:
            return getattr(client, name)

    a_client = Interleaved()
    assert check_output_writable(step(a_client)) is None
    assert a_client.b_result is None
    assert client.list_objects_v2(Bucket=bucket).get("KeyCount") == 0  # both probes deleted
