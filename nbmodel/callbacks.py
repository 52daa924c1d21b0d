"""Callbacks (Keras 3 names, arguments and semantics).

``fit`` calls, in order: on_train_begin, then per epoch on_epoch_begin,
on_train_batch_begin/on_train_batch_end per step, on_epoch_end (logs include
the ``val_`` entries), and finally on_train_end. A callback stops training by
setting ``self.model.stop_training = True``.
"""
from __future__ import annotations

import math
import os
import time
import warnings

import numpy as np

from . import io


class Callback:
    def __init__(self):
        self.model = None
        self.params = {}

    def set_model(self, model):
        self.model = model

    def set_params(self, params):
        self.params = params

    def get_state(self) -> dict:
        """What this callback has learned during training (counters, best values,
        arrays), for BackupAndRestore: a dict of JSON values and NumPy arrays (or
        lists of arrays). Stateless callbacks return {}."""
        return {}

    def set_state(self, state: dict) -> None:
        """Take back what ``get_state`` returned (called after ``on_train_begin``)."""

    def on_train_begin(self, logs=None): pass
    def on_train_end(self, logs=None): pass
    def on_epoch_begin(self, epoch, logs=None): pass
    def on_epoch_end(self, epoch, logs=None): pass
    def on_train_batch_begin(self, batch, logs=None): pass
    def on_train_batch_end(self, batch, logs=None): pass


class History(Callback):
    """Records the epoch logs: ``history.history['loss']`` etc., ``history.epoch``."""

    def __init__(self):
        super().__init__()
        self.history: dict[str, list] = {}
        self.epoch: list[int] = []

    def on_epoch_end(self, epoch, logs=None):
        self.epoch.append(epoch)
        for k, v in (logs or {}).items():
            self.history.setdefault(k, []).append(v)


def _fmt(logs, skip=("samples_per_s",)):
    return " - ".join(f"{k}: {v:.4f}" for k, v in logs.items() if k not in skip)


class ProgbarLogger(Callback):
    """verbose=1: a progress bar per epoch (loss, metrics, samples/s); verbose=2: one line per epoch."""

    def __init__(self, verbose=1):
        super().__init__()
        self.verbose = verbose
        self._bar = None

    def on_epoch_begin(self, epoch, logs=None):
        self._t0 = time.perf_counter()
        epochs = self.params.get("epochs")
        if self.verbose == 1:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=self.params.get("steps"), desc=f"Epoch {epoch + 1}/{epochs}",
                             unit="step", leave=True, dynamic_ncols=True)
        self._epoch = epoch
        self._rate = None

    def on_train_batch_end(self, batch, logs=None):
        if self._bar is not None:
            logs = logs or {}
            post = {k: f"{v:.4f}" for k, v in logs.items() if k != "samples_per_s"}
            if "samples_per_s" in logs:
                self._rate = logs["samples_per_s"]
                post["samples/s"] = f"{self._rate:.0f}"
            self._bar.set_postfix(post, refresh=False)
            self._bar.update(1)

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        if self._bar is not None:
            post = {k: f"{v:.4f}" for k, v in logs.items() if k != "samples_per_s"}
            if self._rate is not None:  # the final line keeps the epoch's throughput
                post["samples/s"] = f"{self._rate:.0f}"
            self._bar.set_postfix(post)
            self._bar.close()
            self._bar = None
        elif self.verbose == 2:
            dt = time.perf_counter() - self._t0
            print(f"Epoch {epoch + 1}/{self.params.get('epochs')} - {dt:.2f}s - {_fmt(logs)}", flush=True)

    def on_train_end(self, logs=None):
        if self._bar is not None:
            self._bar.close()
            self._bar = None


class _MonitorMixin:
    """Shared 'is this value better' logic of EarlyStopping, ModelCheckpoint, ReduceLROnPlateau."""

    def _init_monitor(self, monitor, mode, min_delta=0.0):
        if mode not in ("auto", "min", "max"):
            raise ValueError(f"{type(self).__name__}: mode must be 'auto', 'min' or 'max', got {mode!r}")
        self.monitor = monitor
        if mode == "auto":
            mode = "max" if ("acc" in monitor or monitor.endswith("auc")) else "min"
        self.mode = mode
        self.min_delta = abs(float(min_delta))

    def _better(self, current, reference):
        if reference is None:
            return True
        if self.mode == "min":
            return current < reference - self.min_delta
        return current > reference + self.min_delta

    def _initial_best(self):
        return math.inf if self.mode == "min" else -math.inf

    def _value(self, logs):
        v = (logs or {}).get(self.monitor)
        if v is None:
            warnings.warn(f"{type(self).__name__}: metric {self.monitor!r} is not in the logs "
                          f"(available: {sorted(logs or {})})", stacklevel=3)
        return v


