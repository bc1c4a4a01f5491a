"""Tiny ``@iconify-json`` packages for the Emoji-Styles build, and an ``npm`` that serves them.

The packages are in the official format: an ``npm pack`` tarball with ``package/icons.json``
(SVG bodies, aliases, the set's view box) and ``package/chars.json`` (code points -> icon
names; empty for EmojiOne, which the build matches by name). Every trap of the build has a
case here, named in :data:`EXPECTED`. Tests put :func:`install_fake_npm`'s folder first on
``PATH``, so the build runs its real ``npm pack`` call and never reaches the network.
"""

from __future__ import annotations

import hashlib
import io
import json
import sys
import tarfile
from dataclasses import dataclass
from pathlib import Path

#: set -> side of its view box, as the real packages have them.
BOX = {"noto": 128, "twemoji": 36, "openmoji": 72, "fluent-emoji-flat": 32, "fluent-emoji": 32,
       "emojione": 64}
CODE_SETS = ("noto", "twemoji", "openmoji", "fluent-emoji-flat")
#: the sets of a fixture build, in order; any version: the stand-in npm serves every one.
SETS = {"noto": "1.0.0", "twemoji": "1.0.0", "openmoji": "1.0.0",
        "fluent-emoji-flat": "1.0.0", "emojione": "1.0.0"}

#: (code point sequence, name) of the emoji every set with code points draws.
COMMON = [
    ("1f600", "grinning-face"), ("1f415", "dog"), ("1f408", "cat"), ("2600", "sun"),
    ("1f680", "rocket"), ("1f34e", "red-apple"), ("1f332", "evergreen-tree"),
    ("1f697", "automobile"), ("1f3b8", "guitar"), ("1f4da", "books"), ("1f511", "key"),
    ("1f514", "bell"), ("1f499", "blue-heart"),
    ("1f448", "backhand-index-pointing-left"), ("1f449", "backhand-index-pointing-right"),
    ("1f3cf", "cricket-game"), ("1f997", "cricket"),
    ("1f3c3", "person-running"), ("1f9d1-200d-1f373", "cook"), ("1f44b", "waving-hand"),
    ("1f57a", "man-dancing"),  # gendered, but no neutral emoji exists: kept
    ("1f9bb-1f3fb", "ear-with-hearing-aid-light-skin-tone"),  # no neutral here either: kept
    ("1f319", "crescent-moon"), ("1f31b", "first-quarter-moon-face"),
    # dropped, whichever set draws them
    ("1f44b-1f3fd", "waving-hand-medium-skin-tone"),
    ("1f3c3-200d-2642-fe0f", "man-running"),
    ("1f468-200d-1f373", "man-cook"),
    ("1f468-200d-1f469-200d-1f467", "family-man-woman-girl"),
    ("1f491", "couple-with-heart"),
    ("1f1eb-1f1f7", "flag-france"),
    ("1f3f4-e0067-e0062-e0065-e006e-e0067-e007f", "flag-england"),
    ("1f3c1", "chequered-flag"),
    ("1f3fd", "medium-skin-tone"),
]
#: emoji that the sets write with or without variation selectors: name, code per set.
VARIANTS = {
    "red-heart": {"noto": "2764-fe0f", "default": "2764"},
    "smiling-face": {"noto": "263a-fe0f", "twemoji": "263a-fe0e", "default": "263a"},
    "keycap-hash": {"openmoji": "0023-fe0f-20e3", "default": "0023-20e3"},
}
#: drawn by some sets only.
EXTRA = {"noto": [("1f955", "carrot"), ("1f966", "broccoli")],
         "twemoji": [("1f955", "carrot")],
         "openmoji": [("e000", "openmoji-extra")]}  # private use: OpenMoji's own
#: two emoji a set draws with the very same SVG: that set's image goes from both.
IDENTICAL = {"twemoji": ("crescent-moon", "first-quarter-moon-face")}

#: what the build must make of it: class -> the sets whose image it has.
ALL = set(SETS)
EXPECTED = {
    "1f600": ALL,  # EmojiOne's icon 'grinning' found by its alias 'grinning-face'
    "1f415": ALL, "1f408": ALL, "2600": ALL, "1f680": ALL, "1f34e": ALL, "1f332": ALL,
    "1f697": ALL, "1f3b8": ALL, "1f4da": ALL, "1f511": ALL,
    "1f514": ALL - {"emojione"},  # two EmojiOne icons claim it by alias: neither is used
    "1f499": ALL,
    "1f448": ALL,
    "1f449": ALL,  # EmojiOne's is a flipped alias of the left hand
    "1f3cf": ALL,
    "1f997": ALL - {"emojione"},  # EmojiOne has no cricket; its 'cricket' alias is the bat
    "1f3c3": ALL, "1f9d1-200d-1f373": ALL, "1f44b": ALL, "1f57a": ALL, "1f9bb-1f3fb": ALL,
    "1f319": ALL - {"twemoji"}, "1f31b": ALL - {"twemoji"},
    "2764": ALL, "263a": ALL, "23-20e3": ALL,
    "1f955": {"noto", "twemoji"},  # two styles: a class, dropped by min_styles >= 3
}
#: dropped emoji, as the build's report counts them.
DROPPED = {"skin tone": 1, "gendered": 2, "family or couple": 2, "flag": 3, "component": 1,
           "private use": 1}


