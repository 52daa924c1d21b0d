"""Command line: ``nbmodel train CONFIG.toml``, ``nbmodel info``, ``nbmodel bench``.

A training config is a TOML file with four tables (see examples/digits_mlp.toml):

    [data]     dataset = "digits" | "npz" (path = "file.npz" with x_train, y_train, x_test, y_test)
    [model]    seed, and [[model.layers]] entries: class = "Dense", then the layer's arguments
    [compile]  optimizer = "adam" or {class = "Adam", learning_rate = 1e-3}, loss, metrics
    [fit]      epochs, batch_size, validation_split, shuffle, verbose, backup_dir and backup_freq
               (BackupAndRestore: a rerun resumes; SIGTERM ends with exit code 75 after the backup)

``--out DIR`` receives model.nbm, history.csv and (with matplotlib) history.png.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

try:  # Python 3.11+
    import tomllib
except ModuleNotFoundError:  # pragma: no cover
    import tomli as tomllib


class ConfigError(ValueError):
    """A problem in a training config file."""


# ------------------------------------------------------------------ config
def load_config(path):
    try:
        with open(path, "rb") as f:
            cfg = tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: invalid TOML: {e}") from None
    for table in ("model", "compile"):
        if table not in cfg:
            raise ConfigError(f"{path}: missing [{table}] table")
    unknown = set(cfg) - {"data", "model", "compile", "fit"}
    if unknown:
        raise ConfigError(f"{path}: unknown tables {sorted(unknown)}; expected [data], [model], [compile], [fit]")
    check_config(cfg)
    return cfg


# the keys each table takes, with the types their values must have
_KEYS = {
    "data": {"dataset": str, "path": str},
    "model": {"seed": int, "layers": list},
    "fit": {"epochs": int, "batch_size": int, "validation_split": float, "shuffle": bool, "verbose": int,
            "backup_dir": str, "backup_freq": int},
}


def check_config(cfg) -> None:
    """Every key of [data], [model] and [fit] known and of the right type (TOML gives
    the types: ``shuffle = "no"`` is a string, not a bool), before anything trains."""
    for table, keys in _KEYS.items():
        section = cfg.get(table, {})
        if not isinstance(section, dict):
            raise ConfigError(f"[{table}] must be a table, got {type(section).__name__}")
        unknown = sorted(set(section) - set(keys))
        if unknown:
            raise ConfigError(f"[{table}] unknown keys {unknown}; expected some of {sorted(keys)}")
        for key, value in section.items():
            want = keys[key]
            ok = isinstance(value, want) and not (want is int and isinstance(value, bool))
            if want is float and isinstance(value, int) and not isinstance(value, bool):
                ok = True
            if not ok:
                raise ConfigError(f"[{table}] {key} must be {want.__name__}, got {value!r}")
    fit = cfg.get("fit", {})
    if not 0 <= fit.get("validation_split", 0) < 1:
        raise ConfigError(f"[fit] validation_split must be in [0, 1), got {fit['validation_split']}")
    if fit.get("verbose", 0) not in (0, 1, 2):
        raise ConfigError(f"[fit] verbose must be 0, 1 or 2, got {fit['verbose']}")


def check_out_dir(out) -> None:
    """Create ``out`` and make sure a file can be written there, before training."""
    import tempfile

    try:
        os.makedirs(out, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out, prefix=".nbmodel-write-check-"):
            pass
    except OSError as e:
        raise ConfigError(f"--out {out!r} is not a writable directory ({e.strerror or e}); nothing was trained") \
            from None


def load_data(cfg):
    import numpy as np

    from . import datasets

    data = cfg.get("data", {"dataset": "digits"})
    kind = data.get("dataset", "digits")
    if kind == "digits":
        return datasets.load_digits()
    if kind == "npz":
        if "path" not in data:
            raise ConfigError("[data] dataset = 'npz' needs path = '...'")
        with np.load(data["path"]) as z:
            missing = {"x_train", "y_train", "x_test", "y_test"} - set(z.files)
            if missing:
                raise ConfigError(f"{data['path']}: missing arrays {sorted(missing)}")
            return (z["x_train"], z["y_train"]), (z["x_test"], z["y_test"])
    raise ConfigError(f"[data] unknown dataset {kind!r}: expected 'digits' or 'npz'")


def build_model(cfg, input_shape, input_dtype=None, device=None):
    from . import layers as L
    from .model import Sequential

    mcfg = cfg["model"]
    specs = mcfg.get("layers")
    if not specs:
        raise ConfigError("[model] needs at least one [[model.layers]] entry")
    built = [L.Input(tuple(input_shape), dtype=input_dtype)]
    for i, spec in enumerate(specs):
        spec = dict(spec)
        cls_name = spec.pop("class", None)
        cls = getattr(L, cls_name, None) if isinstance(cls_name, str) else None
        if cls is None or not isinstance(cls, type) or not issubclass(cls, L.Layer):
            raise ConfigError(f"[[model.layers]] entry {i + 1}: unknown layer class {cls_name!r}")
        try:
            built.append(cls(**spec))
        except TypeError as e:
            raise ConfigError(f"[[model.layers]] entry {i + 1} ({cls_name}): {e}") from None
    return Sequential(built, seed=mcfg.get("seed", 0), device=device)


def compile_model(model, cfg):
    from . import optimizers

    ccfg = dict(cfg["compile"])
    opt = ccfg.pop("optimizer", "adam")
    if isinstance(opt, dict):
        opt = dict(opt)
        name = opt.pop("class", None)
        cls = getattr(optimizers, str(name), None)
        if not (isinstance(cls, type) and issubclass(cls, optimizers.Optimizer)) or cls is optimizers.Optimizer:
            known, stack = [], [optimizers.Optimizer]
            while stack:
                subs = stack.pop().__subclasses__()
                known += [c.__name__ for c in subs]
                stack += subs
            raise ConfigError(f"[compile] unknown optimizer class {name!r}; expected one of {sorted(known)}")
        opt = cls(**opt)
    model.compile(optimizer=opt, loss=ccfg.pop("loss", None), metrics=ccfg.pop("metrics", None))
    if ccfg:
        raise ConfigError(f"[compile] unknown keys {sorted(ccfg)}")


def write_history(history, out_dir):
    """history.csv always; history.png when matplotlib is installed."""
    from .io import atomic_write

    keys = list(history.history)
    lines = [",".join(["epoch"] + keys)]
    for i, epoch in enumerate(history.epoch):
        lines.append(",".join([str(epoch + 1)] + [repr(float(history.history[k][i])) for k in keys]))
    atomic_write(os.path.join(out_dir, "history.csv"), lambda f: f.write(("\n".join(lines) + "\n").encode()))
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    metrics = [k for k in keys if not k.startswith("val_") and k != "learning_rate"]
    if not metrics:  # no epoch ran (a resumed backup already past --epochs): nothing to draw
        return None
    fig, axes = plt.subplots(1, len(metrics), figsize=(5 * len(metrics), 3.5), squeeze=False)
    epochs = [e + 1 for e in history.epoch]
    for ax, k in zip(axes[0], metrics):
        ax.plot(epochs, history.history[k], label=k)
        if "val_" + k in history.history:
            ax.plot(epochs, history.history["val_" + k], label="val_" + k)
        ax.set_xlabel("epoch")
        ax.set_title(k)
        ax.legend()
    fig.tight_layout()
    path = os.path.join(out_dir, "history.png")
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=100))
    plt.close(fig)
    return path


def cmd_train(args):
    import numpy as np

    cfg = load_config(args.config)
    (x_train, y_train), (x_test, y_test) = load_data(cfg)
    fit_cfg = dict(cfg.get("fit", {}))
    epochs = args.epochs if args.epochs is not None else fit_cfg.pop("epochs", 1)
    fit_cfg.pop("epochs", None)
    verbose = args.verbose if args.verbose is not None else fit_cfg.pop("verbose", 2)
    fit_cfg.pop("verbose", None)
    callbacks = []
    backup_dir, backup_freq = fit_cfg.pop("backup_dir", None), fit_cfg.pop("backup_freq", None)
    if backup_freq is not None and backup_dir is None:
        raise ConfigError("[fit] backup_freq needs backup_dir")
    if backup_dir is not None:  # resumable: a rerun after a kill or SIGTERM continues (exit code 75 on SIGTERM)
        from .callbacks import BackupAndRestore

        callbacks.append(BackupAndRestore(backup_dir, save_freq="epoch" if backup_freq is None else backup_freq))
    distributed = args.distributed
    rank0 = True
    if distributed == "mpi":
        from .parallel.mpi import is_root

        rank0 = is_root()
    int_input = np.asarray(x_train).dtype.kind in "iu"
    model = build_model(cfg, np.shape(x_train)[1:], "int64" if int_input else None, device=args.device)
    compile_model(model, cfg)
    if args.out and rank0:
        check_out_dir(args.out)
    try:  # the test data must fit the model too: found out now, not after training
        model.evaluate(x_test[:1], y_test[:1], verbose=0)
    except (ValueError, TypeError) as e:
        raise ConfigError(f"[data] the test data does not fit the model: {e}") from None
    if rank0:
        model.summary()
    t0 = time.perf_counter()
    history = model.fit(x_train, y_train, epochs=int(epochs), verbose=verbose if rank0 else 0,
                        workers=args.workers, distributed=distributed, callbacks=callbacks, **fit_cfg)
    dt = time.perf_counter() - t0
    result = model.evaluate(x_test, y_test, verbose=0, return_dict=True)
    if rank0:
        acc = {k: v for k, v in result.items() if "acc" in k}
        print(f"trained {len(history.epoch)} epochs in {dt:.1f} s")
        print("test " + " - ".join(f"{k}: {v:.4f}" for k, v in result.items()))
        if acc:
            print(f"test accuracy: {next(iter(acc.values())):.4f}")
        if args.out:
            try:
                model.save(os.path.join(args.out, "model.nbm"))
            except OSError as e:  # e.g. the disk filled up during training: keep the model anyway
                import tempfile

                rescue = os.path.join(tempfile.mkdtemp(prefix="nbmodel-rescue-"), "model.nbm")
                model.save(rescue)
                print(f"nbmodel train: error: could not write {args.out!r} ({e.strerror or e}); the trained "
                      f"model is in {rescue}", file=sys.stderr)
                return 1
            png = write_history(history, args.out)
            print(f"wrote {os.path.join(args.out, 'model.nbm')}, history.csv" + (", history.png" if png else ""))
    return 0


def cmd_info(args):
    import platform

    import numpy as np

    from . import __version__, config

    lines = [f"nbmodel {__version__}", f"python {platform.python_version()} ({sys.executable})",
             f"numpy {np.__version__}"]
    for mod in ("numba", "llvmlite", "scipy", "threadpoolctl", "tqdm", "torch", "mpi4py"):
        try:
            m = __import__(mod)
            lines.append(f"{mod} {getattr(m, '__version__', '?')}")
        except ImportError:
            lines.append(f"{mod} not installed")
    import numba
    from threadpoolctl import threadpool_info

    config.ensure_thread_policy()
    lines.append(f"cores available: {config.available_cores()}; nbmodel threads: {config.get_num_threads()}; "
                 f"numba threads: {numba.get_num_threads()}; threading layer: {numba.config.THREADING_LAYER}")
    for info in threadpool_info():
        lines.append(f"{info.get('user_api')}: {info.get('internal_api')} {info.get('version')} "
                     f"threads={info.get('num_threads')} ({os.path.basename(info.get('filepath', ''))})")
    from .backend import available_devices, get_device, registered_devices

    usable = available_devices()
    lines.append("devices: " + "; ".join(get_device(name).describe() if name in usable else f"{name} (not available)"
                                         for name in registered_devices()))
    from .cuda import cuda_report

    lines.append(cuda_report())
    print("\n".join(lines))
    return 0


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["bench"]:  # its own parser (nbmodel/bench/runner.py): `nbmodel bench --help`
        from .bench.runner import main as bench_main

        return bench_main(argv[1:])
    parser = argparse.ArgumentParser(prog="nbmodel", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("train", help="train a model described by a TOML config")
    p.add_argument("config")
    p.add_argument("--workers", type=int, default=1, help="data-parallel worker processes on this machine")
    p.add_argument("--distributed", choices=["mpi"], default=None, help="data-parallel over MPI ranks")
    p.add_argument("--device", default=None, help="a registered device (default: cpu, or NBMODEL_DEVICE)")
    p.add_argument("--epochs", type=int, default=None, help="override [fit] epochs")
    p.add_argument("--verbose", type=int, default=None, choices=[0, 1, 2])
    p.add_argument("--out", default=None, help="directory for model.nbm, history.csv, history.png")
    p.set_defaults(fn=cmd_train)
    p = sub.add_parser("info", help="versions, threads, BLAS libraries, CUDA availability")
    p.set_defaults(fn=cmd_info)
    sub.add_parser("bench", help="time the reference models against PyTorch (nbmodel bench --help)")
    args = parser.parse_args(argv)
    try:
        return args.fn(args)
    except (ConfigError, ValueError, TypeError, FileNotFoundError, NotImplementedError) as e:
        print(f"nbmodel {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
