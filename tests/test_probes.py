"""Probes on real MNIST runs: every documented tag is written, and training is unchanged."""

import math
from collections import defaultdict
from functools import partial
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from lion_pytorch import Lion
from subprocess_helpers import callbacks_config
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from l2o_lightning.callbacks import CovarianceProbe, SymmetryProbe, TailIndexProbe, UpdateStatsProbe
from l2o_lightning.callbacks.base import NoiseProbe
from l2o_lightning.checkpoints import CHECKPOINT_KEY, checkpoint_entry
from l2o_lightning.cli import main
from l2o_lightning.data import MNISTDataModule, loader_pass
from l2o_lightning.dynamics import per_sample
from l2o_lightning.dynamics.tail_index import tail_index
from l2o_lightning.errors import ConfigError
from l2o_lightning.learned import LSTMOptimizerNet
from l2o_lightning.optim import L2O, LionSGD
from l2o_lightning.optimizee_module import OptimizeeModule
from l2o_lightning.optimizees import MLP
from l2o_lightning.tb import read_scalars, summary_values

REPO = Path(__file__).resolve().parents[1]
STEPS = 35
# every_n_steps = 10 (configs/probes/all.yaml, but symmetry: 1): the 1-based steps k = 1, 10, 20, 30,
# logged at global_step = k - 1
PROBED_STEPS = [0, 9, 19, 29]
# and the histograms at the paper's steps 1, 5, 10, 30 (of 1, 5, 10, 30, 100, 500)
PROBED_HISTOGRAM_STEPS = [0, 4, 9, 19, 29]
SCALAR_TAGS = (
    [f"symmetry/{kind}/{source}/{stat}" for kind in ("rescale", "scale", "translation")
     for source in ("update", "grad") for stat in ("abs_sum", "sum_abs", "normalized")]
    + ["tail_index/grad", "tail_index/update", "covariance/top_eig", "covariance/trace"]
    + ["update/abs_mean", "update/abs_max", "update/norm"]
)
BN_RELU_PARAMS = [f"{layer}.{kind}" for layer in ("linears.0", "linears.1", "norms.0")
                  for kind in ("weight", "bias")]


def fit(save_dir: Path, *extra: str) -> Path:
    """``l2o fit`` on the BN + ReLU optimizee with Adam (lr 0.03); returns the run dir."""
    main(["fit", "-c", str(REPO / "configs/meta_test/bn_relu.yaml"),
          "-c", str(REPO / "configs/optimizers/adam.yaml"), *extra,
          "--trainer.max_steps", str(STEPS), "--trainer.logger.init_args.save_dir", str(save_dir),
          "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"])
    (run_dir,) = save_dir.glob("**/version_*")
    return run_dir


@pytest.fixture(scope="module")
def probed_run(mnist_dir, tmp_path_factory):
    return fit(tmp_path_factory.mktemp("probed"), "-c", str(REPO / "configs/probes/all.yaml"))


@pytest.mark.slow
def test_probes_do_not_change_the_trajectory(probed_run, tmp_path):
    plain = read_scalars(fit(tmp_path))["train/loss"]
    probed = read_scalars(probed_run)["train/loss"]
    assert len(plain) == STEPS
    assert probed == plain


@pytest.mark.slow
def test_all_probes_write_every_documented_tag(probed_run):
    scalars = read_scalars(probed_run)
    for tag in SCALAR_TAGS:
        every_step = tag.startswith("symmetry/")  # configs/probes/all.yaml: SymmetryProbe every step
        assert [step for step, _ in scalars[tag]] == (list(range(STEPS)) if every_step else PROBED_STEPS), tag
        assert all(math.isfinite(value) for _, value in scalars[tag]), tag
    accumulator = EventAccumulator(str(probed_run), size_guidance={"histograms": 0})
    accumulator.Reload()
    expected = {f"{kind}_hist/{name}" for kind in ("update", "grad") for name in BN_RELU_PARAMS}
    assert set(accumulator.Tags()["histograms"]) == expected
    events = accumulator.Histograms("update_hist/linears.0.weight")
    assert [event.step for event in events] == PROBED_HISTOGRAM_STEPS
    # |update| bins are log-spaced (a log-x plot resolves magnitudes) and hold every weight
    histogram = events[1].histogram_value
    limits = torch.tensor(histogram.bucket_limit, dtype=torch.float64)[1:]  # after the zeros bucket
    torch.testing.assert_close(limits[1:] / limits[:-1], (limits[1] / limits[0]).expand(len(limits) - 1))
    assert sum(histogram.bucket) == 784 * 20 and histogram.max == pytest.approx(max(limits).item())


