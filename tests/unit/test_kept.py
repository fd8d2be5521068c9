"""app.kept: a row kept a second per process is read again by one thread while the others use the copy."""

from __future__ import annotations

import threading
import time

import pytest

from app.kept import Kept


def test_a_fresh_copy_is_used_and_a_due_one_is_read_again() -> None:
    kept: Kept[str, int] = Kept(seconds=0.2, max_size=10)
    reads: list[int] = []

    def read() -> tuple[int, bool]:
        reads.append(1)
        return len(reads), True

    assert kept.get("a", read) == 1
    assert kept.get("a", read) == 1
    time.sleep(0.25)
    assert kept.get("a", read) == 2
    assert len(reads) == 2


def test_while_one_thread_reads_a_due_row_again_the_others_use_the_copy() -> None:
    kept: Kept[str, str] = Kept(seconds=0.1, max_size=10)
    assert kept.get("token", lambda: ("old", True)) == "old"
    time.sleep(0.12)
    started, release = threading.Event(), threading.Event()
    reads: list[str] = []

    def slow_read() -> tuple[str, bool]:
        reads.append("slow")
        started.set()
        release.wait(5)
        return "new", True

    reader = threading.Thread(target=lambda: kept.get("token", slow_read))
    reader.start()
    assert started.wait(5)

    def other_read() -> tuple[str, bool]:
        reads.append("other")
        return "other", True

    # Twenty callers arrive while the row is being read again: none sends its own query.
    answers = [kept.get("token", other_read) for _ in range(20)]
    release.set()
    reader.join(5)
    assert answers == ["old"] * 20
    assert reads == ["slow"]
    assert kept.get("token", lambda: ("unused", True)) == "new"


def test_values_not_to_keep_and_failed_reads_are_not_kept() -> None:
    kept: Kept[str, str | None] = Kept(seconds=10, max_size=10)
    assert kept.get("unknown", lambda: (None, False)) is None
    assert kept.get("unknown", lambda: ("found", True)) == "found"

    def broken() -> tuple[str, bool]:
        raise RuntimeError("database down")

    with pytest.raises(RuntimeError):
        kept.get("other", broken)
    assert kept.get("other", lambda: ("read", True)) == "read"  # the failed read left no claim behind


def test_a_read_under_way_when_the_values_are_cleared_does_not_put_its_row_back() -> None:
    kept: Kept[str, str] = Kept(seconds=10, max_size=10)

    def read_then_change_elsewhere() -> tuple[str, bool]:
        kept.clear()  # the row changed (and was forgotten) while this read was under way
        return "before the change", True

    assert kept.get("account", read_then_change_elsewhere) == "before the change"
    assert kept.get("account", lambda: ("after", True)) == "after"


def test_clear_where_and_replace_touch_only_what_they_pick() -> None:
    kept: Kept[str, int] = Kept(seconds=10, max_size=10)
    kept.get("a", lambda: (1, True))
    kept.get("b", lambda: (2, True))
    kept.replace(lambda value: value * 10)
    kept.clear(lambda value: value == 20)
    assert kept.get("a", lambda: (0, True)) == 10
    assert kept.get("b", lambda: (0, True)) == 0
