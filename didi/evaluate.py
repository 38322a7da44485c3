"""Evaluation of generated text: generative perplexity under a judge LM, unigram entropy, and MAUVE.

The protocol is docs/method.md section 4, and the same code scores model samples and held-out real text.

Generative perplexity (`gen_ppl`)
  1. Each sample's decoded text is retokenised with the JUDGE's tokenizer (`add_special_tokens=False`: the text
     already carries its BOS/EOS strings, which a GPT-2-style tokenizer maps back to its EOS id). Token counts can
     therefore differ from the generator's.
  2. Scored positions (before chunking), by `evaluation.eos_policy`. Position 0 is never scored (nothing conditions
     it); an EOS at position 0 is the BOS of a wrapped block.
       "mdlm":          MDLM's and DiDi-Instruct's rule on the whole retokenised row, `valid = (cumsum(x == eos) == 1)
                        | (x != eos)`: every non-EOS token, and only the first EOS of the row, position 0 INCLUDED in
                        the count (so in a BOS-led sample no later EOS is scored). The default.
       "official":      "mdlm" on the rows the official code builds: each row truncated to the model length L (the
                        sample's own length) after retokenisation, then the rows of each batch of
                        `evaluation.batch_size` right-padded to the batch's longest with EOS (the official code's pad
                        for GPT-2), so the first padding EOS of a short row without an earlier EOS is scored. Put beside the paper's numbers like for like; the result
                        depends on the batch composition.
       "first_in_text": every position >= 1 except EOS tokens after the first EOS at position >= 1 (our earlier
                        "mdlm": the first in-text EOS of a BOS-led sample is scored).
       "truncate":      positions 1 .. the first EOS at position >= 1, that EOS included; nothing after it.
       "keep":          every position >= 1.
  3. Sequences longer than the judge context (`n_positions`, 1024 for GPT-2 Large) are cut into consecutive
     chunks of that length, each scored on its own; as in MDLM's `compute_generative_perplexity`, the first token of
     every chunk is not scored (no context inside the chunk).
  4. Batches of chunks are right-padded with an attention mask; padded positions are never scored, so the batch
     size does not change the result. The judge runs in float32.
  5. Corpus-level, token-weighted: exp(sum of NLL over all scored tokens / number of scored tokens). Per-sample NLL
     sums and counts are kept, and a bootstrap over samples (resample samples with replacement, recompute the
     token-weighted ratio) gives the confidence interval.

Entropy (`unigram_entropy`): per sample, the entropy (nats) of the empirical distribution of the generated token
ids, counting every generated id (BOS/EOS/[PAD] included, nothing dropped); mean and sample std over samples.

MAUVE (`mauve_score`): `mauve.compute_mauve` on features we compute ourselves: the judge's last hidden state at the
last scored position of each sample's first chunk (what mauve does with GPT-2 features: last token of the text
truncated to the context). mauve's own featurisation (`featurize_model_name`) is never used: it would download.
The area under mauve's divergence curve is re-taken with a tie-robust sort (`frontier_area`).

Commands: `didi evaluate` (one sample file) and `didi reference` (held-out real text, sets a and b).
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from didi import config, data, io

log = logging.getLogger("didi.evaluate")

EOS_POLICIES = ("mdlm", "official", "first_in_text", "truncate", "keep")


# ---------------------------------------------------------------------------------------------- judge
def load_judge(judge_dir: str | Path):
    """(model float32 eval, tokenizer, info) of the judge described by `judge_dir/judge.json` (the judge step's
    loader, imported when needed so `didi table` does not pay for transformers)."""
    from didi.judge import load_judge as judge_loader

    return judge_loader(judge_dir)


def judge_id(model, info: dict) -> str:
    """A readable name: the hub name / directory of a pretrained judge, or the size of a locally trained one."""
    if not info.get("trained"):
        return str(info["path"])
    c = model.config
    return f"local-{c.model_type}-{c.n_layer}L-{c.n_embd}d"


def judge_context(model, context: int | None = None) -> int:
    if context:
        return int(context)
    c = model.config
    return int(getattr(c, "n_positions", None) or c.max_position_embeddings)


# ---------------------------------------------------------------------------------------------- gen-PPL
def score_mask(ids: list[int], eos_id: int | None, eos_policy: str) -> np.ndarray:
    """Which positions of one retokenised sample are scored (before chunking); see the module docstring."""
    if eos_policy not in EOS_POLICIES:
        raise ValueError(f"evaluation.eos_policy must be one of {EOS_POLICIES}, got {eos_policy!r}")
    ids = np.asarray(ids, dtype=np.int64)
    mask = np.arange(len(ids)) >= 1
    if eos_policy == "keep" or eos_id is None:
        return mask
    if eos_policy in ("mdlm", "official"):
        is_eos = ids == eos_id
        return mask & ((np.cumsum(is_eos) == 1) | ~is_eos)
    eos = np.flatnonzero(ids[1:] == eos_id) + 1  # EOS positions >= 1; the first one stays scored
    if len(eos) and eos_policy == "truncate":
        mask[eos[0] + 1:] = False
    elif len(eos) and eos_policy == "first_in_text":
        mask[eos[1:]] = False
    return mask


def official_rows(encoded: list[list[int]], eos_id: int, max_length: int, batch_size: int) -> list[list[int]]:
    """The rows MDLM's `compute_generative_perplexity` scores: truncated to the model length, each batch padded to
    its longest row with EOS (GPT-2 has no pad token; the official code sets pad = EOS). A judge with a pad token
    of its own is padded with EOS too: its padding would otherwise count as text under the rule."""
    rows = [list(ids[:max_length]) for ids in encoded]
    padded = []
    for start in range(0, len(rows), batch_size):
        batch = rows[start:start + batch_size]
        width = max(len(ids) for ids in batch)
        padded += [ids + [eos_id] * (width - len(ids)) for ids in batch]
    return padded


@torch.inference_mode()
def gen_ppl(texts: list[str], model, tokenizer, batch_size: int, eos_policy: str, context: int | None = None,
            max_length: int | None = None) -> dict:
    """Generative perplexity of `texts` under the judge `model` (see the module docstring for the exact rules).
    `max_length`: the generator's length L, which the "official" policy truncates to.

    Returns {"ppl", "nll" [n] per-sample NLL sums (nats), "tokens" [n] per-sample scored-token counts,
    "judge_tokens" [n] retokenised lengths, "total_nll", "total_tokens", "features" [n, d] float32 (MAUVE)}.
    """
    context = judge_context(model, context)
    device = next(model.parameters()).device
    eos_id = tokenizer.eos_token_id
    pad_value = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0  # any id: never attended/scored

    if not texts:
        raise ValueError("no texts to score")
    retokenised = tokenizer(list(texts), add_special_tokens=False)["input_ids"]
    encoded = retokenised
    if eos_policy == "official":
        if not max_length:
            raise ValueError("eos_policy 'official' truncates to the model length: pass max_length")
        encoded = official_rows(retokenised, eos_id, max_length, batch_size)
    masks = [score_mask(ids, eos_id, eos_policy) for ids in encoded]
    # Positions past the last scored one cannot influence scored ones (causal judge): do not feed them.
    lengths = [int(np.flatnonzero(m)[-1]) + 1 if m.any() else min(len(ids), 1) for ids, m in zip(encoded, masks)]
    chunks = [
        (i, start, encoded[i][start:min(start + context, lengths[i])], masks[i][start:min(start + context, lengths[i])])
        for i in range(len(texts))
        for start in range(0, lengths[i], context)
    ]

    n = len(texts)
    hidden = model.config.hidden_size
    nll = np.zeros(n, dtype=np.float64)
    tokens = np.zeros(n, dtype=np.int64)
    fed = np.zeros(n, dtype=np.int64)
    features = np.zeros((n, hidden), dtype=np.float32)
    progress = io.Progress(total=len(chunks), every=max(1, 20 * batch_size), desc="judge", unit="seq", logger=log)
    head = model.get_output_embeddings()
    for b in range(0, len(chunks), batch_size):
        batch = chunks[b:b + batch_size]
        width = max(len(c[2]) for c in batch)
        x = torch.full((len(batch), width), pad_value, dtype=torch.long)
        attention = torch.zeros((len(batch), width), dtype=torch.long)
        scored = torch.zeros((len(batch), width), dtype=torch.bool)
        for row, (_, _, ids, m) in enumerate(batch):
            x[row, :len(ids)] = torch.as_tensor(ids, dtype=torch.long)
            attention[row, :len(ids)] = 1
            scored[row, :len(ids)] = torch.as_tensor(m)
        x, attention, scored = x.to(device), attention.to(device), scored.to(device)
        # One trunk pass gives both the logits (via the LM head) and the MAUVE features (last hidden state).
        h = model.base_model(input_ids=x, attention_mask=attention).last_hidden_state.float()
        logits = head(h).float()
        # Targets are positions 1.. of each chunk: a chunk's first token (no context inside the chunk) is never one.
        token_nll = F.cross_entropy(logits[:, :-1].transpose(1, 2), x[:, 1:], reduction="none")
        token_nll = torch.where(scored[:, 1:], token_nll, torch.zeros_like(token_nll)).double().cpu()
        counts = scored[:, 1:].sum(1).cpu()
        for row, (i, start, ids, m) in enumerate(batch):
            nll[i] += float(token_nll[row].sum())
            tokens[i] += int(counts[row])
            fed[i] += len(ids)
            if start == 0:
                last = int(np.flatnonzero(m)[-1]) if m.any() else len(ids) - 1
                features[i] = h[row, max(last, 0)].cpu().numpy()
        progress.update(min(b + batch_size, len(chunks)))

    # Every sample went through the judge in full (up to its last scored position): nothing dropped.
    assert len(nll) == len(texts) and np.array_equal(fed, np.asarray(lengths)), "a sample was not fully scored"
    total_nll, total_tokens = float(nll.sum()), int(tokens.sum())
    if total_tokens == 0:
        raise ValueError("no token was scored: every sample is shorter than two judge tokens")
    return {
        "ppl": float(np.exp(total_nll / total_tokens)),
        "nll": nll,
        "tokens": tokens,
        "judge_tokens": np.array([len(e) for e in retokenised], dtype=np.int64),
        "total_nll": total_nll,
        "total_tokens": total_tokens,
        "features": features,
    }


def bootstrap_ppl(nll: np.ndarray, tokens: np.ndarray, resamples: int, confidence: float, seed: int):
    """Percentile CI of the token-weighted gen-PPL, resampling samples (not tokens) with replacement."""
    if resamples == 0:
        return float("nan"), float("nan")
    generator = torch.Generator().manual_seed(seed)
    idx = torch.randint(len(nll), (resamples, len(nll)), generator=generator)
    nll_t = torch.as_tensor(nll, dtype=torch.float64)[idx].sum(1)
    tok_t = torch.as_tensor(tokens, dtype=torch.float64)[idx].sum(1)
    ppl = torch.exp(nll_t / tok_t.clamp_min(1))
    alpha = (1.0 - confidence) / 2
    lo, hi = torch.quantile(ppl, torch.tensor([alpha, 1.0 - alpha], dtype=torch.float64)).tolist()
    return lo, hi


# ---------------------------------------------------------------------------------------------- entropy
def unigram_entropy(ids_row) -> float:
    """Entropy (nats) of the empirical unigram distribution of one sample's token ids."""
    return data.entropy_of_counts(np.unique(np.asarray(ids_row).ravel(), return_counts=True)[1])


