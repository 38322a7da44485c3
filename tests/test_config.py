"""Config loading and validation: bad input fails with a message naming the file, key or value."""

import json

import pytest
import yaml

from didi import config, stages


def write(tmp_path, name, data):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data))
    return path


def test_default_config_and_presets_validate(repo):
    cfg = config.load()
    assert cfg["model"]["time_conditioning"] is False
    smoke = config.load([repo / "config.yaml", repo / "presets" / "smoke.yaml"])
    assert smoke["data"]["seq_len"] == 32
    assert smoke["model"]["hidden"] == 32
    # the preset overrides one key of a section and keeps the rest (deep merge, as Snakemake does)
    assert smoke["teacher"]["lr"] == cfg["teacher"]["lr"]


def test_unknown_key_is_named(tmp_path, repo):
    preset = write(tmp_path, "typo.yaml", {"teacher": {"learning_rate": 1e-3}})
    with pytest.raises(config.ConfigError) as err:
        config.load([repo / "config.yaml", preset])
    assert "unknown key teacher.learning_rate" in str(err.value)
    assert "typo.yaml" in str(err.value)


def test_unknown_top_level_key_is_named(tmp_path, repo):
    preset = write(tmp_path, "top.yaml", {"modle": {"hidden": 3}})
    with pytest.raises(config.ConfigError, match="unknown key modle"):
        config.load([repo / "config.yaml", preset])


def test_wrong_type_names_key_and_value(tmp_path, repo):
    preset = write(tmp_path, "bad.yaml", {"model": {"hidden": "big"}, "sampling": {"precisions": ["float16"]}})
    with pytest.raises(config.ConfigError) as err:
        config.load([repo / "config.yaml", preset])
    message = str(err.value)
    assert "model.hidden: 'big' is not of type 'integer'" in message
    assert "sampling.precisions.0" in message and "float16" in message


def test_missing_config_file_is_named(tmp_path):
    missing = tmp_path / "nope.yaml"
    with pytest.raises(config.ConfigError, match="config file not found: .*nope.yaml"):
        config.load([missing])


def test_missing_referenced_file_is_named(tmp_path, repo):
    preset = write(tmp_path, "local.yaml", {"corpus": {"source": str(tmp_path / "no_such_corpus")}})
    with pytest.raises(config.ConfigError, match="corpus.source: file or directory not found: .*no_such_corpus"):
        config.load([repo / "config.yaml", preset])
    preset = write(tmp_path, "tok.yaml", {"tokenizer": {"pretrained": "./missing_tokenizer_dir"}})
    with pytest.raises(config.ConfigError, match="tokenizer.pretrained: .*missing_tokenizer_dir"):
        config.load([repo / "config.yaml", preset])


def test_hub_names_are_not_checked_as_paths(tmp_path, repo):
    preset = write(tmp_path, "hub.yaml", {"tokenizer": {"pretrained": "gpt2"}, "judge": {"pretrained": "gpt2-large"}})
    assert config.load([repo / "config.yaml", preset])["judge"]["pretrained"] == "gpt2-large"


