"""TensorBoard event files of a fold's training, written with tensorboardX (no TensorFlow needed):

  train/loss                the training loss of every `every_steps`-th step
  epoch/loss                the epoch's mean training loss
  epoch/held_out_mean_f1    held-out mean F1 (no point where no AU could be scored)
  epoch/images_per_second   training throughput of the epoch

The TensorBoard step is the fold's step count, as in its checkpoints and history; epoch scalars stand at the epoch's
last step. Only process 0 writes. A writer opened for a run (re)started at step S marks step S + 1 as the start of a
new session, so TensorBoard drops the points past S that a killed run had written before it (tensorboardX's
`purge_step`): a resumed run shows each step once. Each writer has its own file (named by time, host, process id
and S), so a resume within the same second does not overwrite the file before it. Scalars are queued to
tensorboardX's writer thread; the loss is fetched from the device only on the steps that are written.

    tensorboard --logdir <workdir>/tensorboard      # one run per fold: fold_00, fold_01, ...
"""

import os

import jax

EPOCH_TAGS = {"loss": "epoch/loss", "held_out_mean_f1": "epoch/held_out_mean_f1",
              "images_per_second": "epoch/images_per_second"}  # history record key -> tag
STEP_LOSS_TAG = "train/loss"
_FLUSH_SECONDS = 10


class FoldEvents:
    """The event writer of one fold; a context manager that closes (flushes) the file on exit."""

    def __init__(self, directory: str, start_step: int, every_steps: int):
        """
        Args:
          directory: where the event files go (one per writer opened), e.g. <workdir>/tensorboard/fold_00.
          start_step: the fold's step the run starts from (0, or the step of the restored checkpoint).
          every_steps: write the training loss of every this many steps; 0: none.
        """
        self.every_steps = every_steps
        self._writer = None
        if jax.process_index() == 0:
            from tensorboardX import SummaryWriter  # imports torch where it is installed: only when used

            self._writer = SummaryWriter(directory, purge_step=start_step + 1, flush_secs=_FLUSH_SECONDS,
                                         filename_suffix=f".{os.getpid()}.step{start_step:09d}")

    def __enter__(self) -> "FoldEvents":
        return self

    def __exit__(self, *exc_info) -> None:
        if self._writer is not None:
            self._writer.close()

    def step_loss(self, step: int, loss) -> None:
        """The loss (a device scalar) of `step`, fetched and written only where `step` is a multiple of
        `every_steps`."""
        if self._writer is not None and self.every_steps and step % self.every_steps == 0:
            self._writer.add_scalar(STEP_LOSS_TAG, float(loss), step)

    def epoch(self, record: dict) -> None:
        """The scalars of a history record (`train.fit_fold`: 'step', 'loss', 'held_out_mean_f1', ...), then a flush
        so that TensorBoard shows the epoch at once."""
        if self._writer is None:
            return
        for key, tag in EPOCH_TAGS.items():
            if record.get(key) is not None:
                self._writer.add_scalar(tag, float(record[key]), record["step"])
        self._writer.flush()
