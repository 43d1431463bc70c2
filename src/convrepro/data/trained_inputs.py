"""What a trained model needs of its data travels in its checkpoint, so that ``test`` and
``predict`` run without the training images (only the checkpoint and the images to classify).

* **Class names**, in label order: the model's hyperparameters (``ImageClassifier.class_names``,
  linked from the datamodule when it trained). A datamodule that reads them from its training
  folders (:class:`~convrepro.data.ImageFolderDataModule`) takes them as ``class_names``.
* **The input protocol**: the datamodule's ``input_protocol`` settings (size, crop,
  preprocessing) as Lightning saved them in ``datamodule_hyper_parameters``. The checkpoint's
  values win over the config's, as Lightning's CLI does for the model's hyperparameters, and the
  console says which differed. Test-time choices (a test scale, a test protocol) stay the
  config's.
* **What was fitted to the training images** (cuda-convnet's mean image, pixel statistics):
  the datamodule's ``state_dict()``. Lightning saves it in every checkpoint but loads it back
  only after ``setup`` has built the transforms, so :func:`restore_fitted_inputs` loads it
  before: for ``test`` and ``predict``, and for a resumed ``fit``, which continues on the inputs
  it trained with even where ``data.data_dir`` now holds other images (fitting them afresh
  would train on other inputs than its checkpoints record).
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

from jsonargparse import Namespace
from lightning.pytorch import LightningDataModule
from lightning.pytorch.utilities import rank_zero_info

_DATA_HPARAMS = "datamodule_hyper_parameters"


def apply_trained_inputs(
    data_class: type, init_args: Namespace, checkpoint: Mapping[str, Any]
) -> None:
    """Set the config's ``data.init_args`` for ``data_class`` to the checkpoint's class names
    and input protocol, saying on the console which setting it changed."""
    recorded = checkpoint.get(_DATA_HPARAMS) or {}
    for key in getattr(data_class, "input_protocol", ()):
        if key in recorded and init_args.get(key) != recorded[key]:
            rank_zero_info(
                f"Using data.{key}={recorded[key]!r}, the input protocol the checkpoint was "
                f"trained with (the config has {init_args.get(key)!r})"
            )
            init_args[key] = recorded[key]
    class_names = (checkpoint.get("hyper_parameters") or {}).get("class_names")
    accepts_names = "class_names" in inspect.signature(data_class).parameters
    if class_names and accepts_names and init_args.get("class_names") is None:
        init_args.class_names = list(class_names)


def restore_fitted_inputs(datamodule: LightningDataModule, checkpoint: Mapping[str, Any]) -> None:
    """Load what the datamodule fitted to its training images from the checkpoint, before
    ``setup`` builds the transforms that use it."""
    state = checkpoint.get(type(datamodule).__qualname__)
    if state:
        datamodule.load_state_dict(dict(state))