def test_invalid_yaml_names_file(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("teacher: [unclosed\n")
    with pytest.raises(config.ConfigError, match="broken.yaml: not valid YAML"):
        config.load([path])


def test_partial_config_json_validates_only_given_sections():
    cfg = config.load()
    args = type("Args", (), {"config_json": json.dumps(config.sections(cfg, "seed", "teacher")), "configfile": None})
    assert set(config.from_args(args)) == {"seed", "teacher"}
    bad = {"teacher": {**cfg["teacher"], "steps": -1}}
    args.config_json = json.dumps(bad)
    with pytest.raises(config.ConfigError, match="teacher.steps"):
        config.from_args(args)


def test_variant_method_merges_and_rejects_unknown():
    cfg = config.load()
    baseline = config.variant_method(cfg, "baseline")
    assert baseline["score_decomposition"] is False
    assert baseline["positives"] == cfg["distill"]["method"]["positives"]
    with pytest.raises(config.ConfigError, match="unknown variant 'nope'"):
        config.variant_method(cfg, "nope")


def test_undefined_variant_in_run_is_named(tmp_path, repo):
    preset = write(tmp_path, "run.yaml", {"distill": {"run": ["full", "fulll"]}})
    with pytest.raises(config.ConfigError, match=r"distill.run: undefined variant\(s\) \['fulll'\]"):
        config.load([repo / "config.yaml", preset])
    preset = write(tmp_path, "rgas.yaml", {"distill": {"run": ["baseline"], "rgas": {"variants": ["full"]}}})
    with pytest.raises(config.ConfigError, match=r"distill.rgas.variants: \['full'\] not in distill.run"):
        config.load([repo / "config.yaml", preset])


def test_the_study_oracle_reward_is_rejected_for_didi_distill(tmp_path, repo):
    """reward_source exact needs the study world's likelihood: in distill.method or a variant it is named."""
    preset = write(tmp_path, "oracle.yaml", {"distill": {"method": {"reward_source": "exact"}}})
    with pytest.raises(config.ConfigError, match=r"distill.method.reward_source: exact needs a world's likelihood"):
        config.load([repo / "config.yaml", preset])
    preset = write(tmp_path, "variant.yaml", {"distill": {"variants": {"full": {"reward_source": "exact"}}}})
    with pytest.raises(config.ConfigError, match=r"distill.variants.full.reward_source: exact") as err:
        config.load([repo / "config.yaml", preset])
    assert "distill.method" not in str(err.value)


def test_nfe_above_seq_len_is_named(tmp_path, repo):
    preset = write(tmp_path, "nfe.yaml", {"data": {"seq_len": 32}, "sampling": {"nfe": [8, 64], "temperature_nfe": 8},
                                          "distill": {"nfe": [8, 33], "teacher_pool_nfe": 32}})
    with pytest.raises(config.ConfigError) as err:
        config.load([repo / "config.yaml", preset])
    message = str(err.value)
    assert "nfe.yaml" in message
    assert "sampling.nfe: NFE [64] > data.seq_len = 32" in message and "distill.nfe: NFE [33]" in message
    assert "teacher_pool_nfe" not in message and "temperature_nfe" not in message  # K = L is allowed


def test_precision_names_come_from_one_place(repo):
    """The schema's precision enums must list exactly diffusion.PRECISIONS (the wildcard regex is built from it)."""
    from didi.diffusion import PRECISIONS

    schema = yaml.safe_load((repo / "workflow" / "schemas" / "config.schema.yaml").read_text())
    props, shared = schema["properties"], {"$ref": "#/definitions/precision"}
    assert schema["definitions"]["precision"]["enum"] == list(PRECISIONS)
    assert props["diffusion"]["properties"]["sampling_precision"] == shared
    assert props["sampling"]["properties"]["precisions"]["items"] == shared
    assert props["distill"]["properties"]["rollout_precision"] == shared
    common = (repo / "workflow" / "rules" / "common.smk").read_text()
    assert 'precision="|".join(PRECISIONS)' in common and "float64|float32" not in common


def edited(cfg, section, **changes):
    out = json.loads(json.dumps(cfg))
    out[section].update(changes)
    return out


def test_outputs_relevant_ignores_cadence_and_other_files_keys():
    cfg = config.load()
    same = {  # step -> edits that must not change its params
        "train_teacher": [("teacher", {"log_every": 3, "checkpoint_every": 7, "eval_every": 9}),
                          ("wandb", {"mode": "offline"}), ("diffusion", {"sampling_precision": "float32"}),
                          ("sampling", {"nfe": [8]}), ("distill", {"rgas": {}})],
        "distill": [("distill", {"log_every": 3, "checkpoint_every": 7, "nfe": [4], "rgas": {}}),
                    ("sampling", {"nfe": [8]}), ("diffusion", {"sampling_precision": "float32"})],
        "sample": [("sampling", {"nfe": [8, 9], "temperatures": [0.5]}), ("teacher", {"lr": 1.0})],
        "teacher_pool": [("sampling", {"nfe": [8, 9], "num_samples": 3}), ("distill", {"nfe": [2]})],
        "train_judge": [("judge", {"log_every": 1})],
    }
    for step, edits in same.items():
        for section, changes in edits:
            assert stages.outputs_relevant(edited(cfg, section, **changes), step) == stages.outputs_relevant(
                cfg, step), (step, section, changes)
    changed = {  # step -> edits that must change its params
        "train_teacher": [("teacher", {"lr": 1.0}), ("diffusion", {"eps": 0.01}), ("teacher", {"steps": 2})],
        "distill": [("distill", {"iterations": 5}), ("distill", {"rollout_precision": "float32"}),
                    ("diffusion", {"eps": 0.01})],
        "sample": [("sampling", {"batch_size": 3}), ("diffusion", {"sampling_t_end": 0.1})],
        "train_judge": [("judge", {"lr": 1.0})],
    }
    for step, edits in changed.items():
        for section, changes in edits:
            assert stages.outputs_relevant(edited(cfg, section, **changes), step) != stages.outputs_relevant(
                cfg, step), (step, section, changes)
    for step, table in stages.STEPS.items():
        assert set(config.step_sections(cfg, step)) == set(table.reads)


@pytest.fixture
def distill_inputs(tmp_path):
    """A tokenizer of 12 ids (vocabulary 13 with [MASK]), a teacher config and token stats that agree with it."""
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    vocab = {f"t{i}": i for i in range(12)}
    tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel(vocab, unk_token="t0")))
    tok.save_pretrained(tmp_path / "tokenizer")
    from didi.model import DiT, DiTConfig, save_dit

    save_dit(tmp_path / "teacher", DiT(DiTConfig(13, 16, hidden=8, layers=1, heads=2, cond_dim=4)))  # the real format
    (tmp_path / "train.json").write_text(json.dumps({"seq_len": 16, "vocab": 13}))
    return tmp_path


