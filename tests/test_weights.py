"""Reading weight files (plain, Lightning, compiled), finding the network in them, and loading them
strictly but for the head, through the one helper both families' ``weights=`` use."""

import io
import pickle
import random
from collections import OrderedDict

import pytest
import torch
import torchvision
from torch import nn

from convrepro.errors import ConfigError, DownloadError, MissingFileError
from convrepro.models import (
    VGG,
    AlexNet,
    load_backbone_weights,
    load_state_dict_file,
    load_weights,
    network_state_dict,
)


def small_net(num_classes: int = 3) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4, num_classes)
    )


@pytest.fixture
def net() -> nn.Sequential:
    torch.manual_seed(0)
    return small_net()


def assert_same_tensors(got, expected):
    assert list(got) == list(expected)
    for key in expected:
        assert torch.equal(got[key], expected[key]), key


# --- load_state_dict_file ------------------------------------------------------------------------


def test_plain_state_dict(net, tmp_path):
    torch.save(net.state_dict(), tmp_path / "w.pt")
    assert_same_tensors(load_state_dict_file(tmp_path / "w.pt"), net.state_dict())


def lightning_checkpoint(net: nn.Module, prefix: str = "backbone.") -> dict:
    """What a LightningModule holding ``net`` at ``prefix`` saves, metric state included."""
    state = {f"{prefix}{k}": v for k, v in net.state_dict().items()}
    state["train_accuracy.tp"] = torch.zeros(3)
    return {"epoch": 3, "state_dict": state}


def test_lightning_checkpoint_keeps_only_the_backbone(net, tmp_path):
    state = {f"backbone.{k}": v for k, v in net.state_dict().items()}
    state["train_accuracy.tp"] = torch.zeros(3)  # a metric state of the LightningModule
    checkpoint = {
        "epoch": 3,
        "global_step": 120,
        "pytorch-lightning_version": "2.5.0",
        "state_dict": state,
        "optimizer_states": [{"state": {}, "param_groups": [{"lr": 0.01}]}],
        "hyper_parameters": {"backbone": {"class_path": "convrepro.models.VGG"}},
    }
    torch.save(checkpoint, tmp_path / "last.ckpt")
    content = load_state_dict_file(tmp_path / "last.ckpt")
    assert_same_tensors(content, state)  # the checkpoint's state dict, keys as written
    assert_same_tensors(network_state_dict(content, net.state_dict()), net.state_dict())


@pytest.mark.parametrize(
    "prefix", ["_orig_mod.", "backbone._orig_mod.", "_orig_mod.backbone._orig_mod."]
)
def test_torch_compile_prefix_anywhere(net, tmp_path, prefix):
    torch.save({"state_dict": {prefix + k: v for k, v in net.state_dict().items()}}, tmp_path / "c")
    content = load_state_dict_file(tmp_path / "c")
    assert_same_tensors(network_state_dict(content, net.state_dict()), net.state_dict())


def test_real_compiled_module_state_dict(net, tmp_path):
    compiled = torch.compile(net)  # only wraps; nothing is compiled until it is called
    assert next(iter(compiled.state_dict())).startswith("_orig_mod.")
    torch.save(compiled.state_dict(), tmp_path / "w.pt")
    assert_same_tensors(load_state_dict_file(tmp_path / "w.pt"), net.state_dict())


def test_whole_pickled_module_is_refused_with_advice(net, tmp_path):
    torch.save(net, tmp_path / "model.pt")
    with pytest.raises(ValueError, match=r"refusing to read .*torch.save\(model.state_dict\(\)"):
        load_state_dict_file(tmp_path / "model.pt")


class _Exploit:
    def __reduce__(self):
        return (open, ("pwned", "w"))


def test_malicious_pickle_is_refused_without_running_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with open("evil.pt", "wb") as file:
        pickle.dump({"weight": _Exploit()}, file, protocol=2)  # torch.save's protocol
    with pytest.raises(ValueError, match="could run arbitrary code"):
        load_state_dict_file("evil.pt")
    assert not (tmp_path / "pwned").exists()


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ([torch.zeros(2)], r"holds no state dict \(list\)"),
        ({}, r"holds no state dict \(dict\)"),
        ({"weight": torch.zeros(2), "epoch": 3}, "entry 'epoch' is a int"),
        ({"state_dict": {"w": [1, 2]}}, "entry 'w' is a list"),
    ],
)
def test_files_that_are_not_state_dicts(tmp_path, content, message):
    torch.save(content, tmp_path / "x.pt")
    with pytest.raises(ValueError, match=message):
        load_state_dict_file(tmp_path / "x.pt")


def test_missing_file_or_directory_is_a_missing_file_error(tmp_path):
    for path in [tmp_path / "nowhere.pt", tmp_path]:
        with pytest.raises(MissingFileError, match=f"no weights file at {path}"):
            load_state_dict_file(path)


