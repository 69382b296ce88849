"""explain_image over a photo, a folder, a glob and a video, in-process, with a tiny model as a run's checkpoint (what
it decides does not matter here: the rows, the files and the skipped frames do)."""

import csv
import json
import os
import shutil

import numpy as np
import pytest
from PIL import Image

from aujax import explain_image, files, rundir
from tests.support import TINY_WIDTHS, config_with, export_onnx, imagenet_card, write_video

pytest.importorskip("mediapipe", reason="mediapipe is not installed: explaining photos needs it")

DATA = os.path.join(os.path.dirname(__file__), "data")
SIDE = 200  # video frame side: small for speed, large enough for MediaPipe


def _config():
    # gradient x input: the cheapest composite to compile; which one does not matter here
    return config_with(**{"model.widths": ",".join(map(str, TINY_WIDTHS)), "explain.batch_size": 1,
                          "explain.composite": "gradient_x_input"})


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A workdir whose best fold holds the tiny reference model of tests/data/resnet18_reference (trained on patch
    records: its decisions do not matter here), recorded as trained on synthetic faces."""
    root = tmp_path_factory.mktemp("run")
    run = rundir.RunDir(str(root))
    shutil.copytree(os.path.join(DATA, "resnet18_reference", "checkpoint"), run.fold(0).latest)
    files.write_json(run.summary, {"best_fold": 0})
    files.write_json(run.config, {"data": {"train": "synthetic", "cv": "synthetic", "cross": "synthetic"}})
    return str(root)


def _face() -> np.ndarray:
    """The astronaut's head and shoulders, SIDE x SIDE RGB uint8."""
    image = Image.open(os.path.join(DATA, "astronaut.png")).convert("RGB").crop((100, 0, 356, 256))
    return np.asarray(image.resize((SIDE, SIDE)))


def _rows(path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.slow  # MediaPipe and LRP over several frames, compiled here: 10-25 s on 2 cores
def test_a_video_gives_one_row_per_sampled_frame_and_lists_the_blanked_ones_as_skipped(workdir, tmp_path, capsys):
    face = _face()
    frames = [np.roll(face, 2 * i, axis=1) for i in range(6)]
    frames[2] = frames[3] = np.full_like(face, 127)  # the face blanked out
    video = write_video(tmp_path / "clip.mp4", frames, fps=10)
    result = explain_image.explain_image(_config(), workdir, video, None, fps=5)
    out = os.path.join(workdir, "explain_image", "clip")
    rows = _rows(os.path.join(out, "frames.csv"))
    assert [row["frame"] for row in rows] == ["0", "2", "4"]  # 5 of the video's 10 frames per second
    assert [row["time_s"] for row in rows] == ["0.000", "0.200", "0.400"]
    assert [(row["status"], row["reason"]) for row in rows] == [("ok", ""), ("skipped", "no_face"), ("ok", "")]
    aus = result["au_ids"]
    assert all(0 <= float(rows[0][f"AU{au}_p"]) <= 1 and rows[0][f"AU{au}_present"] in ("0", "1") for au in aus)
    assert rows[1][f"AU{aus[0]}_p"] == "" and result["skipped"] == {"2": "no_face"}
    with np.load(os.path.join(out, "heatmaps.npz")) as saved:
        assert saved["heatmaps"].dtype == np.float16 and saved["heatmaps"].shape == (2, len(aus), 112, 112)
        assert saved["frame"].tolist() == ["0", "4"] and saved["au_ids"].tolist() == aus
        assert saved["images"].shape == (2, 112, 112, 3) and np.abs(saved["heatmaps"]).max() > 0
    assert os.path.isfile(os.path.join(out, "contact_sheet.png"))
    from aujax.data import faces

    assert faces.video_properties(os.path.join(out, "annotated.mp4"))[1] == 3
    printed = capsys.readouterr().out
    assert "skipped 2: no_face" in printed and "trained on synthetic faces only" in printed
    assert "mean nothing" in result["warning"]


def test_every_sampled_frame_once_at_most(workdir):
    assert explain_image.sampled_frames(25.0, 100, 2.0) == [0, 12, 25, 38, 50, 62, 75, 88]
    assert explain_image.sampled_frames(10.0, 5, 30.0) == [0, 1, 2, 3, 4]
    with pytest.raises(ValueError, match="--fps=0"):
        explain_image.sampled_frames(10.0, 5, 0)
    with pytest.raises(ValueError, match="declares 0 frames per second"):
        explain_image.sampled_frames(0.0, 5, 1.0, "x.avi")


@pytest.mark.slow  # MediaPipe and LRP over several frames, compiled here: 10-25 s on 2 cores
def test_a_folder_and_a_glob_list_every_image_and_why_one_has_no_face(workdir, tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    Image.fromarray(_face()).save(folder / "a_face.png")
    Image.open(os.path.join(DATA, "coffee.png")).save(folder / "b_cup.png")
    (folder / "notes.txt").write_text("not an image")
    result = explain_image.explain_image(_config(), workdir, str(folder), None)
    rows = _rows(os.path.join(workdir, "explain_image", "photos", "frames.csv"))
    assert [(os.path.basename(r["frame"]), r["status"], r["reason"]) for r in rows] == [
        ("a_face.png", "ok", ""), ("b_cup.png", "skipped", "no_face")]
    assert result["kind"] == "images" and result["explained"] == 1 and rows[0]["time_s"] == ""
    pattern = str(folder / "a_*.png")
    explain_image.explain_image(_config(), workdir, pattern, None)
    out = explain_image.explain_image_dir(os.path.join(workdir, "explain_image"), pattern)
    assert os.path.basename(out) == "a__" and len(_rows(os.path.join(out, "frames.csv"))) == 1
    with pytest.raises(ValueError, match="matches no image file"):
        explain_image.explain_image(_config(), workdir, str(folder / "z_*.png"), None)


def test_a_photo_keeps_its_result_json_and_figures_and_warns_about_a_synthetic_model(workdir, tmp_path):
    photo = tmp_path / "portrait.png"
    Image.fromarray(_face()).save(photo)
    result = explain_image.explain_image(_config(), workdir, str(photo), None)
    out = os.path.join(workdir, "explain_image", "portrait")
    saved = json.loads(open(os.path.join(out, "result.json")).read())
    assert saved["faces_found"] == 1 and set(saved["aus"]) == {f"AU{au}" for au in result["au_ids"]}
    assert os.path.isfile(os.path.join(out, "heatmaps.png")) and "synthetic faces only" in saved["warning"]


def test_no_warning_for_a_model_trained_on_real_data(tmp_path):
    run = rundir.RunDir(str(tmp_path))
    files.write_json(run.config, {"data": {"train": "ck_plus", "cv": "actor_study", "cross": "synthetic"}})
    assert explain_image.synthetic_only_warning(run) is None
    assert explain_image.synthetic_only_warning(rundir.RunDir(str(tmp_path / "none"))) is None


# ----------------------------------------------------------------------------------------------------------------
# --model_file: a model trained elsewhere, as an ONNX file with its card


@pytest.fixture(scope="module")
def onnx_model(tmp_path_factory):
    """A tiny PyTorch network of 3 outputs exported to ONNX, and its card's file: AU12 at output 0, AU4 at output 2."""
    torch = pytest.importorskip("torch", reason="torch is not installed: the test exports a PyTorch model")
    torch.manual_seed(5)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 7, 2, 3), torch.nn.BatchNorm2d(4), torch.nn.ReLU(),
                              torch.nn.MaxPool2d(3, 2, 1), torch.nn.Conv2d(4, 8, 3, 2, 1), torch.nn.ReLU(),
                              torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(8, 3)).eval()
    root = tmp_path_factory.mktemp("onnx")
    path = export_onnx(net, root / "au.onnx")
    card = root / "elsewhere.json"  # not beside the model: named by --model_card
    card.write_text(json.dumps(imagenet_card({12: 0, 4: 2})))
    return path, str(card)


