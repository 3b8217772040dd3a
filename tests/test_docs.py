"""The docs cannot go stale: the lists generated from the code are current (``omnifm docs
--check``), every relative link and anchor resolves, every ``python -m`` module they name exists,
the front page stays a front page (short, its Quickstart block the two commands CI runs, a Layout
that names every top-level entry and every module of the package, a library snippet that runs),
and every bad input the docs list names a test that exists."""
from __future__ import annotations

import contextlib
import io
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from omnifm_jax import cli, docgen

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"

QUICKSTART = ["pip install -e . && omnifm train", "pip install -e '.[test]' && ruff check . && pytest -q"]


# ----------------------------------------------------------------------------- generated lists

def test_generated_lists_are_current():
    stale = docgen.update(ROOT, check=True)
    assert not stale, f"generated blocks differ from the code: {stale}; run `omnifm docs`"


def test_omnifm_docs_check_exits_0(capsys):
    assert cli.main(["docs", "--check", "--root", str(ROOT)]) == 0, capsys.readouterr().out


def _copy_checkout(tmp_path: Path) -> Path:
    """README, docs and what the bad-input list is generated from, in a scratch checkout."""
    root = tmp_path / "checkout"
    shutil.copytree(ROOT / "docs", root / "docs")
    (root / "tests").mkdir()
    for name in ("test_validation.py", "bad_inputs.py"):
        shutil.copy(ROOT / "tests" / name, root / "tests" / name)
    shutil.copy(README, root / "README.md")
    return root


def test_check_finds_a_stale_block_writes_nothing_and_update_fixes_it(tmp_path, capsys):
    root = _copy_checkout(tmp_path)
    page = root / "docs" / "algorithms.md"
    text = page.read_text()
    stale = re.sub(r"(<!-- generated:algorithms[^>]*-->\n)", r"\1| `removed_algorithm` | ... |\n", text)
    page.write_text(stale)
    assert docgen.update(root, check=True) == ["docs/algorithms.md [algorithms]"]
    assert page.read_text() == stale
    assert cli.main(["docs", "--check", "--root", str(root)]) == 1
    assert "stale: docs/algorithms.md [algorithms]" in capsys.readouterr().out
    assert docgen.update(root) == ["docs/algorithms.md [algorithms]"]
    assert page.read_text() == text and docgen.update(root, check=True) == []


def test_a_missing_or_unknown_block_is_an_error(tmp_path):
    root = _copy_checkout(tmp_path)
    page = root / "docs" / "tasks.md"
    text = page.read_text()
    page.write_text(re.sub(r"<!-- generated:tasks.*?<!-- /generated:tasks -->\n", "", text, flags=re.DOTALL))
    with pytest.raises(docgen.DocError, match=r"no docs file holds the generated block\(s\) \['tasks'\]"):
        docgen.update(root, check=True)
    page.write_text(text + "\n<!-- generated:nothing -->\n<!-- /generated:nothing -->\n")
    with pytest.raises(docgen.DocError, match=r"unknown generated block 'nothing'"):
        docgen.update(root, check=True)


# ----------------------------------------------------------------------------- links

_FENCE = re.compile(r"^(```|~~~).*?^\1", re.DOTALL | re.MULTILINE)
_CODE = re.compile(r"`[^`\n]*`")
_LINK = re.compile(r"\[[^\]\n]*\]\(([^)\s]+)\)")


def _slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def _anchors(path: Path) -> set:
    seen: dict = {}
    out = set()
    for line in _FENCE.sub("", path.read_text()).splitlines():
        m = re.match(r"#{1,6}\s+(.*)", line)
        if m:
            slug = _slug(m.group(1))
            out.add(slug if slug not in seen else f"{slug}-{seen[slug]}")
            seen[slug] = seen.get(slug, 0) + 1
    return out


def test_every_relative_link_resolves():
    files = docgen.doc_files(ROOT)
    assert README in files and (ROOT / "docs" / "README.md") in files
    broken = []
    for path in files:
        text = _CODE.sub("", _FENCE.sub("", path.read_text()))
        for target in _LINK.findall(text):
            if re.match(r"[a-z]+:", target):  # https:, mailto:
                continue
            file_part, _, anchor = target.partition("#")
            dest = (path.parent / file_part).resolve() if file_part else path
            where = f"{path.relative_to(ROOT)}: ({target})"
            if not dest.exists():
                broken.append(f"{where} -> no such file")
            elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
                broken.append(f"{where} -> no heading with anchor #{anchor}")
    assert not broken, "broken links:\n" + "\n".join(broken)


def test_every_module_the_docs_run_exists():
    """``python -m experiments.X`` / ``omnifm_jax.X`` in the docs names a module of the checkout."""
    missing = []
    for path in docgen.doc_files(ROOT):
        for module in re.findall(r"python -m ((?:experiments|omnifm_jax)(?:\.[a-z_][a-z0-9_]*)*)", path.read_text()):
            base = ROOT.joinpath(*module.split("."))
            if not (base.with_suffix(".py").is_file() or (base / "__init__.py").is_file()):
                missing.append(f"{path.relative_to(ROOT)}: python -m {module}")
    assert not missing, "modules the docs run that do not exist:\n" + "\n".join(missing)


