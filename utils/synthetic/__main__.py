"""Writes a phantom data set in the standard layout (images/, setup/all.csv, setup/cv/set1..3,
setup/train.txt, setup/test.txt).

    python -m utils.synthetic hand data/hand_synthetic --num-images 60 --seed 0
    python -m utils.synthetic volume data/volume_synthetic --num-images 30 --size 64 64 96
    python -m utils.synthetic cephalometric data/synthetic_cephalometric     # three annotation CSVs
    python -m utils.synthetic spine_ct data/synthetic_spine_ct               # 26 vertebrae, long volumes
    python -m utils.synthetic heart_ct data/synthetic_heart_ct               # or heart_mr

KIND is the name of the --data-kind it is for (hand = hand_xray, volume = custom3d; heart_ct and heart_mr are
--data-kind heart with --modality ct or mr).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence

from utils.synthetic import (
    PHANTOM_NAMES,
    PHANTOMS,
    generate_hand_dataset,
    generate_volume_dataset,
    phantom_of,
)

DEFAULT_IMAGES = {"hand": 60, "volume": 30, "cephalometric": 60, "spine_ct": 40, "heart_ct": 60,
                  "heart_mr": 60}


def main(argv: Sequence[str] | None = None) -> None:
    """Command line entry point."""
    parser = argparse.ArgumentParser(
        prog="python -m utils.synthetic",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("kind", choices=(*PHANTOMS, *PHANTOM_NAMES),
                        help="2D hand radiographs (hand_xray), 3D torso volumes "
                        "(custom3d), 2D cephalograms, spine CTs, 3D chest CT or MR")
    parser.add_argument("out_dir", help="data set folder to create (must not exist)")
    parser.add_argument("--seed", type=int, default=0, help="seed of all random draws (default 0)")
    parser.add_argument(
        "--num-images", type=int, default=None,
        help="number of images (default: " + ", ".join(f"{k} {n}" for k, n in DEFAULT_IMAGES.items()) + ")"
    )
    parser.add_argument(
        "--pixels-per-mm",
        type=float,
        default=None,
        help="hand only: fixed scale in pixels per mm (default: atlas-like 6.5-9.2, images ~1400 x 2100 px)",
    )
    parser.add_argument(
        "--size",
        type=int,
        nargs=3,
        default=(64, 64, 96),
        metavar=("X", "Y", "Z"),
        help="volume only: voxels per axis (default 64 64 96; the field of view stays ~112 x 112 x 176 mm)",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress lines")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    kind = phantom_of(args.kind)
    count, progress = args.num_images or DEFAULT_IMAGES[kind], not args.quiet
    if kind == "hand":
        ids = generate_hand_dataset(args.out_dir, count, args.seed, args.pixels_per_mm, progress=progress)
    elif kind == "volume":
        ids = generate_volume_dataset(args.out_dir, count, args.seed, tuple(args.size), progress=progress)
    else:
        ids = PHANTOMS[kind](args.out_dir, num_images=count, seed=args.seed, progress=progress)
    print(
        f"wrote {len(ids)} {kind} images ({ids[0]} .. {ids[-1]}), setup/all.csv and 3-fold + train/test "
        f"splits to {args.out_dir} in {time.perf_counter() - start:.1f} s"
    )


if __name__ == "__main__":
    main()
