"""The GPU figures of issue 12, in two sections sized for the device's 5-minute calls.

    python3 bench/gpu.py speed  --out $OUT   # bare and server s/img, eager and compiled
                                             # (compile time apart), MFU, micro-batching at
                                             # 512 and 1024, lane vs unbounded under 8
                                             # clients, time to the first partial image
    python3 bench/gpu.py memory --out $OUT   # peak GPU memory and s/img per memory mode
    .venv/bin/python bench/gpu.py all --tiny --out /tmp/gpu-dry   # CPU dry run, tiny model

Model: sd3-medium-random (SD3 Medium's shapes, random weights, built on the device), bf16,
1024x1024, 28 steps, guidance 7 (CFG). Every figure is appended to `results.jsonl` the
moment it is measured and `summary.md` is rewritten, so a run cut off at its limit still
returns what it measured. `--budget` seconds: no new measurement starts past it.

"server" is the real Flask app (create_app, the lane, PNG encoding, file writes) behind
werkzeug's threaded HTTP server on loopback, around the SAME modules as the bare pipeline
(the engine's `loader` seam): a second copy of SD3 in a Gunicorn process would cost device
minutes to build. Gunicorn's gthread worker also runs one thread per request.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import logging
import platform
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # `python bench/gpu.py` imports `app` from the repo root

import requests  # noqa: E402
import torch  # noqa: E402

from app.engine.loading import load_pipeline  # noqa: E402
from app.engine.options import EngineOptions, apply_options  # noqa: E402

PROMPT = "a lighthouse on a cliff at dusk, oil painting, warm light"
FLOP_PER_IMAGE = 500e12  # SD3 Medium, 1024x1024, 28 steps, CFG (issue 12's estimate)
PEAK_BF16 = {"H100": 989e12, "H200": 989e12}  # dense bf16 tensor-core peak, SXM
CLIENTS = 8

# Memory modes: label -> options. Sequential offload last: slowest by far.
MEMORY_MODES: dict[str, EngineOptions] = {
    "full (bf16)": EngineOptions(),
    "no T5": EngineOptions(drop_t5=True),
    "int8 transformer": EngineOptions(quantize="int8"),
    "int8 transformer + no T5": EngineOptions(quantize="int8", drop_t5=True),
    "fp8 transformer": EngineOptions(quantize="fp8"),
    "int8 transformer + text encoders": EngineOptions(
        quantize="int8", quantize_components=("transformer", "text_encoders")
    ),
    "fused QKV + channels-last VAE": EngineOptions(fuse_qkv=True, vae_channels_last=True),
    "model offload": EngineOptions(offload="model"),
    "model offload + no T5": EngineOptions(offload="model", drop_t5=True),
    "model offload + int8 + no T5": EngineOptions(offload="model", quantize="int8", drop_t5=True),
    "sequential offload": EngineOptions(offload="sequential"),
}


class Plan:
    """What to run: the real settings on a GPU, or a shrunken dry run (--tiny)."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.tiny = args.tiny
        self.device = torch.device("cuda" if torch.cuda.is_available() and not args.tiny else "cpu")
        self.dtype = torch.bfloat16 if self.device.type == "cuda" else torch.float32
        self.model_id = "tiny-random" if args.tiny else "sd3-medium-random"
        self.size = 64 if args.tiny else 1024
        self.small = 32 if args.tiny else 512
        self.steps = 2 if args.tiny else 28
        self.reps = 2 if args.tiny else 3
        self.guidance = 7.0
        self.cache = Path(tempfile.mkdtemp(prefix="gpu-bench-models-"))
        self.started = time.monotonic()
        self.budget = args.budget

    def time_left(self) -> float:
        return self.budget - (time.monotonic() - self.started)


