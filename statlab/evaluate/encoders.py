"""Encoder embeddings and STS-B: mask-aware mean pooling, cosine similarity against the gold scores.

SST-2 and MRPC are scored by a linear probe on these embeddings
(:mod:`statlab.evaluate.probe`).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from scipy import stats
from tqdm import tqdm

from statlab import data

from ._common import _eval_mode, _model_inputs, _spread_rows

STSB_HALVES = ("tune", "report")
_MAX_LENGTH = 128  # DESIGN §4: encoder inputs are truncated at 128 tokens


def mean_pooled_embeddings(model, batches, *, disable_progress: bool | None = None) -> torch.Tensor:
    """Mask-aware mean of the last hidden states: one embedding per text.

    ``e_s = sum_t m_st h_st / sum_t m_st`` with ``h = last_hidden_state (B, T, d)``
    and ``m = attention_mask (B, T)``, so padding never counts.

    Parameters
    ----------
    model : transformers encoder returning ``last_hidden_state``
    batches : iterable of dict
        From :func:`statlab.data.tokenize_batches`; each has ``attention_mask``.
    disable_progress : bool or None

    Returns
    -------
    Tensor of float32 on the CPU, shape (S, d)
        ``S`` the texts of all batches, in order.
    """
    pooled = []
    with _eval_mode(model), torch.inference_mode():
        for batch in tqdm(batches, desc="embed", unit="batch", disable=disable_progress):
            if "attention_mask" not in batch:
                raise ValueError(
                    "a batch without attention_mask: mean pooling needs it to skip padding; "
                    "build batches with statlab.data.tokenize_batches."
                )
            inputs = _model_inputs(model, batch)
            hidden = model(**inputs).last_hidden_state.float()  # (B, T, d)
            mask = inputs["attention_mask"].unsqueeze(-1).to(hidden.dtype)  # (B, T, 1)
            pooled.append(((hidden * mask).sum(1) / mask.sum(1).clamp_min(1)).cpu())  # (B, d)
    if not pooled:
        raise ValueError("no batches to embed: pass at least one text")
    return torch.cat(pooled)  # (S, d)


def stsb_predictions(
    model,
    tokenizer,
    *,
    limit: int | None = None,
    half: str | None = None,
    batch_size: int = 64,
    disable_progress: bool | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Per-pair STS-B dev predictions: the cosine similarities and gold scores behind the Spearman.

    The pairs, embeddings and order behind :func:`stsb_spearman`, so
    ``scipy.stats.spearmanr(*stsb_predictions(m, t, half=h))`` is its
    ``spearman``; kept per pair so that :func:`statlab.evaluate.bootstrap_interval` can resample them.

    Parameters
    ----------
    model, tokenizer : transformers encoder and its tokenizer
    limit : int, optional
        ``limit`` pairs spread evenly over the selected ones.
    half : {"tune", "report"}, optional
        Even-numbered or odd-numbered dev pairs (750 each); all 1500 by default.
    batch_size : int
    disable_progress : bool or None

    Returns
    -------
    cosine : ndarray of float64, shape (S,)
        Cosine similarity of the two sentences' mean-pooled embeddings.
    gold : ndarray of float64, shape (S,)
        The gold similarity, 0 to 5.
    """
    pairs = data.load_task("stsb", "validation")
    if half is not None:
        if half not in STSB_HALVES:
            raise ValueError(f"half must be one of {STSB_HALVES} or None, got {half!r}")
        pairs = pairs.select(range(STSB_HALVES.index(half), len(pairs), 2))
    pairs = _spread_rows(pairs, limit)
    u, v = _embed_pairs(model, tokenizer, pairs, batch_size, disable_progress)  # (S, d) each
    cosine = F.cosine_similarity(u, v, dim=-1).double().numpy()  # (S,)
    return cosine, np.asarray(pairs["label"][:], dtype=np.float64)


def stsb_spearman(
    model,
    tokenizer,
    *,
    limit: int | None = None,
    half: str | None = None,
    batch_size: int = 64,
    disable_progress: bool | None = None,
) -> dict:
    """STS-B dev correlation of embedding cosine similarity with the gold scores.

    Parameters
    ----------
    model, tokenizer : transformers encoder and its tokenizer
    limit : int, optional
        Score only ``limit`` pairs spread evenly over the 1500 (all by default).
    half : {"tune", "report"}, optional
        The even-numbered pairs (``"tune"``: where statlab chooses its defaults)
        or the odd-numbered ones (``"report"``: never looked at while tuning);
        750 pairs each. STS-B has no other labelled split offline.
    batch_size : int
    disable_progress : bool or None

    Returns
    -------
    dict
        ``spearman`` and ``pearson`` (floats) and ``n`` (pairs scored).
    """
    cosine, gold = stsb_predictions(model, tokenizer, limit=limit, half=half, batch_size=batch_size,
                                    disable_progress=disable_progress)  # (S,) each
    return {
        "spearman": float(stats.spearmanr(cosine, gold).statistic),
        "pearson": float(stats.pearsonr(cosine, gold).statistic),
        "n": len(gold),
    }


def _embed_texts(model, tokenizer, texts, batch_size, disable_progress) -> torch.Tensor:
    """Embeddings ``(S, d)`` of ``texts``, batched by token count to cut padding."""
    batches, order = data.length_sorted_batches(tokenizer, list(texts), max_length=_MAX_LENGTH,
                                                batch_size=batch_size)
    sorted_embeddings = mean_pooled_embeddings(model, batches, disable_progress=disable_progress)
    embeddings = torch.empty_like(sorted_embeddings)
    embeddings[order] = sorted_embeddings
    return embeddings  # (S, d)


def _embed_pairs(model, tokenizer, rows, batch_size, disable_progress):
    """Embeddings ``u, v (S, d)`` of the ``sentence1`` and ``sentence2`` columns."""
    texts = rows["sentence1"][:] + rows["sentence2"][:]
    both = _embed_texts(model, tokenizer, texts, batch_size, disable_progress)  # (2 S, d)
    return both[: len(rows)], both[len(rows) :]
