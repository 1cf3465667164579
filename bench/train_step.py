"""One stage-1 training step as ``train/ae.py`` runs it: BRICS against VQ-f4, same D and LPIPS.

    python bench/train_step.py --device cpu --batch-size 1      # counts, FLOPs and CPU times
    python bench/train_step.py --device cuda                    # batch 12, 256^2, tf32 and bf16
    python bench/train_step.py --device cpu --baseline DIR      # also another checkout's code

The step is ``AutoencoderStage.train_step`` of ``train/ae.py`` itself, built from its own
options with the GAN on from step 0: the autoencoder update (20 L2 + 5 LPIPS + the GAN
generator term), then the discriminator update, whose penalty (R1 or WGAN-GP) runs on the
*regularised* steps only (every ``--reg-interval``-th step under lazy regularisation, every
step for the text's WGAN-GP). Both kinds of step are measured apart. LPIPS has random VGG
weights (the same compute as the pretrained ones, which cannot be downloaded here); every
model trains on the same random batch.

For each model (``brics``, ``vq-f4``: diffusers' ``VQModel`` with LDM's ``vq-f4``
configuration, channels 128/256/512, 2 res blocks, 3 latent channels, 8192 codes, trained
with BRICS's D, LPIPS and loss weights plus its codebook and commitment loss) and, with
``--baseline``, BRICS as the code of another checkout trains it: aten ops, convolutions,
grouped convolutions and FLOPs of one step of each kind, counted in a step of its own; and
the step time, each provider in a process of its own, the providers alternating in rounds
(these machines drift by up to 2x within an hour). Times are per-step medians over rounds;
on CUDA, CUDA-event times and the peak memory of the timed steps. Writes
``bench/results/train_step_<device>.{json,md}`` after every measurement, so a run cut short
keeps what it measured.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
KINDS = ("regularised", "unregularised")


# --- the worker: one provider in a process of its own ----------------------------------------
def build_stage(spec: dict, out_dir: Path):
    """``train/ae.py``'s stage for ``spec``, from the checkout ``spec['checkout']``."""
    sys.path.insert(0, str(Path(spec["checkout"]).resolve()))
    import torch

    from models.losses import build_perceptual_loss
    from models.presets import ae_recipe
    from train.ae import AEOptions, AutoencoderStage

    fields = {
        "output_dir": out_dir,
        "preset": spec["preset"],
        "gan": spec["gan"],
        "gan_start": 0,
        "perceptual": "none",  # replaced below by LPIPS with random weights
        "batch_size": spec["batch"],
        "mixed_precision": "bf16" if spec["precision"] == "bf16" else "no",
        "cpu_threads": spec["threads"],
        # Counts are of what a GPU runs: the grid's Triton kernels (on the CPU, interpreted)
        "grid_backend": "triton" if spec["count"] or spec["device"] == "cuda" else "auto",
        **spec.get("options", {}),
    }
    known = AEOptions.__dataclass_fields__
    options = AEOptions(**{k: v for k, v in fields.items() if k in known})
    stage = AutoencoderStage(options.with_recipe(ae_recipe(spec["preset"])))
    device = stage.accelerator.device
    if device.type == "cuda":
        tf32 = spec["precision"] != "fp32"
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = tf32
        torch.backends.cudnn.benchmark = True
    if spec["perceptual"]:
        stage.perceptual = build_perceptual_loss("lpips", pretrained=False).to(device)
    if spec["model"] == "vq-f4":
        from models.optim import build_optimizers

        model = VQF4().to(device)
        stage.autoencoder = stage.accelerator.prepare(model)
        stage.ae_opt = stage.accelerator.prepare(build_optimizers(model, None, stage.options.lr)[0])
    return stage


class VQF4:  # built lazily: diffusers is a benchmark-only dependency
    def __new__(cls):
        import torch
        from diffusers import VQModel

        from models.autoencoder import AutoencoderOutput

        class _VQF4(torch.nn.Module):
            """LDM's VQ-f4 through diffusers; its codebook + commitment loss as the extra term."""

            def __init__(self) -> None:
                super().__init__()
                self.model = VQModel(
                    in_channels=3,
                    out_channels=3,
                    down_block_types=("DownEncoderBlock2D",) * 3,
                    up_block_types=("UpDecoderBlock2D",) * 3,
                    block_out_channels=(128, 256, 512),
                    layers_per_block=2,
                    latent_channels=3,
                    num_vq_embeddings=8192,
                    vq_embed_dim=3,
                    norm_num_groups=32,
                    sample_size=256,
                )

            def forward(self, images):
                out = self.model(images)
                return AutoencoderOutput(
                    out.sample, images.new_zeros(()), extra_loss=out.commit_loss.mean()
                )

        return _VQF4()


