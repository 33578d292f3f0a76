"""MNIST as in-memory tensors: an endless stream of shuffled training minibatches for
step-based runs, the test split for evaluation, and fixed probe pools."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from functools import lru_cache
from itertools import islice
from pathlib import Path
from typing import Any, Literal

import lightning as L
import torch
from torch import Tensor
from torch.utils.data import DataLoader, IterableDataset, TensorDataset

from l2o_lightning.errors import ConfigError

DATA_DIR_ENV = "L2O_DATA_DIR"
DEFAULT_DATA_DIR = "./data"
MNIST_MEAN, MNIST_STD = 0.1307, 0.3081
MinibatchOrder = Literal["reshuffle", "loader"]


class DataNotFoundError(ConfigError):
    """MNIST is neither under the data root nor downloadable."""


def resolve_data_dir(data_dir: str | os.PathLike | None) -> Path:
    """The data root: the explicit setting, else ``$L2O_DATA_DIR``, else ``./data``."""
    return Path(data_dir or os.environ.get(DATA_DIR_ENV) or DEFAULT_DATA_DIR).expanduser()


MNIST_FILES = (
    "train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"
)


def missing_mnist_files(root: Path) -> list[str]:
    """The four uncompressed IDX files that are not under ``root/MNIST/raw``."""
    return [name for name in MNIST_FILES if not (root / "MNIST" / "raw" / name).is_file()]


@lru_cache(maxsize=8)
def load_mnist(
    root: Path, train: bool, download: bool = True, normalize: bool = True
) -> tuple[Tensor, Tensor]:
    """MNIST images as ``[N, 784]`` float32 and labels ``[N]`` int64. ``normalize``: ``x =
    (pixel/255 - 0.1307) / 0.3081``; otherwise the raw pixels ``x = pixel/255`` in ``[0, 1]``
    (the paper's inputs). Files missing under ``root/MNIST/raw`` are downloaded when
    ``download`` (:func:`download_mnist`); a root that is only read is never written to."""
    from torchvision.datasets import MNIST

    missing = missing_mnist_files(root)
    if missing and _is_files_folder(root):  # a second copy would be downloaded inside the first
        raise DataNotFoundError(_not_found(root, missing, "nothing was downloaded"))
    if missing and not download:
        raise DataNotFoundError(_not_found(root, missing, "downloading is off (`data.download` false)"))
    if missing:
        download_mnist(root, missing)
    dataset = MNIST(str(root), train=train, download=False)  # reads the IDX files, creates nothing
    images = dataset.data.reshape(len(dataset.data), -1).float().div_(255.0)
    if normalize:
        images.sub_(MNIST_MEAN).div_(MNIST_STD)
    return images, dataset.targets.long()


def download_mnist(root: Path, missing: list[str]) -> None:
    """Download MNIST into a temporary folder and move the ``missing`` files into
    ``root/MNIST/raw`` once all four arrived: a failed download creates nothing under ``root``."""
    from torchvision.datasets import MNIST

    with tempfile.TemporaryDirectory() as tmp:
        try:
            MNIST(tmp, download=True)
            raw = root / "MNIST" / "raw"
            raw.mkdir(parents=True, exist_ok=True)
            for name in missing:
                shutil.move(Path(tmp) / "MNIST" / "raw" / name, raw / name)
        except (RuntimeError, OSError) as err:
            reason = f"it could not be downloaded ({' '.join(str(err).split())})"
            raise DataNotFoundError(_not_found(root, missing, reason)) from None


def _is_files_folder(root: Path) -> bool:
    """Whether ``root`` holds the four IDX files itself (it is a ``MNIST/raw`` folder)."""
    return all((root / name).is_file() for name in MNIST_FILES)


def _not_found(root: Path, missing: list[str], why: str) -> str:
    """The one-paragraph error for MNIST files ``missing`` under ``root`` and ``why`` they were
    not fetched."""
    given = "none of" if len(missing) == len(MNIST_FILES) else "not all of"
    root = root.resolve()
    hint = ""
    if _is_files_folder(root):
        above = f"'{root.parent.parent}'" if root.parent.name == "MNIST" else "the folder holding MNIST/raw/"
        hint = f" '{root}' holds the IDX files itself: the data root is {above}."
    return (
        f"MNIST not found under '{root}': it holds {given} the four IDX files in MNIST/raw/ "
        f"(missing: {', '.join(missing)}) and {why}.{hint} Set the data root with the setting "
        f"`data.data_dir` (e.g. `--data.data_dir PATH`) or the environment variable {DATA_DIR_ENV}; it "
        "must contain MNIST/raw/ with the four IDX files. With internet access the default root ./data "
        "downloads MNIST."
    )


def loader_pass(n: int, batch_size: int, generator: torch.Generator) -> list[Tensor]:
    """The minibatch indices of one pass of ``DataLoader(dataset_of_n, batch_size,
    shuffle=True, generator=generator)``, drawn from ``generator`` as torch's loader draws
    them: one int64 for the workers' base seed, ``randperm(n)`` cut into minibatches of
    ``batch_size`` with the last, smaller one kept (the original study's data order), and one
    more ``randperm(n)`` that ``RandomSampler`` draws for its empty remainder when exhausted."""
    torch.empty((), dtype=torch.int64).random_(generator=generator)
    minibatches = list(torch.randperm(n, generator=generator).split(batch_size))
    torch.randperm(n, generator=generator)
    return minibatches


class EndlessMinibatches(IterableDataset):
    """Shuffled minibatches forever: each pass over the data is a new permutation drawn
    from a generator seeded with ``seed``. ``order="reshuffle"`` cuts a pass into
    ``len(x) // batch_size`` minibatches (the rest of a pass is dropped); ``order="loader"``
    draws and cuts it exactly as a shuffling ``torch.utils.data.DataLoader`` with that
    generator does (:func:`loader_pass`: the last minibatch of a pass is smaller).
    ``restart_every = R`` replays the first ``R`` minibatches of that sequence over and over
    (the original study builds a fresh seed-0 loader for every trajectory of ``R = n_iters``
    steps, so every trajectory sees the same minibatches).

    With ``batches_per_item = k > 1`` each item stacks ``k`` consecutive minibatches,
    ``x[k, batch_size, ...]`` and ``y[k, batch_size]`` (an item may span two passes);
    ``k = 1`` yields plain ``x[batch_size, ...]``, ``y[batch_size]``.

    ``shard = (r, W)`` splits the stream among ``W`` processes: the single-process stream of
    items of ``k * W`` minibatches, of which process ``r`` keeps minibatches ``r, r + W, ...``
    (its ``j``-th minibatch of an item is the item's ``j * W + r``-th). ``start`` skips that many
    items (resuming a run).
    """

    def __init__(
        self, x: Tensor, y: Tensor, batch_size: int, seed: int, batches_per_item: int = 1,
        shard: tuple[int, int] = (0, 1), start: int = 0, order: MinibatchOrder = "reshuffle",
        restart_every: int | None = None,
    ) -> None:
        super().__init__()
        if not 0 < batch_size <= len(x):
            raise ConfigError(
                f"`data.batch_size` must be in 1..{len(x)} (the training split's size), got {batch_size}."
            )
        self.x, self.y, self.batch_size, self.seed = x, y, batch_size, seed
        self.batches_per_item, self.shard, self.start = batches_per_item, shard, start
        if order not in ("reshuffle", "loader"):
            raise ConfigError(f"unknown `data.order` {order!r}; allowed: reshuffle, loader.")
        if restart_every is not None and restart_every <= 0:
            raise ConfigError(f"`data.restart_every` must be positive or null, got {restart_every}.")
        self.order, self.restart_every = order, restart_every

    def _passes(self) -> Iterator[list[Tensor]]:
        """The minibatch row indices of each pass over the data, pass after pass."""
        generator = torch.Generator().manual_seed(self.seed)
        n, batch_size = len(self.x), self.batch_size
        while True:
            if self.order == "loader":
                yield loader_pass(n, batch_size, generator)
            else:
                per_pass = n // batch_size
                yield list(torch.randperm(n, generator=generator)[: per_pass * batch_size].view(per_pass, -1))

    def _minibatch_indices(self, skip: int) -> Iterator[Tensor]:
        """Row indices of every minibatch of the stream, from minibatch ``skip`` on."""
        if self.restart_every is not None:
            replayed = list(islice((b for p in self._passes() for b in p), self.restart_every))
            skip %= self.restart_every
            while True:
                yield from replayed[skip:]
                skip = 0
        for minibatches in self._passes():
            if skip >= len(minibatches):
                skip -= len(minibatches)
                continue
            yield from minibatches[skip:]
            skip = 0

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        rank, shards = self.shard
        group = self.batches_per_item * shards
        indices = self._minibatch_indices(self.start * group)
        while True:
            minibatches = list(islice(indices, group))
            if len({len(b) for b in minibatches}) > 1:
                raise ConfigError(
                    "`data.order` loader keeps each pass's last, smaller minibatch, which cannot be stacked "
                    f"with full ones into a step of {group} minibatches (`data.batches_per_step` x "
                    "processes): "
                    "use `data.order` reshuffle, or `data.restart_every` no longer than a pass."
                )
            idx = torch.stack(minibatches).view(self.batches_per_item, shards, -1)[:, rank]
            idx = idx[0] if self.batches_per_item == 1 else idx
            yield self.x[idx], self.y[idx]


def minibatches_per_step(model: Any) -> tuple[int, str]:
    """The training minibatches one training step of ``model`` takes, and the phrase saying why:
    for a model that unrolls optimizee trajectories (meta-training: its ``unroll`` is an
    :class:`~l2o_lightning.unroll.Unroll`) one per task and optimizee step of a truncation, else one.

    >>> minibatches_per_step(None)
    (1, 'one minibatch')
    """
    unroll = getattr(model, "unroll", None)
    if not hasattr(unroll, "minibatches"):
        return 1, "one minibatch"
    return unroll.minibatches, unroll.minibatches_phrase()


class MNISTDataModule(L.LightningDataModule):
    """MNIST for optimizee runs measured in steps.

    Args:
        data_dir: data root; ``None`` reads ``$L2O_DATA_DIR``, else ``./data``.
        batch_size: training minibatch size (paper: 128).
        eval_batch_size: batch size over the test split.
        seed: seed of the training-batch order; ``None`` uses ``torch.initial_seed()``
            (what ``seed_everything`` set), so runs with different seeds see different orders.
        download: try to download MNIST when the files are missing.
        batches_per_step: training minibatches per training step; above 1 each training
            batch stacks them, ``x[k, batch_size, 784]``, ``y[k, batch_size]``. ``None`` (the
            default): as many as the model's training step takes (:func:`minibatches_per_step`,
            at ``setup``); a value given must be that number.
        normalize: inputs ``(pixel/255 - 0.1307) / 0.3081``; ``False``: raw pixels in ``[0, 1]``
            (the paper).
        order: ``reshuffle`` (full minibatches, a pass's remainder dropped) or ``loader`` (the
            paper: exactly a shuffling ``DataLoader``'s minibatches, :class:`EndlessMinibatches`).
        restart_every: replay the first ``restart_every`` minibatches of the order over and over
            (the paper's meta-training: 200, every trajectory sees the same ones); ``None``: no replay.

    Under DDP every process draws the same stream and keeps its share
    (``EndlessMinibatches.shard``). The number of training batches handed to the model is
    counted and saved in checkpoints (with the stream's seed), so a resumed run continues the
    stream where the checkpoint was taken.
    """

    def __init__(
        self,
        data_dir: str | None = None,
        batch_size: int = 128,
        eval_batch_size: int = 1000,
        seed: int | None = None,
        download: bool = True,
        batches_per_step: int | None = None,
        normalize: bool = True,
        order: MinibatchOrder = "reshuffle",
        restart_every: int | None = None,
    ) -> None:
        super().__init__()
        if batch_size <= 0 or eval_batch_size <= 0:
            raise ConfigError(
                f"batch sizes must be positive (got `data.batch_size`={batch_size}, "
                f"`data.eval_batch_size`={eval_batch_size})."
            )
        if batches_per_step is not None and batches_per_step <= 0:
            raise ConfigError(f"`data.batches_per_step` must be positive, got {batches_per_step}.")
        self.save_hyperparameters()
        self.data_dir = resolve_data_dir(data_dir)
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.seed = seed
        self.download = download
        self.batches_per_step = batches_per_step
        self.normalize, self.order, self.restart_every = normalize, order, restart_every
        EndlessMinibatches(torch.zeros(1, 1), torch.zeros(1), 1, 0, order=order, restart_every=restart_every)
        self.train_batches = 0  # training batches handed to the model so far (resumes the stream)
        self.train_seed: int | None = None

    def setup(self, stage: str) -> None:
        model = self.trainer.lightning_module if self.trainer is not None else None
        needed, why = minibatches_per_step(model)
        if self.batches_per_step is None:
            self.batches_per_step = needed
        elif self.batches_per_step != needed:
            raise ConfigError(
                f"`data.batches_per_step` is {self.batches_per_step}, but a training step of "
                f"{type(model).__name__} takes {why}: leave `data.batches_per_step` out (it follows the "
                f"model's settings) or set it to {needed}."
            )

    def prepare_data(self) -> None:
        self.train_tensors, self.test_tensors  # noqa: B018 - loads (or downloads) both splits

    @property
    def train_tensors(self) -> tuple[Tensor, Tensor]:
        return load_mnist(self.data_dir, True, self.download, self.normalize)

    @property
    def test_tensors(self) -> tuple[Tensor, Tensor]:
        return load_mnist(self.data_dir, False, self.download, self.normalize)

    def train_dataloader(self) -> DataLoader:
        if self.train_seed is None:
            self.train_seed = torch.initial_seed() if self.seed is None else self.seed
        trainer = self.trainer
        shard = (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)
        minibatches = EndlessMinibatches(
            *self.train_tensors, self.batch_size, self.train_seed,
            batches_per_item=self.batches_per_step, shard=shard, start=self.train_batches,
            order=self.order, restart_every=self.restart_every,
        )
        return DataLoader(minibatches, batch_size=None)

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        # called for the batch a step consumes, not for the one Lightning prefetches
        if self.trainer is not None and self.trainer.training:
            self.train_batches += 1
        return batch

    def state_dict(self) -> dict[str, int | None]:
        return {"train_batches": self.train_batches, "train_seed": self.train_seed}

    def load_state_dict(self, state_dict: dict[str, int | None]) -> None:
        self.train_batches, self.train_seed = state_dict["train_batches"], state_dict["train_seed"]

    def _test_loader(self) -> DataLoader:
        return DataLoader(TensorDataset(*self.test_tensors), batch_size=self.eval_batch_size)

    val_dataloader = _test_loader
    test_dataloader = _test_loader

    def probe_pool(self, n: int | Literal["all"], seed: int = 0) -> tuple[Tensor, Tensor]:
        """A fixed pool of training samples (same ``seed`` -> same pool): ``n`` distinct ones
        drawn at random, or with ``n = "all"`` the whole training split in the order of one
        pass of a shuffling ``DataLoader`` of batch size ``batch_size`` whose generator is
        seeded with ``seed`` (:func:`loader_pass`): its minibatches are consecutive runs of
        ``batch_size`` rows, the last run shorter (MNIST, 128: 468 of 128 and one of 96)."""
        x, y = self.train_tensors
        if n == "all":
            idx = torch.cat(loader_pass(len(x), self.batch_size, torch.Generator().manual_seed(seed)))
            return x[idx], y[idx]
        if not 0 < n <= len(x):
            raise ConfigError(f"probe pool size must be in 1..{len(x)}, got {n}.")
        idx = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))[:n]
        return x[idx], y[idx]
