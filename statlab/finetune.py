"""Fine-tune an encoder into a GLUE task model: the offline stand-ins of the paper's protocol.

STAT's experiments prune BERT and DistilBERT *fine-tuned* per task and score
them with their own heads. Offline there are no such checkpoints, so
:func:`finetune` makes them: a short, seeded, standard fine-tune with
transformers' :class:`~transformers.Trainer` (AdamW, linear warm-up then linear
decay, a fixed step budget), written with ``save_pretrained`` so that
``statlab prune`` and ``statlab eval`` take the directory like any hub model.
:func:`cached_finetune` keeps the result under the user cache directory, keyed
by its settings, so benchmarks build each model once.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from statlab.files import TEMP_PREFIX, atomic_write

FINETUNE_FILE = "statlab-finetune.json"  # what made the directory; marks it as ours to replace
DEFAULT_STEPS = {"sst2": 800, "mrpc": 460}  # at batch 16: 0.19 epochs of SST-2, 2.0 of MRPC
CACHE_ENV = "STATLAB_CACHE_DIR"


@dataclass(frozen=True)
class FinetuneSettings:
    """Everything that decides a fine-tune's result (the cache key)."""

    model: str
    task: str
    steps: int
    seed: int = 0
    learning_rate: float = 5e-5  # the top of BERT's fine-tuning range, for a short budget
    batch_size: int = 16
    warmup: float = 0.1  # fraction of the steps spent warming up
    weight_decay: float = 0.01
    max_length: int = 128


@dataclass(frozen=True)
class FinetuneResult:
    """A written task model: where, how long the training took, and its dev metrics."""

    out: Path
    settings: FinetuneSettings
    train_seconds: float
    train_examples: int
    dev: dict  # statlab.evaluate.heads.head_metrics of the fine-tuned model


def finetune(model_name: str, task: str, out, *, steps: int | None = None, seed: int = 0,
             disable_progress: bool | None = None, **options) -> FinetuneResult:
    """Fine-tune ``model_name`` on ``task``'s training split and save it to ``out``.

    Parameters
    ----------
    model_name : str
        An encoder: ``minilm``, a hub id or a local directory (a new head is
        initialised from ``seed``).
    task : str
        A GLUE task with a training split (offline: ``sst2``, ``mrpc``).
    out : str or os.PathLike
        A new or empty directory, or one an earlier fine-tune wrote (replaced
        whole, only once the new model is complete).
    steps : int, optional
        Optimiser steps; default :data:`DEFAULT_STEPS` of the task (300 otherwise).
    seed : int
        Seeds the head's initialisation, the data order and dropout.
    disable_progress : bool or None
        Hide the Trainer's and the evaluation's bars (None: hide off a terminal).
    **options
        The other fields of :class:`FinetuneSettings` (``learning_rate``,
        ``batch_size``, ``warmup``, ``weight_decay``, ``max_length``).

    Returns
    -------
    FinetuneResult
    """
    from statlab.evaluate.heads import head_metrics  # before the training: nothing after it may fail to import

    settings = _settings(model_name, task, steps, seed, options)
    _check_settings(settings)
    out = _check_out(out)
    model, tokenizer, examples, seconds = _train(settings, disable_progress)
    dev = head_metrics(model, tokenizer, task, max_length=settings.max_length, disable_progress=disable_progress)
    result = FinetuneResult(out, settings, seconds, examples, dev)
    _write(model, tokenizer, result)
    return result


def cached_finetune(model_name: str, task: str, *, steps: int | None = None, seed: int = 0,
                    cache_dir=None, say=print, **options) -> Path:
    """The directory of a fine-tuned task model, built by :func:`finetune` if absent.

    The key is a hash of :class:`FinetuneSettings`; the directory is
    ``<cache_dir>/finetuned/<model>-<task>-<key>``, with ``cache_dir`` from
    ``$STATLAB_CACHE_DIR``, else ``$XDG_CACHE_HOME/statlab``, else
    ``~/.cache/statlab`` — never inside the repository.
    """
    settings = _settings(model_name, task, steps, seed, options)
    key = hashlib.sha256(json.dumps(asdict(settings), sort_keys=True).encode()).hexdigest()[:12]
    root = Path(cache_dir) if cache_dir else cache_root()
    out = root / "finetuned" / f"{Path(model_name).name}-{task}-{key}"
    if (out / FINETUNE_FILE).is_file() and (out / "config.json").is_file():
        return out
    say(f"fine-tuning {model_name} on {task} ({settings.steps} steps) into {out}")
    result = finetune(model_name, task, out, steps=settings.steps, seed=seed, **options)
    say(f"fine-tuned in {result.train_seconds:.0f} s: dev {_shown(result.dev)}")
    return out


