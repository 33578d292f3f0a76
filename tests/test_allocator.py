"""keep_freed_memory: freed blocks are reused instead of faulted in again (what each
meta-training truncation does with the memory autograd saved)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from l2o_lightning.allocator import keep_freed_memory

PAGES = 40 * 8 * 2**20 // 4096  # the second round's pages: 40 blocks of 8 MiB
ROUNDS = """
import resource, sys, torch
from l2o_lightning.allocator import keep_freed_memory
if sys.argv[1] == "keep":
    assert keep_freed_memory()
def round_():
    blocks = [torch.ones(2 * 2**20) for _ in range(40)]  # 40 x 8 MiB, written
    del blocks
round_()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
round_()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def second_round_page_faults(mode: str) -> int:
    result = subprocess.run([sys.executable, "-c", ROUNDS, mode], capture_output=True, text=True, check=True)
    return int(result.stdout.split()[-1])


def test_freed_blocks_are_reused_instead_of_faulted_in_again():
    if not keep_freed_memory():
        pytest.skip("the C library is not glibc: malloc's settings are left alone")
    plain, kept = second_round_page_faults("plain"), second_round_page_faults("keep")
    assert plain > 0.9 * PAGES  # glibc's defaults: every page of the second round faulted in again
    assert kept < 0.5 * plain, (plain, kept)
