"""A stage's training loop under guard: clean stops, exact resumes, no diverged weights kept.

A TrainingGuard wraps what the loop already does, so a stage's loop reads the same:

    guard = TrainingGuard(cfg, runtime, cfg["scan_checkpoint"], unwrap(model), optimizer)
    checkpoint = guard.resume()                       # model, optimizer, position, random generators
    for epoch in guard.epochs():                      # Ctrl-C / SIGTERM now only ask to stop
        train_one_epoch(guard.batches(loader), ...)   # stops cleanly between steps when asked
        guard.save_checkpoint(epoch + 1, best_loss=...)

Exact resume (docs/reliability.md): the generators that drive shuffling, augmentation and neighbour sampling are
saved with every checkpoint and restored before the first resumed batch; a mid-epoch checkpoint also holds the
state at the epoch's start, so the epoch's used batches are drawn again (not trained on) before the state at the
stop is restored.
"""

from __future__ import annotations

import os
import shlex
import signal
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import torch

from utils.checkpoint import DIVERGENCE_HINT, NonFiniteError, resume, save_atomic, training_checkpoint
from utils.runtime import Runtime, any_process, barrier, gather_rng_states, restore_rng_states, rng_state

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
# Keys of checkpoint.pth.tar that the guard writes itself; the rest are the stage's extras.
GUARD_KEYS = ("model", "optimizer", "record", "epoch", "step", "batch_size", "rng", "epoch_rng")


def resume_hint(argv: list[str] | None = None) -> str:
    """How to resume: the same command, or without --fresh, which would move the checkpoint aside again."""
    argv = sys.argv if argv is None else argv
    if "--fresh" not in argv[1:]:
        return "To resume, run the same command again (add --fresh to start over instead)."
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        return "To resume, run the same torchrun command again without --fresh (--fresh would start over)."
    command = shlex.join([sys.executable, *[arg for arg in argv if arg != "--fresh"]])
    return f"To resume, run the same command without --fresh (--fresh would start over):\n  {command}"


class TrainingStopped(Exception):
    """A stop request (SIGINT / SIGTERM) ended the run after writing a resumable checkpoint."""

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.exit_code = 128 + signum  # the shell's convention for "ended by signal"


class NonFiniteLossError(NonFiniteError):
    """The training loss became NaN or infinite."""


def finite_loss(loss: torch.Tensor | float, epoch: int, step: int) -> float:
    """The loss (a one-element tensor, or a float already read) as a float, or a stop naming where training
    diverged, before any file is written; checked on the value the loop reads anyway (no extra device sync)."""
    value = loss.item() if isinstance(loss, torch.Tensor) else float(loss)
    if value != value or value in (float("inf"), float("-inf")):
        raise NonFiniteLossError(
            f"The loss is {value} at epoch {epoch + 1}, step {step}: training diverged and the stage stops. "
            f"Nothing of this epoch was saved: checkpoint.pth.tar, if any, still holds the end of the previous "
            f"epoch. {DIVERGENCE_HINT}"
        )
    return value


class GuardedBatches:
    """One epoch's batches of `loader` (minus those already trained on when resuming mid-epoch)."""

    def __init__(self, guard: TrainingGuard, loader) -> None:
        self.guard, self.loader = guard, loader
        self.skip = guard._steps_done(loader)

    def __len__(self) -> int:
        return len(self.loader) - self.skip

    def __iter__(self) -> Iterator:
        return self.guard._iterate(self.loader, self.skip)


