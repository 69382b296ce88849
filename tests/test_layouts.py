"""Tests of aujax.data.layouts: parsing the CK+, UNBC-McMaster, DISFA, BP4D and manifest layouts (no image or video is
read here)."""

import math
import os

import numpy as np
import pytest

from aujax import facs
from aujax.data import layouts


def write(path, text=""):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)
    return path


def write_bytes(path, data: bytes):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    path.write_bytes(data)
    return str(path)


def facs_text(*codes):
    """A FACS file in the distributions' float format."""
    return "".join(f"   {au:.7e}   {intensity:.7e}\n" for au, intensity in codes)


def points_text(n, offset=0.0):
    return "".join(f"   {100 + i + offset:.4e}   {200 + i:.4e}\n" for i in range(n))


def by_source(scan):
    return {face.source: face for face in scan.faces}


def issues(scan, status=None):
    return {(i.source, i.reason): i for i in scan.issues if status in (None, i.status)}


# --- text files ---------------------------------------------------------------------------------------------------

def test_parse_facs_reads_ck_and_unbc_formats(tmp_path):
    ck = write(tmp_path / "ck_facs.txt", facs_text((4, 3), (12, 0), (25, 2)))
    unbc = write(tmp_path / "unbc_facs.txt", "   4.0000000e+00   2.0000000e+00   0.0000000e+00   0.0000000e+00\n\n")
    assert layouts.parse_facs(ck).codes == {4: 3.0, 12: 0.0, 25: 2.0}
    assert layouts.parse_facs(unbc).codes == {4: 2.0}
    assert layouts.parse_facs(ck).malformed == []


def test_parse_facs_reports_malformed_lines_and_keeps_the_rest(tmp_path):
    path = write(tmp_path / "f.txt", "4 3\nbrow lowerer\n6\n4.5 1\n7 9\n1 2 3 4 5\n10 1\n")
    parsed = layouts.parse_facs(path)
    assert parsed.codes == {4: 3.0, 10: 1.0}
    assert [line for line, _ in parsed.malformed] == [2, 3, 4, 5, 6]
    assert "not numbers" in parsed.malformed[0][1] and "intensity 9" in parsed.malformed[3][1]


def test_parse_points_names_file_and_line(tmp_path):
    good = write(tmp_path / "good.txt", points_text(68))
    assert layouts.parse_points(good, 68).shape == (68, 2)
    assert layouts.parse_points(good, 68)[3].tolist() == [103.0, 203.0]
    with pytest.raises(ValueError, match="short.txt: 67 points, expected 68"):
        layouts.parse_points(write(tmp_path / "short.txt", points_text(67)), 68)
    with pytest.raises(ValueError, match="bad.txt: line 2: expected 'x y'"):
        layouts.parse_points(write(tmp_path / "bad.txt", "1 2\n3 nan\n"), 2)


def test_parse_pspi(tmp_path):
    assert layouts.parse_pspi(write(tmp_path / "p.txt", "   3.0000000e+00\n")) == 3.0
    with pytest.raises(ValueError, match="q.txt: expected one number"):
        layouts.parse_pspi(write(tmp_path / "q.txt", "3 4\n"))


def test_number_files_that_are_not_utf8_name_the_file_and_line_and_a_bom_is_dropped(tmp_path):
    with pytest.raises(ValueError, match=r"f\.txt: line 2: not utf-8 text \(b'\\xff' at byte 4\)"):
        layouts.parse_facs(write_bytes(tmp_path / "f.txt", b"4 3\n\xff 2\n"))
    with pytest.raises(ValueError, match=r"p\.txt: line 1: not utf-8 text"):
        layouts.parse_pspi(write_bytes(tmp_path / "p.txt", b"3\xb7"))
    with pytest.raises(ValueError, match=r"l\.txt: line 2: not utf-8 text"):
        layouts.parse_points(write_bytes(tmp_path / "l.txt", b"1 2\n3 4\xa0\n"), 2)
    bom = write_bytes(tmp_path / "bom.txt", b"\xef\xbb\xbf" + facs_text((4, 3)).encode())
    assert layouts.parse_facs(bom) == layouts.FacsCodes({4: 3.0}, [])


