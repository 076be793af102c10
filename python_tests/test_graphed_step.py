"""The CUDA-graph training step (--cuda-graph): who may use it, checkpoints that move between graphed and eager
runs (CPU), and the same training as the eager step (GPU only)."""

import dataclasses

import pytest
import torch

from conftest import requires_cuda
from wtext.train import TrainConfig
from wtext.train.graphed_step import GraphedStep, capturable_adam, fit_loaded_optimizer, portable_optimizer_state
from wtext.train import Trainer

TINY = dict(dataset="synthetic", synthetic_train=192, synthetic_test=64, epochs=1, batch_size=32, width=8, depth=2,
            progress=False)


def test_the_graph_needs_cuda(tmp_path):
    with pytest.raises(ValueError, match="cannot be captured in a CUDA graph: the device is not CUDA"):
        Trainer(TrainConfig(**TINY, device="cpu", cuda_graph=True, run_dir=str(tmp_path / "run")))


@pytest.mark.parametrize("options, reason", [
    (dict(deq="implicit"), "a DEQ twin's solver runs host-side loops"),
    (dict(optimizer="sgd"), "only Adam is captured"),
    (dict(compile=True), "the model is compiled"),
])
def test_what_cannot_be_captured_is_named(options, reason):
    from wtext.train.graphed_step import graph_unsupported

    class FakeCluster:
        active = False

    class FakeTrainer:
        device = torch.device("cuda")
        cluster = FakeCluster()
        config = TrainConfig(**{**TINY, **options})

    assert reason in graph_unsupported(FakeTrainer())


def test_a_graphed_runs_optimizer_state_loads_into_an_eager_one_and_back():
    parameter = torch.nn.Parameter(torch.randn(4, 3))
    graphed = capturable_adam([parameter], 1e-3, 0.0, torch.device("cpu"))
    graphed.state[parameter] = {"step": torch.tensor(5.0), "exp_avg": torch.ones(4, 3),
                                "exp_avg_sq": torch.full((4, 3), 2.0)}
    state = portable_optimizer_state(graphed)
    assert state["param_groups"][0]["lr"] == pytest.approx(1e-3) and not state["param_groups"][0]["capturable"]
    eager = torch.optim.Adam([parameter], lr=1e-3)
    eager.load_state_dict(state)
    fit_loaded_optimizer(eager, capturable=False)
    parameter.grad = torch.ones_like(parameter)
    eager.step()  # an eager step works on the loaded state
    assert eager.state[parameter]["step"].item() == 6 and eager.state[parameter]["step"].device.type == "cpu"
    again = capturable_adam([parameter], 1e-3, 0.0, torch.device("cpu"))
    again.load_state_dict(portable_optimizer_state(eager))
    fit_loaded_optimizer(again, capturable=True)
    assert torch.is_tensor(again.param_groups[0]["lr"]) and again.param_groups[0]["capturable"]


def train_steps(config: TrainConfig, steps: int) -> Trainer:
    trainer = Trainer(config)
    batches = trainer.train_loader.epoch(0)
    for _ in range(steps):
        trainer.train_step(*next(batches))
    torch.cuda.synchronize()
    return trainer


@requires_cuda
@pytest.mark.parametrize("bf16", [False, True])
def test_graphed_steps_train_as_eager_steps(tmp_path, bf16):
    base = TrainConfig(**TINY, device="cuda", bf16=bf16, run_dir=str(tmp_path / "eager"))
    eager = train_steps(base, 5)
    graphed = train_steps(dataclasses.replace(base, cuda_graph=True, run_dir=str(tmp_path / "graph")), 5)
    assert isinstance(graphed.step, GraphedStep) and graphed.step.graph is not None
    tolerance = dict(rtol=2e-2, atol=2e-3) if bf16 else dict(rtol=1e-4, atol=1e-5)
    for (name, a), b in zip(eager.core.state_dict().items(), graphed.core.state_dict().values()):
        torch.testing.assert_close(b, a, **tolerance, msg=name)
    torch.testing.assert_close(graphed.state.running, eager.state.running, rtol=1e-3, atol=1e-3)
    assert graphed.optimizer.param_groups[0]["lr"].item() == pytest.approx(eager.optimizer.param_groups[0]["lr"])


@requires_cuda
def test_a_graphed_run_resumes_and_matches_an_uninterrupted_one(tmp_path):
    from wtext.train import run
    from wtext.train import Interrupted

    base = TrainConfig(**{**TINY, "epochs": 2}, device="cuda", bf16=False, cuda_graph=True)
    whole = run(dataclasses.replace(base, run_dir=str(tmp_path / "whole")))
    with pytest.raises(Interrupted):
        run(dataclasses.replace(base, run_dir=str(tmp_path / "cut"), stop_after_steps=7))
    resumed = run(dataclasses.replace(base, run_dir=str(tmp_path / "cut"), resume=True))
    assert resumed["final_test_accuracy"] == pytest.approx(whole["final_test_accuracy"], abs=2 / 64)
