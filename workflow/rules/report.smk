# The tidy results table, the figures and markdown tables drawn from it, and the benchmark (not in `all`).


rule table:
    input:
        evals=eval_files(),
        reference=rules.reference.output.metrics,
    output:
        report(
            f"{R}/tables/results.csv",
            caption="../report/results_table.rst",
            category="Tables",
        ),
    log:
        f"{R}/logs/table.log",
    benchmark:
        f"{R}/benchmarks/table.tsv"
    conda:
        ENVS
    threads: 1
    resources:
        mem_mb=2000,
        runtime=runtime("light"),
    params:
        rerun_on=relevant("table"),
        config_json=command_config("table"),
    shell:
        logged(
            "{DIDI} table --config-json {params.config_json:q} --evals {input.evals}"
            " --reference {input.reference} --out {output}"
        )


rule figures:
    input:
        rules.table.output,
    output:
        **{
            f"{name}_{ext}": report(
                f"{R}/figures/{name}.{ext}",
                caption=f"../report/{name}.rst",
                category="Figures",
                subcategory=ext.upper(),
            )
            for name in FIGURES
            for ext in ("png", "pdf")
        },
        **{
            name: report(
                f"{R}/tables/{name}.md",
                caption=f"../report/{name}.rst",
                category="Tables",
            )
            for name in TABLES
        },
    log:
        f"{R}/logs/figures.log",
    benchmark:
        f"{R}/benchmarks/figures.tsv"
    conda:
        ENVS
    threads: 1
    resources:
        mem_mb=2000,
        runtime=runtime("light"),
    params:
        rerun_on=relevant("figures"),
        config_json=command_config("figures"),
        out_dir=parent_of("gen_ppl_vs_nfe_png"),
    shell:
        logged(
            "{DIDI} figures --config-json {params.config_json:q} --table {input} --out-dir {params.out_dir}"
        )


rule bench:
    """Throughput benchmarks and the distillation cost (DiDi-Instruct and SDTT distilled again, judged as they go:
    `snakemake bench`); not part of `all` because timings depend on the machine."""
    input:
        unpack(bench_inputs),
    output:
        bench=f"{R}/bench/bench.json",
        distill_cost=f"{R}/bench/distill_cost.json",
        distill_cost_md=f"{R}/bench/distill_cost.md",
    log:
        f"{R}/logs/bench.log",
    benchmark:
        f"{R}/benchmarks/bench.tsv"
    conda:
        ENVS
    threads: config["resources"]["threads"]
    resources:
        mem_mb=config["resources"]["mem_mb"],
        # distill_cost runs a DiDi-Instruct and an SDTT distillation, each about one training job
        runtime=3 * runtime("train"),
        gpu=config["resources"]["gpu"],
    params:
        rerun_on=relevant("bench"),
        config_json=command_config("bench"),
        tokens=parent_of("tokens", "input"),
        baseline=parent_of("baseline", "input"),
        judge=parent_of("judge", "input"),
        out_dir=parent_of("bench"),
        student=lambda wc, input: (
            f"--student {input.student} --discriminator {input.discriminator}"
            if "student" in input.keys()
            else ""
        ),
    shell:
        logged(
            "OMP_NUM_THREADS={threads} {DIDI} bench --config-json {params.config_json:q} --tokens {params.tokens}"
            " --tokenizer {input.tokenizer} --teacher {input.teacher} {params.student}"
            " --baseline {params.baseline} --judge {params.judge} --out-dir {params.out_dir}"
        )


rule dynamics:
    """Training curves: every distillation's history, the teacher's and the judge's loss, SDTT's loss per round."""
    input:
        distill=[f"{distill_dir(v, s)}/metrics.json" for v, s in distill_runs()],
        teacher=rules.train_teacher.output.metrics,
        judge=rules.train_judge.output.judge,
        sdtt=rules.distill_sdtt.output.metrics,
    output:
        **{
            f"dynamics_{ext}": report(
                f"{R}/figures/dynamics.{ext}",
                caption="../report/dynamics.rst",
                category="Figures",
                subcategory=ext.upper(),
            )
            for ext in ("png", "pdf")
        },
    log:
        f"{R}/logs/dynamics.log",
    benchmark:
        f"{R}/benchmarks/dynamics.tsv"
    conda:
        ENVS
    threads: 1
    resources:
        mem_mb=2000,
        runtime=runtime("light"),
    params:
        rerun_on=relevant("dynamics"),
        config_json=command_config("dynamics"),
        out_dir=parent_of("dynamics_png"),
    shell:
        logged(
            "{DIDI} dynamics --config-json {params.config_json:q} --distill {input.distill}"
            " --teacher {input.teacher} --judge {input.judge} --sdtt {input.sdtt} --out-dir {params.out_dir}"
        )


rule bench_synthetic:
    """`snakemake bench_synthetic`: `bench` at the config's model size on synthetic tokens (uniform ids of
    tokenizer.vocab_size) with a fresh DiT: needs no dataset, tokenizer, judge or trained model, so a GPU node with
    no network can time the paper-size DiT. Not part of `all`."""
    output:
        f"{R}/bench-synthetic/bench.json",
    log:
        f"{R}/logs/bench_synthetic.log",
    benchmark:
        f"{R}/benchmarks/bench_synthetic.tsv"
    conda:
        ENVS
    threads: config["resources"]["threads"]
    resources:
        mem_mb=config["resources"]["mem_mb"],
        runtime=runtime("train"),
        gpu=config["resources"]["gpu"],
    params:
        rerun_on=relevant("bench"),
        config_json=command_config("bench"),
        out_dir=parent_of(0),
    shell:
        logged(
            "OMP_NUM_THREADS={threads} {DIDI} bench --config-json {params.config_json:q} --synthetic-tokens"
            " --out-dir {params.out_dir}"
        )


rule cost:
    """Distillation cost: each distillation's wall-clock and the quality its student reaches (SDTT vs DiDi)."""
    input:
        distill=[f"{distill_dir(v, s)}/metrics.json" for v, s in distill_runs()],
        sdtt=rules.distill_sdtt.output.metrics,
        table=rules.table.output,
    output:
        report(
            f"{R}/tables/distill_cost.md",
            caption="../report/distill_cost.rst",
            category="Tables",
        ),
    log:
        f"{R}/logs/cost.log",
    benchmark:
        f"{R}/benchmarks/cost.tsv"
    conda:
        ENVS
    threads: 1
    resources:
        mem_mb=2000,
        runtime=runtime("light"),
    params:
        rerun_on=relevant("cost"),
        config_json=command_config("cost"),
    shell:
        logged(
            "{DIDI} cost --config-json {params.config_json:q} --distill {input.distill} --sdtt {input.sdtt}"
            " --table {input.table} --out {output}"
        )