def cache_root() -> Path:
    """Where statlab caches what it builds: ``$STATLAB_CACHE_DIR``, ``$XDG_CACHE_HOME/statlab`` or ``~/.cache/statlab``."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "statlab"


def read_record(directory) -> dict | None:
    """The record a fine-tune wrote beside its model (settings, time, dev metrics), or None."""
    path = Path(directory) / FINETUNE_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def _settings(model_name, task, steps, seed, options) -> FinetuneSettings:
    steps = DEFAULT_STEPS.get(task, 300) if steps is None else steps
    return FinetuneSettings(model_name, task, steps, seed, **options)


def _check_settings(settings: FinetuneSettings) -> None:
    from statlab import data
    from statlab.inputs import check_real

    if settings.task not in data.GLUE_TASKS:
        raise ValueError(f"statlab fine-tunes on GLUE tasks ({', '.join(data.GLUE_TASKS)}), not {settings.task!r}")
    for name in ("steps", "batch_size", "max_length"):
        value = getattr(settings, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"fine-tune {name} must be an integer >= 1, got {value!r}")
    if isinstance(settings.seed, bool) or not isinstance(settings.seed, int) or settings.seed < 0:
        raise ValueError(f"fine-tune seed must be an integer >= 0, got {settings.seed!r}")
    if not check_real("learning_rate", settings.learning_rate) > 0:
        raise ValueError(f"learning_rate must be > 0, got {settings.learning_rate}")
    if not 0 <= check_real("warmup", settings.warmup) < 1:
        raise ValueError(f"warmup is a fraction of the steps in [0, 1), got {settings.warmup}")
    if not check_real("weight_decay", settings.weight_decay) >= 0:
        raise ValueError(f"weight_decay must be >= 0, got {settings.weight_decay}")


def _check_out(out) -> Path:
    """Refuse an output that holds anything but an earlier fine-tune, before any work."""
    out = Path(out)
    if out.exists() or out.is_symlink():
        if not out.is_dir():
            raise ValueError(f"--out {out} is a file: statlab will not replace it; choose a new directory")
        others = [p.name for p in out.iterdir() if not p.name.startswith(TEMP_PREFIX)]
        if others and not (out / FINETUNE_FILE).is_file():
            raise ValueError(f"--out {out} holds {len(others)} entries (e.g. {sorted(others)[0]!r}) and no earlier "
                             "fine-tune: statlab will not write into it; choose a new or empty directory")
    return out


def _train(settings: FinetuneSettings, disable_progress):
    """``(model, tokenizer, training examples, seconds)`` after the Trainer's run."""
    import torch
    import transformers

    from statlab import data
    from statlab.models.loading import load_model

    transformers.set_seed(settings.seed)
    labels = "regression" if settings.task == "stsb" else data.features(settings.task)["label"].names
    model, tokenizer = load_model(settings.model, quiet=True, labels=labels)
    columns = data.text_columns(settings.task)
    train = data.load_task(settings.task, "train")
    train = train.map(lambda rows: tokenizer(*(rows[c] for c in columns), truncation=True,
                                             max_length=settings.max_length),
                      batched=True, remove_columns=list(columns))
    with tempfile.TemporaryDirectory(prefix=TEMP_PREFIX) as scratch:
        arguments = transformers.TrainingArguments(
            output_dir=scratch, max_steps=settings.steps, per_device_train_batch_size=settings.batch_size,
            learning_rate=settings.learning_rate, weight_decay=settings.weight_decay,
            warmup_steps=settings.warmup, lr_scheduler_type="linear", seed=settings.seed, data_seed=settings.seed,
            train_sampling_strategy="group_by_length",  # batches of similar lengths: less padding on a CPU
            save_strategy="no", report_to="none", logging_steps=max(settings.steps // 10, 1),
            disable_tqdm=bool(disable_progress), use_cpu=not torch.cuda.is_available(), dataloader_num_workers=0)
        trainer = transformers.Trainer(model=model, args=arguments, train_dataset=train,
                                       data_collator=transformers.DataCollatorWithPadding(tokenizer))
        start = time.perf_counter()
        with contextlib.redirect_stdout(sys.stderr):  # the Trainer prints its logs; stdout may carry JSON
            trainer.train()
        seconds = time.perf_counter() - start
    return model.eval(), tokenizer, len(train), seconds


def _write(model, tokenizer, result: FinetuneResult) -> None:
    """Save the model beside ``out`` and swap it in whole; an earlier fine-tune there goes only after."""
    out = result.out
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f"{TEMP_PREFIX}{out.name}-", dir=out.parent))
    previous = None
    try:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        record = {"settings": asdict(result.settings), "train_seconds": result.train_seconds,
                  "train_examples": result.train_examples, "dev": result.dev}
        atomic_write(staging / FINETUNE_FILE, json.dumps(record, indent=2) + "\n")
        if out.exists():
            previous = Path(tempfile.mkdtemp(prefix=f"{TEMP_PREFIX}{out.name}-old-", dir=out.parent))
            os.replace(out, previous / "model")
        os.replace(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        if previous is not None and (previous / "model").exists() and not out.exists():
            os.replace(previous / "model", out)  # the earlier fine-tune back where it was
        raise
    if previous is not None:
        shutil.rmtree(previous, ignore_errors=True)


def _shown(metrics: dict) -> str:
    return ", ".join(f"{k} {v:.4f}" for k, v in metrics.items() if isinstance(v, float))
