#!/usr/bin/env bash
# One GPU session's measurements, as one command (run from the repository root):
#
#   bash experiments/benchmarks/gpu_session.sh OUT_DIR [FORMULATIONS_S] [ROUND_SPEED_S] [ONLY] [--smoke]
#
# 1. formulations.py: which formulation of the per-client step is fastest on this device
#    (its decision rules; at most FORMULATIONS_S seconds, default 330);
# 2. round_speed.py in the formulation step 1 picked (--formulation), for the rows in ONLY
#    (round_speed's --only, in that order; default: the rows never measured on a GPU first),
#    at most ROUND_SPEED_S seconds (default 230). Its records are written after each row, so
#    a cut-short run keeps what it measured; the markdown is rendered from them at the end.
# A formulations JSON already in OUT_DIR (from an earlier call on this machine) is reused
# and step 1 skipped, so a second call only continues step 2 (give it the rows left);
# FORMULATIONS_S=0 skips step 1 too and uses the committed results/formulations_<tag>.json
# when there is one (the library's defaults follow it once it is applied).
# FORMULATIONS_ROWS (environment, optional): formulations.py's --rows, to measure only the rows
# a question needs (rules whose rows are missing pick "n/a" and keep the library's default).
# Writes into OUT_DIR: env.txt (device, driver, versions), formulations_<tag>.{json,md},
# round_speed_<tag>.{json,md} and a log of each step; <tag> is gpu_<device> (e.g. gpu_h200),
# or cpu_smoke with --smoke (tiny sizes: a check that the session runs end to end).
set -u
out=${1:?usage: gpu_session.sh OUT_DIR [FORMULATIONS_S] [ROUND_SPEED_S] [ONLY] [--smoke]}
f_s=${2:-330}
r_s=${3:-230}
only=${4:-"resnet18/fedavg clients=20 bfloat16\$,resnet18/fedavg clients=20 float32\$,resnet18/omnifm clients=20 float32\$,cnn/fedavg clients=1000 float32\$,cnn/fedavg clients=1000 bfloat16\$,cnn/omnifm clients=1000 float32\$,clients=10000,cnn/fedavg clients=20 float32\$,cnn/fedavg clients=100 float32\$,fused x4"}
smoke=${5:-}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
# compiled programs persist across calls on one machine (a rerun skips most compilation)
export JAX_COMPILATION_CACHE_DIR=${JAX_COMPILATION_CACHE_DIR:-$PWD/.jaxcache}
export JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS=${JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS:-2}
py=${PYTHON:-python3}
tag=$("$py" -c "
import jax, re
d = jax.devices()[0]
print('cpu_smoke' if d.platform == 'cpu' else 'gpu_' + re.sub(r'[^a-z0-9]+', '_', d.device_kind.lower().replace('nvidia', '')).strip('_'))
") || exit 1
{ date -u; nvidia-smi 2>/dev/null || echo "no nvidia-smi"
  "$py" -c "import jax, jaxlib, flax, optax, sys; print(sys.version); print('jax', jax.__version__, 'jaxlib', jaxlib.__version__, 'flax', flax.__version__, 'optax', optax.__version__); print(jax.devices())"
} > "$out/env.txt" 2>&1
echo "device tag: $tag" >&2
fj="$out/formulations_$tag.json"
committed="experiments/benchmarks/results/formulations_$tag.json"
if [ ! -s "$fj" ] && [ "$f_s" = 0 ] && [ -s "$committed" ]; then
  cp "$committed" "$fj"
fi
if [ -s "$fj" ]; then
  echo "reusing $fj" >&2
elif [ "$f_s" = 0 ]; then
  echo "formulations skipped (FORMULATIONS_S=0): the library's defaults" >&2
else
  timeout "$f_s" "$py" -m experiments.benchmarks.formulations $smoke --repeats 3 --json "$fj" \
    ${FORMULATIONS_ROWS:+--rows "$FORMULATIONS_ROWS"} \
    --md "$out/formulations_$tag.md" > "$out/formulations.log" 2>&1
  echo "formulations exit $?" >&2
  tail -n 12 "$out/formulations.log" >&2
fi
rj="$out/round_speed_$tag.json"
fargs=()
[ -s "$fj" ] && fargs=(--formulation "$fj")
[ -n "$smoke" ] && only="clients=4 float32\$,bfloat16"
timeout "$r_s" "$py" -m experiments.benchmarks.round_speed $smoke --json "$rj.part" --only "$only" \
  "${fargs[@]}" --workloads cnn,cnn10k,omnifm,resnet18,variants > "$out/round_speed.log" 2>&1
echo "round_speed exit $?" >&2
# merge with an earlier call's records (a continued session), then render the markdown
"$py" - "$rj" <<'EOF'
import json, sys
from pathlib import Path
from experiments.benchmarks.round_speed import to_markdown
path = Path(sys.argv[1]); part = Path(str(path) + ".part")
old = json.loads(path.read_text()) if path.exists() else []
new = json.loads(part.read_text()) if part.exists() else []
key = lambda r: (r.get("workload"), r.get("algorithm"), r.get("variant"), r.get("clients"))
merged = [r for r in old if key(r) not in {key(n) for n in new}] + new
path.write_text(json.dumps(merged, indent=2))
part.unlink(missing_ok=True)
table = to_markdown(merged) if merged else "(no records)"
Path(str(path)[:-5] + ".md").write_text(table + "\n")
print(table)
EOF
