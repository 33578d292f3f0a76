"""Optimizee steps per second: meta-training the LSTM optimizer (ours, and the original
study's code shape), meta-testing with :class:`~l2o_lightning.optim.L2O`, and a plain Adam
step, on the paper's MLP (784-20-10, batch 128), data in memory, one process. Not a test.

Usage: python benchmarks/bench_meta.py [--threads N] [--repeats R] [--clock wall|cpu]
                                        [--two-cores] [--compile] [--smoke]

Times per optimizee step are the median and the best of ``repeats`` round-robin
measurements (the best is the least disturbed by other processes on a shared machine);
``--clock cpu`` measures the process's CPU time instead of wall time (steadier on a machine
shared with other jobs; one thread). Ratios divide by the Adam step, and meta-training's
speed-up by the original-shaped meta-training (:class:`OriginalShapedRun`: stock
``nn.LSTMCell`` layers, a loop over parameter tensors and a full ``backward(retain_graph=True)``
at every step, as the original ``do_fit``). ``--two-cores`` also measures, alternating three
times, the aggregate steps/s of two of our meta-trainings in two one-thread processes (how the
paper configs use a 2-core machine) and of the original-shaped one in one process with 2
threads (the original code's way), and the ratio of their medians: run it on an otherwise idle
machine.
``--compile`` adds meta-training with ``compile: true`` and checks that it computes the same
meta-loss and meta-gradient. ``--smoke`` runs every measurement once, in seconds, the two-core
comparison included (the test suite does).
"""

from __future__ import annotations

import argparse
import multiprocessing
import resource
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

from l2o_lightning.allocator import keep_freed_memory
from l2o_lightning.checkpoints import checkpoint_entry
from l2o_lightning.data import load_mnist, resolve_data_dir
from l2o_lightning.learned import LSTMOptimizerNet, LSTMState, preprocess_gradients
from l2o_lightning.lstm_kernels import EAGER_KERNELS, PointwiseKernels, compiled_kernels, native_library
from l2o_lightning.optim import L2O
from l2o_lightning.optimizees import MLP
from l2o_lightning.unroll import Trajectory, learned_step, meta_objective, unroll_truncation

BATCH, POOL = 128, 64
CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}
clock = CLOCKS["wall"]


def timings(fn: Callable[[], object], repeats: int) -> tuple[float, float]:
    """``(median, best)`` seconds of ``fn()`` over ``repeats`` calls after one warm-up."""
    fn()
    samples = []
    for _ in range(repeats):
        start = clock()
        fn()
        samples.append(clock() - start)
    return statistics.median(samples), min(samples)


def round_robin(
    runs: dict[str, tuple[Callable[[], object], int, int]], repeats: int
) -> dict[str, tuple[float, float]]:
    """``name -> (median, best)`` seconds per optimizee step. ``runs`` maps a name to
    ``(fn, calls, steps_per_call)``; every repeat times ``calls`` calls of each run in turn
    (enough of them to amortise the cold caches a previous run leaves behind),
    so a burst of load from other processes hits all runs alike."""
    samples: dict[str, list[float]] = {name: [] for name in runs}
    for fn, _, _ in runs.values():
        fn()
    for _ in range(repeats):
        for name, (fn, calls, steps) in runs.items():
            start = clock()
            for _ in range(calls):
                fn()
            samples[name].append((clock() - start) / (calls * steps))
    return {name: (statistics.median(ts), min(ts)) for name, ts in samples.items()}


def minibatch_pool() -> tuple[torch.Tensor, torch.Tensor]:
    """``POOL`` training minibatches ``[POOL, BATCH, 784]`` (MNIST if present, else noise)."""
    generator = torch.Generator().manual_seed(0)
    try:
        x, y = load_mnist(resolve_data_dir(None), True, download=False)
        idx = torch.randperm(len(x), generator=generator)[: POOL * BATCH].view(POOL, BATCH)
        return x[idx], y[idx]
    except Exception as err:  # noqa: BLE001 - a benchmark runs on noise rather than stop
        print(f"(MNIST unavailable: {err.__class__.__name__}; timing on random data)")
        return torch.randn(POOL, BATCH, 784, generator=generator), torch.randint(0, 10, (POOL, BATCH))


class TorchOptimizerRun:
    """An ordinary optimizee step: forward, backward, ``optimizer.step()``."""

    def __init__(self, make_optimizer: Callable, xs: torch.Tensor, ys: torch.Tensor) -> None:
        torch.manual_seed(0)
        self.model = MLP()
        self.optimizer = make_optimizer(self.model.parameters())
        self.xs, self.ys, self.i = xs, ys, 0

    def step(self) -> None:
        x, y = self.xs[self.i % POOL], self.ys[self.i % POOL]
        self.i += 1
        self.optimizer.zero_grad()
        F.cross_entropy(self.model(x), y).backward()
        self.optimizer.step()


