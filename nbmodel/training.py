"""The epoch loop of ``Model.fit``, shared by one process and the data-parallel trainers.

``run_fit`` drives a *trainer* through the epochs: batches, callbacks, logs,
validation, the non-finite-loss rule. The trainer owns the step and whatever
replicas it has:

- ``is_root``: True where logs are printed and files written;
- ``replicas``: how many processes share each global batch;
- ``keep_callback(cb)``: whether this replica runs ``cb``;
- ``agree(obj)``: the root's ``obj`` on every replica;
- ``start()``, ``epoch_begin()``, ``sync_state()`` (end of epoch), ``finish(completed)``;
- ``train_step(idx) -> (loss value, [unweighted loss per output])``: one step on
  the samples ``idx`` of the training data (``LocalTrainer`` also takes a
  ``data.Batch`` streamed from a PyDataset or a generator). The optimizer step and the metric
  updates happen only when the loss is finite.

``LocalTrainer`` is the one-process trainer; ``nbmodel.parallel`` has the others.
The step, the metrics and the logs are the model's ``training_core``'s.
"""
from __future__ import annotations

import sys
import time

import numpy as np

from . import callbacks as cb_mod
from .callbacks import TrainingPreempted
from .data import Batch, BatchIterator, BatchStream, array_batches, take_batch
from .layers.base import finite_checks


class LocalTrainer:
    """One process trains on the whole batch."""

    is_root = True
    replicas = 1

    def __init__(self, model, xs, ys, sw):
        self.model, self.xs, self.ys, self.sw = model, xs, ys, sw

    def keep_callback(self, cb):
        return True

    def agree(self, obj):
        return obj

    def start(self):
        pass

    def epoch_begin(self):
        pass

    def sync_state(self):
        pass

    def finish(self, completed):
        pass

    def train_step(self, idx):
        model = self.model
        b = idx if isinstance(idx, Batch) else take_batch(model, self.xs, self.ys, self.sw, idx, "fit")
        bx, by, bw = b.xs, b.ys, b.sw
        core = model.training_core  # (a Sequential built from a streamed batch has one by now)
        loss_value, preds, ok = core.train_step(bx, by, bw)
        if ok:
            core.update_metrics(by, preds, bw)
        return loss_value, core.output_losses


class _PreemptSignals:
    """While ``fit`` runs with a BackupAndRestore: SIGTERM and SIGUSR1 (a scheduler's
    time limit, Slurm's ``--signal``) only note their arrival; the epoch loop ends
    the step, writes the backup and raises TrainingPreempted. Handlers can only be
    set in the main thread; elsewhere the signals keep their usual effect."""

    SIGNALS = ("SIGTERM", "SIGUSR1")

    def __init__(self):
        import signal
        import threading

        self.received = None
        self._previous = {}
        if threading.current_thread() is not threading.main_thread():
            return
        for name in self.SIGNALS:
            sig = getattr(signal, name, None)
            if sig is not None:
                self._previous[sig] = signal.signal(sig, self._note)

    def _note(self, signum, frame):
        import signal

        self.received = signal.Signals(signum).name

    def restore(self):
        import signal

        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}


