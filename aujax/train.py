"""Training stage: weighted binary cross-entropy, SGD with momentum, a jitted data-parallel train step over a
device-resident dataset, exact resume from the checkpoints of `aujax.checkpoints`.

The training state is a plain dict `{'params', 'batch_stats', 'opt_state', 'step', 'epoch_loss_sum'}` (a pytree; the
loss sum of the epoch so far is part of it so that a resumed epoch reports the same loss), replicated over a
one-axis mesh `('data',)` of all devices of all hosts (`distributed.make_mesh`). Images stay on the devices as uint8,
split into equal blocks of rows, one per device, and each process reads only the rows of its own devices
(`put_on_devices`). A step receives only the global batch's indices; every device takes the batch images that lie in
its block and a reduce-scatter over 'data' hands each device its part of the batch (`gather_batch`), converted to
float32 in [0, 1]. Under
`jax.jit` the batch-norm statistics are means over the whole global batch, so they are the same on every device.
With `config.model.dtype = 'bfloat16'` the model computes in bfloat16 (`model.GraphModel`); parameters, batch
statistics, gradients, the optimizer state and the loss stay float32 (mixed precision).

The data order of epoch e of fold f is a permutation drawn from `(seed, fold, e)`, so a run that is stopped and resumed
from a checkpoint takes exactly the steps an uninterrupted run takes. SIGTERM, and Ctrl-C while a fold trains, stop
training after a checkpoint (`StopRequested`). A full disk is `files.DiskFullError` (`checkpoints.FoldCheckpoints`):
the run resumes from the last complete checkpoint once there is space.
"""

import contextlib
import dataclasses
import os
import signal
import threading
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from aujax import checkpoints
from aujax import distributed
from aujax import events
from aujax import files
from aujax import metrics
from aujax import model as model_lib
from aujax import rundir
from aujax.data.records import FaceRecords, padded_batches
from aujax.progress import Progress


class NonFiniteLossError(RuntimeError):
    pass


def positive_weights(labels: np.ndarray, max_weight: float) -> np.ndarray:
    """Per-AU weight of the positive term, n_negative / n_positive of the training labels (n, A), in [1, max_weight].

    An AU without positives gets `max_weight`: it has no positive term to weigh, and no division by zero.
    """
    labels = np.asarray(labels, np.float64)
    positives = labels.sum(0)
    negatives = len(labels) - positives
    ratio = np.where(positives > 0, negatives / np.maximum(positives, 1), max_weight)
    return np.clip(ratio, 1.0, max_weight).astype(np.float32)


def weighted_bce(logits: jax.Array, labels: jax.Array, pos_weight: jax.Array) -> jax.Array:
    """Mean over images and AUs of -(w y log σ(z) + (1 - y) log(1 - σ(z))); logits, labels (n, A), pos_weight (A,).
    Computed in float32 whatever the model's computation dtype (config.model.dtype)."""
    logits = logits.astype(jnp.float32)
    labels = labels.astype(logits.dtype)
    log_p = jax.nn.log_sigmoid(logits)
    log_not_p = jax.nn.log_sigmoid(-logits)
    return -jnp.mean(pos_weight * labels * log_p + (1.0 - labels) * log_not_p)


def make_optimizer(learning_rate: float, momentum: float) -> optax.GradientTransformation:
    return optax.sgd(learning_rate, momentum=momentum)


@dataclasses.dataclass(frozen=True)
class DeviceData:
    """A dataset held on the devices.

    images: uint8 (rows_per_device * devices, 112, 112, 3), sharded over 'data' in blocks of `rows_per_device` rows;
      the rows past the dataset's end are zeros.
    labels: uint8 (N, A), replicated; au_ids: the A AUs of its columns (the records' `au_ids`, the model's outputs).
    """

    images: jax.Array
    labels: jax.Array
    au_ids: tuple[int, ...]