class MetaTrainRun:
    """Truncations of meta-training on one optimizee (as ``MetaTrainModule.training_step``)."""

    def __init__(self, xs: torch.Tensor, ys: torch.Tensor, kernels: PointwiseKernels | None = None) -> None:
        keep_freed_memory()  # as MetaTrainModule.on_fit_start
        torch.manual_seed(0)
        self.optimizee = MLP().requires_grad_(False)
        self.net = LSTMOptimizerNet()
        if kernels is not None:
            self.net.kernels = kernels
        self.meta_optimizer = torch.optim.Adam(self.net.parameters(), lr=0.01)
        self.xs, self.ys = xs.unsqueeze(1), ys.unsqueeze(1)
        self.restart()

    def restart(self) -> None:
        params = self.optimizee.sample_flat(torch.Generator().manual_seed(0))[None]
        self.trajectory = Trajectory(params, self.net.initial_state(params.shape))

    def truncation(self, unroll: int) -> torch.Tensor:
        start = self.trajectory.step % (POOL - unroll)
        xs, ys = self.xs[start : start + unroll], self.ys[start : start + unroll]
        trajectory, losses, penalty = unroll_truncation(
            self.net, self.optimizee, self.trajectory, xs, ys, lambda p, g, u, s: u.new_zeros(())
        )
        loss = meta_objective(losses, "sum") + penalty
        self.meta_optimizer.zero_grad()
        loss.backward()
        self.meta_optimizer.step()
        self.trajectory = trajectory.detach()
        if self.trajectory.step >= 200:
            self.restart()
        return loss.detach()


def stock_lstm_step(
    net: LSTMOptimizerNet, grad: torch.Tensor, state: LSTMState
) -> tuple[torch.Tensor, LSTMState]:
    """``net``'s step computed with its ``nn.LSTMCell`` layers and head called as modules (stock
    PyTorch kernels and autograd), one row per coordinate of ``grad[D]``."""
    x, h_out, c_out = preprocess_gradients(grad, net.preproc_p), [], []
    for layer, cell in enumerate(net.cells):
        x, c = cell(x, (state.h[layer], state.c[layer]))
        h_out.append(x)
        c_out.append(c)
    return net.out_mult * net.head(x).squeeze(-1), LSTMState(torch.stack(h_out), torch.stack(c_out))


class OriginalShapedRun:
    """Meta-training shaped like the original study's ``do_fit``: the optimizee is an
    ``nn.Module`` whose parameters carry the graph, every step calls
    ``loss.backward(retain_graph=True)`` through the whole truncation so far, then feeds each
    parameter tensor's (detached) gradient to the LSTM in its own call, writing the new states
    into slices of fresh state tensors; the meta-loss ``sum_t L_t`` is back-propagated at the
    truncation's end. The same formulas as ours through torch's own ``nn.LSTMCell`` and
    ``nn.Linear`` (:func:`stock_lstm_step`), as the original."""

    def __init__(self, xs: torch.Tensor, ys: torch.Tensor) -> None:
        torch.manual_seed(0)
        self.net = LSTMOptimizerNet()
        self.meta_optimizer = torch.optim.Adam(self.net.parameters(), lr=0.01)
        self.xs, self.ys, self.step = xs, ys, 0
        self.model = MLP()
        self.params = {n: p.detach().clone().requires_grad_() for n, p in self.model.named_parameters()}
        coords = sum(p.numel() for p in self.params.values())
        self.state = self.net.initial_state((coords,))

    def truncation(self, unroll: int) -> torch.Tensor:
        params, state, total = dict(self.params), self.state, 0.0
        for _ in range(unroll):
            x, y = self.xs[self.step % POOL], self.ys[self.step % POOL]
            self.step += 1
            for p in params.values():
                p.retain_grad()  # every step's parameters are new tensors: their .grad starts empty
            loss = F.cross_entropy(torch.func.functional_call(self.model, params, (x,)), y)
            loss.backward(retain_graph=True)
            total = total + loss
            h = torch.zeros_like(state.h)
            c = torch.zeros_like(state.c)
            offset, new_params = 0, {}
            for name, p in params.items():
                size = p.numel()
                part = LSTMState(state.h[:, offset : offset + size], state.c[:, offset : offset + size])
                update, new = stock_lstm_step(self.net, p.grad.detach().reshape(size), part)
                h[:, offset : offset + size], c[:, offset : offset + size] = new.h, new.c
                new_params[name] = p + update.view_as(p)
                offset += size
            params, state = new_params, LSTMState(h, c)
        self.meta_optimizer.zero_grad()
        total.backward()
        self.meta_optimizer.step()
        self.params = {n: p.detach().requires_grad_() for n, p in params.items()}
        self.state = state.detach()
        return total.detach()


