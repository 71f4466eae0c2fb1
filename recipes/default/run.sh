#!/usr/bin/env bash
# The default model's recipe, end to end, every stage an lfmkit command:
#
#   data -> tokenizer + random init -> teacher (train sft, three runs) -> student (train distill, twice) -> SFT
#   -> semi-online pairs judged by the tasks' verifiers (prefs build) -> DPO sweep (train dpo)
#   -> merge -> GRPO (train grpo) -> eval after every stage (lfmkit eval + score.py)
#
#   bash recipes/default/run.sh [RUN_DIR]          (default runs/default; ~3 h on 2 busy CPU cores)
#
# The random-init models are not evaluated: they score 0 on every task (they never stop).
#
# Resumable: a stage whose output exists is skipped; a training stage that was killed resumes
# from its last checkpoint (--resume). Every stage's wall time goes to RUN_DIR/times.jsonl and
# every eval to RUN_DIR/evals/<stage>/. Seeds are fixed, so a rerun repeats the run.
# SCALE (data size multiplier) and STEPS (training steps multiplier) shrink it for a smoke test.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="${LFMKIT_ROOT:-$(cd "$HERE/../.." && pwd)}"
RUN="${1:-runs/default}"
mkdir -p "$RUN"
RUN="$(cd "$RUN" && pwd)"
DATA="$RUN/data"
DATA4="$RUN/data-x4"
SCALE="${SCALE:-1}"
STEPS="${STEPS:-1}"
LIMIT="${LIMIT:-30}"
export PYTHONPATH="$ROOT:$HERE${PYTHONPATH:+:$PYTHONPATH}"
export LFMKIT_DEFAULT_DATA="$DATA"
# One thread: on a 2-core machine shared with other jobs, two threads per process spin-wait
# against each other (measured 3x slower than one thread under a load of 10).
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
LFMKIT=(python -m lfmkit)

steps() { python -c "print(max(2, round($1 * $STEPS)))"; }

# timed NAME OUTPUT CMD...: run CMD unless OUTPUT exists; log its wall time.
timed() {
  local name="$1" output="$2"
  shift 2
  if [ -e "$output" ]; then
    echo "== $name: $output exists, skipped"
    return 0
  fi
  echo "== $name: $(date -u +%H:%M:%S)"
  local start=$(date +%s)
  "$@"
  local end=$(date +%s)
  echo "{\"stage\": \"$name\", \"seconds\": $((end - start)), \"finished\": \"$(date -u +%FT%TZ)\"}" >>"$RUN/times.jsonl"
  echo "== $name: done in $((end - start)) s"
}

# train NAME OUTPUT CMD...: a training command; resumes when a killed run left checkpoints.
train() {
  local name="$1" output="$2"
  shift 2
  local extra=()
  if [ -d "$output" ] && [ ! -e "$output/model.safetensors" ]; then
    if [ -d "$output/checkpoints" ]; then extra=(--resume); else rm -rf "$output"; fi
  fi
  timed "$name" "$output/model.safetensors" "$@" --output "$output" --no-progress "${extra[@]}"
}

# evaluate STAGE MODEL: the held-out sets, written to evals/STAGE/ (lfmkit eval and score.py at once).
evaluate() {
  local stage="$1" model="$2" out="$RUN/evals/$1"
  timed "eval $stage" "$out/done" bash -c "
    set -e
    mkdir -p '$out'
    ${LFMKIT[*]} eval '$model' --tasks gsm8k,ifeval --data '$DATA/bench' --apply-chat-template \
        --limit $LIMIT --max-tokens 160 --batch-size 16 --output '$out' >'$out/eval.log' 2>&1 &
    python '$HERE/score.py' '$model' '$DATA' '$out/tasks.json' --limit $LIMIT
    wait \$! || { cat '$out/eval.log'; exit 1; }
    touch '$out/done'"
}

TRAIN_DATA=(--data "$DATA/train/tools.jsonl" --data "$DATA/train/extract.jsonl"
            --data "$DATA/train/math.jsonl" --data "$DATA/train/ifeval.jsonl")
COMMON=(--packing --max-length 512 --batch-size 4 --seed 0 --lr-scheduler cosine --weight-decay 0.01)

timed data "$DATA/test/text.jsonl" python "$HERE/data.py" "$DATA" --seed 0 --scale "$SCALE"
# the long stage's 4x training set: the same pools and seed, so its first rows are the 1x set's
timed data-x4 "$DATA4/test/text.jsonl" python "$HERE/data.py" "$DATA4" --seed 0 --scale "$(python -c "print(4 * $SCALE)")"
timed init "$RUN/student-init/model.safetensors" python "$HERE/init_models.py" "$DATA" "$RUN" --seed 0

train teacher "$RUN/teacher" "${LFMKIT[@]}" train sft --model "$RUN/teacher-init" "${TRAIN_DATA[@]}" "${COMMON[@]}" \
  --max-steps "$(steps 140)" --learning-rate 3e-3 --warmup-steps 10 --save-every 20
evaluate teacher "$RUN/teacher"

# Two processes at once from here: on a machine shared with other jobs, two of ours get twice
# the share of the CPU. The teacher trains on (teacher-2) while the student is distilled from
# the first teacher (student-kd1); the student then distils from the final teacher (student-kd).
train teacher-2 "$RUN/teacher-2" "${LFMKIT[@]}" train sft --model "$RUN/teacher" "${TRAIN_DATA[@]}" "${COMMON[@]}" \
  --max-steps "$(steps 160)" --learning-rate 2e-3 --warmup-steps 5 --save-every 20 --seed 1 &
