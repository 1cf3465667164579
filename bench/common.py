"""What the benchmarks share: the machine's record, the timers and the result files.

Every result row records the device, the versions and the date (``environment``). On the
CPU, providers alternate in rounds (``alternate``), since these machines drift by up to 2x
within an hour; on CUDA, ``triton.testing.do_bench`` gives quantiles (``cuda_quantiles``).
Results go to ``bench/results/<name>_<device>.{json,md}`` (``write_results``). Nothing here
needs triton, so the CPU benchmarks run where it is not installed.
"""

from __future__ import annotations

import datetime
import json
import platform
import time
from pathlib import Path

import torch

RESULTS = Path(__file__).parent / "results"


def cpu_name() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else what ``platform`` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment(device: str) -> dict:
    """Date, versions and device of a run: ``device`` is ``"cuda"`` or ``"cpu"``."""
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    env = {
        "date": datetime.date.today().isoformat(),
        "torch": torch.__version__,
        "triton": triton_version,
        "python": platform.python_version(),
        "device": torch.cuda.get_device_name() if device == "cuda" else cpu_name(),
    }
    if device == "cuda":
        env["cuda"] = torch.version.cuda
    else:
        env["threads"] = torch.get_num_threads()
    return env


def alternate(passes: dict, rounds: int, repeats: int) -> dict[str, list[float]]:
    """Seconds of every timed pass per provider of ``{provider: (fn, grads)}``: one warm-up
    pass each, then ``rounds`` rounds in which each provider runs ``repeats`` passes in turn
    (``grads``' ``.grad`` reset before each), so all see the same drift of the machine."""
    for fn, _ in passes.values():
        fn()
    times = {provider: [] for provider in passes}
    for _ in range(rounds):
        for provider, (fn, grads) in passes.items():
            for _ in range(repeats):
                for t in grads:
                    t.grad = None
                start = time.perf_counter()
                fn()
                times[provider].append(time.perf_counter() - start)
    return times


def cuda_quantiles(fn, grads) -> tuple[float, float, float]:
    """Median, 20 % and 80 % quantiles in ms of ``fn`` on CUDA (``grads`` reset each time)."""
    import triton.testing

    return tuple(triton.testing.do_bench(fn, quantiles=[0.5, 0.2, 0.8], grad_to_none=grads))


def result_stem(name: str, env: dict, out: Path | None = None) -> Path:
    """``out``, or ``bench/results/<name>_<device>`` with the device name made file-safe."""
    if out is not None:
        return out
    device = env["device"].replace("(R)", "").replace("(TM)", "").strip().replace(" ", "_")
    return RESULTS / f"{name}_{device}"


def write_results(stem: Path, payload: dict, markdown: str) -> None:
    """``<stem>.json`` (the payload) and ``<stem>.md`` (the table a reader opens)."""
    stem.parent.mkdir(parents=True, exist_ok=True)
    stem.with_suffix(".json").write_text(json.dumps(payload, indent=1) + "\n")
    stem.with_suffix(".md").write_text(markdown)
