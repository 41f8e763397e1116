"""Deadlines under a clock that jumps: Clock's conversions, the Dispatcher's deadline heap, and TaskBook.

A deadline is stored as wall-clock time but enforced on the monotonic clock: the supervisor
converts it once, when it accepts the task (or loads it at start). A later jump of the wall
clock (NTP, a manual `date -s`) must neither expire the task early nor late.
"""

from __future__ import annotations

import pytest

from procq import options, states
from procq.store import SQLiteStore
from procq.supervisor.clock import Clock
from procq.supervisor.dispatcher import Dispatcher
from procq.supervisor.tasks import TaskBook

HOUR_S = 3600.0
WALL_START = 1_800_000_000.0
MONO_START = 5_000.0
HANDLERS = {
    "echo": {"timeout_s": 60.0, "grace_s": 1.0, "max_retry": 0, "max_memory": None, "queue": None},
}


class FakeClock(Clock):
    """A Clock whose monotonic and wall readings move only when a test moves them.

    It inherits Clock.to_monotonic and Clock.to_wall, so those are the real conversions under test.
    """

    def __init__(self, monotonic_s: float = MONO_START, wall_s: float = WALL_START):
        self.monotonic_s = monotonic_s
        self.wall_s = wall_s

    def monotonic(self) -> float:
        return self.monotonic_s

    def time(self) -> float:
        return self.wall_s

    def advance(self, seconds: float) -> None:
        """Let `seconds` of real time pass: both clocks move."""
        self.monotonic_s += seconds
        self.wall_s += seconds

    def jump_wall(self, seconds: float) -> None:
        """Step the wall clock alone, as NTP or `date -s` does."""
        self.wall_s += seconds


@pytest.fixture
def clock():
    return FakeClock()


@pytest.fixture
def book(tmp_path, clock):
    store = SQLiteStore(str(tmp_path / "procq.db"))
    dispatcher = Dispatcher({})
    task_book = TaskBook(store, dispatcher, clock, max_payload=1 << 20, max_grace_s=60.0)
    task_book.set_application({"handlers": HANDLERS})
    yield task_book
    store.close()


def enqueue_with_deadline(book: TaskBook, clock: FakeClock, seconds_ahead: float) -> str:
    request = options.client_request("echo", deadline=clock.time() + seconds_ahead, now=clock.time())
    info = book.enqueue([request])[0]
    book.store.commit()
    return info["id"]


def expire_due(book: TaskBook, clock: FakeClock) -> list[str]:
    """Run the supervisor loop's deadline step at the clock's current time; return the expired ids."""
    expired = list(book.dispatcher.pop_expired(clock.monotonic()))
    for task_id in expired:
        book.expire(task_id)
    book.store.commit()
    return expired


# -- Clock ---------------------------------------------------------------------------------

def test_to_monotonic_keeps_offset(clock):
    assert clock.to_monotonic(WALL_START + 10.0) == MONO_START + 10.0


def test_to_monotonic_of_past_time(clock):
    assert clock.to_monotonic(WALL_START - 2.5) == MONO_START - 2.5


def test_to_monotonic_follows_wall_jump(clock):
    clock.jump_wall(HOUR_S)

    # Converted after the jump, a wall time 10 s ahead of the old reading is now an hour late.
    assert clock.to_monotonic(WALL_START + 10.0) == MONO_START + 10.0 - HOUR_S


def test_to_wall_inverts_to_monotonic(clock):
    clock.jump_wall(-HOUR_S)
    target = clock.to_monotonic(WALL_START + 42.0)

    assert clock.to_wall(target) == WALL_START + 42.0


# -- Dispatcher ----------------------------------------------------------------------------

def test_dispatcher_deadline_not_due_before_target():
    dispatcher = Dispatcher({})
    dispatcher.watch_deadline("t1", MONO_START + 10.0)

    assert list(dispatcher.pop_expired(MONO_START + 9.999)) == []
    assert dispatcher.next_timer() == MONO_START + 10.0
    assert dispatcher.deadline_of("t1") == MONO_START + 10.0


def test_dispatcher_deadline_due_at_target():
    dispatcher = Dispatcher({})
    dispatcher.watch_deadline("t1", MONO_START + 10.0)

    assert list(dispatcher.pop_expired(MONO_START + 10.0)) == ["t1"]
    assert list(dispatcher.pop_expired(MONO_START + 20.0)) == []
    assert dispatcher.next_timer() is None