@pytest.mark.slow
def test_probed_values_are_the_applied_step(probed_run):
    scalars = dict((tag, dict(series)) for tag, series in read_scalars(probed_run).items())
    # Adam's first step moves some coordinate by ~lr = 0.03; the gradient obeys every symmetry
    assert scalars["update/abs_max"][0] == pytest.approx(0.03, rel=1e-3)
    for kind in ("rescale", "scale", "translation"):
        assert max(scalars[f"symmetry/{kind}/grad/normalized"].values()) < 1e-5
        assert min(scalars[f"symmetry/{kind}/update/normalized"].values()) > 1e-3


OPTIMIZERS = {
    "sgd": lambda params: torch.optim.SGD(params, lr=0.1, momentum=0.9),
    "adam": lambda params: torch.optim.Adam(params, lr=0.03),
    "lion": lambda params: Lion(params, lr=1e-3),
    "lion_sgd": lambda params: LionSGD(params),
}


def short_fit(tmp_path, make_optimizer, callbacks, logger=None):
    """Three steps of a small BN optimizee; returns its final parameters and the RNG state."""
    torch.manual_seed(0)
    module = OptimizeeModule(hidden=[8], activation="relu", batchnorm=True)
    module.configure_optimizers = lambda: make_optimizer(module.parameters())
    trainer = L.Trainer(
        max_steps=3, callbacks=callbacks, logger=logger or TensorBoardLogger(tmp_path), limit_val_batches=0,
        enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
    )
    trainer.fit(module, datamodule=MNISTDataModule(batch_size=16, seed=0))
    return module.optimizee.flat_parameters(), torch.get_rng_state()


def all_probes(unit):
    return [SymmetryProbe(1), UpdateStatsProbe(1), TailIndexProbe(1, num_units=4, unit=unit),
            CovarianceProbe(1, num_units=4, unit=unit)]


@pytest.fixture(scope="module")
def l2o_checkpoint(tmp_path_factory):
    """A random (not meta-trained) LSTM optimizer saved as a meta-training checkpoint."""
    path = tmp_path_factory.mktemp("l2o") / "l2o.ckpt"
    torch.manual_seed(0)
    torch.save({CHECKPOINT_KEY: checkpoint_entry(LSTMOptimizerNet())}, path)
    return str(path)


@pytest.mark.slow
@pytest.mark.parametrize("name", [*OPTIMIZERS, "l2o"])
def test_probes_leave_params_and_rng_alone_with_every_optimizer(name, mnist_dir, tmp_path, request):
    if name == "l2o":
        checkpoint = request.getfixturevalue("l2o_checkpoint")
        make_optimizer = partial(L2O, checkpoint=checkpoint)
    else:
        make_optimizer = OPTIMIZERS[name]
    plain = short_fit(tmp_path / "plain", make_optimizer, [])
    unit = "sample" if name == "adam" else "batch"  # single samples of a BN model: Jacobian rows
    probed = short_fit(tmp_path / "probed", make_optimizer, all_probes(unit))
    assert torch.equal(probed[0], plain[0]) and torch.equal(probed[1], plain[1])
    (run_dir,) = (tmp_path / "probed").glob("*/version_*")
    scalars = read_scalars(run_dir)
    assert [step for step, _ in scalars["covariance/top_eig"]] == [0, 1, 2]
    assert all(math.isfinite(value) for tag in SCALAR_TAGS for _, value in scalars[tag])


class AppliedUpdates(L.Callback):
    """Records each step's applied update ``theta_after - theta_before`` of the optimizee."""

    def __init__(self):
        self.updates = []

    def on_train_batch_start(self, trainer, pl_module, *args):
        self._before = pl_module.optimizee.flat_parameters()

    def on_train_batch_end(self, trainer, pl_module, *args):
        self.updates.append(pl_module.optimizee.flat_parameters() - self._before)


