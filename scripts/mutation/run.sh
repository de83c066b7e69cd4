#!/usr/bin/env bash
# Mutation testing of the settings-to-behaviour modules with mutmut 2.5.1 (pip install "mutmut==2.5.1", the
# `mutation` extra). See docs/testing.md. mutmut edits the files it mutates, so this runs on a copy of the checkout
# (never the working tree). Each test run is a fork of serve.py, which has torch/diffusers/transformers imported
# once, so a mutant costs seconds instead of an interpreter start; loratrainer itself is imported fresh from disk.
#   scripts/mutation/run.sh              all modules below, each bounded by its budget in seconds
#   MUT_WORK=/tmp/m scripts/mutation/run.sh loss    one module; a rerun in the same MUT_WORK continues its cache
set -uo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
PY=${PYTHON:-$ROOT/.venv/bin/python}
MUTMUT=${MUTMUT:-$(dirname "$PY")/mutmut}
WORK=${MUT_WORK:-$(mktemp -d /tmp/loratrainer-mutation.XXXXXX)}
SOCK=$WORK/.mutserve.sock
T=tests/test_settings_take_effect.py
U=tests/test_train_units.py
NOT="and not changes and not differs"   # the in-process training runs are too slow to repeat per mutant
declare -A TESTS=(
  [loss]="$T $U -k '((prior_loss_weight or min_snr or loss_type or huber or training_target or schema_defaults) $NOT) or loss_types'"
  [noise]="$T $U -k '((noise or multires or kohyas or timesteps or schema_defaults) $NOT) or noise_offset_and or pyramid'"
  [captions]="$T $U -k '((caption or shuffle or keep_tokens or dropout or schema_defaults) $NOT) or caption_rules'"
  [schedulers]="$T $U -k '((lr_ or schedule) $NOT) or warmup or adafactor'"
  [optimizers]="$T $U -k '((optimizer.optimizer or optimizer_args or learning_rate or unet_lr or text_encoder_lr) $NOT) or optimizers_build or lion or adafactor'"
  [dataset]="$T $U -k '((dataset. or reg_data_dir or default_captions or default_image or caption) $NOT) or random_crop_and or caption_rules or processes_split or sampler_length or train_dataset or schema_defaults'"
  [steps]="tests/test_data_steps.py $T -k 'test_data_steps or ((batch_size or epoch or max_train_steps or accumulation or num_processes or reg_data_dir) $NOT)'"
  [buckets]="tests/test_data_buckets.py $T -k 'test_data_buckets or ((buckets. or undersized) $NOT)'"
)
# where each module lives (the first five under loratrainer/train/)
declare -A FILE=([dataset]=loratrainer/train/dataset.py [steps]=loratrainer/data/steps.py [buckets]=loratrainer/data/buckets.py)
declare -A BUDGET=([loss]=600 [noise]=420 [captions]=300 [schedulers]=240 [optimizers]=240 [dataset]=600 [steps]=600 [buckets]=720)
MODULES=("${@:-loss noise captions schedulers optimizers dataset steps buckets}")
[ -f "$WORK/pyproject.toml" ] || (cd "$ROOT" && git ls-files -co --exclude-standard | tar -cf - -T -) | tar -C "$WORK" -xf -
cd "$WORK" && find . -name __pycache__ -prune -exec rm -rf {} +
nice -n 15 "$PY" "$ROOT/scripts/mutation/serve.py" "$SOCK" > "$WORK/serve.log" 2>&1 &
SERVER=$!
trap 'kill $SERVER 2>/dev/null' EXIT
# -x: the line itself (a library's warning in the same log says "already")
until grep -qx ready "$WORK/serve.log" 2>/dev/null; do sleep 1; kill -0 $SERVER || exit 1; done
for m in ${MODULES[@]}; do
  echo "== $m ($(date -u +%T))"
  f=${FILE[$m]:-loratrainer/train/$m.py}
  timeout "${BUDGET[$m]}" nice -n 15 "$MUTMUT" run --paths-to-mutate "$f" \
    --runner "python3 $ROOT/scripts/mutation/client.py $SOCK ${TESTS[$m]}" --tests-dir tests --test-time-base 40 \
    --no-progress --simple-output --disable-mutation-types string,fstring,decorator,annassign > "$WORK/mutmut-$m.log" 2>&1
  # a run stopped by its budget can leave the mutant it was testing in the file: put the original back
  cp "$ROOT/$f" "$f"
done
"$PY" - "$WORK/.mutmut-cache" <<'PY'
import sqlite3, sys
db = sqlite3.connect(sys.argv[1])
for row in db.execute("select SourceFile.filename, Mutant.status, count(*) from Mutant join Line on Mutant.line = Line.id "
                      "join SourceFile on Line.sourcefile = SourceFile.id group by 1, 2 order by 1, 2"):
    print(*row)
PY
echo "results: cd $WORK && $MUTMUT results   (mutmut show <id> shows a mutant)"
# Not while a run is going on in the same folder: mutmut show re-reads the source file into the cache, and during a
# run that file holds a mutant (the cache's line table is then corrupted).
