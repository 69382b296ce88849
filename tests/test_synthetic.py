"""Tests for aujax.data.synthetic: determinism, the record contract, the label model, where each AU shows,
landmarks that follow the drawn face and its pose, the two domains and the spurious cue."""

import numpy as np
import pytest

from aujax import facs
from aujax.data import records
from aujax.data import synthetic

BROWS, EYES, NOSE = range(17, 27), range(36, 48), range(27, 36)
MOUTH, JAW = range(48, 68), range(0, 17)
# The facial group whose landmarks an AU may move; every other landmark must stay put.
MOVING_GROUP = {1: BROWS, 2: BROWS, 4: BROWS, 5: EYES, 6: EYES, 7: EYES, 9: NOSE, 10: MOUTH, 12: MOUTH, 14: MOUTH,
                15: MOUTH, 17: list(MOUTH) + list(JAW), 20: MOUTH, 23: MOUTH, 24: MOUTH, 25: MOUTH,
                26: list(MOUTH) + list(JAW), 27: list(MOUTH) + list(JAW), 43: EYES}
ALL = facs.KNOWN_AUS


@pytest.fixture(scope="module")
def posed():
    return synthetic.generate(20, 15, "posed", seed=0)


def test_same_arguments_give_identical_records_and_another_seed_does_not():
    first = synthetic.generate(3, 4, "wild", seed=5)
    again = synthetic.generate(3, 4, "wild", seed=5)
    other = synthetic.generate(3, 4, "wild", seed=6)
    for field in ("image", "landmarks", "labels", "intensity", "subject", "source"):
        np.testing.assert_array_equal(getattr(first, field), getattr(again, field))
    assert not np.array_equal(first.image, other.image)
    assert not np.array_equal(first.landmarks, other.landmarks)


def test_a_subject_and_its_images_do_not_depend_on_how_many_are_generated():
    few = synthetic.generate(2, 3, "posed", seed=1)
    many = synthetic.generate(3, 5, "posed", seed=1)
    same_images = np.concatenate([np.arange(3), 5 + np.arange(3)])  # images 0-2 of subjects 0 and 1
    np.testing.assert_array_equal(few.image, many.image[same_images])
    np.testing.assert_array_equal(few.landmarks, many.landmarks[same_images])


@pytest.mark.slow  # worker processes
def test_worker_processes_render_the_same_records_as_one_process():
    # 2 subjects x 150 images: two tasks of 256 images, the second partly filled
    serial = synthetic.generate(2, 150, "wild", seed=4, spurious_cue_au=4, workers=1)
    parallel = synthetic.generate(2, 150, "wild", seed=4, spurious_cue_au=4, workers=2)
    for field in ("image", "landmarks", "labels", "intensity", "subject", "source"):
        np.testing.assert_array_equal(getattr(serial, field), getattr(parallel, field))