class Recorder:
    """Append each figure to results.jsonl and rewrite summary.md, as it goes."""

    def __init__(self, out: Path, plan: Plan) -> None:
        out.mkdir(parents=True, exist_ok=True)
        self.jsonl, self.summary, self.plan = out / "results.jsonl", out / "summary.md", plan
        self.rows: list[dict[str, Any]] = []
        self.record("machine", **machine())

    def record(self, name: str, **values: Any) -> None:
        row = {"name": name, "t": round(time.monotonic() - self.plan.started, 1), **values}
        self.rows.append(row)
        with self.jsonl.open("a") as file:
            file.write(json.dumps(row, default=str) + "\n")
        print(f"[{row['t']:7.1f}s] {name}: {json.dumps(values, default=str)}", flush=True)
        lines = ["| t (s) | figure | values |", "| --- | --- | --- |"]
        lines += [f"| {r['t']} | {r['name']} | "
                  + ", ".join(f"{k}={v}" for k, v in r.items() if k not in ("name", "t"))
                  + " |" for r in self.rows]  # fmt: skip
        self.summary.write_text("\n".join(lines) + "\n")


def machine() -> dict[str, Any]:
    """Say where this ran: GPU, versions, date."""
    import diffusers

    info = {"date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "python": platform.python_version(), "torch": torch.__version__,
            "diffusers": diffusers.__version__}  # fmt: skip
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
        info["gpu_memory_gib"] = round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1)
    else:
        info["cpu"] = platform.processor() or platform.machine()
    return info


def peak_flops() -> float | None:
    """Return the GPU's dense bf16 peak, when known."""
    name = torch.cuda.get_device_name() if torch.cuda.is_available() else ""
    return next((flops for key, flops in PEAK_BF16.items() if key in name), None)


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def reset_peak() -> None:
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()


def memory() -> dict[str, float]:
    """Return allocated, peak allocated and peak reserved GiB on the GPU."""
    if not torch.cuda.is_available():
        return {}
    gib = 2**30
    return {"allocated_gib": round(torch.cuda.memory_allocated() / gib, 2),
            "peak_allocated_gib": round(torch.cuda.max_memory_allocated() / gib, 2),
            "peak_reserved_gib": round(torch.cuda.max_memory_reserved() / gib, 2)}  # fmt: skip


def build(plan: Plan, options: EngineOptions) -> Any:
    """Load the model as the server does (load-time options), then apply the others."""
    pipe = load_pipeline(plan.model_id, plan.device, plan.dtype, plan.cache, options)
    apply_options(pipe, options, plan.device)
    return pipe


def drop(pipe: Any) -> None:
    """Free a pipeline's GPU memory before the next one is built."""
    if pipe is not None and hasattr(pipe, "remove_all_hooks"):
        pipe.remove_all_hooks()
    del pipe
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# Bare calls run on a worker thread, as the server's do: on a busy CPU, libgomp's spinning
# makes main-thread calls several times slower (see bench/run.py's BareLoop).
_BARE_THREAD = ThreadPoolExecutor(1, "bare")


def bare_call(plan: Plan, pipe: Any, size: int, batch: int = 1, seed: int = 0) -> float:
    """Time one bare pipeline call of `batch` images (one prompt and generator each)."""
    return _BARE_THREAD.submit(_bare_call, plan, pipe, size, batch, seed).result()


def _bare_call(plan: Plan, pipe: Any, size: int, batch: int, seed: int) -> float:
    sync()
    started = time.perf_counter()
    generators = [torch.Generator("cpu").manual_seed(seed + i) for i in range(batch)]
    pipe([PROMPT] * batch, height=size, width=size, num_inference_steps=plan.steps,
         guidance_scale=plan.guidance, generator=generators)  # fmt: skip
    sync()
    return time.perf_counter() - started


def seconds_per_image(plan: Plan, call: Callable[[int], float], reps: int | None = None) -> dict:
    """Warm up once, then time `reps` calls; return mean and spread (s per call)."""
    warm = call(0)
    times = [call(i + 1) for i in range(reps or plan.reps)]
    return {"warm_s": round(warm, 3), "mean_s": round(statistics.mean(times), 3),
            "min_s": round(min(times), 3), "max_s": round(max(times), 3)}  # fmt: skip


def mfu(plan: Plan, seconds: float) -> float | None:
    """Model FLOP utilisation at 1024x1024/28 steps/CFG (None elsewhere or on unknown GPUs)."""
    peak = peak_flops()
    if plan.tiny or peak is None:
        return None
    return round(FLOP_PER_IMAGE / seconds / peak, 3)


