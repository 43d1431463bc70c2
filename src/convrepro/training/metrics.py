"""The names under which :class:`~convrepro.training.ImageClassifier` logs its metrics.

Callbacks, the CLI's checkpointing, the run summary and the ablation report refer to a metric
by these constants, so renaming one is a change in one place.
"""

TRAIN_LOSS_STEP = "train/loss_step"
TRAIN_LOSS = "train/loss"
TRAIN_ACC = "train/acc"

VAL_LOSS = "val/loss"
VAL_ACC = "val/acc"
VAL_ACC_TOP5 = "val/acc_top5"
VAL_ACC_BEST = "val/acc_best"

TEST_LOSS = "test/loss"
TEST_ACC = "test/acc"
TEST_ACC_TOP5 = "test/acc_top5"
TEST_ERROR = "test/error"
TEST_ERROR_TOP5 = "test/error_top5"
# The single centre crop of a protocol that has one (cuda-convnet's multiview test).
TEST_ACC_CENTER = "test/acc_center"
TEST_ERROR_CENTER = "test/error_center"

VAL_PREFIX = "val/"
TEST_PREFIX = "test/"
