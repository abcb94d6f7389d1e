"""How fast images are moderated on the CPU, next to the raw detector on the same inputs.

    python benchmarks/image_moderation_throughput.py [--images 200] [--size 512] [--seed 1]
    python benchmarks/image_moderation_throughput.py --images 200 --repeat 3 [--threads 2] [--batch-size 16]

A benchmark script, not a test: timings are printed, never asserted. Everything runs in this one
process, on one onnxruntime session (``ImageModerator.model``, ``--threads`` intra-op threads).
Before anything is timed, the session is loaded and each way runs once on a few images.

The input is ``--images`` generated JPEGs of ``--size`` × ``--size`` (quality 85): landscapes
(sky, sun, hills, water) with a grain, so they compress like photographs, not like flat colour.

Measured, each in images per second:

* **moderation, end to end**: ``decode_image`` (bounded decode, RGB, pHash) of every JPEG's
  bytes, then ``ImageModerator`` on the decoded images (letterbox to 320, ``session.run`` per
  batch, NudeNet's decoding, category scores): what the pipeline does per image.
* its two halves: **decode + pHash** alone, and **detector** alone (the handler on decoded images).
* **raw session.run** (the anchor): ``session.run`` on the same pre-processed ``(n, 3, 320, 320)``
  inputs, in batches of the same size: the ceiling of any wrapper of this model on these threads.

The ratios say what the wrapping costs: end to end / raw run, detector / raw run.
"""

from __future__ import annotations

import argparse
import io
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

if __package__ in (None, ""):  # run as a script: make the ``benchmarks`` package importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.measure import best_of, stopwatch
from benchmarks.report import environment, print_environment

PACKAGES = ("nudenet", "onnxruntime", "pillow", "imagehash", "numpy")
WARM_UP_IMAGES = 4


@dataclass(frozen=True)
class ImagesMeasurement:
    """One timed way of handling the images: how many, wall and CPU seconds, and what it was."""

    name: str
    what: str  # what was timed, in words
    images: int
    wall_s: float
    cpu_s: float  # user + system, all threads of this process
    others_cores: float  # CPU cores other processes kept busy meanwhile (noise)
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def images_per_s(self) -> float:
        return self.images / self.wall_s if self.wall_s > 0 else float("nan")


