"""Meta-training: meta-gradients, truncation boundaries, and real CLI runs on MNIST."""

from __future__ import annotations

import re

import pytest
import torch
from torch.func import functional_call

from l2o_lightning import meta
from l2o_lightning.data import EndlessMinibatches
from l2o_lightning.errors import ConfigError
from l2o_lightning.learned import LSTMOptimizerNet
from l2o_lightning.optimizees import MLP
from l2o_lightning.tb import read_scalars
from l2o_lightning.unroll import (
    Trajectory,
    Unroll,
    first_order_loss,
    meta_objective,
    optimizee_loss_and_grad,
    symmetry_penalty,
    unroll_truncation,
    validate_symmetry_reg,
)


def no_penalty(params: torch.Tensor, grad: torch.Tensor, update: torch.Tensor, state) -> torch.Tensor:
    return update.new_zeros(())


def tiny_problem(steps: int = 3):
    """A float64 MLP 4-3-3 on random data, a small LSTM, and a fresh trajectory."""
    torch.manual_seed(0)
    optimizee = MLP(hidden=[3], in_features=4, num_classes=3).double().requires_grad_(False)
    net = LSTMOptimizerNet(hidden_size=4).double()
    params = optimizee.sample_flat(torch.Generator().manual_seed(0))[None]
    xs = torch.randn(steps, 1, 5, 4, dtype=torch.float64)
    ys = torch.randint(0, 3, (steps, 1, 5))
    trajectory = Trajectory(params, net.initial_state(params.shape, dtype=torch.float64))
    return optimizee, net, trajectory, xs, ys


def test_first_order_loss_has_the_loss_value_and_the_gradient_as_derivative():
    params = torch.randn(2, 5, requires_grad=True)
    loss, grad = torch.tensor([1.5, 2.5]), torch.randn(2, 5)
    surrogate = first_order_loss(loss, grad, params)
    assert torch.equal(surrogate.detach(), loss)
    (derivative,) = torch.autograd.grad(surrogate.sum(), params)
    assert torch.equal(derivative, grad)


@pytest.mark.parametrize("kind", ["sum", "log_sum"])
def test_meta_gradient_matches_finite_differences(kind):
    """Over a 3-step unroll the meta-gradient is the derivative of the meta-loss with the
    optimizee gradients held at their values (no second derivatives, as in the paper)."""
    optimizee, net, trajectory, xs, ys = tiny_problem()
    _, losses, _ = unroll_truncation(net, optimizee, trajectory, xs, ys, no_penalty)
    names = [name for name, _ in net.named_parameters()]
    meta_grad = torch.autograd.grad(meta_objective(losses, kind), list(net.parameters()))

    recorded_grads, params, state = [], trajectory.params, trajectory.state
    with torch.no_grad():
        for x, y in zip(xs, ys, strict=True):
            _, grad = optimizee_loss_and_grad(optimizee, params, x, y)
            recorded_grads.append(grad)
            update, state = net(grad, state)
            params = params + update

    def meta_loss_with_frozen_gradients(weights: dict[str, torch.Tensor]) -> torch.Tensor:
        params, state, step_losses = trajectory.params, trajectory.state, []
        for x, y, grad in zip(xs, ys, recorded_grads, strict=True):
            step_losses.append(optimizee.functional_loss(params[0], x[0], y[0])[None])
            update, state = functional_call(net, weights, (grad, state))
            params = params + update
        return meta_objective(torch.stack(step_losses), kind)

    weights = {name: p.detach() for name, p in net.named_parameters()}
    generator = torch.Generator().manual_seed(1)
    eps = 1e-6
    for _ in range(4):
        direction = {n: torch.randn(w.shape, generator=generator, dtype=w.dtype) for n, w in weights.items()}
        plus = meta_loss_with_frozen_gradients({n: weights[n] + eps * direction[n] for n in names})
        minus = meta_loss_with_frozen_gradients({n: weights[n] - eps * direction[n] for n in names})
        numeric = (plus - minus) / (2 * eps)
        analytic = sum((g * direction[n]).sum() for n, g in zip(names, meta_grad, strict=True))
        assert analytic.abs() > 1e-6
        assert torch.allclose(analytic, numeric, rtol=1e-6, atol=1e-9)


