"""The Action Units aujax works with, in the one order used everywhere.

Labels, logits, heatmaps, region masks and table columns all follow `AU_IDS`.
"""

AU_IDS = (4, 6, 7, 9, 10, 25, 26, 27)
AU_NAMES = {
        4: "brow lowerer",
        6: "cheek raiser",
        7: "lid tightener",
        9: "nose wrinkler",
        10: "upper lip raiser",
        25: "lips part",
        26: "jaw drop",
        27: "mouth stretch",
}
NUM_AUS = len(AU_IDS)
IMAGE_SIZE = 112
NUM_LANDMARKS = 68


def au_column(au: int) -> int:
    """Index of FACS action unit `au` (e.g. 25) in `AU_IDS`; ValueError if it is not one of ours."""
    try:
        return AU_IDS.index(au)
    except ValueError:
        raise ValueError(f"AU{au} is not one of the pain AUs {AU_IDS}") from None
