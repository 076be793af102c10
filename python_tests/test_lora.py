"""Multi-mask LoRA (wtext.lora): equivalences, ranks, op calls, freezing, merging, adapter files and every error."""

import copy
import os
import pickle

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import wtext.ops
from wtext import lora
from wtext.lora import LoRAConfig
from wtext.lora.seeds import mask_seeds
from wtext.models import build_model
from wtext.nn import torch_mask

PLAIN = dict(copies=1, density=1.0)  # d=1, density=1: plain LoRA


class TwoLayers(nn.Module):
    """A Linear and a Conv2d (stride, padding and dilation that are not the defaults)."""

    def __init__(self, features=24, out=20, channels=5, conv_out=7):
        super().__init__()
        self.fc = nn.Linear(features, out)
        self.conv = nn.Conv2d(channels, conv_out, 3, stride=2, padding=2, dilation=2)

    def forward(self, x, image):
        return self.fc(x), self.conv(image)


def inputs(batch=6, features=24, channels=5, size=9):
    return torch.randn(batch, 3, features), torch.randn(batch, channels, size, size)


def randomize(model: nn.Module) -> None:
    """Non-zero factors everywhere (B starts at zero), as after some training."""
    with torch.no_grad():
        for _, adapter in lora.adapters(model).values():
            adapter.A.normal_()
            adapter.B.normal_(std=0.1)


def config(**changes) -> LoRAConfig:
    return LoRAConfig(**{"rank": 4, "targets": ("fc", "conv"), **changes})


@pytest.fixture
def op_calls(monkeypatch):
    """Counts calls of wtext.ops.tied_masked_weights (by every caller: adapters and tied weights)."""
    calls = []
    real = wtext.ops.tied_masked_weights

    def counted(weight, layers, *args, **kwargs):
        calls.append((tuple(weight.shape), layers))
        return real(weight, layers, *args, **kwargs)

    monkeypatch.setattr(wtext.ops, "tied_masked_weights", counted)
    return calls


# --- equivalences ---

@pytest.mark.parametrize("alpha", [None, 3.0])
def test_d1_density1_is_plain_lora(alpha):
    model = TwoLayers()
    x, image = inputs()
    base_fc, base_conv = (t.detach() for t in model(x, image))
    lora.inject(model, config(alpha=alpha, **PLAIN))
    randomize(model)
    fc_out, conv_out = model(x, image)
    scale = (2.0 if alpha is None else alpha / 4)
    fc = model.fc.lora
    expected_fc = base_fc + x @ fc.A.T @ fc.B.T * scale  # plain LoRA, two lines
    torch.testing.assert_close(fc_out, expected_fc, rtol=1e-5, atol=1e-5)
    conv, c = model.conv.lora, model.conv
    delta = (conv.B @ conv.A.flatten(1)).view_as(c.weight) * scale  # plain LoRA of a conv in matrix form
    expected_conv = F.conv2d(image, c.weight + delta, c.bias, c.stride, c.padding, c.dilation)
    torch.testing.assert_close(conv_out, expected_conv, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "mixed"])
def test_conv_adapter_in_every_memory_layout(layout):
    """B's product is a batched GEMM on NCHW, a GEMM on the NHWC view for channels_last, a 1x1 conv otherwise."""
    model = TwoLayers()
    lora.inject(model, config(**PLAIN))
    randomize(model)
    image = inputs()[1]
    conv, c = model.conv.lora, model.conv
    expected = F.conv2d(image, c.weight + 2.0 * (conv.B @ conv.A.flatten(1)).view_as(c.weight), c.bias, c.stride,
                        c.padding, c.dilation)
    if layout == "channels_last":
        model = model.to(memory_format=torch.channels_last)
        image = image.contiguous(memory_format=torch.channels_last)
    elif layout == "mixed":  # the base output NCHW, the adapter's A path channels_last
        with torch.no_grad():
            conv.A.data = conv.A.contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(model.conv(image), expected, rtol=1e-5, atol=1e-5)


