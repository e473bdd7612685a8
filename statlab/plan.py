"""PruningPlan: what was kept and the corrected weights, as JSON + safetensors.

A plan is data, not a pickle: ``plan.json`` (kept units per layer, budget,
method, hashes, versions) and ``weights.safetensors`` (the corrected output
maps, in the model's dtype). Applying it to the base model it was made from
reproduces the pruned model bit for bit; applying it to another model is
refused. Methods that set a new output bias or re-fit input rows
(:class:`~statlab.methods.Selection`) add those tensors; plans of methods
that set neither hold only the output maps.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .files import TEMP_PREFIX, atomic_write, remove_stale_temporaries
from .models import ATTENTION_UNITS, get_adapter
from .offload import named_weights, resident
from .records import LayerRecord, ModuleKey
from .surgery import keep_rows, set_bias, set_input_weight, unit_rows

FORMAT_VERSION = 2  # 2: plan.json records the weights file's SHA-256; 1 (no hash) still loads
_READABLE_FORMATS = (1, 2)
_VOLATILE_CONFIG_KEYS = ("_name_or_path", "transformers_version", "torch_dtype", "dtype", "architectures")
PLAN_FILE, WEIGHTS_FILE = "plan.json", "weights.safetensors"
_BACKUP = f"{TEMP_PREFIX}previous-{WEIGHTS_FILE}"  # the old weights while a save swaps them
_LOCK = f"{TEMP_PREFIX}lock"
_REQUIRED_META = ("base", "model_type", "config_hash", "fingerprint", "dtype", "budget", "method")
_LAYER_KEYS = ("index", "attn_units", "attn_kept", "mlp_units", "mlp_kept")


class PlanMismatchError(ValueError):
    """A plan applied to a model it was not made from."""


class PlanError(ValueError):
    """A plan that is damaged, tampered with or inconsistent; the message names the file or field."""


class OutputLocationError(ValueError):
    """A place a plan must not be written to: a file, or a directory holding something else."""


def config_hash(model) -> str:
    """SHA-256 of the model's configuration, volatile keys removed."""
    config = model.config.to_dict()
    for key in _VOLATILE_CONFIG_KEYS:
        config.pop(key, None)
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()


def weights_fingerprint(model) -> dict:
    """SHA-256 of every tensor of the model, one digest per part: ``{"layer 3": ..., "embeddings.word_embeddings": ...}``.

    A block's parameters and buffers form the part ``layer i``; every other
    tensor belongs to the part named by its module path. Each digest covers the
    tensors' names, dtypes, shapes and bytes, so a plan reapplied to a model
    whose weights moved anywhere is refused with the parts that differ. Tied
    tensors (a decoder's embeddings and LM head) are hashed once.
    """
    layers = get_adapter(model).layers_path(model) + "."
    digests, seen = {}, {}
    for name, tensor in named_weights(model):  # offloaded tensors read from their storage
        if name.startswith(layers):
            part = "layer " + name[len(layers):].split(".", 1)[0]
        else:
            part = name.rpartition(".")[0] or name
        digest = digests.setdefault(part, hashlib.sha256())
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        key = (tensor.data_ptr(), tensor.dtype, tuple(tensor.shape)) if tensor.numel() else None
        if key in seen:
            digest.update(f"tied to {seen[key]}".encode())
            continue
        seen[key] = name
        data = tensor.detach().to("cpu").contiguous().reshape(-1)
        digest.update(data.view(torch.uint8).numpy().data if data.numel() else b"")
    return {part: d.hexdigest() for part, d in digests.items()}


def _legacy_fingerprint(model, blocks) -> str:
    """Format-1 plans hashed only the first layer's dense output maps (fp32 bytes)."""
    digest = hashlib.sha256()
    for path in (blocks[0].attn_out, blocks[0].mlp_out):
        w = model.get_submodule(path).weight.detach().to("cpu", torch.float32).contiguous()
        digest.update(w.numpy().tobytes())
    return digest.hexdigest()


