#!/usr/bin/env bash
# Networks side by side on real radiographs, CPU-sized: a 3-fold cross-validation (4 training and 2 test
# images per fold) on the six hands of ../shared/data/hand_xray_real: scn, unet and scn_mia, each with
# fixed and with learned sigmas, all at the `cpu` preset's size (128 x 128, 16 filters, batch 8, Adam; its
# scn_mia values in main.py NETWORK_PRESETS) and seed, ITER iterations each. Pooled mean point error of each
# configuration next to the mean-shape baseline of the same test images. The four of the README took 17
# minutes on our 2 cores (README). From the repository root:
#
#     bash experiments/real_hands_cv.sh                    # SOURCE=folder of images/ + setup/all.csv
#     ITER=50 bash experiments/real_hands_cv.sh            # a quick look
#     CONFIGS="scn unet scn_mia scn_mia_learned" bash experiments/real_hands_cv.sh   # a subset
#
# Finished configurations (WORK/NAME/summary.json) are kept, so a stopped run continues where it stopped.
#
# The dataset folder it trains on (WORK/data) links the images and writes its own 3-fold split; the source
# folder is only read.
set -euo pipefail
SOURCE=${SOURCE:-../shared/data/hand_xray_real}
WORK=${WORK:-output/real_hands_cv}
ITER=${ITER:-300}
PYTHON=${PYTHON:-python}
[ -d "$SOURCE/images" ] && [ -f "$SOURCE/setup/all.csv" ] || {
    echo "no radiographs at $SOURCE (need images/ and setup/all.csv): set SOURCE=..." >&2; exit 2; }
data=$WORK/data
mkdir -p "$data/setup"
ln -sfn "$(realpath "$SOURCE/images")" "$data/images"
cp "$SOURCE/setup/all.csv" "$data/setup/all.csv"
[ -d "$data/setup/cv" ] || "$PYTHON" -m utils.io.splits "$data" --folds 3 --seed 0
run() {  # run NAME: one configuration (NETWORK or NETWORK_learned) on the three folds, unless done before
    local name=$1 network=${1%_learned} options=()
    [ "$name" != "$network" ] && options=(--learn-sigma)
    if [ -f "$WORK/$name/summary.json" ]; then echo "=== $name: done before, kept"; return; fi
    echo "=== $name: --network $network ${options[*]}"
    "$PYTHON" main.py --dataset "$data" --cv all --max-iter "$ITER" --test-iter "$ITER" \
        --snapshot-iter "$ITER" --seed 0 --output "$WORK/$name.partial" --network "$network" "${options[@]}" |
        grep -E "^(===|---|pooled|mean-shape)"
    mv "$WORK/$name.partial" "$WORK/$name"  # complete: a stopped script reruns only what is missing
}
read -r -a configurations <<< "${CONFIGS:-scn scn_learned unet unet_learned scn_mia scn_mia_learned}"
for name in "${configurations[@]}"; do
    run "$name"
done
"$PYTHON" - "$WORK" "${configurations[@]}" <<'PY'
import json
import sys
from pathlib import Path

work, names = Path(sys.argv[1]), sys.argv[2:]
print(f"{'configuration':<16} {'pooled PE [mm]':>14} {'median [mm]':>12} {'>=4 mm [%]':>11} {'mean shape [mm]':>16}")
for name in names:
    for network, entry in json.loads((work / name / "summary.json").read_text()).items():
        pooled, baseline = entry["pooled"], entry["mean_shape_baseline"]["pooled"]
        print(f"{name:<16} {pooled['pe_mean']:>14.2f} {pooled['pe_median']:>12.2f} "
              f"{pooled['outlier_percent']['4']:>11.1f} {baseline['pe_mean']:>16.2f}")
PY
