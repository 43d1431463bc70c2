"""Reading weight files and loading them into a model, with errors that say what went wrong.

Shared by the model families (``weights=``) and by training code restoring checkpoints.
"""

import os
import pickle
import warnings
from collections.abc import Collection, Mapping
from pathlib import Path

import torch
from torch import Tensor, nn
from torchvision.models import WeightsEnum, get_model_weights

from convrepro.errors import ConfigError, DownloadError

# Attribute under which the LightningModule holds the network; its checkpoints prefix keys with it.
_BACKBONE_PREFIX = "backbone."
# torch.compile wraps a module as `_orig_mod`, which appears as a key component in state dicts.
_COMPILE_WRAPPER = "_orig_mod"
_MAX_KEYS_SHOWN = 5


def load_state_dict_file(path: str | os.PathLike) -> dict[str, Tensor]:
    """Read a network's state dict from a state-dict file or a Lightning checkpoint.

    Only tensors and plain containers are unpickled (``weights_only=True``): a file holding other
    Python objects is refused, never executed. Keys are normalised so the result loads into the
    bare network: a Lightning checkpoint's ``state_dict`` entry is used, with its ``backbone.``
    prefix stripped and the LightningModule's other entries (metric states etc.) dropped; the
    ``_orig_mod.`` component that ``torch.compile`` inserts is removed wherever it occurs.
    """
    path = Path(path)
    try:
        content = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise ConfigError(
            f"refusing to read {path}: torch.load(weights_only=True) rejected it. Either it "
            "holds pickled Python objects besides tensors, which could run arbitrary code (if "
            "it was written by torch.save(model), re-save it with "
            "torch.save(model.state_dict(), path)), or it is not a PyTorch file."
        ) from err
    except (RuntimeError, KeyError, EOFError) as err:
        raise ConfigError(
            f"cannot read {path}: it is not a PyTorch file, or truncated/corrupted ({err!s:.200})"
        ) from err

    if isinstance(content, Mapping) and isinstance(content.get("state_dict"), Mapping):
        content = content["state_dict"]  # Lightning checkpoint
    _check_is_state_dict(content, path)
    return _normalise_keys(content)


def _check_is_state_dict(content: object, path: Path) -> None:
    expected = (
        "expected a mapping of parameter names to tensors, as written by "
        "torch.save(model.state_dict(), path), or a Lightning checkpoint"
    )
    if not isinstance(content, Mapping) or not content:
        raise ConfigError(f"{path} holds no state dict ({type(content).__name__}); {expected}")
    for key, value in content.items():
        if not isinstance(key, str) or not isinstance(value, Tensor):
            raise ConfigError(
                f"{path} is not a state dict: entry {key!r} is a {type(value).__name__}; {expected}"
            )


