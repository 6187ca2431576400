"""README.md and docs/: the generated tables are current, the README is a front door, links resolve."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from rlhf_bench.report import docs


def _repo_root() -> Path:
    for parent in Path(__file__).resolve().parents:
        if (parent / "pyproject.toml").is_file() and (parent / "conf").is_dir():
            return parent
    raise RuntimeError("the repository root (pyproject.toml + conf/) was not found above this test")


ROOT = _repo_root()
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
FENCE = re.compile(r"^```.*?^```", re.DOTALL | re.MULTILINE)
LINK = re.compile(r"\[[^\]]*\]\(\s*([^)\s]+)(?:\s+\"[^\"]*\")?\s*\)")


def _copy_sources(dest: Path) -> Path:
    """What render_docs reads and writes: conf/, results/published/, results/benchmarks/, docs/ and README.md."""
    for rel in ("conf", "results/published", "results/benchmarks", "docs"):
        shutil.copytree(ROOT / rel, dest / rel)
    shutil.copy(ROOT / "README.md", dest / "README.md")
    return dest


def _blank_blocks(text: str) -> str:
    return docs.MARKER.sub(lambda m: f"<!-- generated: {m[1]} -->\n{docs.END}", text)


def test_committed_docs_are_generated():
    """(a) Editing conf/, results/published/ or docs/data/verdicts.yaml needs `make docs`."""
    stale = [
        str(path.relative_to(ROOT))
        for path, text in docs.render_docs(ROOT).items()
        if path.read_text(encoding="utf-8") != text
    ]
    assert not stale, f"{', '.join(stale)}: out of date; run `make docs` (python -m rlhf_bench.report.docs)"


def test_readme_is_a_front_door():
    """(b) Under 200 lines; the rest lives in docs/."""
    lines = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(lines) < 200, f"README.md has {len(lines)} lines; move detail into docs/"


def _slug(heading: str) -> str:
    """GitHub's anchor of a heading."""
    text = heading.strip().lower().replace("`", "")
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    text = FENCE.sub("", path.read_text(encoding="utf-8"))
    return {_slug(m[1]) for m in re.finditer(r"^#{1,6}\s+(.+?)\s*#*\s*$", text, re.MULTILINE)}


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(page):
    """(c) Every relative link of README.md and docs/ names an existing file (and heading)."""
    text = FENCE.sub("", page.read_text(encoding="utf-8"))
    broken = []
    for target in LINK.findall(text):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # https:, mailto: ...
            continue
        file_part, _, anchor = target.partition("#")
        resolved = (page.parent / file_part).resolve() if file_part else page
        if not resolved.exists():
            broken.append(f"{target} (no {resolved})")
        elif anchor and resolved.suffix == ".md" and anchor not in _anchors(resolved):
            broken.append(f"{target} (no heading #{anchor} in {resolved.name})")
    assert not broken, f"{page.relative_to(ROOT)}: broken links: {'; '.join(broken)}"


def test_every_readme_section_page_is_linked_from_the_readme():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    unlinked = [p.name for p in sorted((ROOT / "docs").glob("*.md")) if f"](docs/{p.name}" not in readme]
    assert not unlinked, f"docs pages the README does not link: {unlinked}"


def test_render_is_idempotent(tmp_path):
    """(d) Rendering rendered docs changes nothing, and the tables do not depend on what the
    blocks held before."""
    root = _copy_sources(tmp_path)
    first = docs.render_docs(root)
    for path, text in first.items():
        path.write_text(text, encoding="utf-8")
    assert docs.render_docs(root) == first
    for path in first:
        path.write_text(_blank_blocks(path.read_text(encoding="utf-8")), encoding="utf-8")
    assert docs.render_docs(root) == first


