"""NewBie-mini's synthetic world: scenes of 1 to 3 simple anime-like figures, their pictures and
their captions (NewBie XML and flat tags). Pure numpy; deterministic for a seed.

The geometry here is a contract: the Swift semantic test (Tests/NewBiePipelineTests/
MiniModelTests.swift) and the accuracy tool read hair and clothing colours at these places.
  image 128 x 128; slot centres x = 24 (left), 64 (center), 104 (right)
  hair: a disc of radius 15 centred (x, 38), the head (radius 11) drawn over it at (x, 46), so
        hair shows above the head (rows 24-34); girls also have long hair down to row 66
  eyes: 3x3 squares at (x - 4, 46) and (x + 4, 46)
  girl: dress, a trapezoid from row 58 (half width 9) to row 100 (half width 18), legs below
  boy:  shirt rows 58-84 (half width 11), dark trousers rows 84-104 (half width 9)
  every position jitters by up to 2 px, every colour by up to 12 levels per channel
"""
import numpy as np

SIZE = 128
SLOTS = {"left": 24, "center": 64, "right": 104}
PALETTE = {  # hair and clothing colours (tag word: RGB)
    "red": (220, 40, 40), "orange": (240, 140, 30), "yellow": (235, 215, 40), "green": (40, 165, 60),
    "blue": (40, 80, 220), "purple": (140, 60, 190), "pink": (250, 140, 195), "black": (35, 35, 35),
}
EYES = {"red": (200, 30, 30), "blue": (30, 70, 210), "green": (30, 150, 50), "yellow": (230, 200, 30),
        "purple": (130, 50, 180)}
BACKGROUNDS = {"white": (245, 245, 245), "grey": (185, 185, 185), "beige": (238, 222, 190)}
SKIN = (252, 220, 190)
TROUSERS = (60, 60, 85)
COUNT_WORDS = {1: "1{g}", 2: "2{g}s", 3: "3{g}s"}


def count_tag(genders):
    girls, boys = genders.count("girl"), genders.count("boy")
    tags = []
    if girls: tags.append("1girl" if girls == 1 else f"{girls}girls")
    if boys: tags.append("1boy" if boys == 1 else f"{boys}boys")
    return ", ".join(tags)


def random_scene(rng, n=None):
    """A scene: background and 1-3 characters, each with gender, hair, eyes, clothing, position."""
    if n is None:
        n = int(rng.choice([1, 2, 3], p=[0.3, 0.4, 0.3]))
    positions = list(rng.choice(list(SLOTS), size=n, replace=False))
    hairs = list(rng.choice(list(PALETTE), size=n, replace=False))   # distinct, so binding is visible
    chars = []
    for i in range(n):
        clothing = str(rng.choice([c for c in PALETTE if c != hairs[i]]))
        chars.append({"gender": str(rng.choice(["girl", "boy"])), "hair": str(hairs[i]), "eyes": str(rng.choice(list(EYES))),
                      "clothing": clothing, "position": str(positions[i])})
    order = list(rng.permutation(n))   # the order characters are written in (not left to right)
    return {"background": str(rng.choice(list(BACKGROUNDS))), "characters": [chars[i] for i in order]}


def garment(c):
    return f"{c['clothing']}_{'dress' if c['gender'] == 'girl' else 'shirt'}"


def xml_caption(scene):
    parts = []
    for i, c in enumerate(scene["characters"], 1):
        hair = f"{c['hair']}_hair" + (", long_hair" if c["gender"] == "girl" else ", short_hair")
        parts.append(f"<character_{i}><n>$character_{i}$</n><gender>1{c['gender']}</gender>"
                     f"<appearance>{hair}, {c['eyes']}_eyes</appearance><clothing>{garment(c)}</clothing>"
                     f"<position>{c['position']}</position></character_{i}>")
    genders = [c["gender"] for c in scene["characters"]]
    parts.append(f"<general_tags><count>{count_tag(genders)}</count>"
                 f"<background>{scene['background']}_background</background></general_tags>")
    return "".join(parts)


def tag_caption(scene, rng):
    """The same content as flat tags, in a shuffled order: nothing says which tag is whose."""
    tags = []
    for c in scene["characters"]:
        tags += [f"{c['hair']}_hair", "long_hair" if c["gender"] == "girl" else "short_hair", f"{c['eyes']}_eyes",
                 garment(c), c["position"]]
    tags = sorted(set(tags))
    rng.shuffle(tags)
    genders = [c["gender"] for c in scene["characters"]]
    return ", ".join([count_tag(genders)] + tags + [f"{scene['background']}_background"])


def _jit(rng, rgb, amount=12):
    return np.clip(np.array(rgb, dtype=np.int32) + rng.integers(-amount, amount + 1, 3), 0, 255).astype(np.uint8)


def render(scene, rng):
    """The scene as an RGB uint8 array [128, 128, 3]."""
    img = np.empty((SIZE, SIZE, 3), np.uint8)
    img[:] = _jit(rng, BACKGROUNDS[scene["background"]], 6)
    yy, xx = np.mgrid[0:SIZE, 0:SIZE]
    for c in sorted(scene["characters"], key=lambda c: SLOTS[c["position"]]):
        x = SLOTS[c["position"]] + int(rng.integers(-2, 3))
        dy = int(rng.integers(-2, 3))
        hair, cloth, skin = _jit(rng, PALETTE[c["hair"]]), _jit(rng, PALETTE[c["clothing"]]), _jit(rng, SKIN, 6)
        girl = c["gender"] == "girl"
        if girl:   # long hair behind the body
            img[(yy >= 38 + dy) & (yy < 66 + dy) & (abs(xx - x) <= 14)] = hair
        img[(xx - x) ** 2 + (yy - 38 - dy) ** 2 <= 15 ** 2] = hair
        if girl:
            top, bottom = 58 + dy, 100 + dy
            half = 9 + (yy - top) * 9 / (bottom - top)
            img[(yy >= top) & (yy < bottom) & (abs(xx - x) <= half)] = cloth
            img[(yy >= bottom) & (yy < bottom + 12) & (abs(abs(xx - x) - 5) <= 2)] = skin
        else:
            img[(yy >= 58 + dy) & (yy < 84 + dy) & (abs(xx - x) <= 11)] = cloth
            img[(yy >= 84 + dy) & (yy < 104 + dy) & (abs(xx - x) <= 9)] = _jit(rng, TROUSERS, 6)
        img[(xx - x) ** 2 + (yy - 46 - dy) ** 2 <= 11 ** 2] = skin
        eye = _jit(rng, EYES[c["eyes"]], 6)
        for ex in (x - 4, x + 4):
            img[45 + dy:48 + dy, ex - 1:ex + 2] = eye
    return img


def nearest(rgb, table):
    rgb = np.asarray(rgb, dtype=np.float64)
    return min(table, key=lambda k: float(((np.asarray(table[k]) - rgb) ** 2).sum()))


def read_scene_colours(img, position):
    """(hair, clothing) colour words read back at a slot: median colour of the hair crown
    (rows 26-31) and of the clothes (rows 66-78), the nearest palette entry each."""
    x = SLOTS[position]
    hair = np.median(img[26:32, x - 5:x + 6].reshape(-1, 3), axis=0)
    cloth = np.median(img[66:79, x - 4:x + 5].reshape(-1, 3), axis=0)
    return nearest(hair, PALETTE), nearest(cloth, PALETTE)