@contextmanager
def server(plan: Plan, pipe: Any, **settings: Any) -> Iterator[str]:
    """Run the app around `pipe`'s modules behind a threaded HTTP server; yield its URL."""
    from werkzeug.serving import make_server

    from app import create_app

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # no line per request

    config = {"MODEL_ID": plan.model_id, "DEVICE": plan.device.type, "WARMUP": False,
              "DEFAULT_SIZE": f"{plan.size}x{plan.size}", "DEFAULT_STEPS": plan.steps,
              "MAX_QUEUE": 64, "REQUEST_TIMEOUT_SECONDS": 600.0, "LOG_LEVEL": "WARNING",
              "IMAGE_DIR": tempfile.mkdtemp(prefix="gpu-bench-images-"),
              "MODEL_CACHE_DIR": str(plan.cache), **settings}  # fmt: skip
    app = create_app(config, loader=lambda *_: pipe)
    assert app.extensions["engine"].wait_until_loaded(60)
    http = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=http.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{http.server_port}"
    finally:
        http.shutdown()


def post(plan: Plan, url: str, seed: int, size: int | None = None, **extra: Any) -> float:
    """Time one generation request through HTTP."""
    size = size or plan.size
    body = {"prompt": PROMPT, "size": f"{size}x{size}", "seed": seed, **extra,
            "guidance_scale": plan.guidance, "num_inference_steps": plan.steps}  # fmt: skip
    started = time.perf_counter()
    response = requests.post(f"{url}/v1/images/generations", json=body, timeout=900)
    response.raise_for_status()
    return time.perf_counter() - started


def first_partial(plan: Plan, url: str) -> dict[str, float]:
    """Time a streamed request: first partial image, and the completed image."""
    body = {"prompt": PROMPT, "size": f"{plan.size}x{plan.size}", "stream": True,
            "partial_images": 2, "guidance_scale": plan.guidance,
            "num_inference_steps": plan.steps, "seed": 7}  # fmt: skip
    started, times = time.perf_counter(), {}
    with requests.post(f"{url}/v1/images/generations", json=body, stream=True, timeout=900) as r:
        r.raise_for_status()
        for line in r.iter_lines():
            if line.startswith(b"event:") and b"partial_image" in line:
                times.setdefault("first_partial_s", round(time.perf_counter() - started, 3))
            if line.startswith(b"event:") and b"completed" in line:
                times["completed_s"] = round(time.perf_counter() - started, 3)
    return times


def under_clients(plan: Plan, url: str, clients: int) -> dict[str, float]:
    """Send `clients` requests at once; latency mean and p95, images per second."""
    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        latencies = sorted(pool.map(lambda i: post(plan, url, 100 + i), range(clients)))
    wall = time.perf_counter() - started
    p95 = latencies[min(len(latencies) - 1, round(0.95 * (len(latencies) - 1)))]
    return {"mean_s": round(statistics.mean(latencies), 3), "p95_s": round(p95, 3),
            "images_per_s": round(clients / wall, 3)}  # fmt: skip


