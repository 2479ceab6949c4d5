"""Time and profile one training step of a recipe on this machine, op by op, and A/B a change to it.

    python benchmarks/train_step.py profile --recipe fast                    # where a step's time goes
    python benchmarks/train_step.py ab --recipe fast --b "--speedups none"    # the CPU speed-ups, off
    python benchmarks/train_step.py ab --recipe fast --b "--set activation=relu"
    python benchmarks/train_step.py time --recipe fast --steps 8             # one process, one JSON line

A step is what `train-cifar` runs: the recipe's network, optimizer, loss and precision, compiled by Keras,
on one batch of random images. `ab` runs A (as training would run here, unless `--a` says otherwise) and
B in alternating fresh processes and reports the median step time of each and their ratio: these machines
drift by more than small effects between minutes, so only back-to-back pairs are compared. `time` options
for A and B: `--speedups all|none|name,...` (CIFAR_SERVE_CPU_SPEEDUPS), `--set field=value` (a recipe
field, e.g. activation=relu or widths=[64,256,256]), `--jit` (XLA), `--inter-op N` (TensorFlow threads).
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import re
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from training.cpu_info import SPEEDUPS_ENV, describe_cpu  # noqa: E402

# Keras layer kinds (op name scopes without their numbers) grouped the way the profile table reads them.
PART_OF_STEP = {
    "conv2d": "convolution", "whiten": "convolution", "batch_normalization": "batch norm",
    "activation": "activation", "max_pooling2d": "pooling", "global_max_pooling2d": "pooling",
    "random_flip": "augmentation", "random_translation": "augmentation", "random_crop": "augmentation",
    "dense": "dense", "logits": "dense", "probabilities": "dense", "dropout": "dropout",
    "scale_0_1": "input scaling", "standardise": "input scaling", "flatten": "other layers",
}


def parse_updates(pairs: list[str]) -> dict[str, Any]:
    """`field=value` pairs; a value is read as JSON where it is JSON (numbers, lists), else as a string."""
    updates: dict[str, Any] = {}
    for pair in pairs:
        field, _, value = pair.partition("=")
        try:
            updates[field] = json.loads(value)
        except json.JSONDecodeError:
            updates[field] = value
    return updates


def build_step(args: argparse.Namespace) -> tuple[Any, Any, Any, dict[str, Any]]:
    """The recipe's compiled model and one random batch, set up the way `train-cifar` sets up a run."""
    from training.tf_start import start_tensorflow
    from training.cpu_info import chosen_speedups

    start_tensorflow(verbose=False, speedups=chosen_speedups(args.recipe))  # as train-cifar does, log filtered
    import numpy as np
    import tensorflow as tf

    from training import cpu_kernels, models, scale
    from training.config import TrainConfig
    from training.train import compile_arguments

    if args.inter_op:
        tf.config.threading.set_inter_op_parallelism_threads(args.inter_op)
    config = TrainConfig(model=args.recipe, batch_size=args.batch_size).resolved()
    recipe = config.recipe
    recipe = type(recipe).model_validate({**recipe.model_dump(), **parse_updates(args.set)})
    policy = scale.set_precision(None, False, cpu_default=recipe.bf16_on_cpu)
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (config.batch_size, 32, 32, 3), dtype=np.uint8)
    y = tf.one_hot(rng.integers(0, 10, config.batch_size), 10)
    model = models.build(recipe, x, 10, config.seed)
    model.compile(**compile_arguments(config, steps_per_epoch=100), jit_compile=args.jit)
    facts = {"precision": policy, "speedups": cpu_kernels.active_speedups(), "batch_size": config.batch_size,
             "conv_gflop_per_step": config.batch_size * conv_flops_per_image(model) / 1e9}
    return model, x, y, facts


def conv_flops_per_image(model: Any) -> float:
    """Multiply-adds x 2 of every convolution in one training step: forward, kernel gradient (trainable
    ones), input gradient (those with a trainable layer before them)."""
    import keras

    total, seen_trainable = 0.0, False
    for layer in model.layers:
        if not isinstance(layer, keras.layers.Conv2D):
            continue
        height, width, filters = layer.output.shape[1:]
        forward = 2.0 * height * width * filters * layer.input.shape[-1] * layer.kernel_size[0] * layer.kernel_size[1]
        total += forward * (1 + layer.trainable + seen_trainable)
        seen_trainable = seen_trainable or layer.trainable
    return total


