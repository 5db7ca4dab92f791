# The contract refactor and the Array API backend on the GPU: conform on torch, jax, numpy/CuPy,
# array-api:torch and array-api:cupy with --device gpu; a short train on array-api:cupy.
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee $OUT/gpu.txt
python3 -m pip install -q --no-deps --no-build-isolation --no-index --target /tmp/rr . .gpu/wheels/*.whl 2>&1 | tail -3
export PYTHONPATH=/tmp/rr
REPO=$PWD
cd /tmp
RR="python3 -m rosetta_rnn"
$RR backends 2>&1 | tail -7 | tee $OUT/backends.txt
python3 -c "
import json, subprocess, sys
from rosetta_rnn import backends
for name in ['array-api:torch', 'array-api:cupy', 'array-api:numpy']:
    b = backends.load(name); print(name, b.version(), b.devices(), {d: b.supports_float64(d) for d in b.devices()})
" 2>&1 | tee -a $OUT/backends.txt
( time timeout 420 $RR conform --backends numpy torch jax array-api:torch array-api:cupy --device gpu --corpus $REPO/.gpu/timemachine.txt --json > $OUT/conform-gpu.json ) 2>&1 | tail -4
python3 -c "
import json, collections; d=json.load(open('$OUT/conform-gpu.json')); print('passed', d['passed'], len(d['cells']), 'cells; skipped', d['skipped'])
worst = collections.defaultdict(float)
for c in d['cells']:
    if not c['passed']: print('FAIL', c)
    if c['check'] not in ('interface',) and c['max_error'] == c['max_error']:
        k = (c['backend'], c['dtype'], c['device']); worst[k] = max(worst[k], c['max_error'])
for k, v in sorted(worst.items()): print(k, '%.2g' % v)
" 2>&1 | tee $OUT/conform-summary.txt
( time timeout 120 $RR train --backend array-api:cupy --device gpu --epochs 20 --corpus $REPO/.gpu/timemachine.txt --json > $OUT/train-cupy.json ) 2>&1 | tail -3
python3 -c "import json; d=json.load(open('$OUT/train-cupy.json')); print(d['backend'], d['device'], d['perplexity'], d['tokens_per_sec'])" 2>&1 | tee $OUT/train-summary.txt
