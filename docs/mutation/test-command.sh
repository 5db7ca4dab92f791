#!/usr/bin/env bash
# One mutant's verdict: the fast core unit tests, then the checks of core against the reference
# and the trainer tests. Prints which one killed the mutant (cosmic-ray keeps the output).
#   test-command.sh PYTHON CORPUS     (run in the mutated tree; CORPUS is a timemachine.txt)
py="$1"
ROSETTA_RNN_DATA="$(dirname "$2")"
export ROSETTA_RNN_DATA OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=1
export PYTHONDONTWRITEBYTECODE=1
pytest=("$py" -m pytest -q -x -p no:randomly -p no:cacheprovider)
if ! "${pytest[@]}" tests/test_model.py tests/test_data.py tests/test_checkpoint.py \
  tests/test_evaluation.py tests/test_ops_scan.py \
  tests/test_sampling.py > /dev/null 2>&1; then
  echo "KILLED-BY: before"; exit 1
fi
if ! "${pytest[@]}" tests/test_reference.py tests/test_trainer.py -k "not conform" \
  > /dev/null 2>&1; then
  echo "KILLED-BY: reference"; exit 1
fi
echo "SURVIVED"
