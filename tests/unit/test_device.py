"""A run's device settings: deterministic kernels on a CPU (issue 19, item 7), not inherited by a GPU run."""

import torch

from rlhf_bench.core.device import reproducible_on


def test_deterministic_kernels_on_a_cpu_and_off_elsewhere():
    before = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        reproducible_on(torch.device("cpu"))
        assert torch.are_deterministic_algorithms_enabled() and torch.is_deterministic_algorithms_warn_only_enabled()
        reproducible_on(torch.device("meta"))  # stands for a GPU here: any device but the CPU
        assert not torch.are_deterministic_algorithms_enabled()
        torch.set_num_threads(1)  # one thread adds in one order: no need, and no cost
        reproducible_on(torch.device("cpu"))
        assert not torch.are_deterministic_algorithms_enabled()
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(before[0], warn_only=before[1])