def test_an_onnx_model_explains_a_photo_with_the_aus_of_its_card(onnx_model, tmp_path, capsys):
    from aujax import lrp, pipeline

    model_file, card = onnx_model
    config = config_with(**{"explain.batch_size": 1})
    pattern = os.path.join(DATA, "astronaut.pn[g]")  # a glob of one photo: frames.csv and heatmaps.npz
    pipeline.run("explain_image", config, str(tmp_path), image=pattern,
                 model_inputs={"model_file": model_file, "model_card": card})
    out = explain_image.explain_image_dir(os.path.join(tmp_path, "explain_image"), pattern)
    result = json.loads(open(os.path.join(out, "result.json")).read())
    assert result["model_file"] == os.path.abspath(model_file) and result["model_card"] == os.path.abspath(card)
    assert result["au_ids"] == [12, 4] and result["warning"] is None and "checkpoint" not in result
    assert "mean nothing" not in capsys.readouterr().out  # no run record: no synthetic-data warning
    with np.load(os.path.join(out, "heatmaps.npz")) as saved:
        heatmaps, images, au_ids = saved["heatmaps"], saved["images"], saved["au_ids"]
    assert au_ids.tolist() == [12, 4] and heatmaps.shape == (1, 2, 112, 112)
    logits, relevance = lrp.explain_with_logits(lrp.load_onnx(model_file, card), images / np.float32(255),
                                                composite=config.explain.composite)
    expected = np.asarray(lrp.pixel_heatmaps(relevance)).swapaxes(0, 1)
    scale = np.abs(expected).max()
    assert scale > 0
    np.testing.assert_allclose(heatmaps.astype(np.float32), expected, rtol=1e-2, atol=1e-3 * scale)
    row, = _rows(os.path.join(out, "frames.csv"))
    assert [k for k in row if k.startswith("AU")] == [f"AU{au}_{what}" for au in (12, 4)
                                                      for what in ("p", "present", "mu")]
    probabilities = 1 / (1 + np.exp(-np.asarray(logits[0], np.float64)))
    assert [float(row["AU12_p"]), float(row["AU4_p"])] == pytest.approx(probabilities.tolist(), abs=1e-4)


@pytest.mark.parametrize("outputs, fragments", [
        ({12: 0, 4: 5}, ("{4: 5}", "3 outputs")),  # the model has 3 outputs
        ({12: 0, 11: 1}, ("AUs 11 have no region",))])
def test_a_card_naming_an_output_the_model_lacks_or_an_au_without_a_region_is_refused_in_one_line(
        onnx_model, tmp_path, outputs, fragments):
    from aujax import pipeline

    model_file, _ = onnx_model
    with pytest.raises(ValueError) as refused:
        pipeline.run("explain_image", config_with(), str(tmp_path), image=os.path.join(DATA, "astronaut.png"),
                     model_inputs={"model_file": model_file, "model_card": json.dumps(imagenet_card(outputs))})
    message = str(refused.value)
    assert "\n" not in message and message.startswith("--model_card") and all(f in message for f in fragments)
    assert not os.path.exists(os.path.join(tmp_path, "explain_image"))