def check_output_dir(directory) -> Path:
    """Refuse a plan location that holds something else, before any work; returns it as a Path.

    Allowed: a path that does not exist yet (its parent must be creatable and
    writable), an empty directory, or a directory holding a saved plan (it is
    replaced; the other files in it are left alone). Refused with
    :class:`OutputLocationError`: an existing file, a directory with other
    contents, and a location that cannot be written.
    """
    directory = Path(directory)
    if directory.exists() or directory.is_symlink():
        if not directory.is_dir():
            raise OutputLocationError(f"{directory} is a file, not a plan directory: statlab will not replace it; "
                                      "choose a new directory")
        if not (directory / PLAN_FILE).is_file():
            others = [p.name for p in directory.iterdir() if not p.name.startswith(TEMP_PREFIX)]
            if others:
                raise OutputLocationError(
                    f"{directory} is a directory that holds no statlab plan ({len(others)} entries, e.g. "
                    f"{sorted(others)[0]!r}): statlab will not write into it; choose a new or empty directory")
        probe = directory
    else:
        probe = directory.parent
        while not probe.exists():
            probe = probe.parent
        if not probe.is_dir():
            raise OutputLocationError(f"cannot create {directory}: {probe} is a file")
    try:
        with tempfile.TemporaryFile(dir=probe, prefix=TEMP_PREFIX):
            pass
    except OSError as error:
        raise OutputLocationError(f"cannot write the plan to {directory}: {probe} is not writable "
                                  f"({error.strerror or error})") from None
    return directory


@contextlib.contextmanager
def _locked(directory: Path):
    """An exclusive lock on ``directory`` for one writer at a time; the lock file is removed after.

    The lock file is unlinked on release, so a waiter may lock a file that is
    gone: it then checks that the path still names the file it locked, and retries.
    """
    try:
        import fcntl
    except ImportError:  # no advisory locks (Windows): writers are not serialised
        yield
        return
    path = directory / _LOCK
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                same = os.path.samestat(os.fstat(fd), os.stat(path))
            except FileNotFoundError:
                same = False
        except BaseException:
            os.close(fd)
            raise
        if same:
            break
        os.close(fd)
    try:
        yield
    finally:
        path.unlink(missing_ok=True)
        os.close(fd)


