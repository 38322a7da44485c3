# The autoregressive GPT-2 baseline (didi/baseline.py): trained on the teacher's blocks and token budget (or a
# pretrained model, baseline.pretrained), sampled from BOS with the KV cache at T = 1 and the teacher's temperature
# sweep. Its samples land beside the diffusion models' (model gpt2, sampler ar), so `evaluate` scores them alike;
# rule `sample` never matches them (its model wildcard is one of DIFFUSION_MODELS, common.smk).


rule train_baseline:
    input:
        train=f"{R}/tokens/train.npy",
        validation=f"{R}/tokens/validation.npy",
        tokenizer=rules.tokenizer.output,
    output:
        info=f"{R}/baseline/baseline.json",
    log:
        f"{R}/logs/train_baseline.log",
    benchmark:
        f"{R}/benchmarks/train_baseline.tsv"
    conda:
        ENVS
    threads: config["resources"]["threads"]
    resources:
        mem_mb=config["resources"]["mem_mb"],
        runtime=runtime("train"),
        gpu=min(1, config["resources"]["gpu"]),  # one process
    params:
        rerun_on=relevant("train_baseline"),
        config_json=command_config("train_baseline"),
        tokens=parent_of("train", "input"),
        out_dir=parent_of("info"),
    shell:
        logged(
            "OMP_NUM_THREADS={threads} {DIDI} train-baseline --config-json {params.config_json:q}"
            " --tokens {params.tokens} --tokenizer {input.tokenizer} --out-dir {params.out_dir}"
        )


rule sample_baseline:
    input:
        info=rules.train_baseline.output.info,
        tokenizer=rules.tokenizer.output,
    output:
        ids=f"{R}/samples/{BASELINE_STEM}.npy",
        text=f"{R}/samples/{BASELINE_STEM}.jsonl",
        meta=f"{R}/samples/{BASELINE_STEM}.json",
    log:
        f"{R}/logs/sample/{BASELINE_STEM}.log",
    benchmark:
        f"{R}/benchmarks/sample/{BASELINE_STEM}.tsv"
    conda:
        ENVS
    threads: 1
    resources:
        mem_mb=config["resources"]["mem_mb"],
        runtime=runtime("sample"),
        gpu=config["resources"]["sample_gpu"],
    params:
        rerun_on=relevant("sample_baseline"),
        config_json=command_config("sample_baseline"),
        stem=lambda wc, output: output.ids.removesuffix(".npy"),
        baseline_dir=parent_of("info", "input"),
        num_samples=config["sampling"]["num_samples"],
    shell:
        logged(
            "OMP_NUM_THREADS={threads} {DIDI} sample-baseline --config-json {params.config_json:q}"
            " --baseline {params.baseline_dir} --tokenizer {input.tokenizer} --temperature {wildcards.temperature}"
            " --num-samples {params.num_samples} --out {params.stem}"
        )
