"""Evaluation of dense and pruned models (DESIGN §4); nothing here prunes.

Encoders (:mod:`.encoders`): STS-B dev Spearman of cosine similarities of
mean-pooled embeddings; SST-2 / MRPC dev metrics of a linear probe
(:mod:`.probe`) fitted on the *dense* model's features and kept fixed while the
encoder is pruned. Decoders (:mod:`.decoders`): perplexity over
non-overlapping token windows. Efficiency (:mod:`.efficiency`): parameters,
measured FLOPs, latency. :mod:`.tasks` answers "the metrics of this model on
this task" for all of them. Task models are scored by their own heads:
GLUE classifiers and the STS-B regressor (:mod:`.heads`), and SQuAD exact
match and F1 of a ``*ForQuestionAnswering`` model's span predictions
(:mod:`.squad`). Zero-shot tasks of lm-evaluation-harness run on the in-memory
model (:mod:`.lmeval`, the ``lmeval`` extra). How far a dev score could move on
another sample of its examples: percentile bootstrap intervals, single or
paired (:mod:`.uncertainty`; per-pair STS-B predictions from
:func:`stsb_predictions`).

Functions that run the model put it in eval mode for their duration and restore
the previous mode; loops over many batches show a tqdm bar, which
``disable_progress=True`` hides (``None``, the default, hides it off a terminal).
"""

from __future__ import annotations

from .decoders import CPU_MAX_TOKENS, decoder_perplexity, perplexity
from .efficiency import count_parameters, latency, measured_flops
from .heads import HEAD_METRICS, LabelMismatchError, glue_scores, head_kind, head_metrics, label_map
from .lmeval import parse_lm_eval_task, zero_shot
from .squad import load_squad, normalize_answer, squad_metrics, squad_predictions, squad_scores
from .encoders import STSB_HALVES, mean_pooled_embeddings, stsb_predictions, stsb_spearman
from .probe import DEFAULT_L2, PROBE_TASKS, Probe, fit_probe, probe_metrics
from .tasks import DECODER_TASKS, EVAL_TASKS, check_task, evaluate_model, evaluate_task, scored_by, task_metrics
from .uncertainty import BootstrapInterval, bootstrap_interval

# the private helpers keep the address they had when this was one module (statlab/evaluate.py);
# patch them where they live (statlab.evaluate.encoders._embed_pairs, ...), not here
from ._common import _device, _eval_mode, _model_inputs, _spread_rows  # noqa: F401
from .efficiency import _synchronize  # noqa: F401
from .encoders import _MAX_LENGTH, _embed_pairs, _embed_texts  # noqa: F401
from .probe import (  # noqa: F401
    _CONSTANT_FEATURE,
    _PROBE_FORMAT,
    _binary_f1,
    _check_probe_task,
    _logistic_regression,
    _probe_features,
)

__all__ = [
    "CPU_MAX_TOKENS",
    "HEAD_METRICS",
    "LabelMismatchError",
    "glue_scores",
    "head_kind",
    "head_metrics",
    "label_map",
    "load_squad",
    "normalize_answer",
    "parse_lm_eval_task",
    "zero_shot",
    "scored_by",
    "squad_metrics",
    "squad_predictions",
    "squad_scores",
    "DECODER_TASKS",
    "DEFAULT_L2",
    "EVAL_TASKS",
    "PROBE_TASKS",
    "STSB_HALVES",
    "Probe",
    "check_task",
    "count_parameters",
    "decoder_perplexity",
    "evaluate_model",
    "evaluate_task",
    "fit_probe",
    "latency",
    "mean_pooled_embeddings",
    "measured_flops",
    "perplexity",
    "probe_metrics",
    "stsb_predictions",
    "stsb_spearman",
    "BootstrapInterval",
    "bootstrap_interval",
    "task_metrics",
]
