"""The manual and study pages: length, links, wording, result tables and their figures."""

from __future__ import annotations

import csv
import pathlib
import re
import subprocess
import sys

import pytest

from phasemix.analysis import figures

ROOT = pathlib.Path(__file__).resolve().parents[1]
PAGES = ("docs/grokking.md", "docs/knowledge.md", "docs/bimix.md", "docs/performance.md",
         "docs/results.md")
LINKED = PAGES + ("docs/scale-out.md",)  # written beside these pages; the manual links to it

# Words about how the work was organised, which no file of the project should carry. Built from
# pieces so that this file does not match itself.
FORBIDDEN = [re.compile(p, re.IGNORECASE) for p in (
    r"\bst" + r"op \d+\b", r"\bsess" + r"ions?\b", r"\bhelp" + r"ers?\b", r"\bthe is" + r"sue\b",
    r"\bthis P" + r"R\b")]
SAMPLES = ("st" + "op 12", "sess" + "ion", "Sess" + "ions", "help" + "er", "help" + "ers",
           "the is" + "sue", "This P" + "R")


def forbidden_words(path: pathlib.Path) -> list[str]:
    """'path:line: word' for each forbidden word in a text file; binary files have none."""
    data = path.read_bytes()
    if b"\0" in data:
        return []
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return []
    found = []
    for number, line in enumerate(text.splitlines(), 1):
        for pattern in FORBIDDEN:
            for match in pattern.finditer(line):
                found.append(f"{path}:{number}: {match.group(0)}")
    return found


def test_readme_is_at_most_250_lines():
    lines = (ROOT / "README.md").read_text().splitlines()
    assert 100 < len(lines) <= 250, len(lines)


def test_readme_starts_with_the_two_commands():
    text = (ROOT / "README.md").read_text()
    demo = ("python3 -m venv .venv && .venv/bin/pip install -q -c constraints.txt -e . && "
            ".venv/bin/python -m experiments.grokking --workdir=runs/grokking")
    tests = ("python3 -m venv .venv && .venv/bin/pip install -q -c constraints.txt -e "
             "'.[all,test]' && .venv/bin/python -m pytest -q")
    assert demo in text and tests in text
    assert text.index(demo) < text.index("## Studies")
    # Every extra of setup.cfg is named in the README's install section.
    import configparser
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    for extra in cfg["options.extras_require"]:
        if extra != "test":
            assert f"`{extra}`" in text or f"`[{extra}]`" in text, extra


@pytest.mark.parametrize("page", PAGES)
def test_each_page_exists_and_the_readme_links_it(page):
    assert (ROOT / page).is_file()
    assert f"]({page})" in (ROOT / "README.md").read_text()


def test_readme_links_scale_out_page():
    assert "](docs/scale-out.md)" in (ROOT / "README.md").read_text()


@pytest.mark.parametrize("page", PAGES)
def test_pages_link_each_other_and_scale_out(page):
    text = (ROOT / page).read_text()
    others = [pathlib.Path(p).name for p in LINKED if p != page]
    assert all(f"]({name})" in text for name in others), page
    assert "](../README.md)" in text


@pytest.mark.parametrize("page", ("README.md",) + PAGES)
def test_linked_figures_and_tables_exist(page):
    text = (ROOT / page).read_text()
    base = (ROOT / page).parent
    targets = re.findall(r"\]\(((?:docs/)?(?:figures|results)/[^)#]+)\)", text)
    assert targets or page == "docs/results.md"  # the index links folders, not files
    for target in targets:
        assert (base / target).exists(), (page, target)


def test_no_tracked_file_has_forbidden_words():
    names = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True,
                           check=True).stdout.decode().split("\0")
    paths = [ROOT / n for n in names if n and not n.startswith(".git/")]
    assert len(paths) > 50
    found = [hit for p in paths if p.is_file() for hit in forbidden_words(p)]
    assert not found, "\n".join(found)