def speed(plan: Plan, rec: Recorder, compile_too: bool) -> None:
    """Bare and server s/img eager, streaming, batching, lane vs unbounded, then compiled."""
    started = time.perf_counter()
    pipe = build(plan, EngineOptions())
    rec.record("load", seconds=round(time.perf_counter() - started, 1), **memory())
    size = plan.size
    reset_peak()
    bare = seconds_per_image(plan, lambda i: bare_call(plan, pipe, size, seed=i))
    rec.record("bare eager", size=size, steps=plan.steps, mfu=mfu(plan, bare["mean_s"]),
               **bare, **memory())  # fmt: skip
    with server(plan, pipe, MAX_CONCURRENT_GENERATIONS=1) as url:
        served = seconds_per_image(plan, lambda i: post(plan, url, i))
        rec.record("server eager (lane)", **served,
                   bare_over_server=round(bare["mean_s"] / served["mean_s"], 3))  # fmt: skip
        rec.record("streaming, 2 partial images", **first_partial(plan, url))
        if plan.time_left() > 60:
            rec.record(f"lane, {CLIENTS} clients", **under_clients(plan, url, CLIENTS))
    if plan.time_left() > 60:
        with server(plan, pipe, MAX_CONCURRENT_GENERATIONS=0) as url:
            rec.record(f"unbounded threads, {CLIENTS} clients", **under_clients(plan, url, CLIENTS))
    for batch_size in (plan.small, plan.size):
        if plan.time_left() < 45:
            break
        one = seconds_per_image(plan, lambda i, s=batch_size: bare_call(plan, pipe, s, seed=i))
        four = seconds_per_image(
            plan, lambda i, s=batch_size: bare_call(plan, pipe, s, batch=4, seed=10 * i), reps=1
        )
        rec.record(f"micro-batching {batch_size}x{batch_size}",
                   one_at_a_time_images_per_s=round(1 / one["mean_s"], 3),
                   batch4_images_per_s=round(4 / four["mean_s"], 3),
                   ratio=round(one["mean_s"] * 4 / four["mean_s"], 3), **memory())  # fmt: skip
    if not compile_too or plan.time_left() < 90:
        rec.record("compiled", skipped=f"{plan.time_left():.0f}s left" if compile_too else "off")
        return
    apply_options(pipe, EngineOptions(compile=True), plan.device)
    first = bare_call(plan, pipe, size)  # compiles this shape
    compiled = seconds_per_image(plan, lambda i: bare_call(plan, pipe, size, seed=i))
    rec.record("bare compiled", compile_s=round(first - compiled["mean_s"], 1),
               first_call_s=round(first, 1), mfu=mfu(plan, compiled["mean_s"]),
               eager_over_compiled=round(bare["mean_s"] / compiled["mean_s"], 3),
               **compiled, **memory())  # fmt: skip
    with server(plan, pipe, MAX_CONCURRENT_GENERATIONS=1) as url:
        served = seconds_per_image(plan, lambda i: post(plan, url, i))
        rec.record("server compiled (lane)", **served,
                   bare_over_server=round(compiled["mean_s"] / served["mean_s"], 3))  # fmt: skip


def memory_modes(plan: Plan, rec: Recorder, only: list[str] | None) -> None:
    """Peak GPU memory and s/img per memory mode, each built fresh."""
    for label, options in MEMORY_MODES.items():
        if only and label not in only:
            continue
        if plan.time_left() < 40:
            rec.record(f"mode: {label}", skipped=f"{plan.time_left():.0f}s left")
            continue
        if plan.device.type != "cuda" and options.offload != "none":
            rec.record(f"mode: {label}", skipped="offload needs a GPU")
            continue
        if options.quantize != "none":
            try:
                options.check(plan.device, 1)
            except ValueError as exc:
                rec.record(f"mode: {label}", skipped=str(exc))
                continue
        pipe = None
        try:
            started = time.perf_counter()
            pipe = build(plan, options)
            loaded = round(time.perf_counter() - started, 1)
            gc.collect()
            reset_peak()
            after_load = memory().get("allocated_gib")
            reps = 1 if options.offload == "sequential" else 2
            timing = seconds_per_image(
                plan, lambda i, p=pipe: bare_call(plan, p, plan.size, seed=i), reps=reps
            )
            rec.record(f"mode: {label}", load_s=loaded, allocated_after_load_gib=after_load,
                       **timing, **memory())  # fmt: skip
        except Exception as exc:  # one mode failing must not lose the others
            rec.record(f"mode: {label}", failed=f"{type(exc).__name__}: {exc}"[:400])
        finally:
            drop(pipe)
            pipe = None
            gc.collect()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("section", choices=("speed", "memory", "all"))
    parser.add_argument("--out", type=Path, required=True, help="where results go ($OUT)")
    parser.add_argument("--tiny", action="store_true", help="CPU dry run on tiny-random")
    parser.add_argument("--no-compile", action="store_true", help="skip the compiled runs")
    parser.add_argument("--modes", nargs="*", help="memory modes to run (labels)")
    parser.add_argument("--budget", type=float, default=270.0, help="seconds; no new figure after")
    args = parser.parse_args(argv)
    plan = Plan(args)
    rec = Recorder(args.out, plan)
    rec.record("plan", model=plan.model_id, device=str(plan.device), dtype=str(plan.dtype),
               size=plan.size, steps=plan.steps, guidance=plan.guidance)  # fmt: skip
    if args.section in ("speed", "all"):
        speed(plan, rec, compile_too=not args.no_compile)
    if args.section in ("memory", "all"):
        memory_modes(plan, rec, args.modes)
    rec.record("done", elapsed_s=round(time.monotonic() - plan.started, 1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
