"""How good generated images are, measured offline: FID on a trained classifier's features, and class coverage.

FID (Heusel et al. 2017, https://arxiv.org/abs/1706.08500) is the Frechet distance between Gaussians fitted to the
features of real and generated images, computed by torchmetrics' ``FrechetInceptionDistance`` (eigenvalues in
torch, no scipy). Its usual features, Inception-v3's pool layer, need ``torch-fidelity`` and a weights download;
offline the features are the penultimate layer (the input of the classification head) of an
:class:`~lightning_modules.vision.ImageClassifier` trained by our own recipe on the same data (``vision/digits``,
``vision/mnist``, ``vision/cifar10``). Numbers on these features compare runs with one another, not with papers.

Class coverage is the share of the classes the same classifier predicts at least once among the generated images:
1.0 means no class was dropped (a mode collapse onto a few digits shows as a low value).

The classifier is a measuring instrument, not part of the model: :class:`SampleQuality` is a plain object, so its
weights stay out of the GAN's ``state_dict`` and checkpoints, and a checkpoint reloads without the classifier file.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn
from torchmetrics.image.fid import FrechetInceptionDistance


class ClassifierFeatures(nn.Module):
    """A frozen image classifier as a feature extractor: images in ``[0, 1]`` ``(B, C, H, W) -> (B, F)`` features.

    The features are what its last ``nn.Linear`` (the head) receives; :attr:`last_logits` keeps the logits of the
    latest call, so one forward gives FID's features and coverage's predictions.
    """

    def __init__(self, classifier: nn.Module) -> None:
        super().__init__()
        heads = [m for m in classifier.modules() if isinstance(m, nn.Linear)]
        if not heads:
            raise ValueError(f"{type(classifier).__name__} has no nn.Linear head to take features from")
        self.classifier = classifier.eval().requires_grad_(False)
        self.num_features = heads[-1].in_features  # read by FrechetInceptionDistance
        self._features: torch.Tensor | None = None
        self.last_logits: torch.Tensor | None = None
        heads[-1].register_forward_pre_hook(self._keep_input)

    def _keep_input(self, module: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
        self._features = args[0]

    def train(self, mode: bool = True) -> ClassifierFeatures:
        return super().train(False)  # frozen: batch norm keeps its running statistics whatever the caller asks

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        self.last_logits = self.classifier(images)  # (B, num_classes)
        return self._features.flatten(1)  # (B, F)


def load_classifier(checkpoint_path: str) -> nn.Module:
    """An :class:`~lightning_modules.vision.ImageClassifier` from a ``recipe fit`` checkpoint, on CPU, frozen."""
    from lightning_modules.vision import ImageClassifier

    return ImageClassifier.load_from_checkpoint(checkpoint_path, map_location="cpu").eval().requires_grad_(False)


class SampleQuality:
    """FID and class coverage of generated images against real ones, accumulated over an evaluation epoch.

    Args:
        classifier: A trained classifier of the real data's classes: it gives the class predictions and, with
            ``features="classifier"``, the FID features.
        features: ``classifier`` (offline) or ``inception`` (Inception-v3 pool features; needs ``torch-fidelity`` and
            its weights, downloaded on first use).
    """

    def __init__(self, classifier: nn.Module, features: Literal["classifier", "inception"] = "classifier") -> None:
        if features not in ("classifier", "inception"):
            raise ValueError(f"features must be 'classifier' or 'inception', got {features!r}")
        self.judge = ClassifierFeatures(classifier)
        self.inception = features == "inception"
        # normalize=True: images come as floats in [0, 1] (torchmetrics scales them for Inception; ours takes them).
        extractor = 2048 if self.inception else self.judge
        self.fid = FrechetInceptionDistance(feature=extractor, normalize=True)
        num_classes = self.judge.classifier(torch.zeros(1, *self._input_shape())).shape[-1]
        self.counts = torch.zeros(num_classes, dtype=torch.long)

    def _input_shape(self) -> tuple[int, ...]:
        example = getattr(self.judge.classifier, "example_input_array", None)
        if isinstance(example, torch.Tensor):
            return tuple(example.shape[1:])
        raise ValueError("the classifier has no example_input_array to tell its input shape; use an ImageClassifier")

    def to(self, device: torch.device) -> SampleQuality:
        self.judge.to(device)
        self.fid.to(device)
        self.counts = self.counts.to(device)
        return self

    def _fid_input(self, images: torch.Tensor) -> torch.Tensor:
        return images.expand(-1, 3, -1, -1) if self.inception and images.shape[1] == 1 else images

    def update_real(self, images: torch.Tensor) -> None:
        """Add real images, floats in ``[0, 1]`` ``(B, C, H, W)``."""
        self.fid.update(self._fid_input(images), real=True)

    def update_fake(self, images: torch.Tensor) -> None:
        """Add generated images, floats in ``[0, 1]`` ``(B, C, H, W)``."""
        self.fid.update(self._fid_input(images), real=False)
        logits = self.judge.last_logits if not self.inception else None
        if logits is None or len(logits) != len(images):
            self.judge(images)
            logits = self.judge.last_logits
        self.counts += torch.bincount(logits.argmax(1), minlength=len(self.counts))

    def compute(self, reduce=None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(fid, coverage)`` of what was added, then reset. ``reduce`` sums the class counts across processes."""
        fid = self.fid.compute()
        counts = reduce(self.counts) if reduce is not None else self.counts
        coverage = (counts > 0).float().mean()
        self.fid.reset()
        self.counts.zero_()
        return fid, coverage
