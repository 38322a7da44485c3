# DiDi-Instruct distillation: one run per variant (the full method and the paper's cumulative ablation).


rule distill:
    input:
        unpack(distill_inputs),
    output:
        student=directory(f"{R}/distill/{{variant}}/student"),
        student_raw=directory(f"{R}/distill/{{variant}}/student_raw"),
        discriminator=directory(f"{R}/distill/{{variant}}/discriminator"),
        metrics=f"{R}/distill/{{variant}}/metrics.json",
    log:
        f"{R}/logs/distill/{{variant}}.log",
    benchmark:
        f"{R}/benchmarks/distill/{{variant}}.tsv"
    conda:
        ENVS
    threads: config["resources"]["threads"]
    resources:
        mem_mb=config["resources"]["mem_mb"],
        runtime=runtime("train"),
        gpu=config["resources"]["gpu"],
    params:
        cfg=cfg_json("seed", "diffusion", "distill", "wandb"),
        out_dir=parent_of("metrics"),
        nproc=train_procs(),
        pool=lambda wc, input: (
            f"--teacher-pool {input.pool}" if "pool" in input.keys() else ""
        ),
    shell:
        "OMP_NUM_THREADS={threads} torchrun --standalone --nproc-per-node {params.nproc}"
        " -m didi.cli distill --config-json {params.cfg:q} --teacher {input.teacher} --tokens {input.tokens}"
        " --tokenizer {input.tokenizer} --variant {wildcards.variant} {params.pool}"
        " --out-dir {params.out_dir} > {log} 2>&1"