def test_update_stats_are_the_hand_computed_sizes_of_the_applied_update(mnist_dir, tmp_path):
    applied = AppliedUpdates()
    short_fit(tmp_path, OPTIMIZERS["sgd"], [UpdateStatsProbe(1), applied])
    (run_dir,) = tmp_path.glob("*/version_*")
    scalars = read_scalars(run_dir)
    for step, u in enumerate(applied.updates):
        expected = {"update/norm": u.square().sum().sqrt(), "update/abs_mean": u.abs().sum() / u.numel(),
                    "update/abs_max": u.abs().max()}
        assert u.abs().sum() > 2 * expected["update/norm"]  # the L1 norm would not pass for the L2 norm
        for tag, value in expected.items():
            assert scalars[tag][step] == (step, pytest.approx(value.item(), rel=1e-5)), tag


def test_probes_warn_and_stand_down_without_tensorboard(mnist_dir, tmp_path):
    with pytest.warns(UserWarning, match="logs to TensorBoard only") as caught:
        short_fit(tmp_path, OPTIMIZERS["adam"], all_probes("batch"), logger=CSVLogger(tmp_path))
    warned = {str(w.message).split()[0] for w in caught if "logs to TensorBoard only" in str(w.message)}
    assert warned == {"SymmetryProbe", "UpdateStatsProbe", "TailIndexProbe", "CovarianceProbe"}


@pytest.mark.slow
def test_probes_follow_the_trajectory_during_meta_training(run_cli, tmp_path):
    def meta_train(*probes: str) -> dict:
        run_cli("fit", "-c", "configs/meta_train/leaky_relu.yaml", *probes,
                "--model.unroll.n_iters", "20", "--model.init_args.trajectories", "2",
                "--model.evaluation.val_n_iters", "5", "--model.evaluation.tasks", "1",
                "--trainer.logger.init_args.version", str(len(probes)))
        return read_scalars(tmp_path / "logs" / "meta_train" / "leaky_relu" / f"version_{len(probes)}")

    plain, scalars = meta_train(), meta_train("-c", "configs/probes/all.yaml")
    assert scalars["meta/loss"] == plain["meta/loss"]  # the probes leave meta-training alone
    # x = meta-training's running optimizee step: 2 trajectories x 20 steps
    assert [s for s, _ in scalars["symmetry/rescale/update/abs_sum"]] == list(range(40))
    for tag in ("update/norm", "tail_index/grad", "tail_index/update", "covariance/top_eig"):
        assert [s for s, _ in scalars[tag]] == [0, 9, 19, 29, 39]  # k = 1, 10, 20, 30, 40
    # the LSTM's steps break the rescale symmetry, the gradient obeys it
    assert min(v for _, v in scalars["symmetry/rescale/update/normalized"]) > 1e-4
    assert max(v for _, v in scalars["symmetry/rescale/grad/normalized"]) < 1e-5
    # minibatch gradient noise is lighter-tailed than Cauchy; the LSTM's update noise is not zero
    assert all(1 < v <= 2 for _, v in scalars["tail_index/grad"])
    assert all(v > 0 for _, v in scalars["covariance/top_eig"])


# every probe at every_n_steps = 10 (the noise probes over pools of 2 minibatches)
EVERY_10 = [{"class_path": f"l2o_lightning.callbacks.{name}", "init_args": {"every_n_steps": 10, **pool}}
            for name, pool in (("SymmetryProbe", {}), ("UpdateStatsProbe", {}),
                               ("TailIndexProbe", {"num_units": 2}), ("CovarianceProbe", {"num_units": 2}))]
PROBE_PREFIXES = ("symmetry/", "tail_index/", "covariance/", "update/", "update_hist/", "grad_hist/")


def probe_steps(run_dir: Path) -> dict[str, list[int]]:
    """``tag -> steps`` of every probe tag (scalar or histogram) in a run's event files, as written."""
    steps = defaultdict(list)
    for step, value in summary_values(run_dir):
        if value.tag.startswith(PROBE_PREFIXES):
            steps[value.tag].append(step)
    return dict(steps)


