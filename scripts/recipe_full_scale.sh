#!/usr/bin/env bash
# The reference BRCD setting (recipe "full-scale": configs/full-scale/*.yaml) for a machine with a GPU
# and internet access:
# ImageNet-pretrained ViT-B/16 teacher (frozen, linear CIBHash head, 200 epochs on cached
# features) -> ImageNet-pretrained EfficientNet-B0 student with an MLP head, BRCD, 400 epochs,
# 224 px, 64 bits. Usage: scripts/recipe_full_scale.sh DATA WORKDIR [GPUS]
# DATA: a class folder, a DeepHash list file, or cifar10[:PATH]. Prints each command, then runs it.
set -euo pipefail
data=${1:?usage: recipe_full_scale.sh DATA WORKDIR [GPUS]}
workdir=${2:?usage: recipe_full_scale.sh DATA WORKDIR [GPUS]}
gpus=${3:-1}
mapfile -t cmds < <(python - "$data" "$workdir" <<'PY'
import shlex, sys
from hashkd.recipes import recipe_commands
for cmd in recipe_commands("full-scale", sys.argv[1], sys.argv[2]):
    print(shlex.join(cmd))
PY
)
for cmd in "${cmds[@]}"; do
  if [ "$gpus" -gt 1 ]; then cmd="torchrun --nproc_per_node $gpus -m hashkd ${cmd#hashkd }"; fi
  echo "+ $cmd"
  eval "$cmd"
done
hashkd evaluate --query-model "$workdir/student" --database-model "$workdir/teacher" \
  --query-data "$data" --database-data "$data" --json-out "$workdir/asymmetric.json"