def test_aam66_to_ibug68_puts_inner_mouth_corners_on_outer_ones():
    points66 = np.arange(132, dtype=np.float32).reshape(66, 2)
    points68 = layouts.aam66_to_ibug68(points66)
    assert points68.shape == (68, 2)
    np.testing.assert_array_equal(points68[:60], points66[:60])
    np.testing.assert_array_equal(points68[60], points66[48])
    np.testing.assert_array_equal(points68[64], points66[54])
    np.testing.assert_array_equal(points68[61:64], points66[60:63])
    np.testing.assert_array_equal(points68[65:68], points66[63:66])


def test_a_coded_face_has_its_listed_aus_present_in_any_column_order_and_unknown_intensity_as_0():
    face = layouts.FaceFile.coded("p", "s", "1", {4: 3.0, 25: 0.0, 12: 2.0})
    labels, intensity = face.labels((25, 1, 4, 12)), face.intensities((25, 1, 4, 12))
    assert labels.dtype == np.uint8 and intensity.dtype == np.float32
    assert labels.tolist() == [1, 0, 1, 1] and intensity.tolist() == [0.0, 0.0, 3.0, 2.0]


@pytest.mark.parametrize("spec, expected", [
        ("peak", [9]), ("all", list(range(1, 10))), ("last_fraction:0.33", [5, 6, 7, 8, 9]),
        ("last_fraction:1", list(range(1, 10)))])
def test_labelled_frames_end_at_the_peak_and_skip_the_neutral_first_frame(spec, expected):
    assert list(layouts.labelled_frames(13, 9, spec)) == expected


def test_labelled_frames_of_a_one_frame_sequence_is_its_peak():
    assert list(layouts.labelled_frames(1, 0, "all")) == [0]


@pytest.mark.parametrize("spec", ["last", "last_fraction:0", "last_fraction:1.5", "middle", "last_fraction:-1"])
def test_bad_label_frames_spec_is_rejected(spec):
    with pytest.raises(ValueError, match="label_frames"):
        layouts.parse_label_frames(spec)


# --- CK+ ----------------------------------------------------------------------------------------------------------

def ck_tree(root, landmarks=True):
    """S005/001: 6 frames, peak AU4+AU25 (+AU12, AU999); S010/002: 2 frames, AU12 only; S011/001: no FACS."""
    for subject, sequence, frames in (("S005", "001", 6), ("S010", "002", 2), ("S011", "001", 2)):
        for i in range(1, frames + 1):
            stem = f"{subject}_{sequence}_{i:08d}"
            write(root / f"cohn-kanade-images/{subject}/{sequence}/{stem}.png", "placeholder")
            if landmarks:
                write(root / f"Landmarks/{subject}/{sequence}/{stem}_landmarks.txt", points_text(68, i))
    write(root / "cohn-kanade-images/S005/001/.DS_Store", "")
    write(root / "FACS/S005/001/S005_001_00000006_facs.txt", facs_text((4, 3), (25, 0), (12, 2), (999, 1))
          + "  garbage line\n")
    write(root / "FACS/S010/002/S010_002_00000002_facs.txt", facs_text((12, 4)))
    write(root / "FACS/S012/001/S012_001_00000009_facs.txt", facs_text((4, 1)))  # FACS without image
    return root


def test_ck_plus_labels_the_last_frames_from_the_peak_code(tmp_path):
    scan = layouts.scan_ck_plus(str(ck_tree(tmp_path)), "last_fraction:0.33", pain_only=True)
    faces = by_source(scan)
    s005 = [f"cohn-kanade-images/S005/001/S005_001_{i:08d}.png" for i in range(1, 7)]
    assert sorted(faces) == s005[4:]  # ceil(0.33 * 6) = 2 frames
    for face in faces.values():
        assert face.subject == "S005" and face.present == {4, 25, 12, 999} and face.intensity[4] == 3.0
        assert face.path == os.path.join(tmp_path, face.source) and face.landmarks is None
    assert faces[s005[5]].extras == {"peak": True} and faces[s005[4]].extras == {"peak": False}
    found = issues(scan)
    assert found[s005[0], "unlabelled_frame"].status == "filtered"
    assert found["cohn-kanade-images/S010/002/S010_002_00000002.png", "no_pain_au"].status == "filtered"
    assert found["cohn-kanade-images/S011/001/S011_001_00000001.png", "no_facs"].status == "skipped"
    assert found["FACS/S012/001/S012_001_00000009_facs.txt", "facs_without_image"].status == "skipped"
    malformed = found["FACS/S005/001/S005_001_00000006_facs.txt", "malformed_facs_line"]
    assert malformed.status == "warning" and "line 5" in malformed.message
    assert scan.other_aus == {12: 2, 999: 1}
    assert scan.au_ids == tuple(sorted(facs.PAIN_AUS + (12, 999)))  # every AU coded, not only the pain AUs
    assert len(scan.faces) + len(scan.issues) == 10 + 2  # every image and every problem label file, once