class EarlyStopping(Callback, _MonitorMixin):
    """Stop when ``monitor`` has not improved by ``min_delta`` for ``patience`` epochs."""

    def __init__(self, monitor="val_loss", min_delta=0, patience=0, verbose=0, mode="auto", baseline=None,
                 restore_best_weights=False, start_from_epoch=0):
        super().__init__()
        self._init_monitor(monitor, mode, min_delta)
        self.patience = int(patience)
        self.verbose = verbose
        self.baseline = baseline
        self.restore_best_weights = restore_best_weights
        self.start_from_epoch = int(start_from_epoch)

    def on_train_begin(self, logs=None):
        self.wait = 0
        self.stopped_epoch = 0
        self.best = self._initial_best()
        self.best_weights = None
        self.best_epoch = 0

    def get_state(self):
        return {"wait": self.wait, "stopped_epoch": self.stopped_epoch, "best": float(self.best),
                "best_epoch": self.best_epoch, "best_weights": self.best_weights}

    def set_state(self, state):
        self.wait, self.stopped_epoch = int(state["wait"]), int(state["stopped_epoch"])
        self.best, self.best_epoch = float(state["best"]), int(state["best_epoch"])
        self.best_weights = state["best_weights"]

    def on_epoch_end(self, epoch, logs=None):
        current = self._value(logs)
        if current is None or epoch < self.start_from_epoch:
            return
        if self.restore_best_weights and self.best_weights is None:
            self.best_weights = self.model.get_weights()
            self.best_epoch = epoch
        self.wait += 1
        if self._better(current, self.best):
            self.best = current
            self.best_epoch = epoch
            if self.restore_best_weights:
                self.best_weights = self.model.get_weights()
            if self.baseline is None or self._better(current, self.baseline):
                self.wait = 0
            return
        if self.wait >= self.patience and epoch > 0:
            self.stopped_epoch = epoch
            self.model.stop_training = True

    def on_train_end(self, logs=None):
        if self.stopped_epoch > 0 and self.verbose:
            print(f"Epoch {self.stopped_epoch + 1}: early stopping")
        # Keras 3 restores the best weights however training ended (patience,
        # another callback, or the last epoch)
        if self.restore_best_weights and self.best_weights is not None:
            if self.verbose:
                print(f"Restoring model weights from the end of the best epoch: {self.best_epoch + 1}.")
            self.model.set_weights(self.best_weights)


PREEMPTED_EXIT_CODE = 75  # EX_TEMPFAIL: try again (a requeued job resumes from its backup)


class TrainingPreempted(SystemExit):
    """Raised by ``fit`` after SIGTERM or SIGUSR1 with a BackupAndRestore callback: the
    current step finished and the backup was written. Uncaught, it ends the process
    with exit code ``PREEMPTED_EXIT_CODE``."""

    nbmodel_all_replicas = True  # every replica raises it at the same step (no MPI abort needed)

    def __init__(self, message):
        super().__init__(PREEMPTED_EXIT_CODE)
        self.message = message

    def __str__(self):
        return self.message


def _check_save_freq(cls_name, save_freq):
    """"epoch", or a number of batches >= 1 (Keras)."""
    if save_freq == "epoch":
        return save_freq
    if isinstance(save_freq, bool) or not isinstance(save_freq, (int, np.integer)) or save_freq < 1:
        raise ValueError(f"{cls_name}: save_freq must be 'epoch' or an integer number of batches >= 1, "
                         f"got {save_freq!r}")
    return int(save_freq)


