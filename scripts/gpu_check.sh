#!/usr/bin/env bash
# The CUDA checks of this project, in one run on a GPU machine (python3 with torch there; gymnasium,
# ale-py, pydantic and SB3 carried as wheels in .whl/). Writes its log to $OUT/gpu.log when OUT is set.
#   bash scripts/gpu_check.sh            # runs, resumes and benchmarks (about 7 minutes on one H200)
#   bash scripts/gpu_check.sh graph      # the CUDA-graphed update: tests, a run and its benchmarks (about 4)
set -u
STAGE=${1:-all}
OUT=${OUT:-/tmp/gpu-out}; mkdir -p "$OUT"
exec > >(tee "$OUT/gpu.log") 2>&1
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site || exit 1
fi
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch, gymnasium, ale_py, os; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), 'cpus', os.cpu_count())"

if [ "$STAGE" = graph ]; then
  echo "== CUDA-graph tests"
  timeout 120 python3 -m pytest -q -p no:cacheprovider tests/test_graphed.py tests/test_replay.py -k "cuda or graph"
  R=/tmp/gpu-runs; rm -rf $R; mkdir -p $R
  echo "== smoke (EWC, 2 games) with dqn.cuda_graph=true and replay.storage=device, then resumed for a 2nd cycle"
  timeout 120 python3 scripts/train.py --config configs/smoke.yaml --run-dir $R/g device=cuda dqn.cuda_graph=true \
    replay.storage=device logging.progress_bar=false > $R/g.log 2>&1; echo "exit: $?"; tail -4 $R/g.log
  timeout 120 python3 scripts/train.py --resume $R/g schedule.cycles=2 logging.progress_bar=false > $R/g2.log 2>&1
  echo "resume exit: $?"; tail -2 $R/g2.log; cat $R/g/eval.csv
  echo "== benchmarks, CUDA graph"
  timeout 300 python3 scripts/bench.py --device cuda --envs 8,16,32 --precisions fp32 --cuda-graph \
    --only learner,end_to_end --repeats 3
  exit 0
fi
echo "== replay tests on cuda"
timeout 120 python3 -m pytest -q -p no:cacheprovider tests/test_replay.py -k cuda

run() { python3 scripts/train.py "$@" logging.progress_bar=false; }
echo "== smoke on CUDA, SIGTERM while training, resume on CUDA"
R=/tmp/gpu-runs; rm -rf $R; mkdir -p $R
python3 scripts/train.py --config configs/smoke.yaml --run-dir $R/a device=cuda schedule.steps_per_visit=8000 \
  logging.progress_bar=false > $R/a.log 2>&1 &
pid=$!
for _ in $(seq 120); do grep -q "training Breakout" $R/a.log && break; sleep 0.5; done
sleep 2; kill -TERM $pid; wait $pid; echo "exit after SIGTERM: $? (3 expected)"; tail -3 $R/a.log
timeout 200 python3 scripts/train.py --resume $R/a logging.progress_bar=false > $R/a2.log 2>&1; echo "resume on CUDA exit: $?"
tail -4 $R/a2.log; cat $R/a/eval.csv
echo "== CPU -> CUDA: one cycle on the CPU, the second resumed on CUDA"
timeout 120 python3 scripts/train.py --config configs/smoke.yaml --run-dir $R/b device=cpu logging.progress_bar=false \
  > $R/b.log 2>&1; echo "cpu exit: $?"
timeout 120 python3 scripts/train.py --resume $R/b device=cuda schedule.cycles=2 logging.progress_bar=false \
  > $R/b2.log 2>&1; echo "resume on cuda exit: $?"; tail -3 $R/b2.log
python3 scripts/evaluate.py --checkpoint $R/b --episodes 2 --max-episode-frames 4000 --output $R/b/evaluations/final.json \
  2>&1 | tail -3; echo "evaluate exit: $?"

echo "== replay storage micro-benchmark"
timeout 120 python3 scripts/bench_replay_device.py --repeats 5
echo "== benchmarks on cuda"
timeout 420 python3 scripts/bench.py --device cuda --envs 8,16,32 --only learner,end_to_end --repeats 3