def test_ck_plus_label_frames_options_and_keeping_all(tmp_path):
    root = str(ck_tree(tmp_path))
    peak = layouts.scan_ck_plus(root, "peak", pain_only=False)
    assert sorted(f.source[-12:] for f in peak.faces) == ["00000002.png", "00000006.png"]
    every = layouts.scan_ck_plus(root, "all", pain_only=False)
    assert len(every.faces) == 5 + 1  # all but each sequence's first frame
    s010 = by_source(every)["cohn-kanade-images/S010/002/S010_002_00000002.png"]
    assert s010.present == {12} and not s010.labels(facs.PAIN_AUS).any() and s010.labels(every.au_ids).sum() == 1


def test_ck_plus_dataset_landmarks_are_attached_or_the_frame_is_skipped(tmp_path):
    root = ck_tree(tmp_path)
    os.remove(root / "Landmarks/S005/001/S005_001_00000005_landmarks.txt")
    write(root / "Landmarks/S005/001/S005_001_00000006_landmarks.txt", points_text(60))
    write(root / "Landmarks/S005/001/S005_001_00000004_landmarks.txt", points_text(68, 4))
    scan = layouts.scan_ck_plus(str(root), "last_fraction:0.5", dataset_landmarks=True)
    (face,) = scan.faces
    assert face.source.endswith("00000004.png") and face.landmarks.shape == (68, 2)
    assert face.landmarks[0].tolist() == [104.0, 200.0]
    found = issues(scan, "skipped")
    assert ("cohn-kanade-images/S005/001/S005_001_00000005.png", "no_landmarks") in found
    assert "60 points, expected 68" in found["cohn-kanade-images/S005/001/S005_001_00000006.png",
                                             "bad_landmarks"].message


def test_ck_plus_facs_file_that_is_not_utf8_is_skipped_naming_its_line(tmp_path):
    root = ck_tree(tmp_path)
    write_bytes(root / "FACS/S010/002/S010_002_00000002_facs.txt", b"12 4\n4 3 \xb0\n")
    found = issues(layouts.scan_ck_plus(str(root), pain_only=False), "skipped")
    unreadable = found["FACS/S010/002/S010_002_00000002_facs.txt", "unreadable_facs"]
    assert "line 2: not utf-8 text" in unreadable.message
    assert ("cohn-kanade-images/S010/002/S010_002_00000002.png", "no_facs") in found


# --- UNBC-McMaster ------------------------------------------------------------------------------------------------

def unbc_tree(root):
    """042-ll042/ll042t1aaaff frames 001-004: AU4+AU6+AU43 / nothing / no FACS / AU7 and no PSPI; a stray FACS."""
    seq = "042-ll042/ll042t1aaaff"
    for i in range(1, 5):
        write(root / f"Images/{seq}/ll042t1aaaff{i:03d}.png", "placeholder")
        write(root / f"AAM_landmarks/{seq}/ll042t1aaaff{i:03d}_aam.txt", points_text(66))
    unbc_line = "   {:.7e}   {:.7e}   0.0000000e+00   0.0000000e+00\n"
    write(root / f"Frame_Labels/FACS/{seq}/ll042t1aaaff001_facs.txt",
          unbc_line.format(4, 2) + unbc_line.format(6, 3) + unbc_line.format(43, 1))
    write(root / f"Frame_Labels/FACS/{seq}/ll042t1aaaff002_facs.txt", "")
    write(root / f"Frame_Labels/FACS/{seq}/ll042t1aaaff004_facs.txt", unbc_line.format(7, 1))
    write(root / f"Frame_Labels/FACS/{seq}/ll042t1aaaff099_facs.txt", unbc_line.format(7, 1))
    for i, pspi in ((1, 6.0), (2, 0.0), (3, 0.0)):
        write(root / f"Frame_Labels/PSPI/{seq}/ll042t1aaaff{i:03d}_facs.txt", f"   {pspi:.7e}\n")
    return root


