"""Reading weight files and loading them into a model, with errors that say what went wrong.

:func:`load_weights` is the one way both families apply pretrained or saved weights (their
``weights=`` argument); the CLI uses the same readers to check a checkpoint before resuming.
"""

import os
import pickle
import warnings
from collections.abc import Collection, Mapping
from pathlib import Path

import torch
from torch import Tensor, nn
from torchvision.models import WeightsEnum, get_model_weights

from convrepro.errors import ConfigError, DownloadError, MissingFileError

# torch.compile wraps a module as `_orig_mod`, which appears as a key component in state dicts.
_COMPILE_WRAPPER = "_orig_mod"
_MAX_KEYS_SHOWN = 5
# The first bytes of a file that is no pickle read as a protocol number torch warns about.
_PROTOCOL_WARNING = "Detected pickle protocol"


def load_state_dict_file(path: str | os.PathLike) -> dict[str, Tensor]:
    """Read a state dict from a state-dict file or a Lightning checkpoint.

    Only tensors and plain containers are unpickled (``weights_only=True``): a file holding other
    Python objects is refused, never executed. A Lightning checkpoint's ``state_dict`` entry is
    returned, keys as the LightningModule wrote them (:func:`network_state_dict` picks the
    network's entries out of it); the ``_orig_mod.`` component that ``torch.compile`` inserts is
    removed wherever it occurs.
    """
    path = Path(path)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=_PROTOCOL_WARNING)
            content = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise ConfigError(
            f"refusing to read {path}: torch.load(weights_only=True) rejected it. Either it "
            "holds pickled Python objects besides tensors, which could run arbitrary code (if "
            "it was written by torch.save(model), re-save it with "
            "torch.save(model.state_dict(), path)), or it is not a PyTorch file."
        ) from err
    except (FileNotFoundError, IsADirectoryError) as err:
        raise MissingFileError(
            f"no weights file at {path}; pass the path of a state dict or Lightning checkpoint"
        ) from err
    except OSError as err:
        raise ConfigError(f"cannot read {path}: {err.strerror or err}") from err
    except Exception as err:
        # Damaged bytes fail torch's unpickler in any way (IndexError, UnicodeDecodeError,
        # struct.error, ...); weights_only means none of them ran code from the file.
        raise ConfigError(
            f"cannot read {path}: it is not a PyTorch file, or truncated/corrupted "
            f"({type(err).__name__}: {err!s:.200})"
        ) from err

    if isinstance(content, Mapping) and isinstance(content.get("state_dict"), Mapping):
        content = content["state_dict"]  # Lightning checkpoint
    _check_is_state_dict(content, path)
    return {
        ".".join(part for part in key.split(".") if part != _COMPILE_WRAPPER): value
        for key, value in content.items()
    }


def network_state_dict(
    state_dict: Mapping[str, Tensor], expected: Collection[str]
) -> dict[str, Tensor]:
    """The entries of ``state_dict`` that belong to a network whose keys are ``expected``.

    A LightningModule's checkpoint holds the network under the attribute the module keeps it in
    (``backbone.`` for ImageClassifier) next to entries of its own (metric states). That prefix is
    found from the keys, so no caller needs to know the module's layout: of the prefixes before
    the network's first key, the one under which most of its keys occur; entries outside it are
    dropped. A state dict holding that key unprefixed (the bare network's), nowhere (another
    architecture's), or under two equally good prefixes is returned whole, for
    :func:`describe_mismatch` to report key by key.
    """
    first = next(iter(expected), None)
    if first is None or first in state_dict:
        return dict(state_dict)
    # A nested module can end in the first key too ("backbone.3.0.weight" for "0.weight").
    found = {
        prefix: sum(prefix + key in state_dict for key in expected)
        for prefix in {key.removesuffix(first) for key in state_dict if key.endswith(f".{first}")}
    }
    best = [prefix for prefix, count in found.items() if count == max(found.values())]
    if len(best) != 1:
        return dict(state_dict)
    return {
        key.removeprefix(best[0]): value
        for key, value in state_dict.items()
        if key.startswith(best[0])
    }


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
    the weights belong to another architecture: one ConfigError lists them, and nothing is loaded.
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


def load_weights(
    model: nn.Module, weights: str, *, arch_name: str, torchvision_arch: str | None = None
) -> list[str]:
    """Apply pretrained or saved weights to a built network: what ``weights=`` does in every family.

    ``weights`` is either a torchvision weights name (``"DEFAULT"``, ``"IMAGENET1K_V1"`` or
    ``"VGG16_Weights.IMAGENET1K_V1"``) of the torchvision builder ``torchvision_arch`` that has
    this network's layout (``None`` when there is none), downloaded into the torch hub cache
    (``$TORCH_HOME``), or the path of a state dict or Lightning checkpoint
    (:func:`load_state_dict_file`, :func:`network_state_dict`). The weights are loaded with
    :func:`load_backbone_weights`: strictly, except that a final layer of another num_classes keeps
    its fresh initialisation, with a warning (fine-tuning); its keys are returned, else ``[]``.
    ``arch_name`` names the network in messages.
    """
    state_dict, source = _fetch(weights, torchvision_arch=torchvision_arch, arch_name=arch_name)
    return load_backbone_weights(
        model,
        network_state_dict(state_dict, model.state_dict()),
        arch_name=arch_name,
        source=source,
    )


def _fetch(
    weights: str, *, torchvision_arch: str | None, arch_name: str
) -> tuple[dict[str, Tensor], str]:
    """The state dict ``weights`` names, and a description of where it came from."""
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
    target = Path(torch.hub.get_dir()) / "checkpoints" / entry.url.rsplit("/", 1)[-1]
    try:
        # weights_only: the cached file may have been put there by hand, as advised below.
        return entry.get_state_dict(
            progress=True, check_hash=True, map_location="cpu", weights_only=True
        )
    except OSError as err:  # URLError, timeouts and DNS failures are all OSErrors
        raise DownloadError(
            f"could not download {entry!r} ({err}). Fetch {entry.url} by other means and put "
            f"it at {target} (the torch hub cache under $TORCH_HOME), or pass the file's path "
            "as weights=..."
        ) from err
    except Exception as err:
        # A hash mismatch while downloading (a RuntimeError), or a damaged cached file (which
        # fails the weights-only unpickler in any way).
        raise DownloadError(
            f"{entry!r}: the downloaded or cached file {target} is damaged ({err!s:.200}). "
            f"Delete it and run again, or fetch {entry.url} by other means and put it there."
        ) from err
