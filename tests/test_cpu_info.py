"""The CPU's kind decides which training speed-ups are on; $CIFAR_SERVE_CPU_SPEEDUPS overrides it."""

from __future__ import annotations

import pytest

from training import cpu_info

EPYC = "model name\t: AMD EPYC 7B13\nflags\t\t: fpu sse2 avx avx2 fma\n"
CASCADE_LAKE = "model name\t: Intel(R) Xeon(R) Processor @ 2.50GHz\nflags\t\t: avx2 avx512f avx512bw avx512_vnni\n"
COOPER_LAKE = "model name\t: Intel(R) Xeon(R) Processor\nflags\t\t: avx2 avx512f avx512_bf16\n"
SAPPHIRE_RAPIDS = "model name\t: Intel(R) Xeon(R) Platinum 8481C\nflags\t\t: avx2 avx512f avx512_bf16 amx_bf16 amx_tile\n"


@pytest.fixture
def cpu(monkeypatch: pytest.MonkeyPatch):
    def pretend(text: str) -> None:
        monkeypatch.setattr(cpu_info, "cpuinfo", lambda: text)

    monkeypatch.delenv(cpu_info.SPEEDUPS_ENV, raising=False)
    return pretend


@pytest.mark.parametrize(
    ("text", "kind", "bf16"),
    [(EPYC, "avx2", False), (CASCADE_LAKE, "avx512", False), (COOPER_LAKE, "avx512-bf16", True),
     (SAPPHIRE_RAPIDS, "amx", True), ("", "other", False)],
)
def test_kind_from_the_flags(cpu, text: str, kind: str, bf16: bool) -> None:
    cpu(text)
    assert cpu_info.cpu_kind() == kind
    assert cpu_info.has_native_bf16() is bf16


def test_model_name_and_one_line_description(cpu) -> None:
    cpu(EPYC)
    assert cpu_info.cpu_model() == "AMD EPYC 7B13"
    assert cpu_info.describe_cpu().startswith("AMD EPYC 7B13 (avx2, ")


def test_speedups_follow_what_measured_faster_for_each_recipe_on_each_kind(cpu) -> None:
    cpu(EPYC)
    assert cpu_info.chosen_speedups("fast") == cpu_info.MEASURED_FASTER[("avx2", "fast")]
    cpu(CASCADE_LAKE)
    assert cpu_info.chosen_speedups("fast") == cpu_info.MEASURED_FASTER[("avx512", "fast")]
    assert cpu_info.chosen_speedups("cnn") == cpu_info.MEASURED_FASTER[("avx512", "cnn")]
    assert cpu_info.chosen_speedups("mlp") == cpu_info.ALL_SPEEDUPS  # not measured: everything on, as before
    cpu(SAPPHIRE_RAPIDS)
    assert cpu_info.chosen_speedups("fast") == cpu_info.ALL_SPEEDUPS
    assert cpu_info.chosen_speedups(None) == ()  # nothing to train (train-cifar import)


@pytest.mark.parametrize(
    ("value", "chosen"),
    [("all", cpu_info.ALL_SPEEDUPS), ("none", ()), ("conv-input-gradient", ("conv-input-gradient",)),
     (" BFC-allocator , conv-input-gradient ", ("bfc-allocator", "conv-input-gradient"))],
)
def test_the_environment_overrides_the_kind(cpu, monkeypatch: pytest.MonkeyPatch, value: str, chosen: tuple) -> None:
    cpu(CASCADE_LAKE)
    monkeypatch.setenv(cpu_info.SPEEDUPS_ENV, value)
    assert cpu_info.chosen_speedups("fast") == chosen


def test_an_unknown_speedup_is_one_clear_error(cpu, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(cpu_info.SPEEDUPS_ENV, "bfc-allocator,turbo")
    with pytest.raises(cpu_info.SpeedupError, match="unknown speed-up 'turbo'; use all, none, or some of"):
        cpu_info.chosen_speedups("cnn")
