# The judge LM that scores generated text (trained locally, or a pretrained one prepared).


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
        rerun_on=relevant("train_judge"),
        config_json=command_config("train_judge"),
        corpus_dir=parent_of("train", "input"),
        out_dir=parent_of("judge"),
    shell:
        logged(
            "OMP_NUM_THREADS={threads} {DIDI} train-judge --config-json {params.config_json:q}"
            " --corpus-dir {params.corpus_dir} --tokenizer {input.tokenizer} --out-dir {params.out_dir}"
        )