def entropy_stats(ids: np.ndarray) -> dict:
    """Per-sample unigram entropy over all generated ids (nothing dropped); mean and sample std (ddof=1)."""
    per_sample = np.array([unigram_entropy(row) for row in np.asarray(ids)])
    std = float(per_sample.std(ddof=1)) if len(per_sample) > 1 else 0.0
    return {"entropy": float(per_sample.mean()), "entropy_std": std, "per_sample_entropy": per_sample.tolist()}


# ---------------------------------------------------------------------------------------------- MAUVE
def mauve_from_features(p_features: np.ndarray, q_features: np.ndarray, mauve_cfg: dict, seed: int) -> dict:
    """MAUVE(P, Q) with the quantisation settings of `evaluation.mauve`; the k-means seed is recorded."""
    import mauve

    out = mauve.compute_mauve(
        p_features=np.asarray(p_features, dtype=np.float32),
        q_features=np.asarray(q_features, dtype=np.float32),
        num_buckets=mauve_cfg["num_buckets"],
        kmeans_num_redo=mauve_cfg["kmeans_num_redo"],
        kmeans_max_iter=mauve_cfg["kmeans_max_iter"],
        mauve_scaling_factor=mauve_cfg["scaling_factor"],
        seed=seed,
        verbose=False,
    )
    return {"mauve": frontier_area(out.divergence_curve), "mauve_num_buckets": int(out.num_buckets),
            "mauve_seed": seed, "mauve_samples": int(len(p_features))}