train distill-1 "$RUN/student-kd1" "${LFMKIT[@]}" train distill --model "$RUN/student-init" --teacher "$RUN/teacher" \
  "${TRAIN_DATA[@]}" "${COMMON[@]}" --max-steps "$(steps 200)" --learning-rate 3e-3 --warmup-steps 5 \
  --save-every 20 --kd-loss forward_kl --temperature 1.0 --alpha 0.5 &
wait
evaluate teacher-2 "$RUN/teacher-2" &
evaluate distill-1 "$RUN/student-kd1" &
wait

# The teacher trains on once more (teacher-3) while the student distils from teacher-2 (student-kd).
train teacher-3 "$RUN/teacher-3" "${LFMKIT[@]}" train sft --model "$RUN/teacher-2" "${TRAIN_DATA[@]}" "${COMMON[@]}" \
  --max-steps "$(steps 100)" --learning-rate 1e-3 --warmup-steps 2 --save-every 20 --seed 4 &
train distill "$RUN/student-kd" "${LFMKIT[@]}" train distill --model "$RUN/student-kd1" --teacher "$RUN/teacher-2" \
  "${TRAIN_DATA[@]}" "${COMMON[@]}" --max-steps "$(steps 16)" --learning-rate 1e-3 --warmup-steps 2 \
  --save-every 20 --kd-loss forward_kl --temperature 1.0 --alpha 0.5 --seed 2
wait
evaluate teacher-3 "$RUN/teacher-3" &
evaluate distill "$RUN/student-kd" &
wait

# The long stage: the teacher trains on the 4x training set (new rows of the same pools, the
# held-out sets untouched) in rows of 8 x 512 tokens (teacher-4), while the student distils from
# teacher-3 on the same data (student-kd2) and then goes through the post-training chain below
# (SFT, pairs, DPO, merge, GRPO). Teacher and student each take one core.
X4=(--data "$DATA4/train/tools.jsonl" --data "$DATA4/train/extract.jsonl"
    --data "$DATA4/train/math.jsonl" --data "$DATA4/train/ifeval.jsonl")
LONG=(--packing --max-length 512 --batch-size 8 --lr-scheduler cosine --weight-decay 0.01)
train teacher-4 "$RUN/teacher-4" "${LFMKIT[@]}" train sft --model "$RUN/teacher-3" "${X4[@]}" "${LONG[@]}" \
  --max-steps "$(steps 900)" --learning-rate 2e-3 --warmup-steps 20 --save-every 100 --seed 5 &
TEACHER4=$!
train distill-2 "$RUN/student-kd2" "${LFMKIT[@]}" train distill --model "$RUN/student-kd" --teacher "$RUN/teacher-3" \
  --teacher-quant bf16 "${X4[@]}" "${LONG[@]}" --max-steps "$(steps 600)" --learning-rate 2e-3 --warmup-steps 10 \
  --save-every 50 --kd-loss forward_kl --temperature 1.0 --alpha 0.5 --seed 6
evaluate distill-2 "$RUN/student-kd2"

train sft "$RUN/student-sft" "${LFMKIT[@]}" train sft --model "$RUN/student-kd2" "${TRAIN_DATA[@]}" "${COMMON[@]}" \
  --max-steps "$(steps 12)" --learning-rate 5e-4 --save-every 20 --seed 3
evaluate sft "$RUN/student-sft"

timed prefs "$RUN/pairs.jsonl.done" bash -c "
  set -e
  ${LFMKIT[*]} prefs build --model '$RUN/student-sft' --prompts '$DATA/prefs/prompts.jsonl' --num-samples 4 \
      --judge verify:judge --min-gap 1 --max-tokens 96 --temperature 1.0 --seed 0 --batch-size 8 \
      --output '$RUN/pairs.jsonl' --no-progress \$( [ -e '$RUN/pairs.jsonl.progress' ] && echo --resume )
  touch '$RUN/pairs.jsonl.done'"

for beta in 2 5; do  # the shipped run did beta 5 by hand after the chain (MODEL_CARD.md); 2 was the pick
  train "dpo-b$beta" "$RUN/dpo-b$beta" "${LFMKIT[@]}" train dpo --model "$RUN/student-sft" --data "$RUN/pairs.jsonl" \
    --loss sigmoid_norm --beta "$beta" --learning-rate 1e-4 --epochs 1 --batch-size 8 --max-length 512 --seed 0 \
    --save-every 1000
  evaluate "dpo-b$beta" "$RUN/dpo-b$beta"
done

cat >"$RUN/merge.yaml" <<EOF
merge_method: linear
models:
  - {model: $RUN/student-sft, parameters: {weight: 0.5}}
  - {model: $RUN/dpo-b2, parameters: {weight: 0.5}}
dtype: float32
EOF
timed merge "$RUN/merged/config.json" "${LFMKIT[@]}" merge "$RUN/merge.yaml" "$RUN/merged"
cp -n "$RUN/student-sft/generation_config.json" "$RUN/merged/" 2>/dev/null || true
evaluate merge "$RUN/merged"

train grpo "$RUN/grpo" "${LFMKIT[@]}" train grpo --model "$RUN/merged" --prompts "$DATA/grpo/prompts.jsonl" \
  --reward math=math --reward ifeval=ifeval --reward tools=tool_call --reward extract=verify:extraction \
  --max-steps "$(steps 8)" --batch-size 16 --num-generations 4 --max-completion-length 96 \
  --learning-rate 2e-5 --lr-scheduler constant --seed 0 --save-every 4
evaluate grpo "$RUN/grpo"


wait "$TEACHER4"
evaluate teacher-4 "$RUN/teacher-4"

echo "== recipe finished: $(date -u +%H:%M:%S); stage times in $RUN/times.jsonl"