@dataclass
class PruningPlan:
    """The outcome of :func:`statlab.prune`.

    Attributes
    ----------
    meta : dict
        ``base`` (name or path to reload), ``model_type``, ``config_hash``,
        ``fingerprint`` (per-part digests, :func:`weights_fingerprint`),
        ``budget``, ``method``, ``backend``, ``calibration``
        (hash, examples, tokens), ``seed``, ``propagate``, ``ridge``,
        ``versions``, and summary figures (``macs``, ``dense_macs``, ...).
    layers : list of dict
        Per layer: ``attn_units``, ``attn_kept`` (units in importance order),
        ``mlp_units``, ``mlp_kept``, and the residual curves used for the sizes.
    tensors : dict of str to Tensor
        ``layer.{i}.attn_out.weight (out, k_a · u)`` and ``layer.{i}.mlp_out.weight (out, k_m)``;
        where the method set them (:class:`~statlab.methods.Selection`), the new
        output biases ``layer.{i}.{attn|mlp}_out.bias (out,)`` and the re-fitted
        rows of the kept units of the ``j``-th input map,
        ``layer.{i}.{attn|mlp}_in.{j}.weight (k · rows_per_unit, d)``
        (all of a module's input maps, or none). Names: :func:`_tensor_name`.
    """

    meta: dict
    layers: list = field(default_factory=list)
    tensors: dict = field(default_factory=dict)

    @property
    def records(self) -> list:
        """``layers`` as frozen :class:`~statlab.records.LayerRecord` values (read-only view)."""
        return [LayerRecord.from_json(layer) for layer in self.layers]

    def module_sizes(self) -> dict:
        """Kept units of every module: ``{ModuleKey(layer, kind): count}``, bottom-up (``Stat(sizes=...)`` takes it)."""
        return {ModuleKey(int(layer["index"]), kind): len(layer[part])
                for layer in self.layers for kind, part in (("attention", "attn_kept"), ("mlp", "mlp_kept"))}

    def kept_fraction(self) -> dict:
        heads = sum(len(l["attn_kept"]) for l in self.layers) / sum(l["attn_units"] for l in self.layers)
        neurons = sum(len(l["mlp_kept"]) for l in self.layers) / sum(l["mlp_units"] for l in self.layers)
        return {"heads": heads, "neurons": neurons}

    def save(self, directory) -> Path:
        """Write ``weights.safetensors`` then ``plan.json`` into ``directory``, each atomically.

        Crash-safe and safe for readers: the weights are swapped in first while
        a hard link keeps the previous ones, then ``plan.json`` (the commit
        point, which records the weights' SHA-256) is replaced. At every moment
        the directory holds a loadable plan — the old one or the new one — and
        :meth:`load` finds it. Writers are serialised by a lock; temporaries of
        a killed save are removed by the next one. Only a new or empty
        directory, or one holding a plan, is written to (:func:`check_output_dir`).
        """
        from safetensors.torch import save

        directory = check_output_dir(directory)
        _check_tensors(self.tensors, "the plan to save")
        tensors = {k: v.detach().cpu().contiguous() for k, v in self.tensors.items()}
        blob = save(tensors)
        document = {"format": FORMAT_VERSION, "meta": self.meta, "layers": self.layers,
                    "weights": {"file": WEIGHTS_FILE, "sha256": hashlib.sha256(blob).hexdigest()}}
        text = json.dumps(document, indent=1, allow_nan=False)
        directory.mkdir(parents=True, exist_ok=True)
        with _locked(directory):
            check_output_dir(directory)  # again under the lock: another writer may have raced us
            weights, backup = directory / WEIGHTS_FILE, directory / _BACKUP
            _recover(directory)
            remove_stale_temporaries(directory, keep=(_LOCK,))
            if weights.is_file():
                os.link(weights, backup)
            atomic_write(weights, blob)
            atomic_write(directory / PLAN_FILE, text)
            backup.unlink(missing_ok=True)
        return directory

    @classmethod
    def load(cls, directory, *, attempts: int = 200) -> "PruningPlan":
        """Read a plan written by :meth:`save`; damaged files raise :class:`PlanError` naming the problem.

        While another process saves into ``directory``, ``plan.json`` and the
        weights may belong to different saves for an instant: the reader then
        takes the previous weights the writer keeps, or reads again (up to
        ``attempts`` times, 10 ms apart).
        """
        from safetensors import SafetensorError
        from safetensors.torch import load

        directory = Path(directory)
        if not directory.is_dir():
            what = "does not exist" if not directory.exists() else "is a file, not a plan directory"
            raise PlanError(f"{directory} {what}: a plan is a directory holding {PLAN_FILE} and {WEIGHTS_FILE}")
        for attempt in range(attempts):
            document = _read_document(directory / PLAN_FILE)
            record = document.get("weights")
            for name in ((WEIGHTS_FILE, _BACKUP) if record else (WEIGHTS_FILE,)):
                try:
                    blob = (directory / name).read_bytes()
                except FileNotFoundError:
                    continue
                except IsADirectoryError:
                    raise PlanError(f"{directory / name} is a directory, not a safetensors file") from None
                if record is None or hashlib.sha256(blob).hexdigest() == record.get("sha256"):
                    break
            else:
                if record and attempt + 1 < attempts:  # only a format-2 save can be mid-swap
                    time.sleep(0.01)
                    continue
                if not (directory / WEIGHTS_FILE).is_file():
                    raise PlanError(f"{directory / WEIGHTS_FILE} is missing: the plan's weights are gone")
                raise PlanError(f"{directory / WEIGHTS_FILE} does not match {directory / PLAN_FILE} (its SHA-256 "
                                "differs from the one recorded): the file is damaged or was replaced")
            break
        try:
            tensors = load(blob)
        except (SafetensorError, ValueError, RuntimeError) as error:
            raise PlanError(f"{directory / WEIGHTS_FILE} is not a readable safetensors file ({error})") from None
        plan = cls(document["meta"], document["layers"], tensors)
        plan.check_consistency()
        return plan

    def check_consistency(self) -> None:
        """Check the plan on its own (fields, kept indices, tensor shapes, finiteness); :class:`PlanError` names the field."""
        if not isinstance(self.meta, dict):
            raise PlanError(f"plan meta must be a JSON object, got {type(self.meta).__name__}")
        missing = [k for k in _REQUIRED_META if k not in self.meta]
        if missing:
            raise PlanError(f"plan meta lacks {', '.join(missing)}")
        if self.meta.get("attention_units", "groups") not in ATTENTION_UNITS:
            raise PlanError(f"plan meta attention_units is {self.meta['attention_units']!r}, not one of "
                            f"{ATTENTION_UNITS}")
        if not isinstance(self.layers, list) or not self.layers:
            raise PlanError("plan layers must be a non-empty list, one entry per transformer block")
        expected = set()
        for i, layer in enumerate(self.layers):
            where = f"layers[{i}]"
            if not isinstance(layer, dict):
                raise PlanError(f"{where} must be an object, got {type(layer).__name__}")
            missing = [k for k in _LAYER_KEYS if k not in layer]
            if missing:
                raise PlanError(f"{where} lacks {', '.join(missing)}")
            if layer["index"] != i:
                raise PlanError(f"{where}.index is {layer['index']!r}, expected {i} (layers missing or reordered)")
            for part in ("attn", "mlp"):
                kept = layer[f"{part}_kept"]
                _check_kept(kept, layer[f"{part}_units"], f"{where}.{part}_kept")
                name = _tensor_name(i, part)
                expected.add(name)
                if name not in self.tensors:
                    raise PlanError(f"the weights lack {name}")
                tensor = self.tensors[name]
                if tensor.ndim != 2 or not tensor.is_floating_point():
                    raise PlanError(f"{name} must be a 2-D float tensor, got {tensor.dtype} of shape {tuple(tensor.shape)}")
                if kept and tensor.shape[1] % len(kept):
                    raise PlanError(f"{name} has {tensor.shape[1]} input columns, not a multiple of the "
                                    f"{len(kept)} kept units")
                if part == "mlp" and tensor.shape[1] != len(kept):
                    raise PlanError(f"{name} has {tensor.shape[1]} input columns for {len(kept)} kept neurons")
                expected |= _check_optional(self.tensors, i, part, tensor.shape[0], len(kept))
        extra = sorted(set(self.tensors) - expected)
        if extra:
            raise PlanError(f"the weights hold tensors no layer uses: {', '.join(extra[:3])}")
        _check_tensors(self.tensors, "the plan's weights")

    def check_model(self, model, blocks) -> None:
        """Refuse a model the plan was not made from (architecture, config, dtype or weights differ)."""
        model_type = getattr(model.config, "model_type", None)
        if model_type != self.meta["model_type"]:
            raise PlanMismatchError(f"plan is for a {self.meta['model_type']} model, got {model_type}")
        if config_hash(model) != self.meta["config_hash"]:
            raise PlanMismatchError("the model's configuration differs from the one the plan was made for")
        dtype = str(next(model.parameters()).dtype).removeprefix("torch.")
        recorded = self.meta["fingerprint"]
        if isinstance(recorded, str):  # format 1
            if _legacy_fingerprint(model, blocks) != recorded:
                raise PlanMismatchError(
                    f"the model's weights differ from those of {self.meta['base']!r}, the plan's base model")
            return
        if dtype != self.meta["dtype"]:
            raise PlanMismatchError(
                f"the plan was made on {self.meta['dtype']} weights and the model is {dtype}: load the base model "
                f"as {self.meta['dtype']} to apply the plan (load_pruned(dir, dtype=...) converts afterwards)")
        actual = weights_fingerprint(model)
        differ = sorted(set(recorded) ^ set(actual)) + sorted(p for p in set(recorded) & set(actual)
                                                             if recorded[p] != actual[p])
        if differ:
            shown = ", ".join(differ[:6]) + (f" and {len(differ) - 6} more" if len(differ) > 6 else "")
            raise PlanMismatchError(
                f"the model's weights differ from those of {self.meta['base']!r}, the plan's base model, in: {shown}")

    def check_against(self, model, adapter, blocks) -> None:
        """Everything :meth:`apply` needs, checked before the model is touched."""
        self.check_consistency()
        self.check_model(model, blocks)
        if len(self.layers) != len(blocks):
            raise PlanError(f"the plan has {len(self.layers)} layers and the model {len(blocks)}")
        for block, layer in zip(blocks, self.layers):
            where = f"layers[{block.index}]"
            attn_out, mlp_out = model.get_submodule(block.attn_out), model.get_submodule(block.mlp_out)
            if layer["attn_units"] != block.units or layer["mlp_units"] != block.mlp_units:
                raise PlanError(f"{where} counts {layer['attn_units']} attention units and {layer['mlp_units']} "
                                f"neurons; the model has {block.units} and {block.mlp_units}")
            problem = head_layout_problem(layer["attn_kept"], block) if block.groups else None
            if problem:
                raise PlanError(f"{where}.attn_kept: {problem}")
            for part, out, width in (("attn", attn_out, len(layer["attn_kept"]) * block.unit_size),
                                     ("mlp", mlp_out, len(layer["mlp_kept"]))):
                name = _tensor_name(block.index, part)
                if tuple(self.tensors[name].shape) != (out.out_features, width):
                    raise PlanError(f"{name} has shape {tuple(self.tensors[name].shape)}; the kept units need "
                                    f"({out.out_features}, {width})")
                paths = block.attn_in if part == "attn" else block.mlp_in
                units = block.units if part == "attn" else block.mlp_units
                rows = _input_rows(self.tensors, block.index, part)
                if rows is None:
                    continue
                if len(rows) != len(paths):
                    raise PlanError(f"{_tensor_name(block.index, part, input=0)}...: {len(rows)} re-fitted input maps; "
                                    f"the model's {part} has {len(paths)}")
                for j, (path, tensor) in enumerate(zip(paths, rows)):
                    m = model.get_submodule(path)
                    shape = (len(layer[f"{part}_kept"]) * (m.out_features // units), m.in_features)
                    if tuple(tensor.shape) != shape:
                        raise PlanError(f"{_tensor_name(block.index, part, input=j)} has shape {tuple(tensor.shape)}; "
                                        f"the kept units of {path} need {shape}")

    def apply(self, model):
        """Prune ``model`` (a dense copy of the base model) in place; returns it.

        The whole plan is checked against the model first (:meth:`check_against`):
        on any error nothing is changed.
        """
        adapter = get_adapter(model)
        blocks = adapter.blocks(model, self.meta.get("attention_units", "groups"))
        self.check_against(model, adapter, blocks)
        layers_path = adapter.layers_path(model)
        for block, layer in zip(blocks, self.layers):
            i, t = block.index, self.tensors
            with resident(model, [f"{layers_path}.{i}"], write=True):  # a dispatched model's block on disk or CPU
                apply_attention(model, adapter, block, layer["attn_kept"], t[_tensor_name(i, "attn")],
                                t.get(_tensor_name(i, "attn", bias=True)), _input_rows(t, i, "attn"))
                apply_mlp(model, block, layer["mlp_kept"], t[_tensor_name(i, "mlp")],
                          t.get(_tensor_name(i, "mlp", bias=True)), _input_rows(t, i, "mlp"))
        return model


def _recover(directory: Path) -> None:
    """Undo the half of a killed save: weights swapped in, ``plan.json`` not yet replaced.

    The previous weights survive as a hard link; when they are the ones
    ``plan.json`` records, they go back in place, so the directory is
    consistent again before the next save touches it.
    """
    backup = directory / _BACKUP
    if not backup.is_file():
        return
    try:
        recorded = json.loads((directory / PLAN_FILE).read_text()).get("weights", {}).get("sha256")
    except (OSError, ValueError, AttributeError):
        recorded = None
    if recorded and hashlib.sha256(backup.read_bytes()).hexdigest() == recorded:
        os.replace(backup, directory / WEIGHTS_FILE)
    else:
        backup.unlink()


def _tensor_name(index: int, part: str, *, bias: bool = False, input: int | None = None) -> str:
    """The one place tensor names are formed.

    ``layer.{i}.{part}_out.weight`` (the output map), ``layer.{i}.{part}_out.bias``
    (``bias=True``: its new bias) or ``layer.{i}.{part}_in.{j}.weight``
    (``input=j``: the kept rows of the ``j``-th input map); ``part`` is
    ``"attn"`` or ``"mlp"`` (the driver's ``"attention"`` is accepted).
    """
    part = "attn" if part == "attention" else part
    if input is not None:
        return f"layer.{index}.{part}_in.{input}.weight"
    return f"layer.{index}.{part}_out.{'bias' if bias else 'weight'}"


def _input_rows(tensors, index: int, part: str):
    """The re-fitted input rows of a module, ``(in.0, in.1, ...)`` as far as they run, or None."""
    rows = []
    while _tensor_name(index, part, input=len(rows)) in tensors:
        rows.append(tensors[_tensor_name(index, part, input=len(rows))])
    return tuple(rows) or None


def _check_optional(tensors, index: int, part: str, out: int, kept: int) -> set:
    """Check a module's optional tensors (bias, input rows) on their own; returns their names."""
    names = set()
    bias = _tensor_name(index, part, bias=True)
    if bias in tensors:
        t = tensors[bias]
        if not t.is_floating_point() or tuple(t.shape) != (out,):
            raise PlanError(f"{bias} must be a float tensor of shape ({out},), got {t.dtype} of shape {tuple(t.shape)}")
        names.add(bias)
    for j, t in enumerate(_input_rows(tensors, index, part) or ()):
        name = _tensor_name(index, part, input=j)
        if t.ndim != 2 or not t.is_floating_point():
            raise PlanError(f"{name} must be a 2-D float tensor, got {t.dtype} of shape {tuple(t.shape)}")
        if (t.shape[0] % kept if kept else t.shape[0]) or (part == "mlp" and t.shape[0] != kept):
            raise PlanError(f"{name} has {t.shape[0]} rows, not {'' if part == 'mlp' else 'a multiple of '}"
                            f"the {kept} kept units")
        names.add(name)
    return names


def _check_kept(kept, units, where) -> None:
    if isinstance(units, bool) or not isinstance(units, int) or units < 1:
        raise PlanError(f"{where}: the unit count must be a positive integer, got {units!r}")
    if not isinstance(kept, list) or any(isinstance(u, bool) or not isinstance(u, int) for u in kept):
        raise PlanError(f"{where} must be a list of integer unit indices")
    bad = [u for u in kept if not 0 <= u < units]
    if bad:
        raise PlanError(f"{where} holds indices outside 0..{units - 1}: {bad[:5]}")
    if len(set(kept)) != len(kept):
        raise PlanError(f"{where} repeats unit indices")


def _check_tensors(tensors, what) -> None:
    for name, tensor in tensors.items():
        if not torch.isfinite(tensor).all():
            raise PlanError(f"{what}: {name} has NaN or Inf entries")


def _read_document(path: Path) -> dict:
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise PlanError(f"{path.parent} holds no {PLAN_FILE}: not a saved statlab plan") from None
    except IsADirectoryError:
        raise PlanError(f"{path} is a directory, not a plan file") from None
    except (OSError, UnicodeDecodeError) as error:
        raise PlanError(f"{path} cannot be read: {error}") from None
    try:
        document = json.loads(text)
    except json.JSONDecodeError as error:
        raise PlanError(f"{path} is not valid JSON ({error.msg} at line {error.lineno})") from None
    if not isinstance(document, dict):
        raise PlanError(f"{path} must hold a JSON object, got a {type(document).__name__}")
    if document.get("format") not in _READABLE_FORMATS:
        raise PlanError(f"{path}: plan format {document.get('format')!r} is not one of {_READABLE_FORMATS}")
    missing = [k for k in ("meta", "layers") if k not in document]
    if missing:
        raise PlanError(f"{path} lacks {', '.join(missing)}")
    return document


def head_layout_problem(kept, block) -> str | None:
    """What keeps query heads ``kept`` from being a GQA layer's layout, or None if they are one.

    In the query-head view (``block.groups`` groups of ``r = units / groups``
    heads) a layout keeps ``m`` heads of every group, ascending, so that
    position ``p`` reads KV head ``p // m``; keeping none is removing the attention.
    """
    kept = [int(h) for h in kept]
    if not kept:
        return None
    per_group = block.units // block.groups
    counts = [0] * block.groups
    for h in kept:
        counts[h // per_group] += 1
    if len(set(counts)) > 1:
        return f"query heads {kept[:12]} keep {counts} heads of its {block.groups} KV groups; each must keep as many"
    if kept != sorted(kept):
        return f"query heads {kept[:12]} are not laid out group by group (ascending)"
    return None


def apply_attention(model, adapter, block, kept, weight, b_out=None, w_in_rows=None) -> None:
    """Keep attention units ``kept`` of ``block``; ``weight (out, k·u)`` becomes ``W_O``.

    ``b_out (out,)``, if given, becomes ``W_O``'s bias (added where it had
    none); ``w_in_rows``, if given, replaces the kept rows of ``W_Q, W_K, W_V``
    (one tensor each, ``(k · rows_per_unit, d)``).
    """
    units = torch.as_tensor(kept, dtype=torch.int64)
    for j, path in enumerate(block.attn_in):
        rows_per_unit = model.get_submodule(path).out_features // block.units
        keep_rows(model, path, unit_rows(units, rows_per_unit), None if w_in_rows is None else w_in_rows[j])
    set_input_weight(model, block.attn_out, weight)
    if b_out is not None:
        set_bias(model, block.attn_out, b_out)
    if len(kept) == 0:
        adapter.remove_attention(model, block)
    else:
        adapter.set_units(model, block, len(kept))


def apply_mlp(model, block, kept, weight, b_out=None, w_in_rows=None) -> None:
    """Keep neurons ``kept`` of ``block``; ``weight (out, k)`` becomes ``W2``.

    ``b_out (out,)``, if given, becomes ``W2``'s bias (added where it had none);
    ``w_in_rows``, if given, replaces the kept rows of ``W1`` / ``gate, up``
    (one tensor each, ``(k, d)``).
    """
    rows = torch.as_tensor(kept, dtype=torch.int64)
    for j, path in enumerate(block.mlp_in):
        keep_rows(model, path, rows, None if w_in_rows is None else w_in_rows[j])
    set_input_weight(model, block.mlp_out, weight)
    if b_out is not None:
        set_bias(model, block.mlp_out, b_out)


def apply_selection(model, adapter, block, kind, selection) -> None:
    """Apply a method's :class:`~statlab.methods.Selection` for ``block``'s ``kind`` (``"attention"``/``"mlp"``)."""
    if kind == "attention":
        apply_attention(model, adapter, block, selection.units, selection.w_out, selection.b_out,
                        selection.w_in_rows)
    else:
        apply_mlp(model, block, selection.units, selection.w_out, selection.b_out, selection.w_in_rows)


def selection_tensors(key, selection) -> dict:
    """The plan's tensors of one module's :class:`~statlab.methods.Selection` (on the CPU), by :func:`_tensor_name`.

    ``key`` is a :class:`~statlab.records.ModuleKey`: the output map's weight,
    its new bias where the method set one, and the re-fitted input rows.
    """
    tensors = {_tensor_name(key.layer, key.kind): selection.w_out.cpu()}
    if selection.b_out is not None:
        tensors[_tensor_name(key.layer, key.kind, bias=True)] = selection.b_out.cpu()
    for j, w in enumerate(selection.w_in_rows or ()):
        tensors[_tensor_name(key.layer, key.kind, input=j)] = w.cpu()
    return tensors


def load_pruned(directory, *, dtype=None, device_map=None, offload_folder=None):
    """Load the base model named in a saved plan and apply the plan: ``(model, tokenizer, plan)``.

    The base model is loaded in the dtype the plan was made on (its fingerprint
    is of those weights), the plan applied, and the pruned model then converted
    to ``dtype`` if another is asked for. With ``device_map`` (and
    ``offload_folder``) the base is placed by accelerate
    (:func:`statlab.models.loading.load_model`) and each block pruned where it
    lies; it then stays in the plan's dtype.
    """
    from .models.loading import load_model

    plan = PruningPlan.load(directory)
    made_in = getattr(torch, plan.meta["dtype"])
    if device_map is not None and dtype not in (None, made_in):
        raise ValueError(f"a dispatched model stays in its plan's dtype ({plan.meta['dtype']}); give no dtype")
    model, tokenizer = load_model(plan.meta["base"], dtype=made_in, device_map=device_map,
                                  offload_folder=offload_folder)
    plan.apply(model)
    if dtype is not None and dtype != made_in:
        model = model.to(dtype)
    return model, tokenizer, plan
