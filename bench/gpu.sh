#!/usr/bin/env bash
# GPU figures for docs/benchmarks.md, in one prepared run (issue #15): under 8 minutes, no
# downloads (the models come from `make models`, already in models/; nothing is installed).
#
#   bash bench/gpu.sh            # from the repository root, with .venv ready and Redis on :6379
#
# 1. MiniLM (TorchScript, models/minilm/1) on CUDA at batch 1, 32 and 128, token ids at the
#    bench mix's lengths: sentences/s, so the batching gain a GPU gives is visible on its own.
# 2. A worker draining a backlog, arrival order against length-aware windows (bench/windows.py;
#    the torch backend runs on cuda when it is available).
# 3. nearline end to end beside Celery: `python -m bench --quick --only limit,embedded-1w,celery`.
# Each step has its own timeout; a step that fails is reported and the next one runs.
set -u
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
OUT=${OUT:-bench/results}
mkdir -p "$OUT"
LOG="$OUT/gpu-$(date -u +%Y%m%dT%H%M%SZ).txt"
exec > >(tee "$LOG") 2>&1

echo "== $(date -u) $(nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null || echo 'no nvidia-smi')"
"$PY" -c 'import torch; assert torch.cuda.is_available(), "no CUDA device"; print("torch", torch.__version__, torch.cuda.get_device_name(0))' || exit 1

echo "== 1. MiniLM on CUDA: batch 1 vs 32 vs 128"
timeout 120 "$PY" - <<'PY' || echo "step 1 failed"
import time

import torch

from bench import workload

model = torch.jit.load("models/minilm/1/model.pt", map_location="cuda").eval()
texts = workload.texts(1024)
# ~1.3 word pieces per word plus [CLS]/[SEP], capped as the tokenize step caps
lengths = [min(int(len(t.split()) * 1.3) + 2, 128) for t in texts]
gen = torch.Generator().manual_seed(0)


def run(batch: list[int]) -> None:
    width = max(batch)
    ids = torch.randint(1000, 30000, (len(batch), width), generator=gen)
    mask = torch.zeros(len(batch), width, dtype=torch.int64)
    for row, n in enumerate(batch):
        mask[row, :n] = 1
    with torch.inference_mode():
        model(ids.cuda(), mask.cuda())


for size in (1, 32, 128):
    for k in range(0, 256, size):  # warm-up
        run(lengths[k : k + size] or [16])
    torch.cuda.synchronize()
    for order in ("arrival", "sorted"):
        seq = lengths if order == "arrival" else sorted(lengths)
        started = time.perf_counter()
        for k in range(0, len(seq), size):
            run(seq[k : k + size])
        torch.cuda.synchronize()
        rate = len(seq) / (time.perf_counter() - started)
        print(f"batch {size:>3} {order:<8} {rate:9.1f} sentences/s")
PY

echo "== 2. worker drain: arrival order vs length-aware windows"
timeout 150 "$PY" -m bench.windows --jobs 4096 || echo "step 2 failed"

echo "== 3. nearline end to end beside Celery (one quick round)"
timeout 210 "$PY" -m bench --quick --only limit,embedded-1w,celery --out "$OUT" || echo "step 3 failed"
echo "== done $(date -u); this log: $LOG"