class ModelCheckpoint(Callback, _MonitorMixin):
    """Save the model (or weights) at the end of every epoch, or every ``save_freq``
    batches, or only when ``monitor`` improves.

    ``filepath`` may hold ``str.format`` fields: ``epoch`` (1-based), ``batch``
    (1-based within the epoch, with an integer ``save_freq``) and any log key, e.g.
    ``"ckpt-{epoch:02d}-{val_loss:.3f}.nbm"``. With an integer ``save_freq`` the
    batches are counted across epochs and the logs are the running epoch's (as
    Keras). Files are written atomically.
    """

    def __init__(self, filepath, monitor="val_loss", verbose=0, save_best_only=False, save_weights_only=False,
                 mode="auto", save_freq="epoch", initial_value_threshold=None):
        super().__init__()
        self._init_monitor(monitor, mode)
        self.save_freq = _check_save_freq("ModelCheckpoint", save_freq)
        self.filepath = os.fspath(filepath)
        self.verbose = verbose
        self.save_best_only = save_best_only
        self.save_weights_only = save_weights_only
        self.best = initial_value_threshold
        self._batches, self._epoch = 0, 0

    def get_state(self):
        return {"best": None if self.best is None else float(self.best), "batches": self._batches}

    def set_state(self, state):
        self.best = state["best"]
        self._batches = int(state.get("batches", 0))

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        if self.save_freq == "epoch":
            return
        self._batches += 1
        if self._batches % self.save_freq == 0:
            self._save(self._epoch, logs or {}, batch=batch + 1)

    def on_epoch_end(self, epoch, logs=None):
        if self.save_freq == "epoch":
            self._save(epoch, logs or {})

    def _save(self, epoch, logs, batch=None):
        fields = dict(logs, epoch=epoch + 1) if batch is None else dict(logs, epoch=epoch + 1, batch=batch)
        try:
            path = self.filepath.format(**fields)
        except KeyError as e:
            raise KeyError(f"ModelCheckpoint: filepath {self.filepath!r} uses {e}, which is not in the logs "
                           f"(available: {', '.join(sorted(fields))})") from None
        if self.save_best_only:
            current = self._value(logs)
            if current is None or not self._better(current, self.best):
                return
            if self.verbose:
                print(f"Epoch {epoch + 1}: {self.monitor} improved from {self.best} to {current}, saving to {path}")
            self.best = current
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        if self.save_weights_only:
            self.model.save_weights(path)
        else:
            self.model.save(path)


class LearningRateScheduler(Callback):
    """At each epoch start, set the learning rate to ``schedule(epoch, lr)``."""

    def __init__(self, schedule, verbose=0):
        super().__init__()
        self.schedule = schedule
        self.verbose = verbose

    def on_epoch_begin(self, epoch, logs=None):
        opt = self.model.optimizer
        try:
            lr = self.schedule(epoch, float(opt.current_learning_rate))
        except TypeError:  # Keras' older one-argument schedule(epoch)
            lr = self.schedule(epoch)
        lr = float(lr)
        if not math.isfinite(lr):
            raise ValueError(f"LearningRateScheduler: schedule returned {lr} at epoch {epoch}")
        opt.learning_rate = lr
        if self.verbose:
            print(f"Epoch {epoch + 1}: LearningRateScheduler setting learning rate to {lr}.")

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["learning_rate"] = float(self.model.optimizer.current_learning_rate)


class ReduceLROnPlateau(Callback, _MonitorMixin):
    """Multiply the learning rate by ``factor`` when ``monitor`` stalls for ``patience`` epochs."""

    def __init__(self, monitor="val_loss", factor=0.1, patience=10, verbose=0, mode="auto", min_delta=1e-4,
                 cooldown=0, min_lr=0.0):
        super().__init__()
        if factor >= 1.0:
            raise ValueError(f"ReduceLROnPlateau: factor must be < 1, got {factor}")
        self._init_monitor(monitor, mode, min_delta)
        self.factor = float(factor)
        self.patience = int(patience)
        self.verbose = verbose
        self.cooldown = int(cooldown)
        self.min_lr = float(min_lr)

    def on_train_begin(self, logs=None):
        self.best = self._initial_best()
        self.wait = 0
        self.cooldown_counter = 0

    def get_state(self):
        return {"best": float(self.best), "wait": self.wait, "cooldown_counter": self.cooldown_counter}

    def set_state(self, state):
        self.best, self.wait = float(state["best"]), int(state["wait"])
        self.cooldown_counter = int(state["cooldown_counter"])

    def on_epoch_end(self, epoch, logs=None):
        logs = logs if logs is not None else {}
        opt = self.model.optimizer
        logs["learning_rate"] = float(opt.current_learning_rate)
        current = self._value(logs)
        if current is None:
            return
        if self.cooldown_counter > 0:
            self.cooldown_counter -= 1
            self.wait = 0
        if self._better(current, self.best):
            self.best = current
            self.wait = 0
        elif self.cooldown_counter <= 0:
            self.wait += 1
            if self.wait >= self.patience:
                old = float(opt.current_learning_rate)
                if old > self.min_lr:
                    new = max(old * self.factor, self.min_lr)
                    opt.learning_rate = new
                    if self.verbose:
                        print(f"Epoch {epoch + 1}: ReduceLROnPlateau reducing learning rate to {new}.")
                    self.cooldown_counter = self.cooldown
                    self.wait = 0


