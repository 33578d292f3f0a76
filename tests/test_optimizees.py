"""The MLP optimizee: functional form == module form, layout round trip, symmetry groups."""

import pytest
import torch
from conftest import OPTIMIZEES

from l2o_lightning.errors import ConfigError
from l2o_lightning.optimizees import MLP


@pytest.mark.parametrize("name", OPTIMIZEES)
def test_functional_matches_module_loss_and_gradients(name):
    torch.manual_seed(0)
    model = MLP(**OPTIMIZEES[name])
    x, y = torch.randn(32, 784), torch.randint(0, 10, (32,))
    module_loss = torch.nn.functional.cross_entropy(model(x), y)
    module_grads = torch.autograd.grad(module_loss, list(model.parameters()))

    flat = model.flat_parameters().requires_grad_()
    functional_loss = model.functional_loss(flat, x, y)
    (flat_grad,) = torch.autograd.grad(functional_loss, flat)

    torch.testing.assert_close(functional_loss, module_loss, rtol=0, atol=0)
    expected = model.layout.flatten(dict(zip(model.layout.names, module_grads, strict=True)))
    torch.testing.assert_close(flat_grad, expected, rtol=0, atol=0)


def test_layout_round_trip_and_batched_views():
    model = MLP(hidden=[5, 4], batchnorm=True)
    flat = torch.arange(model.layout.numel, dtype=torch.float32)
    assert torch.equal(model.layout.flatten(model.layout.unflatten(flat)), flat)
    batched = model.layout.unflatten(torch.stack([flat, -flat]))
    assert batched["linears.0.weight"].shape == (2, 5, 784)
    assert torch.equal(batched["linears.2.bias"][1], -flat[model.layout.slices["linears.2.bias"]])


def test_sample_flat_is_seeded_and_follows_default_init_bounds():
    model = MLP(hidden=[20], batchnorm=True)
    a = model.sample_flat(torch.Generator().manual_seed(3))
    b = model.sample_flat(torch.Generator().manual_seed(3))
    c = model.sample_flat(torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and not torch.equal(a, c)
    params = model.layout.unflatten(a)
    assert params["linears.0.weight"].abs().max() <= 784**-0.5
    assert torch.equal(params["norms.0.weight"], torch.ones(20))


def test_symmetry_groups_follow_the_architecture():
    kinds = lambda m: [(g.kind, g.layer) for g in m.symmetry_groups()]  # noqa: E731
    assert kinds(MLP(hidden=[20], activation="leaky_relu")) == [
        ("rescale", "hidden0"), ("translation", "output")]
    assert kinds(MLP(hidden=[20], activation="sigmoid")) == [("translation", "output")]
    deep = MLP(hidden=[8, 8], activation="relu", batchnorm=True)
    assert kinds(deep) == [("scale", "hidden0"), ("rescale", "hidden0"),
                           ("scale", "hidden1"), ("rescale", "hidden1"), ("translation", "output")]
    rescale = deep.symmetry_groups()[1]
    assert rescale.incoming == ("norms.0.weight", "norms.0.bias")
    assert rescale.outgoing == ("linears.1.weight",)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(activation="tanh"), r"unknown activation 'tanh'.*`activation` of MLP.*leaky_relu"),
        (dict(hidden=[20, 0]), r"invalid hidden sizes \[20, 0\].*`hidden` of MLP.*positive"),
        (dict(hidden=[-3]), r"`hidden` of MLP"),
        (dict(hidden=[]), r"invalid hidden sizes \[\].*`hidden` of MLP"),
        (dict(hidden=20), r"invalid hidden sizes 20.*`hidden` of MLP"),
        (dict(hidden=[True]), r"invalid hidden sizes \[True\].*`hidden` of MLP"),
        (dict(in_features=0), r"`in_features` of MLP must be a positive integer, got 0"),
        (dict(num_classes=-1), r"`num_classes` of MLP must be a positive integer, got -1"),
    ],
)
def test_bad_optimizee_settings_name_the_setting(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        MLP(**kwargs)


def test_running_statistics_change_eval_mode_only_and_functional_forms_touch_no_buffer():
    torch.manual_seed(0)
    tracked = MLP(hidden=[8], activation="relu", batchnorm=True, track_running_stats=True)
    plain = MLP(hidden=[8], activation="relu", batchnorm=True)
    plain.load_state_dict({k: v for k, v in tracked.state_dict().items() if "running" not in k
                           and "num_batches" not in k})
    x = torch.rand(32, 784)
    flat = tracked.flat_parameters()
    before = tracked.norms[0].running_mean.clone()
    torch.testing.assert_close(tracked.functional_logits(flat, x), plain(x))  # batch statistics
    assert torch.equal(tracked.norms[0].running_mean, before)  # the functional form left it alone
    torch.testing.assert_close(tracked(x), plain(x))  # training mode: the same output ...
    assert not torch.equal(tracked.norms[0].running_mean, before)  # ... and the running mean moved
    tracked.eval(), plain.eval()
    norm = tracked.norms[0]
    hidden = tracked.linears[0](x)
    scale = norm.weight / torch.sqrt(norm.running_var + norm.eps)
    expected = (hidden - norm.running_mean) * scale + norm.bias
    torch.testing.assert_close(tracked(x), tracked.linears[1](torch.relu(expected)))
    assert (tracked(x) - plain(x)).abs().max() > 1e-3  # eval mode differs only with running statistics