def test_d1_density1_tied_weight_is_plain_lora():
    model = build_model("vit-tiny", depth=2)
    lora.inject(model, LoRAConfig(rank=3, targets=("block.fc1",), **PLAIN))
    randomize(model)
    tied = model.block.fc1
    expected = tied.weight + 2.0 * tied.lora.B @ tied.lora.A
    torch.testing.assert_close(tied.shared_weight(), expected, rtol=1e-5, atol=1e-5)


def test_zero_init_computes_the_base_model():
    model = TwoLayers()
    x, image = inputs()
    before = model(x, image)
    lora.inject(model, config())
    for old, new in zip(before, model(x, image)):
        assert torch.equal(old, new)
    for name in ("resnet-tiny", "vit-tiny"):
        torch.manual_seed(0)
        net = build_model(name)
        batch = torch.randn(2, 3, 32, 32)
        base = net(batch)
        lora.inject(net, LoRAConfig(rank=2, train_modules=("head",)))
        assert torch.equal(net(batch), base), name


# --- rank, masks, op calls ---

@pytest.mark.parametrize("shape", [(40, 36), (24, 6, 3, 3)])
@pytest.mark.parametrize("copies", [2, 3])
def test_rank_reaches_d_times_r_for_multi_and_r_for_same(shape, copies):
    rank = 4
    dims = min(shape[0], torch.Size(shape[1:]).numel())
    for mode, expected in (("multi", min(copies * rank, dims)), ("same", rank)):
        cfg = LoRAConfig(rank=rank, copies=copies, mode=mode, targets=("t",))
        adapter = lora.LoRAAdapter("tied", shape[0], shape[1:], cfg, "t", dtype=torch.float64)
        with torch.no_grad():
            adapter.B.normal_()
        delta = adapter.delta_weight().flatten(1)
        assert torch.linalg.matrix_rank(delta).item() == expected, mode


def test_one_op_call_per_factor_and_one_product_of_width_d_r(op_calls):
    model = TwoLayers()
    lora.inject(model, config(copies=4, rank=3))
    model(*inputs())
    # A and B of fc, A and B of conv: one call each, producing all 4 copies
    assert sorted(op_calls) == sorted([((3, 24), 4), ((20, 3), 4), ((3, 5, 3, 3), 4), ((7, 3), 4)])
    a, b = model.fc.lora.masked_factors()
    assert a.shape == (12, 24) and b.shape == (20, 12)