class TerminateOnNaN(Callback):
    """Stop training (without an error) when the loss becomes NaN or infinite.

    Without this callback, ``fit`` raises FloatingPointError naming the step.
    Either way the step with the non-finite loss does not update the weights.
    """

    def on_nonfinite(self, message):
        print(f"TerminateOnNaN: {message}; stopping training.")

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(loss):
            self.model.stop_training = True


class CSVLogger(Callback):
    """Append one row per epoch (epoch + every log) to a CSV file.

    The file is opened for each row and closed again, so a ``fit`` that raises
    leaves a complete, closed file with every finished epoch; a row that cannot be
    written whole (a full disk) is taken back off and ``fit`` stops with an OSError
    naming the file and the epoch.
    """

    def __init__(self, filename, separator=",", append=False):
        super().__init__()
        self.filename = os.fspath(filename)
        self.sep = separator
        self.append = append
        self._keys = None

    def on_train_begin(self, logs=None):
        self._keys = None
        if self.append and os.path.exists(self.filename) and os.path.getsize(self.filename) > 0:
            with open(self.filename) as f:
                header = f.readline().strip()
            self._keys = header.split(self.sep)[1:] if header else None
        elif not self.append:
            open(self.filename, "w").close()

    def on_epoch_end(self, epoch, logs=None):
        logs = {k: v for k, v in (logs or {}).items() if k != "samples_per_s"}
        lines = []
        if self._keys is None:
            self._keys = sorted(logs)
            lines.append(self.sep.join(["epoch"] + self._keys))
        lines.append(self.sep.join([str(epoch)] + [repr(float(logs[k])) if k in logs else "NA"
                                                   for k in self._keys]))
        try:
            _append_whole(self.filename, ("\n".join(lines) + "\n").encode())
        except OSError as e:
            raise OSError(e.errno, f"CSVLogger: could not write epoch {epoch} to {self.filename} "
                                   f"({e.strerror or e}); the file keeps the complete rows of the epochs "
                                   "before it") from e


