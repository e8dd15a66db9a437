#!/usr/bin/env bash
# Offline transfer-learning quickstart on scikit-learn's real handwritten digits (about 2-3 minutes on 2 cores):
# pretrain resnet10t on digits 0-4, then learn digits 5-9 from 5 labels per class three ways, and compare.
# Extra arguments go to every run (e.g. trainer.max_epochs=2 for a smoke test).
set -euo pipefail
out=${QUICKSTART_DIR:-outputs/quickstart}
transferlab-train experiment=digits_source hydra.run.dir="$out/source" "$@"
transferlab-train -m experiment=digits_scratch,digits_frozen,digits_finetune \
  ++source_run="$out/source" hydra.sweep.dir="$out/transfer" "$@"
echo
echo "Target task (digits 5-9, 5 labels per class): scratch vs frozen backbone vs fine-tuning"
transferlab-report "$out/transfer"
