"""The default logger of every recipe: Weights & Biases, online when it can be, offline when it cannot.

A recipe must run on a laptop on a train, on a cluster node without internet and on a workstation with an
account, and never stop to ask for an API key. So the mode is chosen up front: online only with credentials
(``WANDB_API_KEY`` or a ``~/.netrc`` entry) and a reachable server; otherwise the run is written offline under
the run directory and the ``wandb sync`` command to upload it later is printed when training ends.

Everything else a recipe asks of W&B is set in the recipe too: checkpoints as artifacts (``log_model``, offline as
well: ``wandb sync`` uploads them) and gradient or parameter histograms (``watch``), e.g.::

    trainer:
      logger:
        class_path: recipes.wandb_logger.RecipeWandbLogger
        init_args: {log_model: best, watch: gradients, watch_log_freq: 50}
"""

from __future__ import annotations

import netrc
import os
import socket
from typing import Literal
from urllib.parse import urlparse

from lightning.pytorch import LightningModule
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import rank_zero_only
from torch import Tensor
from typing_extensions import override

LOG_MODEL = (False, True, "all", "best")
WATCH = (None, "gradients", "parameters", "all")


def wandb_can_go_online(timeout: float = 2.0) -> bool:
    """Whether W&B credentials exist and its server answers within ``timeout`` seconds."""
    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname or "api.wandb.ai"
    has_key = bool(os.environ.get("WANDB_API_KEY"))
    if not has_key:
        try:
            has_key = netrc.netrc(os.environ.get("NETRC")).authenticators(host) is not None
        except (FileNotFoundError, netrc.NetrcParseError, OSError):
            has_key = False
    if not has_key:
        return False
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return True
    except OSError:
        return False


