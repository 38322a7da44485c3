"""`didi convert`: a released MDLM / DUO DiT checkpoint -> a didi model directory (`teacher.init_from`).

The released networks (kuleshov-group/mdlm and s-sahoo/duo, `models/dit.py`, class DIT) name their parameters
    vocab_embed.embedding [V, D]                  sigma_map.mlp.{0,2}.{weight,bias}     rotary_emb.inv_freq [d/2]
    blocks.{i}.norm1.weight, attn_qkv.weight [3D, D], attn_out.weight, norm2.weight, mlp.{0,2}.{weight,bias},
              adaLN_modulation.{weight,bias} [6D, cond]
    output_layer.norm_final.weight, output_layer.linear.{weight,bias} [V, D], output_layer.adaLN_modulation.*
and store them either in a Lightning `.ckpt` (`state_dict` keys prefixed `backbone.`, the EMA as a list
`ema.shadow_params` in parameter order) or in `.safetensors`. We rename them onto didi.model.DiT, remap the
vocabulary rows, and load strictly: any name left over on either side is an error that lists every such name.

Vocabulary: their last row is [MASK]. Rows before it are the tokenizer's ids, shared with ours (GPT-2 ids first).
MDLM's OWT model has V = 50,258 (50,257 GPT-2 ids + [MASK]; its [PAD] shares the [MASK] id); ours has a separate
[PAD] (V = 50,259). Ids we have and they lack never occur in their training data: they get a zero embedding and
a zero output row with bias NEVER_LOGIT, so the converted model never predicts them, exactly like theirs.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import re
from pathlib import Path

import torch

from didi import config, io

log = logging.getLogger("didi.convert")

NEVER_LOGIT = -1.0e4  # exp(-1e4) is 0 in float32/float64; finite, so log-probs and KL terms stay finite
PREFIXES = ("backbone.", "_orig_mod.")  # Lightning module attribute; torch.compile wrapper

# (their name pattern, our name). Their per-block names carry over unchanged under `blocks.{i}.`.
RENAMES = [
    (r"vocab_embed\.embedding", "vocab_embed.weight"),
    (r"sigma_map\.mlp\.(0|2)\.(weight|bias)", r"sigma_map.mlp.\1.\2"),
    (r"blocks\.(\d+)\.(norm1\.weight|attn_qkv\.weight|attn_out\.weight|norm2\.weight|mlp\.[02]\.(?:weight|bias)"
     r"|adaLN_modulation\.(?:weight|bias))", r"blocks.\1.\2"),
    (r"output_layer\.(norm_final\.weight|linear\.(?:weight|bias)|adaLN_modulation\.(?:weight|bias))",
     r"output_layer.\1"),
]
ROTARY = "rotary_emb.inv_freq"  # a buffer of theirs derived from the head size; checked, not copied


class ConversionError(ValueError):
    """The checkpoint does not map one-to-one onto the configured DiT."""


# ---------------------------------------------------------------------------------------------- reading
class _Opaque:
    """Stands in for every non-tensor Python object a Lightning checkpoint pickles (hyper-parameters, tokenizer,
    OmegaConf configs): it is built from nothing and its state is dropped, so loading runs no code named by the
    file. Everything else goes through torch.load(weights_only=True)."""

    def __init__(self, *args, **kwargs):
        pass

    def __setstate__(self, state):
        pass

    # Pickles also call what an earlier call returned (`getattr(cls, "method")(...)`): a placeholder is itself an
    # inert callable, and the weights-only unpickler accepts it because it compares equal to the allow-listed class.
    def __call__(self, *args, **kwargs):
        return _Opaque()

    def __eq__(self, other):
        return other is _Opaque or isinstance(other, _Opaque)

    __hash__ = object.__hash__


def _torch_load(path: Path) -> dict:
    unknown = torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
    if unknown:
        log.info("checkpoint pickles %d non-tensor classes; loading them as inert placeholders: %s",
                 len(unknown), ", ".join(sorted(unknown)))
    try:
        with torch.serialization.safe_globals([(_Opaque, name) for name in unknown]):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # the weights-only unpickler refuses some layouts (e.g. dict subclasses)
        raise ConversionError(
            f"{path}: cannot read it with torch.load(weights_only=True): {err}\n"
            "Export the weights where the checkpoint was made, then convert the .safetensors file:\n"
            "  python -c \"import torch, safetensors.torch as s; c = torch.load('IN.ckpt', weights_only=False); "
            "s.save_file({k: v.contiguous() for k, v in c['state_dict'].items()}, 'OUT.safetensors')\""
        ) from err


def _strip(name: str) -> str:
    changed = True
    while changed:
        changed = False
        for prefix in PREFIXES:
            if name.startswith(prefix):
                name, changed = name[len(prefix):], True
    return name


def read_checkpoint(path: str | Path, weights: str = "ema") -> dict[str, torch.Tensor]:
    """The DiT tensors of a released checkpoint under their own names (prefixes removed).

    `weights="ema"` takes the EMA parameters of a Lightning checkpoint (what MDLM/DUO evaluate); `"raw"` the
    trained ones. A .safetensors file holds one set of weights, taken as is.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if path.suffix == ".safetensors":
        tensors = io.load_tensors(path)
        return {_strip(k): v for k, v in tensors.items()}
    ckpt = _torch_load(path)
    state = ckpt.get("state_dict", ckpt) if isinstance(ckpt, dict) else None
    if not isinstance(state, dict):
        raise ConversionError(f"{path}: expected a dict with a 'state_dict', got {type(ckpt).__name__}")
    net = {_strip(k): v for k, v in state.items() if k.startswith(PREFIXES) and torch.is_tensor(v)}
    if not net:
        raise ConversionError(f"{path}: no 'backbone.' tensors in its state_dict (keys: {sorted(state)[:10]} ...)")
    if weights == "raw":
        return net
    if weights != "ema":
        raise ValueError(f"weights must be 'ema' or 'raw', got {weights!r}")
    ema = ckpt.get("ema")
    shadow = ema.get("shadow_params") if isinstance(ema, dict) else None
    if shadow is None:
        raise ConversionError(f"{path}: no EMA ('ema.shadow_params') in the checkpoint; use --weights raw")
    # The EMA tracks backbone.parameters() in registration order, which is the state_dict order minus buffers.
    params = [k for k in net if k != ROTARY]
    if len(shadow) != len(params):
        raise ConversionError(f"{path}: EMA holds {len(shadow)} tensors but the backbone has {len(params)} parameters")
    out = dict(net)
    for name, value in zip(params, shadow):
        if tuple(value.shape) != tuple(net[name].shape):
            raise ConversionError(f"{path}: EMA tensor for {name} has shape {tuple(value.shape)}, "
                                  f"the parameter {tuple(net[name].shape)}")
        out[name] = value
    return out


