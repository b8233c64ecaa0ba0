"""The documentation stays true: links resolve, the README stays short and holds CI's commands.

- every relative link in README.md and docs/*.md (``[text](path)``, ``[text](path#anchor)``,
  ``[text](#anchor)``, images, reference definitions) points at a file or folder that exists, and
  an anchor into a Markdown file is one of its GitHub-style heading slugs;
- every ``*.md`` file named in the project's configuration files (deployments.toml, prefect.toml,
  prefect.yaml, pyproject.toml) exists;
- README.md has at most 220 lines;
- README.md contains the set-up and test commands that .ci/run runs (CI runs them on a clean clone,
  so the README's commands are proven), and the main job's command.

Pure text checks: no ganlib import, well under a second.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
MARKDOWN_FILES = [README, *sorted((REPO / "docs").glob("*.md"))]
CONFIG_FILES = ["deployments.toml", "prefect.toml", "prefect.yaml", "pyproject.toml"]
README_MAX_LINES = 220
CI_SCRIPT = REPO / ".ci" / "run"
CI_COMMAND_PREFIXES = ("python3 -m venv", ".venv/bin/python -m pytest")
MAIN_JOB = ".venv/bin/python flows/train.py"

FENCE = re.compile(r"^\s*(```|~~~)")
INLINE_LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+[\"'(][^)]*)?\)")
REFERENCE_DEF = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+.*)?$")
CODE_SPAN = re.compile(r"(`+)(.+?)\1")
HEADING = re.compile(r"^\s{0,3}(#{1,6})\s+(.*?)\s*#*\s*$")
HTML_ANCHOR = re.compile(r"<a\s+[^>]*(?:name|id)\s*=\s*[\"']([^\"']+)[\"']", re.IGNORECASE)
SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")
MD_MENTION = re.compile(r"(?<![\w./-])((?:[\w.-]+/)*[\w.-]+\.md)\b")


def prose_lines(text: str) -> list[tuple[int, str]]:
    """(line number, line) outside fenced code blocks."""
    out, fenced = [], False
    for number, line in enumerate(text.splitlines(), 1):
        if FENCE.match(line):
            fenced = not fenced
            continue
        if not fenced:
            out.append((number, line))
    return out


def links(path: Path) -> list[tuple[int, str]]:
    """(line number, target) of every link in a Markdown file, outside code blocks and code spans."""
    found = []
    for number, line in prose_lines(path.read_text(encoding="utf-8")):
        line = CODE_SPAN.sub("", line)
        found += [(number, m.group(1)) for m in INLINE_LINK.finditer(line)]
        ref = REFERENCE_DEF.match(line)
        if ref:
            found.append((number, ref.group(1)))
    return found


def github_slug(heading: str) -> str:
    """The anchor GitHub gives a heading: its text, lowercased, punctuation dropped, spaces to '-'."""
    parts = []
    for i, piece in enumerate(CODE_SPAN.split(heading)):
        # CODE_SPAN.split yields text, backticks, code, text, backticks, code, ...
        if i % 3 == 1:
            continue
        if i % 3 == 2:
            parts.append(piece)  # code is kept as written (underscores included)
            continue
        piece = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", piece)  # links and images: their text
        piece = re.sub(r"<[^>]+>", "", piece)  # HTML tags
        piece = re.sub(r"(?<!\w)[*_]+|[*_]+(?!\w)", "", piece)  # emphasis markers
        parts.append(piece)
    text = "".join(parts).strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Every anchor a Markdown file offers: heading slugs (with GitHub's -1, -2 for repeats), HTML ids."""
    seen: dict[str, int] = {}
    found = set()
    text = path.read_text(encoding="utf-8")
    for _, line in prose_lines(text):
        m = HEADING.match(line)
        if m:
            slug = github_slug(m.group(2))
            if slug in seen:
                seen[slug] += 1
                slug = f"{slug}-{seen[slug]}"
            else:
                seen[slug] = 0
            found.add(slug)
        found.update(a.lower() for a in HTML_ANCHOR.findall(line))
    return found


def broken_link(source: Path, target: str) -> str | None:
    """Why a link target does not resolve, or None when it does (or is not a relative link)."""
    if SCHEME.match(target) or target.startswith("//"):
        return None  # http:, https:, mailto:, ...
    path_part, _, anchor = target.partition("#")
    path_part = path_part.split("?", 1)[0]
    if path_part.startswith("/"):
        return "absolute path (use a path relative to the file)"
    resolved = (source.parent / path_part).resolve() if path_part else source
    if not resolved.is_relative_to(REPO):
        return "points outside the repository"
    if not resolved.exists():
        return f"{resolved.relative_to(REPO)} does not exist"
    if anchor and resolved.suffix == ".md" and resolved.is_file():
        if anchor.lower() not in anchors(resolved):
            return f"{resolved.relative_to(REPO)} has no heading with anchor #{anchor}"
    return None