def test_corrupt_and_truncated_files(net, tmp_path):
    (tmp_path / "text.pt").write_text("not a checkpoint")
    torch.save(net.state_dict(), tmp_path / "full.pt")
    (tmp_path / "cut.pt").write_bytes((tmp_path / "full.pt").read_bytes()[:200])
    for name in ["text.pt", "cut.pt"]:
        with pytest.raises(ValueError, match="not a PyTorch file"):
            load_state_dict_file(tmp_path / name)


def test_damaged_files_of_any_kind_are_one_config_error(net, tmp_path, recwarn):
    """Random bytes and checkpoints with bytes changed or cut off fail torch's weights-only
    unpickler in many ways (IndexError, UnicodeDecodeError, struct.error, AssertionError, ...):
    each is the same user error, and no warning about odd pickle protocols reaches the user."""
    rng = random.Random(0)
    saved = io.BytesIO()
    torch.save(net.state_dict(), saved)
    legacy = io.BytesIO()
    torch.save(net.state_dict(), legacy, _use_new_zipfile_serialization=False)
    damaged = [rng.randbytes(rng.choice([1, 7, 99, 500])) for _ in range(600)]
    for original in (saved.getvalue(), legacy.getvalue()):
        for _ in range(300):
            content = bytearray(original)
            for _ in range(rng.choice([1, 4, 16])):
                content[rng.randrange(len(content))] = rng.randrange(256)
            damaged.append(bytes(content[: rng.randrange(1, len(content) + 1)]))
    path = tmp_path / "damaged.pt"
    for content in damaged:
        path.write_bytes(content)
        try:
            load_state_dict_file(path)
        except ConfigError:
            continue
        except Exception as error:
            pytest.fail(f"{content[:40]!r}...: {type(error).__name__}: {error}")
    assert not [w for w in recwarn if "pickle protocol" in str(w.message)]


# --- network_state_dict --------------------------------------------------------------------------


@pytest.mark.parametrize("prefix", ["backbone.", "net.", "model.backbone."])
def test_the_network_is_found_under_any_attribute_of_the_module_that_saved_it(net, prefix):
    content = lightning_checkpoint(net, prefix)["state_dict"]
    assert_same_tensors(network_state_dict(content, net.state_dict()), net.state_dict())


def test_a_bare_networks_state_dict_is_returned_whole(net):
    assert_same_tensors(network_state_dict(net.state_dict(), net.state_dict()), net.state_dict())


def test_a_nested_module_ending_in_the_first_key_does_not_confuse_the_prefix():
    nested = nn.Sequential(nn.Linear(2, 2), nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 3)))
    content = {f"backbone.{k}": v for k, v in nested.state_dict().items()}
    assert "backbone.1.0.weight" in content  # ends in the first key, "0.weight", too
    assert_same_tensors(network_state_dict(content, nested.state_dict()), nested.state_dict())


def test_another_architecture_or_two_copies_are_returned_whole_for_the_mismatch_report(net):
    other = {"backbone.conv.weight": torch.zeros(1), "val_acc_best.max": torch.zeros(())}
    assert network_state_dict(other, net.state_dict()).keys() == other.keys()
    twice = {f"{p}{k}": v for p in ("backbone.", "ema.") for k, v in net.state_dict().items()}
    assert network_state_dict(twice, net.state_dict()).keys() == twice.keys()


# --- load_backbone_weights -----------------------------------------------------------------------


def test_strict_load_of_matching_weights(net):
    torch.manual_seed(1)
    source = small_net().state_dict()
    with_metadata = OrderedDict(source)
    assert load_backbone_weights(net, with_metadata, arch_name="small") == []
    assert_same_tensors(net.state_dict(), source)


def test_old_batch_norm_files_without_num_batches_tracked_load(net):
    source = {k: v for k, v in small_net().state_dict().items() if "num_batches_tracked" not in k}
    load_backbone_weights(net, source, arch_name="small")
    assert net[1].num_batches_tracked == 0


def test_final_layer_of_another_size_stays_fresh_with_a_warning(net):
    torch.manual_seed(1)
    source = small_net(num_classes=1000).state_dict()
    fresh_head = net[4].weight.clone()
    with pytest.warns(UserWarning, match=r"4.weight \(1000, 4\) -> \(3, 4\)"):
        reinitialised = load_backbone_weights(net, source, arch_name="small")
    assert reinitialised == ["4.bias", "4.weight"]
    assert torch.equal(net[4].weight, fresh_head)
    assert torch.equal(net[0].weight, source["0.weight"])
    assert torch.equal(net[1].running_var, source["1.running_var"])


