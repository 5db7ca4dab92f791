#!/usr/bin/env bash
# Mutation testing of core/ with cosmic-ray (by hand, not in CI; about 45 min on 2 cores).
#
#   bash docs/mutation/run.sh [WORKDIR [GROUP ...]]   # needs .venv with '.[all,test,dev]'
#
# cosmic-ray edits the files it mutates in place, so it runs on a copy of HEAD in WORKDIR
# (default /tmp/rosetta-rnn-mutation), imported through a small venv that sees that copy
# first and the project's .venv for everything else. core/ is split into three groups (data,
# model, checkpoint; all three unless named) run in parallel; each mutant runs
# docs/mutation/test-command.sh, which says which suite killed it.
set -euo pipefail
repo="$(cd "$(dirname "$0")/../.." && pwd)"
work="${1:-/tmp/rosetta-rnn-mutation}"
shift || true
groups=("$@")
[[ ${#groups[@]} -gt 0 ]] || groups=(data model checkpoint)
venv_site="$(ls -d "$repo"/.venv/lib/python3*/site-packages)"
# The Time Machine as the command finds it: $ROSETTA_RNN_DATA, the cache, a download.
corpus="$("$repo/.venv/bin/python" -c 'from rosetta_rnn.core import data; print(data.locate_time_machine())')"
rm -rf "$work" && mkdir -p "$work"
python3 -m venv --without-pip "$work/venv"
for group in "${groups[@]}"; do
  tree="$work/$group"
  mkdir -p "$tree"
  git -C "$repo" archive HEAD | tar -x -C "$tree"
  for d in core backends conformance benchmarks; do ln -s "../$d" "$tree/rosetta_rnn/$d"; done
done
site="$(ls -d "$work"/venv/lib/python3*/site-packages)"
printf '%s\n' "$venv_site" > "$site/project.pth"  # the tree itself comes first: the cwd
declare -A modules=(
  [data]="core/data.py core/sampling.py core/files.py core/errors.py"
  [model]="core/model.py core/training.py"
  [checkpoint]="core/checkpoint.py core/evaluation.py core/ops.py"
)
all="core/data.py core/sampling.py core/files.py core/errors.py core/model.py core/training.py core/checkpoint.py core/evaluation.py core/ops.py"
for group in "${groups[@]}"; do
  excluded=()
  for m in $all; do [[ " ${modules[$group]} " == *" $m "* ]] || excluded+=("'$m'"); done
  sed -e "s#@EXCLUDED@#$(IFS=,; echo "${excluded[*]}")#" \
      -e "s#@COMMAND@#bash $repo/docs/mutation/test-command.sh $work/venv/bin/python $corpus#" \
      "$repo/docs/mutation/cosmic-ray.toml" > "$work/$group.toml"
  (cd "$work/$group" \
    && "$repo/.venv/bin/cosmic-ray" init "$work/$group.toml" "$work/$group.sqlite" \
    && "$repo/.venv/bin/cr-filter-operators" "$work/$group.sqlite" "$work/$group.toml" \
    && "$repo/.venv/bin/cosmic-ray" exec "$work/$group.toml" "$work/$group.sqlite") \
    > "$work/$group.log" 2>&1 &
done
wait
sessions=()
for group in "${groups[@]}"; do sessions+=("$work/$group.sqlite"); done
"$repo/.venv/bin/python" "$repo/docs/mutation/summary.py" "${sessions[@]}"
