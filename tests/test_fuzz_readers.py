"""Property-based tests of the readers of `utils.io` on random and malformed files.

Each reader either loads the file correctly or raises `DataError` naming the file (a missing file raises
FileNotFoundError, see `utils.io.errors`); no other exception, and no hang: hypothesis's `deadline` bounds
each example, and a watchdog (`faulthandler`) ends the test run if one example blocks inside C code, where
no Python-level timeout reaches. `FUZZ_EXAMPLES=2000 pytest tests/test_fuzz_readers.py` searches deeper.
"""

from __future__ import annotations

import faulthandler
import math
import os
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from utils.io.errors import DataError
from utils.io.id_list import read_id_list, read_id_list_lines
from utils.io.image import read_image, read_image_header
from utils.io.landmarks import read_landmarks_csv, write_landmarks_csv
from utils.io.splits import annotated_image_ids

FUZZ = settings(
    max_examples=int(os.environ.get("FUZZ_EXAMPLES", "40")),  # e.g. FUZZ_EXAMPLES=2000 for a deep local run
    deadline=5000,  # ms per example; the readers take a few ms on these small files
    database=None,  # no .hypothesis folder in the checkout
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
HARD_LIMIT_S = 30  # a blocked example ends the run with a traceback instead of hanging it


@contextmanager
def hard_time_limit(seconds: float = HARD_LIMIT_S):
    """Dumps all tracebacks and exits the process if the block runs longer than `seconds`."""
    faulthandler.dump_traceback_later(seconds, exit=True)
    try:
        yield
    finally:
        faulthandler.cancel_dump_traceback_later()


def loads_or_names_file(read, path: Path):
    """Calls `read(path)`; returns its result, or None after checking a DataError names `path`."""
    with hard_time_limit():
        try:
            return read(path)
        except DataError as error:
            assert path.name in str(error), str(error)
            assert error.path == path
            return None


# ---------------------------------------------------------------- landmark CSV files

CSV_TEXT = st.text(alphabet=st.sampled_from(list("0123456789,.-+e nanif\n\r\"#ab\t\x00é")), max_size=300)
CSV_ROW = st.lists(
    st.one_of(st.floats().map(repr), st.sampled_from(["", " ", "x", "1e400"])),
    max_size=7,
)
CSV_TABLE = st.lists(st.tuples(st.sampled_from(["a", "b", " c ", "", "d"]), CSV_ROW), max_size=6)


def _check_table(table: dict, num_landmarks: int, dim: int) -> None:
    for image_id, points in table.items():
        assert image_id and image_id == image_id.strip()
        assert points.shape == (num_landmarks, dim) and points.dtype == np.float64
        assert not np.isinf(points).any()
        assert np.array_equal(np.isnan(points).any(axis=1), np.isnan(points).all(axis=1))


def _csv_both_ways(path: Path, num_landmarks: int, dim: int) -> None:
    """The raising and the collecting reader agree: the same rows, or the raised error among the collected."""
    table = loads_or_names_file(lambda p: read_landmarks_csv(p, num_landmarks, dim), path)
    errors: list[DataError] = []
    with hard_time_limit():
        collected = read_landmarks_csv(path, num_landmarks, dim, errors)
    _check_table(collected, num_landmarks, dim)
    assert all(path.name in str(error) and error.path == path for error in errors)
    assert [error.line for error in errors] == sorted(error.line or 0 for error in errors)
    if table is None:
        assert errors
        with pytest.raises(DataError) as raised:
            read_landmarks_csv(path, num_landmarks, dim)
        assert str(raised.value) in [str(error) for error in errors]
    else:
        assert not errors
        _check_table(table, num_landmarks, dim)
        assert table.keys() == collected.keys()


@FUZZ
@given(text=CSV_TEXT, num_landmarks=st.integers(1, 3), dim=st.sampled_from([2, 3]))
def test_random_csv_text(tmp_path, text, num_landmarks, dim):
    path = tmp_path / "all.csv"
    path.write_text(text, encoding="utf-8")
    _csv_both_ways(path, num_landmarks, dim)


@FUZZ
@given(rows=CSV_TABLE, num_landmarks=st.integers(1, 3), dim=st.sampled_from([2, 3]))
def test_malformed_csv_rows(tmp_path, rows, num_landmarks, dim):
    path = tmp_path / "all.csv"
    path.write_text("".join(",".join([image_id, *values]) + "\n" for image_id, values in rows))
    _csv_both_ways(path, num_landmarks, dim)


@FUZZ
@given(data=st.binary(max_size=300), num_landmarks=st.integers(1, 3))
def test_random_csv_bytes(tmp_path, data, num_landmarks):
    path = tmp_path / "all.csv"
    path.write_bytes(data)
    _csv_both_ways(path, num_landmarks, 2)
    (tmp_path / "setup").mkdir(exist_ok=True)
    (tmp_path / "setup" / "all.csv").write_bytes(data)
    ids = loads_or_names_file(lambda p: annotated_image_ids(tmp_path), tmp_path / "setup" / "all.csv")
    assert ids is None  # no images folder: never a list of ids


@FUZZ
@given(
    points=st.dictionaries(
        st.text(alphabet=st.sampled_from(list("abcXYZ019_-.")), min_size=1, max_size=8),
        st.lists(st.one_of(st.floats(-1e5, 1e5), st.just(math.nan)), min_size=6, max_size=6),
        max_size=5,
    )
)
def test_csv_write_read_round_trip(tmp_path, points):
    landmarks = {key: np.asarray(values).reshape(3, 2) for key, values in points.items()}
    write_landmarks_csv(tmp_path / "all.csv", landmarks)
    loaded = read_landmarks_csv(tmp_path / "all.csv", 3, 2)
    assert list(loaded) == list(landmarks)
    for key, values in landmarks.items():
        values = values.copy()
        values[np.isnan(values).any(axis=1)] = np.nan
        np.testing.assert_allclose(loaded[key], values, rtol=1e-9, atol=1e-9)


# ---------------------------------------------------------------- id lists

ID_TEXT = st.text(alphabet=st.sampled_from(list("ab12 #\n\r\t\x0c\x00é\u2028")), max_size=80)


def _check_id_list(path: Path) -> None:
    ids = loads_or_names_file(read_id_list, path)
    errors: list[DataError] = []
    with hard_time_limit():
        collected = read_id_list_lines(path, errors)
    assert all(path.name in str(error) and error.path == path for error in errors)
    if ids is None:
        assert errors
    else:
        assert not errors and ids == list(collected)
        assert ids and len(set(ids)) == len(ids)
        assert all(image_id == image_id.strip() and image_id and "#" not in image_id for image_id in ids)


@FUZZ
@given(text=ID_TEXT)
def test_random_id_list_text(tmp_path, text):
    path = tmp_path / "train.txt"
    path.write_text(text, encoding="utf-8")
    _check_id_list(path)


@FUZZ
@given(data=st.binary(max_size=120))
def test_random_id_list_bytes(tmp_path, data):
    path = tmp_path / "test.txt"
    path.write_bytes(data)
    _check_id_list(path)


def test_missing_files_raise_file_not_found(tmp_path):
    for read in (read_id_list, read_image, read_image_header, lambda p: read_landmarks_csv(p, 2, 2)):
        with pytest.raises(FileNotFoundError, match="absent.xyz") as raised:
            read(tmp_path / "absent.xyz")
        assert raised.value.filename == str(tmp_path / "absent.xyz")


# ---------------------------------------------------------------- images

SUFFIXES = [".mha", ".nrrd", ".nii", ".png", ".nhdr"]


def _check_image(path: Path) -> None:
    header = loads_or_names_file(read_image_header, path)
    image = loads_or_names_file(read_image, path)
    if image is not None:
        assert header is not None
        assert image.GetSize() == header.size and image.GetSpacing() == header.spacing
    if header is not None:
        assert all(s >= 1 for s in header.size) and all(s > 0 for s in header.spacing)


@FUZZ
@given(data=st.binary(max_size=400), suffix=st.sampled_from(SUFFIXES))
def test_random_bytes_as_image(tmp_path, data, suffix):
    path = tmp_path / f"image{suffix}"
    path.write_bytes(data)
    _check_image(path)


NUMBER = st.one_of(
    st.integers(-3, 40).map(str), st.sampled_from(["0", "1e9", "nan", "inf", "-1", "x", "", "4294967297"]),
    st.floats(-10, 10).map(repr),
)
META_KEY_VALUES = {
    "ObjectType": st.sampled_from(["Image", "Scene", "x"]),
    "NDims": NUMBER,
    "DimSize": st.lists(NUMBER, max_size=4).map(" ".join),
    "ElementSpacing": st.lists(NUMBER, max_size=4).map(" ".join),
    "Offset": st.lists(NUMBER, max_size=4).map(" ".join),
    "TransformMatrix": st.lists(NUMBER, max_size=9).map(" ".join),
    "ElementType": st.sampled_from(["MET_UCHAR", "MET_FLOAT", "MET_SHORT", "MET_NONE", "xyz"]),
    "ElementNumberOfChannels": NUMBER,
    "CompressedData": st.sampled_from(["True", "False", "x"]),
    "BinaryData": st.sampled_from(["True", "False"]),
}
MHA_LINE = st.sampled_from(sorted(META_KEY_VALUES)).flatmap(
    lambda key: META_KEY_VALUES[key].map(lambda value: f"{key} = {value}")
)
MHA_HEADER = st.lists(MHA_LINE, max_size=10)
DATA_FILE = st.sampled_from(["LOCAL", "missing.raw", ""])


@FUZZ
@given(lines=MHA_HEADER, data_file=DATA_FILE, data=st.binary(max_size=200))
def test_random_metaimage_headers(tmp_path, lines, data_file, data):
    path = tmp_path / "image.mha"
    path.write_bytes("\n".join([*lines, f"ElementDataFile = {data_file}", ""]).encode() + data)
    _check_image(path)


NRRD_FIELDS = {
    "type": st.sampled_from(["uchar", "short", "float", "double", "block", "x"]),
    "dimension": NUMBER,
    "sizes": st.lists(NUMBER, max_size=4).map(" ".join),
    "spacings": st.lists(NUMBER, max_size=4).map(" ".join),
    "space directions": st.lists(st.lists(NUMBER, min_size=2, max_size=3).map(lambda v: f"({','.join(v)})"),
                                 max_size=3).map(" ".join),
    "encoding": st.sampled_from(["raw", "gzip", "ascii", "hex", "bzip2", "x"]),
    "endian": st.sampled_from(["little", "big"]),
    "space origin": st.lists(NUMBER, max_size=3).map(lambda v: f"({','.join(v)})"),
}
NRRD_HEADER = st.lists(
    st.sampled_from(sorted(NRRD_FIELDS)).flatmap(lambda key: NRRD_FIELDS[key].map(lambda v: f"{key}: {v}")),
    max_size=8,
)


@FUZZ
@given(lines=NRRD_HEADER, data=st.binary(max_size=200))
def test_random_nrrd_headers(tmp_path, lines, data):
    path = tmp_path / "image.nrrd"
    path.write_bytes("\n".join(["NRRD0004", *lines, "", ""]).encode() + data)
    _check_image(path)


def _valid_images(folder: Path) -> list[Path]:
    """Small valid images in several formats, compressed and not."""
    rng = np.random.default_rng(0)
    flat = sitk.GetImageFromArray(rng.integers(0, 255, (1, 9, 11), dtype=np.uint8))
    volume = sitk.GetImageFromArray(rng.normal(size=(5, 6, 7)).astype(np.float32))
    paths = []
    for name, image, compress in (("flat.mha", flat, False), ("flat_z.mha", flat, True),
                                  ("volume.nrrd", volume, False), ("volume.nii.gz", volume, True),
                                  ("plane.png", flat[:, :, 0], False)):
        sitk.WriteImage(image, str(folder / name), compress)
        paths.append(folder / name)
    return paths


@pytest.fixture(scope="module")
def valid_images(tmp_path_factory) -> list[tuple[str, bytes]]:
    folder = tmp_path_factory.mktemp("valid")
    return [(path.name, path.read_bytes()) for path in _valid_images(folder)]


@FUZZ
@given(which=st.integers(0, 4), cut=st.floats(0, 1, exclude_max=True), flip=st.integers(0, 2**16))
def test_truncated_and_corrupted_images(tmp_path, valid_images, which, cut, flip):
    name, data = valid_images[which]
    path = tmp_path / name
    path.write_bytes(data[: int(cut * len(data))])
    _check_image(path)
    corrupted = bytearray(data)
    corrupted[flip % len(data)] ^= 0xFF
    path.write_bytes(bytes(corrupted))
    _check_image(path)


def test_valid_images_read(tmp_path):
    for path in _valid_images(tmp_path):
        image = read_image(path)
        assert image.GetSize() == read_image_header(path).size


@pytest.mark.parametrize("ndims", ["-3", "-3.18", "", "0", "6", "1e1"])
@pytest.mark.parametrize("line", ["NDims = {}", "  NDims={}", "NDims\t=\t{}"])
def test_metaimage_ndims_that_crash_itk_are_refused(tmp_path, ndims, line):
    # ITK's MetaImage reader dies with a segmentation fault on a negative NDims followed by an array field
    path = tmp_path / "crash.mha"
    path.write_text(f"{line.format(ndims)}\nElementSpacing = 1 1\nDimSize = 2 2\nElementDataFile = LOCAL\n")
    with pytest.raises(DataError, match=r"crash.mha: NDims = .* is not a whole number from 1 to 5"):
        read_image_header(path)
