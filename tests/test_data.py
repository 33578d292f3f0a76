"""The meta-training minibatch stream: its passes, its split among processes, and resuming it;
the minibatches per training step, which follow the model."""

from __future__ import annotations

from itertools import islice
from types import SimpleNamespace

import pytest
import torch

from l2o_lightning.data import EndlessMinibatches, MNISTDataModule
from l2o_lightning.errors import ConfigError
from l2o_lightning.unroll import Unroll

N, BATCH, SEED = 22, 4, 3  # 5 minibatches a pass, the last 2 rows of each pass dropped
X, Y = torch.arange(float(N))[:, None], torch.arange(N)


def rows(stream: EndlessMinibatches, items: int) -> list[torch.Tensor]:
    """The row indices of the first ``items`` items (``y`` is the row index)."""
    return [y for _, y in islice(iter(stream), items)]


def test_the_stream_is_one_fresh_permutation_per_pass_cut_into_minibatches():
    generator = torch.Generator().manual_seed(SEED)
    passes = [torch.randperm(N, generator=generator)[:20].view(5, BATCH) for _ in range(3)]
    assert torch.equal(torch.stack(rows(EndlessMinibatches(X, Y, BATCH, SEED), 15)), torch.cat(passes))


def test_shard_r_of_w_keeps_minibatches_r_r_plus_w_of_each_single_process_item():
    k, shards = 3, 2  # an item of the single-process stream: 6 minibatches, spanning passes
    single = rows(EndlessMinibatches(X, Y, BATCH, SEED, batches_per_item=k * shards), 4)
    sharded = [rows(EndlessMinibatches(X, Y, BATCH, SEED, batches_per_item=k, shard=(r, shards)), 4)
               for r in range(shards)]
    for item, whole in enumerate(single):
        for r in range(shards):
            assert torch.equal(sharded[r][item], whole[r::shards])
        assert torch.equal(torch.stack([sharded[r][item] for r in range(shards)], 1).flatten(0, 1), whole)


def test_start_skips_whole_items_of_every_shard():
    for shard in ((0, 1), (0, 2), (1, 2)):
        stream = rows(EndlessMinibatches(X, Y, BATCH, SEED, batches_per_item=3, shard=shard), 7)
        resumed = rows(EndlessMinibatches(X, Y, BATCH, SEED, batches_per_item=3, shard=shard, start=4), 3)
        assert all(torch.equal(a, b) for a, b in zip(resumed, stream[4:], strict=True)), shard


def test_restart_every_replays_the_first_minibatches_from_any_start():
    first = rows(EndlessMinibatches(X, Y, BATCH, SEED), 7)
    replayed = rows(EndlessMinibatches(X, Y, BATCH, SEED, restart_every=7, start=5), 9)
    expected = first[5:] + first  # minibatches 5, 6, then 0, 1, ... again
    assert all(torch.equal(a, b) for a, b in zip(replayed, expected[:9], strict=True))


class _Model:
    """A stand-in LightningModule: only its ``unroll`` (a meta-training model's) matters to the
    data module."""

    def __init__(self, unroll: Unroll | None = None):
        if unroll is not None:
            self.unroll = unroll


def _set_up(model: _Model, **settings) -> MNISTDataModule:
    datamodule = MNISTDataModule(**settings)
    datamodule.trainer = SimpleNamespace(lightning_module=model)
    datamodule.setup("fit")
    return datamodule


def test_batches_per_step_follows_the_models_unroll_times_tasks():
    three_tasks = Unroll(length=5, n_iters=5, tasks_per_step=3)
    assert _set_up(_Model(three_tasks)).batches_per_step == 15
    assert _set_up(_Model()).batches_per_step == 1
    assert _set_up(_Model(three_tasks), batches_per_step=15).batches_per_step == 15
    assert MNISTDataModule().hparams.batches_per_step is None  # what the run saves: derived


def test_a_batches_per_step_the_model_does_not_take_is_refused():
    meta = (r"`data.batches_per_step` is 20, but a training step of _Model takes `model.unroll.length` x "
            r"`model.unroll.tasks_per_step` = 20 x 2 = 40 minibatches: .* set it to 40\.")
    with pytest.raises(ConfigError, match=meta):
        _set_up(_Model(Unroll(length=20, tasks_per_step=2)), batches_per_step=20)
    with pytest.raises(ConfigError, match=r"is 4, but a training step of _Model takes one minibatch: .* 1\."):
        _set_up(_Model(), batches_per_step=4)

