"""Atomic writes: all or nothing, and published with the permissions a plain write would give."""

import os
import stat

import pytest

from didi import io


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_atomic_path_publishes_with_default_permissions(tmp_path, umask_022):
    out = tmp_path / "sub" / "metrics.json"
    io.write_text(out, "{}\n")
    assert out.read_text() == "{}\n" and mode(out) == 0o644  # not mkstemp's private 0o600
    assert [p.name for p in out.parent.iterdir()] == ["metrics.json"]


def test_atomic_path_keeps_the_old_file_when_the_writer_fails(tmp_path):
    out = tmp_path / "table.csv"
    out.write_text("old\n")
    with pytest.raises(RuntimeError), io.atomic_path(out) as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed mid-write")
    assert out.read_text() == "old\n" and [p.name for p in tmp_path.iterdir()] == ["table.csv"]


def test_atomic_dir_replaces_as_a_whole_with_default_permissions(tmp_path, umask_022):
    out = tmp_path / "model"
    out.mkdir()
    (out / "stale.bin").write_text("x")
    with io.atomic_dir(out) as tmp:
        (tmp / "model.safetensors").write_text("w")
    assert sorted(p.name for p in out.iterdir()) == ["model.safetensors"] and mode(out) == 0o755
    with pytest.raises(RuntimeError), io.atomic_dir(out) as tmp:
        (tmp / "model.safetensors").write_text("partial")
        raise RuntimeError("killed")
    assert (out / "model.safetensors").read_text() == "w"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]