def expected_probe_steps(kinds: tuple[str, ...], params: list[str]) -> dict[str, list[int]]:
    """Every probe tag of an optimizee with symmetry ``kinds`` and parameters ``params`` -> its
    steps over 35 optimizee steps at every_n_steps = 10: the 1-based steps k = 1, 10, 20, 30,
    logged at global_step = k - 1, and for the histograms also the paper's k = 5."""
    scalars = [f"symmetry/{kind}/{source}/{stat}" for kind in kinds for source in ("update", "grad")
               for stat in ("abs_sum", "sum_abs", "normalized")]
    scalars += ["tail_index/grad", "tail_index/update", "covariance/top_eig", "covariance/trace",
                "update/abs_mean", "update/abs_max", "update/norm"]
    histograms = [f"{kind}_hist/{name}" for kind in ("update", "grad") for name in params]
    return {**{tag: [0, 9, 19, 29] for tag in scalars}, **{tag: [0, 4, 9, 19, 29] for tag in histograms}}


@pytest.mark.slow
def test_every_probe_logs_at_steps_1_and_every_10_of_a_meta_test(run_cli, tmp_path):
    config = callbacks_config(tmp_path / "probes.yaml", EVERY_10, append=True)
    run_cli("fit", "-c", "configs/meta_test/bn_relu.yaml", "-c", "configs/optimizers/adam.yaml",
            "-c", str(config), "--trainer.max_steps", "35")
    (run_dir,) = (tmp_path / "logs").glob("**/version_*")
    assert probe_steps(run_dir) == expected_probe_steps(("rescale", "scale", "translation"), BN_RELU_PARAMS)
    # x = global_step before the update: the step of that batch's train/loss
    assert [step for step, _ in read_scalars(run_dir)["train/loss"]] == list(range(35))


@pytest.mark.slow
def test_every_probe_logs_at_positions_1_and_every_10_of_meta_training(run_cli, tmp_path):
    config = callbacks_config(tmp_path / "probes.yaml", EVERY_10, append=True)
    run_cli("fit", "-c", "configs/meta_train/leaky_relu.yaml", "-c", str(config),
            "--model.unroll.n_iters", "35", "--model.unroll.length", "5",
            "--data.batches_per_step", "5", "--model.init_args.trajectories", "1",
            "--trainer.limit_val_batches", "0")
    run_dir = tmp_path / "logs" / "meta_train" / "leaky_relu" / "version_0"
    params = [f"linears.{layer}.{kind}" for layer in (0, 1) for kind in ("weight", "bias")]
    # x = meta-training's running optimizee step (position): one trajectory of 7 truncations of 5
    assert probe_steps(run_dir) == expected_probe_steps(("rescale", "translation"), params)
    assert [step for step, _ in read_scalars(run_dir)["meta/loss"]] == list(range(7))


class PublishedSteps(L.Callback):
    """A meta-training step listener (by its method alone): keeps each published optimizee step
    and what its rule gives the step's own gradient (the rule holds while the step is shown)."""

    seen: list = []

    def on_meta_training_step(self, trainer, pl_module, step):
        PublishedSteps.seen.append((step, step.rule(step.grad[None])[0]))


def test_the_noise_probes_update_rule_during_meta_training_is_the_steps_own(run_cli, monkeypatch):
    """Every optimizee step is published to a callback with ``on_meta_training_step``, and the
    rule it carries, applied to the step's own gradient, gives the update the LSTM applied: it
    runs from the first task's state before the step (not after it)."""
    monkeypatch.setattr(PublishedSteps, "seen", [])
    run_cli("fit", "-c", "configs/meta_train/leaky_relu.yaml", "--model.unroll.n_iters", "4",
            "--model.unroll.length", "2", "--data.batches_per_step", "2",
            "--model.init_args.trajectories", "1", "--trainer.limit_val_batches", "0",
            "--trainer.callbacks+", f"{__name__}.PublishedSteps")
    steps = [step for step, _ in PublishedSteps.seen]
    assert [step.position for step in steps] == [0, 1, 2, 3]
    for step, from_rule in PublishedSteps.seen:
        torch.testing.assert_close(from_rule, step.update, rtol=1e-5, atol=1e-7)
    assert not torch.allclose(steps[0].update, steps[1].update)  # a state-dependent, changing update



