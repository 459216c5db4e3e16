"""Tests of utils.io.markups: Slicer point lists written by hand from Slicer's documented formats."""

from __future__ import annotations

import json

import numpy as np
import pytest

from utils.io.errors import DataError
from utils.io.landmarks import read_landmarks_csv
from utils.io.markups import main, markups_id, read_markups, write_markups_json

# the example of Slicer's developer guide (Markups, "Markups json file format")
MRK_JSON = """{"@schema": "https://raw.githubusercontent.com/Slicer/Slicer/main/Modules/Loadable/Markups/\
Resources/Schema/markups-schema-v1.0.0.json#",
"markups": [{"type": "Fiducial", "coordinateSystem": "%s", "controlPoints": [
    { "label": "F-1", "position": [-53.388409961685827, -73.33572796934868, 0.0] },
    { "label": "F-2", "position": [49.8682950191571, -88.58955938697324, 0.0], "positionStatus": "%s" },
    { "label": "F-3", "position": [-25.22749042145594, 59.255268199233729, 0.0] }
]}]}"""
POINTS = np.array([[-53.388409961685827, -73.33572796934868, 0.0],
                   [49.8682950191571, -88.58955938697324, 0.0],
                   [-25.22749042145594, 59.255268199233729, 0.0]])
# the .fcsv example of the same guide, and a Slicer 5 row with its two extra status columns
FCSV = """# Markups fiducial file version = 4.13
# CoordinateSystem = %s
# columns = id,x,y,z,ow,ox,oy,oz,vis,sel,lock,label,desc,associatedNodeID
0,-19.906699999999987,13.9347,29.442970822281154,0,0,0,1,1,1,0,F-1,,
1,-7.3939,-76.94990495817181,17.552540297898375,0,0,0,1,1,1,0,F-2,,
2,81.73332450520303,-42.9415,9.625586614976527,0,0,0,1,1,1,0,"F-3, tip",,,2,0
"""
NOT_PLACED = "3,0,0,0,0,0,0,1,1,1,0,F-4,,,3,0\n"  # Slicer 5: status 3 (missing), stored at the origin
FCSV_POINTS = np.array([[-19.906699999999987, 13.9347, 29.442970822281154],
                        [-7.3939, -76.94990495817181, 17.552540297898375],
                        [81.73332450520303, -42.9415, 9.625586614976527]])
RAS = np.array([-1.0, -1.0, 1.0])


@pytest.mark.parametrize("system, factor", [("LPS", 1.0), ("RAS", RAS)])
def test_mrk_json_reads_into_lps(tmp_path, system, factor):
    path = tmp_path / "case_7.mrk.json"
    path.write_text(MRK_JSON % (system, "defined"))
    point_list = read_markups(path)
    assert point_list.labels == ("F-1", "F-2", "F-3") and markups_id(path) == "case_7"
    np.testing.assert_array_equal(point_list.points, POINTS * factor)


def test_a_point_not_placed_in_slicer_is_missing(tmp_path):
    path = tmp_path / "a.mrk.json"
    path.write_text(MRK_JSON % ("LPS", "missing"))
    points = read_markups(path).points
    assert np.isnan(points[1]).all() and np.isfinite(points[[0, 2]]).all()


@pytest.mark.parametrize("system, factor", [("LPS", 1.0), ("1", 1.0), ("RAS", RAS), ("0", RAS)])
def test_fcsv_reads_into_lps(tmp_path, system, factor):
    path = tmp_path / "b.fcsv"
    path.write_text(FCSV % system)
    point_list = read_markups(path)
    assert point_list.labels == ("F-1", "F-2", "F-3, tip")
    np.testing.assert_array_equal(point_list.points, FCSV_POINTS * factor)


