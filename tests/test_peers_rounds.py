"""benchmarks/peers_rounds.py's parts that need no server: settings, per-thread CPU, the means."""

from __future__ import annotations

import argparse
import os
import threading
import time

import pytest

from benchmarks.peers_rounds import PROJECT_ROOT, Setting, busy_cpu_seconds, means, thread_cpu


def test_a_setting_names_its_checkout_and_environment(tmp_path) -> None:
    assert Setting.parse("one") == Setting("one", PROJECT_ROOT, {})
    two = Setting.parse(f"two@{tmp_path}:CIFAR10_WORKERS=2,TF_NUM_INTEROP_THREADS=1")
    assert two == Setting("two", tmp_path.resolve(), {"CIFAR10_WORKERS": "2", "TF_NUM_INTEROP_THREADS": "1"})
    with pytest.raises(argparse.ArgumentTypeError, match="NAME"):
        Setting.parse("three:CIFAR10_WORKERS")


def test_thread_cpu_sees_a_busy_thread_by_name() -> None:
    spun, measured = threading.Event(), threading.Event()

    def spin() -> None:
        end = time.thread_time() + 0.3
        while time.thread_time() < end:
            pass
        spun.set()
        measured.wait(10)  # a thread that ended is no longer listed

    before = thread_cpu(os.getpid())
    worker = threading.Thread(target=spin)
    worker.start()
    spun.wait(10)
    after = thread_cpu(os.getpid())
    measured.set()
    worker.join()
    key = f"{os.getpid()}:python"  # Python does not name its threads for the OS
    assert after[key] - before.get(key, 0.0) >= 0.25
    busy, total = busy_cpu_seconds()
    assert 0 < busy <= total


def test_means_leave_out_runs_with_other_load() -> None:
    runs = [{"setting": "a", "workload": "e2e", "throughput_rps": rps, "p99_ms": 50.0, "others": others}
            for rps, others in ((300.0, 0.02), (100.0, 0.9), (310.0, 0.05))]
    lines = means(runs, [Setting.parse("a"), Setting.parse("b")], ["e2e"])
    assert "305.0 req/s" in lines[1] and "(2 of 3 runs: 300.0, 100.0, 310.0)" in lines[1]
    assert "no run without other load" in lines[2]
