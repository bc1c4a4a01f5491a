"""The README and the docs pages stay true: their ``python`` blocks run, and what their
``bash`` blocks name exists (config options, modules, scripts, make targets)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def _blocks(page: Path, langs: tuple[str, ...]) -> list[str]:
    pattern = rf"^```(?:{'|'.join(langs)})\n(.*?)^```"
    return re.findall(pattern, page.read_text(), flags=re.S | re.M)


def _rel(page: Path) -> str:
    return str(page.relative_to(ROOT))


PY_BLOCKS = [pytest.param(page, i, code, id=f"{_rel(page)}-{i}")
             for page in PAGES for i, code in enumerate(_blocks(page, ("python",)))]
SHELL = [(page, code) for page in PAGES for code in _blocks(page, ("bash", "sh", "shell"))]


def _shell_words() -> list[tuple[str, str]]:
    """(page, word) for every word of every shell block, comments included (they show
    commands too); a quoted ``ARGS='a=b c=d'`` is split into its own words."""
    out = []
    for page, code in SHELL:
        code = code.replace("\\\n", " ")
        for line in code.splitlines():
            line = line.replace("#", " ")
            try:
                words = shlex.split(line)
            except ValueError:  # an unbalanced quote in prose-like comments
                words = line.split()
            for word in words:
                if word.startswith("ARGS="):
                    out += [(_rel(page), w) for w in word[len("ARGS="):].split()]
                out.append((_rel(page), word))
    return out


WORDS = _shell_words()


@pytest.mark.parametrize(("page", "index", "code"), PY_BLOCKS)
def test_python_blocks_run(page, index, code):
    exec(compile(code, f"{_rel(page)} block {index}", "exec"), {"__name__": "__docs__"})


def test_every_page_is_checked():
    assert (ROOT / "README.md") in PAGES and len(PAGES) > 1
    assert PY_BLOCKS and SHELL


def test_group_options_in_commands_exist():
    """Every ``group=option[,option...]`` (a group is a folder of ``conf/``) names a file
    ``conf/<group>/<option>.yaml``; ``key=value`` with a dotted or unknown key is left alone."""
    checked, missing = 0, []
    for page, word in WORDS:
        m = re.fullmatch(r"\+{0,2}([a-z_]+(?:/[a-z_]+)*)=([\w,/.-]+)", word)
        if not m or not (CONF / m[1]).is_dir():
            continue
        for option in m[2].split(","):
            checked += 1
            if not (CONF / m[1] / f"{option}.yaml").is_file():
                missing.append(f"{page}: {m[1]}={option}")
    assert checked > 20
    assert not missing, f"no such config option: {missing}"


def _module_exists(dotted: str) -> bool:
    base = ROOT / "src" / Path(*dotted.split("."))
    return base.with_suffix(".py").is_file() or (base / "__main__.py").is_file()


def test_commands_in_shell_blocks_exist():
    """``python -m see_dml.<module>``, ``python <script>.py``, ``make <target>`` (with
    ``TABLE=<name>`` a table file) and ``see-dml-*`` console scripts."""
    makefile = (ROOT / "Makefile").read_text()
    pyproject = (ROOT / "pyproject.toml").read_text()
    problems, seen = [], set()
    for page, code in SHELL:
        code = code.replace("\\\n", " ")
        for m in re.finditer(r"python3? -m ([\w.]+)", code):
            seen.add("module")
            if not m[1].startswith("see_dml") or not _module_exists(m[1]):
                problems.append(f"{_rel(page)}: python -m {m[1]}")
        for m in re.finditer(r"python3? ((?:experiments|benchmarks)/[\w/]+\.py)", code):
            seen.add("script")
            if not (ROOT / m[1]).is_file():
                problems.append(f"{_rel(page)}: {m[1]}")
        for m in re.finditer(r"^\s*make ([\w-]+)((?: [A-Z]+=\S+)*)", code, flags=re.M):
            seen.add("make")
            if not re.search(rf"^{re.escape(m[1])}:", makefile, flags=re.M):
                problems.append(f"{_rel(page)}: make {m[1]}")
            table = re.search(r"TABLE=(\w+)", m[2])
            if table and not (CONF / "experiment/paper" / f"table_{table[1]}.yaml").is_file():
                problems.append(f"{_rel(page)}: TABLE={table[1]}")
        for m in re.finditer(r"(?<![\w/-])(see-dml-[a-z]+)", code):
            seen.add("script")
            if not re.search(rf"^{m[1]} = ", pyproject, flags=re.M):
                problems.append(f"{_rel(page)}: {m[1]}")
    assert seen == {"module", "script", "make"}
    assert not problems, f"commands that do not exist: {problems}"


def test_readme_two_commands_are_the_makefile_and_ci():
    """``make train`` trains with the README's main command; ``make test`` is what CI runs."""
    makefile = (ROOT / "Makefile").read_text()
    train = re.search(r"^train:.*\n\t(.*)", makefile, flags=re.M)
    assert train and "-m see_dml.train" in train[1]
    assert re.search(r"^test:.*\n\t.*-m pytest", makefile, flags=re.M)
    assert "make test" in (ROOT / ".ci" / "run").read_text()
    readme_shell = "\n".join(code for page, code in SHELL if page.name == "README.md")
    assert re.search(r"^make train\b", readme_shell, flags=re.M)
    assert re.search(r"^make test\b", readme_shell, flags=re.M)


def test_group_table_lists_every_option():
    """The table of config groups in docs/training.md names exactly the files of each group
    it lists (top-level files; ``experiment``'s subfolders are described in prose)."""
    text = (ROOT / "docs" / "training.md").read_text()
    rows = re.findall(r"^\| `([a-z_/]+)` \| (.*) \|$", text, flags=re.M)
    assert len(rows) >= 10
    for group, cell in rows:
        listed = set(re.findall(r"`([a-z_0-9]+)`", cell.split(";")[0].split(" (")[0]))
        shipped = {p.stem for p in (CONF / group).glob("*.yaml")}
        assert listed == shipped, (
            f"conf/{group}: docs/training.md's table of config groups lists {sorted(listed)}, "
            f"the folder has {sorted(shipped)}: list a new option file in that table's row "
            f"(or remove a gone one)")


def test_relative_links_resolve():
    """Links between the pages, and to files of the repository, point at something."""
    broken = []
    for page in PAGES:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", page.read_text()):
            if re.match(r"[a-z]+:", target):
                continue
            if not (page.parent / target).exists():
                broken.append(f"{_rel(page)}: {target}")
    assert not broken, broken