def test_no_gradient_crosses_a_truncation():
    optimizee, net, trajectory, xs, ys = tiny_problem(steps=2)
    start = Trajectory(trajectory.params.clone().requires_grad_(), trajectory.state)
    first, _, _ = unroll_truncation(net, optimizee, start, xs, ys, no_penalty)
    assert first.params.grad_fn is not None and first.state.h.grad_fn is not None

    boundary = first.detach()
    assert boundary.params.grad_fn is None and not boundary.state.c.requires_grad
    assert boundary.step == 2
    second, losses, _ = unroll_truncation(net, optimizee, boundary, xs, ys, no_penalty)
    meta_loss = meta_objective(losses, "sum")
    earlier = [start.params, first.params, first.state.h, first.state.c]
    gradients = torch.autograd.grad(meta_loss, earlier, retain_graph=True, allow_unused=True)
    assert all(g is None for g in gradients)
    assert any(g.abs().sum() > 0 for g in torch.autograd.grad(meta_loss, list(net.parameters())))


def test_stacked_minibatches_follow_the_single_batch_order():
    x, y = torch.arange(40.0)[:, None], torch.arange(40)
    single = iter(EndlessMinibatches(x, y, batch_size=4, seed=3))
    stacked = iter(EndlessMinibatches(x, y, batch_size=4, seed=3, batches_per_item=3))
    xs, ys = next(stacked)
    assert xs.shape == (3, 4, 1) and ys.shape == (3, 4)
    for k in range(3):
        xb, yb = next(single)
        assert torch.equal(xs[k], xb) and torch.equal(ys[k], yb)


def test_symmetry_penalty_vanishes_for_gradient_steps_and_is_differentiable():
    torch.manual_seed(0)
    optimizee = MLP(hidden=[6], in_features=5, num_classes=4).double()
    params = optimizee.sample_flat(torch.Generator().manual_seed(1)).double()[None]
    x, y = torch.randn(1, 16, 5, dtype=torch.float64), torch.randint(0, 4, (1, 16))
    _, grad = optimizee_loss_and_grad(optimizee, params, x, y)
    sgd_step = -0.1 * grad
    assert symmetry_penalty(sgd_step, params, optimizee, ["rescale"], beta=1.0) < 1e-12
    update = torch.randn_like(params, requires_grad=True)
    penalty = symmetry_penalty(update, params, optimizee, ["rescale", "translation"], beta=0.5)
    assert penalty > 1e-3
    (grad_update,) = torch.autograd.grad(penalty, update)
    assert grad_update.abs().sum() > 0
    doubled = symmetry_penalty(update, params, optimizee, ["rescale", "translation"], beta=1.0)
    torch.testing.assert_close(doubled, 2 * penalty)


def test_abs_sum_penalty_is_beta_times_the_absolute_signed_sum_and_ignores_the_point():
    """The paper's form: beta * |sum_j d_j| with d_j = <v_j, theta_tilde_j> (v = -u), computed
    by hand for the rescale groups of a one-hidden-layer MLP; no gradient reaches theta."""
    torch.manual_seed(0)
    optimizee = MLP(hidden=[6], in_features=5, num_classes=4).double()
    params = optimizee.sample_flat(torch.Generator().manual_seed(1)).double()[None].requires_grad_()
    update = torch.randn_like(params, requires_grad=True)
    theta, v = optimizee.layout.unflatten(params[0]), optimizee.layout.unflatten(-update[0])
    w1, b1, w2 = "linears.0.weight", "linears.0.bias", "linears.1.weight"
    d = (v[w1] * theta[w1]).sum(1) + v[b1] * theta[b1] - (v[w2] * theta[w2]).sum(0)  # [6 neurons]
    penalty = symmetry_penalty(update, params, optimizee, ["rescale"], beta=0.5, form="abs_sum")
    torch.testing.assert_close(penalty, 0.5 * d.sum().abs())
    sum_abs = symmetry_penalty(update, params, optimizee, ["rescale"], beta=0.5, form="sum_abs")
    torch.testing.assert_close(sum_abs, 0.5 * d.abs().sum())
    assert sum_abs > penalty  # signs cancel in the paper's form
    grad_update, grad_params = torch.autograd.grad(penalty, (update, params), allow_unused=True)
    assert grad_update.abs().sum() > 0 and grad_params is None