def test_masks_per_copy_and_per_factor():
    cfg = LoRAConfig(rank=4, copies=3, targets=("t",), pattern="exact")
    adapter = lora.LoRAAdapter("linear", 16, (32,), cfg, "t")
    with torch.no_grad():
        adapter.A.fill_(1.0)
        adapter.B.fill_(1.0)
    a, b = adapter.masked_factors()
    copies_a = a.view(3, 4, 32)
    copies_b = b.view(16, 3, 4).transpose(0, 1)
    for copies in (copies_a, copies_b):
        assert all(c.sum().item() == c.numel() // 2 for c in copies)  # exact: half of each copy kept
        assert not torch.equal(copies[0], copies[1]) and not torch.equal(copies[1], copies[2])
    assert adapter.seed_a != adapter.seed_b
    # the copies are the mask function's layers 0..d-1 of the seeds derived from (config.seed, name)
    expected = torch_mask((4, 32), adapter.seed_a, 2, 0.5, "exact")
    assert torch.equal(copies_a[2], expected)
    same = lora.LoRAAdapter("linear", 16, (32,), LoRAConfig(rank=4, copies=3, mode="same", targets=("t",)), "t")
    with torch.no_grad():
        same.A.fill_(1.0)
    a_same = same.masked_factors()[0].view(3, 4, 32)
    assert torch.equal(a_same[0], a_same[1]) and torch.equal(a_same[0], a_same[2])


def test_mask_seeds_are_stable_and_differ_by_name_and_seed():
    # A fixed value: Python's hash() is salted per process and would change it between runs.
    assert mask_seeds(0, "block.qkv") == (9770216969705719117, 9662338028972551254)
    assert len({mask_seeds(0, "block.qkv"), mask_seeds(1, "block.qkv"), mask_seeds(0, "block.proj")}) == 3


def test_dropout_applies_to_the_adapter_path_in_training_only():
    model = TwoLayers()
    lora.inject(model, config(dropout=0.5))
    randomize(model)
    x, image = inputs()
    model.train()
    assert not torch.equal(model(x, image)[0], model(x, image)[0])
    model.eval()
    reference = TwoLayers()
    reference.load_state_dict(model.state_dict(), strict=False)
    lora.inject(reference, config(dropout=0.0))
    reference.load_state_dict(model.state_dict())
    assert torch.equal(model(x, image)[0], reference(x, image)[0])


# --- training a real wtext model ---

@pytest.mark.parametrize("name", ["resnet-tiny", "vit-tiny"])
def test_training_step_changes_only_adapters_and_train_modules_and_stays_tied(name, op_calls):
    torch.manual_seed(0)
    model = build_model(name)
    before = {key: value.clone() for key, value in model.state_dict().items()}
    trainable = lora.inject(model, LoRAConfig(rank=2, copies=2, train_modules=("head",)))
    adapted = lora.adapters(model)
    factors = {id(a.A) for _, a in adapted.values()} | {id(a.B) for _, a in adapted.values()}
    head = {id(p) for p in model.head.parameters()}
    assert {id(p) for p in trainable} == factors | head
    assert all(not p.requires_grad for p in model.parameters() if id(p) not in factors | head)

    optimizer = torch.optim.SGD(trainable, lr=0.1)
    x, labels = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 3])
    for _ in range(2):  # B is zero at first, so A gets its first gradient in the second step
        op_calls.clear()
        optimizer.zero_grad()
        F.cross_entropy(model(x), labels).backward()
        optimizer.step()
    tied = model.tied_weights()
    assert len(op_calls) == 3 * len(tied)  # per tied weight: its masked views, A's copies, B's copies
    for key, value in model.state_dict().items():
        if key in before and not key.startswith("head."):
            assert torch.equal(value, before[key]), f"base parameter {key} changed"
    assert not torch.equal(model.head.weight, before["head.weight"])
    for _, adapter in adapted.values():
        assert adapter.A.grad.abs().sum() > 0 and adapter.B.grad.abs().sum() > 0

    # Still tied: each application masks the one shared W' = W + ΔW with its own mask.
    for weight in tied:
        shared = weight.weight + weight.lora.delta_weight()
        views = weight().detach()
        assert views.shape == (weight.applications, *weight.weight.shape)
        for application in range(weight.applications):
            expected = shared * weight.mask(weight.spec.mask_layer(application))
            torch.testing.assert_close(views[application], expected, rtol=1e-5, atol=1e-6)


# --- merge ---

def test_merge_unmerge_exact_and_no_adapter_ops_while_merged(op_calls):
    model = TwoLayers()
    original = {key: value.clone() for key, value in model.state_dict().items()}
    lora.inject(model, config())
    randomize(model)
    x, image = inputs()
    unmerged = model(x, image)
    lora.merge(model)
    lora.merge(model)  # a second merge adds nothing
    op_calls.clear()
    merged = model(x, image)
    assert op_calls == []
    for a, b in zip(unmerged, merged):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    assert not torch.equal(model.fc.weight, original["fc.weight"])
    base = lora.base_state_dict(model)
    assert base.keys() == original.keys() and all(torch.equal(base[k], original[k]) for k in original)
    lora.unmerge(model)
    assert torch.equal(model.fc.weight, original["fc.weight"]) and torch.equal(model.conv.weight,
                                                                               original["conv.weight"])
    for a, b in zip(unmerged, model(x, image)):
        assert torch.equal(a, b)


def test_merge_tied_model(op_calls):
    model = build_model("vit-tiny", depth=3)
    original = model.block.qkv.weight.clone()
    lora.inject(model, LoRAConfig(rank=2))
    randomize(model)
    x = torch.randn(2, 3, 32, 32)
    unmerged = model(x)
    lora.merge(model)
    op_calls.clear()
    torch.testing.assert_close(model(x), unmerged, rtol=1e-4, atol=1e-5)
    assert len(op_calls) == len(model.tied_weights())  # only the tied weights' own masked views
    lora.unmerge(model)
    assert torch.equal(model.block.qkv.weight, original)


