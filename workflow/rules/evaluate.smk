# The judge, real-text reference rows, and per-sample-file evaluation (gen-PPL, entropy, MAUVE).


rule train_judge:
    input:
        train=rules.corpus.output.train,
        validation=rules.corpus.output.validation,
        tokenizer=rules.tokenizer.output,
    output:
        judge=f"{R}/judge/judge.json",
    log:
        f"{R}/logs/train_judge.log",
    benchmark:
        f"{R}/benchmarks/train_judge.tsv"
    conda:
        ENVS
    threads: config["resources"]["threads"]
    resources:
        mem_mb=config["resources"]["mem_mb"],
        runtime=runtime("train"),
        gpu=config["resources"]["sample_gpu"],
    params:
        cfg=cfg_json("seed", "judge", "data", "corpus"),
        corpus_dir=parent_of("train", "input"),
        out_dir=parent_of("judge"),
    shell:
        "OMP_NUM_THREADS={threads} didi train-judge --config-json {params.cfg:q}"
        " --corpus-dir {params.corpus_dir} --tokenizer {input.tokenizer} --out-dir {params.out_dir} > {log} 2>&1"


rule reference:
    input:
        tokens=f"{R}/tokens/validation.npy",
        tokenizer=rules.tokenizer.output,
        judge=rules.train_judge.output.judge,
    output:
        a=f"{R}/reference/a.jsonl",
        b=f"{R}/reference/b.jsonl",
        metrics=f"{R}/reference/metrics.json",
    log:
        f"{R}/logs/reference.log",
    benchmark:
        f"{R}/benchmarks/reference.tsv"
    conda:
        ENVS
    threads: 1
    resources:
        mem_mb=config["resources"]["mem_mb"],
        runtime=runtime("evaluate"),
        gpu=config["resources"]["sample_gpu"],
    params:
        cfg=cfg_json("seed", "evaluation"),
        out_dir=parent_of("metrics"),
        judge_dir=parent_of("judge", "input"),
        num_samples=config["sampling"]["num_samples"],
    shell:
        "OMP_NUM_THREADS={threads} didi reference --config-json {params.cfg:q} --tokens {input.tokens}"
        " --tokenizer {input.tokenizer} --judge {params.judge_dir} --num-samples {params.num_samples}"
        " --out-dir {params.out_dir} > {log} 2>&1"


rule evaluate:
    input:
        ids=f"{R}/samples/{{model}}/{SAMPLE_STEM}.npy",
        text=f"{R}/samples/{{model}}/{SAMPLE_STEM}.jsonl",
        meta=f"{R}/samples/{{model}}/{SAMPLE_STEM}.json",
        judge=rules.train_judge.output.judge,
        reference=rules.reference.output.metrics,
    output:
        f"{R}/eval/{{model}}/{SAMPLE_STEM}.json",
    log:
        f"{R}/logs/eval/{{model}}/{SAMPLE_STEM}.log",
    benchmark:
        f"{R}/benchmarks/eval/{{model}}/{SAMPLE_STEM}.tsv"
    conda:
        ENVS
    threads: 1
    resources:
        mem_mb=config["resources"]["mem_mb"],
        runtime=runtime("evaluate"),
        gpu=config["resources"]["sample_gpu"],
    params:
        cfg=cfg_json("seed", "evaluation"),
        stem=lambda wc, input: input.ids.removesuffix(".npy"),
        judge_dir=parent_of("judge", "input"),
        reference_dir=parent_of("reference", "input"),
    shell:
        "OMP_NUM_THREADS={threads} didi evaluate --config-json {params.cfg:q} --samples {params.stem}"
        " --judge {params.judge_dir} --reference {params.reference_dir} --out {output} > {log} 2>&1"