def test_unbc_labels_per_frame_and_keeps_pspi(tmp_path):
    scan = layouts.scan_unbc(str(unbc_tree(tmp_path)), pain_only=True, dataset_landmarks=True)
    faces = by_source(scan)
    first, fourth = (f"Images/042-ll042/ll042t1aaaff/ll042t1aaaff00{i}.png" for i in (1, 4))
    assert sorted(faces) == [first, fourth]
    assert faces[first].subject == "042-ll042" and faces[first].extras == {"pspi": 6.0}
    assert faces[first].present == {4, 6, 43} and faces[first].intensity[6] == 3.0
    assert math.isnan(faces[fourth].extras["pspi"]) and faces[fourth].notes[0][0] == "no_pspi"
    assert faces[first].landmarks.shape == (68, 2)
    np.testing.assert_array_equal(faces[first].landmarks[60], faces[first].landmarks[48])
    found = issues(scan)
    assert found["Images/042-ll042/ll042t1aaaff/ll042t1aaaff002.png", "no_pain_au"].status == "filtered"
    assert found["Images/042-ll042/ll042t1aaaff/ll042t1aaaff003.png", "no_facs"].status == "skipped"
    assert ("Frame_Labels/FACS/042-ll042/ll042t1aaaff/ll042t1aaaff099_facs.txt", "facs_without_image") in found
    assert scan.other_aus == {43: 1} and scan.au_ids == tuple(sorted(facs.PAIN_AUS + (43,)))


# --- DISFA --------------------------------------------------------------------------------------------------------

DISFA_AUS = facs.AU_SETS["disfa"]


def disfa_tree(root):
    """SN001: 4 labelled frames (AU12 at 0, 1, 2, 5; AU4 at 3 in frame 1), a malformed line and a frame 6 that only AU1
    codes; SN002: labels, no video; SN003: a video, no labels."""
    for au in DISFA_AUS:
        values = {12: (0, 1, 2, 5), 4: (3, 0, 0, 0)}.get(au, (0, 0, 0, 0))
        lines = "".join(f"{frame},{value}\n" for frame, value in enumerate(values, start=1))
        if au == 1:
            lines += "5,x\n6,1\n"
        write(root / f"ActionUnit_Labels/SN001/SN001_au{au}.txt", lines)
        write(root / f"ActionUnit_Labels/SN002/SN002_au{au}.txt", "1,0\n")
    write(root / "Videos_LeftCamera/LeftVideoSN001_comp.avi", "placeholder")
    write(root / "Videos_LeftCamera/LeftVideoSN003_comp.avi", "placeholder")
    return root


def test_disfa_labels_the_frames_of_each_video_from_its_intensity_files(tmp_path):
    scan = layouts.scan_disfa(str(disfa_tree(tmp_path)))
    video = "Videos_LeftCamera/LeftVideoSN001_comp.avi"
    faces = by_source(scan)
    assert scan.au_ids == DISFA_AUS and sorted(faces) == [f"{video}#{i:05d}" for i in range(1, 5)]
    frames = [faces[f"{video}#{i:05d}"] for i in range(1, 5)]
    assert [f.frame for f in frames] == [0, 1, 2, 3] and {f.path for f in frames} == {str(tmp_path / video)}
    assert [f.present for f in frames] == [{4}, set(), {12}, {12}]  # present at intensity >= 2
    assert [f.intensities((12, 4)).tolist() for f in frames] == [[0, 3], [1, 0], [2, 0], [5, 0]]
    assert frames[0].subject == "SN001" and scan.other_aus == {12: 2}
    found = issues(scan)
    assert "line 5" in found["ActionUnit_Labels/SN001/SN001_au1.txt", "malformed_au_line"].message
    assert "1 frames (first 6)" in found[video, "incomplete_labels"].message
    assert found["Videos_LeftCamera/LeftVideoSN002_comp.avi", "no_video"].status == "skipped"
    assert found["Videos_LeftCamera/LeftVideoSN003_comp.avi", "video_without_labels"].status == "skipped"