def test_deepcopy_keeps_its_own_adapters():
    model = TwoLayers()
    lora.inject(model, config())
    twin = copy.deepcopy(model)
    x, image = inputs()
    randomize(twin)
    assert not torch.equal(twin(x, image)[0], model(x, image)[0])
    assert lora.adapters(twin)["fc"][1] is twin.fc.lora


# --- the links between adapters and the modules they adapt ---

class Doubling(nn.Module):
    """A weight update that is no LoRAAdapter: W' = 2 W."""

    def adapt_weight(self, weight):
        return 2 * weight


def test_a_tied_weights_update_is_linked_through_its_slot_alone():
    """The slot is the only link: an adapter put there under another child name is used by the forward, found by
    wtext.lora and refused by fusion; a child named `lora` that is not in the slot is ignored by all three."""
    from wtext.models.fused_resnet import FusedTiedResNet
    from wtext.nn import MaskSpec, TiedMaskedWeight

    tied = TiedMaskedWeight((8, 6, 3, 3), 3, MaskSpec(pattern="exact"), seed_offset=0)
    adapter = lora.LoRAAdapter("tied", 8, (6, 3, 3), LoRAConfig(rank=2, targets=("tied",)), "tied")
    with torch.no_grad():
        adapter.B.normal_(std=0.1)
    tied.set_weight_update("update", adapter)
    assert tied.weight_update is adapter and set(tied.state_dict()) == {"weight", "update.A", "update.B"}
    adapted = tied.weight + adapter.delta_weight()
    torch.testing.assert_close(tied(), adapted.unsqueeze(0) * tied.application_masks(), rtol=1e-5, atol=1e-5)
    holder = nn.Module()
    holder.tied = tied
    assert lora.adapters(holder) == {"tied": (tied, adapter)}
    twin = copy.deepcopy(holder).tied
    assert twin.weight_update is twin.update and twin.weight_update is not adapter
    assert tied.remove_weight_update() is adapter
    assert tied.weight_update is None and set(tied.state_dict()) == {"weight"} and not lora.adapters(holder)
    assert torch.equal(tied.shared_weight(), tied.weight)

    tied.set_weight_update("scale", Doubling())  # any module with adapt_weight(W)
    torch.testing.assert_close(tied.shared_weight(), 2 * tied.weight)
    tied.remove_weight_update()

    member = build_model("resnet-tiny")
    conv1 = member.cells[0].conv1
    out, *in_shape = conv1.weight.shape
    conv1.add_module("lora", lora.LoRAAdapter("tied", out, in_shape, LoRAConfig(rank=2), "cells.0.conv1"))
    with torch.no_grad():
        conv1.lora.B.normal_()
    assert torch.equal(conv1.shared_weight(), conv1.weight) and not lora.adapters(member)
    FusedTiedResNet([member])
    del conv1.lora
    conv1.set_weight_update("update", Doubling())
    with pytest.raises(ValueError, match=r"member 0 is adapted: its tied weight cells\.0\.conv1 holds a weight "
                                         r"update"):
        FusedTiedResNet([member])


def test_fusion_refuses_adapters_of_tied_weights_and_of_the_layers_it_reads_directly():
    from wtext.models.fused_resnet import FusedTiedResNet

    for targets, message in [(None, r"its tied weight cells\.0\.conv1 holds a weight update"),
                             (("stem.0",), r"member 0's module stem\.0 has hooks"),
                             (("head",), r"member 0's module head has hooks")]:
        model = build_model("resnet-tiny")
        FusedTiedResNet([model])
        lora.inject(model, LoRAConfig(rank=2) if targets is None else LoRAConfig(rank=2, targets=targets))
        with pytest.raises(ValueError, match=message):
            FusedTiedResNet([model])


