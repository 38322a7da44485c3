"""Config loading and validation: bad input fails with a message naming the file, key or value."""

import json

import pytest
import yaml

from didi import config


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
