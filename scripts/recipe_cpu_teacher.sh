#!/usr/bin/env bash
# CPU teacher recipe (issue 9): self-supervised pretraining of a ViT-family backbone on the
# 50,000 CIFAR-10 training images WITHOUT labels, then the CIBHash hash head on the 5,000-image
# training split with the backbone frozen (feature cache on), evaluated at 16/32/64 bits on the
# cifar10-cpu protocol next to two baselines under the same protocol: the same backbone
# untrained (frozen, same head training) and random-hyperplane LSH on raw pixels.
#
#   scripts/recipe_cpu_teacher.sh [--quick | --budget full] [--out DIR]
#
# --budget full (default): the 3-hour recipe for a 2-core machine: a conv-stem ViT-Tiny (vitc_tiny,
#   16 tokens), all 50,000 images, 10 epochs, pretraining capped at 150 min with --time-limit;
#   heads and evaluation take the rest, including a 64-bit head on the weights kept every 2
#   epochs (the mAP-vs-pretraining-time curve).
# --quick: the shortened run (about an hour on a heavily shared machine): a smaller hybrid ViT,
#   10,000 of the training images, 2 epochs.
# Everything is written under --out (default runs/pretrain/<budget>, relative to the working
# directory); the weights file is rebuilt by the first step. Steps already done are skipped, so
# the script can be re-run after an interruption (pretraining resumes from its checkpoint).
# The summary is OUT/summary.jsonl (one JSON line per figure: "map@1000" is the tie-averaged
# mAP, the expected value under a random order of equal Hamming distances, with the
# position-broken "map@1000_position" beside it) and OUT/recipe.log.
set -euo pipefail

BUDGET=full
OUT=""
while [[ $# -gt 0 ]]; do
  case "$1" in
    --quick) BUDGET=quick; shift ;;
    --budget) BUDGET="$2"; shift 2 ;;
    --out) OUT="$2"; shift 2 ;;
    -h|--help) sed -n 2,21p "$0"; exit 0 ;;
    *) echo "recipe_cpu_teacher.sh: unknown argument $1: expected --quick, --budget full|quick or --out DIR" >&2; exit 2 ;;
  esac
done
case "$BUDGET" in full|quick) ;; *) echo "recipe_cpu_teacher.sh: --budget $BUDGET is not valid: expected full or quick" >&2; exit 2 ;; esac
OUT="${OUT:-runs/pretrain/$BUDGET}"
REPO="$(cd "$(dirname "$0")/.." && pwd)"
PY="${PYTHON:-$REPO/.venv/bin/python}"
HASHKD=("$PY" -m hashkd)
export HF_HUB_OFFLINE=1 OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}"
mkdir -p "$OUT"
LOG="$OUT/recipe.log"
SUMMARY="$OUT/summary.jsonl"
say() { echo "[$(date +%H:%M:%S)] $*" | tee -a "$LOG"; }

# A ViT with a convolutional stem (timm's R+ViT-Ti hybrid with an empty ResNet body: a 7x7/2 conv
# and a max-pool, stride 4) and 2x2 patches on the 8x8 stem map: 16 tokens at 32 px. Measured
# fastest of the ViT-family candidates on this machine (docs/bench-pretrain.md).
if [[ "$BUDGET" == quick ]]; then
  BACKBONE=vit_tiny_r_s16_p8_224
  KW="patch_size=2,depth=4,embed_dim=96,num_heads=3"
  PRE=(--max-train 10000 --epochs 2 --warmup-epochs 0.2 --batch-size 128 --time-limit-minutes 30 --checkpoint-every 20)
  HEAD_EPOCHS=30; CACHE_VIEWS=2
else
  # vitc_tiny (hashkd's conv-stem ViT-Tiny: 192-d, depth 6, 3 heads) with 8x8 patches on the 32 px
  # input = 16 tokens: ~316 views/s on an idle 2-core machine (docs/bench-pretrain.md), so 10 epochs
  # over all 50,000 images (1M views) take about 55 min idle; --time-limit-minutes keeps pretraining
  # inside 150 min whatever the load (the run then ends early, before the cosine schedule ends).
  BACKBONE=vitc_tiny
  KW="patch_size=8"
  PRE=(--epochs 10 --warmup-epochs 1 --batch-size 256 --time-limit-minutes 150 --checkpoint-every 50 --keep-every 2)
  HEAD_EPOCHS=100; CACHE_VIEWS=5
fi
W="$OUT/backbone"  # the pretraining run folder (backbone.safetensors, checkpoint.pt, ...)
timed() {  # timed NAME cmd...: run, append the wall time to summary.jsonl
  local name="$1"; shift
  local t0=$SECONDS
  "$@" >>"$LOG" 2>&1
  echo "{\"step\": \"$name\", \"wall_s\": $((SECONDS - t0))}" >>"$SUMMARY"
}

