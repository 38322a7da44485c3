# MDLM teacher pretraining and sampling (the teacher over the NFE sweep; the student rules reuse `sample`).


rule train_teacher:
    input:
        train=f"{R}/tokens/train.npy",
        validation=f"{R}/tokens/validation.npy",
        tokenizer=rules.tokenizer.output,
    output:
        ema=directory(f"{R}/teacher/ema"),
        raw=directory(f"{R}/teacher/raw"),
        metrics=f"{R}/teacher/metrics.json",
    log:
        f"{R}/logs/train_teacher.log",
    benchmark:
        f"{R}/benchmarks/train_teacher.tsv"
    conda:
        ENVS
    threads: config["resources"]["threads"]
    resources:
        mem_mb=config["resources"]["mem_mb"],
        runtime=runtime("train"),
        gpu=config["resources"]["gpu"],
    params:
        cfg=cfg_json("seed", "data", "model", "diffusion", "teacher", "wandb"),
        tokens=parent_of("train", "input"),
        out_dir=parent_of("metrics"),
        nproc=train_procs(),
    shell:
        "OMP_NUM_THREADS={threads} torchrun --standalone --nproc-per-node {params.nproc}"
        " -m didi.cli train-teacher --config-json {params.cfg:q} --tokens {params.tokens}"
        " --tokenizer {input.tokenizer} --out-dir {params.out_dir} > {log} 2>&1"


rule sample:
    input:
        unpack(sample_inputs),
    output:
        ids=f"{R}/samples/{{model}}/{SAMPLE_STEM}.npy",
        text=f"{R}/samples/{{model}}/{SAMPLE_STEM}.jsonl",
        meta=f"{R}/samples/{{model}}/{SAMPLE_STEM}.json",
    log:
        f"{R}/logs/sample/{{model}}/{SAMPLE_STEM}.log",
    benchmark:
        f"{R}/benchmarks/sample/{{model}}/{SAMPLE_STEM}.tsv"
    conda:
        ENVS
    threads: 1
    resources:
        mem_mb=config["resources"]["mem_mb"],
        runtime=runtime("sample"),
        gpu=config["resources"]["sample_gpu"],
    params:
        # students also read distill.rgas; the teacher's samples must not rerun when distillation changes
        cfg=lambda wc: cfg_json(
            "seed",
            "diffusion",
            "sampling",
            *(["distill"] if wc.model != "teacher" else []),
        ),
        stem=lambda wc, output: output.ids.removesuffix(".npy"),
        num_samples=config["sampling"]["num_samples"],
        discriminator=lambda wc, input: (
            f"--discriminator {input.discriminator}" if wc.sampler == "rgas" else ""
        ),
    shell:
        "OMP_NUM_THREADS={threads} didi sample --config-json {params.cfg:q} --model-dir {input.model}"
        " --tokenizer {input.tokenizer} --sampler {wildcards.sampler} {params.discriminator}"
        " --nfe {wildcards.nfe} --precision {wildcards.precision} --temperature {wildcards.temperature}"
        " --num-samples {params.num_samples} --out {params.stem} > {log} 2>&1"


rule teacher_pool:
    """Teacher samples used as the discriminator's positives by `positives: teacher` variants."""
    input:
        model=f"{R}/teacher/ema",
        tokenizer=rules.tokenizer.output,
    output:
        ids=f"{R}/samples/teacher/pool.npy",
        text=f"{R}/samples/teacher/pool.jsonl",
        meta=f"{R}/samples/teacher/pool.json",
    log:
        f"{R}/logs/sample/teacher/pool.log",
    benchmark:
        f"{R}/benchmarks/sample/teacher/pool.tsv"
    conda:
        ENVS
    threads: 1
    resources:
        mem_mb=config["resources"]["mem_mb"],
        runtime=runtime("sample"),
        gpu=config["resources"]["sample_gpu"],
    params:
        cfg=cfg_json("seed", "diffusion", "sampling"),
        stem=lambda wc, output: output.ids.removesuffix(".npy"),
        nfe=config["distill"]["teacher_pool_nfe"],
        num_samples=config["distill"]["teacher_pool_size"],
        precision=config["diffusion"]["sampling_precision"],
    shell:
        "OMP_NUM_THREADS={threads} didi sample --config-json {params.cfg:q} --model-dir {input.model}"
        " --tokenizer {input.tokenizer} --sampler ancestral --nfe {params.nfe} --precision {params.precision}"
        " --temperature 1.0 --num-samples {params.num_samples} --out {params.stem} > {log} 2>&1"
