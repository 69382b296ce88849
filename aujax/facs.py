"""The FACS Action Units aujax knows: their names, the named AU sets, the sources of their regions.

A run works with one AU set (`config.aus`, resolved by `resolve_aus`): a tuple of AU ids whose order is the order of
the model's outputs, the label columns, the heatmaps, the region masks and every table's columns. Nothing in aujax
holds a global AU list; stages get the set passed (the records' `au_ids`, the config's `aus`).

  pain   4, 6, 7, 9, 10, 25, 26, 27                    the paper's 8 pain AUs (Rieger et al. 2020), the default
  bp4d   1, 2, 4, 6, 7, 10, 12, 14, 15, 17, 23, 24     the 12 AUs BP4D benchmarks on
  disfa  1, 2, 4, 5, 6, 9, 12, 15, 17, 20, 25, 26      the 12 AUs DISFA codes
  unbc   4, 6, 7, 9, 10, 12, 20, 25, 26, 27, 43        the 11 AUs UNBC-McMaster codes
"""

from collections.abc import Sequence

AU_NAMES = {
        1: "inner brow raiser",
        2: "outer brow raiser",
        4: "brow lowerer",
        5: "upper lid raiser",
        6: "cheek raiser",
        7: "lid tightener",
        9: "nose wrinkler",
        10: "upper lip raiser",
        12: "lip corner puller",
        14: "dimpler",
        15: "lip corner depressor",
        17: "chin raiser",
        20: "lip stretcher",
        23: "lip tightener",
        24: "lip pressor",
        25: "lips part",
        26: "jaw drop",
        27: "mouth stretch",
        43: "eyes closed",
}
KNOWN_AUS = tuple(AU_NAMES)  # the AUs with a region (aujax.regions) and synthetic faces (aujax.data.synthetic)
AU_SETS = {
        "pain": (4, 6, 7, 9, 10, 25, 26, 27),
        "bp4d": (1, 2, 4, 6, 7, 10, 12, 14, 15, 17, 23, 24),
        "disfa": (1, 2, 4, 5, 6, 9, 12, 15, 17, 20, 25, 26),
        "unbc": (4, 6, 7, 9, 10, 12, 20, 25, 26, 27, 43),
}
PAIN_AUS = AU_SETS["pain"]  # the default set; records written without au_ids hold these columns
# Where the AU regions' centres come from (`aujax.regions.AU_REGIONS` names one per AU).
REGION_SOURCES = {
        "EAC-Net": "Li, Abtahi, Zhu, Yin: EAC-Net: A Region-based Deep Enhancing and Cropping Approach for Facial "
                   "Action Unit Detection, FG 2017 (arXiv:1702.02925), AU centres from landmarks",
        "JAA-Net": "Shao, Liu, Cai, Ma: Deep Adaptive Attention for Joint Facial Action Unit Detection and Face "
                   "Alignment, ECCV 2018 (the AU centres of its AlignNet, github.com/ZhiwenShao/PyTorch-JAANet)",
        "ours": "aujax (Rieger et al. 2020 draw boxes without giving coordinates)",
}
IMAGE_SIZE = 112
NUM_LANDMARKS = 68


def resolve_aus(value) -> tuple[int, ...]:
    """An AU set as a tuple of AU ids: from a named set ("pain", "bp4d", "disfa", "unbc"), a comma-separated string
    ("1,2,12" or "AU1,AU2,AU12") or a sequence of ints; ValueError in one line for an unknown name or AU, a repeated
    AU or an empty set."""
    if isinstance(value, str) and value.strip().lower() in AU_SETS:
        return AU_SETS[value.strip().lower()]
    items = value.split(",") if isinstance(value, str) else list(value)
    aus = []
    for item in items:
        text = str(item).strip()
        digits = text[2:] if text.upper().startswith("AU") else text
        if not digits.isdigit() or int(digits) not in AU_NAMES:
            raise ValueError(f"AU set {value!r}: {text!r} is neither a named set ({', '.join(AU_SETS)}) nor a known AU "
                             f"({', '.join(map(str, KNOWN_AUS))})")
        aus.append(int(digits))
    if not aus or len(set(aus)) != len(aus):
        raise ValueError(f"AU set {value!r}: expected distinct AU ids, at least one (known: "
                         f"{', '.join(map(str, KNOWN_AUS))}; named sets: {', '.join(AU_SETS)})")
    return tuple(aus)


def au_column(au: int, aus: Sequence[int]) -> int:
    """Index of FACS action unit `au` (e.g. 25) in the AU set `aus`; ValueError if the set does not hold it."""
    try:
        return tuple(aus).index(au)
    except ValueError:
        raise ValueError(f"AU{au} is not in the AU set ({', '.join(map(str, aus))})") from None


def au_label(au: int) -> str:
    """'AU4 brow lowerer' ('AU11' for an AU without a name here)."""
    return f"AU{au} {AU_NAMES[au]}" if au in AU_NAMES else f"AU{au}"