def test_weights_of_another_architecture_are_refused_and_nothing_is_loaded(net):
    other = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.Linear(4, 3)).state_dict()
    other["extra.weight"] = torch.zeros(1)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    with pytest.raises(ValueError) as error:
        load_backbone_weights(net, other, arch_name="SmallNet", source="other.pt")
    message = str(error.value)
    assert message.startswith("other.pt does not fit SmallNet")
    assert "Missing keys: 4.weight, 4.bias." in message
    assert "Unexpected keys: 2.weight, 2.bias, extra.weight." in message
    assert "0.weight ((8, 3, 3, 3) given, (4, 3, 3, 3) expected)" in message
    assert_same_tensors(net.state_dict(), before)


def test_long_key_lists_are_shortened():
    many = nn.Sequential(*[nn.Linear(2, 2) for _ in range(8)])
    with pytest.raises(ValueError, match=r"Missing keys: 0.weight, .*, 2.weight \(\+11 more\)\."):
        load_backbone_weights(many, {}, arch_name="many")


# --- load_weights, and through the models' `weights=` ---------------------------------------------


def test_load_weights_applies_a_checkpoint_of_any_lightning_module(net, tmp_path):
    torch.manual_seed(1)
    trained = small_net()
    torch.save(lightning_checkpoint(trained, "net._orig_mod."), tmp_path / "best.ckpt")
    assert load_weights(net, str(tmp_path / "best.ckpt"), arch_name="small") == []
    assert_same_tensors(net.state_dict(), trained.state_dict())


def test_load_weights_fine_tunes_and_returns_the_fresh_head(net, tmp_path):
    torch.save(small_net(num_classes=1000).state_dict(), tmp_path / "imagenet.pt")
    with pytest.warns(UserWarning, match="final layer re-initialised"):
        fresh = load_weights(net, str(tmp_path / "imagenet.pt"), arch_name="small")
    assert fresh == ["4.bias", "4.weight"]


def test_a_damaged_cached_download_says_which_file_to_delete(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    cached = tmp_path / "hub" / "checkpoints" / "alexnet-owt-7be5be79.pth"
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"half a download")
    with pytest.raises(DownloadError, match=f"cached file {cached} is damaged.*Delete it"):
        AlexNet("torchvision", weights="DEFAULT")


def test_imagenet_weights_file_fine_tunes_a_two_class_model(tmp_path):
    torch.manual_seed(0)
    imagenet = torchvision.models.alexnet()
    torch.save(imagenet.state_dict(), tmp_path / "alexnet.pth")
    with pytest.warns(UserWarning, match=r"classifier.6.weight \(1000, 4096\) -> \(2, 4096\)"):
        model = AlexNet("torchvision", num_classes=2, weights=str(tmp_path / "alexnet.pth"))
    assert model.classifier[-1].out_features == 2
    assert torch.equal(model.features[0].weight, imagenet.features[0].weight)
    assert torch.equal(model.classifier[4].weight, imagenet.classifier[4].weight)


def test_compiled_lightning_checkpoint_loads_through_weights(tmp_path):
    torch.manual_seed(0)
    trained = VGG("A", head="cifar", num_classes=10, batch_norm=True)
    state = {f"backbone._orig_mod.{k}": v for k, v in trained.state_dict().items()}
    torch.save({"state_dict": state, "epoch": 1}, tmp_path / "best.ckpt")
    model = VGG(
        "A", head="cifar", num_classes=10, batch_norm=True, weights=str(tmp_path / "best.ckpt")
    )
    assert_same_tensors(model.state_dict(), trained.state_dict())


def test_weights_of_another_config_or_family_name_the_expected_architecture(tmp_path):
    torch.save(VGG("A", head="cifar", num_classes=10).state_dict(), tmp_path / "vgg_a.pt")
    with pytest.raises(ValueError, match=r"vgg_a.pt does not fit VGG-B \(cifar head.*Missing keys"):
        VGG("B", head="cifar", num_classes=10, weights=str(tmp_path / "vgg_a.pt"))
    with pytest.raises(ValueError, match=r"does not fit AlexNet \(torchvision variant"):
        AlexNet("torchvision", num_classes=10, weights=str(tmp_path / "vgg_a.pt"))


def test_torchvision_vgg16_weights_into_vgg_e_are_refused():
    with torch.device("meta"):
        vgg16 = torchvision.models.vgg16().state_dict()
        model = VGG("E")
    with pytest.raises(ValueError, match=r"does not fit VGG-E .*Missing keys: features.16.weight"):
        load_backbone_weights(model, vgg16, arch_name=model.arch_name)


def test_missing_weights_file_is_reported():
    with pytest.raises(ValueError, match=r"weights='nowhere.pt' is not an existing file"):
        VGG("A", head="cifar", weights="nowhere.pt")
