"""rlhf-bench: an experiment-tracking and benchmarking harness for RLHF methods.

The package is layered; a module imports only from its own layer or the layers below it,
function-level imports included, and there is no import cycle (``tests/unit/test_layers.py``
builds the import graph with ``ast`` and checks both). Lowest first:

==========  =====================================================================================
layer       what it holds
==========  =====================================================================================
errors      ``ConfigError``, ``require``, ``require_choice``: no imports of ours
core        pure training mechanics: ops, kl, losses, rollout, train, loop, device, distributed,
            models, checkpoint, files; each part's config dataclass beside its code
config      the root ``Config`` and the shared sections (model, sft, preferences, eval, ...)
tasks       prompts, demonstrations, gold rewards and judges; ``tracking``: W&B and the record
run         the state of one run (``Run``) and its services: sample, log-probs, score
rewards     reward models and what they train on (preference pairs)
evaluation  gold metrics, exact sums, lm-eval
training    mechanics several methods share: group sampling, best-of-k, the pair loop
methods     one file per method
pipeline    the stages of a run and resume; ``stage_cache``: the content-addressed stage cache
compose     Hydra: the config tree, schemas registered from it, composition, config errors
repro       reproductions of published results; ``report``: leaderboards and plots
cli         entry points
==========  =====================================================================================
"""

__version__ = "0.1.0"

# (layer, module prefixes), lowest first: the table above as data, read by the layer test.
LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("errors", ("rlhf_bench.errors",)),
    ("core", ("rlhf_bench.core",)),
    ("config", ("rlhf_bench.config",)),
    ("tasks", ("rlhf_bench.tasks", "rlhf_bench.tracking")),
    ("run", ("rlhf_bench.run",)),
    ("rewards", ("rlhf_bench.rewards",)),
    ("evaluation", ("rlhf_bench.evaluation",)),
    ("training", ("rlhf_bench.training",)),
    ("methods", ("rlhf_bench.methods",)),
    ("pipeline", ("rlhf_bench.pipeline", "rlhf_bench.stage_cache")),
    ("compose", ("rlhf_bench.compose", "rlhf_bench.config_errors")),
    ("repro", ("rlhf_bench.repro",)),
    ("report", ("rlhf_bench.report",)),
    ("cli", ("rlhf_bench.cli", "rlhf_bench.__main__")),
)
