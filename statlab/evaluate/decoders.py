"""Decoder evaluation: perplexity over independent token windows, and the WikiText-2 protocol around it.

The protocol (windowing, token counting, ``max_tokens``) is the same for any
corpus: WikiText-2 test, PTB, C4 or a text file (:mod:`statlab.corpora`).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from tqdm import tqdm

from statlab.calibration import CPU_MAX_TOKENS, DEFAULT_WINDOW
from statlab.inputs import check_batch

from ._common import _device, _eval_mode


def perplexity(
    model, windows: torch.Tensor, *, batch_size: int = 1, disable_progress: bool | None = None
) -> dict:
    """Perplexity of a causal LM over independent token windows (DESIGN §4).

    ``exp(sum_w sum_{t>=1} -log p(x_wt | x_w<t) / (W (T - 1)))``: each window is
    scored on its own (no context from the previous one), so ``T - 1`` tokens
    per window are predicted.

    Parameters
    ----------
    model : transformers causal LM returning ``logits (B, T, V)``
    windows : Tensor of int64, shape (W, T)
        From :func:`statlab.data.token_windows`.
    batch_size : int
        Windows per forward pass.
    disable_progress : bool or None

    Returns
    -------
    dict
        ``perplexity`` (float), ``tokens`` (predicted tokens, ``W (T - 1)``)
        and ``windows`` (``W``).
    """
    if windows.ndim != 2 or windows.shape[0] < 1 or windows.shape[1] < 2:
        raise ValueError(
            f"windows must have shape (W, T) with W >= 1 and T >= 2, got {tuple(windows.shape)}; "
            f"build them with statlab.data.token_windows."
        )
    check_batch({"input_ids": windows}, model, name="perplexity windows")  # ids in the vocabulary, no padding
    device = _device(model)
    nll = torch.zeros((), dtype=torch.float64)
    chunks = windows.split(batch_size)
    with _eval_mode(model), torch.inference_mode():
        for chunk in tqdm(chunks, desc="perplexity", unit="batch", disable=disable_progress):
            ids = chunk.to(device)  # (B, T)
            logits = model(input_ids=ids, use_cache=False).logits  # (B, T, V)
            targets = ids[:, 1:].reshape(-1)  # (B (T - 1),)
            scores = logits[:, :-1].reshape(targets.numel(), -1).float()  # (B (T - 1), V)
            nll += F.cross_entropy(scores, targets, reduction="sum").double().cpu()
    count, length = windows.shape
    tokens = count * (length - 1)
    mean_nll = nll.item() / tokens
    # exp overflows past ~709: such a model is broken, and inf (or NaN) says so to the caller
    return {"perplexity": math.exp(mean_nll) if mean_nll < 709 else math.inf, "tokens": tokens, "windows": count}


GPU_BATCH, CPU_BATCH = 8, 4  # windows per forward pass: results equal batch 1's to ~1e-6 relative


def decoder_perplexity(model, tokenizer, *, window=DEFAULT_WINDOW, max_tokens="auto", batch_size=None, corpus=None):
    """Test perplexity of a causal LM over the first whole windows of a corpus (WikiText-2 test by default).

    The corpus's running text is tokenised once (cached per tokenizer and
    text, :func:`statlab.corpora.text_windows`) and cut into consecutive
    ``window``-token windows, each scored on its own (:func:`perplexity`).

    Parameters
    ----------
    model, tokenizer : transformers causal LM and its tokenizer
    window : int
        Tokens per window (2048 in the Llama-2 protocol).
    max_tokens : int, None or "auto"
        Score the first whole ``window``-token windows up to this many tokens;
        None: the whole corpus; ``"auto"``: :data:`CPU_MAX_TOKENS` on the CPU,
        the whole corpus on a GPU. A corpus's own cap
        (:attr:`statlab.corpora.Corpus.max_tokens`, C4's 256 windows) applies too.
    batch_size : int, optional
        Windows per forward pass; default :data:`GPU_BATCH` on a GPU,
        :data:`CPU_BATCH` on the CPU.
    corpus : statlab.corpora.Corpus, optional
        The text; default :func:`statlab.corpora.wikitext2_test`.

    Returns
    -------
    dict
        :func:`perplexity`'s ``perplexity``, ``tokens`` and ``windows``, with
        ``window`` and ``max_tokens`` (``"auto"`` and the corpus's cap resolved).
    """
    from statlab.corpora import text_windows, wikitext2_test

    on_gpu = _device(model).type != "cpu"
    if max_tokens == "auto":
        max_tokens = None if on_gpu else CPU_MAX_TOKENS
    corpus = wikitext2_test() if corpus is None else corpus
    if corpus.max_tokens is not None:
        max_tokens = corpus.max_tokens if max_tokens is None else min(max_tokens, corpus.max_tokens)
    windows = text_windows(tokenizer, corpus.text, window=window, max_tokens=max_tokens, name=corpus.name)
    with torch.no_grad():
        result = perplexity(model, windows, batch_size=batch_size or (GPU_BATCH if on_gpu else CPU_BATCH))
    return {**result, "window": window, "max_tokens": max_tokens}