@pytest.mark.parametrize("word", SAMPLES)
def test_checker_flags_each_forbidden_word(tmp_path, word):
    clean = tmp_path / "page.md"
    clean.write_text("The critical data size is 600 pairs.\nSweeps resume.\n")
    assert forbidden_words(clean) == []
    clean.write_text(f"The critical data size is 600 pairs.\nAs {word} says, sweeps resume.\n")
    hits = forbidden_words(clean)
    assert len(hits) == 1 and hits[0].startswith(f"{clean}:2: ")


def test_checker_leaves_similar_words_alone(tmp_path):
    path = tmp_path / "page.md"
    path.write_text("Stopped 12 times; helpful; a stopwatch; 3 sessionals.\n")
    assert forbidden_words(path) == []


def _tables() -> list[str]:
    results = ROOT / "docs/results"
    return sorted(str(p.relative_to(results)) for p in results.rglob("*.csv"))


def test_every_results_table_is_classified():
    assert _tables() == sorted(figures.RUN_TABLES + figures.AGGREGATE_TABLES)
    studies = {t.split("/")[0] for t in _tables()}
    assert studies == {"grokking", "knowledge", "bimix", "performance"}


@pytest.mark.parametrize("name", _tables())
def test_results_tables_carry_commit_and_seed(name):
    with open(ROOT / "docs/results" / name, newline="") as f:
        rows = list(csv.DictReader(f))
    assert rows, name
    assert "commit" in rows[0]
    assert all(re.fullmatch(r"[0-9a-f]{7,40}", r["commit"]) for r in rows), name
    if name in figures.RUN_TABLES:
        assert "seed" in rows[0]
        assert all(r["seed"].isdigit() for r in rows), name


def test_commits_of_results_exist_in_history():
    if not (ROOT / ".git").exists() or subprocess.run(
            ["git", "rev-parse", "--is-shallow-repository"], cwd=ROOT, capture_output=True,
            text=True).stdout.strip() != "false":
        pytest.skip("needs the full git history")
    commits = set()
    for name in _tables():
        with open(ROOT / "docs/results" / name, newline="") as f:
            commits |= {r["commit"] for r in csv.DictReader(f)}
    for commit in sorted(commits):
        subprocess.run(["git", "cat-file", "-e", f"{commit}^{{commit}}"], cwd=ROOT, check=True)


def test_figure_command_draws_every_figure_it_claims(tmp_path):
    out = tmp_path / "figs"
    result = subprocess.run([sys.executable, "-m", "phasemix.analysis.figures", "docs/results",
                             "--out", str(out)], cwd=ROOT, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    claimed = [pathlib.Path(line) for line in result.stdout.split()]
    assert sorted(p.name for p in claimed) == sorted(figures.FIGURES)
    for path in claimed:
        assert path.parent == out
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert path.stat().st_size > 10_000
    assert sorted(p.name for p in out.iterdir()) == sorted(figures.FIGURES)


def test_figure_command_refuses_a_missing_results_folder(tmp_path, capsys):
    out = tmp_path / "figs"
    with pytest.raises(SystemExit) as exit_info:
        figures.main([str(tmp_path / "nowhere"), "--out", str(out)])
    message = str(exit_info.value.code)
    assert message.startswith("error: RESULTS=") and "missing table" in message
    assert "\n" not in message
    assert not out.exists()


def test_every_docs_figure_is_drawn_or_listed_as_png_only():
    pngs = sorted(p.name for p in (ROOT / "docs/figures").glob("*.png"))
    assert pngs == sorted(set(figures.FIGURES) | set(figures.PNG_ONLY))
    pages = "".join((ROOT / p).read_text() for p in PAGES)
    section = "PNG-only figures (data not yet saved)"
    for name in figures.PNG_ONLY:
        page = next(p for p in PAGES if f"`{name}`" in (ROOT / p).read_text())
        assert section in (ROOT / page).read_text(), name
    for name in figures.FIGURES:
        assert f"figures/{name}" in pages, name