# ----------------------------------------------------------------------------- the front page

def _section(title: str) -> str:
    text = README.read_text()
    start = text.index(f"\n## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start:end if end >= 0 else len(text)]


def test_readme_is_a_front_page():
    lines = README.read_text().splitlines()
    assert len(lines) < 200, f"README.md has {len(lines)} lines; move detail to docs/"
    block = re.search(r"```bash\n(.*?)```", _section("Quickstart"), re.DOTALL).group(1).splitlines()
    assert block == QUICKSTART  # .ci/run runs lines 1 and 2 of this block as written


def _table_blocks(text: str):
    """Runs of consecutive lines starting with ``|`` outside fenced code, with their first line number."""
    blocks, fenced, run = [], False, []
    for number, line in enumerate(text.splitlines() + [""], 1):
        fenced ^= line.startswith("```")
        if line.startswith("|") and not fenced:
            run.append((number, line))
        elif run:
            blocks.append(run)
            run = []
    return blocks


def test_every_markdown_table_has_a_header_and_no_row_cut_off():
    """A blank line inside a table cuts the rows after it off into a paragraph of pipes."""
    pages = [README, ROOT / "CONTRIBUTING.md", *sorted((ROOT / "docs").glob("*.md")),
             *sorted((ROOT / "experiments").rglob("README.md"))]
    bad = []
    for page in pages:
        for block in _table_blocks(page.read_text()):
            if len(block) < 2 or not re.fullmatch(r"\|(\s*:?-+:?\s*\|)+", block[1][1].strip()):
                bad.append(f"{page.relative_to(ROOT)}:{block[0][0]}")
    assert not bad, f"tables without a header row and separator (a row cut off by a blank line?): {bad}"


def _tracked_top_level() -> set:
    try:
        out = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                             capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    return {line.split("/")[0] for line in out.splitlines() if line}


def _named(text: str, name: str, forms) -> bool:
    return any(re.search(rf"(?<![\w.-]){re.escape(name + form)}(?![\w-])", text) for form in forms)


def test_layout_names_every_top_level_entry_and_every_module():
    layout = _section("Layout")
    missing = [name for name in sorted(_tracked_top_level())
               if not _named(layout, name, ["/"] if (ROOT / name).is_dir() else [""])]
    package = ROOT / "omnifm_jax"
    modules = sorted(p.stem for p in package.iterdir()
                     if (p.suffix == ".py" and p.name != "__init__.py") or (p / "__init__.py").is_file())
    missing += [f"omnifm_jax/{m}" for m in modules if not _named(layout, m, ["/", ".py"])]
    assert not missing, f"README.md's Layout does not name {missing}"


def _python_block(path: Path) -> str:
    return re.search(r"```python\n(.*?)```", path.read_text(), re.DOTALL).group(1)


def test_the_library_snippet_runs_and_matches_docs():
    snippet = _python_block(README)
    assert snippet == _python_block(ROOT / "docs" / "library.md")
    assert "range(10)" in snippet
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(snippet.replace("range(10)", "range(2)"), "README.md", "exec"), {})  # two rounds suffice
    assert 0.0 <= float(out.getvalue().split()[-1]) <= 1.0


# ----------------------------------------------------------------------------- bad inputs

def test_every_bad_input_row_names_a_test_that_exists():
    import bad_inputs

    assert {row[0] for row in bad_inputs.CASES} <= set(bad_inputs.GROUPS)
    named = sorted({t for row in bad_inputs.CASES for t in row[3]})
    files = sorted({"tests/" + t.split("::")[0] for t in named})
    proc = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-n", "0", "-p", "no:cacheprovider",
                           *files], cwd=ROOT, capture_output=True, text=True, timeout=600)
    ids = {line.strip() for line in proc.stdout.splitlines() if "::" in line}
    assert ids, proc.stdout[-2000:] + proc.stderr[-2000:]
    missing = [t for t in named if f"tests/{t}" not in ids and not any(i.startswith(f"tests/{t}[") for i in ids)]
    assert not missing, f"tests/bad_inputs.py names tests that do not exist: {missing}"


def test_the_reproduction_pages_table_files_list_their_scales():
    """docs/reproduction.md's table of table files names each file's scales as the files define them."""
    from omnifm_jax import reproduce

    by_file = {}
    for t in reproduce.TABLES.values():
        by_file.setdefault(Path(t.source).resolve(), set()).update(t.scales)
    rows = re.findall(r"^\| \[(experiments/[^\]]+\.py)\]\([^)]+\) \| [^\n]* \| ([a-z, ]+) \|$",
                      (ROOT / "docs" / "reproduction.md").read_text(), flags=re.M)
    assert len(rows) >= 10
    for path, scales in rows:
        assert {s.strip() for s in scales.split(",")} == by_file[(ROOT / path).resolve()], path