# ---------------------------------------------------------------------------------------------- mapping
def our_name(their: str) -> str | None:
    for pattern, replacement in RENAMES:
        if re.fullmatch(pattern, their):
            return re.sub(pattern, replacement, their)
    return None


def remap_vocab(tensor: torch.Tensor, vocab_size: int, fill: float) -> torch.Tensor:
    """Rows [real ids..., MASK] of theirs -> our `vocab_size` rows: shared ids copied, [MASK] moved to our last row,
    ids only we have set to `fill`."""
    theirs = tensor.shape[0]
    if theirs - 1 > vocab_size - 1:
        raise ConversionError(f"the checkpoint has {theirs - 1} token ids, more than our {vocab_size - 1}: "
                              "use the tokenizer the checkpoint was trained with")
    out = torch.full((vocab_size, *tensor.shape[1:]), fill, dtype=tensor.dtype)
    out[: theirs - 1] = tensor[: theirs - 1]
    out[vocab_size - 1] = tensor[theirs - 1]
    return out


def convert_state_dict(theirs: dict[str, torch.Tensor], vocab_size: int, heads: int) -> dict[str, torch.Tensor]:
    """Their DiT tensors -> ours (names and vocabulary rows). Unknown names of theirs are an error."""
    unknown = sorted(k for k in theirs if k != ROTARY and our_name(k) is None)
    if unknown:
        raise ConversionError(f"unexpected key(s) in the checkpoint, not part of an MDLM/DUO DiT: {unknown}")
    if ROTARY in theirs:  # 1 / 10000^(2j/d), j < d/2: its length fixes the head size, so the head count
        hidden = theirs["vocab_embed.embedding"].shape[1]
        their_heads = hidden // (2 * theirs[ROTARY].numel())
        if their_heads != heads:
            raise ConversionError(f"the checkpoint has {their_heads} attention heads (rotary size "
                                  f"{theirs[ROTARY].numel()}), the config model.heads = {heads}")
    out = {our_name(k): v for k, v in theirs.items() if k != ROTARY}
    out["vocab_embed.weight"] = remap_vocab(out["vocab_embed.weight"], vocab_size, 0.0)
    out["output_layer.linear.weight"] = remap_vocab(out["output_layer.linear.weight"], vocab_size, 0.0)
    out["output_layer.linear.bias"] = remap_vocab(out["output_layer.linear.bias"], vocab_size, NEVER_LOGIT)
    return out


