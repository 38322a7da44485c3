# Real-text reference rows and per-sample-file evaluation (gen-PPL, entropy, MAUVE).


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
        rerun_on=relevant("reference"),
        config_json=command_config("reference"),
        out_dir=parent_of("metrics"),
        judge_dir=parent_of("judge", "input"),
        num_samples=config["sampling"]["num_samples"],
    shell:
        logged(
            "OMP_NUM_THREADS={threads} {DIDI} reference --config-json {params.config_json:q}"
            " --tokens {input.tokens} --tokenizer {input.tokenizer} --judge {params.judge_dir}"
            " --num-samples {params.num_samples} --out-dir {params.out_dir}"
        )


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
        rerun_on=relevant("evaluate"),
        config_json=command_config("evaluate"),
        stem=lambda wc, input: input.ids.removesuffix(".npy"),
        judge_dir=parent_of("judge", "input"),
        reference_dir=parent_of("reference", "input"),
    shell:
        logged(
            "OMP_NUM_THREADS={threads} {DIDI} evaluate --config-json {params.config_json:q}"
            " --samples {params.stem} --judge {params.judge_dir} --reference {params.reference_dir} --out {output}"
        )