def test_weight_update_slot_errors():
    from wtext.nn import MaskSpec, TiedMaskedWeight

    tied = TiedMaskedWeight((8, 6, 3, 3), 2, MaskSpec(), seed_offset=0)
    with pytest.raises(ValueError, match="has no weight update to remove"):
        tied.remove_weight_update()
    with pytest.raises(TypeError, match=r"an nn\.Module with a method adapt_weight\(weight\); got Linear"):
        tied.set_weight_update("update", nn.Linear(2, 2))
    with pytest.raises(TypeError, match="got function"):
        tied.set_weight_update("update", lambda weight: weight)
    with pytest.raises(ValueError, match="cannot register the weight update as 'weight': the TiedMaskedWeight "
                                         "already has an attribute 'weight'"):
        tied.set_weight_update("weight", Doubling())
    assert tied.weight_update is None and set(tied.state_dict()) == {"weight"}
    tied.set_weight_update("update", Doubling())
    with pytest.raises(ValueError, match=r"already has a weight update \(Doubling\); remove_weight_update\(\) "
                                         r"first"):
        tied.set_weight_update("other", Doubling())


# --- adapter files ---

def test_save_load_roundtrip_into_a_fresh_model(tmp_path):
    torch.manual_seed(1)
    model = build_model("resnet-tiny")
    base_keys = set(model.state_dict())
    lora.inject(model, LoRAConfig(rank=2, train_modules=("head",)))
    randomize(model)
    with torch.no_grad():
        model.head.weight.add_(1.0)
    path = tmp_path / "adapter.pt"
    lora.save_adapter(model, path)
    assert os.listdir(tmp_path) == ["adapter.pt"]  # the temporary file was renamed
    state = lora.adapter_state_dict(model)
    assert set(state) == {k for k in model.state_dict() if ".lora." in k} | {"head.weight", "head.bias"}
    assert set(model.state_dict()) - set(state) == base_keys - {"head.weight", "head.bias"}
    tensor_bytes = sum(t.numel() * t.element_size() for t in state.values())
    assert path.stat().st_size < tensor_bytes + 8192  # a few KB over the tensors themselves
    full = tmp_path / "full.pt"
    torch.save(model.state_dict(), full)
    assert path.stat().st_size * 4 < full.stat().st_size

    torch.manual_seed(1)
    fresh = build_model("resnet-tiny")
    trainable = lora.load_adapter(fresh, path)
    assert len(trainable) == len(state)
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(fresh(x), model(x))
    lora.load_adapter(fresh, path)  # into an adapted model with the same config: fine
    assert lora.read_adapter(path)[0] == LoRAConfig(rank=2, train_modules=("head",))


# --- errors ---

@pytest.mark.parametrize("changes, message", [
    ({"rank": 0}, r"rank must be an int >= 1; got rank=0"),
    ({"rank": 2.5}, r"rank must be an int >= 1; got rank=2.5"),
    ({"copies": 0}, r"copies must be an int >= 1; got copies=0"),
    ({"density": 0}, r"density must be in \(0, 1\]; got density=0"),
    ({"density": 1.5}, r"density must be in \(0, 1\]; got density=1.5"),
    ({"dropout": 1.0}, r"dropout must be a probability in \[0, 1\); got dropout=1.0"),
    ({"alpha": 0}, r"alpha must be a number > 0, or None for 2 \* rank; got alpha=0"),
    ({"mode": "dense"}, r"mode must be one of \('multi', 'same'\); got mode='dense'"),
    ({"pattern": "random"}, r"pattern must be one of .*; got pattern='random'"),
    ({"nm": (3, 2)}, r"nm must satisfy 1 <= N <= M <= 64; got nm=\(3, 2\)"),
    ({"targets": "block.qkv"}, r"targets must be a tuple of module-name patterns, not one str"),
    ({"targets": ()}, r"targets must hold at least one module-name pattern"),
    ({"seed": "1"}, r"seed must be an int; got seed='1'"),
])
def test_config_errors(changes, message):
    with pytest.raises(ValueError, match=message):
        LoRAConfig(**changes)


