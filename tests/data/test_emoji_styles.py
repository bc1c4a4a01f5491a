"""Emoji-Styles on tiny generated @iconify-json packages: matching traps, split, cache, npm.

The packages and the stand-in ``npm`` are in ``tests/helpers/emoji_fixtures.py``; every test that
builds puts that ``npm`` first on ``PATH``, so the build's own ``npm pack`` call runs and the
network is never used.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from PIL import Image

from helpers import emoji_fixtures as fx
from see_dml.data import emoji_build as es
from see_dml.data.emoji_build import IconSet, build_arrays, match_classes
from see_dml.data.emoji_styles import EmojiStyles
from see_dml.data.transforms import TransformConfig, build_transforms
from see_dml.runtime.errors import DatasetNotFoundError

SIZE = 24  # rendered side of the fixture builds


@pytest.fixture(scope="module")
def npm_dir(tmp_path_factory: pytest.TempPathFactory) -> fx.FakeNpm:
    return fx.install_fake_npm(tmp_path_factory.mktemp("npm"))


@pytest.fixture
def npm(npm_dir: fx.FakeNpm, monkeypatch: pytest.MonkeyPatch) -> fx.FakeNpm:
    """The stand-in npm first on PATH, its call log cleared."""
    (npm_dir.bin_dir / "calls.log").unlink(missing_ok=True)
    monkeypatch.setenv("PATH", f"{npm_dir.bin_dir}:{Path(sys.executable).parent}:/usr/bin:/bin")
    return npm_dir


@pytest.fixture(scope="module")
def icon_sets(npm_dir: fx.FakeNpm) -> dict[str, IconSet]:
    return {name: IconSet.from_tgz(npm_dir.bin_dir / "packages" / f"{name}.tgz")
            for name in fx.SETS}


@pytest.fixture(scope="module")
def matched(icon_sets) -> tuple[dict, dict]:
    return match_classes(icon_sets)


@pytest.fixture(scope="module")
def arrays(icon_sets) -> dict[str, np.ndarray]:
    return build_arrays(icon_sets, SIZE, {n: f"{n}@{v}" for n, v in fx.SETS.items()})


def styles_of(arrays: dict[str, np.ndarray], code: str) -> dict[str, np.ndarray]:
    """Set name -> image of the class ``code`` in a build."""
    label = list(arrays["class_keys"]).index(code)
    sets = [s.split("@")[0] for s in arrays["set_names"]]
    return {sets[s]: img for s, img, lab in zip(arrays["styles"], arrays["images"],
                                                arrays["labels"]) if lab == label}


def source(root: Path, **kwargs) -> EmojiStyles:
    return EmojiStyles(root=root, sets=fx.SETS, image_size=SIZE, **kwargs)


# -- matching -------------------------------------------------------------------------------

def test_classes_and_their_styles_are_exactly_the_expected_ones(matched):
    classes, _ = matched
    got = {es.key_str(k): set(drawings) for k, drawings in classes.items()}
    assert got == fx.EXPECTED


def test_variation_selectors_are_stripped_before_matching(matched):
    assert es.parse_key("2764-fe0f") == es.parse_key("2764") == (0x2764,)
    assert es.parse_key("263a-fe0e") == (0x263A,)
    assert es.parse_key("0023-fe0f-20e3") == (0x23, 0x20E3)
    classes, _ = matched
    # noto writes 2764-fe0f, twemoji 263a-fe0e, openmoji 0023-fe0f-20e3: one class each
    for key in [(0x2764,), (0x263A,), (0x23, 0x20E3)]:
        assert set(classes[key]) == set(fx.SETS)
    assert not [k for k in classes if set(k) & es.VARIATION_SELECTORS]


def test_an_alias_naming_another_emoji_is_not_matched(matched, icon_sets, caplog):
    # EmojiOne has no cricket (insect); its alias 'cricket' points at the cricket bat. A
    # match by alias would give the insect the bat image.
    classes, report = matched
    cricket, bat = es.parse_key("1f997"), es.parse_key("1f3cf")
    emojione = icon_sets["emojione"]
    assert "emojione" not in classes[cricket]
    assert classes[bat]["emojione"] == emojione.drawing("cricket-game")
    assert report["emojione: alias naming another emoji, ignored"] == 1
    with caplog.at_level("INFO", logger="see_dml.data.emoji_build"):
        match_classes(icon_sets)
    assert "'cricket-game' is 1f3cf by its name; an alias of it names 1f997" in caplog.text


def test_name_matching_uses_aliases_when_the_own_name_is_unknown(matched, icon_sets):
    classes, report = matched
    emojione = icon_sets["emojione"]
    assert classes[es.parse_key("1f600")]["emojione"] == emojione.drawing("grinning")
    # two icons whose aliases both name the bell: which one is it? Neither is used.
    assert "emojione" not in classes[es.parse_key("1f514")]
    assert report["emojione: emoji claimed by two icons"] == 1
    assert report["emojione: name not in the other sets"] == 1  # emojione-logo


@pytest.mark.parametrize("code, reason", [
    ("1f44b-1f3fd", "skin tone"), ("1f3c3-200d-2642", "gendered"),
    ("1f468-200d-1f373", "gendered"), ("1f468-200d-1f469-200d-1f467", "family or couple"),
    ("1f491", "family or couple"), ("1f1eb-1f1f7", "flag"),
    ("1f3f4-e0067-e0062-e0065-e006e-e0067-e007f", "flag"), ("1f3c1", "flag"),
    ("1f3fd", "component"), ("e000", "private use"),
])
def test_variants_combinations_flags_extras_are_dropped(matched, code, reason):
    classes, report = matched
    key = es.parse_key(code)
    assert key not in classes
    assert es.drop_reason(key, frozenset(classes) | {key}) == reason
    assert {k: report[k] for k in fx.DROPPED} == fx.DROPPED


def test_variants_are_kept_where_no_neutral_emoji_exists(matched):
    classes, _ = matched
    # man dancing has no person-dancing; the hearing-aid ear exists only with a skin tone here
    assert es.parse_key("1f57a") in classes
    assert es.parse_key("1f9bb-1f3fb") in classes
    assert es.drop_reason(es.parse_key("1f3c3-200d-2642"), frozenset()) is None
    assert es.gender_neutral(es.parse_key("1f468-200d-1f373")) == es.parse_key(
        "1f9d1-200d-1f373")
    assert es.gender_neutral(es.parse_key("1f3c3-200d-2640")) == (0x1F3C3,)


def test_a_drawing_shared_by_two_classes_of_a_set_is_dropped_from_both(matched, icon_sets):
    classes, report = matched
    first, second = (es.parse_key(c) for c in ("1f319", "1f31b"))
    assert icon_sets["twemoji"].drawing("crescent-moon") == icon_sets["twemoji"].drawing(
        "first-quarter-moon-face")
    for key in (first, second):
        assert "twemoji" not in classes[key]
        assert set(classes[key]) == set(fx.SETS) - {"twemoji"}  # the other sets stay
    assert report["twemoji: drawing identical to another class's"] == 2


def test_both_fluent_sets_are_refused(tmp_path):
    with pytest.raises(ValueError, match="fluent-emoji and fluent-emoji-flat"):
        EmojiStyles(root=tmp_path, sets={**fx.SETS, "fluent-emoji": "1.0.0"})
    EmojiStyles(root=tmp_path, sets={"fluent-emoji": "1.0.0", "noto": "1.0.0"}, min_styles=2)


def test_versions_must_be_exact(tmp_path):
    with pytest.raises(ValueError, match=r"dataset\.sets\.noto='latest'"):
        EmojiStyles(root=tmp_path, sets={**fx.SETS, "noto": "latest"})


# -- rendering ------------------------------------------------------------------------------

def test_images_are_rgb_on_white_one_per_style(arrays):
    images = arrays["images"]
    assert images.dtype == np.uint8 and images.shape[1:] == (SIZE, SIZE, 3)
    assert (images[:, 0, 0] == 255).all()  # the corners are background: white
    assert (images.reshape(len(images), -1).min(1) < 200).all()  # and something is drawn
    assert len(images) == sum(len(s) for s in fx.EXPECTED.values())
    # the same class in two sets: two different pictures
    hands = styles_of(arrays, "1f448")
    assert not np.array_equal(hands["noto"], hands["twemoji"])


def test_a_flipped_alias_renders_as_the_mirror_image(arrays):
    left, right = styles_of(arrays, "1f448")["emojione"], styles_of(arrays, "1f449")["emojione"]
    left, right = left.astype(float), right.astype(float)
    # antialiased edges differ by a few levels; the pictures are mirror images
    assert np.abs(right - left[:, ::-1]).mean() < 1.0 < np.abs(right - left).mean() / 10


def test_rotations_and_flips_follow_iconify():
    # a 2x1 red block in the top-left corner of a 4x4 box, and its transformed copies
    base = {"body": '<path fill="#f00" d="M0 0h2v1H0z"/>', "width": 4, "height": 4}
    where = {}
    for name, extra in {"plain": {}, "h": {"hFlip": True}, "v": {"vFlip": True},
                        "r1": {"rotate": 1}, "hv": {"hFlip": True, "vFlip": True}}.items():
        img = es.render(es.to_drawing({**base, **extra}), 4)
        where[name] = sorted(zip(*np.nonzero(img[..., 1] < 128)))  # (row, col) of red
    assert where["plain"] == [(0, 0), (0, 1)]
    assert where["h"] == [(0, 2), (0, 3)]
    assert where["v"] == [(3, 0), (3, 1)]
    assert where["r1"] == [(0, 3), (1, 3)]  # a quarter turn clockwise
    assert where["hv"] == [(3, 2), (3, 3)]


# -- the dataset: split, cache, npm ------------------------------------------------------------

def test_classes_split_in_half_by_a_fixed_seed(npm, tmp_path):
    src = source(tmp_path, val_fraction=0.2, seed=0)
    splits = src.splits()
    kept = {c for c, sets in fx.EXPECTED.items() if len(sets) >= 4}
    named = {name: set(_keys(src, s)) for name, s in splits.items()}
    assert named["train"].isdisjoint(named["test"]) and named["val"].isdisjoint(named["test"])
    assert named["train"] | named["val"] | named["test"] == kept
    assert len(named["train"] | named["val"]) == len(kept) // 2
    assert len(named["val"]) == round(0.2 * (len(kept) // 2))
    # all-vs-all on the test half: every test image a query against the rest
    assert src.eval_protocol == "all_vs_all" and set(splits) == {"train", "val", "test"}
    # another run seed draws other validation classes, never other test classes
    other = source(tmp_path, val_fraction=0.2, seed=1)
    other_splits = other.splits()
    assert set(_keys(other, other_splits["test"])) == named["test"]
    assert set(_keys(other, other_splits["val"])) != named["val"]
    # the split seed moves the test classes
    moved = source(tmp_path, val_fraction=0.2, split_seed=1)
    assert set(_keys(moved, moved.splits()["test"])) != named["test"]


def _keys(src: EmojiStyles, split) -> list[str]:
    return [str(src.class_keys[c]) for c in split.classes]


def test_min_styles_drops_classes_with_fewer_images(npm, tmp_path):
    def classes(min_styles: int) -> set[str]:
        src = source(tmp_path, min_styles=min_styles)
        return {k for s in src.splits().values() for k in _keys(src, s)}

    assert "1f955" in classes(2)  # carrot: noto and twemoji only
    assert "1f955" not in classes(3)
    assert classes(5) == {c for c, sets in fx.EXPECTED.items() if len(sets) == 5}


def test_the_build_is_cached_by_versions_and_size(npm, tmp_path, monkeypatch):
    first = source(tmp_path).splits()
    assert len(npm.calls()) == len(fx.SETS)
    assert sorted(p.name for p in (tmp_path / "packages").iterdir()) == sorted(
        f"{n}-{v}.tgz" for n, v in fx.SETS.items())
    (cache,) = tmp_path.glob("emoji_styles_*.npz")
    assert cache.name.startswith(f"emoji_styles_{SIZE}px_")

    def no_build(*args, **kwargs):
        raise AssertionError("rebuilt although the cache was there")

    monkeypatch.setattr("see_dml.data.emoji_styles.build_arrays", no_build)  # the source calls it
    again = source(tmp_path).splits()
    for name in first:
        np.testing.assert_array_equal(again[name].items, first[name].items)
        np.testing.assert_array_equal(again[name].labels, first[name].labels)
    assert len(npm.calls()) == len(fx.SETS)  # npm not asked again
    with pytest.raises(AssertionError, match="rebuilt"):  # another size: another build
        EmojiStyles(root=tmp_path, sets=fx.SETS, image_size=SIZE + 8).splits()
    with pytest.raises(AssertionError, match="rebuilt"):  # another version: another build
        EmojiStyles(root=tmp_path, sets={**fx.SETS, "noto": "1.0.1"}, image_size=SIZE).splits()


@pytest.mark.parametrize("damage", ["empty", "truncated"])
def test_a_broken_cache_file_is_named_and_rebuilt(npm, tmp_path, caplog, damage):
    first = source(tmp_path).splits()
    (cache,) = tmp_path.glob("emoji_styles_*.npz")
    size = cache.stat().st_size
    with open(cache, "r+b") as f:
        f.truncate(0 if damage == "empty" else size // 2)
    with caplog.at_level("WARNING"):
        rebuilt = source(tmp_path).splits()
    assert str(cache) in caplog.text and "rebuilding" in caplog.text
    np.testing.assert_array_equal(rebuilt["test"].items, first["test"].items)
    assert cache.stat().st_size == size
    assert len(list(tmp_path.glob("*.npz"))) == 1 and not list(tmp_path.glob(".*tmp"))


def test_a_broken_package_file_is_fetched_again(npm, tmp_path, caplog):
    source(tmp_path).splits()
    package = tmp_path / "packages" / "noto-1.0.0.tgz"
    package.write_bytes(package.read_bytes()[:100])
    next(tmp_path.glob("*.npz")).unlink()
    with caplog.at_level("WARNING"):
        source(tmp_path).splits()
    assert f"package file {package} is unreadable" in caplog.text
    assert npm.calls().count("pack @iconify-json/noto@1.0.0") == 2


def test_without_npm_the_error_says_what_to_install_or_where_a_prebuilt_copy_goes(
        tmp_path, monkeypatch, npm):
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(DatasetNotFoundError) as err:
        source(tmp_path / "root").splits()
    msg = str(err.value)
    assert "npm is not on PATH" in msg and "apt-get install npm" in msg
    assert "dataset.root" in msg and str(tmp_path / "root") in msg
    assert source(tmp_path / "root").cache_path().name in msg
    assert "packages/<set>-<version>.tgz" in msg


@pytest.mark.parametrize("prebuilt", ["packages", "cache file"])
def test_a_prebuilt_copy_needs_no_npm(tmp_path, monkeypatch, npm, prebuilt):
    built = source(tmp_path / "elsewhere").splits()
    copy = tmp_path / "copy"
    copy.mkdir()
    if prebuilt == "packages":
        (tmp_path / "elsewhere" / "packages").rename(copy / "packages")
    else:
        next((tmp_path / "elsewhere").glob("*.npz")).rename(copy / source(copy).cache_path().name)
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    splits = source(copy).splits()
    np.testing.assert_array_equal(splits["test"].items, built["test"].items)


def test_a_failed_npm_pack_is_quoted(npm, tmp_path):
    with pytest.raises(DatasetNotFoundError, match=r"(?s)npm pack @iconify-json/blobmoji@1\.0\.0"
                                                   r"' failed:.*404"):
        EmojiStyles(root=tmp_path, sets={**fx.SETS, "blobmoji": "1.0.0"}).splits()
    assert not list((tmp_path / "packages").glob(".npm-pack-*"))  # its temporary folder: gone


# A child of the cold-cache test: every builder starts at once on the same empty root.
_BUILDER = """
import sys, time
from pathlib import Path
from see_dml.data.emoji_styles import EmojiStyles
from helpers import emoji_fixtures as fx
barrier, root, me, n = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
(barrier / f"ready{me}").touch()
while len(list(barrier.glob("ready*"))) < n:
    time.sleep(0.005)
