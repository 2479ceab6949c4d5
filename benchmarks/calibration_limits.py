"""What one temperature can do for a stored model's calibration, read from benchmarks/ood.py's outputs.

    python benchmarks/ood.py --model cifar10-cnn --data ../shared/data/cifar10-jpeg.tar.gz --output runs/ood-cnn
    python benchmarks/calibration_limits.py runs/ood-cnn

The test ECE (15 bins, contract/calibration.py) at the card's temperature and at one temperature chosen
four ways: least NLL (the rule training uses) or least ECE (a grid), each on the validation split and on the
test split itself; the two test-split ones see the test labels, so they are bounds on what any one
temperature can reach, not methods. Beside them, the ECE that a perfectly calibrated model with the same
confidences would show on as many images (each image's correctness drawn from its own calibrated
confidence, 2,000 times): the floor of the estimate itself. Writes calibration_limits.json and
calibration_limits.png (test ECE and NLL against the temperature) into the same folder.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(ROOT))

from benchmarks.harness import machine  # noqa: E402
from contract import calibration as cal  # noqa: E402

console = Console()
TEMPERATURES = np.round(np.arange(0.3, 3.0, 0.005), 3)  # the grid of the least-ECE temperatures and the plot
DRAWS = 2000


@dataclass(frozen=True)
class Split:
    """A model's outputs (contract.calibration's `outputs_dtype` rows) on one split, and its labels."""

    outputs: np.ndarray
    labels: np.ndarray

    def ece(self, temperature: float) -> float:
        return cal.expected_calibration_error(cal.calibrated(self.outputs, temperature), self.labels)

    def nll(self, temperature: float) -> float:
        return cal.negative_log_likelihood(cal.calibrated(self.outputs, temperature), self.labels)

    def least_ece_temperature(self) -> float:
        return float(TEMPERATURES[int(np.argmin([self.ece(t) for t in TEMPERATURES]))])


@dataclass(frozen=True)
class Floor:
    """The test ECE of a perfectly calibrated model with the same confidences: its median and 5th-95th percentile."""

    median: float
    low: float
    high: float


def perfect_calibration_eces(probabilities: np.ndarray, draws: int = DRAWS, seed: int = 0) -> np.ndarray:
    """ECE of `draws` label sets under which `probabilities` are exactly calibrated for their top class: each
    image is right with the probability the model gives its top class (a wrong image gets another label)."""
    rng = np.random.default_rng(seed)
    top = probabilities.argmax(axis=1)
    confidence = probabilities.max(axis=1)
    other = (top + 1) % probabilities.shape[1]
    return np.array([cal.expected_calibration_error(probabilities, np.where(rng.random(len(top)) < confidence, top, other))
                     for _ in range(draws)])


def floor_of(probabilities: np.ndarray) -> Floor:
    eces = perfect_calibration_eces(probabilities)
    return Floor(float(np.median(eces)), float(np.percentile(eces, 5)), float(np.percentile(eces, 95)))


def load(folder: Path) -> tuple[dict[str, object], Split, Split]:
    """ood.json's report and the test and validation outputs of outputs.npz (validation labels since ood.py saves them)."""
    report = json.loads((folder / "ood.json").read_text())
    saved = np.load(folder / "outputs.npz")
    if "held_out_labels" not in saved.files:
        raise SystemExit(f"{folder / 'outputs.npz'} has no validation split: run benchmarks/ood.py again on a model "
                         "trained here (the split is rebuilt from its card), without --limit")
    return report, Split(saved["test"], saved["test_labels"]), Split(saved["held_out"], saved["held_out_labels"])


def temperatures(report: dict[str, object], test: Split, validation: Split) -> dict[str, float]:
    """Every temperature compared: the card's, then least NLL and least ECE on each split."""
    stored = report["calibration"]["temperature"] if report.get("calibration") else 1.0
    return {
        "card": stored,
        "least NLL, validation": cal.fit_temperature(validation.outputs, validation.labels),
        "least ECE, validation": validation.least_ece_temperature(),
        "least NLL, test (bound)": cal.fit_temperature(test.outputs, test.labels),
        "least ECE, test (bound)": test.least_ece_temperature(),
    }


def print_table(rows: dict[str, dict[str, float]], floor: Floor, title: str) -> None:
    table = Table(title=title)
    for column in ("temperature chosen by", "T", "validation ECE", "test ECE", "test NLL"):
        table.add_column(column, justify="right")
    for name, row in rows.items():
        table.add_row(name, f"{row['temperature']:.3f}", f"{row['validation_ece']:.2%}", f"{row['test_ece']:.2%}",
                      f"{row['test_nll']:.4f}")
    console.print(table)
    console.print(f"a perfectly calibrated model with the card's test confidences: ECE {floor.median:.2%} "
                  f"(5th-95th percentile {floor.low:.2%}-{floor.high:.2%}, {DRAWS} draws)")


def plot(test: Split, rows: dict[str, dict[str, float]], floor: Floor, path: Path, title: str) -> None:
    """Test ECE and NLL against the temperature around the chosen ones, each marked; the floor as a band."""
    chosen = [row["temperature"] for row in rows.values()]
    around = np.linspace(0.75 * min(chosen), 1.33 * max(chosen), 200)
    fig, ece_axis = plt.subplots(figsize=(8, 4.5))
    ece_axis.plot(around, [100 * test.ece(t) for t in around], color="tab:blue", label="test ECE")
    ece_axis.axhspan(100 * floor.low, 100 * floor.high, color="tab:blue", alpha=0.12,
                     label="ECE of a perfectly calibrated model (5th-95th pct)")
    for (name, row), style in zip(rows.items(), ("-", "--", ":", "-.", (0, (1, 4)))):
        ece_axis.axvline(row["temperature"], color="black", linestyle=style, linewidth=1,
                         label=f"{name}: T {row['temperature']:.3f}, ECE {row['test_ece']:.2%}")
    ece_axis.set_xlabel("temperature")
    ece_axis.set_ylabel("test ECE (%)")
    nll_axis = ece_axis.twinx()
    nll_axis.plot(around, [test.nll(t) for t in around], color="tab:orange", label="test NLL")
    nll_axis.set_ylabel("test NLL", color="tab:orange")
    ece_axis.set_xlim(around[0], around[-1])
    ece_axis.legend(fontsize=7, loc="upper right")
    ece_axis.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", type=Path, help="benchmarks/ood.py's --output folder (ood.json, outputs.npz)")
    args = parser.parse_args(argv)
    report, test, validation = load(args.folder)
    rows = {name: {"temperature": t, "validation_ece": validation.ece(t), "test_ece": test.ece(t),
                   "test_nll": test.nll(t)} for name, t in temperatures(report, test, validation).items()}
    floor = floor_of(cal.calibrated(test.outputs, rows["card"]["temperature"]))
    title = f"{report['model']}: one temperature on {len(test.labels)} test images"
    print_table(rows, floor, title)
    command = shlex.join(["python", "benchmarks/calibration_limits.py", *(sys.argv[1:] if argv is None else argv)])
    result = {"command": command, "model": report["model"], "machine": machine(), "test_size": len(test.labels),
              "validation_size": len(validation.labels), "temperatures": rows, "perfect_calibration_ece": asdict(floor)}
    (args.folder / "calibration_limits.json").write_text(json.dumps(result, indent=2))
    plot(test, rows, floor, args.folder / "calibration_limits.png", title)
    console.print(f"{command}\n{result['machine']['cpu']}; wrote {args.folder / 'calibration_limits.json'} and .png")


if __name__ == "__main__":
    main()
