"""The README's subclassing example works as written: a user's own module, chosen by class_path."""

from __future__ import annotations

import re
from pathlib import Path

import torch

from recipes.cli import main

README = Path(__file__).resolve().parents[2] / "README.md"


def test_readme_subclass_example_trains_and_reloads(tmp_path, monkeypatch):
    code = re.search(r"```python\n# my_project/models.py\n(.*?)```", README.read_text(), re.S).group(1)
    package = tmp_path / "my_project"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "models.py").write_text(code)
    monkeypatch.syspath_prepend(str(tmp_path))

    command = re.search(
        r"```bash\n(recipe fit --config vision/digits --model my_project[^\n]*)\n```", README.read_text()
    )
    args = command.group(1).split()[1:]
    cli = main([*args, "--trainer.max_epochs=1", "--trainer.limit_train_batches=3", "--trainer.logger=false"])
    assert type(cli.model).__name__ == "FocalImageClassifier"
    assert cli.model.gamma == 1.5
    assert type(cli.model.net).__name__ == "CompactResNet"  # the recipe's network carried over
    assert cli.model.hparams.num_classes == 10  # linked from the data as for our own module

    reloaded = type(cli.model).load_from_checkpoint(cli.trainer.checkpoint_callback.last_model_path).eval()
    assert reloaded.gamma == 1.5
    x = torch.randn(4, 1, 8, 8)
    with torch.no_grad():
        assert torch.equal(reloaded(x), cli.model.eval()(x))
