"""Knowledge distillation and the loss options on any classifier (``tests/feature_task.py``'s FeatureClassifier)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from feature_task import FeatureClassifier, IrisData
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch import Trainer, seed_everything

from core.losses import distillation_loss
from lightning_modules.distillation import Distillation
from recipes.cli import main

FEATURES = ["--model=feature_task.FeatureClassifier", "--data=feature_task.IrisData", "--trainer.logger=false"]
QUIET = ["--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false"]


@pytest.fixture(scope="module")
def teacher_checkpoint(tmp_path_factory) -> str:
    """A FeatureClassifier checkpoint written by ``recipe fit`` (so it names its class), trained a few epochs."""
    root = tmp_path_factory.mktemp("teacher")
    seed_everything(0)
    fit = main(["fit", *FEATURES, *QUIET, "--trainer.max_epochs=5", f"--trainer.default_root_dir={root}"])
    return fit.trainer.checkpoint_callback.last_model_path


def fitted(model: FeatureClassifier, **trainer_args) -> Trainer:
    trainer = Trainer(
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        **trainer_args,
    )
    trainer.fit(model, IrisData())
    return trainer


def student(teacher: str, **options) -> FeatureClassifier:
    return FeatureClassifier(num_classes=3, hidden=4, distillation=Distillation(teacher, **options))


def test_the_training_loss_is_the_formula_and_cross_entropy_at_alpha_zero(teacher_checkpoint):
    model = student(teacher_checkpoint, temperature=3.0, alpha=0.7)
    fitted(model, max_steps=1)  # loads the teacher
    x, y = torch.randn(8, 4, generator=torch.Generator().manual_seed(0)), torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    logits = model(x)
    with torch.no_grad():
        teacher_logits = model.teacher.module(x)
    expected = 0.7 * distillation_loss(logits, teacher_logits, 3.0) + 0.3 * F.cross_entropy(logits, y)
    assert torch.allclose(model.training_loss(x, logits, y), expected, atol=1e-6)
    soft = (teacher_logits / 3).softmax(-1)  # the KL written out by hand, T^2 scaled
    kl = (soft * (soft.log() - (logits / 3).log_softmax(-1))).sum(-1).mean() * 9
    assert torch.allclose(model.training_loss(x, logits, y), 0.7 * kl + 0.3 * F.cross_entropy(logits, y), atol=1e-5)
    model.distillation.alpha = 0.0
    assert torch.allclose(model.training_loss(x, logits, y), F.cross_entropy(logits, y), atol=1e-7)


def test_the_teacher_is_frozen_and_stays_out_of_the_students_checkpoint(teacher_checkpoint, tmp_path):
    model = student(teacher_checkpoint)
    before = {k: v.clone() for k, v in torch.load(teacher_checkpoint, weights_only=False)["state_dict"].items()}
    trainer = fitted(model, max_epochs=2)
    teacher = model.teacher.module
    assert not teacher.training and not any(p.requires_grad or p.grad is not None for p in teacher.parameters())
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())  # untouched by training
    assert not any(p is q for p in teacher.parameters() for q in model.parameters())
    assert all(
        id(p) not in {id(q) for q in teacher.parameters()}
        for g in trainer.optimizers[0].param_groups
        for p in g["params"]
    )
    path = tmp_path / "student.ckpt"
    trainer.save_checkpoint(path)
    saved = torch.load(path, weights_only=False)
    assert saved["hyper_parameters"]["distillation"] is None
    assert set(saved["state_dict"]) == set(FeatureClassifier(num_classes=3, hidden=4).state_dict()) - {"loss_weights"}
    reloaded = FeatureClassifier.load_from_checkpoint(path, weights_only=False)  # needs no teacher
    assert reloaded.teacher is None and reloaded.distillation is None


@pytest.mark.slow  # two 15-epoch fits: about 10 s
def test_distilling_moves_the_student_towards_the_teacher(teacher_checkpoint):
    x = IrisData()
    x.setup("fit")
    inputs = x.splits["val"].tensors[0]
    seed_everything(0)
    distilled = student(teacher_checkpoint, alpha=1.0, temperature=2.0)
    fitted(distilled, max_epochs=15)
    seed_everything(0)
    alone = FeatureClassifier(num_classes=3, hidden=4)
    fitted(alone, max_epochs=15)
    with torch.no_grad():
        target = distilled.teacher.module(inputs).softmax(-1)
        gap = {
            name: (m.eval()(inputs).softmax(-1) - target).abs().sum(-1).mean()
            for name, m in (("distilled", distilled), ("alone", alone))
        }
    assert gap["distilled"] < 0.7 * gap["alone"]  # 0.18 vs 0.28 (seed 0)


def test_cached_teacher_logits_are_reused_and_equal_the_teachers(teacher_checkpoint):
    model = student(teacher_checkpoint, cache_logits=True)
    fitted(model, max_epochs=3)
    teacher = model.teacher
    assert len(teacher.cache) == 90 and teacher.hits == 2 * 90  # every training row once, then two epochs of hits
    x = IrisData()
    x.setup("fit")
    rows = x.splits["train"].tensors[0][:5]
    with torch.no_grad():
        assert torch.allclose(teacher.logits(rows), teacher.module(rows))


def test_cache_logits_with_changing_inputs_stops_with_the_fix(teacher_checkpoint):
    class Noisy(FeatureClassifier):
        def training_batch(self, inputs, targets):
            return inputs + torch.randn_like(inputs), targets  # an augmentation: no input ever repeats

    model = Noisy(num_classes=3, hidden=4, distillation=Distillation(teacher_checkpoint, cache_logits=True))
    with pytest.raises(MisconfigurationException, match="cache_logits found no training input twice"):
        fitted(model, max_epochs=3)


def test_a_teacher_of_other_classes_or_a_missing_file_stops_with_the_fix(teacher_checkpoint, tmp_path):
    model = FeatureClassifier(num_classes=4, distillation=Distillation(teacher_checkpoint))
    with pytest.raises(MisconfigurationException, match="has 3 classes but the student has 4"):
        model.trainer = None
        from lightning_modules.distillation import Teacher

        Teacher(model.distillation, model.num_classes)
    with pytest.raises(MisconfigurationException, match="no teacher checkpoint at .*Train the teacher first"):
        fitted(student(str(tmp_path / "missing.ckpt")), max_steps=1)
    with pytest.raises(ValueError, match="alpha must be in"):
        Distillation(teacher_checkpoint, alpha=1.5)


def test_recipe_flags_set_distillation_and_the_student_reloads_alone(teacher_checkpoint):
    flags = [f"--model.distillation.teacher={teacher_checkpoint}", "--model.distillation.temperature=2"]
    fit = main(["fit", *FEATURES, *QUIET, "--trainer.max_epochs=1", "--model.hidden=4", *flags])
    assert fit.model.distillation == Distillation(teacher_checkpoint, temperature=2.0)
    assert fit.model.teacher is not None
    test = main(["test", *FEATURES, *QUIET, "--ckpt_path", fit.trainer.checkpoint_callback.last_model_path])
    assert test.model.teacher is None and "test/acc" in test.trainer.callback_metrics


def test_class_weighted_loss_takes_the_datamodules_weights():
    class Weighted(IrisData):
        class_weights = torch.tensor([1.0, 2.0, 3.0])

    model = FeatureClassifier(num_classes=3, class_weighted=True)
    trainer = Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False, max_steps=1)
    trainer.fit(model, Weighted())
    assert torch.equal(model.loss_weights, torch.tensor([1.0, 2.0, 3.0]))
    logits, y = torch.randn(4, 3), torch.tensor([0, 1, 2, 2])
    assert torch.allclose(model.loss(logits, y), F.cross_entropy(logits, y, weight=model.loss_weights))
    with pytest.raises(MisconfigurationException, match="class_weighted needs the DataModule's class_weights"):
        Trainer(logger=False, enable_progress_bar=False, max_steps=1).fit(
            FeatureClassifier(num_classes=3, class_weighted=True), IrisData()
        )