def test_images_on_demand_are_the_same_and_only_the_blocks_read_are_rendered_once(monkeypatch):
    """3 x 30 images: blocks of 32 rows 0-31, 32-63, 64-89."""
    eager = synthetic.generate(3, 30, "wild", seed=4, spurious_cue_au=4, workers=1)
    rendered = []
    render_task = synthetic._render_task
    monkeypatch.setattr(synthetic, "_render_task", lambda subjects, keys, *settings: (
        rendered.extend(keys), render_task(subjects, keys, *settings))[1])
    lazy = synthetic.generate(3, 30, "wild", seed=4, spurious_cue_au=4, workers=1, images_on_demand=True)
    assert rendered == [] and isinstance(lazy.image, records.LazyImages)
    for field in ("landmarks", "labels", "intensity", "subject", "source"):  # known without rendering
        np.testing.assert_array_equal(getattr(lazy, field), getattr(eager, field))
    np.testing.assert_array_equal(lazy.image[[70, 2, 70]], eager.image[[70, 2, 70]])
    keys = [(row // 30, row % 30) for row in range(90)]  # (subject, image) of each row
    assert rendered == keys[:32] + keys[64:]  # the blocks of rows 2 and 70
    np.testing.assert_array_equal(lazy.image[1:4], eager.image[1:4])
    assert rendered == keys[:32] + keys[64:]  # rows 1-3 are in a block already rendered
    np.testing.assert_array_equal(np.asarray(lazy.image), eager.image)
    assert rendered == keys[:32] + keys[64:] + keys[32:64]


def test_images_on_demand_do_not_depend_on_which_rows_are_read_together():
    """Reading rows 0-7 alone gave other pixels than reading rows 0-31 when each read rendered only its rows (the
    vectorised maths of a chunk rounds differently with other images in it): the images then depended on the device
    count and on whether the explain stage ran after training."""
    few_first = synthetic.generate(4, 8, "posed", seed=0, subject_prefix="C", images_on_demand=True)
    all_first = synthetic.generate(4, 8, "posed", seed=0, subject_prefix="C", images_on_demand=True)
    np.testing.assert_array_equal(few_first.image[np.arange(8)], all_first.image[np.arange(32)][:8])


def test_records_follow_the_contract():
    faces = synthetic.generate(3, 4, "posed", seed=2, subject_prefix="A", name="toy")
    assert isinstance(faces, records.FaceRecords) and len(faces) == 12 and faces.name == "toy"
    assert faces.subjects == ["A000", "A001", "A002"]
    assert faces.source[5] == "synthetic:posed:seed2:A001:0001"
    assert set(np.unique(faces.labels)) <= {0, 1}
    present = faces.labels == 1
    assert np.all((faces.intensity[present] >= 1) & (faces.intensity[present] <= 5))
    assert np.all(faces.intensity[~present] == 0)
    assert np.all((faces.landmarks >= 0) & (faces.landmarks <= facs.IMAGE_SIZE - 1))


@pytest.mark.parametrize("arguments, message", [
        (dict(domain="studio"), "studio"),
        (dict(num_subjects=0), "num_subjects=0"),
        (dict(spurious_cue_au=12), "AU12"),
        (dict(spurious_cue_probability=1.5), "1.5"),
])
def test_bad_arguments_raise_errors_that_name_the_value(arguments, message):
    with pytest.raises(ValueError, match=message) as error:
        synthetic.generate(**{"num_subjects": 1, "images_per_subject": 1, **arguments})
    if "domain" in arguments:
        assert "posed" in str(error.value) and "wild" in str(error.value)


def test_labels_are_imbalanced_co_occur_and_never_empty(posed):
    rngs = [np.random.default_rng([7, i]) for i in range(4000)]
    sampled = np.stack([synthetic.sample_labels(rng)[0] for rng in rngs])
    for labels in (posed.labels, sampled):
        assert labels.sum(axis=1).min() >= 1
        frequency = dict(zip(facs.PAIN_AUS, labels.mean(axis=0)))
        assert frequency[27] < 0.4 * frequency[7] and frequency[9] < 0.6 * frequency[4]
        au = {a: labels[:, facs.au_column(a, facs.PAIN_AUS)] == 1 for a in facs.PAIN_AUS}
        assert np.all(au[25][au[26]]) and np.all(au[25][au[27]]) and not np.any(au[26] & au[27])
    eyes_closing = au[6] | au[7]
    assert au[9][eyes_closing].mean() > 3 * au[9][~eyes_closing].mean()
    assert au[10][eyes_closing].mean() > 3 * au[10][~eyes_closing].mean()


@pytest.mark.parametrize("aus", ["bp4d", "disfa", "unbc"])
def test_other_sets_co_occur_plausibly_and_never_show_what_cannot_be_shown_together(aus):
    aus = facs.resolve_aus(aus)
    labels = np.stack([synthetic.sample_labels(np.random.default_rng([8, i]), aus)[0] for i in range(3000)])
    assert labels.sum(axis=1).min() >= 1 and np.all(labels.mean(axis=0) > 0.02)
    au = {a: labels[:, facs.au_column(a, aus)] == 1 for a in aus}
    never = [(12, 15), (14, 20), (43, 5), (43, 7), (25, 17), (25, 23), (25, 24), (26, 17), (27, 23)]
    for first, second in never:
        if first in aus and second in aus:
            assert not np.any(au[first] & au[second]), f"AU{first} and AU{second} together"
    pairs = [(1, 2), (12, 6), (15, 17), (23, 24), (6, 7), (4, 7)]
    for given, then in (pair for pair in pairs if set(pair) <= set(aus)):
        assert au[then][au[given]].mean() > 1.2 * au[then][~au[given]].mean(), f"AU{then} goes with AU{given}"


def test_every_set_is_generated_and_pain_faces_do_not_depend_on_the_set_holding_other_aus():
    for name in facs.AU_SETS:
        faces = synthetic.generate(2, 3, "wild", seed=1, aus=name)
        assert faces.au_ids == facs.resolve_aus(name) and faces.labels.shape == (6, len(faces.au_ids))
    subjects = synthetic.select(synthetic.sample_subjects(4, 2), np.arange(4))
    rngs = [np.random.default_rng(i) for i in range(4)]
    pose, scene = synthetic.sample_poses(rngs, "wild"), synthetic.sample_scenes(rngs, "wild")
    pain = np.stack([synthetic.sample_labels(rng)[1] for rng in rngs])
    within_all = np.zeros((4, len(ALL)), np.float32)
    within_all[:, [ALL.index(a) for a in facs.PAIN_AUS]] = pain
    for alone, among_all in zip(synthetic.render(subjects, pain, pose, scene),
                                synthetic.render(subjects, within_all, pose, scene, ALL)):
        np.testing.assert_array_equal(alone, among_all)
    with pytest.raises(ValueError, match="'3' is neither"):
        synthetic.generate(1, 1, aus=(1, 3))


def render_pairs(au, intensity=4.0, num=6, domain="posed", seed=0):
    """The same `num` faces (same pose, scene and noise) rendered neutral and with `au` at `intensity` (the set of
    every known AU, the others absent).

    Returns images (2, num, 112, 112, 3) int, landmarks (2, num, 68, 2), canonical landmarks (2, num, 68, 2)
    and the scenes' largest noise standard deviation in grey levels.
    """
    subjects = synthetic.select(synthetic.sample_subjects(num, seed, domain), np.tile(np.arange(num), 2))
    rngs = [np.random.default_rng([seed, i % num]) for i in range(2 * num)]
    pose = synthetic.sample_poses(rngs, domain)
    scene = synthetic.sample_scenes(rngs, domain)
    intensities = np.zeros((2 * num, len(ALL)), np.float32)
    intensities[num:, facs.au_column(au, ALL)] = intensity
    images, landmarks = synthetic.render(subjects, intensities, pose, scene, ALL)
    canonical = synthetic.canonical_landmarks(synthetic.face_geometry(subjects, intensities, ALL))
    split = lambda a: a.reshape((2, num) + a.shape[1:])
    return split(images.astype(int)), split(landmarks), split(canonical), float(scene["noise_sigma"].max() * 255)


def au_area(au, landmarks):
    """Boolean (112, 112) mask of AU `au`'s facial area, boxes around the landmarks (k, 68, 2) of k renders."""
    low, high = landmarks.min(axis=0), landmarks.max(axis=0)

    def extent(ids, axis):
        return low[list(ids), axis].min(), high[list(ids), axis].max()

    eyes_top, eyes_bottom = extent(EYES, 1)
    mouth_left, mouth_right = extent(MOUTH, 0)
    mouth_top, mouth_bottom = extent(MOUTH, 1)
    brows = (extent(BROWS, 0)[0] - 3, extent(BROWS, 0)[1] + 3, extent(BROWS, 1)[0] - 6, extent(BROWS, 1)[1] + 5)
    eyes = [(low[36, 0] - 4, high[39, 0] + 4, eyes_top - 6, eyes_bottom + 5),
            (low[42, 0] - 4, high[45, 0] + 4, eyes_top - 6, eyes_bottom + 5)]
    mouth = [(mouth_left - 4, mouth_right + 4, mouth_top - 4, mouth_bottom + 4)]
    mouth_and_jaw = [(low[4, 0] - 2, high[12, 0] + 2, mouth_top - 5, facs.IMAGE_SIZE)]
    boxes = {  # (left, right, top, bottom) in pixels
            1: [brows[:2] + (brows[2] - 6, brows[3])],  # the brows and the forehead wrinkles above them
            2: [brows[:2] + (brows[2] - 4, brows[3])],
            4: [brows],
            6: [(low[36, 0] - 11, high[39, 0], eyes_top - 4, high[30, 1] + 2),  # outer eye corners and cheeks
                (low[42, 0], high[45, 0] + 11, eyes_top - 4, high[30, 1] + 2)],
            5: eyes, 7: eyes, 43: eyes,
            9: [(extent(NOSE, 0)[0] - 4, extent(NOSE, 0)[1] + 4, extent(NOSE, 1)[0] - 3, extent(NOSE, 1)[1] + 4)],
            10: [(mouth_left - 4, mouth_right + 4, high[33, 1] - 2, high[66, 1] + 2)],  # philtrum and upper lip
            12: mouth, 15: mouth, 20: mouth, 23: mouth, 24: mouth, 25: mouth,
            14: [(mouth_left - 6, mouth_right + 6, mouth_top - 4, mouth_bottom + 4)],  # the dimples beside the corners
            17: mouth_and_jaw, 26: mouth_and_jaw, 27: mouth_and_jaw,  # mouth, chin and jaw
    }[au]
    ys, xs = np.mgrid[0:facs.IMAGE_SIZE, 0:facs.IMAGE_SIZE]
    area = np.zeros(xs.shape, bool)
    for left, right, top, bottom in boxes:
        area |= (xs >= left) & (xs <= right) & (ys >= top) & (ys <= bottom)
    return area


@pytest.mark.parametrize("au", ALL)
def test_an_au_changes_pixels_visibly_and_mostly_inside_its_area(au):
    (neutral, expressive), (neutral_marks, expressive_marks), _, noise = render_pairs(au)
    weak = render_pairs(au, intensity=1.5)[0][1]
    for i in range(len(neutral)):
        change = np.abs(expressive[i] - neutral[i]).mean(axis=-1)
        area = au_area(au, np.stack([neutral_marks[i], expressive_marks[i]]))
        assert change[area].sum() >= 0.9 * change.sum(), f"AU{au} face {i}: too much change outside its area"
        assert (change[area] > 4 * noise).sum() >= 10, f"AU{au} face {i}: change not clearly above the noise"
        weak_change = np.abs(weak[i] - neutral[i]).mean(axis=-1)
        assert 0 < weak_change.sum() < 0.97 * change.sum(), f"AU{au} face {i}: effect does not grow with intensity"


@pytest.mark.parametrize("au", ALL)
def test_landmarks_move_with_the_au_and_only_in_its_group(au):
    _, _, (neutral, expressive), _ = render_pairs(au)
    x, y = (expressive - neutral)[..., 0], (expressive - neutral)[..., 1]
    gap = lambda marks, a, b: marks[:, b, 1] - marks[:, a, 1]
    width = lambda marks: marks[:, 54, 0] - marks[:, 48, 0]
    moved = {
            1: np.all(y[:, 20:24] < -2.5) and np.all(y[:, 21] < y[:, 17] - 1.5),
            2: np.all(y[:, [17, 18, 25, 26]] < -2.5) and np.all(y[:, 17] < y[:, 21] - 1.5),
            5: np.all(gap(expressive, 37, 41) > 1.3 * gap(neutral, 37, 41)),
            12: np.all(y[:, [48, 54]] < -2) and np.all(width(expressive) > width(neutral) + 1.5),
            14: np.all(width(expressive) < width(neutral) - 0.8),
            15: np.all(y[:, [48, 54]] > 1.8),
            17: np.all(y[:, 8] < -1.2) and np.all(y[:, 57] < -2),
            20: np.all(width(expressive) > width(neutral) + 2.5),
            23: np.all(gap(expressive, 51, 57) < gap(neutral, 51, 57) - 1.5)
                and np.all(width(expressive) < width(neutral) - 0.8),
            24: np.all(gap(expressive, 51, 57) < gap(neutral, 51, 57) - 1.5),
            43: np.all(gap(expressive, 37, 41) < 0.3 * gap(neutral, 37, 41)),
            4: np.all(y[:, BROWS].mean(axis=1) > 1.0)
               and np.all((expressive[:, 22, 0] - expressive[:, 21, 0]) < (neutral[:, 22, 0] - neutral[:, 21, 0]) - 2),
            6: np.all(y[:, [40, 41, 46, 47]] < -0.3),
            7: np.all(gap(expressive, 37, 41) < 0.7 * gap(neutral, 37, 41)),
            9: np.all(y[:, 31:36] < -1.5),
            10: np.all(y[:, 50:53] < -1.5),
            25: np.all(gap(expressive, 62, 66) > gap(neutral, 62, 66) + 1.5),
            26: np.all(y[:, 8] > 3) and np.all(y[:, 57] > 3),
            27: np.all(y[:, 8] > 5) and np.all(gap(expressive, 51, 57) > gap(neutral, 51, 57) + 5)
                and np.all((expressive[:, 54, 0] - expressive[:, 48, 0]) > (neutral[:, 54, 0] - neutral[:, 48, 0]) + 1),
    }[au]
    assert moved, f"AU{au} landmarks do not move as the AU does"
    others = np.setdiff1d(np.arange(facs.NUM_LANDMARKS), MOVING_GROUP[au])
    assert np.abs(x[:, others]).max() < 1e-4 and np.abs(y[:, others]).max() < 1e-4


def sample(images, points):
    """Bilinear colours (n, k, 3) of images (n, H, W, 3) at points (n, k, 2) (x, y), pixel centres at j + 0.5."""
    images = images.astype(float)
    points = points - 0.5
    x0 = np.clip(np.floor(points[..., 0]).astype(int), 0, images.shape[2] - 2)
    y0 = np.clip(np.floor(points[..., 1]).astype(int), 0, images.shape[1] - 2)
    fx, fy = (points[..., 0] - x0)[..., None], (points[..., 1] - y0)[..., None]
    n = np.arange(len(images))[:, None]
    top = images[n, y0, x0] * (1 - fx) + images[n, y0, x0 + 1] * fx
    bottom = images[n, y0 + 1, x0] * (1 - fx) + images[n, y0 + 1, x0 + 1] * fx
    return top * (1 - fy) + bottom * fy


@pytest.mark.parametrize("aus", ["pain", ALL])
def test_landmarks_sit_on_drawn_features(posed, aus):
    faces = posed if aus == "pain" else synthetic.generate(20, 15, "posed", seed=0, aus=aus)
    cheek = (faces.landmarks[:, 2] + faces.landmarks[:, 31]) / 2
    skin = sample(faces.image, cheek[:, None])
    for ids in ([18, 19, 20, 23, 24, 25], [37, 38, 43, 44], [61, 62, 63, 65, 66, 67]):  # brows, lashes, lips
        distance = np.linalg.norm(sample(faces.image, faces.landmarks[:, ids]) - skin, axis=-1)
        assert np.median(distance) > 40, f"landmarks {ids} do not sit on features that differ from the skin"


def test_pose_moves_image_and_landmarks_together():
    subjects = synthetic.select(synthetic.sample_subjects(4, 3), np.tile(np.arange(4), 2))
    rngs = [np.random.default_rng(i % 4) for i in range(8)]
    scene = synthetic.sample_scenes(rngs, "posed")
    scene.update(noise_sigma=np.zeros(8, np.float32), background_gradient=np.zeros(8, np.float32),
                 light_gradient=np.zeros((8, 2), np.float32))
    angle, scale, shift = 0.25, 1.05, np.array([3.0, -2.0], np.float32)
    pose = {"angle": np.repeat(np.float32([0.0, angle]), 4), "scale": np.repeat(np.float32([1.0, scale]), 4),
            "shift": np.repeat(np.stack([np.zeros(2, np.float32), shift]), 4, axis=0)}
    images, landmarks = synthetic.render(subjects, np.zeros((8, len(facs.PAIN_AUS)), np.float32), pose, scene)
    upright, turned = landmarks[:4], landmarks[4:]
    eye_line = lambda marks: marks[:, 45] - marks[:, 36]
    turn = np.arctan2(eye_line(turned)[:, 1], eye_line(turned)[:, 0]) - np.arctan2(eye_line(upright)[:, 1],
                                                                                    eye_line(upright)[:, 0])
    np.testing.assert_allclose(turn, angle, atol=1e-4)
    np.testing.assert_allclose(np.linalg.norm(eye_line(turned), axis=1) / np.linalg.norm(eye_line(upright), axis=1),
                               scale, rtol=1e-4)
    consistent = np.abs(sample(images[4:], turned) - sample(images[:4], upright)).mean()
    unmoved = np.abs(sample(images[4:], upright) - sample(images[:4], upright)).mean()
    assert consistent < 8 and unmoved > 3 * consistent


def test_wild_backgrounds_are_cluttered_and_posed_ones_plain(posed):
    wild = synthetic.generate(4, 5, "wild", seed=0)

    def background_spread(faces):
        """Median over images of the grey-level spread in the upper side strips, left and right of the head."""
        strips = np.concatenate([faces.image[:, :56, :6], faces.image[:, :56, -6:]], axis=2).astype(float)
        return np.median(strips.std(axis=(1, 2)).mean(axis=-1))

    assert background_spread(posed) < 8 and background_spread(wild) > 4 * background_spread(posed)


@pytest.mark.parametrize("domain", synthetic.DOMAINS)
def test_spurious_cue_marks_only_images_with_its_au(domain):
    plain = synthetic.generate(8, 8, domain, seed=3)
    cued = synthetic.generate(8, 8, domain, seed=3, spurious_cue_au=4, spurious_cue_probability=0.8)
    change = np.abs(cued.image.astype(int) - plain.image).max(axis=-1)
    marked = change.max(axis=(1, 2)) > 0
    shows_au = cued.labels[:, facs.au_column(4, cued.au_ids)] == 1
    np.testing.assert_array_equal(cued.labels, plain.labels)
    assert not np.any(marked & ~shows_au)
    assert 0.55 <= marked[shows_au].mean() < 1.0
    assert np.all(change[:, 32:, :] == 0) and np.all(change[:, :, 32:] == 0)  # JPEG blocks spread it a little
    assert np.all(change[marked].max(axis=(1, 2)) > 100)