def frontier_area(divergence_curve: np.ndarray) -> float:
    """MAUVE = area under the divergence frontier, as mauve computes it, but with ties sorted consistently.

    mauve 0.4.0 argsorts the curve by x alone; when histograms coincide many points tie at x = 1 and the area
    depends on the sort's tie order (MAUVE(P, P) comes out anywhere in [0.5, 1]). The frontier is non-increasing,
    so ties in x are ordered by decreasing y (and vice versa); without ties this equals `out.mauve` exactly.
    """
    x, y = np.asarray(divergence_curve, dtype=np.float64).T

    def area(a, b):
        order = np.lexsort((-b, a))  # a ascending, ties: b descending
        return float(np.trapezoid(b[order], a[order]))

    return 0.5 * (area(x, y) + area(y, x))


def judge_features(texts: list[str], model, tokenizer, batch_size: int, eos_policy: str, context=None,
                   max_length: int | None = None) -> np.ndarray:
    return gen_ppl(texts, model, tokenizer, batch_size, eos_policy, context, max_length)["features"]


def mauve_score(p_texts, q_texts, model, tokenizer, mauve_cfg: dict, seed: int, batch_size: int = 16,
                eos_policy: str = "truncate", context: int | None = None, max_length: int | None = None) -> dict:
    """MAUVE of generated texts P against real texts Q, on judge features computed here in float32."""
    p = judge_features(p_texts, model, tokenizer, batch_size, eos_policy, context, max_length)
    q = judge_features(q_texts, model, tokenizer, batch_size, eos_policy, context, max_length)
    return mauve_from_features(p, q, mauve_cfg, seed)


