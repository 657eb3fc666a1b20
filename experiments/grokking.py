r"""Grokking modular arithmetic with a 1-layer decoder (Zhu et al. 2024; Power et al. 2022).

Run (the README's demo, a few minutes on a 2-core CPU):
  python -m experiments.grokking --workdir=runs/grokking

Variants and overrides:
  python -m experiments.grokking --config=experiments/grokking.py:smoke --workdir=/tmp/g
  python -m experiments.grokking --workdir=runs/g97 --config.task.p=97 --config.task.op=div \
      --config.task.train_count=3000 --config.model.init_scale=2 --config.opt.weight_decay=1

Re-running a command on the same --workdir resumes from its last checkpoint.
"""


from __future__ import annotations

from phasemix.runs import cli
from phasemix.runs.grokking import (  # noqa: F401 (the run's API)
    DATA_FIELDS,
    GENERALIZED_AT,
    get_config,
    make_task,
    MEMORIZED_AT,
    model_config,
    resolve_train_fraction,
    run,
    run_vmapped,
    summarize,
    validate,
    VARIANTS,
    VMAPPED_FIELDS,
)

__all__ = ["DATA_FIELDS", "GENERALIZED_AT", "get_config", "make_task", "MEMORIZED_AT",
           "model_config", "resolve_train_fraction", "run", "run_vmapped", "summarize",
           "validate", "VARIANTS", "VMAPPED_FIELDS"]


if __name__ == "__main__":
    cli.main(run, config_file=__file__, default_workdir="runs/grokking")
