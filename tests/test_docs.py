"""The README and docs/ hold together: every relative link and anchor resolves, and the README stays short.

Links are found as GitHub renders them: `[text](target)`, `![alt](target)`, `[label]: target` and
`<img src="target">`, never inside fenced code blocks or inline code. Anchors are the GitHub slugs of the
target's headings (github-slugger's rule: lowercase, punctuation dropped except `-` and `_`, each space a
`-`, a repeated slug suffixed `-1`, `-2`...), plus explicit `<a name>` / `id` anchors.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote

import pytest

ROOT = Path(__file__).resolve().parents[1]
README_MAX_LINES = 320
SKIPPED_DIRS = ("node_modules", ".git")
SKIPPED_PREFIXES = (".venv", ".aws-sam")

FENCE = re.compile(r"^[ \t]*(`{3,}|~{3,})(.*)$")  # any indent: fences inside list items count too
ATX_HEADING = re.compile(r"^ {0,3}(#{1,6})(?:[ \t]+(.*?))?(?:[ \t]+#+)?[ \t]*$")
SETEXT_UNDERLINE = re.compile(r"^ {0,3}(=+|-+)[ \t]*$")
# A code span: a run of backticks, the shortest text up to the same run, never across a blank line.
CODE_SPAN = re.compile(r"(?<!`)(`+)(?!`)((?:(?!\n[ \t]*\n).)+?)(?<!`)\1(?!`)", re.DOTALL)
# Link text may hold one level of brackets; the destination is `<...>` or has no spaces, then an optional title.
INLINE_LINK = re.compile(
    r"!?\[(?:[^\[\]]|\[[^\[\]]*\])*\]\(\s*(?:<([^<>\n]*)>|([^\s()]+))(?:\s+(?:\"[^\"]*\"|'[^']*'|\([^()]*\)))?\s*\)"
)
REFERENCE_DEFINITION = re.compile(r"^ {0,3}\[[^\]]+\]:[ \t]*<?([^\s>]+)>?", re.MULTILINE)
IMG_SRC = re.compile(r"<img\b[^>]*?\bsrc\s*=\s*([\"'])(.*?)\1", re.IGNORECASE | re.DOTALL)
HTML_ANCHOR = re.compile(r"<[a-z][^>]*?\b(?:name|id)\s*=\s*([\"'])(.*?)\1", re.IGNORECASE)
SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")
LINE_ANCHOR = re.compile(r"^L\d+(?:-L\d+)?$")
MARKDOWN_LINK_TEXT = re.compile(r"!?\[((?:[^\[\]]|\[[^\[\]]*\])*)\]\([^)]*\)")
HTML_TAG = re.compile(r"<[^>]+>")


@dataclass(frozen=True)
class Link:
    source: Path
    line: int
    target: str

    def where(self, root: Path) -> str:
        return f"{self.source.relative_to(root)}:{self.line}: ({self.target})"


def markdown_files(root: Path) -> list[Path]:
    """The repository's own Markdown: `*.md` at the root and under `docs/` (no venvs, builds, packages)."""
    found = sorted(root.glob("*.md"))
    docs = root / "docs"
    if docs.is_dir():
        found += sorted(docs.rglob("*.md"))

    def kept(path: Path) -> bool:
        parts = path.relative_to(root).parts[:-1]
        return not any(part in SKIPPED_DIRS or part.startswith(SKIPPED_PREFIXES) for part in parts)

    return [path for path in found if path.is_file() and kept(path)]


def without_code_blocks(text: str) -> list[str]:
    """The lines of `text`, each line of a fenced code block (fences included) blanked; line numbers kept."""
    lines = text.split("\n")
    out: list[str] = []
    fence: str | None = None
    for line in lines:
        match = FENCE.match(line)
        if fence is None:
            if match and not (match.group(1)[0] == "`" and "`" in match.group(2)):
                fence = match.group(1)
                out.append("")
                continue
            out.append(line)
        else:
            if (
                match
                and match.group(1)[0] == fence[0]
                and len(match.group(1)) >= len(fence)
                and not match.group(2).strip()
            ):
                fence = None
            out.append("")
    return out


def without_code(text: str) -> str:
    """`text` with fenced code blocks and code spans blanked, every newline kept (offsets map to the same lines)."""
    prose = "\n".join(without_code_blocks(text))
    return CODE_SPAN.sub(lambda span: re.sub(r"[^\n]", " ", span.group(0)), prose)


