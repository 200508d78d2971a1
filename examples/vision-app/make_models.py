"""Generate the vision-app detector models and the golden input/expected answer pair.

The detector is a linear classifier over a 4x4 grayscale patch (16 pixel values in [0, 1], row by
row) that tells a horizontal, vertical or diagonal stroke through the patch's centre. One set of
reference weights is written twice: quantised to int8 with one scale (for CPU, NPU, TPU and Hailo
profiles) and rounded to fp16 (for NVIDIA profiles). The golden answer comes from the reference
weights, and both variants must agree with it to well within the health check's tolerance.

Everything is deterministic: running this again rewrites the same bytes.
Usage: python3 make_models.py   (writes models/ and golden/ beside this file)
"""

from __future__ import annotations

import json
import math
import random
import struct
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
MODEL_ID = "detector-1.0.0"
SIDE = 4
FEATURES = SIDE * SIDE
AGREEMENT = 0.002  # both variants' scores stay this close to the reference (the check allows 0.01)
GOLDEN_INPUT = (
    (0.05, 0.10, 0.00, 0.08),
    (0.92, 0.88, 0.95, 0.90),
    (0.12, 0.07, 0.10, 0.03),
    (0.00, 0.06, 0.04, 0.09),
)


@dataclass(frozen=True, kw_only=True)
class Model:
    dtype: str
    weights: tuple[tuple[float, ...], ...]  # one row per class, dequantised
    biases: tuple[float, ...]
    lines: tuple[str, ...]  # the rows as written to the file


def main() -> None:
    labels, threshold = read_config(HERE / "config" / "app.conf")
    weights, biases = reference_weights(len(labels))
    variants = (quantise_int8(weights, biases), round_fp16(weights, biases))
    pixels = tuple(v for row in GOLDEN_INPUT for v in row)
    expected = answer(weights, biases, pixels, labels, threshold)
    for model in variants:
        check_agrees(model, pixels, labels, threshold, expected)
        write_model(HERE / "models" / f"detector-{model.dtype}.model", model, len(labels))
    (HERE / "golden" / "input.txt").write_text("".join(" ".join(f"{v:.2f}" for v in row) + "\n" for row in GOLDEN_INPUT))
    (HERE / "golden" / "expected.json").write_text(json.dumps(expected, indent=2) + "\n")


def read_config(path: Path) -> tuple[list[str], float]:
    """The labels and threshold from the app config (the service reads the same file)."""
    values = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            key, _, value = line.partition("=")
            values[key.strip()] = value.strip()
    return values["labels"].split(","), float(values["threshold"])


def reference_weights(classes: int) -> tuple[list[list[float]], list[float]]:
    """Stroke templates (+1 on the stroke, -0.5 elsewhere) with a little fixed noise."""
    rng = random.Random(20260101)
    templates = [
        {r * SIDE + c for r in (1, 2) for c in range(SIDE)},  # horizontal: the middle rows
        {r * SIDE + c for r in range(SIDE) for c in (1, 2)},  # vertical: the middle columns
        {i * SIDE + i for i in range(SIDE)},  # diagonal: top-left to bottom-right
    ][:classes]
    weights = [[round(1.2 * (1.0 if i in t else -0.5) + rng.gauss(0.0, 0.05), 4) for i in range(FEATURES)] for t in templates]
    return weights, [0.1, 0.0, -0.1][:classes]


def quantise_int8(weights: list[list[float]], biases: list[float]) -> Model:
    """Symmetric per-tensor int8: w = q * scale, with q in [-127, 127]."""
    scale = max(abs(w) for row in weights for w in row) / 127
    quantised = [[max(-127, min(127, round(w / scale))) for w in row] for row in weights]
    return Model(
        dtype="int8",
        weights=tuple(tuple(q * scale for q in row) for row in quantised),
        biases=tuple(biases),
        lines=(
            f"scale {scale:.10g}",
            *(f"bias {c} {b:g}" for c, b in enumerate(biases)),
            *(f"weights {c} " + " ".join(str(q) for q in row) for c, row in enumerate(quantised)),
        ),
    )


def round_fp16(weights: list[list[float]], biases: list[float]) -> Model:
    """Every value rounded to the nearest IEEE half-precision number."""
    half = [[_fp16(w) for w in row] for row in weights]
    half_biases = [_fp16(b) for b in biases]
    return Model(
        dtype="fp16",
        weights=tuple(tuple(row) for row in half),
        biases=tuple(half_biases),
        lines=(
            *(f"bias {c} {b!r}" for c, b in enumerate(half_biases)),
            *(f"weights {c} " + " ".join(repr(w) for w in row) for c, row in enumerate(half)),
        ),
    )


def _fp16(value: float) -> float:
    result: float = struct.unpack("<e", struct.pack("<e", value))[0]
    return result


def answer(
    weights: list[list[float]] | tuple[tuple[float, ...], ...],
    biases: list[float] | tuple[float, ...],
    pixels: tuple[float, ...],
    labels: list[str],
    threshold: float,
) -> dict[str, object]:
    """What the service answers: softmax scores, and the best label if it clears the threshold."""
    logits = [b + sum(w * x for w, x in zip(row, pixels, strict=True)) for row, b in zip(weights, biases, strict=True)]
    top = max(logits)
    exps = [math.exp(v - top) for v in logits]
    scores = [e / sum(exps) for e in exps]
    best = max(range(len(scores)), key=scores.__getitem__)
    label = labels[best] if scores[best] >= threshold else "unknown"
    return {"label": label, "scores": [round(s, 4) for s in scores], "model": MODEL_ID}


def check_agrees(model: Model, pixels: tuple[float, ...], labels: list[str], threshold: float, expected: dict[str, object]) -> None:
    got = answer(model.weights, model.biases, pixels, labels, threshold)
    drift = max(abs(a - b) for a, b in zip(_scores(got), _scores(expected), strict=True))
    if got["label"] != expected["label"] or drift > AGREEMENT:
        raise SystemExit(f"{model.dtype} model answers {got}, expected {expected} (within {AGREEMENT})")


def _scores(result: dict[str, object]) -> list[float]:
    scores = result["scores"]
    assert isinstance(scores, list)
    return [float(s) for s in scores]


def write_model(path: Path, model: Model, classes: int) -> None:
    header = (
        "# vision-app detector: a linear classifier over a 4x4 grayscale patch",
        "# (16 pixel values in [0, 1], row by row).",
        f"# {model.dtype} weights; generated by make_models.py, do not edit.",
        "vision-model 1",
        f"id {MODEL_ID}",
        f"dtype {model.dtype}",
        f"classes {classes}",
        f"features {FEATURES}",
    )
    path.write_text("\n".join((*header, *model.lines)) + "\n")


if __name__ == "__main__":
    main()