def test_symmetry_reg_settings_are_validated_against_the_optimizee():
    leaky, bn = MLP(hidden=[4]), MLP(hidden=[4], activation="relu", batchnorm=True)
    assert validate_symmetry_reg(None, leaky) is None
    assert validate_symmetry_reg({"beta": 0.0}, leaky) is None
    expected = {"beta": 0.5, "kinds": ["rescale"], "form": "sum_abs"}
    assert validate_symmetry_reg({"beta": 0.5}, leaky) == expected
    assert validate_symmetry_reg({"beta": 1, "kinds": ["scale"]}, bn)["kinds"] == ["scale"]
    with pytest.raises(ConfigError, match=r"model.symmetry_reg.*\['rescale', 'translation'\]"):
        validate_symmetry_reg({"beta": 1.0, "kinds": ["scale"]}, leaky)
    with pytest.raises(ConfigError, match="beta must be >= 0"):
        validate_symmetry_reg({"beta": -1.0}, leaky)


# ---------------------------------------------------------------------------- CLI runs on MNIST
TINY_META_TRAINING = (
    "--model.unroll.n_iters", "40", "--model.init_args.trajectories", "3",
    "--model.evaluation.val_n_iters", "20", "--model.evaluation.tasks", "2",
    "--trainer.val_check_interval", "6",
)


def meta_losses(run_dir) -> list[float]:
    return [value for _, value in read_scalars(run_dir)["meta/loss"]]


@pytest.mark.slow
def test_meta_training_learns_checkpoints_and_feeds_l2o(run_cli, tmp_path):
    run_cli("fit", "-c", "configs/meta_train/leaky_relu.yaml", *TINY_META_TRAINING)
    run_dir = tmp_path / "logs" / "meta_train" / "leaky_relu" / "version_0"
    losses = meta_losses(run_dir)
    assert len(losses) == 6
    # truncations 0, 2 and 4 each start a fresh optimizee: the LSTM has learned in between
    assert losses[4] < losses[0] / 2
    scalars = read_scalars(run_dir)
    assert {"val/final_loss", "val/mean_loss", "val/final_test_acc", "meta/trajectory_step"} <= set(scalars)
    # the loss at fixed optimizee steps (1-based, up to val_n_iters = 20) over meta-training
    curve_tags = {tag for tag in scalars if "loss_curve" in tag}
    assert curve_tags == {"val/loss_curve/step_1", "val/loss_curve/step_10", "val/loss_curve/step_20"}
    assert scalars["val/loss_curve/step_20"] == scalars["val/final_loss"]  # at every validation

    checkpoint = run_dir / "checkpoints" / "last.ckpt"
    assert checkpoint.is_file() and list((run_dir / "checkpoints").glob("best-step*.ckpt"))
    assert torch.load(checkpoint, weights_only=True)["l2o"]["net_config"]["out_mult"] == 0.1

    run_cli("fit", "-c", "configs/meta_test/leaky_relu.yaml", "-c", "configs/optimizers/l2o.yaml",
            "--optimizer.checkpoint", str(checkpoint), "--trainer.max_steps", "15")
    meta_tested = tmp_path / "logs" / "meta_test" / "leaky_relu" / "l2o" / "version_0"
    train_loss = read_scalars(meta_tested)["train/loss"]
    assert len(train_loss) == 15 and train_loss[-1][1] < train_loss[0][1]

    run_cli("test", "-c", "configs/meta_train/leaky_relu.yaml", "--ckpt_path", str(checkpoint),
            "--model.evaluation.test_n_iters", "30", "--model.evaluation.tasks", "2")
    assert sorted(p.name for p in run_dir.parent.iterdir()) == ["version_0"]  # logged inside the run
    tested = read_scalars(run_dir / "test" / "last" / "version_0")
    assert len(tested["test/loss_curve"]) == 30
    assert tested["test/final_loss"][0][1] < tested["test/loss_curve"][0][1]
    # the mean over the 2 final optimizees of their accuracy on the 10000 test images: a count
    # of correct images over 20000, above chance
    correct = tested["test/final_test_acc"][0][1] * 2 * 10_000
    assert correct == pytest.approx(round(correct), abs=0.01) and correct > 0.2 * 10_000