say "budget=$BUDGET out=$OUT backbone=$BACKBONE kwargs=$KW"

# 1. self-supervised pretraining (SimCLR), labels unused; kNN accuracy as the sanity figure.
RESUME=(); [[ -f "$W/checkpoint.pt" ]] && RESUME=(--resume)  # a finished run returns at once
say "pretrain -> $W ${RESUME[*]}"
timed pretrain "${HASHKD[@]}" pretrain --data cifar10 --group train --backbone "$BACKBONE" --backbone-kwargs "$KW" \
  --method simclr "${PRE[@]}" --knn-eval --knn-every 1 --split-protocol cifar10-cpu --no-progress --seed 0 \
  --out "$W" "${RESUME[@]}"

# 2. hash heads on the frozen backbone: pretrained at 64/32/16 bits, untrained at 64 bits.
hash_head() {  # hash_head NAME BITS [--backbone-weights W]
  local name="$1" bits="$2"; shift 2
  local dir="$OUT/teacher_$name"
  if [[ ! -f "$dir/model.safetensors" ]]; then
    say "train-teacher $name ($bits bits)"
    timed "teacher_$name" "${HASHKD[@]}" train-teacher --data cifar10 --split-protocol cifar10-cpu --backbone "$BACKBONE" \
      --backbone-kwargs "$KW" --bits "$bits" --freeze-backbone --feature-cache "$CACHE_VIEWS" --epochs "$HEAD_EPOCHS" \
      --val-every "$HEAD_EPOCHS" --batch-size 64 --lr 1e-3 --seed 0 --no-progress --out "$dir" "$@"
  fi
  if [[ ! -f "$dir/eval.json" ]]; then
    say "evaluate $name"
    timed "evaluate_$name" "${HASHKD[@]}" evaluate --query-model "$dir" --data cifar10 --split-protocol cifar10-cpu \
      --k 1000 --no-progress --json-out "$dir/eval.json"
    "$PY" - "$dir/eval.json" "$name" "$bits" >>"$SUMMARY" <<'EOF'
import json, sys
d = json.load(open(sys.argv[1]))
m = d.get("metrics", d) if isinstance(d, dict) else {}
print(json.dumps({"model": sys.argv[2], "bits": int(sys.argv[3]), "map@1000": m.get("map_tie_averaged"),
                  "map@1000_position": m.get("map"), "eval": sys.argv[1]}))
EOF
  fi
}

# 3. LSH on raw pixels (random hyperplanes through the database mean), same protocol and metric.
lsh() {
  [[ -f "$OUT/lsh_pixels.json" ]] && return 0
  say "LSH on pixels"
  "$PY" - "$OUT/lsh_pixels.json" >>"$LOG" 2>&1 <<'EOF'
import json, sys
import numpy as np
from hashkd.codes import pack_codes
from hashkd.data.transforms import eval_transform
from hashkd.metrics import evaluate_codes
from hashkd.training.data_setup import prepare_data
data = prepare_data("cifar10", None, "cifar10-cpu", 0)
tf = eval_transform(32)
def pixels(split):
    return np.stack([tf(split.source.load_image(int(i))).numpy().ravel() for i in split.indices])
q, d = pixels(data.query), pixels(data.database)
mu = d.mean(0)
out = {}
for bits in (16, 32, 64):
    w = np.random.default_rng(0).standard_normal((q.shape[1], bits)).astype(np.float32)
    cq, cd = pack_codes((q - mu) @ w), pack_codes((d - mu) @ w)
    r = evaluate_codes(cq, cd, data.query.labels, data.database.labels, topk=1000, curves=False)
    out[bits] = {"map@1000": r["map_tie_averaged"], "map@1000_position": r["map"]}
    print(json.dumps({"model": "lsh_pixels", "bits": bits, **out[bits]}), flush=True)
json.dump(out, open(sys.argv[1], "w"), indent=2)
EOF
  "$PY" -c "import json,sys; [print(json.dumps({'model': 'lsh_pixels', 'bits': int(b), **m})) for b, m in json.load(open('$OUT/lsh_pixels.json')).items()]" >>"$SUMMARY"
}

hash_head pretrained_64 64 --backbone-weights "$W"
hash_head untrained_64 64
lsh
hash_head pretrained_32 32 --backbone-weights "$W"
hash_head pretrained_16 16 --backbone-weights "$W"
# 4. the curve of hashing mAP against pretraining time: a 64-bit head on each kept epoch's weights
#    (--keep-every; the wall time of each epoch is in backbone/train_log.jsonl).
for snap in "$W"/backbone-epoch*.safetensors; do
  [[ -f "$snap" ]] || continue
  e="${snap##*-epoch}"; e="${e%.safetensors}"
  hash_head "curve_epoch$e" 64 --backbone-weights "$snap"
done
say "done; figures in $SUMMARY"