@pytest.mark.parametrize("doc", MARKDOWN_FILES, ids=lambda p: str(p.relative_to(REPO)))
def test_relative_links_and_anchors_resolve(doc: Path) -> None:
    problems = [f"{doc.relative_to(REPO)}:{number}: ({target}) {why}"
                for number, target in links(doc) if (why := broken_link(doc, target))]
    assert not problems, "broken links:\n" + "\n".join(problems)


@pytest.mark.parametrize("name", CONFIG_FILES)
def test_markdown_files_named_in_config_files_exist(name: str) -> None:
    config = REPO / name
    if not config.is_file():
        pytest.skip(f"{name} is not in this checkout")
    missing = [f"{name}:{number}: {mention}"
               for number, line in enumerate(config.read_text(encoding="utf-8").splitlines(), 1)
               for mention in MD_MENTION.findall(line)
               if not (REPO / mention).is_file()]
    assert not missing, "files named but missing:\n" + "\n".join(missing)


def test_readme_is_short() -> None:
    lines = len(README.read_text(encoding="utf-8").splitlines())
    assert lines <= README_MAX_LINES, (
        f"README.md has {lines} lines (at most {README_MAX_LINES}): move the details into docs/")


def test_readme_holds_the_commands_ci_runs() -> None:
    readme = README.read_text(encoding="utf-8")
    commands = [line.strip() for line in CI_SCRIPT.read_text(encoding="utf-8").splitlines()
                if line.strip().startswith(CI_COMMAND_PREFIXES)]
    for prefix in CI_COMMAND_PREFIXES:
        assert any(c.startswith(prefix) for c in commands), f".ci/run has no command starting {prefix!r}"
    missing = [c for c in [*commands, MAIN_JOB] if c not in readme]
    assert not missing, "README.md lacks these commands, verbatim:\n" + "\n".join(missing)


def test_a_plain_pytest_leaves_the_stress_tier_to_its_own_command() -> None:
    import shlex

    line = next(x for x in (REPO / "pyproject.toml").read_text().splitlines() if x.startswith("addopts = "))
    addopts = shlex.split(shlex.split(line.removeprefix("addopts = "))[0])  # (3.10 has no tomllib)
    assert addopts[addopts.index("-m") + 1] == "not stress"  # a later -m (the quick subset, the tier) replaces it
    assert ".venv/bin/python -m pytest -m stress" in CI_SCRIPT.read_text(encoding="utf-8")


def test_slugs_follow_github() -> None:
    # The checker itself, on headings whose GitHub anchors are known.
    assert github_slug("Set up, test, run") == "set-up-test-run"
    assert github_slug("What a run leaves in `artifacts/<run-id>/`") == "what-a-run-leaves-in-artifactsrun-id"
    assert github_slug("Evaluation time (`bench/eval_speed.py`, issue #9)") == (
        "evaluation-time-bencheval_speedpy-issue-9")
    assert github_slug("Dataset preparation (`bench/prepare.py`: a folder of 32×32 PNGs)") == (
        "dataset-preparation-benchpreparepy-a-folder-of-3232-pngs")
    assert github_slug("**Bold** and [a link](x.md)") == "bold-and-a-link"


@pytest.mark.slow
def test_the_readme_python_example_runs(tmp_path, monkeypatch) -> None:
    """The README's Python API example, run as written but with a tiny config (seconds, not minutes)."""
    text = (REPO / "README.md").read_text()
    code = text.split("## The Python API", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
    config = '{"run_id": "nb", "train": {"steps": 500}}'
    assert config in code, "the example's config changed: update this test's stand-in"
    tiny = ('{"run_id": "nb", "device": "cpu", "data": {"num_images": 400}, "train": {"steps": 12, '
            '"batch_size": 32, "checkpoint_every": 6}, "eval": {"num_samples": 200, "classifier_steps": 30, '
            '"batch_size": 100}}')
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(code.replace(config, tiny), "README.md", "exec"), namespace)  # noqa: S102
    assert tuple(namespace["images"].shape) == (16, 1, 28, 28)
    assert namespace["meta"]["weights"] == "ema" and namespace["result"].final_step == 12