def test_disfa_positive_intensity_frame_step_and_pain_only(tmp_path):
    root = str(disfa_tree(tmp_path))
    lenient = layouts.scan_disfa(root, positive_intensity=1.0)
    assert [f.present for f in lenient.faces] == [{4}, {12}, {12}, {12}]
    sampled = layouts.scan_disfa(root, frame_step=3)
    assert [f.frame for f in sampled.faces] == [0, 3]
    assert "1 in 3 labelled frames kept (2 of 4)" in issues(sampled, "filtered")[
        "Videos_LeftCamera/LeftVideoSN001_comp.avi", "frame_step"].message
    pain = layouts.scan_disfa(root, pain_only=True)
    assert [f.frame for f in pain.faces] == [0]
    for bad in (dict(frame_step=0), dict(positive_intensity=0), dict(positive_intensity=6)):
        with pytest.raises(ValueError, match=next(iter(bad))):
            layouts.scan_disfa(root, **bad)


# --- BP4D ---------------------------------------------------------------------------------------------------------

def bp4d_tree(root, frames_dir="2D+3D"):
    """F001/T1: frames 1-3 and 5 as images (any zero padding), coded 1-4 (frame 3 AU1 not coded, frame 4 no image);
    AU99 never coded; F002/T2: coding, no frames; M001/T1: frames, no coding."""
    write(root / "AUCoding/AU_OCC/F001_T1.csv", "0,1,2,4,12,99\n1,0,1,0,1,9\n2,1,0,0,0,9\n3,9,0,0,0,9\n"
                                                "4,0,0,0,1,9\nx,1\n")
    write(root / "AUCoding/AU_OCC/F002_T2.csv", "0,1,2,4,12,99\n1,0,0,0,0,9\n")
    for name in ("001.jpg", "002.jpg", "0003.jpg", "005.jpg"):
        write(root / f"{frames_dir}/F001/T1/{name}", "placeholder")
    write(root / f"{frames_dir}/M001/T1/001.jpg", "placeholder")
    return root


@pytest.mark.parametrize("frames_dir", layouts.BP4D_FRAME_DIRS)
def test_bp4d_labels_the_coded_frames_of_each_task(tmp_path, frames_dir):
    scan = layouts.scan_bp4d(str(bp4d_tree(tmp_path, frames_dir)))
    faces = by_source(scan)
    assert scan.au_ids == (1, 2, 4, 12)  # AU99 is never coded 0 or 1
    assert sorted(faces) == [f"{frames_dir}/F001/T1/001.jpg", f"{frames_dir}/F001/T1/002.jpg"]
    first, second = faces[f"{frames_dir}/F001/T1/001.jpg"], faces[f"{frames_dir}/F001/T1/002.jpg"]
    assert first.present == {2, 12} and second.present == {1} and first.subject == "F001" and first.intensity == {}
    found = issues(scan)
    assert "AU [1] not coded (9)" in found[f"{frames_dir}/F001/T1/0003.jpg", "au_not_coded"].message
    assert found["AUCoding/AU_OCC/F001_T1.csv#4", "no_image"].status == "skipped"
    assert "1 frames have no row" in found[f"{frames_dir}/F001/T1/", "uncoded_frames"].message
    assert "line 6" in found["AUCoding/AU_OCC/F001_T1.csv", "malformed_au_coding_row"].message
    assert found["AUCoding/AU_OCC/F002_T2.csv", "no_frames"].status == "skipped"
    assert found[f"{frames_dir}/M001/T1/", "no_au_coding"].status == "skipped"


def test_bp4d_aus_option_chooses_the_columns_and_skips_frames_they_do_not_code(tmp_path):
    scan = layouts.scan_bp4d(str(bp4d_tree(tmp_path)), aus=(12, 2))
    assert scan.au_ids == (2, 12) and len(scan.faces) == 3  # frame 3 is coded for AUs 2 and 12
    (column,) = [i for i in layouts.scan_bp4d(str(tmp_path), aus=(99,)).issues if i.reason == "au_not_coded"][:1]
    assert "AU [99] not coded" in column.message
    missing = issues(layouts.scan_bp4d(str(tmp_path), aus=(17,)))
    assert "no column for AU [17]" in missing["AUCoding/AU_OCC/F001_T1.csv", "missing_au_columns"].message


