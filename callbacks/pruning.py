"""Global magnitude pruning on a gradual sparsity schedule, with optional lottery-ticket rewinding."""

from __future__ import annotations

from typing import Any, Literal

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from lightning.pytorch.utilities.rank_zero import rank_zero_warn
from torch import Tensor, nn
from torch.nn.utils import prune
from torch.utils.hooks import RemovableHandle
from typing_extensions import override

from core.epochs import epoch_never_ends

# torch's common base of the batch and instance norms, then the other norm layers.
_NORMS = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm, nn.RMSNorm)
_EMBEDDINGS = (nn.Embedding, nn.EmbeddingBag)


class Pruning(Callback):
    r"""Prune the smallest-magnitude weights of the whole network, gradually, to a target sparsity.

    The schedule is Zhu & Gupta's (`"To prune, or not to prune", 2017 <https://arxiv.org/abs/1710.01878>`_). Pruning
    rounds happen at the start of epochs :math:`e_k = \text{start\_epoch} + (k - 1)\,\text{frequency}`,
    :math:`k = 1 \dots n`, the last one at ``end_epoch``; after round :math:`k` the network's sparsity is

    .. math::
        s_k = s_f \left(1 - (1 - k/n)^3\right) \quad\text{(cubic)}, \qquad s_k = s_f\,k/n \quad\text{(linear)},

    which is the paper's :math:`s_t = s_f + (s_i - s_f)(1 - (t - t_0)/(n\Delta t))^3` with :math:`s_i = 0` and
    :math:`t_0` one interval before ``start_epoch`` (so the first round prunes something). Each round prunes among
    the weights still alive, so its amount is a fraction of the remainder,
    :math:`a_k = 1 - (1 - s_k)/(1 - s_{k-1})`; it is applied as the exact count
    :math:`\operatorname{round}(s_k N) - \operatorname{round}(s_{k-1} N)` (:math:`N` prunable weights), so rounding
    never compounds and the final sparsity is :math:`\operatorname{round}(s_f N)/N`. The ranking is global: the
    magnitudes of every prunable tensor are ranked together (:class:`torch.nn.utils.prune.L1Unstructured` on their
    concatenation), so layers end at different sparsities. Rounds are at epoch starts so that each epoch's validation
    and checkpoint see the weights it trained; a run resumed anywhere prunes up to the schedule's sparsity for its
    epoch.

    With ``rewind_to_epoch`` set, each round is followed by rewinding as in the lottery-ticket experiments (`Frankle &
    Carbin 2019 <https://arxiv.org/abs/1803.03635>`_; `Frankle et al. 2020 <https://arxiv.org/abs/1912.05671>`_ for
    rewinding to an early epoch rather than initialisation): the whole module state (parameters and buffers, so
    BatchNorm statistics too) goes back to its values at the start of epoch ``rewind_to_epoch``, the pruned entries
    stay zero, and every optimizer's per-parameter state is dropped for the rewound parameters, so Adam's moments and
    step count (bias correction) restart from zero at the next step. The learning-rate schedule is *not* rewound. The
    saved state is a CPU copy of the module's ``state_dict`` and travels in this callback's checkpoint state.

    Why not Lightning's ``ModelPruning`` (or ``torch.nn.utils.prune``'s reparametrisation it uses):

    * A float ``amount`` compounds: 0.5 per epoch gives 50%, 75%, 87.5%... and rounds each time; a target needs
      the per-round fraction above, and exact counts.
    * Its pruned modules hold ``weight_orig`` and a ``weight_mask`` buffer instead of ``weight``. With
      ``make_pruning_permanent`` its checkpoints fold them into ``weight`` and the masks are lost, so a resumed run
      lets pruned weights grow back; without it the ``_orig``/``_mask`` keys do not load into a fresh network
      (and weights-only checkpoints skip callbacks' ``on_save_checkpoint``, so they always carry those keys).
      Here ``weight`` stays the same ``nn.Parameter`` and is zeroed in place: the module's ``state_dict`` and every
      checkpoint, weights-only ones included, are the plain network (they load with ``strict=True`` into an unpruned
      one, and ``recipe test`` needs no callback state), while the masks travel in this callback's own state and are
      re-attached on resume.
    * Its lottery-ticket reset assigns ``weight_orig.data = copy.data``, so the live weights share storage with the
      saved copy and training overwrites it: from the second round on it "rewinds" to the current weights. It only
      rewinds to the weights at ``setup``, only the tensors it prunes (never buffers such as BatchNorm statistics),
      and leaves the optimizer's moments in place.
    * It logs sparsity to the Python logger only; here the measured zeros are logged as metrics.

    Pruned weights stay exactly zero: their gradients are zeroed before every optimizer step (so gradient clipping and
    the update see the sparse network's gradient) and the weights themselves after every step (AdamW's momentum and
    decoupled weight decay would otherwise move them), through an ``Optimizer`` step post-hook. Under autocast the
    zeros are cast, still zero. Both act on the parameters of the optimizer that steps only, so manual optimization
    works too (``opt.step()`` through Lightning's optimizer fires both): a GAN's discriminator step must not write to
    the generator's weights, which the generator's backward, still to come, has saved.

    Rounds wait for epoch starts, so in a run whose epoch never ends (an iterable dataset without a length, trained
    for ``max_steps``, as in RL) a schedule with rounds after epoch 0 stops at fit start; one round at epoch 0 works.

    Logged at every training epoch end, measured by counting zeros in the weights: ``pruning/sparsity`` over all
    prunable weights and ``pruning/<layer name>`` per layer.

    Args:
        sparsity: Target fraction :math:`s_f` of prunable weights set to zero, in ``(0, 1)``.
        end_epoch: Epoch (0-based) whose start reaches ``sparsity``; it should be below ``max_epochs`` so the pruned
            network is fine-tuned afterwards.
        start_epoch: Epoch whose start holds the first round.
        frequency: Epochs between rounds; ``end_epoch - start_epoch`` must be a multiple of it.
        schedule: ``"cubic"`` (Zhu & Gupta: prune fast while the network is redundant, slowly near the target) or
            ``"linear"``.
        rewind_to_epoch: After every round, rewind the module (the unpruned weights, the other parameters and the
            buffers) to its state at the start of this epoch (``0``: the initial weights); at most ``start_epoch``.
            ``None`` turns rewinding off.
        prune_biases: Also prune the ``bias`` of the selected layers (off by default: few weights, large effect).
        prune_norms: Also prune the ``weight`` (scale) of normalisation layers (BatchNorm, LayerNorm, GroupNorm, ...).
        prune_embeddings: Also prune the ``weight`` of ``nn.Embedding`` / ``nn.EmbeddingBag`` tables.

    Prunable parameters are chosen by module type and name: the ``weight`` of every module that has one directly
    (convolutions, linear layers and any custom layer), minus the excluded kinds above. Every rank computes the same
    masks from the same weights (DDP); strategies that shard parameters (FSDP, DeepSpeed ZeRO-3) are not supported,
    as each rank would rank only its shard.
    """

    def __init__(
        self,
        sparsity: float,
        end_epoch: int,
        start_epoch: int = 0,
        frequency: int = 1,
        schedule: Literal["cubic", "linear"] = "cubic",
        rewind_to_epoch: int | None = None,
        prune_biases: bool = False,
        prune_norms: bool = False,
        prune_embeddings: bool = False,
    ) -> None:
        if not 0.0 < sparsity < 1.0:
            raise MisconfigurationException(f"sparsity must be in (0, 1), got {sparsity}; e.g. 0.8 zeroes 80%.")
        if start_epoch < 0:
            raise MisconfigurationException(f"start_epoch must be >= 0, got {start_epoch}.")
        if end_epoch < start_epoch:
            raise MisconfigurationException(
                f"end_epoch ({end_epoch}) must be >= start_epoch ({start_epoch}); equal values prune in one round."
            )
        if frequency < 1:
            raise MisconfigurationException(f"frequency must be a number of epochs >= 1, got {frequency}.")
        if (end_epoch - start_epoch) % frequency:
            raise MisconfigurationException(
                f"end_epoch - start_epoch ({end_epoch - start_epoch}) must be a multiple of frequency ({frequency}) "
                "so that the last round falls on end_epoch."
            )
        if schedule not in ("cubic", "linear"):
            raise MisconfigurationException(f"schedule must be 'cubic' or 'linear', got {schedule!r}.")
        if rewind_to_epoch is not None and not 0 <= rewind_to_epoch <= start_epoch:
            raise MisconfigurationException(
                f"rewind_to_epoch must be in [0, start_epoch={start_epoch}] (its weights are saved before the first "
                f"round) or None to turn rewinding off, got {rewind_to_epoch}."
            )
        self.sparsity = sparsity
        self.start_epoch = start_epoch
        self.end_epoch = end_epoch
        self.frequency = frequency
        self.schedule = schedule
        self.rewind_to_epoch = rewind_to_epoch
        self.prune_biases = prune_biases
        self.prune_norms = prune_norms
        self.prune_embeddings = prune_embeddings

        rounds = (end_epoch - start_epoch) // frequency + 1
        ramp = (lambda p: 1.0 - (1.0 - p) ** 3) if schedule == "cubic" else (lambda p: p)
        self._rounds = tuple(
            (start_epoch + (k - 1) * frequency, sparsity * ramp(k / rounds)) for k in range(1, 1 + rounds)
        )

        self._params: dict[str, nn.Parameter] = {}  # prunable parameter name -> the live parameter
        self._layers: dict[str, list[str]] = {}  # layer (module) name -> its prunable parameter names
        self._pruned: dict[str, Tensor] = {}  # parameter name -> bool mask, True where pruned
        self._rewind_state: dict[str, Tensor] | None = None  # the module's state_dict at rewind_to_epoch, on CPU
        self._hooks: list[RemovableHandle] = []

    @property
    def state_key(self) -> str:
        return self._generate_state_key(
            sparsity=self.sparsity,
            start_epoch=self.start_epoch,
            end_epoch=self.end_epoch,
            frequency=self.frequency,
            schedule=self.schedule,
        )

    @property
    def rounds(self) -> tuple[tuple[int, float], ...]:
        """The pruning rounds as ``(epoch, sparsity after the round at that epoch's start)``."""
        return self._rounds

    def target_sparsity(self, epoch: int) -> float:
        """The schedule's sparsity for training epoch ``epoch`` (after the rounds up to its start)."""
        return max((s for e, s in self._rounds if e <= epoch), default=0.0)

    @property
    def num_prunable(self) -> int:
        """:math:`N`, the number of prunable weights (known once ``fit`` has set the callback up)."""
        return sum(p.numel() for p in self._params.values())

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        # A second fit with the same callback starts from a dense network (a resume reloads the masks next).
        for hook in self._hooks:
            hook.remove()
        self._hooks, self._pruned, self._rewind_state = [], {}, None
        self._params, self._layers = {}, {}
        seen: set[int] = set()
        for layer, module in pl_module.named_modules():
            if isinstance(module, _NORMS) and not self.prune_norms:
                continue
            if isinstance(module, _EMBEDDINGS) and not self.prune_embeddings:
                continue
            for name, param in module.named_parameters(recurse=False):
                if name not in ("weight", "bias") or (name == "bias" and not self.prune_biases):
                    continue
                if id(param) in seen or param.numel() == 0:  # a tied weight is pruned once
                    continue
                seen.add(id(param))
                full = f"{layer}.{name}" if layer else name
                self._params[full] = param
                self._layers.setdefault(layer or type(pl_module).__name__, []).append(full)
        if not self._params:
            raise MisconfigurationException(
                f"{type(pl_module).__name__} has no prunable parameter: Pruning takes the `weight` of layers other "
                "than norms and embeddings. Set prune_norms / prune_embeddings to include those."
            )
        max_epochs = trainer.max_epochs
        if max_epochs is not None and max_epochs >= 0 and self.end_epoch >= max_epochs:
            rank_zero_warn(
                f"Pruning reaches sparsity {self.sparsity} at the start of epoch {self.end_epoch}, but training stops "
                f"after {max_epochs} epochs: the network ends at sparsity {self.target_sparsity(max_epochs - 1):.3f}."
            )

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        later = [epoch for epoch, _ in self._rounds if epoch > 0]
        if not later:
            return
        if epoch_never_ends(trainer):
            raise MisconfigurationException(
                f"Pruning rounds at the start of epochs {later}, but this run's epoch never ends (an iterable dataset "
                "without a length, trained for max_steps). Prune in one round with start_epoch=end_epoch=0, or give "
                "the dataset a length so that epochs end."
            )

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._pruned:  # masks restored from a checkpoint: check they fit this network, then put them to work
            if set(self._pruned) != set(self._params) or any(
                self._pruned[n].shape != p.shape for n, p in self._params.items()
            ):
                raise MisconfigurationException(
                    "The checkpoint's pruning masks do not match this network's prunable parameters (expected "
                    f"{len(self._params)} tensors such as {next(iter(self._params))!r}). Resume with the same network "
                    "and the same prune_biases / prune_norms / prune_embeddings."
                )
            self._pruned = {n: m.to(self._params[n].device) for n, m in self._pruned.items()}
            self._zero_pruned()
        self._hooks = [opt.register_step_post_hook(self._after_step) for opt in trainer.optimizers]

    @override
    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        epoch = trainer.current_epoch
        if epoch == self.rewind_to_epoch and self._rewind_state is None:
            self._rewind_state = {k: v.detach().to("cpu", copy=True) for k, v in pl_module.state_dict().items()}
        wanted = round(self.target_sparsity(epoch) * self.num_prunable)
        done = sum(int(m.sum()) for m in self._pruned.values())
        if wanted <= done:
            return
        self._prune(wanted - done)
        if self.rewind_to_epoch is not None:
            self._rewind(trainer, pl_module, epoch)

    @override
    def on_before_optimizer_step(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        for name in self._held_by(optimizer):
            grad = self._params[name].grad
            if grad is not None:
                grad.masked_fill_(self._pruned[name], 0.0)

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        zeros = torch.stack([(p == 0).sum() for p in self._params.values()]).tolist()  # one device sync
        counts = dict(zip(self._params, zeros, strict=True))
        metrics = {
            f"pruning/{layer}": sum(counts[n] for n in names) / sum(self._params[n].numel() for n in names)
            for layer, names in self._layers.items()
        }
        metrics["pruning/sparsity"] = sum(counts.values()) / self.num_prunable
        pl_module.log_dict(metrics)

    @override
    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        for hook in self._hooks:
            hook.remove()
        self._hooks = []

    @override
    def state_dict(self) -> dict[str, Any]:
        return {
            "pruned": {n: m.cpu() for n, m in self._pruned.items()},
            "rewind_state": self._rewind_state,
        }

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        # Moved to the parameters' devices in ``on_train_start`` (a resume restores before the model is moved), or
        # here when training is under way (LRFinder's reruns reload a checkpoint mid-fit).
        self._pruned = {
            n: m.to(self._params[n].device) if n in self._params else m for n, m in state_dict["pruned"].items()
        }
        self._rewind_state = state_dict["rewind_state"]

    def _prune(self, count: int) -> None:
        names = list(self._params)
        weights = [self._params[n].detach() for n in names]
        device = weights[0].device
        scores = torch.cat([w.abs().flatten().to(device) for w in weights])  # (N,)
        if self._pruned:
            alive = ~torch.cat([self._pruned[n].flatten().to(device) for n in names])  # (N,)
        else:
            alive = torch.ones_like(scores, dtype=torch.bool)
        index = alive.nonzero().squeeze(1)  # (A,) positions still alive
        # An int amount prunes exactly that many of the alive weights, the smallest |w| first.
        keep = prune.L1Unstructured(amount=count).compute_mask(scores[index], torch.ones_like(scores[index]))
        alive[index] = keep.bool()
        for name, w, part in zip(names, weights, (~alive).split([w.numel() for w in weights]), strict=True):
            self._pruned[name] = part.view_as(w).to(w.device)
        self._zero_pruned()

    def _rewind(self, trainer: pl.Trainer, pl_module: pl.LightningModule, epoch: int) -> None:
        if self._rewind_state is None:
            raise MisconfigurationException(
                f"Rewinding needs the weights of epoch {self.rewind_to_epoch}, but this run resumed at epoch {epoch} "
                "from a checkpoint without them. Resume from a checkpoint this callback wrote with the same "
                "rewind_to_epoch, or set rewind_to_epoch=None."
            )
        # load_state_dict copies in place, so the optimizers keep pointing at the same parameters.
        pl_module.load_state_dict(self._rewind_state)
        self._zero_pruned()
        # Dropping the per-parameter state makes stateful optimizers (Adam's moments, SGD's momentum) start afresh.
        for optimizer in trainer.optimizers:
            for param in pl_module.parameters():
                optimizer.state.pop(param, None)

    def _held_by(self, optimizer: torch.optim.Optimizer) -> list[str]:
        """The pruned parameters among ``optimizer``'s (its groups may grow mid-fit, so asked at every step)."""
        held = {id(p) for group in optimizer.param_groups for p in group["params"]}
        return [name for name in self._pruned if id(self._params[name]) in held]

    def _after_step(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        self._zero_pruned(self._held_by(optimizer))

    @torch.no_grad()
    def _zero_pruned(self, names: list[str] | None = None) -> None:
        for name in self._pruned if names is None else names:
            self._params[name].masked_fill_(self._pruned[name], 0.0)
