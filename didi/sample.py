"""`didi sample`: draw samples from a diffusion model directory (the teacher or a student) at one NFE.

    didi sample --model-dir results/teacher/ema --tokenizer results/tokenizer --nfe 8 --precision float64 \
        --temperature 1.0 --num-samples 64 --sampler ancestral \
        --out results/samples/teacher/ancestral_float64_nfe8_T1.00

Writes <out>.npy (token ids [N, L]), <out>.jsonl ({"text": ...} per sample) and <out>.json (how they were made:
sampler, precision, nfe, network calls, wall-clock, tokens/s, seed, ...). The seed is the config seed combined with
a stable hash of the output's file name, so every sample file is reproducible on its own and different files
(NFEs, temperatures, ...) draw different noise.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import time
from pathlib import Path

import numpy as np
import torch

from didi import config, data, io
from didi.diffusion import PRECISIONS

log = logging.getLogger("didi.sample")

SAMPLERS = ("ancestral", "rgas")


def file_seed(seed: int, out_stem: str | Path) -> int:
    """The config seed mixed with a stable hash of the output name (not Python's salted hash())."""
    digest = hashlib.sha256(f"{seed}:{Path(out_stem).name}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def use_cache(diffusion_cfg: dict, model) -> bool:
    """The sampler's cache reuses the last output when no token changed: valid only if the output ignores time."""
    return diffusion_cfg["cache"] and not model.config.time_conditioning


def run_record(num_samples: int, batch_size: int, seq_len: int, network_calls: int, seconds: float, seed: int,
               device) -> dict:
    """The metadata every sample file records about how its samples were drawn (any sampler)."""
    return {"network_calls": network_calls, "network_calls_per_batch": network_calls / -(-num_samples // batch_size),
            "seconds": seconds, "tokens_per_s": num_samples * seq_len / seconds, "num_samples": num_samples,
            "batch_size": batch_size, "seq_len": seq_len, "seed": seed, "device": str(device)}


def write_samples(out_stem: Path, ids: np.ndarray, texts: list[str], meta: dict, cfg: dict) -> None:
    """<out_stem>.npy (token ids [N, L]), .jsonl ({"text": ...} per sample), .json (meta + provenance)."""
    io.save_npy(Path(f"{out_stem}.npy"), ids)
    io.write_text(Path(f"{out_stem}.jsonl"), "".join(json.dumps({"text": t}) + "\n" for t in texts))
    io.write_metrics(Path(f"{out_stem}.json"), meta, cfg)


def exact_denoiser(judge_json: str | Path, tokenizer):
    """(denoiser, mask_id, seq_len) of an exact judge's chain (`judge.kind: exact`): the data's own denoiser,
    which sampled in K steps shows the factorisation error of K steps alone (synthetic.ExactDenoiser)."""
    from didi import synthetic

    info = io.read_json(judge_json)
    if not config.is_exact_judge(info):
        raise ValueError(f"{judge_json}: not an exact judge (kind {info.get('kind')!r}); only the exact world has an "
                         f"exact denoiser")
    world = synthetic.MarkovWorld(synthetic.MarkovSpec(**info["spec"]))
    mask_id = len(tokenizer)  # as for every model: [MASK] is the id after the tokenizer's own
    denoiser = synthetic.ExactDenoiser(world, info["seq_len"], mask_id, tokenizer.eos_token_id)
    return denoiser, mask_id, info["seq_len"]


def sample_to_files(cfg: dict, model_dir: str | Path, tokenizer_dir: str | Path, out_stem: str | Path, nfe: int,
                    precision: str, temperature: float, num_samples: int, sampler: str = "ancestral",
                    discriminator_dir: str | Path | None = None) -> dict:
    """Sample `num_samples` sequences in batches of cfg sampling.batch_size; write <out_stem>.{npy,jsonl,json}.
    Returns the metadata written to <out_stem>.json (without provenance)."""
    from didi.diffusion import LogLinearSchedule, sample
    from didi.model import load_dit, mask_id_of

    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r} (known: {', '.join(SAMPLERS)})")
    if sampler == "rgas" and discriminator_dir is None:
        raise ValueError("--sampler rgas needs --discriminator")
    out_stem = Path(out_stem)
    device = io.default_device()
    tokenizer = data.load_pretrained_tokenizer(str(tokenizer_dir))
    if Path(model_dir).is_file():  # a judge.json, not a model directory: an exact judge's chain samples itself
        model, mask_id, seq_len = exact_denoiser(model_dir, tokenizer)
        cache, weights = cfg["diffusion"]["cache"], "exact"  # it ignores time
    else:
        model, model_json = load_dit(model_dir, device)
        mask_id, seq_len = mask_id_of(model, tokenizer, model_dir, tokenizer_dir), model.config.seq_len
        cache = use_cache(cfg["diffusion"], model)
        weights = model_json.get("teacher", {}).get("weights") or Path(model_dir).name
    schedule = LogLinearSchedule(cfg["diffusion"]["eps"])
    t_end = cfg["diffusion"]["sampling_t_end"]
    seed = file_seed(cfg["seed"], out_stem)
    gen = torch.Generator(device=device).manual_seed(seed)

    discriminator, rgas = None, None
    if sampler == "rgas":
        from didi.discriminator import load_discriminator
        from didi.rgas import guidance, rgas_sample

        discriminator = load_discriminator(discriminator_dir, device)
        rgas = cfg["distill"]["rgas"]

    batch_size = cfg["sampling"]["batch_size"]
    log.info("sampling %d x %d tokens from %s: %s, NFE %d, %s, T=%g, cache %s, seed %d", num_samples, seq_len,
             model_dir, sampler, nfe, precision, temperature, cache, seed)
    progress = io.Progress(total=num_samples, every=batch_size, desc="sample", unit="seq", logger=log)
    ids, network_calls, disc_forward, disc_backward, seconds = [], 0, 0, 0, 0.0
    for start in range(0, num_samples, batch_size):
        n = min(batch_size, num_samples - start)
        if sampler == "ancestral":
            result = sample(model, n, seq_len, nfe, schedule, mask_id, gen, device, precision, cache,
                            temperature, t_end)
        else:
            result = rgas_sample(model, discriminator, n, seq_len, nfe, schedule, mask_id, gen, device,
                                 precision, temperature=temperature, t_end=t_end, **guidance(rgas))
            disc_forward += result.disc_forward_calls
            disc_backward += result.disc_backward_calls
        ids.append(result.ids.cpu())
        network_calls += result.network_calls
        seconds += result.seconds
        progress.update(start + n, force=True, network_calls=network_calls)
    ids = torch.cat(ids).numpy()
    if (ids >= mask_id).any() or (ids < 0).any():
        raise RuntimeError(f"sampler returned ids outside [0, {mask_id}): a [MASK] was left in a sample")

    texts = data.decode(tokenizer, ids)
    meta = {
        "model_dir": str(model_dir),
        "weights": weights,
        "sampler": sampler,
        "discriminator_dir": None if discriminator_dir is None else str(discriminator_dir),
        "precision": precision,
        "temperature": float(temperature),
        "nfe": int(nfe),
        "disc_forward_calls": disc_forward,
        "disc_backward_calls": disc_backward,
        "cache": cache,
        **run_record(num_samples, batch_size, seq_len, network_calls, seconds, seed, device),
    }
    write_samples(out_stem, ids.astype(data.token_dtype(mask_id + 1)), texts, meta, cfg)
    log.info("%d samples in %.2f s (%.4g tokens/s, %d network calls) -> %s.{npy,jsonl,json}", num_samples, seconds,
             meta["tokens_per_s"], network_calls, out_stem)
    return meta


# ---------------------------------------------------------------------------------------------- CLI
def add_arguments(p: argparse.ArgumentParser) -> None:
    config.add_arguments(p)
    p.add_argument("--model-dir", required=True, help="a model directory written by save_dit (teacher or student), "
                   "or an exact judge's judge.json (the chain's exact denoiser)")
    p.add_argument("--tokenizer", required=True, help="tokenizer directory")
    p.add_argument("--nfe", type=int, required=True, help="K, the number of sampler steps")
    p.add_argument("--precision", choices=PRECISIONS, required=True,
                   help="categorical sampling precision (the workflow passes diffusion.sampling_precision)")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--num-samples", type=int, default=None, help="default: sampling.num_samples")
    p.add_argument("--sampler", choices=SAMPLERS, default="ancestral")
    p.add_argument("--discriminator", default=None, help="discriminator directory (--sampler rgas)")
    p.add_argument("--out", required=True, help="output stem: writes STEM.npy, STEM.jsonl and STEM.json")


def run(args: argparse.Namespace) -> int:
    cfg = config.from_args(args)
    start = time.perf_counter()
    sample_to_files(cfg, args.model_dir, args.tokenizer, args.out, args.nfe,
                    args.precision, args.temperature,
                    args.num_samples or cfg["sampling"]["num_samples"], args.sampler, args.discriminator)
    log.info("total %.1f s", time.perf_counter() - start)
    return 0


COMMANDS = {"sample": (add_arguments, run)}
