r"""Knowledge acquisition from a SynBio + web mixture at ratio r (Gu et al. 2025), one run.

Run (offline: SynBio values and web text from registry packages; minutes on a 2-core CPU):
  python -m experiments.knowledge_mixing --workdir=runs/knowledge_r0.3

Variants and overrides:
  python -m experiments.knowledge_mixing --config.ratio=0.2 --config.model.preset=tiny-32 ...
  python -m experiments.knowledge_mixing --config.synbio.num_people=2000 --config.num_steps=8000
  python -m experiments.knowledge_mixing --config.mix.keep_fraction=0.5 ...   (subsample bios)
  python -m experiments.knowledge_mixing --config.mix.compact_fraction=0.1 ... (compact tuples)
  python -m experiments.knowledge_mixing --config.web.source=huggingface ...   (FineWeb-Edu)
  python -m experiments.knowledge_mixing --config=experiments/knowledge_mixing.py:smoke \
      --workdir=/tmp/k

Re-running a command on the same --workdir resumes from its last checkpoint.
"""


from __future__ import annotations

from phasemix.runs import cli
from phasemix.runs.knowledge_mixing import (  # noqa: F401 (the run's API)
    _per_person,
    ATTRIBUTE_SETS,
    CACHE_DIR,
    get_config,
    make_task,
    MIN_BIO_TOKENS,
    PEOPLE_FILE,
    progress_fields,
    run,
    summarize,
    validate,
    VARIANTS,
)

__all__ = ["_per_person", "ATTRIBUTE_SETS", "CACHE_DIR", "get_config", "make_task",
           "MIN_BIO_TOKENS", "PEOPLE_FILE", "progress_fields", "run", "summarize",
           "validate", "VARIANTS"]


if __name__ == "__main__":
    cli.main(run, config_file=__file__, default_workdir="runs/knowledge_mixing")