class TrainingGuard:
    """Checkpointing, resume, stop requests and RNG state for one stage's training loop."""

    def __init__(self, cfg: dict, runtime: Runtime, path: str, model, optimizer, plan=None) -> None:
        """`plan`: engine.run_record.RunPlan, whether to resume and the record to save; None: resume the file at
        `path` when there is one, record nothing."""
        self.cfg, self.runtime, self.path = cfg, runtime, path
        self.resume_checkpoint = Path(path).is_file() if plan is None else plan.resume
        self.record = None if plan is None else plan.record
        self.model, self.optimizer = model, optimizer  # the bare model (not DDP-wrapped)
        self.start_epoch = self.epoch = 0
        self.extras: dict = {}  # the stage's extras of the last checkpoint, kept for a mid-epoch stop
        self._checkpoint: dict = {}  # the resumed checkpoint, until its position has been restored
        self._epoch_start_rng: dict | None = None
        self._batch_size = cfg["batch_size"]  # the loader's (capped on tiny data), to count images done
        self._signal: int | None = None
        self._previous_handlers: dict = {}

    # Resume -------------------------------------------------------------------------------------------
    def resume(self) -> dict:
        """Load checkpoint.pth.tar when the plan says so (see utils.checkpoint.resume); returns it, or {'epoch': 0}."""
        checkpoint = {"epoch": 0}
        if self.resume_checkpoint:
            checkpoint = resume(self.path, self.model, self.optimizer, self.runtime.is_main)
        self.start_epoch = checkpoint["epoch"]
        self.extras = {key: value for key, value in checkpoint.items() if key not in GUARD_KEYS}
        self._checkpoint = checkpoint if "rng" in checkpoint else {}
        return checkpoint

    def _steps_done(self, loader) -> int:
        """Batches of this epoch already trained on: those of a mid-epoch checkpoint, counted in images."""
        checkpoint = self._checkpoint
        if not checkpoint.get("step") or checkpoint["epoch"] != self.epoch:
            return 0
        images = checkpoint["step"] * checkpoint.get("batch_size", loader.batch_size)
        return min(images // loader.batch_size, len(loader))

    # The loop ----------------------------------------------------------------------------------------
    def epochs(self) -> Iterator[int]:
        """The epochs still to run; meanwhile SIGINT / SIGTERM ask for a clean stop instead of killing."""
        self._install_handlers()
        try:
            for epoch in range(self.start_epoch, self.cfg["epochs"]):
                self.epoch = epoch
                yield epoch
        finally:
            self._restore_handlers()

    def batches(self, loader) -> GuardedBatches:
        return GuardedBatches(self, loader)

    def _iterate(self, loader, skip: int) -> Iterator:
        checkpoint, self._checkpoint = self._checkpoint, {}
        mid_epoch = bool(checkpoint.get("step")) and checkpoint["epoch"] == self.epoch
        if mid_epoch:
            restore_rng_states(checkpoint["epoch_rng"], self.runtime)
        elif checkpoint:
            restore_rng_states(checkpoint["rng"], self.runtime)
        self._epoch_start_rng, self._batch_size = rng_state(), loader.batch_size
        iterator = iter(loader)
        for _ in range(skip):  # drawn again, not trained on: the data randomness continues where it stopped
            next(iterator)
        if mid_epoch:
            restore_rng_states(checkpoint["rng"], self.runtime)
        step = skip
        while True:
            if self._stop_requested():
                self._write(self.epoch, step, epoch_rng=True)
                self._raise_stopped(f"at epoch {self.epoch + 1}, step {step} of {len(loader)}")
            try:
                batch = next(iterator)
            except StopIteration:
                return
            yield batch
            step += 1

    def save_checkpoint(self, epoch: int, **extras) -> None:
        """The end-of-epoch checkpoint (`epoch` = epochs done) with the stage's `extras`, called by every process;
        a stop requested during the epoch's evaluation takes effect right after it is written."""
        self.extras = extras
        self._write(epoch, 0, epoch_rng=False)
        if self._stop_requested():
            self._raise_stopped(f"after epoch {epoch}")

    def _write(self, epoch: int, step: int, epoch_rng: bool) -> None:
        state = {"epoch": epoch, "step": step, "rng": gather_rng_states(self.runtime)}
        if epoch_rng:
            state["epoch_rng"] = gather_rng_states(self.runtime, self._epoch_start_rng)
        if self.runtime.is_main:
            state["batch_size"] = self._batch_size
            save_atomic(training_checkpoint(self.record, self.model, self.optimizer, **state, **self.extras), self.path)
        barrier(self.runtime)

    # Stop requests -----------------------------------------------------------------------------------
    def _stop_requested(self) -> bool:
        return any_process(self._signal is not None, self.runtime)

    def _raise_stopped(self, where: str) -> None:
        signum = self._signal or signal.SIGTERM  # another process may have received it
        self._restore_handlers()
        raise TrainingStopped(
            f"Stopped by {signal.Signals(signum).name} {where}; saved a resumable checkpoint to {self.path}.\n"
            + resume_hint(),
            signum,
        )

    def _on_signal(self, signum: int, frame) -> None:
        """A first signal asks for the stop; a second Ctrl-C stops at once (the last checkpoint stays as it
        was). A repeated SIGTERM is not a second request: schedulers and torchrun send it to every process
        of a job, and torchrun forwards its own copy to its workers."""
        if self._signal is not None:
            if signum == signal.SIGINT:
                raise KeyboardInterrupt
            return
        self._signal = signum
        if self.runtime.is_main:  # os.write: print() may not be re-entered from a signal handler
            again = " (press Ctrl-C again to stop at once, without saving)" if signum == signal.SIGINT else ""
            os.write(
                2,
                f"\n{signal.Signals(signum).name} received: stopping after the current step and saving a "
                f"checkpoint{again}.\n".encode(),
            )

    def _install_handlers(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # signals are only delivered to the main thread
        for signum in STOP_SIGNALS:
            self._previous_handlers[signum] = signal.signal(signum, self._on_signal)

    def _restore_handlers(self) -> None:
        for signum, handler in self._previous_handlers.items():
            signal.signal(signum, handler)
        self._previous_handlers = {}
