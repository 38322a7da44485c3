"""Files, provenance, seeding and progress: the small plumbing every step shares.

All writers are atomic (write to a temporary sibling, then rename) so a killed run never leaves a
half-written output that Snakemake or a resume would mistake for a finished one.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import platform
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

log = logging.getLogger("didi")


def setup_logging(level: int = logging.INFO) -> None:
    """Log lines with timestamps to stderr (Snakemake rules redirect stderr to their `log:` file)."""
    logging.basicConfig(
        level=level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%Y-%m-%d %H:%M:%S",
        stream=sys.stderr,
        force=True,
    )


# ---------------------------------------------------------------------------------------------- atomic writes
def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _publish(tmp: Path, path: Path, mode: int) -> None:
    """Give tmp the permissions a plain open()/mkdir() would have (mkstemp/mkdtemp make them private), then rename."""
    os.chmod(tmp, mode & ~_umask())
    os.replace(tmp, path)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to `path`; on success it is renamed onto `path`, on error removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        _publish(tmp, path, 0o666)
    finally:
        if tmp.exists():
            tmp.unlink()


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary directory that replaces `path` as a whole once the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        if path.exists():
            old = path.with_name(f".{path.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
            _publish(tmp, path, 0o777)
            shutil.rmtree(old, ignore_errors=True)
        else:
            _publish(tmp, path, 0o777)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json(path: str | os.PathLike, obj: Any, indent: int | None = 2) -> None:
    """obj as JSON, atomically; indent None writes it compact (long per-iteration curves)."""
    separators = None if indent is not None else (",", ":")
    write_text(path, json.dumps(obj, indent=indent, sort_keys=True, default=_json_default, separators=separators)
               + "\n")


def read_json(path: str | os.PathLike) -> Any:
    """A JSON file's content; a file that is not JSON raises ValueError naming it."""
    with open(path) as f:
        try:
            return json.load(f)
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}: not valid JSON: {err}") from err