# ---------------------------------------------------------------------------------------------- one evaluation
def measure(texts: list[str], ids: np.ndarray, model, tokenizer, cfg: dict, q_texts: list[str] | None) -> dict:
    """gen-PPL (+ CI and per-sample values), entropy and MAUVE against `q_texts`: the fields of one result row."""
    ev, seed = cfg["evaluation"], cfg["seed"]
    if len(texts) != len(ids):
        raise ValueError(f"{len(texts)} texts but {len(ids)} id rows")
    max_length = np.asarray(ids).shape[1]  # the generator's L ("official" truncates the retokenised rows to it)
    ppl = gen_ppl(texts, model, tokenizer, ev["batch_size"], ev["eos_policy"], max_length=max_length)
    lo, hi = bootstrap_ppl(ppl["nll"], ppl["tokens"], ev["bootstrap"], ev["confidence"], seed)
    per_sample_ppl = np.exp(ppl["nll"] / np.maximum(ppl["tokens"], 1))
    row = {
        "gen_ppl": ppl["ppl"],
        "gen_ppl_lo": lo,
        "gen_ppl_hi": hi,
        "confidence": ev["confidence"],
        "bootstrap": ev["bootstrap"],
        "eos_policy": ev["eos_policy"],
        "num_samples": len(texts),
        "scored_tokens": ppl["total_tokens"],
        "total_nll": ppl["total_nll"],
        "per_sample_nll": ppl["nll"].tolist(),
        "per_sample_tokens": ppl["tokens"].tolist(),
        "per_sample_ppl": per_sample_ppl.tolist(),
        "judge_tokens": int(ppl["judge_tokens"].sum()),
        **entropy_stats(ids),
        "mauve": None,
    }
    if ev["mauve"]["enabled"] and q_texts is not None:
        n = min(len(texts), len(q_texts))
        if n < len(texts):
            log.warning("only %d reference texts for %d samples: MAUVE uses the first %d of each", n, len(texts), n)
        q_features = judge_features(q_texts[:n], model, tokenizer, ev["batch_size"], ev["eos_policy"],
                                    max_length=max_length)
        row.update(mauve_from_features(ppl["features"][:n], q_features, ev["mauve"], seed))
    return row