class Recorder:
    """Stands in for the TensorBoard logger: keeps the scalars logged."""

    def __init__(self):
        self.metrics = {}

    def log_metrics(self, metrics, step):
        self.metrics.update(metrics)


def probe_once(probe, groups, model, theta, rule):
    """The scalars ``probe`` logs at one step for a pool of unit ``groups`` (no Trainer)."""
    probe._logger, probe._pool = Recorder(), groups
    probe.probe(None, 0, model, theta, rule)
    return probe._logger.metrics


def autograd_gradient(model, theta, x, y):
    """Reference: the gradient of one unit's mean loss by plain autograd."""
    w = theta.clone().requires_grad_()
    return torch.autograd.grad(model.functional_loss(w, x, y), w)[0]


def test_mean_update_reference_is_the_mean_of_the_units_updates():
    """By hand on 3 units and a nonlinear rule: u_ref = (U(g_1) + U(g_2) + U(g_3)) / 3, not U(mean g)."""
    torch.manual_seed(0)
    model = MLP([2], "leaky_relu")
    theta, x, y = model.flat_parameters(), torch.randn(3, 5, 784), torch.randint(0, 10, (3, 5))
    calls = []

    def rule(rows):  # elementwise and nonlinear, like Adam's first step
        calls.append(len(rows))
        return 0.1 + rows.sign() * rows.square()

    g = [autograd_gradient(model, theta, x[i], y[i]) for i in range(3)]
    u = [rule(gi[None])[0] for gi in g]
    mean_update = (u[0] + u[1] + u[2]) / 3
    update_of_mean = rule(((g[0] + g[1] + g[2]) / 3)[None])[0]
    calls.clear()
    assert (mean_update - update_of_mean).abs().max() > 1e-3 * mean_update.abs().max()
    noise_of = {ref: torch.stack([ui - ref for ui in u]) for ref in (mean_update, update_of_mean)}
    grad_noise = torch.stack([gi - (g[0] + g[1] + g[2]) / 3 for gi in g])

    NoiseProbe._shared.clear()
    pool = [(x, y)], model, theta, rule
    tail = probe_once(TailIndexProbe(1, num_units=3), *pool)
    cov = probe_once(CovarianceProbe(1, num_units=3), *pool)
    other = probe_once(CovarianceProbe(1, num_units=3, reference="update_of_mean"), *pool)
    assert calls == [4]  # one pool, shared by both probes and both references: 3 units + their mean
    assert tail["tail_index/grad"] == pytest.approx(tail_index(grad_noise).item(), rel=1e-5)
    assert tail["tail_index/update"] == pytest.approx(tail_index(noise_of[mean_update]).item(), rel=1e-5)
    for stats, c in ((cov, noise_of[mean_update]), (other, noise_of[update_of_mean])):
        dense = sum(torch.outer(ci, ci) for ci in c.double()) / 3  # [D, D]
        assert stats["covariance/top_eig"] == pytest.approx(torch.linalg.eigvalsh(dense)[-1].item(), rel=1e-4)
        assert stats["covariance/trace"] == pytest.approx(dense.trace().item(), rel=1e-5)
    # centred off the mean, K gains the offset's outer product: trace + ||mean_update - U(mean g)||^2
    offset = (mean_update - update_of_mean).double().square().sum().item()
    assert other["covariance/trace"] - cov["covariance/trace"] == pytest.approx(offset, rel=1e-3)


NOISE_TAGS = ["tail_index/grad", "tail_index/update", "covariance/top_eig", "covariance/trace"]


def noise_scalars(tmp_path, make_optimizer, reference):
    """The noise probes' scalars at steps 0, 1, 2 of :func:`short_fit` with ``reference``."""
    probes = [TailIndexProbe(1, num_units=4, reference=reference),
              CovarianceProbe(1, num_units=4, reference=reference)]
    short_fit(tmp_path / reference, make_optimizer, probes)
    (run_dir,) = (tmp_path / reference).glob("*/version_*")
    scalars = read_scalars(run_dir)
    return {tag: [value for _, value in scalars[tag]] for tag in NOISE_TAGS}