def test_dispatcher_forgotten_deadline_never_fires():
    dispatcher = Dispatcher({})
    dispatcher.watch_deadline("t1", MONO_START + 10.0)
    dispatcher.forget_deadline("t1")

    assert dispatcher.next_timer() is None
    assert list(dispatcher.pop_expired(MONO_START + 20.0)) == []


def test_dispatcher_rewatched_deadline_replaces_old():
    dispatcher = Dispatcher({})
    dispatcher.watch_deadline("t1", MONO_START + 10.0)
    dispatcher.watch_deadline("t1", MONO_START + 30.0)

    assert dispatcher.next_timer() == MONO_START + 30.0
    assert list(dispatcher.pop_expired(MONO_START + 20.0)) == []
    assert list(dispatcher.pop_expired(MONO_START + 30.0)) == ["t1"]


def test_dispatcher_next_timer_takes_earliest():
    dispatcher = Dispatcher({})
    dispatcher.watch_deadline("t1", MONO_START + 10.0)
    dispatcher.add_delayed("t2", MONO_START + 4.0)

    assert dispatcher.next_timer() == MONO_START + 4.0
    assert list(dispatcher.pop_due(MONO_START + 4.0)) == ["t2"]
    assert dispatcher.next_timer() == MONO_START + 10.0


# -- TaskBook with a real store --------------------------------------------------------------

def test_taskbook_deadline_converted_at_enqueue(book, clock):
    task_id = enqueue_with_deadline(book, clock, 10.0)

    assert book.dispatcher.deadline_of(task_id) == MONO_START + 10.0
    assert book.store.task_row(task_id)["deadline_at"] == WALL_START + 10.0


def test_taskbook_wall_jump_forward_no_expiry(book, clock):
    task_id = enqueue_with_deadline(book, clock, 10.0)

    clock.jump_wall(HOUR_S)
    clock.advance(5.0)

    assert expire_due(book, clock) == []
    assert book.store.task_row(task_id)["state"] == states.PENDING
    assert book.dispatcher.next_timer() == MONO_START + 10.0


def test_taskbook_wall_jump_back_no_delay(book, clock):
    task_id = enqueue_with_deadline(book, clock, 10.0)

    clock.jump_wall(-HOUR_S)
    clock.advance(10.0)
    expired = expire_due(book, clock)
    row = book.store.task_row(task_id)

    assert expired == [task_id]
    assert row["state"] == states.FAILED
    assert row["outcome"] == states.EXPIRED
    # finished_at is the wall reading at expiry, an hour before the stored deadline.
    assert row["finished_at"] == WALL_START + 10.0 - HOUR_S


def test_taskbook_expires_at_monotonic_target(book, clock):
    task_id = enqueue_with_deadline(book, clock, 10.0)

    clock.jump_wall(HOUR_S)
    clock.advance(9.9)
    early = expire_due(book, clock)
    clock.advance(0.1)
    on_time = expire_due(book, clock)

    assert early == []
    assert on_time == [task_id]
    assert book.store.task_row(task_id)["outcome"] == states.EXPIRED
    assert book.store.attempt_rows(task_id) == []


def test_start_attempt_ignores_wall_jump(book, clock):
    task_id = enqueue_with_deadline(book, clock, 10.0)

    clock.jump_wall(HOUR_S)
    clock.advance(2.0)
    attempt, _frame = book.start_attempt(task_id, "w1", 4242)

    assert attempt.soft_target_mono == MONO_START + 10.0
    assert attempt.soft_reason == states.DEADLINE
    assert attempt.deadline_mono == MONO_START + 10.0


def test_load_waiting_converts_stored_deadline(book, clock):
    task_id = enqueue_with_deadline(book, clock, 10.0)
    # A restart 3 s later, on a host whose monotonic clock starts elsewhere.
    restarted_clock = FakeClock(monotonic_s=100.0, wall_s=WALL_START + 3.0)
    restarted = TaskBook(book.store, Dispatcher({}), restarted_clock, max_payload=1 << 20, max_grace_s=60.0)
    restarted.set_application({"handlers": HANDLERS})

    loaded = restarted.load_waiting()

    assert loaded == 1
    assert restarted.dispatcher.deadline_of(task_id) == 107.0