def measure_exact(ids: np.ndarray, info: dict, cfg: dict) -> dict:
    """The row of `measure` under `judge.kind: exact` (the synthetic chain, didi/synthetic.py): gen-NLL is the true
    NLL per chain position (nats/token), gen-PPL its exp; `nll_floor` is the data's own (the floor); chain
    positions holding a non-state id score log(leak / V) and are counted in `invalid_tokens`. No MAUVE."""
    from didi import synthetic

    ev, seed = cfg["evaluation"], cfg["seed"]
    ids = np.asarray(ids)
    if ids.shape[1] != info["seq_len"]:
        raise ValueError(f"samples have length {ids.shape[1]}, the exact judge's blocks {info['seq_len']}")
    world = synthetic.MarkovWorld(synthetic.MarkovSpec(**info["spec"]))
    scores = synthetic.score_blocks(world, ids, info["invalid_log_prob"])
    total_nll, total_tokens = float(scores["nll"].sum()), int(scores["tokens"].sum())
    lo, hi = bootstrap_ppl(scores["nll"], scores["tokens"], ev["bootstrap"], ev["confidence"], seed)
    return {
        "gen_ppl": float(np.exp(total_nll / total_tokens)), "gen_ppl_lo": lo, "gen_ppl_hi": hi,
        "gen_nll": total_nll / total_tokens, "nll_floor": info["nll_floor"],
        "invalid_tokens": int(scores["invalid"].sum()),
        "confidence": ev["confidence"], "bootstrap": ev["bootstrap"], "eos_policy": "exact",
        "num_samples": len(ids), "scored_tokens": total_tokens, "total_nll": total_nll,
        "per_sample_nll": scores["nll"].tolist(), "per_sample_tokens": scores["tokens"].tolist(),
        "per_sample_ppl": np.exp(scores["nll"] / scores["tokens"]).tolist(), "judge_tokens": total_tokens,
        **entropy_stats(ids),
        "mauve": None,
    }


def judged(texts: list[str], ids: np.ndarray, judge_dir: str | Path, cfg: dict, q_texts: list[str] | None):
    """(row of `measure` or `measure_exact`, judge name, judge info) for the judge in `judge_dir`."""
    info = io.read_json(Path(judge_dir) / "judge.json")
    if config.is_exact_judge(info):
        return measure_exact(ids, info, cfg), info["name"], info
    model, tokenizer, info = load_judge(judge_dir)
    model.to(io.default_device())
    return measure(texts, ids, model, tokenizer, cfg, q_texts), judge_id(model, info), info


def read_jsonl_texts(path: str | Path) -> list[str]:
    """One sample per line: a JSON object with a "text" field (or a bare JSON string)."""
    texts = []
    with open(path) as f:
        for line in f:
            if line.strip():
                obj = json.loads(line)
                texts.append(obj["text"] if isinstance(obj, dict) else obj)
    return texts


def write_jsonl_texts(path: str | Path, texts: list[str]) -> None:
    io.write_text(path, "".join(json.dumps({"text": t}) + "\n" for t in texts))


def sample_fields(samples: Path, meta: dict) -> dict:
    """The identity of a sample file: its own meta (sampler, precision, nfe, temperature, ... as the sampler wrote
    them), with model, variant and distillation seed from its directory (student-<variant>-seed<seed>, or
    student-<variant> for a run without seeds: SDTT's round students, the round by its NFE)."""
    model = samples.parent.name
    fields = {k: v for k, v in meta.items() if k != "provenance"}
    if "provenance" in meta:
        fields["sample_provenance"] = meta["provenance"]
    fields["model"] = model
    fields["variant"], fields["distill_seed"] = config.parse_student_model(model, seeded=False) or ("", None)
    return fields


def evaluate_files(samples: str | Path, judge_dir: str | Path, reference_dir: str | Path, out: str | Path,
                   cfg: dict) -> dict:
    samples = Path(samples)
    meta = io.read_json(f"{samples}.json")
    ids = np.load(f"{samples}.npy")
    texts = read_jsonl_texts(f"{samples}.jsonl")
    reference = read_jsonl_texts(Path(reference_dir) / "a.jsonl")
    row, judge_name, info = judged(texts, ids, judge_dir, cfg, reference[:len(texts)])
    log.info("evaluated %d samples of %s with judge %s", len(texts), samples, judge_name)
    metrics = {
        **sample_fields(samples, meta),
        **row,
        "seed": meta.get("seed", cfg["seed"]),
        "judge": judge_name,
        "judge_info": info,
        "samples": str(samples),
    }
    io.write_metrics(out, metrics, cfg)
    log.info("gen-PPL %.3f [%.3f, %.3f]  entropy %.3f  MAUVE %s  (%d samples, %d tokens) -> %s",
             metrics["gen_ppl"], metrics["gen_ppl_lo"], metrics["gen_ppl_hi"], metrics["entropy"],
             metrics["mauve"], metrics["num_samples"], metrics["scored_tokens"], out)
    return metrics


