"""Apply a trained network to new images: landmarks in the original images' coordinates, with confidence.

Run from the repository root:

    python predict.py output/scn_cv1/<timestamp> new_images/ --output predictions/   # a run's last checkpoint
    python predict.py output/scn_cv1/<timestamp>/export a.mha b.png --output pred/ --overlays
    python predict.py RUN_DIR images/ --iteration 500 --output pred/              # an earlier checkpoint
    python predict.py RUN_DIR --export-savedmodel serving/scn                      # TensorFlow SavedModel

MODEL is a run folder (its config.json and newest checkpoint, or --iteration N), an export folder
(``network.keras`` + ``predict.json``, written at the end of every run) or the ``.keras`` file in one, or a
SavedModel written by --export-savedmodel. INPUT are image files or folders of them (2D or 3D, any format
SimpleITK reads); an image's id is its file name up to the first dot. Each image goes through the run's
validation chain (no randomness), the network, the heatmap decoding and the inverse transform, as in the
run's own tests. Written into --output:

    landmarks.csv        id,x0,y0[,z0],... in the run's annotation units (pixel indices for hand_xray)
    landmarks.json       per image: file, landmarks (same units), peak heatmap value per landmark and, when
                         the model has them, the conformal radius per landmark (true landmark within it
                         with the stated coverage) in mm and in the CSV's units; the files that failed
    overlays/<id>.png    with --overlays: predicted landmarks over the network input
    heatmaps/<id>.npy    with --heatmaps: the predicted heatmaps ([z,] y, x, N), float32, and <id>.png
    landmarks.json       with --candidates: per landmark also every local maximum of its heatmap of at
                         least half its peak, 2 heatmap pixels apart, strongest first: [x, y[, z], value]
    markups/<id>.mrk.json  with --markups: the landmarks as a 3D Slicer point list in the image file's own
                         physical (LPS) coordinates, to open in Slicer on top of the image

A file that cannot be read or prepared is reported by name and skipped; the exit status is 1 if any failed.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from utils.runtime import quiet_tensorflow_start

with quiet_tensorflow_start():  # quiet C++ logs, oneDNN kernels
    import keras

import numpy as np  # noqa: E402

import main  # noqa: E402
from dataset import DataSpec, ImageSamples, csv_units, sample_generator  # noqa: E402
from utils.data.sample import read_geometry  # noqa: E402
from utils.io.atomic import atomic_path, write_json_atomic  # noqa: E402
from utils.io.errors import DataError  # noqa: E402
from utils.io.landmarks import write_landmarks_csv  # noqa: E402
from utils.io.markups import write_markups_json  # noqa: E402
from utils.landmarks.decode import decode_heatmaps  # noqa: E402
from utils.landmarks.maxima import local_maxima  # noqa: E402
from utils.landmarks.plots import plot_heatmaps, plot_landmarks  # noqa: E402
from utils.landmarks.statistics import reference_distance_scale  # noqa: E402
from utils.training.checkpoint import checkpoint_path, latest_checkpoint, load_weights  # noqa: E402
from utils.training.evaluation import predict_samples, to_original  # noqa: E402
from utils.training.export import (  # noqa: E402
    INFO_FILE,
    NETWORK_FILE,
    check_network,
    export_savedmodel,
    read_info,
)
from utils.training.output import config_from_dict, read_config  # noqa: E402
from utils.transforms.geometry import Geometry  # noqa: E402

__all__ = ["LoadedModel", "input_files", "load_model", "main_cli", "predict_files"]

COMPANION_SUFFIXES = (".raw", ".zraw")  # pixel data of an .mhd header in the same folder: not an input


@dataclass
class LoadedModel:
    """A trained network with what is needed to prepare its inputs and read its outputs.

    Attributes:
        params: The run's parameters (image size, data spec, intensity handling, ...).
        heatmaps: ``heatmaps(batch)``: (B, [z,] y, x, 1) -> (B, [z,] y, x, N), one forward pass.
        info: The export information (``predict.json`` content) of this network.
        description: Where it came from, for messages.
        network: The Keras network (None for a SavedModel).
    """

    params: main.Parameters
    heatmaps: Callable[[np.ndarray], np.ndarray]
    info: dict
    description: str
    network: keras.Model | None = None

    @property
    def radii_mm(self) -> list[float | None] | None:
        """Conformal radius per landmark in mm (None: unknown), or None when the model has no calibration."""
        calibration = self.info.get("calibration")
        return None if calibration is None else calibration["radii_mm"]


def load_model(path: str | Path, iteration: int | None = None) -> LoadedModel:
    """Loads a run folder's checkpoint, an export (folder or ``.keras`` file) or a SavedModel.

    Raises:
        FileNotFoundError: Nothing loadable at `path`, or no checkpoint of `iteration`.
        ValueError: `iteration` given for something other than a run folder.
    """
    path = Path(path)
    if path.is_dir() and (path / "config.json").is_file():
        return _load_run(path, iteration)
    if iteration is not None:
        raise ValueError(f"--iteration chooses a checkpoint of a run folder; {path} is not one (no "
                         "config.json)")
    network_file = path if path.suffix == ".keras" and path.is_file() else path / NETWORK_FILE
    folder = network_file.parent
    if (path / "saved_model.pb").is_file():
        import tensorflow as tf  # only a SavedModel needs TensorFlow itself

        info = read_info(path)
        loaded = tf.saved_model.load(str(path))  # referenced by the closure: its variables must stay alive
        params = config_from_dict(main.Parameters, info["parameters"], where=str(path / INFO_FILE))
        return LoadedModel(params, lambda images: loaded.serve(images), info, f"SavedModel {path}")
    if network_file.is_file():
        info = read_info(folder)
        check_network(network_file, info)
        params = config_from_dict(main.Parameters, info["parameters"], where=str(folder / INFO_FILE))
        network = keras.saving.load_model(network_file)
        return LoadedModel(params, network.predict_on_batch, info,
                           f"export {network_file} (iteration {info['iteration']})", network)
    raise FileNotFoundError(f"{path} is neither a run folder (config.json), an export ({NETWORK_FILE} and "
                            f"{INFO_FILE}) nor a SavedModel (saved_model.pb)")


def _load_run(run: Path, iteration: int | None) -> LoadedModel:
    """A run folder's network at its newest checkpoint or at `iteration`; the calibration of its export
    when that export is of the same iteration."""
    params = read_config(run / "config.json", main.Parameters)
    folder = run / "checkpoints"
    found = latest_checkpoint(folder) if iteration is None else checkpoint_path(folder, iteration)
    if found is None or not found.is_file():
        kept = sorted(p.name for p in folder.glob("ckpt_*.npz")) if folder.is_dir() else []
        which = "" if iteration is None else f"of iteration {iteration} "
        raise FileNotFoundError(f"no checkpoint {which}in {folder}; kept: {', '.join(kept) or 'none'}")
    model = main.build_model(params)
    checkpoint = load_weights(found, model)
    calibration = None
    if (run / "export" / INFO_FILE).is_file():
        try:
            exported = read_info(run / "export")
        except DataError as error:  # the checkpoint is still good: predict without radii
            print(f"warning: {error}; predicting without conformal radii", file=sys.stderr)
        else:
            if exported.get("iteration") == checkpoint.iteration:
                calibration = exported.get("calibration")
    info = main.export_info(params, model, checkpoint.iteration, calibration)
    return LoadedModel(params, model.network.predict_on_batch, info, f"run {run}, checkpoint {found.name}",
                       model.network)


def input_files(inputs: Sequence[str | Path]) -> dict[str, Path]:
    """Image id -> file for files and folders (their files, sorted; hidden files and the ``.raw`` pixel data
    of ``.mhd`` headers left out), ids unique.

    Raises:
        FileNotFoundError: An input does not exist or a folder has no files.
        ValueError: Two inputs have the same id (names both files).
    """
    files: dict[str, Path] = {}
    for item in map(Path, inputs):
        if item.is_dir():
            found = sorted(p for p in item.iterdir() if p.is_file() and not p.name.startswith(".")
                           and p.suffix.lower() not in COMPANION_SUFFIXES)
            if not found:
                raise FileNotFoundError(f"input folder {item} has no files")
        elif item.is_file():
            found = [item]
        else:
            raise FileNotFoundError(f"input {item} does not exist")
        for path in found:
            image_id = path.name.split(".", 1)[0]
            if image_id in files:
                raise ValueError(f"two inputs have the id {image_id!r}: {files[image_id]} and {path}")
            files[image_id] = path
    return files


class _Progress:
    """One line every few seconds: images done, failures, rate and time left."""

    def __init__(self, total: int, every_s: float = 3.0):
        self.total, self.every_s = total, every_s
        self.start = self.last = time.perf_counter()

    def update(self, done: int, failed: int) -> None:
        now = time.perf_counter()
        if now - self.last < self.every_s and done < self.total:
            return
        self.last = now
        rate = done / max(now - self.start, 1e-9)
        left = (self.total - done) / max(rate, 1e-9)
        print(f"predicted {done}/{self.total} images ({failed} failed), {rate:.1f} images/s, "
              f"{left:.0f} s left", flush=True)


def predict_files(model: LoadedModel, files: dict[str, Path], output: Path, overlays: bool = False,
                  heatmaps: bool = False, markups: bool = False, candidates: bool = False) -> dict:
    """Predicts the landmarks of every file and writes the outputs (module docstring) into `output`.

    Images are prepared and predicted ``batch_size`` at a time, so memory stays bounded whatever the number
    of files. landmarks.csv and landmarks.json are written at the end, also when stopped by an exception
    or Ctrl-C (with the images done so far).

    Returns:
        The content of landmarks.json.
    """
    params = model.params
    # as exported: an export keeps its meaning when code changes (exports before the kinds had no "dim")
    spec = DataSpec(**{"dim": params.dim, **model.info["data_spec"]})
    generator = sample_generator(spec, params.image_size, model.info["heatmap_size"],
                                 **main.chain_options(params))
    ids, paths = list(files), list(files.values())
    unknown = np.full((len(ids), params.num_landmarks, params.dim), np.nan)
    whole = spec.image_spacing is not None  # a fixed spacing: the whole image, predicted by tiles
    samples = ImageSamples(ids, paths, unknown, generator, spec, cache_bytes=0, validation=True, whole=whole)
    radii = model.radii_mm
    result = {"model": model.description, "iteration": model.info.get("iteration"),
              "units": spec.landmark_units, "landmark_names": model.info.get("landmark_names"),
              "coverage": (model.info.get("calibration") or {}).get("coverage"), "images": {}, "failed": {}}
    table: dict[str, np.ndarray] = {}
    seconds = dict.fromkeys(("prepare", "predict", "decode", "write"), 0.0)
    progress = _Progress(len(ids))
    try:
        for start in range(0, len(ids), params.batch_size):
            clock = time.perf_counter()
            prepared = []
            for index in range(start, min(start + params.batch_size, len(ids))):
                try:
                    sample = samples(index, None)
                    if markups:  # the file's own geometry, read here so that a failure names the file
                        sample = {**sample, "file_geometry": read_geometry(paths[index])
                                  if spec.ignore_spacing or spec.reset_frame else sample["geometry"]}
                    prepared.append((index, sample))
                except (DataError, OSError, ValueError, RuntimeError) as error:
                    result["failed"][ids[index]] = {"file": str(paths[index]), "error": str(error)}
                    print(f"failed: {paths[index]}: {error}", file=sys.stderr, flush=True)
            seconds["prepare"] += time.perf_counter() - clock
            if prepared:
                clock = time.perf_counter()
                maps = list(predict_samples([sample["image"] for _, sample in prepared],
                                            params.image_size[::-1], model.heatmaps, params.batch_size))
                seconds["predict"] += time.perf_counter() - clock
                for (index, sample), heatmap in zip(prepared, maps, strict=True):
                    clock = time.perf_counter()
                    points, peaks = decode_heatmaps(heatmap)
                    grid = sample["transform"].output if whole else generator.heatmap_geometry
                    physical = to_original(points, sample["transform"], grid)
                    table[ids[index]] = landmarks = csv_units(spec, sample["geometry"], physical)
                    mm_per_unit = _mm_per_unit(spec, physical, sample["geometry"])
                    result["images"][ids[index]] = {
                        "file": str(paths[index]),
                        "landmarks": [None if np.isnan(p).any() else p.tolist() for p in landmarks],
                        "peak": _finite(peaks),
                        "radius_mm": radii,
                        "mm_per_unit": _finite([mm_per_unit])[0],
                        "radius": None if radii is None else _finite(
                            [np.nan if r is None else r / mm_per_unit for r in radii]),
                    }
                    if candidates:
                        result["images"][ids[index]]["candidates"] = [
                            _candidates(heatmap[..., n], spec, sample, grid)
                            for n in range(heatmap.shape[-1])]
                    seconds["decode"] += time.perf_counter() - clock
                    clock = time.perf_counter()
                    if overlays:
                        plot_landmarks(output / "overlays" / f"{ids[index]}.png", sample["image"][..., 0],
                                       predicted=sample["transform"].output.physical_to_index(
                                           sample["transform"].input_to_output(physical)),
                                       title=ids[index])
                    if heatmaps:
                        with atomic_path(output / "heatmaps" / f"{ids[index]}.npy") as temporary:
                            np.save(temporary, heatmap)
                        plot_heatmaps(output / "heatmaps" / f"{ids[index]}.png", heatmap)
                    if markups:
                        file_points = sample["file_geometry"].index_to_physical(
                            sample["geometry"].physical_to_index(physical))
                        write_markups_json(output / "markups" / f"{ids[index]}.mrk.json",
                                           result["landmark_names"], file_points)
                    seconds["write"] += time.perf_counter() - clock
            progress.update(min(start + params.batch_size, len(ids)), len(result["failed"]))
    finally:
        clock = time.perf_counter()
        write_landmarks_csv(output / "landmarks.csv", table)
        result["seconds"] = seconds
        write_json_atomic(output / "landmarks.json", result)
        seconds["write"] += time.perf_counter() - clock
    return result


def _finite(values) -> list[float | None]:
    """Floats for JSON: NaN and infinity (a diverged network, an overflow) become None."""
    return [float(v) if np.isfinite(v) else None for v in np.asarray(values, dtype=np.float64)]


def _candidates(heatmap: np.ndarray, spec: DataSpec, sample: dict, heatmap_geometry: Geometry
                ) -> list[list[float]]:
    """The local maxima of one heatmap (at least half its peak, 2 pixels apart) in the CSV's units, each
    followed by its value: where else the network answered, e.g. on a neighbouring finger or vertebra."""
    points, values = local_maxima(np.nan_to_num(heatmap, nan=0.0), min_relative=0.5, min_distance=2.0)
    if not len(points):
        return []
    physical = to_original(points, sample["transform"], heatmap_geometry)
    units = csv_units(spec, sample["geometry"], physical)
    return [[*map(float, point), float(value)] for point, value in zip(units, values, strict=True)]


def _mm_per_unit(spec: DataSpec, physical: np.ndarray, geometry) -> float:
    """Millimetres per unit of the CSV for one image: from the PREDICTED reference landmarks when the spec
    defines millimetres by a reference distance (the true ones are unknown here), else from the spacing (1
    for physical units, which are mm)."""
    if spec.mm_reference is not None:
        first, second, distance = spec.mm_reference
        return float(reference_distance_scale(physical[None], (first, second), distance)[0])
    if spec.landmark_units == "physical":
        return 1.0
    return float(np.mean(geometry.spacing))  # pixel units with a trusted spacing


def parser() -> argparse.ArgumentParser:
    parse = argparse.ArgumentParser(prog="predict.py", description=__doc__.split("\n\n")[0],
                                    epilog="See the module docstring (python -c 'import predict; "
                                    "help(predict)') and README 'Use a trained model'.")
    parse.add_argument("model", metavar="MODEL", help="run folder, export folder, .keras file or SavedModel")
    parse.add_argument("inputs", metavar="INPUT", nargs="*", help="image files or folders of images")
    parse.add_argument("--output", metavar="DIR", help="folder for landmarks.csv, landmarks.json, overlays/, "
                       "heatmaps/ (needed with INPUT)")
    parse.add_argument("--iteration", type=int, metavar="N", help="with a run folder: use ckpt_N instead of "
                       "the newest checkpoint")
    parse.add_argument("--overlays", action="store_true", help="write overlays/<id>.png")
    parse.add_argument("--heatmaps", action="store_true", help="write heatmaps/<id>.npy and .png")
    parse.add_argument("--candidates", action="store_true", help="also list every local maximum of each "
                       "heatmap of at least half its peak in landmarks.json")
    parse.add_argument("--markups", action="store_true", help="write markups/<id>.mrk.json: a 3D Slicer "
                       "point list in the image file's physical coordinates")
    parse.add_argument("--batch-size", type=int, metavar="N", help="images per forward pass (default: the "
                       "run's batch size)")
    parse.add_argument("--export-savedmodel", metavar="DIR", help="write the network as a TensorFlow "
                       "SavedModel with its predict.json into DIR (a new folder; TensorFlow backend)")
    return parse


def main_cli(argv: Sequence[str] | None = None) -> dict | None:
    """Runs the command line; returns landmarks.json's content (None when only exporting)."""
    parse = parser()
    args = parse.parse_intermixed_args(argv)
    if not args.inputs and not args.export_savedmodel:
        parse.error("give INPUT images to predict, or --export-savedmodel DIR")
    if args.inputs and not args.output:
        parse.error("--output DIR is needed to write the predictions")
    if args.output and Path(args.output).exists() and not Path(args.output).is_dir():
        parse.error(f"--output {args.output} is a file, not a folder")
    if args.export_savedmodel and Path(args.export_savedmodel).exists():
        parse.error(f"--export-savedmodel {args.export_savedmodel} exists: choose a new folder")
    if args.export_savedmodel and keras.backend.backend() != "tensorflow":
        parse.error(f"--export-savedmodel needs the TensorFlow backend, not {keras.backend.backend()}")
    if args.batch_size is not None and args.batch_size < 1:
        parse.error(f"--batch-size must be at least 1, got {args.batch_size}")
    try:  # everything is checked before anything is written
        files = input_files(args.inputs)
        model = load_model(args.model, args.iteration)
    except (ValueError, FileNotFoundError, DataError) as error:
        parse.error(str(error))
    if args.batch_size is not None:
        model.params = dataclasses.replace(model.params, batch_size=args.batch_size)
    print(f"model: {model.description}")
    if args.export_savedmodel:
        if model.network is None:
            parse.error("--export-savedmodel needs a run folder or a .keras export, not a SavedModel")
        folder = export_savedmodel(model.network, model.info, args.export_savedmodel)
        print(f"SavedModel written to {folder} (signature 'serve', with {INFO_FILE})")
    if not args.inputs:
        return None
    output = Path(args.output)
    result = predict_files(model, files, output, args.overlays, args.heatmaps, args.markups, args.candidates)
    done, failed = len(result["images"]), len(result["failed"])
    total = sum(result["seconds"].values())
    timing = ", ".join(f"{name} {value:.1f} s" for name, value in result["seconds"].items())
    print(f"{done} images predicted in {total:.1f} s ({done / max(total, 1e-9):.1f} images/s: {timing}); "
          f"written to {output / 'landmarks.csv'} and {output / 'landmarks.json'}")
    if failed:
        print(f"{failed} file(s) failed: {', '.join(v['file'] for v in result['failed'].values())}",
              file=sys.stderr)
    return result


if __name__ == "__main__":
    try:
        summary = main_cli(sys.argv[1:])
    except KeyboardInterrupt:
        sys.exit("\ninterrupted (once predicting had begun, landmarks.csv and landmarks.json hold the images "
                 "done so far)")
    sys.exit(1 if summary and summary["failed"] else 0)
