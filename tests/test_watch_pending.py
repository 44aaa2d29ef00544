"""The watcher's pending-change table (kb.watch_pending): bursts collapsed per path, moves folded."""

from __future__ import annotations

import doctest

import pytest

from d2l_haystack.kb import watch_pending
from d2l_haystack.kb.watch_pending import PendingChanges


def table(p: PendingChanges) -> dict[str, tuple[str, str | None]]:
    return {path: (e.kind, e.src) for path, e in p.items()}


def test_a_burst_of_saves_is_one_change_due_after_the_quiet_period_or_max_delay() -> None:
    p = PendingChanges(debounce=1.0, max_delay=3.0)
    p.add("upsert", "/a", None, now=0.0)
    p.add("upsert", "/a", None, now=0.5)
    assert table(p) == {"/a": ("upsert", None)} and p.earliest() == 1.5
    assert p.next_due(now=1.4, force=False) is None and p.next_due(now=1.4, force=True) == "/a"
    p.add("upsert", "/a", None, now=2.9)
    assert p.earliest() == 3.0  # capped at first + max_delay, not 3.9


def test_moves_fold_into_one_and_a_save_after_a_move_stays_a_move() -> None:
    p = PendingChanges(debounce=1.0, max_delay=10.0)
    p.add("move", "/b", "/a", now=0.0)
    p.add("move", "/c", "/b", now=0.1)
    p.add("upsert", "/c", None, now=0.2)
    assert table(p) == {"/c": ("move", "/a"), "/b": ("delete", None)}  # /b's own record went when /a came
    p.add("move", "/a", "/c", now=0.3)  # moved back where it came from: only its content may have changed
    assert table(p) == {"/a": ("upsert", None), "/b": ("delete", None), "/c": ("delete", None)}


def test_a_deleted_moved_file_deletes_its_old_record_and_an_overwritten_target_is_deleted() -> None:
    p = PendingChanges(debounce=1.0, max_delay=10.0)
    p.add("move", "/b", "/a", now=0.0)
    p.add("delete", "/b", None, now=0.1)
    assert table(p) == {"/a": ("delete", None), "/b": ("delete", None)}
    q = PendingChanges(debounce=1.0, max_delay=10.0)
    q.add("move", "/t", "/x", now=0.0)
    q.add("move", "/t", "/y", now=0.1)  # /y moved over /t, which had just received /x
    assert table(q) == {"/t": ("move", "/y"), "/x": ("delete", None)}


def test_a_move_out_of_a_path_goes_before_the_path_is_reused() -> None:
    p = PendingChanges(debounce=1.0, max_delay=10.0)
    p.add("upsert", "/a", None, now=0.0)    # due first
    p.add("move", "/b", "/a", now=0.5)      # ...but /a's record moves to /b: that comes first
    p.add("upsert", "/a", None, now=0.6)    # a new file at /a
    assert p.next_due(now=5.0, force=False) == "/b"
    path, entry = p.take("/b")
    assert (path, entry.kind, entry.src) == ("/b", "move", "/a") and p.next_due(now=5.0, force=False) == "/a"


def test_paths_under_a_folder_and_bad_input() -> None:
    p = PendingChanges(debounce=1.0, max_delay=10.0)
    p.add("upsert", "/d/x", None, now=0.0)
    p.add("delete", "/d/y", None, now=0.0)
    p.add("upsert", "/dx", None, now=0.0)
    assert p.waiting_under("/d") == ["/d/x"] and len(p) == 3 and "/dx" in p
    with pytest.raises(ValueError, match="kind must be one of"):
        p.add("rename", "/a", None, now=0.0)
    with pytest.raises(ValueError, match="needs its old path"):
        p.add("move", "/a", None, now=0.0)
    with pytest.raises(KeyError):
        p.take("/nowhere")


def test_the_module_example_runs() -> None:
    assert doctest.testmod(watch_pending).failed == 0