def test_parse_and_dict_roundtrip():
    cfg = LoRAConfig.parse("r=8,alpha=16,copies=2,density=0.5")
    assert (cfg.rank, cfg.alpha, cfg.copies, cfg.density, cfg.scaling) == (8, 16.0, 2, 0.5, 2.0)
    full = LoRAConfig.parse("rank=4, d=3, mode=same, pattern=nm, nm=2:4, targets=block.qkv+block.fc*, "
                            "train_modules=head, seed=7, dropout=0.1, alpha=none")
    assert full.targets == ("block.qkv", "block.fc*") and full.nm == (2, 4) and full.alpha is None
    assert LoRAConfig.from_dict(full.to_dict()) == full
    assert LoRAConfig().scaling == 2.0 and LoRAConfig.parse("train_modules=").train_modules == ()


@pytest.mark.parametrize("text, message", [
    ("r=8,foo=1", r"unknown LoRA option 'foo'"),
    ("r=eight", r"LoRA option rank: expected an int; got 'eight'"),
    ("density=half", r"LoRA option density: expected a number; got 'half'"),
    ("nm=2", r"LoRA option nm: expected N:M"),
    ("r=8,r=4", r"LoRA option 'r' given twice"),
    ("rank", r"LoRA option 'rank' is not key=value"),
    ("r=0", r"rank must be an int >= 1; got rank=0"),
])
def test_parse_errors(text, message):
    with pytest.raises(ValueError, match=message):
        LoRAConfig.parse(text)


def test_from_dict_rejects_unknown_keys():
    with pytest.raises(ValueError, match=r"unknown LoRA config key\(s\) \['ranks'\]"):
        LoRAConfig.from_dict({"ranks": 4})


def test_inject_errors():
    vit = build_model("vit-tiny")
    with pytest.raises(ValueError, match=r"LoRA targets \['blocks\.\*'\] match no module of the TiedViT; modules it "
                                         r"could adapt: .*block\.qkv"):
        lora.inject(vit, LoRAConfig(targets=("blocks.*",)))
    with pytest.raises(ValueError, match=r"LoRA target 'block\.norm1' is a LayerNorm, which LoRA cannot adapt"):
        lora.inject(vit, LoRAConfig(targets=("block.*",)))
    with pytest.raises(ValueError, match=r"train_modules pattern 'heads' matches no module"):
        lora.inject(vit, LoRAConfig(train_modules=("heads",)))
    with pytest.raises(ValueError, match=r"module 'block\.qkv' is both a LoRA target and \(in\) train module 'block'"):
        lora.inject(vit, LoRAConfig(train_modules=("block",)))
    with pytest.raises(ValueError, match=r"pattern 'nm' with M=4 needs M to divide .* module 'block\.qkv': B's is 6"):
        lora.inject(vit, LoRAConfig(rank=6, pattern="nm"))
    grouped = nn.Sequential(nn.Conv2d(4, 4, 3, groups=2))
    with pytest.raises(ValueError, match=r"LoRA target '0' is a grouped nn.Conv2d \(groups=2\)"):
        lora.inject(grouped, LoRAConfig(targets=("0",)))
    assert all(p.requires_grad for p in vit.parameters())  # failed injections changed nothing
    lora.inject(vit, LoRAConfig())
    with pytest.raises(ValueError, match=r"the model already has LoRA adapters"):
        lora.inject(vit, LoRAConfig())
    with pytest.raises(ValueError, match=r"cannot merge: the TiedResNet has no LoRA adapters"):
        lora.merge(build_model("resnet-tiny"))


