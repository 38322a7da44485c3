"""The DiT denoiser: shapes, conditioning switch, bidirectionality, the soft-token path, strict save/load."""

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from didi.model import DiT, DiTConfig, load_dit, num_params, save_dit

V, L = 13, 10


def tiny_config(**overrides) -> DiTConfig:
    base = dict(vocab_size=V, seq_len=L, hidden=32, layers=2, heads=4, cond_dim=16, mlp_ratio=4, dropout=0.0)
    return DiTConfig(**{**base, **overrides})


def randomised(model: DiT, seed: int = 0) -> DiT:
    """adaLN-zero and the zero output layer make a fresh DiT ignore sigma and output zeros: perturb every
    parameter so the properties below are tested on a generic network."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.2 * torch.randn(p.shape, generator=g))
    return model.eval()


def test_output_shape_dtype_and_fresh_model_is_uniform():
    torch.manual_seed(0)
    model = DiT(tiny_config()).eval()
    ids = torch.randint(0, V, (3, L))
    logits = model(ids, torch.rand(3))
    assert logits.shape == (3, L, V) and logits.dtype == torch.float32
    assert torch.equal(logits, torch.zeros_like(logits))  # zero-initialised output layer (MDLM)
    h, c = model.features(ids, torch.rand(3))
    assert h.shape == (3, L, 32) and c.shape == (3, 16)


def test_bf16_autocast_returns_float32():
    torch.manual_seed(0)
    model = randomised(DiT(tiny_config()))
    ids = torch.randint(0, V, (2, L))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(ids, torch.rand(2))
    assert logits.dtype == torch.float32
    torch.testing.assert_close(logits, model(ids, torch.rand(2)), atol=0.1, rtol=0.05)


def test_time_conditioning_switch():
    torch.manual_seed(0)
    ids = torch.randint(0, V, (2, L))
    sigma_a, sigma_b = torch.tensor([0.1, 0.2]), torch.tensor([3.0, 5.0])

    uncond = randomised(DiT(tiny_config(time_conditioning=False)))
    assert torch.equal(uncond(ids, sigma_a), uncond(ids, sigma_b))
    assert torch.equal(uncond(ids, sigma_a), uncond(ids, torch.zeros(2)))

    cond = DiT(tiny_config(time_conditioning=True))
    cond.load_state_dict(uncond.state_dict(), strict=True)  # same parameters either way (teacher -> discriminator)
    cond.eval()
    assert not torch.allclose(cond(ids, sigma_a), cond(ids, sigma_b))
    # the unconditional net is the conditional one evaluated at sigma = 0
    torch.testing.assert_close(cond(ids, torch.zeros(2)), uncond(ids, sigma_b))


def test_attention_is_bidirectional_and_rows_independent():
    torch.manual_seed(0)
    model = randomised(DiT(tiny_config()))
    ids = torch.randint(0, V, (2, L))
    changed = ids.clone()
    changed[0, -1] = (ids[0, -1] + 1) % V
    a, b = model(ids, torch.zeros(2)), model(changed, torch.zeros(2))
    assert not torch.allclose(a[0, 0], b[0, 0])  # a LATER token changes the FIRST position's logits
    torch.testing.assert_close(a[1], b[1])  # no leakage across the batch


def test_positions_matter():
    """Rotary makes the network order-aware: permuting the input is not just permuting the output."""
    torch.manual_seed(0)
    model = randomised(DiT(tiny_config()))
    ids = torch.randint(0, V, (1, L))
    perm = torch.roll(torch.arange(L), 1)
    assert not torch.allclose(model(ids[:, perm], torch.zeros(1)), model(ids, torch.zeros(1))[:, perm], atol=1e-4)


def test_features_head_and_soft_tokens_agree_with_forward():
    torch.manual_seed(0)
    model = randomised(DiT(tiny_config(time_conditioning=True)))
    ids = torch.randint(0, V, (2, L))
    sigma = torch.tensor([0.5, 2.0])
    logits = model(ids, sigma)
    torch.testing.assert_close(model.head(*model.features(ids=ids, sigma=sigma)), logits)
    one_hot = torch.nn.functional.one_hot(ids, V).float()
    soft = model.head(*model.features(inputs_embeds=one_hot @ model.embed.weight, sigma=sigma))
    torch.testing.assert_close(soft, logits)
    assert isinstance(model.embed, torch.nn.Embedding) and model.embed.weight.shape == (V, 32)
    with pytest.raises(ValueError):
        model.features(ids=ids, inputs_embeds=one_hot @ model.embed.weight, sigma=sigma)


def test_dropout_only_in_training():
    torch.manual_seed(0)
    model = randomised(DiT(tiny_config(dropout=0.5)))
    ids = torch.randint(0, V, (2, L))
    assert torch.equal(model(ids, torch.zeros(2)), model(ids, torch.zeros(2)))
    model.train()
    assert not torch.equal(model(ids, torch.zeros(2)), model(ids, torch.zeros(2)))


def test_parameter_names_follow_mdlm():
    """The checkpoint converter relies on these names (see the table in didi/model.py)."""
    names = set(DiT(tiny_config(layers=1)).state_dict())
    block = {f"blocks.0.{n}" for n in ["norm1.weight", "attn_qkv.weight", "attn_out.weight", "norm2.weight",
                                         "mlp.0.weight", "mlp.0.bias", "mlp.2.weight", "mlp.2.bias",
                                         "adaLN_modulation.weight", "adaLN_modulation.bias"]}
    other = {"vocab_embed.weight", "sigma_map.mlp.0.weight", "sigma_map.mlp.0.bias", "sigma_map.mlp.2.weight",
             "sigma_map.mlp.2.bias", "output_layer.norm_final.weight", "output_layer.linear.weight",
             "output_layer.linear.bias", "output_layer.adaLN_modulation.weight", "output_layer.adaLN_modulation.bias"}
    assert names == block | other


def test_paper_scale_parameter_count():
    """768/12/12, cond 128, GPT-2 vocab + [MASK]: MDLM's ~169M (built on the meta device: no memory)."""
    with torch.device("meta"):
        model = DiT(DiTConfig(vocab_size=50258, seq_len=1024))
    assert 169_000_000 < num_params(model) < 170_000_000


