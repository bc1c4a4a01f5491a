"""Building Emoji-Styles: fetch the designer sets, match their icons into classes, render them.

The dataset source that reads the build is :class:`see_dml.data.emoji_styles.EmojiStyles`.
Emoji-Styles: each class one emoji, each image that emoji as one designer set draws it.

Retrieval must find the same emoji across styles (glossy, flat, outline), as SOP must find
one product across sellers' photos: many classes, a handful of images each. The designer sets
are the Iconify JSON packages on the npm registry (``@iconify-json/<set>``, an ``icons.json``
of SVG bodies with aliases and a ``chars.json`` from code points to icon names). The build
fetches them with ``npm pack``, matches icons across sets, renders each to RGB on white with
``resvg-py`` and caches the arrays, keyed by the package versions and the image size.

Matching, and the traps it avoids:

- A class is a code point sequence with the variation selectors FE0F/FE0E removed (sets
  disagree on whether ``2764`` or ``2764-fe0f`` is the red heart).
- A set without code points (EmojiOne) is matched by name: an icon's own name, as the other
  sets name a code point, decides; its aliases are used only when its own name is unknown,
  and an alias that names another emoji is reported and ignored (EmojiOne's alias
  ``cricket`` of ``cricket-game`` would otherwise give the insect the cricket-bat image).
  An emoji that two icons of the set claim gets neither.
- Dropped: skin-tone and gendered variants whose neutral emoji exists, families and
  couples, flags (many are the same picture at this size), skin-tone and hair components,
  private-use code points (a set's own extras), and in each set the icons whose drawing is
  identical to another class's (the set cannot tell those emoji apart, so neither can we).
- Fluent's 3-D set (``fluent-emoji``) and its flat set are near-copies (cross-set R@1 0.95
  on raw pixels): only one of them may be used.

Classes with fewer than ``min_styles`` images are dropped; the rest are split in half by a
fixed seed, train and test, and the test half is searched all-vs-all.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import subprocess
import tarfile
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from PIL import Image

from see_dml.runtime.errors import DatasetNotFoundError
from see_dml.runtime.extras import require

log = logging.getLogger(__name__)

#: Bump when the matching or filtering rules change: it is part of the cache key.
BUILD_VERSION = 1
NPM_SCOPE = "@iconify-json"
#: The two Fluent sets are near-copies; a build takes one of them.
FLUENT_SETS = ("fluent-emoji", "fluent-emoji-flat")

Key = tuple[int, ...]

VARIATION_SELECTORS = {0xFE0E, 0xFE0F}
ZWJ = 0x200D
FEMALE, MALE = 0x2640, 0x2642
SKIN_TONES = frozenset(range(0x1F3FB, 0x1F400))
HAIR_COMPONENTS = frozenset(range(0x1F9B0, 0x1F9B4))
REGIONAL_INDICATORS = range(0x1F1E6, 0x1F200)
TAGS = range(0xE0020, 0xE0080)
#: chequered, triangular, crossed, white and black flag (the last two start the ZWJ flags).
FLAG_STARTS = frozenset({0x1F3C1, 0x1F6A9, 0x1F38C, 0x1F3F3, 0x1F3F4})
#: family, two holding hands (three), kiss, couple with heart.
FAMILY_AND_COUPLE = frozenset({0x1F46A, 0x1F46B, 0x1F46C, 0x1F46D, 0x1F48F, 0x1F491})
#: gendered emoji -> their neutral: man, woman -> person; boy, girl -> child; old man, old
#: woman -> older person; pregnant man, woman -> pregnant person; prince, princess -> person
#: with crown; Santa, Mrs Claus -> Mx Claus. Also the first person of a ZWJ sequence.
GENDER_NEUTRAL: dict[int, tuple[int, ...]] = {
    0x1F468: (0x1F9D1,), 0x1F469: (0x1F9D1,), 0x1F466: (0x1F9D2,), 0x1F467: (0x1F9D2,),
    0x1F474: (0x1F9D3,), 0x1F475: (0x1F9D3,), 0x1FAC3: (0x1FAC4,), 0x1F930: (0x1FAC4,),
    0x1F934: (0x1FAC5,), 0x1F478: (0x1FAC5,), 0x1F385: (0x1F9D1, 0x200D, 0x1F384),
    0x1F936: (0x1F9D1, 0x200D, 0x1F384),
}
#: the people a family or couple sequence is made of.
PEOPLE = frozenset({0x1F468, 0x1F469, 0x1F466, 0x1F467, 0x1F474, 0x1F475, 0x1F9D1, 0x1F9D2,
                    0x1F9D3, 0x1F476})

#: an exact package version (the versions key the cache)
VERSION_PATTERN = re.compile(r"^\d+\.\d+\.\d+$")
_SVG = ('<svg xmlns="http://www.w3.org/2000/svg" xmlns:xlink="http://www.w3.org/1999/xlink" '
        'width="{size}" height="{size}" viewBox="{box}">{body}</svg>')


def parse_key(code: str) -> Key:
    """``"2764-fe0f"`` -> ``(0x2764,)``: hex code points, variation selectors removed."""
    return tuple(cp for cp in (int(part, 16) for part in code.split("-"))
                 if cp not in VARIATION_SELECTORS)


def key_str(key: Key) -> str:
    """``(0x1F600,)`` -> ``"1f600"``, the way ``chars.json`` writes it."""
    return "-".join(f"{cp:x}" for cp in key)


class Drawing(NamedTuple):
    """One icon ready to render: SVG body (flips and rotations applied) and its view box."""

    body: str
    left: float
    top: float
    width: float
    height: float

    def svg(self, size: int) -> str:
        box = " ".join(f"{v:g}" for v in (self.left, self.top, self.width, self.height))
        return _SVG.format(size=size, box=box, body=self.body)


@dataclass(frozen=True)
class IconSet:
    """One ``@iconify-json/<prefix>`` package: ``icons.json`` and ``chars.json``.

    Attributes:
        chars: code point sequence (``"1f600"``) -> icon name; empty for sets without.
    """

    prefix: str
    icons: dict[str, dict[str, Any]]
    aliases: dict[str, dict[str, Any]]
    chars: dict[str, str]
    width: float = 16.0
    height: float = 16.0

    @classmethod
    def from_json(cls, icons_json: Mapping[str, Any],
                  chars_json: Mapping[str, str] | None = None) -> IconSet:
        return cls(prefix=icons_json["prefix"], icons=dict(icons_json["icons"]),
                   aliases=dict(icons_json.get("aliases", {})), chars=dict(chars_json or {}),
                   width=float(icons_json.get("width", 16)),
                   height=float(icons_json.get("height", 16)))

    @classmethod
    def from_tgz(cls, path: Path) -> IconSet:
        """Read an ``npm pack`` tarball (files under ``package/``) without unpacking it."""
        with tarfile.open(path, "r:gz") as tar:
            names = set(tar.getnames())

            def read(name: str) -> Any:
                member = tar.extractfile(f"package/{name}")
                assert member is not None
                return json.load(member)

            if "package/icons.json" not in names:
                raise ValueError(f"{path}: no package/icons.json (not an @iconify-json package)")
            chars = read("chars.json") if "package/chars.json" in names else {}
            return cls.from_json(read("icons.json"), chars)

    def visible(self, name: str) -> bool:
        entry = self.icons.get(name) or self.aliases.get(name)
        return entry is not None and not entry.get("hidden", False)

    def resolve(self, name: str) -> dict[str, Any] | None:
        """The icon's data with its aliases' transformations merged, as Iconify merges them.

        Rotations (quarter turns) add up, flips toggle, other fields of the alias override.
        """
        chain: list[dict[str, Any]] = []
        while name not in self.icons:
            alias = self.aliases.get(name)
            if alias is None or len(chain) > 16:
                return None
            chain.append(alias)
            name = alias["parent"]
        data: dict[str, Any] = {"left": 0.0, "top": 0.0, "width": self.width,
                                "height": self.height, "rotate": 0, "hFlip": False,
                                "vFlip": False, **self.icons[name]}
        for alias in reversed(chain):  # from the icon outwards
            for field, value in alias.items():
                if field == "rotate":
                    data["rotate"] = (data["rotate"] + value) % 4
                elif field in ("hFlip", "vFlip"):
                    data[field] = data[field] != value
                elif field not in ("parent", "hidden"):
                    data[field] = value
        return data

    def drawing(self, name: str) -> Drawing | None:
        data = self.resolve(name)
        return None if data is None else to_drawing(data)


def to_drawing(data: Mapping[str, Any]) -> Drawing:
    """Apply an icon's flips and rotation to its body (Iconify's ``iconToSVG``)."""
    left, top = float(data.get("left", 0)), float(data.get("top", 0))
    width, height = float(data["width"]), float(data["height"])
    rotate = int(data.get("rotate", 0))
    transforms: list[str] = []
    if data.get("hFlip"):
        if data.get("vFlip"):
            rotate += 2
        else:
            transforms += [f"translate({width + left:g} {-top:g})", "scale(-1 1)"]
            left = top = 0.0
    elif data.get("vFlip"):
        transforms += [f"translate({-left:g} {height + top:g})", "scale(1 -1)"]
        left = top = 0.0
    rotate %= 4
    if rotate == 1:
        c = height / 2 + top
        transforms.insert(0, f"rotate(90 {c:g} {c:g})")
    elif rotate == 2:
        transforms.insert(0, f"rotate(180 {width / 2 + left:g} {height / 2 + top:g})")
    elif rotate == 3:
        c = width / 2 + left
        transforms.insert(0, f"rotate(-90 {c:g} {c:g})")
    if rotate % 2:
        left, top, width, height = top, left, height, width
    body = data["body"]
    if transforms:
        body = f'<g transform="{" ".join(transforms)}">{body}</g>'
    return Drawing(body, left, top, width, height)


# -- which emoji is a class ------------------------------------------------------------------

def gender_neutral(key: Key) -> Key:
    """The sequence without its gender: ``ZWJ ♀/♂`` removed, a gendered first emoji replaced
    by its neutral one (:data:`GENDER_NEUTRAL`)."""
    segments: list[list[int]] = [[]]
    for cp in key:
        if cp == ZWJ:
            segments.append([])
        else:
            segments[-1].append(cp)
    segments = [s for s in segments if s not in ([FEMALE], [MALE])]
    if segments and segments[0] and segments[0][0] in GENDER_NEUTRAL:
        segments[0] = [*GENDER_NEUTRAL[segments[0][0]], *segments[0][1:]]
    out: list[int] = []
    for i, segment in enumerate(segments):
        out += ([ZWJ] if i else []) + segment
    return tuple(out)


def is_private_use(key: Key) -> bool:
    """A set's own extra (OpenMoji's), not a Unicode emoji."""
    return any(0xE000 <= cp <= 0xF8FF or cp >= 0xF0000 for cp in key)


def drop_reason(key: Key, candidates: set[Key] | frozenset[Key]) -> str | None:
    """Why ``key`` is not a class (``None``: it is one); ``candidates``: every key of any set."""
    if is_private_use(key):
        return "private use"
    if key[0] in FLAG_STARTS or any(cp in REGIONAL_INDICATORS or cp in TAGS for cp in key):
        return "flag"
    if len(key) == 1 and (key[0] in SKIN_TONES or key[0] in HAIR_COMPONENTS):
        return "component"
    if key[0] in FAMILY_AND_COUPLE or sum(cp in PEOPLE for cp in key) >= 2:
        return "family or couple"
    if SKIN_TONES.intersection(key) and tuple(cp for cp in key
                                              if cp not in SKIN_TONES) in candidates:
        return "skin tone"
    neutral = gender_neutral(key)
    if neutral != key and neutral in candidates:
        return "gendered"
    return None


def drawings_by_code(icon_set: IconSet, report: Counter) -> dict[Key, Drawing]:
    """A set with ``chars.json``: its drawing of each code point sequence."""
    found: dict[Key, set[Drawing]] = defaultdict(set)
    for code, name in icon_set.chars.items():
        drawing = icon_set.drawing(name)
        if drawing is not None:
            found[parse_key(code)].add(drawing)
    ambiguous = [k for k, d in found.items() if len(d) > 1]
    if ambiguous:  # "2764" and "2764-fe0f" drawn differently: the set cannot tell us which
        log.info("%s: %d code points with two drawings once FE0F/FE0E are removed, skipped "
                 "(e.g. %s)", icon_set.prefix, len(ambiguous), key_str(ambiguous[0]))
        report[f"{icon_set.prefix}: two drawings of one code point"] += len(ambiguous)
    return {k: next(iter(d)) for k, d in found.items() if len(d) == 1}


def reference_names(code_sets: Iterable[IconSet]) -> dict[str, Key]:
    """Icon names (and their aliases' names) -> code point sequence, over the sets with
    ``chars.json``; a name that two sets give different code points is left out. Private-use
    code points do not count (OpenMoji names its extra ``keyboard`` as it names U+2328)."""
    seen: dict[str, set[Key]] = defaultdict(set)
    for icon_set in code_sets:
        by_name = {name: parse_key(code) for code, name in icon_set.chars.items()
                   if not is_private_use(parse_key(code))}
        for name, key in by_name.items():
            seen[name].add(key)
        for alias, entry in icon_set.aliases.items():
            if entry["parent"] in by_name and set(entry) <= {"parent", "hidden"}:
                seen[alias].add(by_name[entry["parent"]])
    return {name: next(iter(keys)) for name, keys in seen.items() if len(keys) == 1}


def drawings_by_name(icon_set: IconSet, names: Mapping[str, Key],
                     report: Counter) -> dict[Key, Drawing]:
    """A set without code points, matched through ``names`` (see :func:`reference_names`).

    Each icon (an alias that flips or rotates its parent counts as an icon of its own) is
    matched by its own name; by its plain aliases only when its own name is unknown, and then
    only when they agree. A plain alias that names another emoji than the icon's own name
    does is the mismatch to avoid: it is logged and ignored.
    """
    def is_plain(alias: str) -> bool:  # another name, no flip or rotation
        return alias in icon_set.aliases and not set(icon_set.aliases[alias]) - {"parent",
                                                                                 "hidden"}

    primaries = [n for n in icon_set.icons if icon_set.visible(n)]
    primaries += [a for a in icon_set.aliases if icon_set.visible(a) and not is_plain(a)]
    plain_aliases: dict[str, list[str]] = defaultdict(list)  # icon -> its plain aliases
    for alias in filter(is_plain, icon_set.aliases):
        target = alias
        for _ in range(16):  # a chain of aliases; bounded against cycles
            if not is_plain(target):
                break
            target = icon_set.aliases[target]["parent"]
        plain_aliases[target].append(alias)
    claims: dict[Key, list[tuple[str, bool]]] = defaultdict(list)  # key -> (icon, by own name)
    for name in primaries:
        by_alias = {names[a] for a in plain_aliases.get(name, ()) if a in names}
        if name in names:
            own = names[name]
            for other in sorted(by_alias - {own}):
                log.info("%s: '%s' is %s by its name; an alias of it names %s in the other "
                         "sets, ignored", icon_set.prefix, name, key_str(own), key_str(other))
                report[f"{icon_set.prefix}: alias naming another emoji, ignored"] += 1
            claims[own].append((name, True))
        elif len(by_alias) == 1:
            claims[next(iter(by_alias))].append((name, False))
        elif by_alias:
            report[f"{icon_set.prefix}: aliases naming different emoji"] += 1
        else:
            report[f"{icon_set.prefix}: name not in the other sets"] += 1
    out: dict[Key, Drawing] = {}
    for key, icons in claims.items():
        by_own = [name for name, by_own_name in icons if by_own_name]
        chosen = by_own if by_own else [name for name, _ in icons]
        if len(chosen) > 1:
            report[f"{icon_set.prefix}: emoji claimed by two icons"] += 1
            continue
        drawing = icon_set.drawing(chosen[0])
        if drawing is not None:
            out[key] = drawing
    return out


def match_classes(icon_sets: Mapping[str, IconSet]
                  ) -> tuple[dict[Key, dict[str, Drawing]], Counter]:
    """Every class with its drawing in each set that has one, and what was dropped and why.

    Returns ``({key: {set: drawing}}, report)``: classes drawn by at least two sets; ``report``
    counts dropped emoji by reason and per-set matching events.
    """
    report: Counter = Counter()
    code_sets = {n: s for n, s in icon_sets.items() if s.chars}
    if not code_sets:
        raise ValueError("dataset.sets: no set lists code points (chars.json); the sets "
                         "without are matched by the names those sets give")
    per_set = {n: drawings_by_code(s, report) for n, s in code_sets.items()}
    names = reference_names(code_sets.values())
    for n, s in icon_sets.items():
        if n not in code_sets:
            per_set[n] = drawings_by_name(s, names, report)
    candidates = frozenset(k for drawings in per_set.values() for k in drawings)
    reasons = {k: drop_reason(k, candidates) for k in candidates}
    for reason in reasons.values():
        if reason is not None:
            report[reason] += 1
    for n, drawings in per_set.items():
        kept = {k: d for k, d in drawings.items() if reasons[k] is None}
        by_drawing: dict[Drawing, list[Key]] = defaultdict(list)
        for k, d in kept.items():
            by_drawing[d].append(k)
        for keys in by_drawing.values():
            if len(keys) > 1:
                report[f"{n}: drawing identical to another class's"] += len(keys)
                for k in keys:
                    del kept[k]
        per_set[n] = kept
    classes: dict[Key, dict[str, Drawing]] = defaultdict(dict)
    for n, drawings in per_set.items():
        for k, d in drawings.items():
            classes[k][n] = d
    singles = [k for k, styles in classes.items() if len(styles) < 2]
    report["drawn by one set only"] += len(singles)
    return {k: classes[k] for k in sorted(classes) if len(classes[k]) >= 2}, report


# -- rendering and the build -----------------------------------------------------------------

def render(drawing: Drawing, size: int) -> np.ndarray:
    """``(size, size, 3)`` uint8 RGB on white; the view box fitted and centred.

    System fonts are not loaded: no set draws text, and renders must not depend on the machine.
    """
    resvg_py = require("resvg_py", "emoji", asked_by="building Emoji-Styles")
    png = resvg_py.svg_to_bytes(svg_string=drawing.svg(size), background="#ffffff",
                                skip_system_fonts=True, width=size, height=size)
    with Image.open(BytesIO(bytes(png))) as img:
        return np.asarray(img.convert("RGB"), dtype=np.uint8)


def build_arrays(icon_sets: Mapping[str, IconSet], image_size: int,
                 set_labels: Mapping[str, str]) -> dict[str, np.ndarray]:
    """Match and render: the arrays the cache holds.

    Returns ``images`` ``(N, S, S, 3)`` uint8, ``labels`` ``(N,)`` class index, ``styles``
    ``(N,)`` index into ``set_names``, ``class_keys`` / ``class_names`` ``(C,)`` and
    ``report`` (JSON of what was dropped and why).
    """
    start = time.perf_counter()
    classes, report = match_classes(icon_sets)
    order = list(icon_sets)
    # A class's name: what the first set with code points calls it.
    named: dict[Key, str] = {}
    for icon_set in reversed([s for s in icon_sets.values() if s.chars]):
        named.update({parse_key(code): name for code, name in icon_set.chars.items()})
    images, labels, styles = [], [], []
    for label, drawings in enumerate(classes.values()):
        for set_name in order:
            if set_name in drawings:
                images.append(render(drawings[set_name], image_size))
                labels.append(label)
                styles.append(order.index(set_name))
    log.info("Emoji-Styles: rendered %d images of %d classes at %d px in %.0f s; dropped: %s",
             len(images), len(classes), image_size, time.perf_counter() - start,
             ", ".join(f"{k} {v}" for k, v in sorted(report.items())))
    return {
        "images": np.stack(images) if images else np.zeros((0, image_size, image_size, 3),
                                                            np.uint8),
        "labels": np.asarray(labels, dtype=np.int64),
        "styles": np.asarray(styles, dtype=np.int64),
        "class_keys": np.asarray([key_str(k) for k in classes]),
        "class_names": np.asarray([named.get(k, key_str(k)) for k in classes]),
        "set_names": np.asarray([set_labels[n] for n in order]),
        "report": np.asarray(json.dumps(dict(sorted(report.items())))),
    }


# -- fetching --------------------------------------------------------------------------------

def fetch_package(set_name: str, version: str, packages_dir: Path, missing_hint: str) -> Path:
    """``packages_dir/<set>-<version>.tgz``, fetched with ``npm pack`` when not there yet.

    ``npm pack`` runs in a temporary folder of its own and the tarball is moved into place
    with ``os.replace``, so concurrent first runs never see each other's partial download.

    Raises:
        DatasetNotFoundError: npm is not installed (``missing_hint`` says what to do) or
            ``npm pack`` failed (its error is quoted).
    """
    dest = packages_dir / f"{set_name}-{version}.tgz"
    if dest.exists():
        return dest
    spec = f"{NPM_SCOPE}/{set_name}@{version}"
    npm = shutil.which("npm")
    if npm is None:
        raise DatasetNotFoundError(f"emoji_styles: cannot fetch {spec}: npm is not on PATH.\n"
                                   + missing_hint)
    packages_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=packages_dir, prefix=".npm-pack-") as tmp:
        try:
            subprocess.run([npm, "pack", spec], cwd=tmp, check=True, capture_output=True,
                           text=True, timeout=600)
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError) as err:
            said = (getattr(err, "stderr", None) or str(err)).strip()[-800:]
            raise DatasetNotFoundError(
                f"emoji_styles: 'npm pack {spec}' failed:\n{said}\n"
                "Is the npm registry reachable, and is dataset.sets."
                f"{set_name}={version} a published version (npm view {spec} version)?\n"
                + missing_hint) from err
        packed = sorted(Path(tmp).glob("*.tgz"))
        if len(packed) != 1:
            raise DatasetNotFoundError(f"emoji_styles: 'npm pack {spec}' left "
                                       f"{[p.name for p in packed]} instead of one .tgz")
        os.replace(packed[0], dest)
    return dest