def save_npy(path: str | os.PathLike, array: np.ndarray) -> None:
    """An array as .npy, atomically."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:  # a file object: np.save would append .npy to a name
        np.save(f, array)


def _json_default(obj: Any) -> Any:
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating,)):
        return float(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def save_tensors(path: str | os.PathLike, tensors: dict[str, torch.Tensor], metadata: dict | None = None) -> None:
    """safetensors, atomically. Tensors are made contiguous and moved to CPU; a tensor sharing memory with an earlier
    one (tied weights: the judge's GPT-2 head and embedding) is saved as a copy, since safetensors refuses shared
    memory; strict loading writes the one parameter twice."""
    out, seen = {}, set()
    for name, value in tensors.items():
        value = value.detach().contiguous().cpu()
        storage = value.untyped_storage().data_ptr()
        out[name] = value.clone() if storage in seen else value
        seen.add(storage)
    tensors = out
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={k: str(v) for k, v in (metadata or {}).items()})


def load_tensors(path: str | os.PathLike, device: str = "cpu") -> dict[str, torch.Tensor]:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"weights file not found: {path}")
    try:
        return load_file(str(path), device=device)
    except SafetensorError as err:
        raise ValueError(f"{path}: not a readable safetensors file, truncated or corrupt ({err}); "
                         f"delete it and rerun the step that wrote it") from err


def save_model_dir(out_dir: str | os.PathLike, state_dict: dict[str, torch.Tensor], config: dict, **extra: Any) -> None:
    """An HF-style model directory: `model.safetensors` + `config.json` (+ extra JSON files), replaced whole."""
    with atomic_dir(out_dir) as tmp:
        save_tensors(tmp / "model.safetensors", state_dict)  # umask's permissions, not safetensors' private 0600
        (tmp / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        for name, obj in extra.items():
            (tmp / f"{name}.json").write_text(json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n")


def load_model_dir(model_dir: str | os.PathLike, device: str = "cpu") -> tuple[dict[str, torch.Tensor], dict]:
    """Return (state_dict, config) of a directory written by `save_model_dir`."""
    model_dir = Path(model_dir)
    cfg_path = model_dir / "config.json"
    if not cfg_path.exists():
        raise FileNotFoundError(f"model directory has no config.json: {model_dir}")
    return load_tensors(model_dir / "model.safetensors", device), read_json(cfg_path)


# ---------------------------------------------------------------------------------------------- provenance
def config_hash(cfg: Any) -> str:
    """Short, stable hash of a JSON-able config (key order does not matter)."""
    blob = json.dumps(cfg, sort_keys=True, default=_json_default).encode()
    return hashlib.sha256(blob).hexdigest()[:12]


def git_commit() -> str:
    root = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=root, capture_output=True, text=True, timeout=10, check=True,
        ).stdout.strip()
        return commit + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def package_versions() -> dict[str, str]:
    names = ["didi", "torch", "transformers", "tokenizers", "datasets", "safetensors", "mauve-text", "numpy", "pandas", "snakemake"]
    out = {"python": platform.python_version()}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def provenance(cfg: Any) -> dict:
    """What produced a result: the config and its hash, package versions, git commit, machine."""
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else platform.processor() or platform.machine()
    return {
        "config": cfg,
        "config_hash": config_hash(cfg),
        "git_commit": git_commit(),
        "versions": package_versions(),
        "host": socket.gethostname(),
        "device": device,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def write_metrics(path: str | os.PathLike, metrics: dict, cfg: Any) -> None:
    """A metric JSON file with its provenance inside it under the key `provenance`."""
    write_json(path, {**metrics, "provenance": provenance(cfg)})


def write_provenance_beside(path: str | os.PathLike, cfg: Any) -> Path:
    """For tables (CSV/parquet/markdown): `<path>.provenance.json` next to the file."""
    out = Path(str(path) + ".provenance.json")
    write_json(out, provenance(cfg))
    return out


# ---------------------------------------------------------------------------------------------- determinism
def seed_everything(seed: int) -> torch.Generator:
    """Seed python, numpy and torch; return a CPU generator seeded the same for explicit use."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def default_device() -> torch.device:
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


# ---------------------------------------------------------------------------------------------- progress
def _fmt_seconds(s: float) -> str:
    s = int(max(s, 0))
    h, rem = divmod(s, 3600)
    m, sec = divmod(rem, 60)
    return f"{h}h{m:02d}m{sec:02d}s" if h else f"{m}m{sec:02d}s"


class Progress:
    """Log lines with rate and ETA every `every` steps (readable in Snakemake log files, unlike tqdm bars).

    >>> p = Progress(total=100, every=10, desc="train", unit="step")
    >>> for step in range(start, 100): ...; p.update(step + 1, loss=0.3)
    """

    def __init__(self, total: int, every: int = 10, desc: str = "", unit: str = "it", start: int = 0,
                 logger: logging.Logger | None = None, enabled: bool = True):
        self.total, self.every, self.desc, self.unit = total, max(1, every), desc, unit
        self.start_step, self.t0 = start, time.perf_counter()
        self.log = logger or log
        self.enabled = enabled

    def rate(self, step: int) -> float:
        return (step - self.start_step) / max(time.perf_counter() - self.t0, 1e-9)

    def update(self, step: int, force: bool = False, **fields: Any) -> None:
        if not self.enabled or not (force or step % self.every == 0 or step == self.total):
            return
        rate = self.rate(step)
        eta = (self.total - step) / rate if rate > 0 else float("inf")
        extra = " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in fields.items())
        self.log.info(
            "%s %d/%d (%.1f%%) %.3g %s/s ETA %s %s",
            self.desc, step, self.total, 100.0 * step / max(self.total, 1), rate, self.unit,
            _fmt_seconds(eta) if eta != float("inf") else "?", extra,
        )

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0