def generated_jpegs(count: int, size: int, seed: int) -> list[bytes]:
    """``count`` landscape JPEGs of ``size`` × ``size``, the same bytes for the same seed."""
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    ys = np.linspace(0, 1, size)[:, None, None]
    jpegs = []
    for _ in range(count):
        top, bottom = rng.integers(60, 255, 3), rng.integers(60, 255, 3)
        sky = (top * (1 - ys) + bottom * ys).repeat(size, axis=1)
        image = Image.fromarray(sky.astype(np.uint8))
        draw = ImageDraw.Draw(image)
        sun = rng.integers(0, size, 2)
        draw.ellipse([*(sun - size // 12), *(sun + size // 12)], fill=tuple(rng.integers(200, 256, 3)))
        for layer in range(3):
            ridge = [
                (x, int(size * (0.45 + 0.15 * layer) + rng.normal(0, size / 20)))
                for x in range(0, size + 64, 64)
            ]
            colour = tuple(int(c) for c in rng.integers(20, 140, 3))
            draw.polygon([(0, size), *ridge, (size, size)], fill=colour)  # type: ignore[arg-type]
        grain = rng.normal(0, 8, (size, size, 3))
        pixels = np.clip(np.asarray(image, dtype=np.float64) + grain, 0, 255).astype(np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format="JPEG", quality=85)
        jpegs.append(buffer.getvalue())
    return jpegs


def timed(name: str, what: str, images: int, work: Callable[[], Any]) -> ImagesMeasurement:
    """Time ``work()`` once; keep what it returned in ``details["result"]``."""
    with stopwatch() as watch:
        result = work()
    return ImagesMeasurement(
        name, what, images, watch.wall_s, watch.cpu_s, watch.others_cores, {"result": result}
    )


def raw_run(session: Any, blob: np.ndarray, batch_size: int) -> np.ndarray:
    """The anchor: ``session.run`` on pre-processed inputs, ``batch_size`` at a time."""
    name = session.get_inputs()[0].name
    parts = [session.run(None, {name: blob[i : i + batch_size]})[0] for i in range(0, len(blob), batch_size)]
    return np.concatenate(parts)


def end_to_end(jpegs: Sequence[bytes], moderator: Any) -> np.ndarray:
    """What the pipeline does per image: bounded decode + pHash, then the detector's scores."""
    from transforms.image_checks import DecodedImage, decode_image

    decoded = [decode_image(data) for data in jpegs]
    return moderator([image.rgb for image in decoded if isinstance(image, DecodedImage)])


def print_table(rows: list[ImagesMeasurement]) -> None:
    """One line per measurement, then exactly what each one measured."""
    print(f"{'':3}{'measurement':<26}{'images':>8}{'wall s':>9}{'cpu s':>9}{'images/s':>10}{'others':>8}")
    for i, m in enumerate(rows, start=1):
        print(
            f"{i:>2} {m.name:<26}{m.images:>8,}{m.wall_s:>9.2f}{m.cpu_s:>9.2f}"
            f"{m.images_per_s:>10,.1f}{m.others_cores:>8.2f}"
        )
    print(f"{'':3}others: CPU cores other processes kept busy during the measurement (noise)\n")
    for i, m in enumerate(rows, start=1):
        walls = m.details.get("walls_s")
        print(f"{i:>2} {m.what}" + (f" (walls of each repeat: {walls})" if walls else ""))


def print_ratios(full: ImagesMeasurement, detector: ImagesMeasurement, raw: ImagesMeasurement) -> None:
    """The wrapping's cost, as images/s over the raw ``session.run``'s."""
    print("\nratios (images/s, all measured in this run):")
    for label, ours in (("end to end / raw session.run", full), ("detector / raw session.run", detector)):
        ratio = ours.images_per_s / raw.images_per_s
        print(f"  {label:<32} = {ratio:6.3f}   ({1 / ratio:4.2f}x the raw run's time)")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="image_moderation_throughput.py",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--images", type=int, default=200, metavar="N", help="images (default: 200)")
    parser.add_argument("--size", type=int, default=512, metavar="PX", help="their side (default: 512)")
    parser.add_argument("--seed", type=int, default=1, help="seed of the images (default: 1)")
    parser.add_argument(
        "--repeat",
        type=int,
        default=1,
        metavar="K",
        help="measure each K times and keep the fastest (default: 1; the machine may be shared)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        metavar="T",
        help="onnxruntime intra-op threads (default: the handler's)",
    )
    parser.add_argument(
        "--batch-size", type=int, default=16, metavar="B", help="images per run (default: 16)"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; print the table and the ratios."""
    args = _parser().parse_args(argv)
    if args.images < 1 or args.size < 1 or args.repeat < 1 or args.batch_size < 1:
        raise SystemExit("image_moderation_throughput.py: every count must be at least 1")
    print_environment(environment(PACKAGES))
    run(args)
    return 0


def run(args: argparse.Namespace) -> None:
    """Warm up, measure each way, and print the table, the ratios and a check."""
    from models.image_moderator import DEFAULT_INTRA_OP_THREADS, ImageModerator
    from models.nudenet_detector import stack
    from transforms.image_checks import decode_image

    threads = args.threads or DEFAULT_INTRA_OP_THREADS
    moderator = ImageModerator(device="cpu", batch_size=args.batch_size, intra_op_threads=threads)
    with stopwatch() as load:
        session = moderator.model
    jpegs = generated_jpegs(args.images, args.size, args.seed)
    kib = sum(map(len, jpegs)) / len(jpegs) / 1024
    print(f"model loaded in {load.wall_s:.2f} s; {threads} intra-op thread(s), batch {args.batch_size}")
    print(f"input: {len(jpegs):,} JPEGs of {args.size}×{args.size}, {kib:.0f} KiB on average")
    rgbs = [decode_image(data).rgb for data in jpegs]  # type: ignore[union-attr]
    blob = stack(rgbs)
    end_to_end(jpegs[:WARM_UP_IMAGES], moderator)
    raw_run(session, blob[:WARM_UP_IMAGES], args.batch_size)
    ways: list[tuple[str, str, Callable[[], Any]]] = [
        ("moderation, end to end", "decode_image + ImageModerator", lambda: end_to_end(jpegs, moderator)),
        ("decode + pHash", "decode_image of each JPEG's bytes", lambda: [decode_image(d) for d in jpegs]),
        ("detector", "ImageModerator on the decoded RGB arrays", lambda: moderator(rgbs)),
        (
            "raw session.run (anchor)",
            f"session.run on the pre-processed (n, 3, 320, 320) float32, {args.batch_size} per run",
            lambda: raw_run(session, blob, args.batch_size),
        ),
    ]

    def measured(name: str, what: str, work: Callable[[], Any]) -> ImagesMeasurement:
        return best_of(args.repeat, lambda _: timed(name, what, len(jpegs), work))

    rows = [measured(*way) for way in ways]
    print()
    print_table(rows)
    print_ratios(rows[0], rows[2], rows[3])
    scores = rows[0].details["result"]
    print(
        f"\ncheck: scores of shape {scores.shape}, max per category {scores.max(axis=0).round(3).tolist()}; "
        f"landscapes under 0.5 on both: {bool((scores < 0.5).all())}"
    )


if __name__ == "__main__":
    sys.exit(main())
