"""Saving and loading: one file holds architecture, weights and optimizer state.

The file is a NumPy ``.npz`` archive (zip): ``__meta__`` is UTF-8 JSON
(format version, model config, compile config, optimizer config, extras),
``w/<i>`` the weights in ``get_weights`` order, ``opt/<key>`` the optimizer
state. A functional model's config lists each layer once (``layers``) and
each call of a layer (``nodes``, topological order); a tensor is named
``[layer name, call index, output index]`` like Keras' inbound nodes. A model
used as a layer is stored as a layer entry whose config is its model config.

Every write goes to a temporary file in the same directory, is fsynced,
then renamed over the target and the directory fsynced, so a crash mid-save
leaves the previous file. The temporary file's name holds the writer's host
and pid: the next write to the same target removes those of dead writers on
this host (a killed save leaves nothing behind for long).
"""
from __future__ import annotations

import json
import os
import socket
import tempfile
import zipfile

import numpy as np

from . import layers
from .layers.base import Input, KTensor, Layer
from .model import Model, Sequential

FORMAT = "nbmodel"
VERSION = 2  # 2: layers listed once, nodes refer to them by name (shared layers, nested models)


# ----------------------------------------------------------------- atomic I/O
def _temp_prefix(path: str, host: str | None = None, pid: int | None = None) -> str:
    """``.<name>.<host>.<pid>.``: the temporary files of ``path``'s writers."""
    host = (host or socket.gethostname()).replace(".", "-")
    return f".{os.path.basename(path)}.{host}.{os.getpid() if pid is None else pid}."


def pid_alive(pid: int) -> bool:
    """True when a process ``pid`` runs on this host (ours or another user's)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def remove_stale_temporaries(path) -> list[str]:
    """Remove the temporary files that killed writes of ``path`` left beside it
    (writers on this host whose process is gone); returns their names. Writers
    on other hosts of a shared file system are never touched."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    mine = _temp_prefix(path, pid=0)[:-2]  # ".<name>.<host>."
    removed = []
    try:
        names = os.listdir(directory)
    except OSError:
        return removed
    for name in names:
        if not (name.startswith(mine) and name.endswith(".tmp")):
            continue
        pid = name[len(mine):].split(".", 1)[0]
        if pid.isdigit() and not pid_alive(int(pid)):
            try:
                os.remove(os.path.join(directory, name))
                removed.append(name)
            except OSError:  # removed by another writer meanwhile
                pass
    return removed