def links_in(path: Path) -> list[Link]:
    prose = without_code(path.read_text(encoding="utf-8"))

    def line_of(offset: int) -> int:
        return prose.count("\n", 0, offset) + 1

    found: list[tuple[int, str]] = []
    for match in INLINE_LINK.finditer(prose):
        found.append((match.start(), match.group(1) if match.group(1) is not None else match.group(2)))
    for match in REFERENCE_DEFINITION.finditer(prose):
        found.append((match.start(1), match.group(1)))
    for match in IMG_SRC.finditer(prose):
        found.append((match.start(2), match.group(2)))
    return [Link(path, line_of(offset), target.strip()) for offset, target in sorted(found)]


def github_slug(heading: str) -> str:
    """github-slugger's slug of a heading's text, before the duplicate suffix."""
    text = MARKDOWN_LINK_TEXT.sub(lambda match: match.group(1), heading)
    text = HTML_TAG.sub("", text).strip().lower()
    kept = "".join(char for char in text if char in " -_" or unicodedata.category(char)[0] in "LMN")
    return kept.replace(" ", "-")


class Slugger:
    """Slugs in document order, a repeated one suffixed as github-slugger does (`x`, `x-1`, `x-2`...)."""

    def __init__(self) -> None:
        self.occurrences: dict[str, int] = {}

    def slug(self, heading: str) -> str:
        original = slug = github_slug(heading)
        while slug in self.occurrences:
            self.occurrences[original] += 1
            slug = f"{original}-{self.occurrences[original]}"
        self.occurrences[slug] = 0
        return slug


def headings_of(text: str) -> list[str]:
    """The text of every ATX and setext heading outside code blocks, in order."""
    lines = without_code_blocks(text)
    headings: list[str] = []
    paragraph: list[str] = []
    for line in lines:
        atx = ATX_HEADING.match(line)
        if atx:
            headings.append(atx.group(2) or "")
            paragraph = []
        elif SETEXT_UNDERLINE.match(line) and paragraph:
            headings.append(" ".join(part.strip() for part in paragraph))
            paragraph = []
        elif not line.strip() or re.match(r"^ {0,3}([-*+>|]|\d+[.)])", line):
            paragraph = []
        else:
            paragraph.append(line)
    return headings


def anchors_of(path: Path) -> set[str]:
    text = path.read_text(encoding="utf-8")
    slugger = Slugger()
    anchors = {slugger.slug(heading) for heading in headings_of(text)}
    anchors |= {match.group(2) for match in HTML_ANCHOR.finditer("\n".join(without_code_blocks(text)))}
    return anchors


def broken_links(paths: list[Path], root: Path) -> list[str]:
    """One line per relative link that does not resolve: `file:line: (target): why`."""
    problems: list[str] = []
    anchors: dict[Path, set[str]] = {}
    for path in paths:
        for link in links_in(path):
            if not link.target or SCHEME.match(link.target) or link.target.startswith("//"):
                continue  # http(s), mailto and other absolute URLs are not checked here
            file_part, _, anchor = link.target.partition("#")
            file_part = file_part.split("?", 1)[0]
            target = (path.parent / unquote(file_part)).resolve() if file_part else path.resolve()
            if not target.is_relative_to(root.resolve()):
                problems.append(f"{link.where(root)}: points outside the repository")
                continue
            if not target.exists():
                problems.append(f"{link.where(root)}: no file {target.relative_to(root.resolve())}")
                continue
            if not anchor:
                continue
            anchor = unquote(anchor)
            if target.suffix.lower() != ".md":
                if not LINE_ANCHOR.match(anchor):
                    problems.append(f"{link.where(root)}: #{anchor} on a file that is not Markdown")
                continue
            if target not in anchors:
                anchors[target] = anchors_of(target)
            if anchor not in anchors[target]:
                problems.append(
                    f"{link.where(root)}: no heading with anchor #{anchor} in {target.relative_to(root.resolve())}"
                )
    return problems


def test_every_relative_link_and_anchor_resolves() -> None:
    paths = markdown_files(ROOT)
    assert ROOT / "README.md" in paths
    assert any(path.parent == ROOT / "docs" for path in paths), "no page in docs/"
    problems = broken_links(paths, ROOT)
    assert not problems, "broken links:\n" + "\n".join(problems)