def time_steps(model: Any, x: Any, y: Any, warmup: int, steps: int) -> list[float]:
    for _ in range(warmup):
        model.train_on_batch(x, y)
    times = []
    for _ in range(steps):
        started = time.perf_counter()
        model.train_on_batch(x, y)
        times.append(time.perf_counter() - started)
    return times


def time_command(args: argparse.Namespace) -> None:
    """One process: step times as one JSON line (what `ab` reads)."""
    model, x, y, facts = build_step(args)
    times = time_steps(model, x, y, args.warmup, args.steps)
    print(json.dumps({"ms_per_step": 1000 * statistics.median(times), "steps_ms": [1000 * t for t in times], **facts}))


def op_times(log_dir: Path, steps: int) -> dict[str, float]:
    """Milliseconds per step of every TensorFlow op ("scope/name:Type") in a profiler trace."""
    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    space = xplane_pb2.XSpace()
    space.ParseFromString(next(log_dir.rglob("*.xplane.pb")).read_bytes())
    times: collections.Counter[str] = collections.Counter()
    for plane in space.planes:
        for line in plane.lines:
            if not line.name.startswith("tf_Compute"):
                continue
            for event in line.events:
                name = plane.event_metadata[event.metadata_id].name
                if ":" in name and " " not in name and not name.startswith("ExecutorState"):
                    times[name] += event.duration_ps / 1e9 / steps
    return dict(times)


def part_of_step(op: str) -> str:
    """The layer kind an op belongs to, from its name scope (e.g. gradient_tape/fast_1/conv2d_2_1/...)."""
    scopes = op.split(":")[0].removeprefix("gradient_tape/").split("/")
    layer = re.sub(r"(_\d+)+$", "", scopes[1]) if len(scopes) > 2 else ""
    return PART_OF_STEP.get(layer, "optimizer, loss, other")


def profile_command(args: argparse.Namespace) -> None:
    """Step time, then a profiled run of a few steps: time per op type and per part of the network."""
    import tensorflow as tf

    model, x, y, facts = build_step(args)
    times = time_steps(model, x, y, args.warmup, args.steps)
    step_ms = 1000 * statistics.median(times)
    log_dir = Path(tempfile.mkdtemp(prefix="train-step-profile-"))
    tf.profiler.experimental.start(str(log_dir))
    time_steps(model, x, y, 0, args.profile_steps)
    tf.profiler.experimental.stop()
    ops = op_times(log_dir, args.profile_steps)
    by_type: collections.Counter[str] = collections.Counter()
    by_part: collections.Counter[str] = collections.Counter()
    for op, ms in ops.items():
        by_type[op.rsplit(":", 1)[1]] += ms
        by_part[part_of_step(op)] += ms
    print_profile(args, facts, step_ms, by_type, by_part)
    output = args.output or ROOT / "runs" / f"train-step-{args.recipe}-{time.strftime('%Y%m%d-%H%M%S')}"
    output.mkdir(parents=True, exist_ok=True)
    (output / "profile.json").write_text(json.dumps(
        {"cpu": describe_cpu(), "recipe": args.recipe, "step_ms": step_ms, **facts,
         "ms_per_op_type": dict(by_type.most_common()), "ms_per_part": dict(by_part.most_common())}, indent=2))
    plot_profile(by_type, by_part, output / "profile.png", f"{args.recipe}, {describe_cpu()}: {step_ms:.0f} ms/step")
    print(f"\nprofile: {output / 'profile.json'}, {output / 'profile.png'}")