def _normalise_keys(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    unwrapped = {
        ".".join(part for part in key.split(".") if part != _COMPILE_WRAPPER): value
        for key, value in state_dict.items()
    }
    if not any(key.startswith(_BACKBONE_PREFIX) for key in unwrapped):
        return unwrapped
    return {
        key.removeprefix(_BACKBONE_PREFIX): value
        for key, value in unwrapped.items()
        if key.startswith(_BACKBONE_PREFIX)
    }


def load_backbone_weights(
    model: nn.Module,
    state_dict: Mapping[str, Tensor],
    *,
    arch_name: str,
    source: str = "the state dict",
) -> list[str]:
    """Load ``state_dict`` into ``model`` strictly, except for a final layer of another shape.

    The final layer (the last module, in registration order, that owns parameters: the
    classifier's last Linear) may differ in shape, which is the fine-tuning case, e.g. 1000-class
    ImageNet weights into a 10-class model. It then keeps its fresh initialisation, a warning
    names its keys, and they are returned. Any other missing, unexpected or mismatched key means
    the weights belong to another architecture: one ValueError lists them, and nothing is loaded.
    ``arch_name`` and ``source`` only appear in messages.
    """
    # A plain dict has no torch `_metadata`, so BatchNorm fills in `num_batches_tracked` for files
    # saved before PyTorch 0.4.1 (torchvision's *_bn weights) instead of failing on it.
    provided = dict(state_dict)
    expected = model.state_dict()
    final_layer = _final_layer_keys(model)
    problems = describe_mismatch(expected, provided, allow_shape_change=final_layer)
    if problems:
        raise ConfigError(
            f"{source} does not fit {arch_name}; it looks like weights of another architecture or "
            f"configuration. {problems} Pass weights saved from {arch_name}, or build the model "
            "they were saved from."
        )

    head_changed = any(
        key in provided and provided[key].shape != expected[key].shape for key in final_layer
    )
    # The whole layer stays fresh (weight and bias), not only the tensors whose shape changed.
    reinitialised = sorted(final_layer) if head_changed else []
    for key in reinitialised:
        provided[key] = expected[key]
    model.load_state_dict(provided)
    if reinitialised:
        shapes = ", ".join(
            f"{key} {tuple(state_dict[key].shape)} -> {tuple(expected[key].shape)}"
            for key in reinitialised
        )
        warnings.warn(
            f"final layer re-initialised, {source} was made for another num_classes "
            f"({shapes}); all other weights of {arch_name} were loaded (fine-tuning)",
            stacklevel=2,
        )
    return reinitialised


def _final_layer_keys(model: nn.Module) -> set[str]:
    owners = [
        (name, module)
        for name, module in model.named_modules()
        if next(module.parameters(recurse=False), None) is not None
    ]
    if not owners:
        return set()
    name, module = owners[-1]
    prefix = f"{name}." if name else ""
    return {prefix + key for key in module.state_dict()}


def describe_mismatch(
    expected: Mapping[str, Tensor],
    provided: Mapping[str, Tensor],
    *,
    allow_shape_change: Collection[str] = (),
) -> str:
    """Say which keys of ``provided`` are missing, unexpected or of the wrong shape ("" if none).

    ``num_batches_tracked`` may be missing (BatchNorm fills it in); keys in ``allow_shape_change``
    may differ in shape. At most a few keys of each kind are listed.
    """
    # In state-dict order, so "features.3" comes before "features.10".
    missing = [
        key for key in expected if key not in provided and not key.endswith("num_batches_tracked")
    ]
    unexpected = [key for key in provided if key not in expected]
    mismatched = [
        f"{key} ({tuple(provided[key].shape)} given, {tuple(expected[key].shape)} expected)"
        for key in expected
        if key in provided
        and key not in allow_shape_change
        and provided[key].shape != expected[key].shape
    ]
    parts = [
        f"{kind}: {_first_few(keys)}."
        for kind, keys in [
            ("Missing keys", missing),
            ("Unexpected keys", unexpected),
            ("Shape mismatches", mismatched),
        ]
        if keys
    ]
    return " ".join(parts)


def _first_few(items: list[str]) -> str:
    more = len(items) - _MAX_KEYS_SHOWN
    return ", ".join(items[:_MAX_KEYS_SHOWN]) + (f" (+{more} more)" if more > 0 else "")


def fetch_weights(
    weights: str, *, torchvision_arch: str | None, arch_name: str
) -> tuple[dict[str, Tensor], str]:
    """Get the state dict ``weights`` names, and a description of where it came from.

    A torchvision weights name (``"DEFAULT"``, ``"IMAGENET1K_V1"`` or
    ``"VGG16_Weights.IMAGENET1K_V1"``) is looked up in the weights enum of the torchvision builder
    ``torchvision_arch`` (``None`` when torchvision has no such model) and downloaded into the
    torch hub cache (``$TORCH_HOME``). Anything else is read with :func:`load_state_dict_file`.
    ``arch_name`` only appears in messages.
    """
    weights_enum = get_model_weights(torchvision_arch) if torchvision_arch else None
    path = Path(weights).expanduser()
    if weights_enum is not None and _is_member(weights_enum, weights):
        entry = weights_enum.verify(weights)
        return _download(entry), f"torchvision weights {entry!r}"
    if path.is_file():
        return load_state_dict_file(path), str(path)
    if weights_enum is not None:
        raise ConfigError(
            f"weights={weights!r} is neither an existing file nor a torchvision weights name "
            f"for {arch_name}; valid names: {', '.join(weights_enum.__members__)}"
        )
    raise ConfigError(
        f"weights={weights!r} is not an existing file, and torchvision has no pretrained "
        f"weights for {arch_name}; pass the path of a state dict or checkpoint"
    )


def _is_member(weights_enum: type[WeightsEnum], name: str) -> bool:
    return name.removeprefix(f"{weights_enum.__name__}.") in weights_enum.__members__


def _download(entry: WeightsEnum) -> dict[str, Tensor]:
    try:
        # weights_only: the cached file may have been put there by hand, as advised below.
        return entry.get_state_dict(
            progress=True, check_hash=True, map_location="cpu", weights_only=True
        )
    except OSError as err:  # URLError, timeouts and DNS failures are all OSErrors
        target = Path(torch.hub.get_dir()) / "checkpoints" / entry.url.rsplit("/", 1)[-1]
        raise DownloadError(
            f"could not download {entry!r} ({err}). Fetch {entry.url} by other means and put "
            f"it at {target} (the torch hub cache under $TORCH_HOME), or pass the file's path "
            "as weights=..."
        ) from err
