"""What the notebooks in ``notebooks/`` show, by subject.

* :mod:`~convrepro.explore.models`: parameter counts, FLOPs and a layer table, on ``meta``.
* :mod:`~convrepro.explore.data`: a config's datamodule, class balance, images as the network
  sees them, and the augmented versions of one training image.
* :func:`download_wandb_group` (from :mod:`convrepro.ablate.wandb_group`): an ablation's W&B
  group copied into the runner's format, for the report.
* :mod:`~convrepro.explore.tables`: Markdown tables for all of them.

Made-up data and a made-up ablation for the notebooks come from :mod:`convrepro.testing`.
"""

from convrepro.ablate.wandb_group import download_wandb_group
from convrepro.explore.data import (
    augmented_versions,
    class_balance_figure,
    class_counts,
    data_section,
    datamodule_from_config,
    denormalize,
    find_normalize,
    image_grid,
    split_labels,
)
from convrepro.explore.models import (
    LayerRow,
    count_flops,
    count_parameters,
    layer_table,
    lrn_regime,
)
from convrepro.explore.tables import MarkdownText, markdown_table

__all__ = [
    "LayerRow",
    "MarkdownText",
    "augmented_versions",
    "class_balance_figure",
    "class_counts",
    "count_flops",
    "count_parameters",
    "data_section",
    "datamodule_from_config",
    "denormalize",
    "download_wandb_group",
    "find_normalize",
    "image_grid",
    "layer_table",
    "lrn_regime",
    "markdown_table",
    "split_labels",
]