def _fsync_directory(directory: str) -> None:
    """Make a rename in ``directory`` durable (where the platform can open a directory)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # e.g. Windows
        return
    try:
        os.fsync(fd)
    except OSError:  # some file systems refuse fsync on a directory
        pass
    finally:
        os.close(fd)


def atomic_write(path, write_fn) -> None:
    """Call ``write_fn(fileobj)`` on a temp file beside ``path``, fsync it, rename it
    over ``path`` and fsync the directory; first remove what killed writes left."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    remove_stale_temporaries(path)
    fd, tmp = tempfile.mkstemp(prefix=_temp_prefix(path), suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            write_fn(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    _fsync_directory(directory)


def _write_archive(path, meta, arrays):
    payload = dict(arrays)
    payload["__meta__"] = np.frombuffer(json.dumps(meta).encode("utf-8"), dtype=np.uint8)
    atomic_write(path, lambda f: np.savez(f, **payload))


def _read_archive(path):
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"no such model file: {path!r}")
    try:
        with np.load(path, allow_pickle=False) as z:
            if not hasattr(z, "files") or "__meta__" not in z.files:
                raise ValueError(f"{path!r} is not an nbmodel file (no nbmodel header)")
            meta = json.loads(bytes(z["__meta__"]).decode("utf-8"))
            arrays = {k: z[k] for k in z.files if k != "__meta__"}
    except (OSError, EOFError, ValueError, KeyError, zipfile.BadZipFile, UnicodeDecodeError) as e:
        if isinstance(e, ValueError) and "nbmodel" in str(e):
            raise
        # NumPy's own message for some bytes advises unsafe loading; an nbmodel file never holds pickles
        raise ValueError(f"{path!r} is not a readable nbmodel file: it is truncated or corrupt, or not an "
                         f"nbmodel file at all ({type(e).__name__})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ValueError(f"{path!r} is not an nbmodel file")
    if meta.get("version", 0) > VERSION:
        raise ValueError(f"{path!r} was written by a newer nbmodel (format {meta['version']})")
    return meta, arrays


# ------------------------------------------------------------- architecture
def _layer_entry(layer):
    return {"class": type(layer).__name__, "config": layer.get_config()}


def _encode_kwarg(v, ref):
    if isinstance(v, KTensor):
        return {"__tensor__": ref(v)}
    if isinstance(v, (list, tuple)) and any(isinstance(e, KTensor) for e in v):
        return [_encode_kwarg(e, ref) for e in v]
    if isinstance(v, np.ndarray):
        raise ValueError("models whose layer calls take constant arrays cannot be saved; use an Input")
    return v


def model_config(model) -> dict:
    """JSON-able architecture of ``model`` (what ``model_from_config`` rebuilds)."""
    g = model.graph  # (a ValueError for a model without input shape)
    if isinstance(model, Sequential):
        t = model.inputs[0]
        return {"class": "Sequential", "name": model.name, "seed": model.seed, "trainable": model.trainable,
                "input": {"shape": list(t.shape[1:]), "dtype": t.dtype.name, "name": t.input_layer.name},
                "layers": [_layer_entry(layer) for layer in model.layers]}

    call_index, counts = {}, {}
    for n in g.nodes:
        call_index[id(n)] = counts.get(id(n.layer), 0)
        counts[id(n.layer)] = call_index[id(n)] + 1

    def ref(t):
        if t.node is None:
            return [t.input_layer.name, 0, 0]
        return [t.node.layer.name, call_index[id(t.node)], t.index]

    return {
        "class": "Model", "name": model.name, "seed": model.seed, "trainable": model.trainable,
        "inputs": [{"shape": list(t.shape[1:]), "dtype": t.dtype.name, "name": t.input_layer.name}
                   for t in g.inputs],
        "layers": [_layer_entry(layer) for layer in g.layers],
        "nodes": [{"layer": n.layer.name, "inputs": [ref(t) for t in n.inputs], "nested": n.nested,
                   "kwargs": {k: _encode_kwarg(v, ref) for k, v in n.kwargs.items()}}
                  for n in g.nodes],
        "outputs": [ref(t) for t in g.outputs],
        "inputs_nested": model.inputs_nested, "outputs_nested": model.outputs_nested,
    }


def _layer_classes(custom_objects=None):
    classes = {name: getattr(layers, name) for name in layers.__all__
               if isinstance(getattr(layers, name), type) and issubclass(getattr(layers, name), Layer)}
    classes.update(Model=Model, Sequential=Sequential)
    classes.update(custom_objects or {})
    return classes


def _make_layer(entry, classes, custom_objects=None):
    cls = classes.get(entry["class"])
    if cls is None:
        raise ValueError(f"unknown layer class {entry['class']!r}; pass it in custom_objects")
    if isinstance(cls, type) and issubclass(cls, Model):  # a nested model
        return cls.from_config(dict(entry["config"]), custom_objects)
    return cls.from_config(dict(entry["config"]))


def _ref(r):
    """A tensor reference: [layer, call, output]; format 1 wrote [layer, output]."""
    return (r[0], 0, r[1]) if len(r) == 2 else tuple(r)


def model_from_config(cfg, custom_objects=None):
    """Rebuild the model ``model_config`` described (fresh weights)."""
    classes = _layer_classes(custom_objects)
    if cfg["class"] == "Sequential":
        inp = cfg["input"]
        dtype = inp["dtype"] if np.dtype(inp["dtype"]).kind in "iu" else None
        layers = [Input(tuple(inp["shape"]), dtype=dtype, name=inp["name"])]
        layers += [_make_layer(e, classes, custom_objects) for e in cfg["layers"]]
        model = Sequential(layers, name=cfg["name"], seed=None)
        return _finish(model, cfg)
    tensors = {}
    inputs = []
    for spec in cfg["inputs"]:
        dtype = spec["dtype"] if np.dtype(spec["dtype"]).kind in "iu" else None
        t = Input(tuple(spec["shape"]), dtype=dtype, name=spec["name"])
        tensors[(spec["name"], 0, 0)] = t
        inputs.append(t)

    def decode(v):
        if isinstance(v, dict) and "__tensor__" in v:
            return tensors[_ref(v["__tensor__"])]
        if isinstance(v, list):
            return [decode(e) for e in v]
        return v

    by_name = {e["config"].get("name"): _make_layer(e, classes, custom_objects) for e in cfg.get("layers", [])}
    calls: dict[str, int] = {}
    for node in cfg["nodes"]:
        if isinstance(node["layer"], dict):  # format 1: one layer entry per node
            layer = _make_layer(node["layer"], classes, custom_objects)
        else:
            layer = by_name[node["layer"]]
        args = [tensors[_ref(r)] for r in node["inputs"]]
        kwargs = {k: decode(v) for k, v in node["kwargs"].items()}
        out = layer(args if node["nested"] else args[0], **kwargs)
        k = calls.get(layer.name, 0)
        calls[layer.name] = k + 1
        for i, t in enumerate(out if isinstance(out, list) else [out]):
            tensors[(layer.name, k, i)] = t
    outputs = [tensors[_ref(r)] for r in cfg["outputs"]]
    model = Model(inputs=inputs if cfg["inputs_nested"] else inputs[0],
                  outputs=outputs if cfg["outputs_nested"] else outputs[0], name=cfg["name"])
    return _finish(model, cfg)


def _finish(model, cfg):
    """The model-level settings of ``cfg``: the seed (kept, weights not redrawn), trainable."""
    model.seed = cfg.get("seed")
    if not cfg.get("trainable", True):
        model.trainable = False
    return model


# ------------------------------------------------------------ compile state
def _compile_meta(model):
    core = model.training_core  # None before compile (and while a Sequential waits for its input shape)
    if core is None:
        return None
    opt = model.optimizer
    return {
        "optimizer": {"class": type(opt).__name__, "config": opt.get_config()},
        "losses": [{"class": type(lo).__name__, "config": lo.get_config()} for lo in core.losses],
        "loss_weights": core.loss_weights,
        "metrics": _jsonable_metrics(core.metric_specs),
    }


def _jsonable_metrics(specs):
    out = []
    for per_output in specs:
        names = []
        for m in per_output:
            if isinstance(m, str):
                names.append(m)
            elif hasattr(m, "get_config"):
                names.append({"class": type(m).__name__, "config": m.get_config()})
            else:
                raise ValueError(f"metric {m!r} cannot be saved")
        out.append(names)
    return out


def _compile_class(kind, base, name, custom_objects):
    """The class a saved compile config names: from ``custom_objects`` first, else one of
    the package's own subclasses of ``base`` (never any other attribute of a module)."""
    cls = (custom_objects or {}).get(name)
    if cls is None:
        known = {}
        stack = [base]
        while stack:
            for sub in stack.pop().__subclasses__():
                known.setdefault(sub.__name__, sub)
                stack.append(sub)
        cls = known.get(name)
    if not (isinstance(cls, type) and issubclass(cls, base)):
        raise ValueError(f"unknown {kind} class {name!r}: pass it to load_model as custom_objects={{{name!r}: "
                         f"{name}}}")
    return cls


def _restore_compile(model, meta, arrays, custom_objects=None):
    from . import losses, metrics, optimizers

    comp = meta.get("compile")
    if comp is None:
        return

    def build(kind, base, entry):
        return _compile_class(kind, base, entry["class"], custom_objects).from_config(dict(entry["config"]))

    opt = build("optimizer", optimizers.Optimizer, comp["optimizer"])
    loss_objs = [build("loss", losses.Loss, lo) for lo in comp["losses"]]
    specs = [[m if isinstance(m, str) else build("metric", metrics.Metric, m) for m in per_output]
             for per_output in comp["metrics"]]
    n_out = len(model.outputs)
    metric_arg = specs[0] if n_out == 1 else specs
    model.compile(optimizer=opt, loss=loss_objs if n_out > 1 else loss_objs[0], metrics=metric_arg,
                  loss_weights=comp["loss_weights"])
    state = {k[4:]: v for k, v in arrays.items() if k.startswith("opt/")}
    if state:
        model.optimizer.set_state(state)


# -------------------------------------------------------------- public API
def save_model(model, path, extra=None, extra_arrays=None):
    """Architecture, weights, compile config and optimizer state in one file; ``extra``
    (JSON values) and ``extra_arrays`` ({name: array}) ride along for
    ``restore_training_state``."""
    meta = {"format": FORMAT, "version": VERSION, "kind": "model", "model": model_config(model),
            "compile": _compile_meta(model), "extra": extra or {}}
    arrays = {f"w/{i}": w for i, w in enumerate(model.get_weights())}
    arrays.update({f"x/{k}": np.asarray(v) for k, v in (extra_arrays or {}).items()})
    if meta["compile"] is not None:
        for k, v in model.optimizer.get_state().items():
            arrays[f"opt/{k}"] = np.asarray(v)
    _write_archive(path, meta, arrays)


def _weights_from(arrays):
    n = sum(1 for k in arrays if k.startswith("w/"))
    return [arrays[f"w/{i}"] for i in range(n)]


def load_model(path, custom_objects=None, compile=True):
    """Rebuild a model saved with ``model.save``: same predictions, same optimizer state."""
    meta, arrays = _read_archive(path)
    if meta.get("kind") != "model":
        raise ValueError(f"{os.fspath(path)!r} holds only weights; build the model and use load_weights")
    model = model_from_config(meta["model"], custom_objects)
    model.set_weights(_weights_from(arrays))
    if compile:
        try:
            _restore_compile(model, meta, arrays, custom_objects)
        except ValueError as e:
            raise ValueError(f"load_model {os.fspath(path)!r}: {e}") from None
    return model


def restore_training_state(model, path):
    """Load weights and optimizer state of a backup into an existing, compiled model;
    returns the ``extra`` it was saved with, its ``extra_arrays`` under "arrays"."""
    meta, arrays = _read_archive(path)
    model.set_weights(_weights_from(arrays))
    state = {k[4:]: v for k, v in arrays.items() if k.startswith("opt/")}
    if state and model.optimizer is not None:
        model.optimizer.set_state(state)
    extra = dict(meta.get("extra", {}))
    extra["arrays"] = {k[2:]: v for k, v in arrays.items() if k.startswith("x/")}
    return extra


def save_weights(model, path):
    meta = {"format": FORMAT, "version": VERSION, "kind": "weights",
            "shapes": [list(w.shape) for w in model.get_weights()]}
    _write_archive(path, meta, {f"w/{i}": w for i, w in enumerate(model.get_weights())})


def load_weights(model, path):
    meta, arrays = _read_archive(path)
    model.set_weights(_weights_from(arrays))
