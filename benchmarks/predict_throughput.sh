#!/usr/bin/env bash
# predict.py end to end: images/s including reading, preparing, predicting, decoding and writing, as a user
# runs it, at the `cpu` preset (128 x 128, 16 filters) and at the paper size (256 x 256, 128 filters, scn).
# Each size gets a one-iteration run on SOURCE (a dataset folder: weights do not change the speed), exported,
# then predict.py on COPIES links to each of its images, twice; the second repetition is the figure. From
# the repository root:
#
#     bash benchmarks/predict_throughput.sh      # SOURCE: a dataset folder with images/ and setup/cv/set1;
#                                                # default: the folder experiments/real_hands_cv.sh makes
#                                                # from the six real radiographs; WORK=/tmp/predict_throughput
set -euo pipefail
SOURCE=${SOURCE:-output/real_hands_cv/data}
WORK=${WORK:-/tmp/predict_throughput}
PYTHON=${PYTHON:-python}
[ -d "$SOURCE/images" ] && [ -d "$SOURCE/setup/cv/set1" ] || {
    echo "no dataset at $SOURCE (images/ and setup/cv/set1): run experiments/real_hands_cv.sh or set SOURCE" >&2
    exit 2; }
rm -rf "$WORK"
mkdir -p "$WORK"
link() {  # link COPIES FOLDER: COPIES links to every image of SOURCE, each under its own id
    mkdir -p "$2"
    for image in "$SOURCE"/images/*; do
        for k in $(seq "$1"); do ln -s "$(realpath "$image")" "$2/${k}_$(basename "$image")"; done
    done
}
one_iteration=(--dataset "$SOURCE" --cv 1 --network scn --max-iter 1 --test-iter 1 --snapshot-iter 1)
for size in cpu paper; do
    copies=$([ "$size" = cpu ] && echo 5 || echo 2)
    link "$copies" "$WORK/inputs_$size"
    "$PYTHON" main.py --preset "$size" "${one_iteration[@]}" --output "$WORK/$size" > "$WORK/$size.log"
    run=$(ls -d "$WORK/$size"/scn_cv1/*)
    for repetition in 1 2; do
        echo "== $size, repetition $repetition"
        /usr/bin/time -f "wall %e s (with start-up)" "$PYTHON" predict.py "$run/export" "$WORK/inputs_$size" \
            --output "$WORK/predictions_$size" 2>&1 | tail -2
    done
done