splits = EmojiStyles(root=root, sets=fx.SETS, image_size=16).splits()
print(sum(int(s.items.sum()) for s in splits.values()))
"""


@pytest.fixture(scope="module")
def cold_runs(npm_dir: fx.FakeNpm, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Three builders on one cold root, and the check CLI, started together (each pays for
    importing torch; in parallel that costs one import's time on 2 cores, not four)."""
    base = tmp_path_factory.mktemp("cold")
    env = {"PATH": f"{npm_dir.bin_dir}:/usr/bin:/bin",
           "PYTHONPATH": str(Path(__file__).resolve().parents[1]), "HOME": str(base)}
    (base / "barrier").mkdir()
    procs = {f"builder{i}": subprocess.Popen(
        [sys.executable, "-c", _BUILDER, str(base / "barrier"), str(base / "root"), str(i), "3"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env) for i in range(3)}
    (base / "cwd").mkdir()
    procs["check"] = subprocess.Popen(
        [sys.executable, "-m", "see_dml.data.check", "dataset=emoji_styles",
         f"dataset.root={base / 'check_root'}", "dataset.image_size=16"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=base / "cwd")
    outs = {name: (p, *p.communicate(timeout=300)) for name, p in procs.items()}
    return {"base": base, "runs": {n: (p.returncode, out, err) for n, (p, out, err) in
                                   outs.items()}}


@pytest.mark.slow
def test_three_builders_on_a_cold_cache_all_succeed(cold_runs, npm_dir):
    runs = cold_runs["runs"]
    sums = set()
    for i in range(3):
        rc, out, err = runs[f"builder{i}"]
        assert rc == 0, err
        sums.add(out.strip())
    assert len(sums) == 1  # the same dataset in every process
    root = cold_runs["base"] / "root"
    assert [p.name for p in root.iterdir() if p.is_file()] == [
        EmojiStyles(root=root, sets=fx.SETS, image_size=16).cache_path().name]
    assert sorted(p.name for p in (root / "packages").iterdir()) == sorted(
        f"{n}-{v}.tgz" for n, v in fx.SETS.items())  # no temporary file or folder left


@pytest.mark.slow
def test_the_check_cli_builds_and_reports_the_dataset(cold_runs):
    rc, out, err = cold_runs["runs"]["check"]
    assert rc == 0, err
    counts = json.loads(out.strip().splitlines()[-1])
    kept = sum(len(sets) >= 4 for sets in fx.EXPECTED.values())
    assert sum(c["classes"] for c in counts.values()) == kept
    assert set(counts) == {"train", "val", "test"}
    assert "classes disjoint between train, val, test" in out
    assert not list((cold_runs["base"] / "cwd").iterdir())  # a check writes nothing


# -- through the composed config --------------------------------------------------------------

def test_the_config_uses_five_sets_and_one_fluent(make_cfg):
    cfg = make_cfg("dataset=emoji_styles")
    assert set(cfg.dataset.sets) == {"noto", "twemoji", "openmoji", "fluent-emoji-flat",
                                     "emojione"}
    src = instantiate(cfg.dataset)
    assert isinstance(src, EmojiStyles) and src.image_kind == "icons"
    assert src.root == Path(cfg.paths.cache_dir) / "emoji_styles"


def test_train_augmentation_never_flips_nor_changes_colour(make_cfg, npm):
    cfg = make_cfg("dataset=emoji_styles", "data.transforms.hflip=true")
    dm = instantiate(cfg.data, source=instantiate(cfg.dataset), _convert_="all")
    dm.set_normalization((0.0,), (1.0,))
    dm.setup("fit")
    train_tf = dm.datasets["train"].transform
    # left half red, right half blue, on white: a flip swaps them, a hue shift changes them
    img = np.full((64, 64, 3), 255, np.uint8)
    img[16:48, 8:30] = (220, 20, 20)
    img[16:48, 34:56] = (20, 20, 220)
    torch.manual_seed(0)
    for _ in range(30):
        out = (train_tf(Image.fromarray(img)) * 255).round().numpy()
        np.testing.assert_allclose(out[:, 32, 19], (220, 20, 20), atol=30)
        np.testing.assert_allclose(out[:, 32, 45], (20, 20, 220), atol=30)
    names = [type(t).__name__ for t in train_tf.transforms]
    assert "RandomHorizontalFlip" not in names and "ColorJitter" not in names
    # the same recipe on photos flips: the dataset's kind is what decides
    natural, _ = build_transforms("natural", TransformConfig(hflip=True), (0.5,), (0.5,))
    assert "RandomHorizontalFlip" in [type(t).__name__ for t in natural.transforms]


@pytest.mark.slow
def test_train_and_evaluate_on_the_fixture(make_cfg, npm):
    from see_dml.train import train

    cfg = make_cfg("dataset=emoji_styles", "dataset.image_size=32", "data.batch_size=8",
                   "data.m_per_class=2", "data.eval_batch_size=16")
    metrics = train(cfg)
    for k in (1, 2, 4, 8):
        assert 0.0 <= metrics[f"test/recall@{k}"] <= 1.0
    assert 0.0 <= metrics["test/map@r"] <= 1.0
    assert "best/val/map@r" in metrics
