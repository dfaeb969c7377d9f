"""TabularDataModule: preprocessing fitted on training rows only, splits, folds, balance and bad input."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from lightning.fabric.utilities.exceptions import MisconfigurationException
from tabular_fake_data import make_table, write_adult, write_table

from datamodules.tabular import TabularDataModule
from datamodules.tabular_adult import AdultDataModule


def _data(frame, **kwargs) -> TabularDataModule:
    data = TabularDataModule(frame=frame, target="label", **kwargs)
    data.setup("fit")
    return data


def test_statistics_come_from_training_rows_only():
    frame = make_table(200)
    data = _data(frame)
    train = frame.iloc[data._split_rows["train"]]
    held_out = frame.drop(index=train.index)
    # Poison the held-out rows: a statistic that saw them would move far away.
    poisoned = frame.copy()
    poisoned.loc[held_out.index, "size"] = 1e6
    poisoned.loc[held_out.index, "colour"] = "purple"
    again = _data(poisoned)
    assert again.preprocessor.mean == pytest.approx(data.preprocessor.mean)
    assert again.preprocessor.medians == pytest.approx(data.preprocessor.medians)
    assert "purple" not in again.preprocessor.vocabularies[0]
    assert again.preprocessor.mean[0] == pytest.approx(train["size"].mean())
    x_num = again.train_continuous
    assert x_num[:, 0].mean().abs() < 1e-5 and (x_num[:, 0].std(unbiased=False) - 1).abs() < 1e-4


def test_unseen_and_missing_categories_map_to_index_zero_and_numbers_get_median_and_indicator():
    data = _data(make_table(200))
    prep = data.preprocessor
    assert data.cardinalities == (4,)  # blue, green, red + the reserved index
    assert prep.flagged == ["weight"] and data.num_continuous == 3  # size, weight, weight-was-missing
    new = pd.DataFrame({"colour": ["purple", None, "red"], "size": [10.0, 10.0, 10.0], "weight": [np.nan, 50.0, 1.0]})
    x_num, x_cat = prep.transform(new)
    assert x_cat[:, 0].tolist() == [0, 0, prep.vocabularies[0].index("red") + 1]
    median_scaled = (prep.medians[1] - prep.mean[1]) / prep.std[1]
    assert x_num[0, 1].item() == pytest.approx(median_scaled, abs=1e-5)
    assert x_num[:, 2].tolist() == [1.0, 0.0, 0.0]


def test_quantile_transform_is_fitted_on_training_rows():
    data = _data(make_table(300), numeric_transform="quantile")
    x = data.train_continuous[:, 0]
    assert abs(x.mean().item()) < 0.1 and 0.8 < x.std().item() < 1.2  # normal-shaped on the training rows


def test_regression_target_in_its_units_and_standardisation_from_training_rows():
    data = TabularDataModule(sklearn="diabetes", target_scale=0.01)
    data.setup("fit")
    assert data.target_kind == "regression" and data.num_classes is None
    train_y = data._split("train").targets
    mean, std = data.target_standardization
    assert mean == pytest.approx(train_y.double().mean().item(), rel=1e-5)
    assert std == pytest.approx(train_y.double().std(unbiased=False).item(), rel=1e-5)
    raw = data._rows["target__y"].to_numpy()
    from sklearn.datasets import load_diabetes

    assert raw.max() == pytest.approx(load_diabetes().target.max() * 0.01)


def test_splits_are_seeded_stratified_and_folds_partition_the_non_test_rows():
    frame = make_table(200)
    a, b = _data(frame, seed=3), _data(frame, seed=3)
    assert all(np.array_equal(a._split_rows[k], b._split_rows[k]) for k in ("train", "val", "test"))
    y = a._rows["target__y"].to_numpy()
    assert abs(y[a._split_rows["test"]].mean() - y.mean()) < 0.03
    folds = [_data(frame, num_folds=4, fold=f) for f in range(4)]
    test = folds[0]._split_rows["test"]
    assert all(np.array_equal(f._split_rows["test"], test) for f in folds)
    vals = np.concatenate([f._split_rows["val"] for f in folds])
    rest = np.setdiff1d(np.arange(len(frame)), test)
    assert np.array_equal(np.sort(vals), rest)  # each non-test row validates exactly once
    for f in folds:
        assert np.array_equal(np.sort(np.r_[f._split_rows["train"], f._split_rows["val"]]), rest)


def test_balance_draws_classes_equally():
    frame = make_table(300)
    frame["label"] = np.where(np.arange(300) < 270, "a", "b")  # 9:1
    data = _data(frame, balance=True, batch_size=64)
    drawn = torch.cat([y for _, y in data.train_dataloader()])
    assert 0.4 < drawn.float().mean().item() < 0.6
    weights = data.class_weights
    assert weights[1] > 5 * weights[0]


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (lambda f, p: f.to_csv(p, index=False) or {"categorical": ["shape"]}, "column 'shape'"),
        (lambda f, p: f.assign(label="a").to_csv(p, index=False) or {}, "one class"),
        (
            lambda f, p: (
                f.astype({"size": object})
                .assign(size=["x" if i == 7 else 1.0 for i in range(len(f))])
                .to_csv(p, index=False)
                or {"continuous": ["size", "weight"]}
            ),
            "column 'size'.*row 8",
        ),
        (lambda f, p: (p.write_text(""), {})[1], "no rows"),
        (lambda f, p: {"path": str(p) + ".missing"}, "does not exist"),
    ],
    ids=["missing-column", "one-class", "not-a-number", "empty-file", "missing-file"],
)
def test_bad_input_stops_with_one_line(tmp_path, change, expected):
    path = tmp_path / "t.csv"
    kwargs = {"path": str(path), "target": "label", **change(make_table(40), path)}
    with pytest.raises(MisconfigurationException, match=expected) as err:
        TabularDataModule(**kwargs).setup("fit")
    assert "\n" not in str(err.value)


def test_state_dict_restores_preprocessing_without_the_training_file(tmp_path):
    path = write_table(tmp_path)
    data = TabularDataModule(path=str(path), target="label")
    data.setup("fit")
    restored = TabularDataModule(path=str(tmp_path / "gone.csv"), target="label")
    restored.load_state_dict(data.state_dict())
    assert (restored.num_continuous, restored.cardinalities, restored.class_names) == (
        data.num_continuous, data.cardinalities, data.class_names
    )  # fmt: skip
    frame = make_table(10, seed=5)
    assert all(
        torch.equal(a, b)
        for a, b in zip(restored.preprocessor.transform(frame), data.preprocessor.transform(frame), strict=True)
    )


def test_adult_reads_uci_files_with_the_official_test_split(tmp_path):
    write_adult(tmp_path, rows=30)
    data = AdultDataModule(data_dir=str(tmp_path))
    data.prepare_data()  # files present: no download
    data.setup("fit")
    assert data.class_names == ("<=50K", ">50K")  # the test file's trailing full stops removed
    assert len(data._split_rows["test"]) == 30 and data._split_rows["test"].min() == 30
    assert data.num_continuous == 6  # no number is missing; occupation's '?' maps to the reserved index
    assert len(data.cardinalities) == 8