def print_profile(args: argparse.Namespace, facts: dict[str, Any], step_ms: float,
                  by_type: collections.Counter[str], by_part: collections.Counter[str]) -> None:
    total = sum(by_type.values())
    gflop = facts["conv_gflop_per_step"]
    print(f"machine: {describe_cpu()}")
    print(f"recipe {args.recipe}, batch {facts['batch_size']}, {facts['precision']}, "
          f"speed-ups: {', '.join(facts['speedups']) or 'none'}")
    print(f"step: {step_ms:.0f} ms (median of {args.steps}); convolutions {gflop:.1f} GFLOP per step, "
          f"{gflop / step_ms * 1000:.0f} GFLOP/s over the whole step")
    print(f"\nop time per step, profiled ({args.profile_steps} steps; ops of the two executor threads "
          f"overlap, so shares are of the {total:.0f} ms summed over ops)")
    for title, counter in (("part of the step", by_part), ("op type", by_type)):
        print(f"\n{title:<36} {'ms/step':>8} {'share':>6}")
        for name, ms in counter.most_common(args.top):
            print(f"{name:<36} {ms:>8.1f} {ms / total:>6.1%}")


def plot_profile(by_type: collections.Counter[str], by_part: collections.Counter[str], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 5))
    for ax, counter, label in ((axes[0], by_part, "part of the step"), (axes[1], by_type, "op type")):
        names, values = zip(*counter.most_common(12))
        ax.barh(list(reversed(names)), list(reversed(values)))
        ax.set_xlabel("op time per step (ms, summed over threads)")
        ax.set_title(label)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def run_child(common: list[str], variant: str) -> dict[str, Any]:
    command = [sys.executable, __file__, "time", *common, *shlex.split(variant)]
    result = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    if result.returncode != 0:
        sys.exit(f"step timing failed ({shlex.join(command[1:])}):\n{result.stderr[-2000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def ab_command(args: argparse.Namespace) -> None:
    """A and B in alternating fresh processes; median step time of each and B's speed-up over A."""
    common = ["--recipe", args.recipe, "--warmup", str(args.warmup), "--steps", str(args.steps)]
    if args.batch_size:
        common += ["--batch-size", str(args.batch_size)]
    medians: dict[str, list[float]] = {"A": [], "B": []}
    print(f"machine: {describe_cpu()}\nA: {args.a or '(as training runs here)'}\nB: {args.b}")
    for pair in range(args.pairs):
        for name, variant in (("A", args.a), ("B", args.b)) if pair % 2 == 0 else (("B", args.b), ("A", args.a)):
            result = run_child(common, variant)
            medians[name].append(result["ms_per_step"])
            print(f"  pair {pair + 1} {name}: {result['ms_per_step']:.0f} ms/step "
                  f"({result['precision']}, speed-ups: {', '.join(result['speedups']) or 'none'})", flush=True)
    a, b = statistics.median(medians["A"]), statistics.median(medians["B"])
    ratios = [x / y for x, y in zip(medians["A"], medians["B"])]
    print(f"A {a:.0f} ms/step, B {b:.0f} ms/step: B is {a / b:.3f}x as fast as A "
          f"(per pair {min(ratios):.3f}-{max(ratios):.3f})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    for name in ("time", "profile", "ab"):
        sub = commands.add_parser(name)
        sub.add_argument("--recipe", default="fast", choices=["cnn", "cnn-bn", "mlp", "fast"])
        sub.add_argument("--batch-size", type=int, help="default: the recipe's")
        sub.add_argument("--warmup", type=int, default=3)
        sub.add_argument("--steps", type=int, default=6)
        if name == "ab":
            sub.add_argument("--a", default="", help="time options of A (default: none, as training runs here)")
            sub.add_argument("--b", required=True, help='time options of B, e.g. "--speedups none"')
            sub.add_argument("--pairs", type=int, default=3)
            continue
        sub.add_argument("--speedups", help="all, none or names: sets $" + SPEEDUPS_ENV)
        sub.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE", help="change a recipe field")
        sub.add_argument("--jit", action="store_true", help="compile the step with XLA")
        sub.add_argument("--inter-op", type=int, help="TensorFlow inter-op threads")
        if name == "profile":
            sub.add_argument("--profile-steps", type=int, default=3)
            sub.add_argument("--top", type=int, default=15)
            sub.add_argument("--output", type=Path)
    args = parser.parse_args()
    if getattr(args, "speedups", None):
        os.environ[SPEEDUPS_ENV] = args.speedups
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    {"time": time_command, "profile": profile_command, "ab": ab_command}[args.command](args)


if __name__ == "__main__":
    main()
