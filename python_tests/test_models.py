"""Weight-tied models: the wtext path against the plain-PyTorch reference path, mask modes, DEQ twins,
checkpoints, resolutions, layouts and bad options."""

import io

import pytest
import torch

from wtext import models, ops
from wtext.deq import DEQConfig
from wtext.nn import MaskSpec, TiedMaskedWeight, autocast_dtype, torch_mask

PATTERNS = [("bernoulli", (2, 4)), ("exact", (2, 4)), ("nm", (2, 4))]


def tiny_resnet(**overrides):
    config = dict(width=8, expansion=2, depth=3, stages=2, groups=4)
    config.update(overrides)
    return models.TiedResNet(models.TiedResNetConfig(**config))


def tiny_vit(**overrides):
    config = dict(dim=16, heads=2, depth=3, patch=4, image_size=16)
    config.update(overrides)
    return models.TiedViT(models.TiedViTConfig(**config))


def set_reference(model, on: bool):
    for tied in model.tied_weights():
        tied.use_reference = on


def outputs_and_gradients(model, x):
    model.zero_grad()
    out = model(x)
    out.square().mean().backward()
    return out.detach(), {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("build", [tiny_resnet, tiny_vit], ids=["resnet", "vit"])
@pytest.mark.parametrize("mode", ["dense", "same", "multi"])
@pytest.mark.parametrize("pattern,nm", PATTERNS)
def test_wtext_path_equals_reference_path(build, mode, pattern, nm):
    torch.manual_seed(0)
    model = build(mask=MaskSpec(mode=mode, density=0.6, pattern=pattern, nm=nm, seed=3)).double().train()
    x = torch.randn(2, 3, 16, 16, dtype=torch.float64)
    ours, our_grads = outputs_and_gradients(model, x)
    set_reference(model, True)
    reference, reference_grads = outputs_and_gradients(model, x)
    torch.testing.assert_close(ours, reference)
    assert our_grads.keys() == reference_grads.keys()
    for name in our_grads:
        torch.testing.assert_close(our_grads[name], reference_grads[name], msg=name)


def test_mask_modes_use_the_masks_they_claim():
    multi = tiny_resnet(mask=MaskSpec(mode="multi", density=0.5)).cells[0].conv1
    same = tiny_resnet(mask=MaskSpec(mode="same", density=0.5)).cells[0].conv1
    dense = tiny_resnet(mask=MaskSpec(mode="dense")).cells[0].conv1
    views = multi().detach()
    assert views.shape[0] == 3
    assert all(not torch.equal(views[i] != 0, views[j] != 0) for i in range(3) for j in range(i + 1, 3))
    assert same().shape[0] == 1  # one mask serves every application
    for application in range(3):
        assert torch.equal(same.view(same(), application), same.weight * torch_mask(same.weight.shape, same.seed, 0, 0.5,
                                                                                    "bernoulli"))
    assert torch.equal(dense.view(dense(), 2), dense.weight)


def test_all_applications_come_from_one_op_call_per_weight(monkeypatch):
    calls = []
    original = ops.tied_masked_weights

    def counting(*args, **kwargs):
        calls.append(args[1])
        return original(*args, **kwargs)

    monkeypatch.setattr("wtext.nn.tied_weight.ops.tied_masked_weights", counting)
    model = tiny_resnet(stages=1, depth=5)
    model(torch.randn(1, 3, 8, 8))
    assert calls == [5, 5]  # conv1 and conv2: one call each, all five applications at once


def test_state_dict_holds_no_masks_and_round_trips_exactly():
    model = tiny_resnet().eval()
    state = model.state_dict()
    tied_names = {f"{name}.weight" for name, m in model.named_modules() if isinstance(m, TiedMaskedWeight)}
    assert tied_names <= state.keys()
    # Exactly the parameters and buffers: no mask tensor (or anything else) rides along.
    assert state.keys() == {n for n, _ in model.named_parameters()} | {n for n, _ in model.named_buffers()}
    assert not [k for k in state if "mask" in k]
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    restored = tiny_resnet().eval()
    restored.load_state_dict(torch.load(buffer))
    x = torch.randn(2, 3, 16, 16)
    assert torch.equal(model(x), restored(x))
    reseeded = tiny_resnet(mask=MaskSpec(seed=1)).eval()
    reseeded.load_state_dict(state)
    assert not torch.allclose(reseeded(x), model(x))


@pytest.mark.parametrize("size", [28, 32, 64])
def test_resolutions_batch_one_and_channels_last(size):
    for model in (tiny_resnet(), tiny_vit(image_size=32)):
        model.eval()
        x = torch.randn(1, 3, size, size)
        out = model(x)
        assert out.shape == (1, 10) and torch.isfinite(out).all()
        if isinstance(model, models.TiedResNet):
            model_cl = model.to(memory_format=torch.channels_last)
            torch.testing.assert_close(model_cl(x.contiguous(memory_format=torch.channels_last)), out,
                                       rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("build", [tiny_resnet, tiny_vit], ids=["resnet", "vit"])
@pytest.mark.parametrize("variant", ["implicit", "phantom", "one_step", "implicit_jr"])
def test_deq_twin_trains(build, variant):
    torch.manual_seed(0)
    model = build(deq=models.deq_variant(variant)).train()
    x = torch.randn(2, 3, 16, 16)
    logits = model(x)
    assert logits.shape == (2, 10) and torch.isfinite(logits).all()
    assert model.deq_outputs and all(out.stats.steps.min() >= 1 for out in model.deq_outputs)
    (logits.square().mean() + model.regularization()).backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    if variant.endswith("_jr"):
        assert model.regularization() > 0


@pytest.mark.parametrize("build,tol", [(tiny_resnet, 5e-2), (tiny_vit, 2e-3)], ids=["resnet", "vit"])
def test_deq_twin_fixed_point_satisfies_the_cell(build, tol):
    # MDEQ-style cells at initialization contract slowly: the tolerance is what 80 Anderson steps reach.
    torch.manual_seed(0)
    model = build(deq=DEQConfig(f_max_iter=80, f_tol=tol)).train()
    x = torch.randn(2, 3, 16, 16)
    captured = []
    with torch.no_grad():
        original = model.deq_outputs
        model(x)
        for out in model.deq_outputs:
            assert out.stats.converged.all(), out.stats.lowest
            captured.append(out)
        # Recompute f(z*) outside the solver: the returned point really is a fixed point to the tolerance.
        if isinstance(model, models.TiedResNet):
            features = model.stem(x)
            for stage, (cell, out) in enumerate(zip(model.cells, captured)):
                u = model.injections(stage, features)
                fz = cell(out.z, u, cell.masked_weights(x.device), 0)
                assert ((fz - out.z).flatten(1).norm(dim=1) / fz.flatten(1).norm(dim=1) <= tol).all()
                features = out.z
        else:
            e = model.embed(x)
            weights = model.block.masked_weights(x.device)
            z = captured[0].z
            fz = model.deq_norm(model.block(z + e, weights, 0))
            assert ((fz - z).flatten(1).norm(dim=1) / fz.flatten(1).norm(dim=1) <= tol).all()
    del original


def test_presets_are_listed_and_build():
    presets = models.list_presets()
    assert {"resnet-small", "resnet-large", "vit-small"} <= presets.keys()
    small = models.describe(models.build_model("resnet-small"))
    large = models.describe(models.build_model("resnet-large"))
    assert 1.5e5 < small["stored"] < 2.5e5 and 8e6 < large["stored"] < 1.2e7
    assert small["effective_per_application"] < small["stored"]
    assert 0.4 < small["flops_effective"] / small["flops_dense"] < 0.6  # density 0.5 on the tied convolutions
    vit = models.build_model("vit-small")
    assert vit.config.mask.density == 0.9


def test_accounting_of_a_dense_model_has_no_savings():
    model = tiny_resnet(mask=MaskSpec(mode="dense"))
    described = models.describe(model)
    assert described["effective_per_application"] == described["stored"]
    assert described["flops_effective"] == described["flops_dense"]


@pytest.mark.parametrize("build,option,value,message", [
    (tiny_resnet, "depth", 0, r"depth must be an int >= 1; got depth=0"),
    (tiny_resnet, "width", 10, r"width must be divisible by the GroupNorm groups; got width=10, groups=4"),
    (tiny_resnet, "stages", 0, r"stages must be an int >= 1"),
    (tiny_vit, "depth", -1, r"depth must be an int >= 1; got depth=-1"),
    (tiny_vit, "heads", 3, r"dim must be divisible by heads; got dim=16, heads=3"),
    (tiny_vit, "pool", "max", r"pool must be one of attention, cls, mean; got pool='max'"),
    (tiny_vit, "tokenizer", "pixels", r"tokenizer must be 'conv' or 'patch'; got tokenizer='pixels'"),
    (tiny_vit, "patch", 3, r"patch must be a power of 2; got patch=3"),
    (tiny_resnet, "head_grid", 0, r"head_grid must be an int >= 1; got head_grid=0"),
])
def test_bad_model_options(build, option, value, message):
    with pytest.raises(ValueError, match=message):
        build(**{option: value})


@pytest.mark.parametrize("kwargs,message", [
    (dict(density=0.0), r"density must be in \(0, 1\]; got density=0.0"),
    (dict(density=1.5), r"density must be in \(0, 1\]; got density=1.5"),
    (dict(mode="random"), r"mask mode must be one of"),
    (dict(pattern="blocks"), r"mask pattern must be one of"),
    (dict(nm=(5, 4)), r"nm must satisfy 1 <= N <= M <= 64; got nm=\(5, 4\)"),
])
def test_bad_mask_options(kwargs, message):
    with pytest.raises(ValueError, match=message):
        MaskSpec(**kwargs)


def test_unknown_preset_option_and_variant():
    with pytest.raises(ValueError, match=r"unknown preset 'resnet-huge'; presets: "):
        models.build_model("resnet-huge")
    with pytest.raises(ValueError, match=r"preset 'vit-small' has no option 'width'"):
        models.build_model("vit-small", width=64)
    with pytest.raises(ValueError, match=r"unknown DEQ variant 'newton'"):
        models.build_model("resnet-tiny", deq="newton")
    with pytest.raises(ValueError, match=r"nm M=4 must divide the reduction dimension 27"):
        tiny_resnet(width=3, groups=1, mask=MaskSpec(pattern="nm"))


@pytest.mark.parametrize("build", [tiny_resnet, tiny_vit], ids=["resnet", "vit"])
def test_deq_twin_trains_under_autocast_with_the_backward_outside_it(build):
    # The training loop calls backward() after the autocast region closes; the implicit backward re-runs the cell,
    # whose captured weights are bfloat16, so it must re-enter the forward's autocast region.
    torch.manual_seed(0)
    model = build(deq=DEQConfig(f_max_iter=6, b_max_iter=6)).train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = model(torch.randn(2, 3, 16, 16)).float().square().mean()
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
@pytest.mark.parametrize("build", [tiny_resnet, tiny_vit], ids=["resnet", "vit"])
def test_cuda_bf16_autocast_matches_the_reference_path(build):
    torch.manual_seed(0)
    model = build(mask=MaskSpec(mode="multi", density=0.5, pattern="exact")).cuda().train()
    x = torch.randn(4, 3, 16, 16, device="cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        ours = model(x).float()
        # The models ask for their views in the autocast dtype (the op writes them directly in it); the op's own
        # default stays the weight's dtype.
        tied = model.tied_weights()[0]
        views, plain = tied(autocast_dtype(x.device)), tied()
    assert views.dtype == torch.bfloat16 and plain.dtype == torch.float32
    set_reference(model, True)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        reference = model(x).float()
    torch.testing.assert_close(ours, reference, rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize("tokenizer", ["conv", "patch"])
@pytest.mark.parametrize("pool", ["attention", "cls", "mean"])
def test_vit_heads_and_tokenizers_train_every_parameter(tokenizer, pool):
    model = tiny_vit(tokenizer=tokenizer, pool=pool)
    assert (model.cls_token is not None) == (pool == "cls")
    x = torch.randn(3, 3, 16, 16)
    logits = model(x)
    assert logits.shape == (3, 10)
    logits.square().mean().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
    assert model(torch.randn(2, 3, 24, 24)).shape == (2, 10)  # another size: positional embedding interpolated


@pytest.mark.parametrize("grid", [1, 2, 4])
def test_resnet_grid_head_reads_each_cell_of_the_last_stage(grid):
    model = tiny_resnet(head_grid=grid).eval()
    assert model.head.in_features == 16 * grid * grid
    logits = model(torch.randn(2, 3, 16, 16))
    assert logits.shape == (2, 10) and logits.isfinite().all()