def test_load_errors(tmp_path):
    torch.manual_seed(0)
    model = build_model("resnet-tiny")
    lora.inject(model, LoRAConfig(rank=2))
    path = tmp_path / "adapter.pt"
    lora.save_adapter(model, path)

    wider = build_model("resnet-tiny", width=32)
    with pytest.raises(ValueError, match=r"module 'cells\.0\.conv1': 'cells\.0\.conv1\.lora\.A' has shape "
                                         r"\(2, 16, 3, 3\) in the file but \(2, 32, 3, 3\) in the model"):
        lora.load_adapter(wider, path)
    assert not lora.adapters(wider)  # nothing injected by the failed load

    # The default targets name both families' tied weights: a ResNet adapter's targets match the ViT's block.
    with pytest.raises(ValueError, match=r"the file has 'cells\.0\.conv1\.lora\.A', but module 'cells\.0\.conv1' "
                                         r"is missing in the model"):
        lora.load_adapter(build_model("vit-tiny"), path)
    only_cells = tmp_path / "cells.pt"
    resnet = build_model("resnet-tiny")
    lora.inject(resnet, LoRAConfig(rank=2, targets=("cells.*.conv1",)))
    lora.save_adapter(resnet, only_cells)
    with pytest.raises(ValueError, match=r"LoRA targets \['cells\.\*\.conv1'\] match no module of the TiedViT"):
        lora.load_adapter(build_model("vit-tiny"), only_cells)

    other = build_model("resnet-tiny")
    lora.inject(other, LoRAConfig(rank=4))
    with pytest.raises(ValueError, match=r"LoRA config mismatch, file vs model: rank: 2 != 4"):
        lora.load_adapter(other, path)
    lora.merge(model)
    with pytest.raises(ValueError, match=r"the model's adapters are merged; unmerge\(model\)"):
        lora.load_adapter(model, path)

    checkpoint = tmp_path / "checkpoint.pt"
    torch.save({"model": model.state_dict()}, checkpoint)
    with pytest.raises(ValueError, match=r"not a wtext LoRA adapter file \(no format marker"):
        lora.load_adapter(build_model("resnet-tiny"), checkpoint)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a torch file")
    with pytest.raises(ValueError, match=r"garbage\.pt: not a wtext LoRA adapter file \(unreadable"):
        lora.load_adapter(build_model("resnet-tiny"), garbage)
    with pytest.raises(FileNotFoundError, match=r"adapter file not found"):
        lora.load_adapter(build_model("resnet-tiny"), tmp_path / "missing.pt")
    with pytest.raises(ValueError, match=r"cannot take the adapter state: the TiedResNet has no LoRA adapters"):
        lora.save_adapter(build_model("resnet-tiny"), tmp_path / "none.pt")


class RunsCode:
    """Unpickling this calls os.system: what a crafted 'adapter file' would do."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_a_file_that_would_run_code_is_refused(tmp_path):
    marker = tmp_path / "ran"
    path = tmp_path / "crafted.pt"
    torch.save({"format": "wtext-lora-adapter", "version": 1, "config": {}, "tensors": {}, "x": RunsCode(marker)},
               path)
    with pytest.raises(ValueError, match=r"crafted\.pt: refused to load: it names the Python object .*system"):
        lora.load_adapter(build_model("resnet-tiny"), path)
    assert not marker.exists()
    with pytest.raises(pickle.UnpicklingError):  # the check above is torch's weights_only unpickler
        torch.load(path, weights_only=True)


def test_adapted_layers_under_torch_compile():
    """torch.compile traces through the hooks and TiedMaskedWeight.shared_weight (with and without an adapter)."""
    from wtext.nn import MaskSpec, TiedMaskedWeight

    tied = TiedMaskedWeight((8, 6, 3, 3), 3, MaskSpec(pattern="exact"), seed_offset=0)
    compiled_tied = torch.compile(lambda: tied().sum(), backend="aot_eager", fullgraph=True)
    torch.testing.assert_close(compiled_tied(), tied().sum())
    holder = nn.Module()
    holder.tied = tied
    lora.inject(holder, LoRAConfig(rank=2, targets=("tied",)))
    randomize(holder)
    torch.testing.assert_close(torch.compile(lambda: tied().sum(), backend="aot_eager", fullgraph=True)(),
                               tied().sum())

    model = TwoLayers()
    lora.inject(model, config())
    randomize(model)
    x, image = inputs()
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    for got, expected in zip(compiled(x, image), model(x, image)):
        torch.testing.assert_close(got, expected)
    fc_grad = torch.autograd.grad(compiled(x, image)[0].sum(), model.fc.lora.B)[0]
    torch.testing.assert_close(fc_grad, torch.autograd.grad(model(x, image)[0].sum(), model.fc.lora.B)[0])
