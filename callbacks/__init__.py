"""Training callbacks that work on any LightningModule: weight averaging, snapshot ensembles, LR range test, pruning,
pseudo-labelling, test-time augmentation, greedy evaluation episodes of an RL agent."""

from callbacks.lr_finder import LRFinder
from callbacks.pruning import Pruning
from callbacks.pseudo_label import PseudoLabel
from callbacks.rl_evaluation import RLEvaluation
from callbacks.snapshot_ensemble import SnapshotEnsemble
from callbacks.swa import SWA
from callbacks.tta import TestTimeAugmentation

__all__ = ["SWA", "SnapshotEnsemble", "LRFinder", "Pruning", "PseudoLabel", "TestTimeAugmentation", "RLEvaluation"]