def _config_table_rows() -> list[tuple[str, str, str]]:
    """(group, option, description) from the generated block of docs/config.md."""
    text = (ROOT / "docs" / "config.md").read_text(encoding="utf-8")
    block = next(m[2] for m in docs.MARKER.finditer(text) if m[1] == "config-groups")
    rows, group = [], None
    for line in block.splitlines():
        cells = [c.strip() for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]]
        if len(cells) != 3 or cells[0] == "group" or re.fullmatch(r"-+", cells[0]):
            continue
        group = cells[0].strip("`") or group
        option = re.match(r"`([^`]+)`", cells[1])
        rows.append((group, option[1] if option else cells[1], cells[2]))
    return rows


def test_config_table_lists_every_option_file():
    """(e) Checked against the file system, not the generator: every conf/<group>/<option>.yaml
    but hydra's is one row with a description, and nothing else is."""
    on_disk = {
        (group.name, path.stem)
        for group in (ROOT / "conf").iterdir()
        if group.is_dir() and group.name != "hydra"
        for path in group.glob("*.yaml")
    }
    rows = _config_table_rows()
    listed = [(g, o) for g, o, _ in rows]
    assert len(listed) == len(set(listed)), "an option is listed twice"
    assert set(listed) == on_disk, (
        f"missing from docs/config.md: {sorted(on_disk - set(listed))}; not in conf/: {sorted(set(listed) - on_disk)}"
    )
    for group in ("task", "model", "method", "reward_model", "eval", "logger", "experiment"):
        assert any(g == group for g, _ in listed), f"config group {group} is not in the table"
    assert all(desc for _, _, desc in rows), "an option without a description"
    for group, option in sorted(on_disk):
        first = (ROOT / "conf" / group / f"{option}.yaml").read_text(encoding="utf-8").lstrip()
        assert first.startswith("#"), f"conf/{group}/{option}.yaml does not start with a # comment"


def test_description_is_the_first_comment_paragraph(tmp_path):
    path = tmp_path / "x.yaml"
    path.write_text("# @package _global_\n# One thing (a, b. C) here.\n# Second line.\n#   cmd\n# later\nk: 1\n")
    assert docs.describe(path) == "One thing (a, b. C) here. Second line."
    path.write_text("# " + "word " * 70 + "end. Next sentence.\n")
    assert docs.describe(path).endswith("end.")


def test_check_names_the_stale_files(tmp_path, capsys):
    root = _copy_sources(tmp_path)
    (root / "conf" / "method" / "zz_new.yaml").write_text("# A new method, for the test.\nname: zz_new\n")
    assert docs.main(["--root", str(root), "--check"]) == 1
    assert "docs/config.md" in capsys.readouterr().err
    assert docs.main(["--root", str(root)]) == 0
    assert "`zz_new`" in (root / "docs" / "config.md").read_text(encoding="utf-8")
    assert docs.main(["--root", str(root), "--check"]) == 0


def test_missing_marker_is_an_error(tmp_path):
    root = _copy_sources(tmp_path)
    (root / "docs" / "config.md").write_text("# Configuration\n\nno table\n")
    with pytest.raises(docs.DocsError, match="config-groups"):
        docs.render_docs(root)


def test_run_verdicts_are_read_only_when_asked(tmp_path):
    """By default the docs come from committed files alone; --repro-results adds newer verdicts."""
    root = _copy_sources(tmp_path)
    verdict = {
        "name": "rm_scaling",
        "verdict": "FAIL",
        "quick": False,
        "created": "2030-01-01T00:00:00+00:00",
        "checks": [{"name": "monotone in data", "passed": False}, {"name": "ceiling", "passed": True}],
        "git": {"sha": "abcdef0123456789", "dirty": False},
    }
    folder = root / "results" / "repro" / "rm_scaling"
    folder.mkdir(parents=True)
    (folder / "20300101-000000.json").write_text(json.dumps(verdict))
    assert docs.render_docs(root) == {
        root / rel: text for rel, text in ((p.relative_to(ROOT), t) for p, t in docs.render_docs(ROOT).items())
    }
    with_runs = docs.render_docs(root, results_dir=root / "results")[root / "docs" / "reproductions.md"]
    row = next(line for line in with_runs.splitlines() if "rlhf-bench-repro rm_scaling" in line)
    assert "**FAIL 1/2**" in row and "monotone in data" in row
