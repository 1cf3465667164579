"""What every claims experiment shares: data, a budgeted training loop, held-out metrics,
environment records, tables and result files.

Data: the embedded photographs (``train/core/data.py``: 413 training and 184 held-out
patches, split by photograph). Every run is seeded; a run's batches are a function of its seed.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # bench/, models/, train/

import torch
from tqdm import tqdm

from bench.common import environment as machine
from bench.common import write_results
from train.core.data import EmbeddedPhotos
from train.core.metrics import mean_std, psnr, ssim

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "bench" / "results" / "claims"


def add_common_arguments(parser) -> None:
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument(
        "--out", type=Path, default=RESULTS, help="folder of the JSON, Markdown and PNG results"
    )
    parser.add_argument(
        "--smoke", action="store_true", help="seconds-long run of every code path (for CI)"
    )
    parser.add_argument(
        "--plot-only",
        action="store_true",
        help="redraw the PNG plot from the JSON already in --out, without training",
    )


def replot(args, name: str, section: str, plot) -> bool:
    """With ``--plot-only``: redraw ``<out>/<name>.png`` from ``<out>/<name>.json``."""
    if not args.plot_only:
        return False
    path = args.out / f"{name}.json"
    if not path.is_file():
        raise SystemExit(f"--plot-only needs the results of a run: {path} does not exist")
    plot(json.loads(path.read_text())[section], args.out / f"{name}.png")
    return True


# Options that must be positive when an experiment has them (names as argparse stores them).
POSITIVE = (
    "threads",
    "budget",
    "sweep_budget",
    "steps",
    "ae_steps",
    "unet_steps",
    "unet_batch",
    "sampler_steps",
    "batch",
    "lr",
    "unet_lr",
)


def setup(args) -> None:
    """Check the options, set the threads, create the output folder."""
    for name in POSITIVE:
        value = getattr(args, name, None)
        if value is not None and value <= 0:
            raise SystemExit(f"--{name.replace('_', '-')} must be positive, got {value}")
    for value in getattr(args, "lrs", None) or []:
        if value <= 0:
            raise SystemExit(f"--lrs must be positive, got {value}")
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)


def images(split: str, size: int, limit: int = 0) -> torch.Tensor:
    """Embedded patches (N, 3, size, size) float32 in [-1, 1]; ``limit`` > 0 keeps the first."""
    patches = EmbeddedPhotos(split, size).patches
    return patches[:limit] if limit else patches


def train(
    contender,
    data: torch.Tensor,
    *,
    lr: float,
    seed: int,
    batch: int = 8,
    steps: int | None = None,
    seconds: float | None = None,
    label: str = "",
) -> dict:
    """Train ``contender`` with Adam (its own betas / eps) on batches of ``data`` drawn from a
    generator seeded by ``seed``, for ``steps`` optimizer steps or ``seconds`` of wall clock
    (whichever is given; the model is initialised under ``seed`` by the caller). Returns the
    steps taken, the seconds and the mean step time."""
    if (steps is None) == (seconds is None):
        raise ValueError("give exactly one of steps and seconds")
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(
        contender.parameters(), lr=lr, betas=contender.betas, eps=contender.eps
    )
    contender.train()
    order, position, done, loss = torch.randperm(len(data), generator=generator), 0, 0, None
    bar = tqdm(
        total=steps or math.ceil(seconds),
        desc=label,
        unit="step" if steps else "s",
        leave=False,
        disable=None,
    )
    start = time.perf_counter()
    while (done < steps) if steps else (time.perf_counter() - start < seconds):
        if position + batch > len(order):
            order, position = torch.randperm(len(data), generator=generator), 0
        loss, _ = contender.loss(data[order[position : position + batch]])
        position += batch
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        done += 1
        bar.n = done if steps else min(math.ceil(time.perf_counter() - start), bar.total)
        bar.set_postfix(loss=f"{loss.item():.4f}", refresh=False)
        bar.refresh()
    bar.close()
    elapsed = time.perf_counter() - start
    contender.eval()
    return {
        "steps": done,
        "seconds": elapsed,
        "step_ms": 1e3 * elapsed / max(done, 1),
        "final_loss": None if loss is None else loss.item(),
    }


@torch.no_grad()
def reconstruction_metrics(reconstruct, data: torch.Tensor, batch: int = 64) -> dict:
    """Held-out PSNR and SSIM (mean ± std over images) of ``reconstruct(images)``."""
    outputs = torch.cat([reconstruct(data[i : i + batch]) for i in range(0, len(data), batch)])
    return image_metrics(outputs, data)


def image_metrics(outputs: torch.Tensor, targets: torch.Tensor) -> dict:
    """PSNR and SSIM (mean ± std over images) of images (N, 3, H, W) in [-1, 1]."""
    return {"psnr": mean_std(psnr(outputs, targets)), "ssim": mean_std(ssim(outputs, targets))}


def over_seeds(values: list[float]) -> dict:
    """Mean ± std (sample std; 0 for one value) of per-seed results."""
    return mean_std(torch.tensor(values, dtype=torch.float64))


def environment(threads: int) -> dict:
    """``bench/common.py``'s record of this CPU run (``threads`` as set by ``setup``)."""
    return {**machine("cpu"), "threads": threads}


def markdown_table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def pm(stats: dict, digits: int = 2) -> str:
    """'mean ± std' of a mean_std dict."""
    return f"{stats['mean']:.{digits}f} ± {stats['std']:.{digits}f}"


def save(out: Path, name: str, payload: dict, table: str, started: float) -> None:
    """Write ``<name>.json`` and ``<name>.md`` (the printed table) and print the table."""
    payload["runtime_s"] = time.perf_counter() - started
    env = payload["environment"]
    header = (
        f"# {payload['title']}\n\n{env['date']}, {env['device']}, "
        f"{env['threads']} threads, "
        f"torch {env['torch']}; runtime {payload['runtime_s'] / 60:.1f} min "
        f"(`{payload['command']}`).\n\n"
    )
    write_results(out / name, payload, header + table + "\n")
    print(table)


def command_line() -> str:
    return "python " + " ".join([os.path.relpath(sys.argv[0], ROOT), *sys.argv[1:]])


def figure(rows: int = 1, columns: int = 2, size: tuple[float, float] = (11, 4)):
    """A matplotlib figure on the Agg backend (no screen needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(rows, columns, figsize=size, squeeze=False)
