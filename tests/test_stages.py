"""didi/stages.py, the one table of the workflow's steps: every resumable step's checkpoint identity follows the
keys of its Snakemake rerun trigger (but for its documented resumes_across), and its code identity covers the
modules the step runs and no other."""

import copy

import numpy as np
import pytest

from didi import baseline, config, distill, judge, runtime, sdtt, stages, train
from didi.diffusion import LogLinearSchedule
from didi.model import DiT, DiTConfig

TEACHER = DiT(DiTConfig(13, 16, hidden=8, layers=1, heads=2, cond_dim=4))
TOKENS = np.arange(16 * 20).reshape(20, 16) % 12


def other(value):
    """A value unlike `value`, of its kind (no checks: the identities only hash the config)."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value + 1
    if isinstance(value, float):
        return value / 2 + 0.1
    if isinstance(value, str):
        return value + "_other"
    if isinstance(value, list):
        return value + value[-1:] if value else [1]
    if isinstance(value, dict):
        return {**value, "other": 1}
    return 1  # None


def trigger(cfg: dict, step: str) -> dict:
    """What makes the step's rule rerun: its params (the distill rule adds the variant's switches; its seed is in
    the run's path: the config seed with distill.seeds null)."""
    relevant = stages.outputs_relevant(cfg, step)
    return {**relevant, "method": config.variant_method(cfg, "full")} if step == "distill" else relevant


IDENTITIES = {  # step -> its checkpoints' identity for a whole config, as the step's command computes it
    "train_teacher": lambda cfg: train.resume_identity(cfg, 10),
    "train_baseline": lambda cfg: baseline.resume_identity(cfg, 10),
    "train_judge": lambda cfg: judge.resume_identity(cfg, 10),
    "distill": lambda cfg: distill.resume_identity(cfg["distill"], config.variant_method(cfg, "full"), cfg["seed"],
                                                   LogLinearSchedule(cfg["diffusion"]["eps"]), TEACHER, TOKENS),
    "distill_sdtt": lambda cfg: sdtt.resume_identity(cfg["sdtt"], [], cfg["diffusion"], cfg["seed"], TEACHER, TOKENS),
}


def edits(cfg: dict, step: str):
    """(section, key, cfg with that one key changed) for every key of every section the step reads."""
    for name in stages.step_names(cfg, step):
        value = cfg[name]
        for key in (value if isinstance(value, dict) else [None]):
            edited = copy.deepcopy(cfg)
            if key is None:
                edited[name] = other(value)
            else:
                edited[name][key] = other(value[key])
            yield name, key, edited


@pytest.mark.parametrize("preset", [None, "synthetic"])
def test_a_checkpoint_is_resumed_unless_a_key_of_the_rerun_trigger_changed(repo, preset):
    cfg = config.load([repo / "config.yaml"] + ([repo / "presets" / f"{preset}.yaml"] if preset else []))
    cfg["distill"]["seeds"] = None  # the run's seed is the config seed
    assert set(IDENTITIES) == {step for step, table in stages.STEPS.items() if table.runs}
    for step, identity_of in IDENTITIES.items():
        across = stages.STEPS[step].resumes_across
        base_identity, base_trigger = identity_of(cfg), trigger(cfg, step)
        for name, key, edited in edits(cfg, step):
            reruns = trigger(edited, step) != base_trigger
            expected = reruns and key not in across.get(name, ())
            assert (identity_of(edited) != base_identity) == expected, (step, name, key, reruns)


def test_a_decayed_distillation_is_bound_to_its_length(repo):
    """The exception to resumes_across: with lr_schedule linear_decay every iteration's rate depends on the length."""
    cfg = config.load()
    for schedule, bound in (("constant", False), ("linear_decay", True)):
        cfg["distill"]["lr_schedule"] = schedule
        longer = config.deep_merge(cfg, {"distill": {"iterations": cfg["distill"]["iterations"] + 1}})
        assert (IDENTITIES["distill"](longer) != IDENTITIES["distill"](cfg)) == bound


def test_the_code_identity_covers_the_modules_a_step_runs(monkeypatch):
    modules = {step: runtime.code_modules(table.runs) for step, table in stages.STEPS.items() if table.runs}
    assert {"train", "diffusion", "model", "data", "runtime", "io", "stages"} <= set(modules["train_teacher"])
    assert not {"tables", "evaluate", "distill", "sample", "study", "cli"} & set(modules["train_teacher"])
    assert {"distill_cli", "distill", "objective", "model", "discriminator"} <= set(modules["distill"])
    assert "judge" in modules["train_baseline"] and "train" in modules["train_baseline"]
    assert runtime.code_modules() == sorted(p.stem for p in runtime.PACKAGE.glob("*.py"))
    cfg = config.load()
    before = {step: IDENTITIES[step](cfg)["code"] for step in modules}
    source = runtime.module_source
    for edited in ("tables", "diffusion", "judge"):
        monkeypatch.setattr(runtime, "module_source",
                            lambda name, edited=edited: source(name) + (b"\n# edited\n" if name == edited else b""))
        for step, runs in modules.items():
            assert (IDENTITIES[step](cfg)["code"] != before[step]) == (edited in runs), (edited, step)
    with pytest.raises(ValueError, match="names no module"):
        runtime.step_identity("sample", cfg)


def test_a_new_import_joins_the_code_identity(monkeypatch):
    """The closure is read from the source as it is: an edit that imports another module brings that module in."""
    source = runtime.module_source
    assert "tables" not in runtime.code_modules("judge")
    monkeypatch.setattr(runtime, "module_source",
                        lambda name: source(name) + (b"\nfrom didi import tables\n" if name == "synthetic" else b""))
    assert "tables" in runtime.code_modules("judge")

