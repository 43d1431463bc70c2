"""Reading weight files and loading them into a model, with errors that say what went wrong.

Shared by the model families (``weights=``) and by training code restoring checkpoints.
"""

import os
import pickle
import warnings
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor, nn
from torchvision.models import WeightsEnum, get_model_weights

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
        raise ValueError(
            f"refusing to read {path}: it holds pickled Python objects, not just tensors, and "
            "could run arbitrary code (torch.load weights_only=True rejected it). If it was "
            "written by torch.save(model), re-save it with torch.save(model.state_dict(), path)."
        ) from err
    except (RuntimeError, KeyError, EOFError) as err:
        raise ValueError(
            f"cannot read {path}: not a PyTorch file, or truncated/corrupted ({err!s:.200})"
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
        raise ValueError(f"{path} holds no state dict ({type(content).__name__}); {expected}")
    for key, value in content.items():
        if not isinstance(key, str) or not isinstance(value, Tensor):
            raise ValueError(
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
    # saved before PyTorch 0.4.1 (torchvision's *_bn weights) instead of reporting it missing.
    provided = dict(state_dict)
    expected = model.state_dict()
    final_layer = _final_layer_keys(model)

    mismatched = [
        key
        for key in expected.keys() & provided.keys()
        if provided[key].shape != expected[key].shape
    ]
    reinitialised = sorted(final_layer) if final_layer & set(mismatched) else []
    problems = _describe(
        missing=[
            k for k in expected.keys() - provided.keys() if not k.endswith("num_batches_tracked")
        ],
        unexpected=list(provided.keys() - expected.keys()),
        mismatched={
            key: (provided[key].shape, expected[key].shape)
            for key in mismatched
            if key not in final_layer
        },
    )
    if problems:
        raise ValueError(
            f"{source} does not fit {arch_name}; it looks like weights of another architecture or "
            f"configuration. {problems} Pass weights saved from {arch_name}, or build the model "
            "they were saved from."
        )

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


def _describe(
    *, missing: list[str], unexpected: list[str], mismatched: dict[str, tuple]
) -> str:
    def shown(keys: list[str]) -> str:
        keys = sorted(keys)
        more = len(keys) - _MAX_KEYS_SHOWN
        return ", ".join(keys[:_MAX_KEYS_SHOWN]) + (f" (+{more} more)" if more > 0 else "")

    parts = []
    if missing:
        parts.append(f"Missing keys: {shown(missing)}.")
    if unexpected:
        parts.append(f"Unexpected keys: {shown(unexpected)}.")
    if mismatched:
        shapes = {
            f"{key} ({tuple(got)} in file, {tuple(want)} in model)"
            for key, (got, want) in mismatched.items()
        }
        parts.append(f"Shape mismatches: {shown(list(shapes))}.")
    return " ".join(parts)


def load_pretrained(
    model: nn.Module, weights: str, *, torchvision_arch: str | None, arch_name: str
) -> None:
    """Load ``weights`` into ``model``: a torchvision weights name or a local file path.

    A name (``"DEFAULT"``, ``"IMAGENET1K_V1"`` or ``"VGG16_Weights.IMAGENET1K_V1"``) is looked up
    in the weights enum of the torchvision builder ``torchvision_arch`` (``None`` when torchvision
    has no such model) and downloaded into the torch hub cache (``$TORCH_HOME``). Anything else is
    read with :func:`load_state_dict_file`. Loading follows :func:`load_backbone_weights`.
    """
    weights_enum = get_model_weights(torchvision_arch) if torchvision_arch else None
    path = Path(weights).expanduser()
    if weights_enum is not None and _is_member(weights_enum, weights):
        entry = weights_enum.verify(weights)
        state_dict, source = _download(entry), f"torchvision weights {entry!r}"
    elif path.is_file():
        state_dict, source = load_state_dict_file(path), str(path)
    elif weights_enum is not None:
        raise ValueError(
            f"weights={weights!r} is neither an existing file nor a torchvision weights name "
            f"for {arch_name}; valid names: {', '.join(weights_enum.__members__)}"
        )
    else:
        raise ValueError(
            f"weights={weights!r} is not an existing file, and torchvision has no pretrained "
            f"weights for {arch_name}; pass the path of a state dict or checkpoint"
        )
    load_backbone_weights(model, state_dict, arch_name=arch_name, source=source)


def _is_member(weights_enum: type[WeightsEnum], name: str) -> bool:
    return name.removeprefix(f"{weights_enum.__name__}.") in weights_enum.__members__


def _download(entry: WeightsEnum) -> dict[str, Tensor]:
    try:
        return entry.get_state_dict(progress=True, check_hash=True)
    except OSError as err:  # URLError, timeouts and DNS failures are all OSErrors
        target = Path(torch.hub.get_dir()) / "checkpoints" / entry.url.rsplit("/", 1)[-1]
        raise RuntimeError(
            f"could not download {entry!r} ({err}). Fetch {entry.url} by other means and put "
            f"it at {target} (the torch hub cache under $TORCH_HOME), or pass the file's path "
            "as weights=..."
        ) from err
