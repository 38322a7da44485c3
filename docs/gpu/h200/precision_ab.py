"""The one-off precision A/B behind docs/benchmarks.md ("The GPU check", measured on one H200): the float32 network
of sampling and distillation against the same calls under bf16 autocast and under TF32 matmuls, at paper size on
synthetic tokens, in one run. Kept as the record of how those ratios were measured (CUDA only):

    PYTHONPATH=. OUT=results python3 docs/gpu/h200/precision_ab.py     # writes $OUT/gpu_ab.json

Its distill_bf16 row wraps the whole iteration in autocast, which is what distill.bf16 now does
(gpu_check_distill_bf16.json: the switch itself, 0.79 iterations/s, 105.7 GiB)."""
import contextlib, json, os, sys, time
import torch
from didi import bench, config

cfg = config.load([str(config.DEFAULT_CONFIG), str(config.REPO_ROOT / "presets" / "paper.yaml")])
device = torch.device("cuda")
mask_id = cfg["tokenizer"]["vocab_size"]
model = bench.build_teacher(cfg, mask_id + 1, None, device)
blocks = bench.synthetic_blocks(cfg, 64)
out = {}

@contextlib.contextmanager
def tf32():
    torch.backends.cuda.matmul.allow_tf32 = True
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = False

contexts = {"fp32": contextlib.nullcontext, "bf16": lambda: torch.autocast("cuda", dtype=torch.bfloat16), "tf32": tf32}

def run(name, fn, ctx):
    torch.cuda.empty_cache(); torch.cuda.reset_peak_memory_stats()
    t = time.perf_counter()
    try:
        with contexts[ctx]():
            r = fn()
    except Exception as e:
        r = {"error": f"{type(e).__name__}: {e}"[:500]}
    r["peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
    r["wall_s"] = time.perf_counter() - t
    out[f"{name}_{ctx}"] = r
    print(f"{name}_{ctx}", json.dumps(r)[:500], flush=True)
    json.dump(out, open(os.path.join(os.environ.get("OUT", "/tmp"), "gpu_ab.json"), "w"), indent=1)

for batch in (8, 32):
    for ctx in ("fp32", "bf16", "tf32"):
        run(f"sampler_nfe16_b{batch}", lambda: bench.bench_sampler(cfg, model, mask_id, 16, batch), ctx)
for ctx in ("bf16", "fp32"):
    run("distill", lambda: bench.bench_distill(model, blocks, mask_id, cfg, 3), ctx)