# --- manifests ----------------------------------------------------------------------------------------------------

def manifest_tree(root, outside):
    for name in ("p01/a.png", "p16/b.png", "p02/c.png", "p02/d.png"):
        write(root / "images" / name, "placeholder")
    write(outside / "secret.png", "placeholder")
    os.symlink(outside / "secret.png", root / "images/link.png")
    rows = [
            "image,subject,AU4,AU6,AU7,AU9,AU10,AU25,AU26,AU27,AU12",
            "images/p01/a.png,1,1,0,0,0,0,0,0,0,1",
            "images/p16/b.png,016,0,0,3,0,0,0,0,0,0",
            "images/p02/c.png,2,0,0,0,0,0,0,0,0,1",
            "images/p02/d.png,2,0,0,0,0,0,two,0,0,0",
            f"{outside / 'secret.png'},3,1,0,0,0,0,0,0,0,0",
            "images/../../outside/secret.png,3,1,0,0,0,0,0,0,0,0",
            "images/link.png,3,1,0,0,0,0,0,0,0,0",
            "images/p03/missing.png,3,1,0,0,0,0,0,0,0,0",
            "images/p01/a.png,1,1,0,0,0,0,0,0,0,0",
            "",
    ]
    write(root / "manifest.csv", "\n".join(rows))
    return root


def test_manifest_rows_become_faces_or_clear_issues(tmp_path):
    root = manifest_tree(tmp_path / "root", tmp_path / "outside")
    scan = layouts.scan_manifest(str(root), exclude_subjects=["16"], pain_only=True)
    (face,) = scan.faces
    assert face.source == "images/p01/a.png" and face.subject == "1" and 4 in face.present
    found = issues(scan)
    assert found["images/p16/b.png", "excluded_subject"].status == "filtered"
    assert found["images/p02/c.png", "no_pain_au"].status == "filtered"
    assert "AU25 = 'two' is not a number" in found["manifest.csv:5", "malformed_row"].message
    assert "absolute path" in found["manifest.csv:6", "path_outside_root"].message
    assert "'..'" in found["manifest.csv:7", "path_outside_root"].message
    assert "outside the data root" in found["manifest.csv:8", "path_outside_root"].message
    assert "does not exist" in found["manifest.csv:9", "missing_image"].message
    assert "already listed" in found["manifest.csv:10", "duplicate"].message
    assert scan.other_aus == {12: 2}


def test_manifest_landmarks_and_missing_columns(tmp_path):
    write(tmp_path / "x.png", "placeholder")
    coords = ",".join(f"{i},{i + 1}" for i in range(68))
    header = "image,subject,AU4," + ",".join(f"x{i},y{i}" for i in range(68))
    write(tmp_path / "m.csv", f"{header}\nx.png,7,2,{coords}\n")
    scan = layouts.scan_manifest(str(tmp_path), "m.csv", dataset_landmarks=True)
    (face,) = scan.faces
    assert face.landmarks[5].tolist() == [5.0, 6.0] and face.intensity == {4: 2.0}
    assert scan.au_ids == facs.PAIN_AUS
    assert issues(scan)["m.csv", "missing_au_columns"].status == "warning"
    write(tmp_path / "partial.csv", "image,subject,AU4,x0,y0\nx.png,7,1,1,2\n")
    with pytest.raises(layouts.LayoutError, match=r"partial.csv: missing columns x1, y1"):
        layouts.scan_manifest(str(tmp_path), "partial.csv")
    write(tmp_path / "nolandmarks.csv", "image,subject,AU4\nx.png,7,1\n")
    with pytest.raises(layouts.LayoutError, match="landmarks='dataset'"):
        layouts.scan_manifest(str(tmp_path), "nolandmarks.csv", dataset_landmarks=True)


LATIN1_MANIFEST = "image,subject,AU4\nimages/plain.png,1,2\nimages/J\u00fcrgen.png,2,1\n"