def step_index(stage, kind: str) -> int | None:
    """A step number of ``kind`` for the stage's penalty schedule (None: no such step)."""
    interval = reg_interval(stage)
    if kind == "regularised":
        return 0
    return 1 if interval > 1 else None


def reg_interval(stage) -> int:
    losses = stage.losses
    if hasattr(losses, "reg_interval"):
        return losses.reg_interval
    return losses.r1_interval if losses.gan == "nonsaturating-r1" else 1  # older code


def count_step(stage, images, index: int) -> dict:
    """Ops, convolutions and FLOPs of one ``train_step`` at step ``index`` (after a warm-up)."""
    from op_counter import OpCounter

    stage.step = index
    with fir_form("folded"):  # count what a GPU launches: the FIR passes in their CUDA form
        stage.train_step(images)
        stage.step = index
        with OpCounter() as counter:
            stage.train_step(images)
    return counter.summary()


def fir_form(form: str | None):
    """``models.resample.fir_form`` where the checkout has it (older code: no such choice)."""
    try:
        from models.resample import fir_form as choose
    except ImportError:
        return contextlib.nullcontext()
    return choose(form) if form else contextlib.nullcontext()


def time_steps(stage, images, index: int, steps: int) -> list[float]:
    """Milliseconds of ``steps`` calls of ``train_step`` at step ``index``."""
    import torch

    cuda = images.is_cuda
    times = []
    for _ in range(steps):
        stage.step = index
        if cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
        begin = time.perf_counter()
        stage.train_step(images)
        if cuda:
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        else:
            times.append((time.perf_counter() - begin) * 1e3)
    return times


def run_worker(spec: dict) -> dict:
    import torch

    with tempfile.TemporaryDirectory() as tmp:
        stage = build_stage(spec, Path(tmp))
        device = stage.accelerator.device
        size = stage.options.model_config().image_size
        generator = torch.Generator().manual_seed(0)
        images = (torch.rand(spec["batch"], 3, size, size, generator=generator) * 2 - 1).to(device)
        result = {"kinds": {}}
        for kind in KINDS:
            index = step_index(stage, kind)
            if index is None:
                continue
            entry = {}
            if spec["count"]:
                entry.update(count_step(stage, images, index))
            if spec["steps"]:
                with fir_form(spec.get("fir")):
                    time_steps(stage, images, index, spec["warmup"])
                    if device.type == "cuda":
                        torch.cuda.synchronize()
                        torch.cuda.reset_peak_memory_stats()
                    entry["ms"] = time_steps(stage, images, index, spec["steps"])
                if device.type == "cuda":
                    entry["peak_memory_gb"] = torch.cuda.max_memory_allocated() / 2**30
            result["kinds"][kind] = entry
        count = lambda m: sum(p.numel() for p in m.parameters()) / 1e6
        result["params_m"] = count(stage.accelerator.unwrap_model(stage.autoencoder))
        result["disc_params_m"] = count(stage.accelerator.unwrap_model(stage.disc))
        result["reg_interval"] = reg_interval(stage)
        return result


