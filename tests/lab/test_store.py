"""The lab's run store: atomic writes and claims."""
from __future__ import annotations

import os

import pytest

from initlab.lab.store import claim, write_atomic


def test_write_atomic_stores_the_whole_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "cell.json"
    write_atomic(path, lambda tmp: tmp.write_text('{"acc": 1}'))
    assert path.read_text() == '{"acc": 1}'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cell.json"]


@pytest.mark.parametrize("error", [OSError(28, "No space left on device"), KeyboardInterrupt()])
def test_a_failing_save_leaves_neither_the_file_nor_its_temporary(tmp_path, error):
    """Half the bytes reach the temporary file, then the save fails: the error propagates, the
    target keeps its old content (or stays absent) and no `*.tmp` file is left behind."""
    old, new = tmp_path / "old.json", tmp_path / "new.json"
    old.write_text("before")

    def half_then_fail(tmp):
        tmp.write_text("half a rec")
        raise error

    for path in (old, new):
        with pytest.raises(type(error)):
            write_atomic(path, half_then_fail)
    assert old.read_text() == "before" and not new.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["old.json"]


def test_a_failing_rename_removes_the_temporary(tmp_path):
    """The rename itself fails (the target is a directory): the temporary is removed too."""
    target = tmp_path / "cell.json"
    target.mkdir()
    with pytest.raises(OSError):
        write_atomic(target, lambda tmp: tmp.write_text("x"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cell.json"]


def test_claim_is_exclusive_and_holds_the_pid(tmp_path):
    cell = tmp_path / "cell.json"
    assert claim(cell) is True
    assert (tmp_path / "cell.claim").read_text() == str(os.getpid())
    assert claim(cell) is False  # this (live) process holds it