def retained_bytes_per_step(run: MetaTrainRun, unroll: int) -> float:
    """Bytes of the tensors the autograd graph of one truncation saves for backward
    (each storage counted once), divided by ``unroll``."""
    trajectory, losses, _ = unroll_truncation(
        run.net, run.optimizee, run.trajectory, run.xs[:unroll], run.ys[:unroll],
        lambda p, g, u, s: u.new_zeros(()),
    )
    storages, seen, stack = {}, set(), [meta_objective(losses, "sum").grad_fn]
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        saved = [getattr(node, name) for name in dir(node) if name.startswith("_saved_")]
        if hasattr(node, "saved_tensors"):  # custom autograd.Function
            saved += list(node.saved_tensors)
        for tensor in saved:
            if isinstance(tensor, torch.Tensor):
                storage = tensor.untyped_storage()
                storages[storage.data_ptr()] = storage.nbytes()
        stack.extend(next_node for next_node, _ in node.next_functions)
    return sum(storages.values()) / unroll


def position_profile(run: MetaTrainRun, unroll: int, repeats: int) -> list[float]:
    """Best forward seconds of the step at each position 1..unroll inside a truncation,
    plus the backward and meta-step of the whole truncation divided by ``unroll``."""
    best = [float("inf")] * (unroll + 1)
    for _ in range(repeats):
        params, state = run.trajectory.params, run.trajectory.state
        losses = []
        for k in range(unroll):
            start = clock()
            params, state, loss, *_ = learned_step(
                run.net, run.optimizee, params, state, run.xs[k], run.ys[k]
            )
            losses.append(loss)
            best[k] = min(best[k], clock() - start)
        start = clock()
        run.meta_optimizer.zero_grad()
        meta_objective(torch.stack(losses), "sum").backward()
        run.meta_optimizer.step()
        best[unroll] = min(best[unroll], (clock() - start) / unroll)
    return best


def compile_check(eager: MetaTrainRun, compiled: MetaTrainRun) -> None:
    """Compare the first truncation's meta-loss and meta-gradient of eager and compiled kernels."""
    start = clock()
    losses = [run.truncation(20) for run in (eager, compiled)]
    print(f"\ntorch.compile: first truncations incl. compilation {clock() - start:.1f} s")
    grads = [torch.cat([p.grad.flatten() for p in run.net.parameters()]) for run in (eager, compiled)]
    scale = grads[0].abs().max().item()
    print(f"  meta-loss eager {losses[0].item():.6f} compiled {losses[1].item():.6f}; "
          f"max |meta-grad diff| / max |meta-grad| = {(grads[0] - grads[1]).abs().max().item() / scale:.2e}")


def steps_per_second(truncation: Callable[[int], object], unroll: int, seconds: float) -> float:
    """Optimizee steps/s (wall clock) of ``truncation(unroll)`` calls: one warm-up call, then
    calls until ``seconds`` have passed (at least one)."""
    truncation(unroll)
    start, steps = time.perf_counter(), 0
    while steps == 0 or time.perf_counter() - start < seconds:
        truncation(unroll)
        steps += unroll
    return steps / (time.perf_counter() - start)


def meta_training_throughput(unroll: int, seconds: float) -> float:
    """:func:`steps_per_second` of :class:`MetaTrainRun` in this process, one thread (a pool worker)."""
    torch.set_num_threads(1)
    return steps_per_second(MetaTrainRun(*minibatch_pool()).truncation, unroll, seconds)


