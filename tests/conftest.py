import os
import shutil
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Tests run single-threaded: deterministic reductions, and CI's 2 cores stay free for workflow subprocesses."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def repo() -> Path:
    return REPO


def venv_bin(name: str) -> str:
    """An executable of the environment running the tests (snakemake, didi, torchrun, snakefmt)."""
    local = Path(sys.executable).parent / name
    found = str(local) if local.exists() else shutil.which(name)
    if not found:
        pytest.fail(f"{name} is not installed in this environment")
    return found


def subprocess_env() -> dict:
    """Environment for workflow subprocesses: this interpreter's bin first on PATH, one thread per process."""
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.setdefault("OMP_NUM_THREADS", "1")
    env["PYTHONUNBUFFERED"] = "1"
    return env


def run_snakemake(args: list[str], cwd: Path = REPO, timeout: int = 1500):
    """Run snakemake from the repo with this environment; fail with its output's tail if it fails."""
    import subprocess

    proc = subprocess.run(
        [venv_bin("snakemake"), *args], cwd=cwd, env=subprocess_env(), capture_output=True, text=True, timeout=timeout
    )
    if proc.returncode != 0:
        pytest.fail(f"snakemake {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-6000:]}")
    return proc


SMOKE = ["--configfile", str(REPO / "config.yaml"), str(REPO / "presets" / "smoke.yaml")]


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory) -> Path:
    """The whole DAG on presets/smoke.yaml, run locally once per session; returns its results directory."""
    results = tmp_path_factory.mktemp("smoke") / "results"
    run_snakemake(["--cores", "2", *SMOKE, "--config", f"results={results}"])
    return results


def make_tokenizer(out_dir, n_words=10):
    """A word-level tokenizer of n_words + [PAD] tokens, saved as an AutoTokenizer-loadable directory."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {f"w{i}": i for i in range(n_words)} | {"[PAD]": n_words}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[PAD]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]").save_pretrained(str(out_dir))


def tiny_teacher(vocab=12, seq_len=8, seed=0, dropout=0.1):
    """A small DiT with weights away from their zero init (adaLN, output layer): a "trained" teacher for unit tests."""
    import torch

    from didi.model import DiT, DiTConfig

    torch.manual_seed(seed)
    model = DiT(DiTConfig(vocab, seq_len, hidden=16, layers=2, heads=2, cond_dim=8, dropout=dropout))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model.eval()