def test_an_fcsv_point_with_a_status_other_than_defined_is_missing(tmp_path):
    path = tmp_path / "c.fcsv"
    path.write_text(FCSV % "LPS" + NOT_PLACED)
    point_list = read_markups(path)
    assert point_list.labels[3] == "F-4" and np.isnan(point_list.points[3]).all()
    np.testing.assert_array_equal(point_list.points[:3], FCSV_POINTS)


def test_the_image_id_is_the_name_up_to_the_first_dot_as_for_images():
    assert markups_id("dir/case.1.mrk.json") == "case" and markups_id("P01.fcsv") == "P01"


def test_written_predictions_read_back_with_their_labels_and_gaps(tmp_path):
    path = tmp_path / "pred" / "img.mrk.json"
    path.parent.mkdir()
    points = np.array([[1.5, -2.25], [np.nan, np.nan], [3.0, 4.0]])
    write_markups_json(path, ["L0", "L1", "L2"], points)
    content = json.loads(path.read_text())["markups"][0]
    assert content["coordinateSystem"] == "LPS" and content["controlPoints"][1]["positionStatus"] == "missing"
    back = read_markups(path)
    assert back.labels == ("L0", "L1", "L2")
    np.testing.assert_array_equal(back.points[[0, 2]], [[1.5, -2.25, 0.0], [3.0, 4.0, 0.0]])
    assert np.isnan(back.points[1]).all()


def test_bad_files_name_the_file_and_the_field(tmp_path):
    cases = {
        "broken.mrk.json": ("{", "not valid JSON"),
        "curve.mrk.json": ('{"markups": [{"type": "Curve"}]}', "no point list"),
        "system.mrk.json": ('{"markups": [{"type": "Fiducial", "coordinateSystem": "XYZ"}]}', "'XYZ'"),
        "position.mrk.json": ('{"markups": [{"type": "Fiducial", "controlPoints": [{"label": "A", '
                              '"position": [1, 2]}]}]}', r"control point 1 \('A'\)"),
        "units.mrk.json": ('{"markups": [{"type": "Fiducial", "coordinateUnits": "um"}]}', "only 'mm'"),
        "null.mrk.json": ('{"markups": [{"type": "Fiducial", "controlPoints": null}]}', "must be a list"),
        "text.fcsv": ("# columns = id,x,y,z,label\n0,1,two,3,A\n", "line 2: x, y and z must be numbers"),
        "system.fcsv": ("# CoordinateSystem = IJK\n", "line 1: CoordinateSystem 'IJK'"),
    }
    for name, (text, message) in cases.items():
        (tmp_path / name).write_text(text)
        with pytest.raises(DataError, match=message) as error:
            read_markups(tmp_path / name)
        assert name in str(error.value)
    with pytest.raises(ValueError, match="not a Slicer point list"):
        read_markups(tmp_path / "points.csv")


def test_command_line_converts_a_folder_to_the_landmark_csv(tmp_path, capsys):
    (tmp_path / "a.mrk.json").write_text(MRK_JSON % ("RAS", "defined"))
    (tmp_path / "b.fcsv").write_text(FCSV % "LPS")
    output = tmp_path / "all.csv"
    main([str(tmp_path / "a.mrk.json"), str(tmp_path / "b.fcsv"), "--output", str(output)])
    table = read_landmarks_csv(output, 3, 3)
    np.testing.assert_allclose(table["a"], POINTS * RAS)
    np.testing.assert_allclose(table["b"], FCSV_POINTS)
    # by label: an absent label is missing; 2D keeps x, y of points in the plane z = 0
    main([str(tmp_path / "a.mrk.json"), "--output", str(output), "--labels", "F-3", "F-1", "F-9", "F-2",
          "--dim", "2"])
    table = read_landmarks_csv(output, 4, 2)
    np.testing.assert_allclose(table["a"][[0, 1, 3]], (POINTS * RAS)[[2, 0, 1], :2])
    assert np.isnan(table["a"][2]).all()
    assert "wrote 1 images x 4 landmarks" in capsys.readouterr().out


