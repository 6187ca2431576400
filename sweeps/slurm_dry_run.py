"""Print the sbatch script that ``hydra/launcher=slurm`` would submit, and submit nothing.

    python sweeps/slurm_dry_run.py +sweep=methods_x_seeds hydra.launcher.partition=gpu
    python -m rlhf_bench.sweeps.slurm_dry_run ...      (the same, from an installed wheel)

Takes the overrides of ``rlhf-bench`` (``hydra/launcher=slurm`` is added unless a launcher is
chosen). The script is written by submitit itself, from the executor and parameters that the
Hydra submitit plugin builds in ``BaseSubmititLauncher.launch``, so it is what ``sbatch`` would
get: the ``#SBATCH`` resource lines, the array size (one task per run of the sweep's first
batch) and the ``srun`` command. Works on a machine without SLURM.
"""

from __future__ import annotations

import sys
from unittest import mock


def sweep_jobs(overrides: list[str]) -> list[list[str]]:
    """The override list of each job the basic sweeper launches at once (the whole grid); for
    Optuna, ``hydra.sweeper.n_jobs`` trials (placeholders: the values are sampled at run time)."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from rlhf_bench.cli import _jobs_to_check, compose, sweep_overrides

    sweeper = compose(_jobs_to_check(overrides)[0], return_hydra_config=True).hydra.sweeper
    task = [o for o in sweep_overrides(overrides, multirun=True) if not o.startswith(("hydra.", "hydra/"))]
    if "optuna" in sweeper._target_:
        return [[*task, f"(trial {i})"] for i in range(min(sweeper.n_jobs, sweeper.n_trials))]
    batches = BasicSweeper.split_arguments(OverridesParser.create().parse_overrides(task), sweeper.max_batch_size)
    return batches[0]


def sbatch_script(overrides: list[str]) -> str:
    """The text of the sbatch file for the first batch of the multirun ``overrides``."""
    import submitit
    from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf
    from omegaconf import OmegaConf
    from submitit.slurm.slurm import SlurmExecutor

    from rlhf_bench.cli import _jobs_to_check, compose

    if not any(o.startswith("hydra/launcher=") for o in overrides):
        overrides = ["hydra/launcher=slurm", *overrides]
    cfg = compose(_jobs_to_check(overrides)[0], return_hydra_config=True)
    params = OmegaConf.to_container(cfg.hydra.launcher, resolve=True)
    target = params.pop("_target_")
    if not target.endswith("SlurmLauncher"):
        raise SystemExit(f"hydra/launcher is {target}, not a SLURM launcher: nothing to print")
    # As BaseSubmititLauncher.launch: folder and max_num_timeout build the executor; the shared
    # keys (timeout_min, gpus_per_node, ...) keep their names, the others get the slurm_ prefix.
    init = {"folder": params.pop("submitit_folder"), "slurm_max_num_timeout": params.pop("max_num_timeout")}
    shared = set(OmegaConf.structured(BaseQueueConf).keys())
    params = {k if k in shared else f"slurm_{k}": v for k, v in params.items()}
    # SlurmExecutor refuses to be built where there is no srun; nothing is submitted here.
    with mock.patch.object(SlurmExecutor, "affinity", classmethod(lambda cls: 1)):
        executor = submitit.AutoExecutor(cluster="slurm", **init)
    executor.update_parameters(**params)
    slurm = executor._executor
    jobs = sweep_jobs(overrides)
    if len(jobs) > 1:  # as SlurmExecutor._internal_process_submissions does for an array
        slurm.parameters["map_count"] = len(jobs)
    script = slurm._make_submission_file_text(slurm._submitit_command_str, "dry-run")
    listing = "\n".join(f"#   task {i}: {' '.join(job)}" for i, job in enumerate(jobs))
    return f"{script}\n# dry run: nothing was submitted. {len(jobs)} array task(s), one run each:\n{listing}\n"


def main(argv: list[str] | None = None) -> None:
    from rlhf_bench.cli import preflight

    overrides = [a for a in (sys.argv[1:] if argv is None else argv) if a not in ("-m", "--multirun")]
    if not any(o.startswith("hydra/launcher=") for o in overrides):
        overrides = ["hydra/launcher=slurm", *overrides]
    preflight(["-m", *overrides])  # as rlhf-bench: a config error is one line and exit code 2
    print(sbatch_script(overrides))


if __name__ == "__main__":
    main()