def test_readme_is_short() -> None:
    count = len((ROOT / "README.md").read_text(encoding="utf-8").splitlines())
    assert count <= README_MAX_LINES, (
        f"README.md has {count} lines (at most {README_MAX_LINES}): move reference to docs/"
    )


def test_readme_links_every_docs_page() -> None:
    readme = ROOT / "README.md"
    linked = {
        (ROOT / unquote(link.target.partition("#")[0])).resolve()
        for link in links_in(readme)
        if not SCHEME.match(link.target)
    }
    pages = {path.resolve() for path in (ROOT / "docs").glob("*.md")}
    assert pages <= linked, (
        f"docs pages README does not link: {sorted(str(p.relative_to(ROOT)) for p in pages - linked)}"
    )


@pytest.mark.parametrize(
    ("headings", "expected"),
    [
        (["Where the results come from (`WebhookResultSource`)"], ["where-the-results-come-from-webhookresultsource"]),
        (["Project layout: where to change what"], ["project-layout-where-to-change-what"]),
        (["A million images a day, on paper"], ["a-million-images-a-day-on-paper"]),
        (["The local stack and the `xasync` CLI"], ["the-local-stack-and-the-xasync-cli"]),
        (["dal/writes.py and snake_case"], ["dalwritespy-and-snake_case"]),
        (["Links [in](x.md) *headings*"], ["links-in-headings"]),
        (["Naïve café"], ["naïve-café"]),
        (["Cost", "Cost", "Cost"], ["cost", "cost-1", "cost-2"]),
        (["Cost-1", "Cost", "Cost"], ["cost-1", "cost", "cost-2"]),
    ],
)
def test_github_slugs(headings: list[str], expected: list[str]) -> None:
    slugger = Slugger()
    assert [slugger.slug(heading) for heading in headings] == expected


def test_checker_reports_broken_links_and_anchors(tmp_path: Path) -> None:
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "page.md").write_text(
        '# Page\n\n## Cost\n\n## Cost\n\n```bash\n# Not a heading\n```\n\n<a name="custom"></a>\n',
        encoding="utf-8",
    )
    (tmp_path / "README.md").write_text(
        "\n".join(
            [
                "# Title",  # 1
                "[fine](docs/page.md) [fine too](docs/page.md#cost-1) ![img](docs/page.md) [self](#title)",  # 2
                "[gone](docs/missing.md)",  # 3
                "[bad anchor](docs/page.md#costs)",  # 4
                '<img src="docs/nowhere.png">',  # 5
                "[custom](docs/page.md#custom) [web](https://example.com/x.md) [mail](mailto:a@b.c)",  # 6
                "```",
                "[in a fence](docs/missing.md)",
                "```",
                "`[inline code](docs/missing.md)` and ``a `[nested](docs/missing.md)` span``",  # 10
                "[not a heading](docs/page.md#not-a-heading) [outside](../elsewhere.md)",  # 11
                "[split",  # 12
                "text](docs/page.md#no-such) [self missing](#nope)",  # 13
            ]
        )
        + "\n",
        encoding="utf-8",
    )
    problems = broken_links(markdown_files(tmp_path), tmp_path)
    assert problems == [
        "README.md:3: (docs/missing.md): no file docs/missing.md",
        "README.md:4: (docs/page.md#costs): no heading with anchor #costs in docs/page.md",
        "README.md:5: (docs/nowhere.png): no file docs/nowhere.png",
        "README.md:11: (docs/page.md#not-a-heading): no heading with anchor #not-a-heading in docs/page.md",
        "README.md:11: (../elsewhere.md): points outside the repository",
        "README.md:12: (docs/page.md#no-such): no heading with anchor #no-such in docs/page.md",
        "README.md:13: (#nope): no heading with anchor #nope in README.md",
    ]


def test_markdown_files_skip_venvs_and_builds(tmp_path: Path) -> None:
    for folder in ("docs", "docs/.venv-x", "docs/node_modules", "docs/.aws-sam-rie"):
        (tmp_path / folder).mkdir(parents=True, exist_ok=True)
        (tmp_path / folder / "a.md").write_text("# A\n", encoding="utf-8")
    (tmp_path / "README.md").write_text("# R\n", encoding="utf-8")
    assert markdown_files(tmp_path) == [tmp_path / "README.md", tmp_path / "docs" / "a.md"]