def _body(set_name: str, name: str) -> str:
    """A drawing unique to (set, name): a left-right asymmetric triangle and a dot."""
    h = hashlib.sha1(f"{set_name}/{name}".encode()).digest()
    s = BOX[set_name] / 16
    pts = [(1, 2 + h[3] % 3), (11 + h[4] % 4, 7 + h[5] % 3), (1, 14 - h[6] % 3)]
    path = "M" + "L".join(f"{x * s:g} {y * s:g}" for x, y in pts) + "Z"
    return (f'<path fill="#{h[:3].hex()}" d="{path}"/>'
            f'<circle cx="{12 * s:g}" cy="{3 * s:g}" r="{2 * s:g}" fill="#{h[7:10].hex()}"/>')


def set_contents(set_name: str) -> tuple[dict, dict]:
    """``(icons.json, chars.json)`` of one fixture set."""
    icons: dict[str, dict] = {}
    aliases: dict[str, dict] = {}
    chars: dict[str, str] = {}
    entries = [*COMMON, *EXTRA.get(set_name, [])]
    entries += [(codes.get(set_name, codes["default"]), name) for name, codes in VARIANTS.items()]
    for code, name in entries:
        icons[name] = {"body": _body(set_name, name)}
        chars[code] = name
    if set_name in IDENTICAL:
        first, second = IDENTICAL[set_name]
        icons[second] = dict(icons[first])
    if set_name == "noto":
        aliases["ringing-bell"] = {"parent": "bell"}  # a name EmojiOne uses below
    if set_name == "emojione":
        chars = {}  # EmojiOne lists no code points: matched by name
        del icons["cricket"]  # its 'cricket' is an alias of the cricket bat
        aliases["cricket"] = {"parent": "cricket-game"}
        icons["grinning"] = icons.pop("grinning-face")  # known by its alias only
        aliases["grinning-face"] = {"parent": "grinning"}
        del icons["backhand-index-pointing-right"]  # drawn as the left hand, flipped
        aliases["backhand-index-pointing-right"] = {"parent": "backhand-index-pointing-left",
                                                    "hFlip": True}
        del icons["bell"]  # two icons whose aliases both name the bell
        icons["bell-a"] = {"body": _body(set_name, "bell-a")}
        icons["bell-b"] = {"body": _body(set_name, "bell-b")}
        aliases["bell"] = {"parent": "bell-a"}
        aliases["ringing-bell"] = {"parent": "bell-b"}
        icons["emojione-logo"] = {"body": _body(set_name, "emojione-logo")}  # in no other set
    side = BOX[set_name]
    return ({"prefix": set_name, "icons": icons, "aliases": aliases, "width": side,
             "height": side}, chars)


def pack(set_name: str, dest: Path) -> Path:
    """Write ``dest``, the set's package as ``npm pack`` makes it (files under ``package/``)."""
    icons, chars = set_contents(set_name)
    files = {"package.json": {"name": f"@iconify-json/{set_name}", "version": "1.0.0"},
             "icons.json": icons, "chars.json": chars,
             "info.json": {"name": set_name, "license": {"spdx": "MIT"}}}
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(dest, "w:gz") as tar:
        for name, content in files.items():
            data = json.dumps(content).encode()
            info = tarfile.TarInfo(f"package/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return dest


_NPM = '''#!{python}
"""Stands in for npm: 'npm pack @iconify-json/<set>@<version>' copies the fixture package."""
import pathlib, shutil, sys
here = pathlib.Path(__file__).resolve().parent
with open(here / "calls.log", "a") as log:
    log.write(" ".join(sys.argv[1:]) + "\\n")
spec = sys.argv[2] if len(sys.argv) > 2 else ""
set_name, _, version = spec.partition("/")[2].rpartition("@")
source = here / "packages" / f"{{set_name}}.tgz"
if sys.argv[1:2] != ["pack"] or not source.exists():
    sys.exit(f"npm error 404 Not Found - GET {{spec}} - Not found")
shutil.copy(source, f"iconify-json-{{set_name}}-{{version}}.tgz")
'''


@dataclass
class FakeNpm:
    """A folder holding an executable ``npm`` and the packages it serves."""

    bin_dir: Path

    def calls(self) -> list[str]:
        log = self.bin_dir / "calls.log"
        return log.read_text().splitlines() if log.exists() else []


def install_fake_npm(folder: Path) -> FakeNpm:
    """Write the stand-in ``npm`` and every fixture set (``fluent-emoji`` too) under ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    for set_name in BOX:
        pack(set_name, folder / "packages" / f"{set_name}.tgz")
    npm = folder / "npm"
    npm.write_text(_NPM.format(python=sys.executable))
    npm.chmod(0o755)
    return FakeNpm(folder)