def test_command_line_refuses_a_label_used_twice(tmp_path, capsys):
    twice = MRK_JSON.replace('"label": "F-3"', '"label": "F-1"') % ("LPS", "defined")
    (tmp_path / "a.mrk.json").write_text(twice)
    with pytest.raises(SystemExit) as exit_info:
        main([str(tmp_path / "a.mrk.json"), "--output", str(tmp_path / "x.csv"), "--labels", "F-1", "F-2"])
    assert "a.mrk.json: label 'F-1' names more than one point" in str(exit_info.value.code)
    with pytest.raises(SystemExit):
        main([str(tmp_path / "a.mrk.json"), "--output", str(tmp_path / "x.csv"), "--labels", "F-1", "F-1"])
    assert "--labels names a label twice" in capsys.readouterr().err
    assert not (tmp_path / "x.csv").exists()


@pytest.mark.parametrize("arguments, message", [
    (["--dim", "2"], "b.fcsv: --dim 2 but point 1 has z = 29.4"),
    (["--labels", "F-1", "F-2", "F-3"], "b.fcsv: labels 'F-3, tip' are not among --labels"),
])
def test_command_line_errors_name_the_file_and_write_nothing(tmp_path, arguments, message):
    (tmp_path / "a.mrk.json").write_text(MRK_JSON % ("LPS", "defined"))
    (tmp_path / "b.fcsv").write_text(FCSV % "LPS")
    output = tmp_path / "all.csv"
    with pytest.raises(SystemExit) as exit_info:
        main([str(tmp_path / "a.mrk.json"), str(tmp_path / "b.fcsv"), "--output", str(output), *arguments])
    assert message in str(exit_info.value.code)
    assert not output.exists()


def test_command_line_refuses_files_with_different_point_counts(tmp_path):
    (tmp_path / "a.mrk.json").write_text(MRK_JSON % ("LPS", "defined"))
    (tmp_path / "b.fcsv").write_text("\n".join((FCSV % "LPS").splitlines()[:-1]) + "\n")
    with pytest.raises(SystemExit) as exit_info:
        main([str(tmp_path / "a.mrk.json"), str(tmp_path / "b.fcsv"), "--output", str(tmp_path / "x.csv")])
    assert "b.fcsv: 2 points where the files before had 3; give --labels" in str(exit_info.value.code)


def test_command_line_writes_the_reset_frame_of_the_spine_kind(tmp_path):
    import SimpleITK as sitk

    image = sitk.Image(20, 10, 30, sitk.sitkInt16)
    image.SetSpacing((0.5, 0.8, 2.0))
    image.SetOrigin((-40.0, 7.0, 300.0))
    image.SetDirection((0.0, -1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0))
    (tmp_path / "images").mkdir()
    sitk.WriteImage(image, str(tmp_path / "images" / "ct7.nii.gz"))
    index = np.array([3.0, 4.0, 12.5])
    write_markups_json(tmp_path / "ct7.mrk.json", ["T1"],
                       np.array([image.TransformContinuousIndexToPhysicalPoint(index.tolist())]))
    main([str(tmp_path / "ct7.mrk.json"), "--output", str(tmp_path / "all.csv"), "--reset-frame",
          str(tmp_path / "images")])
    written = read_landmarks_csv(tmp_path / "all.csv", 1, 3)["ct7"][0]
    np.testing.assert_allclose(written, index * (0.5, 0.8, 2.0), atol=1e-6)  # origin 0, identity direction
    write_markups_json(tmp_path / "ct8.mrk.json", ["T1"], np.zeros((1, 3)))
    with pytest.raises(SystemExit, match=r"--reset-frame: 0 image files for id 'ct8'"):
        main([str(tmp_path / "ct8.mrk.json"), "--output", str(tmp_path / "other.csv"), "--reset-frame",
              str(tmp_path / "images")])
    assert not (tmp_path / "other.csv").exists()