@pytest.mark.slow
def test_regularized_meta_training_logs_its_penalty(run_cli, tmp_path):
    fewer = ("--model.unroll.n_iters", "20", "--model.init_args.trajectories", "2",
             "--model.evaluation.val_n_iters", "5", "--model.evaluation.tasks", "1")
    run_cli("fit", "-c", "configs/meta_train/leaky_relu_reg.yaml", *fewer,
            "--model.init_args.symmetry_reg.beta", "0.5")
    scalars = read_scalars(tmp_path / "logs" / "meta_train" / "leaky_relu_reg" / "version_0")
    penalties = [value for _, value in scalars["meta/symmetry_penalty"]]
    assert len(penalties) == 2 and all(p > 0 for p in penalties)
    # meta-loss "sum" of one task: the 20 step losses of the truncation (their mean is logged) + the penalty
    for (_, loss), (_, mean_step_loss), penalty in zip(
        scalars["meta/loss"], scalars["meta/optimizee_loss"], penalties, strict=True
    ):
        assert loss == pytest.approx(20 * mean_step_loss + penalty, rel=1e-6)


@pytest.mark.slow
def test_same_seed_same_meta_training_metrics(run_cli, tmp_path):
    """Every logged metric (meta-losses of 2 tasks per step, validation curves and test-split
    scores) repeats exactly with the same seed; another seed changes them."""
    fewer = ("--model.unroll.n_iters", "20", "--model.unroll.length", "10",
             "--model.unroll.tasks_per_step", "2",
             "--model.init_args.trajectories", "4", "--model.evaluation.val_n_iters", "5",
             "--model.evaluation.tasks", "1", "--trainer.val_check_interval", "2",
             "--trainer.limit_val_batches", "1")
    for _ in range(2):
        run_cli("fit", "-c", "configs/meta_train/leaky_relu.yaml", *fewer, "--seed_everything", "7")
    run_cli("fit", "-c", "configs/meta_train/leaky_relu.yaml", *fewer, "--seed_everything", "8")
    runs = tmp_path / "logs" / "meta_train" / "leaky_relu"
    first, again, other = (read_scalars(runs / f"version_{v}") for v in range(3))
    assert len(first["meta/loss"]) == 4 and len(first["val/final_test_acc"]) == 2
    assert first == again
    assert first["meta/loss"] != other["meta/loss"]


