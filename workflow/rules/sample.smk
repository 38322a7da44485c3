# Sampling: every model over its NFE sweep (one file per sampler, precision, NFE, temperature), and the teacher
# pool that `positives: teacher` distillation reads.


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
    wildcard_constraints:
        model=DIFFUSION_MODELS,
    conda:
        ENVS
    threads: 1
    resources:
        mem_mb=config["resources"]["mem_mb"],
        runtime=runtime("sample"),
        gpu=config["resources"]["sample_gpu"],
    params:
        # this file's own settings only: the sweep lists name other files, and distill.rgas reruns RGAS files alone
        rerun_on=relevant("sample"),
        config_json=command_config("sample"),
        rgas=rgas_params,
        stem=lambda wc, output: output.ids.removesuffix(".npy"),
        num_samples=config["sampling"]["num_samples"],
        discriminator=lambda wc, input: (
            f"--discriminator {input.discriminator}" if wc.sampler == "rgas" else ""
        ),
    shell:
        logged(
            "OMP_NUM_THREADS={threads} {DIDI} sample --config-json {params.config_json:q} --model-dir {input.model}"
            " --tokenizer {input.tokenizer} --sampler {wildcards.sampler} {params.discriminator}"
            " --nfe {wildcards.nfe} --precision {wildcards.precision} --temperature {wildcards.temperature}"
            " --num-samples {params.num_samples} --out {params.stem}"
        )


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
        rerun_on=relevant("teacher_pool"),
        config_json=command_config("teacher_pool"),
        stem=lambda wc, output: output.ids.removesuffix(".npy"),
        nfe=config["distill"]["teacher_pool_nfe"],
        num_samples=config["distill"]["teacher_pool_size"],
        precision=config["diffusion"]["sampling_precision"],
    shell:
        logged(
            "OMP_NUM_THREADS={threads} {DIDI} sample --config-json {params.config_json:q}"
            " --model-dir {input.model} --tokenizer {input.tokenizer} --sampler ancestral --nfe {params.nfe}"
            " --precision {params.precision} --temperature 1.0 --num-samples {params.num_samples} --out {params.stem}"
        )
