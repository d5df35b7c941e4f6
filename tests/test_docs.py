"""The documentation holds: every ```bash and ```python block of README.md and docs/*.md runs against a real
local stack (authentication on, an API key in MASKSERVE_KEY), from a folder laid out like the repository root;
the site builds with `mkdocs build --strict` (no broken link or anchor, every page in the nav); every table
renders; the README stays short and its links resolve.

A block that cannot run here (a GPU, Kubernetes, a downloaded checkpoint, a server in the foreground, the test
suite itself) has `<!-- not run: <reason> -->` on the line right before its fence, and is skipped with that
reason; output and other text go in ```text, ```console or ```json blocks, which are not run."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from maskserve.service import access
from maskserve.service.stack import LocalStack, free_port

REPO = Path(__file__).resolve().parent.parent
README = REPO / "README.md"
DOCS = [README, *sorted((REPO / "docs").glob("*.md"))]
RUN = ("bash", "python")
FENCE = re.compile(r"^(?P<indent>[ \t]*)```(?P<info>[^\n`]*)\n(?P<code>.*?)^(?P=indent)```[ \t]*$", re.S | re.M)
NOT_RUN = re.compile(r"^\s*<!--\s*not run:(?P<reason>.*?)-->\s*$")
KEY = access.new_key()
README_MAX_LINES = 150


def name(doc: Path) -> str:
    return str(doc.relative_to(REPO))


def fences(doc: Path):
    """(line, language, code, the not-run reason or None) of every fenced block of a page."""
    text = doc.read_text()
    for m in FENCE.finditer(text):
        line = text.count("\n", 0, m.start()) + 1
        before = text.splitlines()[line - 2] if line > 1 else ""
        marker = NOT_RUN.match(before)
        lang = (m.group("info").split() or [""])[0]
        code = "\n".join(row[len(m.group("indent")):] for row in m.group("code").splitlines()) + "\n"
        yield line, lang, code, (marker.group("reason").strip() if marker else None)


def blocks():
    params = []
    for doc in DOCS:
        for line, lang, code, reason in fences(doc):
            if lang in RUN:
                marks = [pytest.mark.skip(reason=f"not run: {reason}")] if reason is not None else []
                params.append(pytest.param(name(doc), line, lang, code, marks=marks, id=f"{name(doc)}:{line}"))
    return params


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    d = tmp_path_factory.mktemp("docs")
    (d / "access.json").write_text(json.dumps({"keys": [{"tenant": "docs", "sha256": access.key_hash(KEY)}]}))
    with LocalStack(log_dir=d, extra_env={"MASKSERVE_AUTH_FILE": str(d / "access.json")},
                    http_port=free_port()) as s:
        yield s


@pytest.fixture(scope="module")
def sam3_stack(sam3_random, tmp_path_factory):
    """A SAM 3 model served (the seeded scaled-down one), for the examples that name MASKSERVE_SAM3."""
    d = tmp_path_factory.mktemp("docs-sam3")
    (d / "access.json").write_text(json.dumps({"keys": [{"tenant": "docs", "sha256": access.key_hash(KEY)}]}))
    with LocalStack(model_dir=str(sam3_random[1]), log_dir=d, http_port=free_port(),
                    extra_env={"MASKSERVE_AUTH_FILE": str(d / "access.json")}) as s:
        yield s


@pytest.mark.skipif(not shutil.which("curl") or not shutil.which("jq"), reason="the examples use curl and jq")
@pytest.mark.parametrize("doc,line,lang,code", blocks())
def test_the_example_runs(stack, tmp_path, doc, line, lang, code, request):
    work = tmp_path / "work"  # laid out like the repository root
    (work / "maskserve" / "data").mkdir(parents=True)
    shutil.copy(REPO / "maskserve" / "data" / "astronaut.jpg", work / "maskserve" / "data")
    shutil.copytree(REPO / "proto", work / "proto")  # what a client in another language is built from
    # A Python block runs as a file outside `work`: `python -c` would put the working directory first on
    # sys.path, where maskserve/data would make `import maskserve` an empty namespace package.
    (tmp_path / "example.py").write_text(code)
    command = ["bash", "-euo", "pipefail", "-c", code] if lang == "bash" else [sys.executable, tmp_path / "example.py"]
    env = {"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin", "HOME": str(tmp_path),
           "MASKSERVE": stack.url, "MASKSERVE_TARGET": stack.target,
           "MASKSERVE_KEY": KEY, "MASKSERVE_API_KEY": KEY}  # the docs' examples / the command line's option
    if "MASKSERVE_SAM3" in code:
        sam3 = request.getfixturevalue("sam3_stack")
        env.update(MASKSERVE_SAM3=sam3.url, MASKSERVE_SAM3_TARGET=sam3.target)
    run = subprocess.run(command, cwd=work, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, f"{doc} line {line}:\n{run.stdout[-2000:]}\n{run.stderr[-2000:]}"
    for png in work.rglob("*.png"):  # what the examples wrote is an image
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", f"{doc} line {line}: {png.relative_to(work)}"


def test_every_not_run_marker_marks_a_block_and_says_why():
    """A marker stands right before a ```bash or ```python fence (elsewhere it is stale) and gives a reason."""
    problems = []
    for doc in DOCS:
        lines = doc.read_text().splitlines()
        for i, text in enumerate(lines):
            marker = NOT_RUN.match(text)
            if not marker:
                continue
            following = lines[i + 1].strip() if i + 1 < len(lines) else ""
            if not re.fullmatch(r"```(bash|python)\b.*", following):
                problems.append(f"{name(doc)}:{i + 1}: the marker is not right before a ```bash or ```python fence")
            if not marker.group("reason").strip():
                problems.append(f"{name(doc)}:{i + 1}: the marker gives no reason")
    assert not problems, "\n".join(problems)


def cells(row: str) -> int:
    """The cells of a table row as GitHub counts them: a pipe splits unless it is escaped, even in code."""
    return row.strip().replace("\\|", "").strip("|").count("|") + 1


def test_every_table_renders():
    """No row cut off from its table (a blank or stray line inside it), a separator under every header, and
    as many cells in each row as in its header."""
    problems = []
    for doc in DOCS:
        table, in_fence = [], False
        for number, text in enumerate([*doc.read_text().splitlines(), ""], start=1):
            if text.lstrip().startswith(("```", "~~~")):
                in_fence = not in_fence
            if not in_fence and text.lstrip().startswith("|"):
                table.append((number, text))
                continue
            if table:
                first, header = table[0]
                if len(table) < 2 or not re.fullmatch(r"\s*\|?(\s*:?-+:?\s*\|)*\s*:?-+:?\s*\|?\s*", table[1][1]):
                    problems.append(f"{name(doc)}:{first}: rows outside a table (no header and separator above)")
                else:
                    problems += [f"{name(doc)}:{n}: {cells(row)} cells, its header has {cells(header)}"
                                 for n, row in table if cells(row) != cells(header)]
                    problems += [f"{name(doc)}:{n}: an escaped pipe in code (MkDocs shows the backslash)"
                                 for n, row in table if re.search(r"`[^`]*\\\|[^`]*`", row)]
                table = []
    assert not problems, "\n".join(problems)


def test_the_readme_is_short():
    lines = len(README.read_text().splitlines())
    assert lines <= README_MAX_LINES, f"README.md has {lines} lines: move the detail into docs/"


def anchors(doc: Path) -> set[str]:
    """The ids MkDocs gives a page's headings (Python-Markdown's toc slugify, made unique as toc does)."""
    from markdown.extensions.toc import slugify

    text = FENCE.sub("", doc.read_text())
    seen: dict[str, int] = {}
    ids = set()
    for heading in re.findall(r"^#{1,6}\s+(.+?)\s*#*\s*$", text, re.M):
        plain = re.sub(r"[`*_]|\[([^]]*)\]\([^)]*\)", r"\1", heading)
        slug = slugify(plain, "-")
        ids.add(slug if slug not in seen else f"{slug}_{seen[slug]}")
        seen[slug] = seen.get(slug, 0) + 1
    return ids


def test_the_readme_links_resolve():
    """README.md is not part of the site, so MkDocs does not check it: its relative links (and their anchors)
    are checked here."""
    text = FENCE.sub("", README.read_text())
    problems = []
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):
            continue
        path, _, anchor = target.partition("#")
        file = (REPO / path) if path else README
        if not file.exists():
            problems.append(f"{target}: no such file")
        elif anchor and file.suffix == ".md" and anchor not in anchors(file):
            problems.append(f"{target}: no heading with that anchor in {path or 'README.md'}")
    assert not problems, "\n".join(problems)


def test_the_site_builds_strictly(tmp_path):
    """`mkdocs build --strict`: a broken link or anchor, a page missing from the nav or a nav entry without its
    page is an error; and no table row comes out as a paragraph."""
    build = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file",
                            str(REPO / "mkdocs.yml"), "--site-dir", str(tmp_path / "site")],
                           cwd=REPO, capture_output=True, text=True, timeout=300)
    assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:]
    pages = {p.relative_to(tmp_path / "site") for p in (tmp_path / "site").rglob("index.html")}
    for doc in sorted((REPO / "docs").glob("*.md")):
        page = Path("index.html") if doc.stem == "index" else Path(doc.stem) / "index.html"
        assert page in pages, f"{name(doc)} was not built"
        html = (tmp_path / "site" / page).read_text()
        assert not re.search(r"<p>\s*\|", html), f"{name(doc)}: a table row rendered outside its table"