def test_config_from_config_and_errors():
    cfg = {"hidden": 64, "layers": 2, "heads": 4, "cond_dim": 32, "mlp_ratio": 4, "dropout": 0.1,
           "time_conditioning": False}
    c = DiTConfig.from_config(cfg, vocab_size=100, seq_len=16)
    assert c.to_dict() == {**cfg, "vocab_size": 100, "seq_len": 16}
    assert DiTConfig(**c.to_dict()) == c
    with pytest.raises(ValueError, match="bogus"):
        DiTConfig.from_config({**cfg, "bogus": 1}, 100, 16)
    with pytest.raises(ValueError, match="divisible"):
        DiTConfig.from_config({**cfg, "heads": 3}, 100, 16)


def test_save_load_round_trip(tmp_path):
    torch.manual_seed(0)
    model = randomised(DiT(tiny_config(time_conditioning=True)))
    save_dit(tmp_path / "m", model, extra={"step": 7})
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    assert config["kind"] == "didi-dit" and config["step"] == 7 and config["model"] == model.config.to_dict()

    loaded, config_json = load_dit(tmp_path / "m")
    assert config_json == config and loaded.config == model.config and not loaded.training
    ids = torch.randint(0, V, (2, L))
    sigma = torch.tensor([0.3, 1.0])
    assert torch.equal(loaded(ids, sigma), model(ids, sigma))
    assert num_params(loaded) == num_params(model)


def test_load_is_strict(tmp_path):
    model = DiT(tiny_config())
    save_dit(tmp_path / "m", model)
    weights = tmp_path / "m" / "model.safetensors"
    state = load_file(str(weights))

    del state["blocks.1.attn_out.weight"]
    save_file(state, str(weights))
    with pytest.raises(ValueError, match=r"blocks\.1\.attn_out\.weight") as err:
        load_dit(tmp_path / "m")
    assert str(tmp_path / "m") in str(err.value)

    state = load_file(str(weights))
    state["blocks.1.attn_out.weight"] = torch.zeros(32, 32)
    state["rotary_emb.inv_freq"] = torch.zeros(4)  # an MDLM key a converter forgot to drop
    save_file(state, str(weights))
    with pytest.raises(ValueError, match=r"rotary_emb\.inv_freq"):
        load_dit(tmp_path / "m")

    del state["rotary_emb.inv_freq"]
    state["blocks.1.attn_out.weight"] = torch.zeros(32, 31)
    save_file(state, str(weights))
    with pytest.raises(ValueError, match="size mismatch"):
        load_dit(tmp_path / "m")
