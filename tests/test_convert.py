"""`didi convert`: released MDLM/DUO DiT checkpoints (their names and shapes, built here at tiny size) load strictly
into our DiT and compute what MDLM's DIT computes."""

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from didi import cli, config
from didi.convert import NEVER_LOGIT, ConversionError, convert, read_checkpoint
from didi.model import load_dit

torch.set_num_threads(1)

HIDDEN, LAYERS, HEADS, COND, RATIO = 16, 2, 2, 8, 4
REAL_IDS = 10                     # their vocabulary: 10 token ids + [MASK] (id 10), MDLM-style (no [PAD] row)
OUR_VOCAB = REAL_IDS + 2          # ours: the same 10 ids, [PAD] = 10, [MASK] = 11
SEQ_LEN = 6


def their_state_dict(seed: int) -> dict[str, torch.Tensor]:
    """MDLM `models/dit.py` DIT tensors, in registration order (so parameters() order minus the rotary buffer)."""
    g = torch.Generator().manual_seed(seed)

    def rand(*shape):
        return 0.3 * torch.randn(*shape, generator=g)

    D, V = HIDDEN, REAL_IDS + 1
    sd = {
        "vocab_embed.embedding": rand(V, D),
        "sigma_map.mlp.0.weight": rand(COND, 256), "sigma_map.mlp.0.bias": rand(COND),
        "sigma_map.mlp.2.weight": rand(COND, COND), "sigma_map.mlp.2.bias": rand(COND),
        "rotary_emb.inv_freq": 1.0 / (10_000 ** (torch.arange(0, D // HEADS, 2).float() / (D // HEADS))),
    }
    for i in range(LAYERS):
        sd |= {
            f"blocks.{i}.norm1.weight": 1 + rand(D),
            f"blocks.{i}.attn_qkv.weight": rand(3 * D, D),
            f"blocks.{i}.attn_out.weight": rand(D, D),
            f"blocks.{i}.norm2.weight": 1 + rand(D),
            f"blocks.{i}.mlp.0.weight": rand(RATIO * D, D), f"blocks.{i}.mlp.0.bias": rand(RATIO * D),
            f"blocks.{i}.mlp.2.weight": rand(D, RATIO * D), f"blocks.{i}.mlp.2.bias": rand(D),
            f"blocks.{i}.adaLN_modulation.weight": rand(6 * D, COND), f"blocks.{i}.adaLN_modulation.bias": rand(6 * D),
        }
    sd |= {
        "output_layer.norm_final.weight": 1 + rand(D),
        "output_layer.linear.weight": rand(V, D), "output_layer.linear.bias": rand(V),
        "output_layer.adaLN_modulation.weight": rand(2 * D, COND), "output_layer.adaLN_modulation.bias": rand(2 * D),
    }
    return sd


def mdlm_forward(sd: dict[str, torch.Tensor], ids: torch.Tensor) -> torch.Tensor:
    """MDLM's DIT.forward (time-unconditional: sigma = 0), written out with plain tensor ops and explicit
    softmax attention; flash-attn's non-interleaved rotary is x * cos + rotate_half(x) * sin."""
    B, L = ids.shape
    D, H = HIDDEN, HEADS
    d = D // H

    def linear(x, name, bias=True):
        return x @ sd[f"{name}.weight"].T + (sd[f"{name}.bias"] if bias else 0)

    def norm(x, name):
        return F.layer_norm(x, [D]) * sd[f"{name}.weight"]

    half = 128
    freqs = torch.exp(-math.log(10_000) * torch.arange(half).float() / half)
    t_freq = torch.cat([torch.cos(0 * freqs), torch.sin(0 * freqs)])[None].expand(B, -1)
    c = F.silu(linear(F.silu(linear(t_freq, "sigma_map.mlp.0")), "sigma_map.mlp.2"))
    angles = torch.outer(torch.arange(L).float(), sd["rotary_emb.inv_freq"])
    cos, sin = torch.cat([angles, angles], -1).cos(), torch.cat([angles, angles], -1).sin()

    def rotary(x):  # [B, L, H, d]
        x1, x2 = x[..., : d // 2], x[..., d // 2:]
        return x * cos[None, :, None] + torch.cat([-x2, x1], -1) * sin[None, :, None]

    x = sd["vocab_embed.embedding"][ids]
    for i in range(LAYERS):
        p = f"blocks.{i}"
        shift1, scale1, gate1, shift2, scale2, gate2 = linear(c, f"{p}.adaLN_modulation")[:, None].chunk(6, dim=2)
        h = norm(x, f"{p}.norm1") * (1 + scale1) + shift1
        q, k, v = linear(h, f"{p}.attn_qkv", bias=False).view(B, L, 3, H, d).unbind(2)
        q, k = rotary(q), rotary(k)
        att = torch.softmax(torch.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(d), dim=-1)
        h = torch.einsum("bhqk,bkhd->bqhd", att, v).reshape(B, L, D)
        x = x + gate1 * linear(h, f"{p}.attn_out", bias=False)
        h = norm(x, f"{p}.norm2") * (1 + scale2) + shift2
        x = x + gate2 * linear(F.gelu(linear(h, f"{p}.mlp.0"), approximate="tanh"), f"{p}.mlp.2")
    shift, scale = linear(c, "output_layer.adaLN_modulation")[:, None].chunk(2, dim=2)
    return linear(norm(x, "output_layer.norm_final") * (1 + scale) + shift, "output_layer.linear")


class Payload:
    """Pickled into the checkpoint's hyper-parameters: unpickling it for real would create `path`."""

    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (Path.touch, (Path(self.path),))


class Hparams:
    """A plain object with state (like an OmegaConf config or a tokenizer)."""

    def __init__(self):
        self.hidden_size, self.tokenizer_name = HIDDEN, "gpt2"


def tiny_cfg() -> dict:
    cfg = config.load()
    cfg["model"] |= {"hidden": HIDDEN, "layers": LAYERS, "heads": HEADS, "cond_dim": COND, "mlp_ratio": RATIO}
    cfg["data"]["seq_len"] = SEQ_LEN
    return cfg


def write_lightning_ckpt(path: Path, raw: dict, ema: dict, sentinel: Path) -> None:
    torch.save({
        "epoch": 3, "global_step": 1000,
        "state_dict": {f"backbone.{k}": v for k, v in raw.items()},
        "ema": {"decay": 0.9999, "num_updates": 1000,
                "shadow_params": [v for k, v in ema.items() if k != "rotary_emb.inv_freq"], "collected_params": None},
        "hyper_parameters": {"config": Hparams(), "payload": Payload(str(sentinel))},
    }, path)


def their_ids() -> torch.Tensor:
    ids = torch.randint(0, REAL_IDS + 1, (3, SEQ_LEN), generator=torch.Generator().manual_seed(0))
    ids[:, 1] = REAL_IDS  # some [MASK]s (their id 10, ours 11)
    return ids


def test_converted_lightning_ckpt_computes_mdlm_function(tmp_path):
    raw, ema = their_state_dict(1), their_state_dict(2)
    sentinel = tmp_path / "code-ran"
    ckpt = tmp_path / "mdlm.ckpt"
    write_lightning_ckpt(ckpt, raw, ema, sentinel)

    for weights, source in [("ema", ema), ("raw", raw)]:
        model = convert(ckpt, tiny_cfg(), OUR_VOCAB, weights).eval()
        ids = their_ids()
        ours_ids = torch.where(ids == REAL_IDS, OUR_VOCAB - 1, ids)
        with torch.no_grad():
            ours = model(ours_ids, torch.zeros(3))
            reference = mdlm_forward(source, ids)
        torch.testing.assert_close(ours[..., :REAL_IDS], reference[..., :REAL_IDS], atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(ours[..., OUR_VOCAB - 1], reference[..., REAL_IDS], atol=1e-4, rtol=1e-4)
        assert (ours[..., REAL_IDS] < NEVER_LOGIT / 2).all()  # our [PAD], absent from theirs: never predicted
    assert not sentinel.exists(), "loading the checkpoint ran code pickled in it"


def test_safetensors_input_equals_ckpt(tmp_path):
    sd = their_state_dict(3)
    save_file({f"backbone.{k}": v for k, v in sd.items()}, str(tmp_path / "model.safetensors"))
    write_lightning_ckpt(tmp_path / "m.ckpt", sd, sd, tmp_path / "sentinel")
    a = convert(tmp_path / "model.safetensors", tiny_cfg(), OUR_VOCAB).state_dict()
    b = convert(tmp_path / "m.ckpt", tiny_cfg(), OUR_VOCAB).state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    # the embedding rows: ids copied, [MASK] moved from their row 10 to our row 11, our [PAD] row zero
    assert torch.equal(a["vocab_embed.weight"][:REAL_IDS], sd["vocab_embed.embedding"][:REAL_IDS])
    assert torch.equal(a["vocab_embed.weight"][OUR_VOCAB - 1], sd["vocab_embed.embedding"][REAL_IDS])
    assert not a["vocab_embed.weight"][REAL_IDS].any()


@pytest.mark.parametrize("change, named", [
    ("drop", "blocks.1.mlp.2.bias"),                  # missing from the checkpoint
    ("add", "blocks.0.attn_qkv.bias"),                # not an MDLM name at all
    ("add", "blocks.2.norm1.weight"),                 # a third block: renamed, but our DiT has two
])
def test_missing_or_unexpected_key_fails_naming_it(tmp_path, change, named):
    sd = their_state_dict(4)
    if change == "drop":
        del sd[named]
    else:
        sd[named] = torch.ones(HIDDEN)
    save_file({f"backbone.{k}": v for k, v in sd.items()}, str(tmp_path / "model.safetensors"))
    with pytest.raises(ConversionError, match=named.replace(".", r"\.")):
        convert(tmp_path / "model.safetensors", tiny_cfg(), OUR_VOCAB)


def test_wrong_head_count_and_vocab_fail(tmp_path):
    save_file(their_state_dict(5), str(tmp_path / "model.safetensors"))
    cfg = tiny_cfg()
    cfg["model"]["heads"] = 4
    with pytest.raises(ConversionError, match="2 attention heads"):
        convert(tmp_path / "model.safetensors", cfg, OUR_VOCAB)
    with pytest.raises(ConversionError, match="more than our"):
        convert(tmp_path / "model.safetensors", tiny_cfg(), REAL_IDS - 1)


def test_ema_length_mismatch_fails(tmp_path):
    sd = their_state_dict(6)
    ckpt = tmp_path / "m.ckpt"
    torch.save({"state_dict": {f"backbone.{k}": v for k, v in sd.items()},
                "ema": {"shadow_params": list(sd.values())[:5]}}, ckpt)
    with pytest.raises(ConversionError, match="EMA holds 5 tensors"):
        read_checkpoint(ckpt, "ema")
    assert read_checkpoint(ckpt, "raw").keys() == sd.keys()


def test_cli_writes_a_loadable_model_dir(tmp_path):
    sd = their_state_dict(7)
    save_file({f"backbone.{k}": v for k, v in sd.items()}, str(tmp_path / "model.safetensors"))
    cfg = tiny_cfg()
    out = tmp_path / "teacher"
    code = cli.main(["convert", "--config-json", json.dumps(config.sections(cfg, "model", "data")),
                     "--checkpoint", str(tmp_path / "model.safetensors"), "--out-dir", str(out),
                     "--vocab-size", str(OUR_VOCAB)])
    assert code == 0
    model, meta = load_dit(out)
    assert meta["converted_from"]["weights"] == "ema" and len(meta["converted_from"]["sha256"]) == 64
    assert model.config.vocab_size == OUR_VOCAB and model.config.layers == LAYERS
    torch.testing.assert_close(model.blocks[1].attn_qkv.weight, sd["blocks.1.attn_qkv.weight"])