def _append_whole(path, data: bytes, write=os.write) -> None:
    """Append ``data`` to ``path`` whole or not at all: a write that fails part way (a full
    disk) is cut back off, so the file never ends in half a row."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
    try:
        start = os.lseek(fd, 0, os.SEEK_END)
        done = 0
        try:
            while done < len(data):
                done += write(fd, data[done:])
        except OSError:
            os.ftruncate(fd, start)
            raise
    finally:
        os.close(fd)


class LambdaCallback(Callback):
    """A callback from plain functions: ``LambdaCallback(on_epoch_end=lambda epoch, logs: ...)``."""

    def __init__(self, on_epoch_begin=None, on_epoch_end=None, on_train_begin=None, on_train_end=None,
                 on_train_batch_begin=None, on_train_batch_end=None):
        super().__init__()
        for name, fn in dict(on_epoch_begin=on_epoch_begin, on_epoch_end=on_epoch_end,
                             on_train_begin=on_train_begin, on_train_end=on_train_end,
                             on_train_batch_begin=on_train_batch_begin,
                             on_train_batch_end=on_train_batch_end).items():
            if fn is not None:
                setattr(self, name, fn)


class BackupAndRestore(Callback):
    """Back up the whole training state each epoch; a restarted ``fit`` resumes from it.

    The backup (``backup_dir/latest.nbm``) holds the weights, the optimizer
    state and learning rate, the epoch reached, the state of every random
    generator training draws from (shuffling, dropout: ``Model.get_random_state``)
    and the state of the other callbacks (``Callback.get_state``: counters, best
    values, best weights), so a run killed after epoch k and restarted ends
    with the same weights as one that was never interrupted. It is written
    after every other callback's ``on_epoch_end`` (they may change the learning
    rate or their own state), atomically: a crash mid-save leaves the
    previous one. It is deleted when training ends normally
    (``delete_checkpoint=True``).

    ``save_freq=N`` also writes it every N batches (counted across epochs), with
    the epoch's progress (step, running loss and metrics, the shuffling order):
    a run killed mid-epoch resumes at the next step and ends bit-identical to an
    uninterrupted one. While it is in ``fit``, SIGTERM and SIGUSR1 (what Slurm's
    time limit and ``--signal`` send) let the current step finish, write the
    backup and end the process with exit code ``PREEMPTED_EXIT_CODE`` (75), so a
    job script can requeue itself and rerun the same command.
    """

    def __init__(self, backup_dir, save_freq="epoch", delete_checkpoint=True):
        super().__init__()
        self.save_freq = _check_save_freq("BackupAndRestore", save_freq)
        self.backup_dir = os.fspath(backup_dir)
        self.delete_checkpoint = delete_checkpoint
        self.path = os.path.join(self.backup_dir, "latest.nbm")
        self.resume_epoch = None
        self.resume_progress = None
        self._restored = None
        self._batches = 0

    def step_backup_due(self) -> bool:
        """Count a finished batch; True when save_freq batches have passed."""
        if self.save_freq == "epoch":
            return False
        self._batches += 1
        return self._batches % self.save_freq == 0

    def on_train_begin(self, logs=None):
        self.resume_epoch, self.resume_progress, self._restored = None, None, None
        if os.path.exists(self.path):
            try:
                extra = io.restore_training_state(self.model, self.path)
            except ValueError as e:
                raise ValueError(f"BackupAndRestore: cannot resume from the backup {self.path!r}: {e}. Delete it "
                                 "(or the whole backup_dir) to start training from the beginning") from None
            progress = extra.get("progress")
            # a step backup resumes inside its epoch; an epoch backup at the next epoch
            self.resume_epoch = int(extra["epoch"]) + (0 if progress else 1)
            if progress:
                progress = dict(progress, metric_totals=[extra["arrays"][f"progress/metric/{i}"]
                                                         for i in range(progress["metrics"])])
            self.resume_progress = progress
            self._batches = int(extra.get("batches", 0))
            states = extra.get("random_state", extra.get("rngs"))  # "rngs": backups of earlier versions
            if states is not None:
                self.model.set_random_state(states)
            if extra.get("learning_rate") is not None:
                self.model.optimizer.learning_rate = extra["learning_rate"]
            self._restored = extra

    def restore_callbacks(self, callbacks) -> None:
        """Give the other callbacks their backed-up state (after their on_train_begin)."""
        if not self._restored:
            return
        saved = self._restored.get("callbacks", {})
        arrays = self._restored.get("arrays", {})
        for i, cb in enumerate(callbacks):
            entry = saved.get(str(i))
            if entry is not None and entry["class"] == type(cb).__name__:
                cb.set_state(_decode_state(entry["state"], arrays))

    def write_backup(self, epoch, callbacks, progress=None) -> None:
        """The backup after ``epoch`` (called once every callback's on_epoch_end has run),
        or, with ``progress`` (a dict from the epoch loop: "step", "loss_sum", "n_seen",
        "out_sums", "metric_totals", "epoch_random"), inside ``epoch`` after that step."""
        os.makedirs(self.backup_dir, exist_ok=True)
        arrays, states = {}, {}
        for i, cb in enumerate(callbacks):
            state = cb.get_state() if cb is not self else {}
            if state:
                states[str(i)] = {"class": type(cb).__name__, "state": _encode_state(state, f"cb/{i}", arrays)}
        random_state = self.model.get_random_state()
        extra = {"epoch": int(epoch), "random_state": random_state, "callbacks": states,
                 "learning_rate": self.model.optimizer.settable_learning_rate, "batches": self._batches}
        if progress is not None:
            # the shuffling generator as it was before this epoch drew its order: the resumed
            # run draws the same order and skips the steps already done
            random_state[0] = progress["epoch_random"]
            totals = progress["metric_totals"]
            arrays.update({f"progress/metric/{i}": np.asarray(t) for i, t in enumerate(totals)})
            extra["progress"] = {"step": int(progress["step"]), "loss_sum": float(progress["loss_sum"]),
                                 "n_seen": int(progress["n_seen"]), "metrics": len(totals),
                                 "out_sums": None if progress["out_sums"] is None
                                 else [float(v) for v in progress["out_sums"]]}
        io.save_model(self.model, self.path, extra=extra, extra_arrays=arrays)

    def on_train_end(self, logs=None):
        # only reached when fit ends normally: after a crash the backup stays for the restart
        if self.delete_checkpoint and os.path.exists(self.path):
            os.remove(self.path)


def _encode_state(state, prefix, arrays):
    """A callback state for JSON: arrays (and lists of arrays) go to ``arrays`` by key."""
    out = {}
    for key, value in state.items():
        name = f"{prefix}/{key}"
        if isinstance(value, np.ndarray):
            arrays[name] = value
            out[key] = {"__array__": name}
        elif isinstance(value, (list, tuple)) and value and all(isinstance(v, np.ndarray) for v in value):
            for j, v in enumerate(value):
                arrays[f"{name}/{j}"] = v
            out[key] = {"__arrays__": name, "n": len(value)}
        else:
            out[key] = value
    return out


def _decode_state(state, arrays):
    out = {}
    for key, value in state.items():
        if isinstance(value, dict) and "__array__" in value:
            value = arrays[value["__array__"]]
        elif isinstance(value, dict) and "__arrays__" in value:
            value = [arrays[f"{value['__arrays__']}/{j}"] for j in range(value["n"])]
        out[key] = value
    return out


class CallbackList:
    """Calls every callback in order; adds History and the progress logger like Keras."""

    def __init__(self, callbacks, model, history, verbose, epochs, steps, samples):
        cbs = list(callbacks or [])
        for cb in cbs:
            if not isinstance(cb, Callback):
                raise TypeError(f"fit: callbacks must be Callback instances, got {type(cb).__name__}")
        if verbose:  # after the user's callbacks, like Keras: it shows the logs they add
            cbs.append(ProgbarLogger(verbose))
        cbs.append(history)
        self.callbacks = cbs
        params = {"epochs": epochs, "steps": steps, "samples": samples, "verbose": verbose}
        for cb in cbs:
            cb.set_model(model)
            cb.set_params(params)
        self.model = model

    def has(self, cls):
        return any(isinstance(cb, cls) for cb in self.callbacks)

    def _backups(self):
        return [cb for cb in self.callbacks if isinstance(cb, BackupAndRestore)]

    def start_epoch(self, initial_epoch):
        """(the epoch to start at, the progress inside it to resume from or None)."""
        resumed = [cb for cb in self._backups() if cb.resume_epoch is not None]
        if not resumed:
            return initial_epoch, None
        latest = max(resumed, key=lambda cb: (cb.resume_epoch, cb.resume_progress is not None))
        if latest.resume_epoch < initial_epoch:
            return initial_epoch, None
        return latest.resume_epoch, latest.resume_progress

    def step_backup_due(self) -> bool:
        """Count a finished batch in every BackupAndRestore; True when one wants a backup."""
        return any([cb.step_backup_due() for cb in self._backups()])

    def write_step_backup(self, epoch, progress) -> None:
        for cb in self._backups():
            cb.write_backup(epoch, self.callbacks, progress)

    def on_nonfinite(self, message):
        for cb in self.callbacks:
            if isinstance(cb, TerminateOnNaN):
                cb.on_nonfinite(message)

    def _call(self, name, *args):
        for cb in self.callbacks:
            getattr(cb, name)(*args)

    def on_train_begin(self):
        self._call("on_train_begin", {})
        for cb in self.callbacks:
            if isinstance(cb, BackupAndRestore):
                cb.restore_callbacks(self.callbacks)

    def on_train_end(self):
        self._call("on_train_end", {})

    def on_epoch_begin(self, epoch):
        self._call("on_epoch_begin", epoch, {})

    def on_epoch_end(self, epoch, logs):
        self._call("on_epoch_end", epoch, logs)
        for cb in self.callbacks:  # last: the learning rate and the callbacks' state are final
            if isinstance(cb, BackupAndRestore):
                cb.write_backup(epoch, self.callbacks)

    def on_train_batch_begin(self, step):
        self._call("on_train_batch_begin", step, {})

    def on_train_batch_end(self, step, logs):
        self._call("on_train_batch_end", step, logs)
