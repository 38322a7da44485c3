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


def test_weights_are_published_with_default_permissions(tmp_path, umask_022):
    """safetensors creates its files 0600; colleagues on a shared filesystem must read the weights as umask says."""
    import torch

    io.save_tensors(tmp_path / "w.safetensors", {"a": torch.ones(2)})
    io.save_model_dir(tmp_path / "model", {"a": torch.ones(2)}, {"hidden": 2})
    assert mode(tmp_path / "w.safetensors") == 0o644
    assert mode(tmp_path / "model" / "model.safetensors") == 0o644 and mode(tmp_path / "model") == 0o755
    assert mode(tmp_path / "model" / "config.json") == 0o644


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty"])
def test_corrupt_weights_name_the_file(tmp_path, damage):
    import torch

    io.save_model_dir(tmp_path / "model", {"a": torch.arange(1000.0)}, {"hidden": 2})
    weights = tmp_path / "model" / "model.safetensors"
    raw = weights.read_bytes()
    weights.write_bytes({"truncate": raw[: len(raw) // 2], "garbage": b"\xff" * 64, "empty": b""}[damage])
    with pytest.raises(ValueError, match=f"{weights}: not a readable safetensors file"):
        io.load_model_dir(tmp_path / "model")
    with pytest.raises(ValueError, match=f"{weights}: not a readable safetensors file"):
        io.load_tensors(weights)


def test_write_json_compact_round_trips(tmp_path):
    obj = {"b": [1.5, 2], "a": {"x": None}}
    io.write_json(tmp_path / "pretty.json", obj)
    io.write_json(tmp_path / "compact.json", obj, indent=None)
    assert io.read_json(tmp_path / "pretty.json") == io.read_json(tmp_path / "compact.json") == obj
    assert (tmp_path / "compact.json").read_text() == '{"a":{"x":null},"b":[1.5,2]}\n'


def test_tied_weights_are_saved_as_copies_and_load_back(tmp_path):
    """safetensors refuses tensors sharing memory (a GPT-2 judge's head is its embedding): the second is copied."""
    import torch

    shared = torch.arange(6.0).reshape(2, 3)
    io.save_tensors(tmp_path / "w.safetensors", {"embed": shared, "head": shared, "bias": torch.ones(2)})
    loaded = io.load_tensors(tmp_path / "w.safetensors")
    assert torch.equal(loaded["embed"], shared) and torch.equal(loaded["head"], shared)
    assert torch.equal(loaded["bias"], torch.ones(2))


def test_read_json_names_a_file_that_is_not_json(tmp_path):
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"bad.json: not valid JSON"):
        io.read_json(tmp_path / "bad.json")
