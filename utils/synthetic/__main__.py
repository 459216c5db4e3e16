"""Writes a phantom data set in the standard layout (images/, setup/all.csv, setup/cv/set1..3,
setup/train.txt, setup/test.txt).

    python -m utils.synthetic hand data/hand_synthetic --num-images 60 --seed 0
    python -m utils.synthetic volume data/volume_synthetic --num-images 30 --size 64 64 96
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence

from utils.synthetic.hand import generate_hand_dataset
from utils.synthetic.volume import generate_volume_dataset


def main(argv: Sequence[str] | None = None) -> None:
    """Command line entry point."""
    parser = argparse.ArgumentParser(
        prog="python -m utils.synthetic",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("kind", choices=("hand", "volume"), help="2D hand radiographs or 3D torso volumes")
    parser.add_argument("out_dir", help="data set folder to create (must not exist)")
    parser.add_argument("--seed", type=int, default=0, help="seed of all random draws (default 0)")
    parser.add_argument(
        "--num-images", type=int, default=None, help="number of images (default: hand 60, volume 30)"
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
    if args.kind == "hand":
        ids = generate_hand_dataset(
            args.out_dir, args.num_images or 60, args.seed, args.pixels_per_mm, progress=not args.quiet
        )
    else:
        ids = generate_volume_dataset(
            args.out_dir, args.num_images or 30, args.seed, tuple(args.size), progress=not args.quiet
        )
    print(
        f"wrote {len(ids)} {args.kind} images ({ids[0]} .. {ids[-1]}), setup/all.csv and 3-fold + train/test "
        f"splits to {args.out_dir} in {time.perf_counter() - start:.1f} s"
    )


if __name__ == "__main__":
    main()