@pytest.mark.slow
@pytest.mark.parametrize("name", ["sgd", "adam"])
def test_the_two_references_agree_for_sgds_linear_rule_only(name, mnist_dir, tmp_path):
    mean_update, update_of_mean = (
        noise_scalars(tmp_path, OPTIMIZERS[name], ref) for ref in ("mean_update", "update_of_mean")
    )
    assert mean_update["tail_index/grad"] == update_of_mean["tail_index/grad"]  # centred at the mean gradient
    if name == "sgd":  # U(g) = -lr (momentum buffer + g): the mean of the updates is the update of the mean
        for tag, values in mean_update.items():
            assert values == pytest.approx(update_of_mean[tag], rel=1e-4), tag
    else:  # Adam's update of the mean gradient is off the mean update: more noise around it, every step
        for tag in ("covariance/top_eig", "covariance/trace"):
            assert all(b > 1.5 * a for a, b in zip(mean_update[tag], update_of_mean[tag], strict=True)), tag


class NoiseSpy:
    """Mixin: keeps ``(theta, noise)`` of every computation of the pool's noise."""

    def noise(self, model, theta, rule):
        noise = super().noise(model, theta, rule)
        self.seen.append((theta, noise))
        return noise


class TailSpy(NoiseSpy, TailIndexProbe):
    seen = []


class CovarianceSpy(NoiseSpy, CovarianceProbe):
    seen = []


@pytest.mark.slow
def test_num_units_all_is_every_minibatch_of_one_loader_pass(mnist_dir, tmp_path, monkeypatch):
    calls, unit_gradients = [], per_sample.unit_gradients
    monkeypatch.setattr(per_sample, "unit_gradients",
                        lambda *args: calls.append(tuple(args[2].shape)) or unit_gradients(*args))
    tail, cov = TailSpy(1, num_units="all"), CovarianceSpy(1, num_units=93)
    torch.manual_seed(0)
    module = OptimizeeModule()
    module.configure_optimizers = lambda: torch.optim.Adam(module.parameters(), lr=0.03)
    trainer = L.Trainer(
        max_steps=1, callbacks=[tail, cov], logger=TensorBoardLogger(tmp_path), limit_val_batches=0,
        enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
    )
    datamodule = MNISTDataModule(seed=0)
    trainer.fit(module, datamodule=datamodule)
    # one batched call for the 468 full minibatches, one for the ragged last; the 93-unit pool is its own
    assert calls == [(468, 128, 784), (1, 96, 784), (93, 128, 784)]
    ((theta, noise),) = tail.seen
    assert len(cov.seen) == 1 and cov.seen[0][1].grads.shape == (93, 15910)
    minibatches = loader_pass(60000, 128, torch.Generator().manual_seed(0))
    assert len(minibatches) == 469 and len(minibatches[-1]) == 96
    assert noise.grads.shape == noise.updates.shape == (469, 15910)
    x, y = datamodule.train_tensors
    for i in (0, 234, 468):  # row i: the gradient of the loader's i-th minibatch
        expected = autograd_gradient(module.optimizee, theta, x[minibatches[i]], y[minibatches[i]])
        torch.testing.assert_close(noise.grads[i], expected)
    torch.testing.assert_close(noise.grad_ref, noise.grads.mean(0))  # every minibatch counts once
    (run_dir,) = tmp_path.glob("*/version_*")
    scalars = read_scalars(run_dir)
    assert all(math.isfinite(value) for tag in NOISE_TAGS for _, value in scalars[tag])


@pytest.mark.parametrize("settings, match", [
    (dict(num_units=1), "`num_units` of TailIndexProbe must be an integer of at least 2 or 'all', got 1"),
    (dict(num_units="every"), "`num_units` of TailIndexProbe must be .* got 'every'"),
    (dict(num_units="all", unit="sample"), "`num_units: all` of TailIndexProbe .* needs `unit: batch`"),
    (dict(reference="mean"), "`reference` of TailIndexProbe must be one of mean_update, update_of_mean"),
])
def test_bad_noise_settings_are_refused(settings, match):
    with pytest.raises(ConfigError, match=match):
        TailIndexProbe(**settings)