def test_grad_clip_rescales_the_meta_gradient_to_its_norm(run_cli, monkeypatch):
    """Same seed, so the first meta-step's gradient is the same with and without clipping:
    clipped, it points the same way with norm ``grad_clip``."""
    seen = []

    def record(module, optimizer):
        params = [p for group in optimizer.param_groups for p in group["params"]]
        seen.append(torch.cat([p.grad.flatten() for p in params if p.grad is not None]))

    monkeypatch.setattr(meta.MetaTrainModule, "on_before_optimizer_step", record)
    tiny = ("--model.unroll.n_iters", "4", "--model.unroll.length", "2",
            "--model.init_args.trajectories", "1", "--trainer.limit_val_batches", "0")
    run_cli("fit", "-c", "configs/meta_train/leaky_relu.yaml", *tiny)
    unclipped = seen[0]
    clip = unclipped.norm().item() / 3
    run_cli("fit", "-c", "configs/meta_train/leaky_relu.yaml", *tiny,
            "--model.init_args.grad_clip", repr(clip))
    assert len(seen) == 4
    clipped = seen[2]
    assert clipped.norm().item() == pytest.approx(clip, rel=1e-5)
    torch.testing.assert_close(clipped, unclipped / 3, rtol=1e-5, atol=1e-9)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        (("--data.batches_per_step", "5"),
         r"`data.batches_per_step` is 5, but a training step of MetaTrainModule takes `model.unroll.length` "
         r"x `model.unroll.tasks_per_step` = 20 x 1 = 20 minibatches: leave `data.batches_per_step` out .* "
         r"to 20"),
        (("--data.batches_per_step", "20", "--model.unroll.tasks_per_step", "2"),
         r"is 20, but .* = 20 x 2 = 40 minibatches: .* set it to 40"),
        (("--model.unroll.tasks_per_step",
          "0"), r"`model.unroll.tasks_per_step` must be positive, got 0"),
        (("--model.unroll.n_iters",
          "50"), r"`model.unroll.n_iters` \(50\) must be a positive multiple"),
        (("--model.unroll.length", "1"), r"`model.unroll.length` must be at least 2, got 1"),
        (("--model.evaluation.tasks", "0"), r"`model.evaluation.tasks` must be positive, got 0"),
        (("--model.optimizee.activation",
          "tanh"), r"unknown activation 'tanh' \(`model.optimizee.activation`\)"),
        (("--model.net.hidden_size", "0"), r"`model.net.hidden_size` must be a positive integer, got 0"),
        (("--model.out_mult",
          "0.2"), r"`model.init_args.out_mult` \(on the command line\) is not a setting of "
         r"l2o_lightning.meta.MetaTrainModule; it is `model.init_args.net.init_args.out_mult`"),
        (("--model.unroll.lenght",
          "3"), r"`model.init_args.unroll.lenght` \(on the command line\) is not a setting "
         r"of l2o_lightning.meta.MetaTrainModule's `unroll`; did you mean `length`\?"),
    ],
)
def test_bad_meta_training_settings_are_named(run_cli, capsys, override, message):
    with pytest.raises(SystemExit) as exit_info:
        run_cli("fit", "-c", "configs/meta_train/leaky_relu.yaml", *override)
    assert exit_info.value.code == 2
    assert re.search(message, capsys.readouterr().err)


def test_a_training_batch_of_other_size_names_batches_per_step():
    """The module's own check (the datamodule's setup refuses a mismatched ``data.batches_per_step``
    first; this catches a batch from elsewhere)."""
    module = meta.MetaTrainModule(unroll=Unroll(length=2, n_iters=2, tasks_per_step=2))
    message = (r"= 2 x 2 = 4 minibatches, the training batch holds 3 \(`data.batches_per_step`\): leave "
               r"`data.batches_per_step` unset \(it follows the model\) or set it to 4")
    with pytest.raises(ConfigError, match=message):
        module.truncation_minibatches((torch.zeros(3, 5, 784), torch.zeros(3, 5)))


def test_missing_l2o_checkpoint_in_the_cli_names_the_setting(run_cli, capsys):
    with pytest.raises(SystemExit):
        run_cli("fit", "-c", "configs/meta_test/leaky_relu.yaml", "-c", "configs/optimizers/l2o.yaml",
                "--trainer.max_steps", "2")
    assert "(setting `optimizer.checkpoint`) does not exist" in capsys.readouterr().err