def run_fit(model, trainer, n, val, batch_size, epochs, verbose, callbacks, shuffle, initial_epoch,
            steps_per_epoch, validation_batch_size, validation_freq, batches=None):
    """Train ``model`` for ``epochs`` epochs over ``n`` samples with ``trainer``; returns the History.

    ``batches``: a ``data.BatchStream`` (``n`` None, ``batch_size`` None) instead of index
    batches over ``n`` samples. ``val``: (xs, ys, sw) arrays, a BatchStream or None.

    ``model.training_core`` is None until the first batch when the model is a Sequential
    built (and compiled) from its first streamed batch."""
    if batches is None:
        batches = BatchIterator(n, batch_size, shuffle, model.shuffle_rng)
        steps = len(batches) if steps_per_epoch is None else min(int(steps_per_epoch), len(batches))
    else:
        steps = batches.steps
    model.history = cb_mod.History()
    user_cbs = [cb for cb in (callbacks or []) if trainer.keep_callback(cb)]
    cbs = cb_mod.CallbackList(user_cbs, model=model, history=model.history,
                              verbose=verbose if trainer.is_root else 0, epochs=epochs, steps=steps, samples=n)
    model.stop_training = False
    stop_on_nan = cbs.has(cb_mod.TerminateOnNaN)
    backup = trainer.agree(cbs.has(cb_mod.BackupAndRestore))  # the root's (only it writes files, under MPI)
    multi_out = model.built and len(model.outputs) > 1  # one loss per output
    cbs.on_train_begin()
    start_epoch, progress = trainer.agree(cbs.start_epoch(initial_epoch))
    trainer.start()
    nonfinite, completed = None, False
    preempt = _PreemptSignals() if backup else None
    try:
        with finite_checks(False):
            for epoch in range(start_epoch, epochs):
                if getattr(batches, "exhausted", False):  # a generator ended in an earlier epoch
                    batches.warn_exhausted(epoch)
                    break
                cbs.on_epoch_begin(epoch)
                epoch_random = model.get_random_state()[0]  # the shuffler before this epoch's order
                trainer.epoch_begin()
                core = model.training_core
                if core is not None:
                    core.reset_metrics()
                loss_sum, n_seen, t0 = 0.0, 0, time.perf_counter()
                out_sums = np.zeros(len(core.losses)) if multi_out else None
                skip = 0
                if progress is not None:  # resumed from a step backup inside this epoch
                    skip, loss_sum, n_seen = progress["step"] + 1, progress["loss_sum"], progress["n_seen"]
                    if multi_out:
                        out_sums[:] = progress["out_sums"]
                    for (_, _, m), totals in zip(core.metrics or [], progress["metric_totals"]):
                        m.merge_totals(totals)
                    progress = None
                for step, idx in enumerate(batches.epoch(skip)):
                    if steps is not None and step >= steps:
                        break
                    if step < skip:  # done before the backup: same order, nothing drawn
                        continue
                    cbs.on_train_batch_begin(step)
                    loss_value, per_output = trainer.train_step(idx)
                    core = model.training_core
                    if not np.isfinite(loss_value):
                        msg = (f"fit: non-finite loss {loss_value} at epoch {epoch + 1}, step {step + 1} "
                               f"(batch of {len(idx)} samples); the weights were not updated")
                        if stop_on_nan:
                            cbs.on_nonfinite(msg)
                            model.stop_training = True
                            break
                        nonfinite = msg
                        break
                    loss_sum += loss_value * len(idx)
                    if multi_out:
                        out_sums += np.asarray(per_output) * len(idx)
                    n_seen += len(idx)
                    logs = core.logs(loss_sum, n_seen, output_sums=out_sums)
                    logs["samples_per_s"] = n_seen / max(time.perf_counter() - t0, 1e-9)
                    cbs.on_train_batch_end(step, logs)
                    if backup:  # every replica takes part: the root decides
                        stop_now, due = trainer.agree((preempt.received, cbs.step_backup_due()))
                        if due or stop_now:  # the replicas' moving statistics first (the generators
                            trainer.sync_state()  # that drew are the model's own on every trainer)
                            cbs.write_step_backup(epoch, {
                                "step": step, "loss_sum": loss_sum, "n_seen": n_seen, "out_sums": out_sums,
                                "epoch_random": epoch_random,
                                "metric_totals": [m.totals() for _, _, m in core.metrics or []]})
                        if stop_now:
                            msg = (f"fit: stopped by {stop_now} after epoch {epoch + 1}, step {step + 1}; the "
                                   f"backup is written, rerun the same command to resume")
                            if trainer.is_root:  # the exit code alone would not say why
                                print(msg, file=sys.stderr, flush=True)
                            raise TrainingPreempted(msg)
                    if model.stop_training:
                        break
                if nonfinite:
                    break
                batches.epoch_end()
                trainer.sync_state()
                # (no core: a Sequential still waiting for its first batch saw none)
                logs = core.logs(loss_sum, n_seen, output_sums=out_sums) if core is not None else {"loss": 0.0}
                if val is not None and n_seen and (epoch + 1) % validation_freq == 0:
                    val_logs = None
                    if trainer.is_root:
                        val_batches = val.batches() if isinstance(val, BatchStream) else array_batches(
                            model, *val, validation_batch_size or batch_size or 32, "fit (validation_data)")
                        val_logs = core.evaluate_batches(val_batches, "fit (validation_data)")
                    logs.update({"val_" + k: v for k, v in trainer.agree(val_logs).items()})
                # every replica sees the root's logs, so callbacks decide alike everywhere
                logs = trainer.agree(logs)
                if n_seen:
                    cbs.on_epoch_end(epoch, logs)
                lr = model.optimizer.settable_learning_rate  # None when a schedule drives it
                stop, lr = trainer.agree((bool(model.stop_training), lr))
                model.stop_training = stop
                if lr is not None:
                    model.optimizer.learning_rate = lr
                if stop:
                    break
        completed = True
    finally:
        if preempt is not None:
            preempt.restore()
        trainer.finish(completed)
    if nonfinite:
        err = FloatingPointError(nonfinite)
        err.nbmodel_all_replicas = True  # every MPI rank raises it: no abort needed
        raise err
    cbs.on_train_end()
    return model.history