def two_core_comparison(unroll: int, seconds: float, rounds: int) -> None:
    """Aggregate steps/s of two meta-trainings side by side (two one-thread processes) against
    the original-shaped meta-training in one process with 2 threads, in ``rounds`` alternations
    of ``seconds`` each (a burst of load from other processes hits both alike); the medians and
    their ratio."""
    ours, original = [], []
    threads = torch.get_num_threads()
    with multiprocessing.get_context("spawn").Pool(2) as pool:
        for _ in range(rounds):
            ours.append(sum(pool.starmap(meta_training_throughput, [(unroll, seconds)] * 2)))
            torch.set_num_threads(2)
            baseline = OriginalShapedRun(*minibatch_pool())
            original.append(steps_per_second(baseline.truncation, unroll, seconds))
            torch.set_num_threads(threads)
    ours_rate, original_rate = statistics.median(ours), statistics.median(original)
    listed = {name: ", ".join(f"{rate:.1f}" for rate in rates) for name, rates in (("ours", ours),
                                                                                  ("original", original))}
    print(f"\nboth cores, wall clock, median of {rounds} alternations of ~{seconds:.0f} s: ours "
          f"(2 processes x 1 thread) {ours_rate:.1f} steps/s ({listed['ours']}); original-shaped "
          f"(1 process x 2 threads) {original_rate:.1f} steps/s ({listed['original']}); "
          f"ratio {ours_rate / original_rate:.1f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--clock", choices=sorted(CLOCKS), default="wall", help="wall time or CPU time")
    parser.add_argument("--two-cores", action="store_true", help="also compare both cores' throughput")
    parser.add_argument("--compile", action="store_true", help="also time compile: true")
    parser.add_argument("--smoke", action="store_true", help="every measurement once, in seconds")
    args = parser.parse_args()
    if args.smoke:
        args.repeats = 1
    if args.threads:
        torch.set_num_threads(args.threads)
    global clock
    clock = CLOCKS[args.clock]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s)")
    xs, ys = minibatch_pool()

    with tempfile.TemporaryDirectory() as tmp:
        torch.manual_seed(0)
        checkpoint = Path(tmp) / "l2o.ckpt"
        torch.save({"l2o": checkpoint_entry(LSTMOptimizerNet())}, checkpoint)
        adam = TorchOptimizerRun(lambda p: torch.optim.Adam(p, lr=0.03), xs, ys)
        l2o = TorchOptimizerRun(lambda p: L2O(p, str(checkpoint)), xs, ys)
    meta, original = MetaTrainRun(xs, ys), OriginalShapedRun(xs, ys)
    unroll = 4 if args.smoke else 20
    runs = {
        "Adam step": (adam.step, 20 if args.smoke else 200, 1),
        "L2O meta-testing": (l2o.step, 2 if args.smoke else 20, 1),
        "meta-training": (lambda: meta.truncation(unroll), 1, unroll),
        "original-shaped": (lambda: original.truncation(unroll), 1, unroll),
    }
    if native_library() is not None:
        eager = MetaTrainRun(xs, ys, EAGER_KERNELS)
        runs["meta-training eager"] = (lambda: eager.truncation(unroll), 1, unroll)
    if args.compile:
        compiled = MetaTrainRun(xs, ys, compiled_kernels())
        compile_check(MetaTrainRun(xs, ys, EAGER_KERNELS), compiled)
        runs["meta-training compiled"] = (lambda: compiled.truncation(20), 1, 20)
    rows = round_robin(runs, args.repeats)

    base_median, base_best = rows["Adam step"]
    print(f"\n{'':22s} {'steps/s':>8s} {'ms/step':>8s} {'ratio':>7s} | {'best ms':>8s} {'ratio':>7s}")
    for name, (median, best) in rows.items():
        print(f"{name:22s} {1 / median:8.1f} {median * 1e3:8.2f} {median / base_median:6.1f}x "
              f"| {best * 1e3:8.2f} {best / base_best:6.1f}x")
    speedup = rows["original-shaped"][0] / rows["meta-training"][0]
    l2o_ratio = rows["L2O meta-testing"][0] / base_median
    print(f"\nmeta-training vs original-shaped: {speedup:.1f}x faster (median, one process, same run)")
    print(f"L2O meta-test step / Adam step: {l2o_ratio:.1f}x")
    print(f"peak RSS of this process: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")
    if args.two_cores or args.smoke:
        two_core_comparison(unroll, 0.0 if args.smoke else 20.0, 1 if args.smoke else 3)
    if args.smoke:
        return

    print("\nmeta-training, best ms per step by position inside a truncation of 20 (forward):")
    profile = position_profile(meta, 20, max(3, args.repeats // 3))
    print("  " + " ".join(f"{k + 1}:{t * 1e3:.1f}" for k, t in enumerate(profile[:-1])))
    print(f"  backward + meta-step, per step: {profile[-1] * 1e3:.1f} ms")

    print("\nmeta-training by unroll length (ms per optimizee step, median / best):")
    for unroll in (5, 20, 50):
        median, best = timings(lambda unroll=unroll: meta.truncation(unroll), max(3, args.repeats // 3))
        print(f"  unroll {unroll:3d}: {median / unroll * 1e3:7.2f} / {best / unroll * 1e3:7.2f}")

    print(f"\nautograd memory retained per step: {retained_bytes_per_step(meta, 20) / 2**20:.1f} MiB")


if __name__ == "__main__":
    main()