def test_check_inputs_names_the_file_that_disagrees(distill_inputs):
    from didi.model import DiT, DiTConfig, save_dit

    root = distill_inputs
    args = (root / "teacher", root / "train.json", root / "tokenizer")
    assert config.check_inputs(*args) == {"seq_len": 16, "vocab_size": 13}
    (root / "train.json").write_text(json.dumps({"seq_len": 32, "vocab": 13}))
    with pytest.raises(config.ConfigError, match=r"L: .*teacher/config.json says seq_len 16, .*train.json says 32"):
        config.check_inputs(*args)
    (root / "train.json").write_text(json.dumps({"seq_len": 16, "vocab": 13}))
    save_dit(root / "teacher", DiT(DiTConfig(51, 16, hidden=8, layers=1, heads=2, cond_dim=4)))
    with pytest.raises(config.ConfigError, match=r"vocabulary: .*teacher/config.json says vocab_size 51, the "
                                                 r"tokenizer .*tokenizer gives 13"):
        config.check_inputs(*args)


def test_check_inputs_command_runs_from_the_cli(distill_inputs):
    from didi import cli

    root = distill_inputs
    argv = ["check-inputs", "--teacher", str(root / "teacher"), "--tokens", str(root / "train.json"),
            "--tokenizer", str(root / "tokenizer")]
    assert cli.main(argv) == 0
    (root / "train.json").write_text(json.dumps({"seq_len": 16, "vocab": 14}))
    with pytest.raises(config.ConfigError, match="train.json says vocab 14"):
        cli.main(argv)


def test_student_model_names_round_trip():
    from didi.config import parse_student_model, student_model

    assert student_model("teacher_pos", 12) == "student-teacher_pos-seed12"
    assert parse_student_model("student-teacher_pos-seed12") == ("teacher_pos", 12)
    assert parse_student_model("teacher") is None and parse_student_model("student-full") is None
    assert parse_student_model("student-sdtt", seeded=False) == ("sdtt", None)  # a run without seeds
    assert parse_student_model("student-full-seed3", seeded=False) == ("full", 3)
    assert parse_student_model("teacher", seeded=False) is None and parse_student_model("gpt2", seeded=False) is None


def test_a_judge_shorter_than_a_sample_is_rejected():
    """A locally trained judge whose context is shorter than L would score cut samples: the key is named."""
    cfg = config.load()
    cfg["judge"]["n_positions"] = cfg["data"]["seq_len"] - 1
    with pytest.raises(config.ConfigError, match=r"judge\.n_positions: 63 < data\.seq_len = 64"):
        config.validate(cfg)
    cfg["judge"]["pretrained"] = "gpt2-large"  # a pretrained judge's context is its own (1,024 for GPT-2)
    config.validate(cfg)


def test_distill_seeds_default_to_the_config_seed():
    cfg = config.load()
    assert config.distill_seeds(cfg) == cfg["distill"]["seeds"]
    cfg["distill"]["seeds"] = None
    assert config.distill_seeds(cfg) == [cfg["seed"]]


def test_the_judge_kind_is_decided_in_one_place():
    """config.is_exact_judge reads the config's judge section and a judge.json alike."""
    assert config.is_exact_judge({"kind": "exact"}) and not config.is_exact_judge({"kind": "lm"})
    assert not config.is_exact_judge({"path": "model", "trained": True})  # a GPT-2 judge's judge.json has no kind
    assert not config.is_exact_judge(config.load()["judge"])