class RecipeWandbLogger(WandbLogger):
    """``WandbLogger`` that picks online or offline mode itself and closes its run when training ends.

    Args:
        name: Run name; the ``recipe`` command names it after the recipe.
        save_dir: Folder that receives the ``wandb/`` run directory; ``None``: the run directory the ``recipe``
            command gives it (``runs/`` outside the command).
        project: W&B project.
        offline: Force offline (``True``) or online (``False``); ``None`` decides from credentials and network.
            An explicit ``WANDB_MODE`` in the environment is always respected.
        log_model: Checkpoints as W&B artifacts ``model-<run id>`` holding ``model.ckpt``. ``"best"``: the best
            checkpoint alone, once training ends (aliases ``best`` and ``latest``); ``True``: the last and best ones
            then, as ``WandbLogger`` does; ``"all"``: every checkpoint as it is written; ``False``: none. Offline
            runs keep them for ``wandb sync``.
        watch: Log histograms of the ``"gradients"``, the ``"parameters"`` or ``"all"`` of both, every
            ``watch_log_freq`` training steps (``wandb.watch``); ``None``: off. Each histogram costs a device-to-host
            copy of every parameter, so keep it off for speed runs.
        watch_log_freq: Training steps between histograms.
        tags: Run tags.
    """

    _open: RecipeWandbLogger | None = None  # the logger whose run is open in this process

    def __init__(
        self,
        name: str | None = None,
        save_dir: str | None = None,
        project: str = "lightning-recipes",
        offline: bool | None = None,
        log_model: bool | Literal["all", "best"] = False,
        watch: Literal["gradients", "parameters", "all"] | None = None,
        watch_log_freq: int = 100,
        tags: list[str] | None = None,
    ) -> None:
        if log_model not in LOG_MODEL or not isinstance(log_model, (bool, str)):
            raise ValueError(f"log_model must be one of false, true, 'all', 'best'; got {log_model!r}")
        if watch not in WATCH:
            raise ValueError(f"watch must be 'gradients', 'parameters', 'all' or null (off); got {watch!r}")
        if isinstance(watch_log_freq, bool) or watch_log_freq < 1:
            raise ValueError(f"watch_log_freq must be a positive number of training steps, got {watch_log_freq!r}")
        if offline is None:
            offline = os.environ.get("WANDB_MODE") == "offline" or (
                "WANDB_MODE" not in os.environ and not wandb_can_go_online()
            )
        # Absolute: W&B's service process writes the run file relative to its own working directory, which is where
        # the first run of this Python process started (a notebook or a test suite that changes directory differs).
        save_dir = os.path.abspath(save_dir or "runs")
        os.makedirs(save_dir, exist_ok=True)
        super().__init__(name=name, save_dir=save_dir, project=project, offline=offline, tags=tags)
        # Set after the parent's constructor, which refuses checkpoints offline: wandb keeps an offline run's artifacts
        # for ``wandb sync`` now, and a recipe that went offline by itself must not stop over a flag that asks for them.
        self._log_model = log_model
        self._watch, self._watch_log_freq = watch, watch_log_freq
        self._watched = False
        self._told_sync = False

    @property
    def experiment(self):
        # One W&B run per recipe run: a later stage of the same trainer (``trainer.test`` after ``fit``) logs into the
        # run ``fit`` opened, while a new logger (the next ``recipe`` command in this process, a notebook's next
        # cell) first finishes any run still open, where Lightning would attach to it and log into another run.
        if self._experiment is None:
            import wandb

            previous = RecipeWandbLogger._open
            if previous is not None and previous is not self:
                previous.close()
            if wandb.run is not None:
                wandb.run.finish()
        experiment = super().experiment
        if hasattr(experiment, "finish"):
            RecipeWandbLogger._open = self
        return experiment

    @override
    @rank_zero_only
    def log_graph(self, model: LightningModule, input_array: Tensor | None = None) -> None:
        # Lightning hands each logger the module as a stage starts (with the hyperparameters, unless the trainer's
        # ``enable_autolog_hparams`` is off): the first time a logger sees the model. Only training has gradients.
        trainer = getattr(model, "_trainer", None)
        if self._watch is None or self._watched or trainer is None or trainer.state.fn != TrainerFn.FITTING:
            return
        self.watch(model, log=self._watch, log_freq=self._watch_log_freq, log_graph=False)
        self._watched = True

    @override
    def after_save_checkpoint(self, checkpoint_callback: ModelCheckpoint) -> None:
        if self._log_model == "best":  # uploaded when training ends, when "best" is final
            self._checkpoint_callbacks[id(checkpoint_callback)] = checkpoint_callback
        else:
            super().after_save_checkpoint(checkpoint_callback)

    def _log_best_checkpoint(self, checkpoint_callback: ModelCheckpoint) -> None:
        """Upload the best checkpoint as Lightning names it (``model-<run id>:best``, file ``model.ckpt``), so
        ``WandbLogger.download_artifact`` finds it as it finds those of ``log_model=True``."""
        import wandb

        path = checkpoint_callback.best_model_path
        if not path or not os.path.isfile(path):
            return
        score = checkpoint_callback.best_model_score
        metadata = {
            "score": None if score is None else float(score),
            "monitor": checkpoint_callback.monitor,
            "original_filename": os.path.basename(path),
        }
        name = self._checkpoint_name or f"model-{self.experiment.id}"
        artifact = wandb.Artifact(name, type="model", metadata=metadata)
        artifact.add_file(path, name="model.ckpt")
        self.experiment.log_artifact(artifact, aliases=["latest", "best"])

    @override
    def finalize(self, status: str) -> None:
        if self._log_model == "best":
            if status == "success" and self._experiment is not None and rank_zero_only.rank == 0:
                for checkpoint_callback in self._checkpoint_callbacks.values():
                    self._log_best_checkpoint(checkpoint_callback)
            self._checkpoint_callbacks.clear()  # uploaded: the parent's finalize must not add the last one too
        super().finalize(status)
        if self._experiment is None or not hasattr(self._experiment, "finish"):
            return
        if status != "success":
            self.close(exit_code=1)
        elif self._offline and not self._told_sync:
            self._told_sync = True
            sync_dir = os.path.dirname(self._experiment.dir)  # .../wandb/offline-run-<time>-<id>
            # Printed rather than logged: it is the one line a user must see to get the run online later.
            print(f"W&B run saved offline in {sync_dir}. Upload it with:\n    wandb sync {sync_dir}")

    def close(self, exit_code: int = 0) -> None:
        """Finish this logger's W&B run (W&B also finishes open runs when Python exits)."""
        if self._experiment is not None and hasattr(self._experiment, "finish"):
            self._experiment.finish(exit_code=exit_code)
        self._experiment = None
        if RecipeWandbLogger._open is self:
            RecipeWandbLogger._open = None