def put_on_devices(records: FaceRecords, mesh: Mesh) -> DeviceData:
    """The images in row blocks over the devices of `mesh`, read by each process for its own devices only."""
    num_images = len(records)
    rows_per_device = max(1, -(-num_images // mesh.size))
    index = np.arange(rows_per_device * mesh.size)
    images, held = distributed.put_rows(records.image, np.where(index < num_images, index, -1), mesh)
    logging.info("%s: process %d holds %d of %d images on %d of %d devices (%d per device)", records.name,
                 jax.process_index(), held, num_images, len(mesh.local_devices), mesh.size, rows_per_device)
    return DeviceData(images, jax.device_put(records.labels, NamedSharding(mesh, P())), records.au_ids)


def init_state(model, optimizer, rng: jax.Array, mesh: Mesh) -> dict:
    variables = model_lib.init_variables(model, rng)
    state = {"params": variables["params"], "batch_stats": variables["batch_stats"],
             "opt_state": optimizer.init(variables["params"]), "step": jnp.zeros((), jnp.int32),
             "epoch_loss_sum": jnp.zeros((), jnp.float32)}
    return jax.device_put(state, NamedSharding(mesh, P()))


def gather_batch(images: jax.Array, index: jax.Array, mesh: Mesh) -> jax.Array:
    """The images at `index`: (B,) int32, replicated -> (B, 112, 112, 3) float32 in [0, 1], sharded over 'data'.

    Each device takes the batch rows that lie in its block of `images` and zeros for the others; summing these over
    'data' and scattering the sum (one reduce-scatter) gives every device its B / devices images. The sum is exact:
    each pixel has one non-zero term, and bfloat16 holds the integers 0..255 exactly (8-bit reductions are not
    supported by the collectives of every platform).
    """

    def take_held_rows(block, batch_index):
        local = batch_index - jax.lax.axis_index("data") * block.shape[0]
        held = (local >= 0) & (local < block.shape[0])
        taken = jnp.take(block, jnp.clip(local, 0, block.shape[0] - 1), axis=0).astype(jnp.bfloat16)
        taken = jnp.where(held[:, None, None, None], taken, jnp.zeros((), jnp.bfloat16))
        return jax.lax.psum_scatter(taken, "data", scatter_dimension=0, tiled=True)

    batch = jax.shard_map(take_held_rows, mesh=mesh, in_specs=(P("data"), P()), out_specs=P("data"))(images, index)
    return batch.astype(jnp.float32) / 255.0


def make_train_step(model, optimizer, mesh: Mesh) -> Callable:
    """jitted `(state, data_images, data_labels, pos_weight, batch_index (B,)) -> (state, loss)`; state donated."""

    def train_step(state, images, labels, pos_weight, batch_index):
        x = gather_batch(images, batch_index, mesh)
        y = jnp.take(labels, batch_index, axis=0)

        def loss_fn(params):
            logits, updates = model.apply({"params": params, "batch_stats": state["batch_stats"]}, x, train=True,
                                          mutable=["batch_stats"])
            return weighted_bce(logits, y, pos_weight), updates["batch_stats"]

        (loss, batch_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["params"])
        updates, opt_state = optimizer.update(grads, state["opt_state"], state["params"])
        params = optax.apply_updates(state["params"], updates)
        return {"params": params, "batch_stats": batch_stats, "opt_state": opt_state, "step": state["step"] + 1,
                "epoch_loss_sum": state["epoch_loss_sum"] + loss}, loss

    replicated = NamedSharding(mesh, P())
    return jax.jit(train_step, donate_argnums=(0,), out_shardings=(replicated, replicated))


def make_predict_fn(model, mesh: Mesh) -> Callable:
    """jitted `(variables, data_images, index (B,)) -> probabilities (B, A)` in eval mode."""

    def predict(variables, images, index):
        return jax.nn.sigmoid(model.apply(variables, gather_batch(images, index, mesh), train=False))

    return jax.jit(predict, out_shardings=NamedSharding(mesh, P()))


def put_index(index: np.ndarray, mesh: Mesh) -> jax.Array:
    """Batch indices (B,) as int32 on every device of `mesh`."""
    return jax.device_put(np.asarray(index, np.int32), NamedSharding(mesh, P()))


def predict_probabilities(predict_fn, variables, data: DeviceData, index: np.ndarray, batch_size: int,
                          mesh: Mesh) -> np.ndarray:
    """Probabilities (len(index), A) for the images at `index`, in batches padded to `batch_size`."""
    outputs = [(predict_fn(variables, data.images, put_index(batch, mesh)), valid)  # all dispatched, then fetched
               for batch, valid in padded_batches(index, batch_size)]
    return (np.concatenate([np.asarray(o)[:valid] for o, valid in outputs]) if outputs
            else np.zeros((0, len(data.au_ids)), np.float32))


def epoch_order(train_index: np.ndarray, seed: int, fold: int, epoch: int, batch_size: int) -> np.ndarray:
    """The batches of one epoch, (steps, batch_size) indices: a permutation from (seed, fold, epoch), remainder dropped."""
    order = np.random.default_rng([seed, fold, epoch]).permutation(train_index)
    steps = len(order) // batch_size
    return order[: steps * batch_size].reshape(steps, batch_size)


class StopRequested:
    """Set by SIGTERM (preemptible machines), or by Ctrl-C (SIGINT) while a fold trains: training saves a checkpoint at
    the next step and stops (`TrainingStopped`). A second Ctrl-C stops at once (KeyboardInterrupt), as Ctrl-C does
    outside `ctrl_c_deferred`.

    With several processes SIGTERM may reach some hosts only, or at different steps, while a checkpoint needs every
    process. There JAX's preemption service catches SIGTERM (so no Python handler is installed over it) and names a
    step that all processes stop at; `after_step` asks it. Ctrl-C there is passed on to it as SIGTERM.
    """

    def __init__(self):
        self.requested = False
        self._ctrl_c_pressed = False

    def install(self):
        if hasattr(signal, "SIGTERM") and jax.process_count() == 1:
            signal.signal(signal.SIGTERM, self._handle)
        return self

    @contextlib.contextmanager
    def ctrl_c_deferred(self):
        """Within, Ctrl-C asks to stop after a checkpoint; Python's handler (KeyboardInterrupt) is restored after.

        Signals reach the main thread only: elsewhere this changes nothing."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = signal.signal(signal.SIGINT, self._handle_ctrl_c)
        try:
            yield
        finally:
            signal.signal(signal.SIGINT, previous)

    def after_step(self, step: int) -> None:
        """Call after every train step, on every process; `step` counts the fold's steps, as its checkpoints do."""
        if multihost_utils.reached_preemption_sync_point(step):
            logging.warning("SIGTERM received by a process: all processes save a checkpoint at step %d and stop", step)
            self.requested = True

    def _handle(self, signum, frame):
        logging.warning("SIGTERM received: saving a checkpoint and stopping")
        self.requested = True

    def _handle_ctrl_c(self, signum, frame):
        if self._ctrl_c_pressed:
            raise KeyboardInterrupt
        self._ctrl_c_pressed = True
        logging.warning("Ctrl-C: saving a checkpoint at the next step and stopping (Ctrl-C again stops at once)")
        if jax.process_count() > 1:
            os.kill(os.getpid(), signal.SIGTERM)  # JAX's preemption service then stops every process at one step
        else:
            self.requested = True


class TrainingStopped(RuntimeError):
    """Raised after the checkpoint written on SIGTERM or Ctrl-C; the run resumes from it when started again."""


@dataclasses.dataclass
class FoldSpec:
    """One fold: which images of the resident dataset it trains and tests on."""

    fold: int
    name: str                 # the held-out subject
    train_index: np.ndarray   # (n_train,) indices into the resident dataset
    test_index: np.ndarray    # (n_test,)


@dataclasses.dataclass
class TrainConfig:
    epochs: int
    batch_size: int
    learning_rate: float
    momentum: float
    seed: int
    pos_weight_max: float
    checkpoint_every_steps: int  # 0: at the end of every epoch only
    threshold: float
    min_support: int
    log_every_steps: int = 10  # TensorBoard: the training loss of every this many steps; 0: none


class Trainer:
    """The model with its jitted train and predict functions, compiled once and shared by all folds."""

    def __init__(self, model, cfg: "TrainConfig", mesh: Mesh):
        self.model, self.cfg, self.mesh = model, cfg, mesh
        self.optimizer = make_optimizer(cfg.learning_rate, cfg.momentum)
        self.train_step = make_train_step(model, self.optimizer, mesh)
        self.predict_fn = make_predict_fn(model, mesh)

    def predict(self, variables, data: DeviceData, index: np.ndarray) -> np.ndarray:
        """Probabilities (len(index), 8) of the images at `index`."""
        return predict_probabilities(self.predict_fn, variables, data, index, self.cfg.batch_size, self.mesh)


def fit_fold(trainer: Trainer, fold: FoldSpec, data: DeviceData, labels: np.ndarray, checkpoint_dir: str,
             stop: StopRequested) -> tuple[dict, list[dict]]:
    """Train one fold to `cfg.epochs`, resuming from `checkpoint_dir/latest` if a checkpoint is there.

    Args:
      labels: (N, A) host copy of the resident labels (for the positive weights and held-out scores).

    Returns:
      (variables of the last epoch {'params', 'batch_stats'}, history: one dict per epoch, kept across resumes in
      `checkpoint_dir/history.json`).

    As it trains it shows its progress with rate and ETA (`aujax.progress`) and writes TensorBoard scalars to
    `<workdir>/tensorboard/fold_XX` (`aujax.events`).
    """
    cfg, mesh = trainer.cfg, trainer.mesh
    pos_weight = jax.device_put(positive_weights(labels[fold.train_index], cfg.pos_weight_max),
                                NamedSharding(mesh, P()))
    state = init_state(trainer.model, trainer.optimizer, jax.random.fold_in(jax.random.key(cfg.seed), fold.fold), mesh)
    fold_dir = rundir.FoldDir(checkpoint_dir)
    saved = checkpoints.FoldCheckpoints(fold_dir)
    restored = saved.resume(state)
    if restored is not None:
        state = restored
        logging.info("fold %s: resumed from step %d", fold.name, int(state["step"]))
    history = [h for h in files.read_json(fold_dir.history, []) if h["step"] <= int(state["step"])]

    steps_per_epoch = len(fold.train_index) // cfg.batch_size
    if steps_per_epoch == 0:
        raise ValueError(f"fold {fold.name}: {len(fold.train_index)} training images, fewer than one batch of "
                         f"{cfg.batch_size}; lower --batch_size")
    step = int(state["step"])
    with saved.writing(state), stop.ctrl_c_deferred(), \
            events.FoldEvents(fold_dir.tensorboard, step, cfg.log_every_steps) as tensorboard, \
            Progress((cfg.epochs * steps_per_epoch - step) * cfg.batch_size, f"fold {fold.name}") as progress:
        while step < cfg.epochs * steps_per_epoch:
            epoch, offset = divmod(step, steps_per_epoch)
            batches = epoch_order(fold.train_index, cfg.seed, fold.fold, epoch, cfg.batch_size)
            started, losses = time.perf_counter(), []
            for batch in batches[offset:]:
                state, loss = trainer.train_step(state, data.images, data.labels, pos_weight, put_index(batch, mesh))
                losses.append(loss)
                step += 1
                tensorboard.step_loss(step, loss)
                progress.advance(cfg.batch_size)
                stop.after_step(step)
                periodic = cfg.checkpoint_every_steps and step % cfg.checkpoint_every_steps == 0
                if step % steps_per_epoch and (stop.requested or periodic):  # epoch ends are saved below
                    _check_finite(losses, fold, epoch, step - len(losses))
                    saved.save(step, state)
                    _stop_if_requested(stop, saved, fold, step)
            _check_finite(losses, fold, epoch, step - len(losses))
            epoch_loss = float(state["epoch_loss_sum"]) / steps_per_epoch
            state["epoch_loss_sum"] = jax.device_put(jnp.zeros((), jnp.float32), NamedSharding(mesh, P()))
            seconds = time.perf_counter() - started
            variables = {"params": state["params"], "batch_stats": state["batch_stats"]}
            probabilities = trainer.predict(variables, data, fold.test_index)
            scores = metrics.per_au_scores(labels[fold.test_index], metrics.decisions(probabilities, cfg.threshold),
                                           cfg.min_support, au_ids=data.au_ids)
            held_out_f1 = metrics.mean_f1(scores)
            improved = all(_best_score(held_out_f1) > _best_score(h["held_out_mean_f1"]) for h in history)
            record = {"epoch": epoch + 1, "step": step, "loss": epoch_loss, "held_out_mean_f1": held_out_f1,
                      "images_per_second": len(losses) * cfg.batch_size / seconds}
            history.append(record)
            tensorboard.epoch(record)
            logging.info("fold %s  epoch %d/%d  loss %.4f  held-out mean F1 %s  %.0f images/s", fold.name,
                         epoch + 1, cfg.epochs, epoch_loss, "n/a" if held_out_f1 is None else f"{held_out_f1:.3f}",
                         record["images_per_second"])
            if jax.process_index() == 0:  # before the checkpoint: a resume drops records newer than its step
                files.write_json(fold_dir.history, history)
            saved.save(step, state, best_score=_best_score(held_out_f1) if improved else None)
            _stop_if_requested(stop, saved, fold, step)
    return {"params": state["params"], "batch_stats": state["batch_stats"]}, history


def _best_score(held_out_f1: float | None) -> float:
    """The held-out mean F1 that ranks checkpoints for best/; -1 where no AU could be scored."""
    return -1.0 if held_out_f1 is None else held_out_f1


def _stop_if_requested(stop: StopRequested, saved: checkpoints.FoldCheckpoints, fold: FoldSpec, step: int) -> None:
    if stop.requested:
        saved.wait()
        raise TrainingStopped(f"stopped by request in fold {fold.name} at step {step}, after saving a checkpoint; "
                              "run the same command again to resume")


def _check_finite(losses: list, fold: FoldSpec, epoch: int, first_step: int) -> None:
    """NonFiniteLossError naming fold, epoch and step at the first non-finite loss of `losses` (device scalars)."""
    values = np.asarray(jax.device_get(losses), np.float64) if losses else np.zeros(0)
    bad = np.flatnonzero(~np.isfinite(values))
    if len(bad):
        raise NonFiniteLossError(
            f"fold {fold.name}, epoch {epoch + 1}, step {first_step + bad[0] + 1}: the loss is {values[bad[0]]}; "
            "training stopped and the last good checkpoint is kept (try a lower learning rate)")