def load_strict(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    """load_state_dict(strict=True), after naming every missing, unexpected and mis-shaped key at once."""
    ours = model.state_dict()
    missing = sorted(set(ours) - set(state))
    unexpected = sorted(set(state) - set(ours))
    shapes = sorted(f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(ours[k].shape)}"
                    for k in set(ours) & set(state) if state[k].shape != ours[k].shape)
    problems = [f"missing key(s) (in the model, not in the checkpoint): {missing}"] if missing else []
    problems += [f"unexpected key(s) (in the checkpoint, not in the model): {unexpected}"] if unexpected else []
    problems += [f"shape mismatch(es): {shapes}"] if shapes else []
    if problems:
        raise ConversionError("checkpoint does not match the configured DiT:\n  " + "\n  ".join(problems))
    model.load_state_dict({k: v.to(ours[k].dtype) for k, v in state.items()}, strict=True)


def convert(checkpoint: str | Path, cfg: dict, vocab_size: int, weights: str = "ema"):
    """A didi DiT (config from cfg["model"], L from cfg["data"]) holding the released checkpoint's weights."""
    from didi.model import DiT, DiTConfig

    theirs = read_checkpoint(checkpoint, weights)
    model = DiT(DiTConfig.from_config(cfg["model"], vocab_size, cfg["data"]["seq_len"]))
    load_strict(model, convert_state_dict(theirs, vocab_size, cfg["model"]["heads"]))
    return model


# ---------------------------------------------------------------------------------------------- command
def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 24), b""):
            h.update(chunk)
    return h.hexdigest()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    config.add_arguments(parser)
    parser.add_argument("--checkpoint", required=True, help="released MDLM/DUO .ckpt or .safetensors")
    parser.add_argument("--out-dir", required=True, help="model directory to write (model.safetensors + config.json)")
    vocab = parser.add_mutually_exclusive_group(required=True)
    vocab.add_argument("--tokenizer", help="the workflow's tokenizer directory: our vocabulary is len(tokenizer) + 1")
    vocab.add_argument("--vocab-size", type=int, help="our model vocabulary ([MASK] included), without a tokenizer")
    parser.add_argument("--weights", choices=["ema", "raw"], default="ema", help="EMA (default) or raw weights")


def run(args: argparse.Namespace) -> int:
    cfg = config.from_args(args)
    if args.tokenizer:
        from transformers import AutoTokenizer

        from didi.data import special_ids

        tokenizer = AutoTokenizer.from_pretrained(args.tokenizer)
        vocab_size = special_ids(tokenizer)["mask"] + 1
    else:
        vocab_size = args.vocab_size
    model = convert(args.checkpoint, cfg, vocab_size, args.weights)
    digest = sha256_file(args.checkpoint)
    from didi.model import save_dit

    save_dit(args.out_dir, model, {"converted_from": {"checkpoint": str(args.checkpoint), "sha256": digest,
                                                      "weights": args.weights}})
    log.info("converted %s (%s weights, sha256 %s) -> %s", args.checkpoint, args.weights, digest[:12], args.out_dir)
    return 0


COMMANDS = {"convert": (add_arguments, run)}
