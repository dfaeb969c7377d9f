"""The default logger of every recipe: Weights & Biases, online when it can be, offline when it cannot.

A recipe must run on a laptop on a train, on a cluster node without internet and on a workstation with an
account, and never stop to ask for an API key. So the mode is chosen up front: online only with credentials
(``WANDB_API_KEY`` or a ``~/.netrc`` entry) and a reachable server; otherwise the run is written offline under
the run directory and the ``wandb sync`` command to upload it later is printed when training ends.
"""

from __future__ import annotations

import netrc
import os
import socket
from urllib.parse import urlparse

from lightning.pytorch.loggers import WandbLogger


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
    _open: RecipeWandbLogger | None = None  # the logger whose run is open in this process
    """``WandbLogger`` that picks online or offline mode itself and closes its run when training ends.

    Args:
        name: Run name; the ``recipe`` command names it after the recipe.
        save_dir: Folder that receives the ``wandb/`` run directory; ``None``: the run directory the ``recipe``
            command gives it (``runs/`` outside the command).
        project: W&B project.
        offline: Force offline (``True``) or online (``False``); ``None`` decides from credentials and network.
            An explicit ``WANDB_MODE`` in the environment is always respected.
        log_model: Upload checkpoints as W&B artifacts (see ``WandbLogger``).
        tags: Run tags.
    """

    def __init__(
        self,
        name: str | None = None,
        save_dir: str | None = None,
        project: str = "lightning-recipes",
        offline: bool | None = None,
        log_model: bool = False,
        tags: list[str] | None = None,
    ) -> None:
        if offline is None:
            offline = os.environ.get("WANDB_MODE") == "offline" or (
                "WANDB_MODE" not in os.environ and not wandb_can_go_online()
            )
        # Absolute: W&B's service process writes the run file relative to its own working directory, which is where
        # the first run of this Python process started (a notebook or a test suite that changes directory differs).
        save_dir = os.path.abspath(save_dir or "runs")
        os.makedirs(save_dir, exist_ok=True)
        super().__init__(name=name, save_dir=save_dir, project=project, offline=offline, log_model=log_model, tags=tags)
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

    def finalize(self, status: str) -> None:
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
