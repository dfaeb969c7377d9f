"""Test-time augmentation: class probabilities averaged over deterministic flips and shifts of each input."""

from __future__ import annotations

import math
from collections.abc import Callable
from itertools import product
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from torch import Tensor
from typing_extensions import override

_MARK = "_tta_wrapper"  # set on the wrapper, so a second wrap of the same module is refused rather than stacked


def shift(x: Tensor, offset: int, dim: int) -> Tensor:
    """``x`` moved by ``offset`` steps along ``dim`` (positive: towards higher indices), the vacated end zero-filled.

    Zeros rather than wrap-around (``torch.roll``): a digit pushed off one edge must not reappear at the other, and a
    delayed clip starts with silence. Zero is black for raw images (uint8 or ``[0, 1]`` floats) and silence for audio.
    """
    if offset == 0:
        return x
    size = x.shape[dim]
    out = torch.zeros_like(x)
    if offset > 0:
        out.narrow(dim, offset, size - offset).copy_(x.narrow(dim, 0, size - offset))
    else:
        out.narrow(dim, 0, size + offset).copy_(x.narrow(dim, -offset, size + offset))
    return out


class TestTimeAugmentation(Callback):
    r"""Average the model's class probabilities over deterministic views of each input in test and predict.

    While a test or predict run is on (and validation, with ``validate=True``), the LightningModule's ``forward`` is
    replaced on the instance by one that runs the original on every view :math:`v_1 \dots v_V` of its input and
    returns :math:`\log \frac{1}{V} \sum_i \mathrm{softmax}(f(v_i(x)))`, shape ``(B, num_classes)``. Its softmax is
    the averaged probabilities, so a module whose steps call ``self(inputs)`` (:class:`Classifier`'s loss, metrics,
    confusion matrix and ``predict_step`` probabilities) scores the TTA prediction unchanged. The original ``forward``
    is back when the run ends, also when it fails. Averaging probabilities rather than logits is how VGG scored its
    flipped and rescaled views (Simonyan & Zisserman 2015, https://arxiv.org/abs/1409.1556, Sec. 3.2).

    Views, always including the unchanged input, are built from what ``forward`` receives (raw inputs: a module
    that normalises inside ``forward`` sees each view normalised):

    * images ``(B, C, H, W)``, uint8 or float: every translation ``(dy, dx)`` with ``dy, dx`` in
      ``{0} ∪ shifts`` (positive: down / right), i.e. :math:`(1 + n)^2` of them for ``n`` offsets; with ``hflip``
      each also mirrored left-right, twice as many. ``shifts=(-1, 1)`` gives the 3x3 grid of one-pixel moves.
    * waveforms ``(B, T)`` or ``(B, C, T)``, float: every delay in ``{0} ∪ shifts`` samples (positive: later; at
      8 kHz, 40 samples are 5 ms). ``hflip`` (time reversal) is refused.

    Shifted-in pixels and samples are zeros (see :func:`shift`), which matches zero-filled translation augmentation.
    Anything else (a text batch's dict, a table's tuple, a graph, integer token ids ``(B, T)``, a 5-D video) stops
    the run with one message, as does a ``forward`` that does not return class logits ``(B, num_classes)``.

    Costs ``V`` forward passes per batch; views are run one at a time, so memory stays that of one plain batch.
    The callback holds no state, so it adds nothing to checkpoints and may be added to ``recipe test|predict`` of
    any checkpoint.

    Args:
        hflip: Add the left-right mirror of every image view. Right for natural images, wrong for digits and text.
        shifts: Offsets in pixels (images: along both axes) or samples (audio), nonzero and distinct; the identity
            is always included, so ``()`` (with ``hflip=False``) reproduces the plain prediction.
        validate: Also average during validation (``recipe validate`` and the validation loop of ``fit``, whose
            checkpoint selection then ranks TTA scores). Training never sees the views.
    """

    def __init__(self, hflip: bool = False, shifts: tuple[int, ...] = (), validate: bool = False) -> None:
        if not isinstance(hflip, bool) or not isinstance(validate, bool):
            raise ValueError(f"hflip and validate must be true or false, got {hflip!r} and {validate!r}")
        shifts = tuple(shifts)
        if any(isinstance(s, bool) or not isinstance(s, int) for s in shifts):
            raise ValueError(f"shifts must be whole pixels or samples (ints), got {list(shifts)}")
        if 0 in shifts:
            raise ValueError(
                f"shifts={list(shifts)} holds 0: the unshifted input is always one of the views; remove the 0 "
                "(shifts=[] keeps the identity alone)"
            )
        if len(set(shifts)) != len(shifts):
            raise ValueError(f"shifts={list(shifts)} repeats an offset, which would count its views twice")
        self.hflip = hflip
        self.shifts = shifts
        self.validate = validate
        self._wrapped: pl.LightningModule | None = None
        self._previous: Callable[..., Any] | None = None  # the instance's own ``forward`` attribute, if it had one

    def views(self, x: Any) -> list[Tensor]:
        """The views of a batch ``x``, the unchanged input first; raises ``MisconfigurationException`` when ``x`` is
        not images ``(B, C, H, W)`` or float waveforms ``(B, T)`` / ``(B, C, T)``, or a shift does not fit."""
        if not isinstance(x, Tensor) or x.ndim not in (2, 3, 4) or (x.ndim < 4 and not x.is_floating_point()):
            got = f"{x.dtype} tensor of shape {tuple(x.shape)}" if isinstance(x, Tensor) else type(x).__name__
            raise MisconfigurationException(
                "TestTimeAugmentation augments images (B, C, H, W) and float waveforms (B, T) or (B, C, T), but the "
                f"module's forward received a {got}. Remove the callback for text, tables and graphs."
            )
        dims = (-2, -1) if x.ndim == 4 else (-1,)
        for dim in dims:
            if self.shifts and max(map(abs, self.shifts)) >= x.shape[dim]:
                raise MisconfigurationException(
                    f"TestTimeAugmentation shifts={list(self.shifts)} move the input out of its {x.shape[dim]} "
                    f"{'pixels' if x.ndim == 4 else 'samples'}; give offsets smaller than that."
                )
        if self.hflip and x.ndim != 4:
            raise MisconfigurationException(
                "TestTimeAugmentation(hflip=True) mirrors images (B, C, H, W), but the module's forward received "
                f"a signal of shape {tuple(x.shape)}; drop hflip (time reversal is not a label-preserving view)."
            )
        offsets = (0, *self.shifts)
        views = []
        for move in product(offsets, repeat=len(dims)):  # (dy, dx) for images, (dt,) for signals
            view = x
            for offset, dim in zip(move, dims, strict=True):
                view = shift(view, offset, dim)
            views.append(view)
        if self.hflip:
            views += [view.flip(-1) for view in views]
        return views

    def _wrap(self, pl_module: pl.LightningModule) -> None:
        if getattr(pl_module.forward, _MARK, False):
            raise MisconfigurationException(
                f"{type(pl_module).__name__}.forward is already averaged by a TestTimeAugmentation callback; give "
                "the trainer one TestTimeAugmentation with all the views."
            )
        original = pl_module.forward
        self._previous = pl_module.__dict__.get("forward")

        def forward(x: Any, *args: Any, **kwargs: Any) -> Tensor:
            views = self.views(x)
            log_probs = []
            for view in views:
                logits = original(view, *args, **kwargs)
                if not isinstance(logits, Tensor) or logits.ndim != 2 or logits.shape[-1] < 2:
                    shape = tuple(logits.shape) if isinstance(logits, Tensor) else type(logits).__name__
                    raise MisconfigurationException(
                        "TestTimeAugmentation averages class probabilities, so the module's forward must return "
                        f"logits (B, num_classes), but it returned {shape}. Remove the callback for this module."
                    )
                # float32: bf16 logits would round the probabilities before they are averaged.
                log_probs.append(logits.float().log_softmax(dim=-1))
            # log of the mean probability, computed in log space so that a class one view rules out stays finite.
            return torch.logsumexp(torch.stack(log_probs), dim=0) - math.log(len(views))  # (B, num_classes)

        setattr(forward, _MARK, True)
        pl_module.forward = forward
        self._wrapped = pl_module

    def _unwrap(self) -> None:
        module, self._wrapped = self._wrapped, None
        if module is None:
            return
        if self._previous is not None:  # someone else's instance-level forward: put it back
            module.forward = self._previous
        else:
            del module.forward  # the class's forward shows through again
        self._previous = None

    @override
    def on_test_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._wrap(pl_module)

    @override
    def on_test_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._unwrap()

    @override
    def on_predict_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._wrap(pl_module)

    @override
    def on_predict_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._unwrap()

    @override
    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.validate:
            self._wrap(pl_module)

    @override
    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._unwrap()

    @override
    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self._unwrap()
