"""The fast engine's thread count follows how busy the CPUs are with other programs (Part 1 of issue 12)."""

from __future__ import annotations

import sys

import pytest
import torch

from DeLightSAMLib.engines.threads import ThreadGovernor, cpu_busy_counter, threads_to_use


class FakeMachine:
    """A clock, the CPUs' busy seconds and this process's CPU seconds, advanced by hand."""

    def __init__(self) -> None:
        self.time = self.busy = self.own = 0.0

    def run(self, seconds: float, own_cpus: float, other_cpus: float) -> None:
        self.time += seconds
        self.own += seconds * own_cpus
        self.busy += seconds * (own_cpus + other_cpus)

    def governor(self, cpus: int = 2) -> ThreadGovernor:
        return ThreadGovernor(busy=lambda: self.busy, cpus=cpus, clock=lambda: self.time, own_cpu=lambda: self.own)


@pytest.fixture()
def two_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize(
    "cpus, others, most, expected",
    [
        (2, 0.0, 2, 2),
        (2, 0.2, 2, 2),
        (2, 0.5, 2, 1),
        (2, 1.0, 2, 1),
        (2, 2.0, 2, 1),
        (8, 1.0, 8, 7),
        (8, 0.1, 4, 4),
        (16, 15.9, 16, 1),
    ],
)
def test_threads_are_the_cpus_others_leave_free(cpus, others, most, expected):
    assert threads_to_use(cpus, others, most) == expected


def test_governor_follows_the_load_between_blocks_and_restores_torch(two_threads):
    machine = FakeMachine()
    governor = machine.governor()
    seen = []
    machine.run(1.0, own_cpus=0.0, other_cpus=0.0)  # quiet before the first image
    with governor.running():
        seen.append(torch.get_num_threads())
        machine.run(0.1, own_cpus=2.0, other_cpus=0.0)
        governor.checkpoint()  # under the 0.15 s window: no decision yet
        seen.append(torch.get_num_threads())
        machine.run(0.2, own_cpus=1.3, other_cpus=0.7)  # a busy program appears: our threads get descheduled
        governor.checkpoint()
        seen.append(torch.get_num_threads())
        machine.run(0.3, own_cpus=1.0, other_cpus=1.0)  # still there
        governor.checkpoint()
        seen.append(torch.get_num_threads())
        machine.run(0.3, own_cpus=1.0, other_cpus=0.0)  # it stopped: a CPU is idle
        governor.checkpoint()
        seen.append(torch.get_num_threads())
    assert seen == [2, 2, 1, 1, 2]
    assert torch.get_num_threads() == 2


def test_governor_starts_an_image_from_the_load_seen_since_the_last_one(two_threads):
    machine = FakeMachine()
    governor = machine.governor()
    machine.run(5.0, own_cpus=0.0, other_cpus=1.0)  # a batch job ran while the user looked at the last slice
    with governor.running():
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == 2
    machine.run(0.05, own_cpus=0.0, other_cpus=0.0)  # the next call right away: too short to judge, keep 1
    with governor.running():
        assert torch.get_num_threads() == 1


def test_governor_never_exceeds_torchs_setting_and_leaves_one_thread_alone():
    machine = FakeMachine()
    governor = machine.governor(cpus=8)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        machine.run(1.0, own_cpus=0.0, other_cpus=0.0)
        with governor.running():
            governor.checkpoint()
            assert torch.get_num_threads() == 1
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_without_counters_nothing_changes(two_threads, monkeypatch):
    monkeypatch.setattr("DeLightSAMLib.engines.threads.cpu_busy_counter", lambda: (None, None))  # none readable here
    governor = ThreadGovernor()
    with governor.running():
        governor.checkpoint()
        assert torch.get_num_threads() == 2


def test_torch_setting_is_restored_when_the_work_fails(two_threads):
    machine = FakeMachine()
    governor = machine.governor()
    machine.run(1.0, own_cpus=0.0, other_cpus=2.0)
    with pytest.raises(RuntimeError, match="boom"):
        with governor.running():
            assert torch.get_num_threads() == 1
            raise RuntimeError("boom")
    assert torch.get_num_threads() == 2


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/stat")
def test_linux_counter_counts_this_process_busy_time():
    import time

    busy, cpus = cpu_busy_counter()
    assert busy is not None and cpus >= 1
    start_busy, start_own = busy(), time.process_time()
    deadline = time.perf_counter() + 0.3
    while time.perf_counter() < deadline:  # 0.3 s of our own CPU time
        pass
    assert busy() - start_busy >= 0.8 * (time.process_time() - start_own) - 0.05  # 10 ms ticks


def test_fast_engine_uses_the_governor_and_gives_the_same_result(two_threads):
    from DeLightSAMLib.build import build_model
    from DeLightSAMLib.config import TINY_CONFIG
    from DeLightSAMLib.engines import build_runner

    torch.manual_seed(0)
    model = build_model(TINY_CONFIG)
    runner = build_runner(model, "fast")
    machine = FakeMachine()
    runner.threads = machine.governor()  # the encoder calls the runner's governor between blocks
    runner.model.SemiTViT.between_blocks = runner.threads.checkpoint
    counts = []
    original = runner.threads.checkpoint

    def checkpoint():
        machine.run(0.2, own_cpus=1.0, other_cpus=1.0)
        original()
        counts.append(torch.get_num_threads())

    runner.model.SemiTViT.between_blocks = checkpoint
    images = torch.randn(1, 3, 64, 64)
    with torch.inference_mode():
        expected = model(images).modality_logits
        result = runner(images).modality_logits
    torch.testing.assert_close(result, expected, atol=1e-4, rtol=1e-4)
    assert len(counts) == 1 + sum(TINY_CONFIG.depths) + 3 and set(counts) == {1}
    assert torch.get_num_threads() == 2
