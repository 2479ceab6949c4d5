"""Starting TensorFlow quietly: its C++ start-up log (absl banner, CUDA probe, oneDNN notes), written to file
descriptor 2 before any Python setting applies, is filtered out of stderr; every other line passes, and
everything passes when the start fails, so no error is ever hidden."""

from __future__ import annotations

import contextlib
import os
import re
import sys
import tempfile
from collections.abc import Callable, Iterator

from training import cpu_info

# Read by TensorFlow when it loads: this module is imported before it.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# TensorFlow's log lines (absl format): severity, date, time, thread, file:line] message
TF_LOG_LINE = re.compile(r"^([IWEF])\d{4} [\d:.]+\s+\d+ \S+:\d+\] (.*)$")
CUDA_PROBE = re.compile(r"cuda|cuInit|cuDNN|cuFFT|cuBLAS|TensorRT", re.IGNORECASE)


def is_tensorflow_noise(line: str) -> bool:
    """TensorFlow's start-up chatter: absl's pre-init banner, info and warnings, errors of the CUDA probe."""
    if line.startswith("WARNING: All log messages before absl::InitializeLog() is called"):
        return True
    match = TF_LOG_LINE.match(line)
    return bool(match) and (match[1] in "IW" or (match[1] == "E" and bool(CUDA_PROBE.search(match[2]))))


@contextlib.contextmanager
def filtered_stderr(noise: Callable[[str], bool]) -> Iterator[None]:
    """Capture file descriptor 2 (C++ code writes there, not to sys.stderr), then pass on every line that
    is not noise, or every line if the block raised, so no error is ever hidden."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as capture:
        os.dup2(capture.fileno(), 2)
        raised = True
        try:
            yield
            raised = False
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            lines = capture.read().decode(errors="replace").splitlines(keepends=True)
            sys.stderr.write("".join(line for line in lines if raised or not noise(line)))
            sys.stderr.flush()


def start_tensorflow(verbose: bool, speedups: tuple[cpu_info.Speedup, ...] = ()) -> tuple[str, ...]:
    """Import TensorFlow, turn on the CPU speed-ups (`cpu_info.chosen_speedups`) and probe the devices,
    before any op; TensorFlow's C++ start-up log is filtered out of stderr unless `verbose`."""
    with contextlib.nullcontext() if verbose else filtered_stderr(is_tensorflow_noise):
        from training.scale import configure_devices, use_cpu_speedups

        use_cpu_speedups(speedups)
        return configure_devices()