def test_a_manifest_that_is_not_utf8_is_refused_naming_it_and_the_line_unless_its_encoding_is_given(tmp_path):
    for name in ("plain.png", "J\u00fcrgen.png"):
        write(tmp_path / "images" / name, "placeholder")
    write_bytes(tmp_path / "manifest.csv", LATIN1_MANIFEST.encode("latin-1"))
    with pytest.raises(ValueError, match=r"manifest\.csv: line 3: not utf-8 text .*encoding=latin-1"):
        layouts.scan_manifest(str(tmp_path))
    with pytest.raises(ValueError, match=r"manifest\.csv: line 3: not utf-8 text"):
        layouts.check_layout("actor_study", str(tmp_path))
    latin1 = layouts.scan_manifest(str(tmp_path), encoding="latin-1")
    assert sorted(face.source for face in latin1.faces) == ["images/J\u00fcrgen.png", "images/plain.png"]
    write_bytes(tmp_path / "bom.csv", b"\xef\xbb\xbf" + LATIN1_MANIFEST.encode("utf-8"))
    assert len(layouts.scan_manifest(str(tmp_path), "bom.csv").faces) == 2


# --- layout checks ------------------------------------------------------------------------------------------------

def test_missing_manual_dir_shows_the_expected_tree(tmp_path):
    with pytest.raises(layouts.LayoutError, match="does not exist") as error:
        layouts.scan_ck_plus(str(tmp_path / "nowhere"))
    assert "cohn-kanade-images/S005/001/" in str(error.value)
    with pytest.raises(layouts.LayoutError, match="no manual directory given"):
        layouts.check_layout("unbc_mcmaster", None)


@pytest.mark.parametrize("dataset, scan", [("ck_plus", layouts.scan_ck_plus), ("unbc_mcmaster", layouts.scan_unbc),
                                           ("disfa", layouts.scan_disfa), ("bp4d", layouts.scan_bp4d),
                                           ("manifest", layouts.scan_manifest)])
def test_wrongly_laid_out_manual_dir_says_what_is_there_and_what_is_expected(tmp_path, dataset, scan):
    write(tmp_path / "CK+" / "cohn-kanade-images" / "x.png", "placeholder")
    with pytest.raises(layouts.LayoutError) as error:
        scan(str(tmp_path))
    message = str(error.value)
    assert "lacks" in message and "It holds: CK+" in message
    assert layouts.EXPECTED_TREES[dataset] in message


def test_images_at_the_wrong_depth_are_a_layout_error(tmp_path):
    write(tmp_path / "cohn-kanade-images/S005_001_00000001.png", "placeholder")
    os.makedirs(tmp_path / "FACS")
    with pytest.raises(layouts.LayoutError, match="no image files found at the expected depth"):
        layouts.scan_ck_plus(str(tmp_path))


def test_resolve_inside_accepts_plain_relative_paths(tmp_path):
    write(tmp_path / "a/b.png", "x")
    assert layouts.resolve_inside(str(tmp_path), "a/b.png") == os.path.realpath(tmp_path / "a/b.png")
    for bad in ("/etc/passwd", "a/../../b.png", "C:\\x.png", ""):
        with pytest.raises(ValueError):
            layouts.resolve_inside(str(tmp_path), bad)


@pytest.mark.parametrize("dataset, scan, tree, problem", [
        ("disfa", layouts.scan_disfa, ("ActionUnit_Labels/SN001/au1.txt", "Videos_LeftCamera/a.avi"),
         "no ActionUnit_Labels/SNxxx/SNxxx_au<N>.txt files"),
        ("bp4d", layouts.scan_bp4d, ("AUCoding/AU_OCC/F001.csv", "2D+3D/F001/T1/001.jpg"),
         "no AUCoding/AU_OCC/<subject>_<task>.csv files"),
        ("bp4d", layouts.scan_bp4d, ("AUCoding/AU_OCC/F001_T1.csv", "2D+3D/F001/001.jpg"),
         "no frames found at the expected depth under 2D+3D/")])
def test_frame_datasets_without_their_label_files_show_the_expected_tree(tmp_path, dataset, scan, tree, problem):
    for path in tree:
        write(tmp_path / path, "0,1\n")
    with pytest.raises(layouts.LayoutError) as error:
        scan(str(tmp_path))
    assert problem in str(error.value) and layouts.EXPECTED_TREES[dataset] in str(error.value)