def spawn(spec: dict) -> dict:
    """Run one worker in a fresh process; its last output line is the JSON result."""
    command = [sys.executable, __file__, "--worker", json.dumps(spec)]
    env = {**os.environ, **({"CUDA_VISIBLE_DEVICES": ""} if spec["device"] == "cpu" else {})}
    if spec["count"] and spec["device"] == "cpu":  # the grid's Triton kernels, interpreted
        env["TRITON_INTERPRET"] = "1"
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, env=env)
    if done.returncode:
        raise RuntimeError(f"worker {spec['name']} failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# --- the driver ----------------------------------------------------------------------------------
def providers(args) -> list[dict]:
    base = {
        "preset": args.preset,
        "batch": args.batch_size,
        "gan": args.gan,
        "perceptual": not args.no_perceptual,
        "threads": args.threads,
        "device": args.device,
        "fir": args.fir,
        "options": {
            "channels_last": {"auto": None, "true": True, "false": False}[args.channels_last],
            "compile": args.compile,
        },
    }
    out = [{**base, "name": "brics", "model": "brics", "checkout": str(ROOT)}]
    if not args.no_vq:
        out.append({**base, "name": "vq-f4", "model": "vq-f4", "checkout": str(ROOT)})
    if args.baseline:
        gan = args.baseline_gan or args.gan
        baseline = {"name": "brics-baseline", "model": "brics", "checkout": str(args.baseline)}
        out.append({**base, **baseline, "gan": gan})
    return out


def measure(args, env: dict, stem: Path) -> list[dict]:
    rows = []
    for precision in args.precisions:
        specs = [{**p, "precision": precision} for p in providers(args)]
        results = {}
        for spec in specs if args.count else []:  # counts, one process per provider
            results[spec["name"]] = spawn({**spec, "count": True, "steps": 0, "warmup": 0})
            print(f"{spec['name']} {precision}: {summary(results[spec['name']])}", flush=True)
            write(stem, env, rows + assemble(specs, results, {}))
        times = {spec["name"]: {} for spec in specs}
        for round_index in range(args.rounds):
            order = specs[round_index % len(specs) :] + specs[: round_index % len(specs)]
            for spec in order:
                timed = spawn({**spec, "count": False, "steps": args.steps, "warmup": args.warmup})
                results.setdefault(spec["name"], timed)  # without counts: the timed kinds
                for kind, entry in timed["kinds"].items():
                    times[spec["name"]].setdefault(kind, []).append(entry)
                print(f"round {round_index} {spec['name']} {precision}: done", flush=True)
                write(stem, env, rows + assemble(specs, results, times))
        rows += assemble(specs, results, times)
    return rows


def assemble(specs: list[dict], results: dict, times: dict) -> list[dict]:
    rows = []
    for spec in specs:
        counted = results.get(spec["name"])
        if counted is None:
            continue
        for kind, entry in counted["kinds"].items():
            row = {
                "provider": spec["name"],
                "checkout": spec["checkout"] if spec["name"].endswith("baseline") else "this",
                "precision": spec["precision"],
                "kind": kind,
                "preset": spec["preset"],
                "batch": spec["batch"],
                "gan": spec["gan"],
                "reg_interval": counted["reg_interval"],
                "params_m": counted["params_m"],
                "disc_params_m": counted["disc_params_m"],
                **{k: v for k, v in entry.items() if k != "ms"},
            }
            rounds = times.get(spec["name"], {}).get(kind, [])
            if rounds:
                means = [statistics.mean(r["ms"]) for r in rounds]
                row.update(
                    ms_median=statistics.median(means),
                    ms_min=min(means),
                    ms_max=max(means),
                    rounds=len(means),
                    images_per_s=spec["batch"] / (statistics.median(means) / 1e3),
                )
                peaks = [r["peak_memory_gb"] for r in rounds if "peak_memory_gb" in r]
                if peaks:
                    row["peak_memory_gb"] = max(peaks)
            rows.append(row)
    return rows + averages(rows)


def averages(rows: list[dict]) -> list[dict]:
    """Per provider and precision, the step time averaged over the penalty's interval k:
    ``((k - 1) unregularised + regularised) / k`` (k = 1: every step is regularised)."""
    timed = {
        (r["provider"], r["precision"], r["kind"]): r["ms_median"] for r in rows if "ms_median" in r
    }
    out = []
    for row in rows:
        reg = timed.get((row["provider"], row["precision"], "regularised"))
        plain = timed.get((row["provider"], row["precision"], "unregularised"))
        k = row["reg_interval"]
        if row["kind"] != "regularised" or reg is None or (k > 1 and plain is None):
            continue
        ms = reg if k == 1 else ((k - 1) * plain + reg) / k
        keep = ("provider", "checkout", "precision", "preset", "batch", "gan", "reg_interval")
        out.append(
            {
                **{key: row[key] for key in keep},
                "kind": "average",
                "ms_median": ms,
                "images_per_s": row["batch"] / (ms / 1e3),
            }
        )
    return out


def _count(row: dict, key: str, spec: str = "") -> str:
    return "—" if key not in row else format(row[key], spec)


def summary(result: dict) -> str:
    return "; ".join(
        f"{kind}: {e['aten_ops']} ops, {e['convolutions']} convs "
        f"({e['grouped_convolutions']} grouped), {e['tflop']:.3f} TFLOP"
        for kind, e in result["kinds"].items()
    )


def markdown(env: dict, rows: list[dict]) -> str:
    extra = f", CUDA {env['cuda']}" if "cuda" in env else f", {env.get('threads')} threads"
    lines = [
        f"# Stage-1 training step — {env['device']}",
        "",
        f"{env['date']}; torch {env['torch']}, triton {env.get('triton', '—')}{extra}; "
        f"diffusers {env.get('diffusers', '—')}. `python bench/train_step.py "
        f"{env.get('command', '')}`",
        "",
        "| provider | GAN loss | precision | step | aten ops | convs | grouped | TFLOP "
        "| of it FIR | ms/step (median) | min–max | images/s | peak GB | vs VQ-f4 "
        "| vs baseline |",
        "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    index = {(r["provider"], r["precision"], r["kind"]): r for r in rows}
    for r in rows:
        ms = r.get("ms_median")
        ratios = []
        for other in ("vq-f4", "brics-baseline"):
            ref = index.get((other, r["precision"], r["kind"]))
            if ref is None:  # a provider penalising every step: its every step
                ref = index.get((other, r["precision"], "average"))
            good = ms and ref and ref.get("ms_median") and r["provider"] != other
            ratios.append(f"{ref['ms_median'] / ms:.2f}x" if good else "—")
        spread = f"{r['ms_min']:.0f}–{r['ms_max']:.0f}" if "ms_min" in r else "—"
        step = f"{r['kind']} (k = {r['reg_interval']})" if r["kind"] == "average" else r["kind"]
        lines.append(
            f"| {r['provider']} | {r['gan']} | {r['precision']} | {step} | "
            f"{_count(r, 'aten_ops')} | "
            f"{_count(r, 'convolutions')} | {_count(r, 'grouped_convolutions')} | "
            f"{_count(r, 'tflop', '.3f')} | {_count(r, 'filter_tflop', '.3f')} | "
            + (f"{ms:.0f} | {spread} | {r['images_per_s']:.2f} | " if ms else "— | — | — | ")
            + f"{_count(r, 'peak_memory_gb', '.2f')} | {ratios[0]} | {ratios[1]} |"
        )
    lines += [
        "",
        "vs VQ-f4 / vs baseline: that provider's step time over this row's (> 1: this row is "
        "faster), same precision and kind of step (against a provider that penalises every "
        "step: its every step). `brics-baseline`: BRICS as the code of "
        "the `--baseline` checkout trains it. A step is `AutoencoderStage.train_step` of "
        "`train/ae.py`, GAN on; *regularised* steps also run the penalty (every "
        "`--reg-interval` steps; every step for WGAN-GP); *average*: the step time averaged "
        "over the penalty's interval k, ((k - 1) unregularised + regularised) / k, what "
        "training runs at. Counts are of what a GPU runs: the "
        "grid's Triton kernels (interpreted on the CPU) and the FIR passes in their CUDA "
        "form; views and other metadata ops included. TFLOP: `torch.utils.flop_counter`'s "
        "formulas (convolutions, matrix products, attention; the CPU's fused attention by "
        "its CUDA counterparts'); *of it FIR*: in the FIR passes "
        "(convolutions by StyleGAN2's 4 x 4 filter; FIR passes made of elementwise ops "
        "count no FLOPs there).",
    ]
    return "\n".join(lines) + "\n"


def write(stem: Path, env: dict, rows: list[dict]) -> None:
    from common import write_results

    write_results(stem, {"environment": env, "rows": rows}, markdown(env, rows))


def parse(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cuda", help="where to run")
    parser.add_argument("--preset", default="church-64x64x4", help="BRICS preset")
    parser.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help="images per step (default: 12 on CUDA, 1 on the CPU)",
    )
    parser.add_argument(
        "--gan",
        default=None,
        choices=("nonsaturating-r1", "wgan-gp"),
        help="adversarial loss (default: train/ae.py's)",
    )
    parser.add_argument(
        "--precisions",
        nargs="+",
        choices=("fp32", "tf32", "bf16"),
        default=None,
        help="default: tf32 bf16 on CUDA, fp32 on the CPU",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=None,
        help="timing rounds per provider (default: 3 on the CPU, 1 on CUDA)",
    )
    parser.add_argument(
        "--steps",
        type=int,
        default=None,
        help="timed steps of each kind per round (default: 1 on the CPU, 10 on CUDA)",
    )
    parser.add_argument(
        "--warmup",
        type=int,
        default=2,
        help="untimed steps of each kind first (on the CPU the first steps also grow the "
        "process's heap)",
    )
    parser.add_argument(
        "--threads", type=int, default=0, help="torch threads on the CPU (0: all cores)"
    )
    parser.add_argument(
        "--baseline",
        type=Path,
        default=None,
        help="a checkout of other code (say, the commit before a change) to "
        "time BRICS's step of as well",
    )
    parser.add_argument(
        "--baseline-gan",
        default=None,
        choices=("nonsaturating-r1", "wgan-gp"),
        help="the --baseline checkout's adversarial loss (default: --gan's; say, its own "
        "default, to compare default against default)",
    )
    parser.add_argument("--no-vq", action="store_true", help="skip the VQ-f4 baseline")
    parser.add_argument(
        "--fir",
        choices=("folded", "depthwise"),
        default=None,
        help="form of BRICS's FIR passes when timing (default: the device's; "
        "op counts always use the CUDA form, folded)",
    )
    parser.add_argument(
        "--channels-last",
        choices=("auto", "true", "false"),
        default="auto",
        help="train/ae.py --channels-last (auto: its default, on under bf16)",
    )
    parser.add_argument("--compile", action="store_true", help="train/ae.py --compile true")
    parser.add_argument("--no-perceptual", action="store_true", help="no LPIPS term")
    parser.add_argument("--count-only", action="store_true", help="ops and FLOPs, no timing")
    parser.add_argument(
        "--no-count",
        dest="count",
        action="store_false",
        help="timing only (the counts do not depend on the device: count on the CPU)",
    )
    parser.add_argument("--out", type=Path, default=None, help="output stem (.json/.md added)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        return parser, args
    cpu = args.device == "cpu"
    args.batch_size = args.batch_size or (1 if cpu else 12)
    args.precisions = args.precisions or (["fp32"] if cpu else ["tf32", "bf16"])
    if args.count_only and not args.count:
        parser.error("--count-only and --no-count leave nothing to measure")
    args.rounds = 0 if args.count_only else (args.rounds or (3 if cpu else 1))
    args.steps = args.steps or (1 if cpu else 10)
    for name in ("batch_size", "steps", "warmup"):
        if getattr(args, name) < (1 if name != "warmup" else 0):
            parser.error(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
    if args.baseline_gan and not args.baseline:
        parser.error("--baseline-gan needs --baseline")
    if args.baseline and not (args.baseline / "train" / "ae.py").is_file():
        parser.error(f"--baseline {args.baseline}: no train/ae.py there")
    return parser, args


def main(argv=None) -> None:
    parser, args = parse(argv)
    if args.worker:
        print(json.dumps(run_worker(json.loads(args.worker))))
        return
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda needs a CUDA GPU (use --device cpu)")
    if args.gan is None:
        sys.path.insert(0, str(ROOT))
        from train.ae import AEOptions

        args.gan = AEOptions.__dataclass_fields__["gan"].default
    from common import environment, result_stem

    env = environment(args.device)
    env["command"] = " ".join(sys.argv[1:] if argv is None else argv)
    if not args.no_vq:
        try:
            import diffusers

            env["diffusers"] = diffusers.__version__
        except ImportError:
            parser.error('the VQ-f4 baseline needs diffusers: pip install -e ".[bench]"')
    stem = result_stem("train_step", env, args.out)
    rows = measure(args, env, stem)
    write(stem, env, rows)
    print(markdown(env, rows))


if __name__ == "__main__":
    main()
