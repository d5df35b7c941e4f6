"""MkDocs hook: files of the repository outside docs/ that a page links to are part of the site.

The pages link to such files the way a code host shows them, relatively (`../k8s/README.md` from a page in
docs/). On a build, each such target that exists is added to the site at its repository path (a Markdown file
as a page, which the nav may list; anything else copied as it is) and the link is pointed at it; a target that
does not exist is left alone, so MkDocs reports it (and `mkdocs build --strict` fails)."""

from __future__ import annotations

import posixpath
import re
from pathlib import Path

from mkdocs.structure.files import File, InclusionLevel

# An inline link or image target, up to an optional title: ](target) or ](target "title").
LINK = re.compile(r"(\]\()([^)\s]+)((?:\s+\"[^\"]*\")?\))")
FENCE = re.compile(r"^(```|~~~).*?^\1", re.S | re.M)


def _repo_path(target: str, page_uri: str) -> str | None:
    """The repository path of a relative link from page_uri that leaves docs/, else None."""
    if re.match(r"^[a-z][a-z0-9+.-]*:", target) or target.startswith(("/", "#")):
        return None
    path = target.split("#", 1)[0]
    joined = posixpath.normpath(posixpath.join(posixpath.dirname(page_uri), path))
    return joined[3:] if joined.startswith("../") else None


def _targets(markdown: str, page_uri: str):
    text = FENCE.sub("", markdown)
    for match in LINK.finditer(text):
        repo_path = _repo_path(match.group(2), page_uri)
        if repo_path:
            yield repo_path


def on_files(files, config):
    docs = Path(config["docs_dir"])
    root = docs.parent
    wanted = set()
    for page in list(files.documentation_pages()):
        if page.inclusion.is_excluded():
            continue
        wanted.update(_targets(Path(page.abs_src_path).read_text(encoding="utf-8"), page.src_uri))
    for repo_path in sorted(wanted):
        source = (root / repo_path).resolve()
        if (source.is_file() and root.resolve() in source.parents and docs.resolve() not in source.parents
                and files.get_file_from_path(repo_path) is None):
            files.append(File.generated(config, repo_path, abs_src_path=str(source), inclusion=InclusionLevel.INCLUDED))
    return files


def on_page_markdown(markdown, page, config, files):
    def point(match):
        repo_path = _repo_path(match.group(2), page.file.src_uri)
        if repo_path is None or files.get_file_from_path(repo_path) is None:
            return match.group(0)
        anchor = match.group(2)[len(match.group(2).split("#", 1)[0]):]
        relative = posixpath.relpath(repo_path, posixpath.dirname(page.file.src_uri) or ".")
        return f"{match.group(1)}{relative}{anchor}{match.group(3)}"

    # Fenced code is left as it is: split around it.
    parts, last = [], 0
    for fence in FENCE.finditer(markdown):
        parts.append(LINK.sub(point, markdown[last:fence.start()]))
        parts.append(fence.group(0))
        last = fence.end()
    parts.append(LINK.sub(point, markdown[last:]))
    return "".join(parts)