def add_evaluate_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--samples", required=True, help="sample stem: STEM.npy, STEM.jsonl and STEM.json")
    parser.add_argument("--judge", required=True, help="judge directory (judge.json)")
    parser.add_argument("--reference", required=True, help="reference directory (a.jsonl)")
    parser.add_argument("--out", required=True, help="evaluation JSON")
    config.add_arguments(parser)


def run_evaluate(args: argparse.Namespace) -> int:
    evaluate_files(args.samples, args.judge, args.reference, args.out, config.from_args(args))
    return 0


# ---------------------------------------------------------------------------------------------- reference
def pick_reference_blocks(num_blocks: int, n: int, seed: int, source: str = "tokens") -> tuple[np.ndarray, np.ndarray]:
    """Two disjoint random sets of n block indices, fixed by the seed."""
    if num_blocks < 2 * n:
        raise ValueError(f"{source}: {num_blocks} held-out blocks, but two disjoint reference sets of {n} "
                         f"need {2 * n}; lower sampling.num_samples or use more validation data")
    perm = torch.randperm(num_blocks, generator=torch.Generator().manual_seed(seed)).numpy()
    return perm[:n], perm[n:2 * n]


def reference_files(tokens: str | Path, tokenizer_dir: str | Path, judge_dir: str | Path, num_samples: int,
                    out_dir: str | Path, cfg: dict) -> dict:
    from transformers import AutoTokenizer

    blocks = data.load_blocks(tokens)
    a_idx, b_idx = pick_reference_blocks(len(blocks), num_samples, cfg["seed"], source=str(tokens))
    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    a_ids, b_ids = np.asarray(blocks[a_idx]), np.asarray(blocks[b_idx])
    a_texts, b_texts = data.decode(tokenizer, a_ids), data.decode(tokenizer, b_ids)

    row, judge_name, info = judged(a_texts, a_ids, judge_dir, cfg, b_texts)
    log.info("reference: %d + %d held-out blocks of %s, judge %s", num_samples, num_samples, tokens, judge_name)
    metrics = {
        "model": "reference", "variant": "", "sampler": "", "precision": "", "nfe": None, "temperature": None,
        "weights": "", "seed": cfg["seed"],
        **row,
        "judge": judge_name,
        "judge_info": info,
        "tokens_file": str(tokens),
        "a_blocks": a_idx.tolist(),
        "b_blocks": b_idx.tolist(),
    }
    out_dir = Path(out_dir)
    write_jsonl_texts(out_dir / "a.jsonl", a_texts)
    write_jsonl_texts(out_dir / "b.jsonl", b_texts)
    io.save_npy(out_dir / "a.npy", a_ids)
    io.save_npy(out_dir / "b.npy", b_ids)
    io.write_metrics(out_dir / "metrics.json", metrics, cfg)
    log.info("reference gen-PPL %.3f  entropy %.3f  MAUVE(a, b) %s", metrics["gen_ppl"], metrics["entropy"],
             metrics["mauve"])
    return metrics


def add_reference_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tokens", required=True, help="held-out token blocks (.npy)")
    parser.add_argument("--tokenizer", required=True, help="tokenizer directory (decodes the blocks)")
    parser.add_argument("--judge", required=True, help="judge directory (judge.json)")
    parser.add_argument("--num-samples", type=int, required=True, help="blocks per reference set")
    parser.add_argument("--out-dir", required=True)
    config.add_arguments(parser)


def run_reference(args: argparse.Namespace) -> int:
    reference_files(args.tokens, args.tokenizer, args.judge, args.num_samples, args.out_dir, config.from_args(args))
    return 0


COMMANDS = {
    "evaluate": (add_evaluate_arguments, run_evaluate),
    "reference": (add_reference_arguments, run_reference),
}
