"""The README and the docs site: short, built strictly, every code block run, every table rendered
from its results file, links inside the repository, and no narration anywhere in the project.

Code blocks. Each page's `python` and `bash` blocks run in order in one fresh folder (a page reads
as one session at a shell). `visionloom` commands run in this process through the CLI; `mkdir`,
`cp` and `ls` run as they are. A block preceded by `<!-- not run: REASON -->` (real data, real
weights, a long run) is parsed instead: each command's options are checked against the command's
own parser and every config it names is loaded with its `--set` values. `<!-- expect: exit N -->`
says a block's commands must fail with exit status N (an example of a refusal).
"""

from __future__ import annotations

import io
import json
import re
import shlex
import subprocess
import sys
import tokenize
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
PAGES = [ROOT / "README.md", *sorted(DOCS.rglob("*.md"))]
RESULTS = DOCS / "results"


def page_id(page: Path) -> str:
    return str(page.relative_to(ROOT))


# ----------------------------------------------------------------------------------------------- links
@pytest.mark.parametrize("document", PAGES, ids=page_id)
def test_links_stay_inside_the_repository(document):
    text = document.read_text()
    assert "../shared" not in text
    for target in re.findall(r"\]\(([^)#]+)\)", text):
        if "://" in target:
            continue
        path = (document.parent / target).resolve()
        assert path.is_relative_to(ROOT) and path.exists(), f"{document.name} links to {target}"


def test_what_the_readme_commands_write_is_ignored_by_git():
    if not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    paths = ["data/scenes/annotations.json", "ckpt/qwen/config.json", "grid.png", "runs/demo/table.md"]
    out = subprocess.run(["git", "check-ignore", *paths], cwd=ROOT, capture_output=True, text=True)
    assert out.stdout.split() == paths
    kept = subprocess.run(
        ["git", "check-ignore", "src/visionloom/data/pedes.py"], cwd=ROOT, capture_output=True
    )
    assert kept.returncode == 1  # the package's own data/ is not ignored


def test_the_readme_is_short_and_starts_with_the_two_commands():
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= 200, f"README.md has {len(lines)} lines; the docs site holds the rest"
    first_block = lines[lines.index("```bash") + 1 : lines.index("```bash") + 3]
    assert first_block == [
        "bash scripts/setup.sh && .venv/bin/visionloom demo",
        "bash scripts/setup.sh && .venv/bin/python -m pytest -q",
    ]
    ci = (ROOT / ".ci" / "run").read_text()
    assert "bash scripts/setup.sh && .venv/bin/python -m pytest -q" in ci


# ------------------------------------------------------------------------------------------- the site
def test_the_docs_site_builds_strictly(tmp_path):
    """Broken links, unresolved API references and pages missing from the nav fail the build."""
    built = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert built.returncode == 0, built.stderr[-3000:]
    api = (tmp_path / "site" / "api" / "layer" / "index.html").read_text()
    for documented in (
        "build_inputs",
        "encode_images",
        "MultimodalInputs",
        "VisionTokens",
        "ImageTokenMismatch",
    ):
        assert documented in api, f"the API reference lost {documented}"


# -------------------------------------------------------------------------------------------- results
def _renderer():
    import importlib.util

    spec = importlib.util.spec_from_file_location("render_results", ROOT / "scripts" / "render_results.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_results_tables_are_what_the_results_files_give():
    render = _renderer()
    stale = [page_id(page) for page in render.pages() if render.rendered(page) != page.read_text()]
    assert not stale, f"run scripts/render_results.py: these pages differ from docs/results/: {stale}"


def test_a_changed_results_file_makes_its_page_stale(tmp_path, monkeypatch):
    render = _renderer()
    copy = tmp_path / "results"
    copy.mkdir()
    record = json.loads((RESULTS / "benchmarks" / "one_pass.json").read_text())
    record["figures"]["ratio"] += 1.0
    (copy / "benchmarks").mkdir()
    (copy / "benchmarks" / "one_pass.json").write_text(json.dumps(record))
    monkeypatch.setattr(render, "RESULTS", copy)
    page = DOCS / "benchmarks.md"
    with pytest.raises(SystemExit, match="no results file matches"):
        render.rendered(page)  # the page also asks for files this copy lacks
    text = render.render("benchmarks/one_pass.json", page)
    assert f"**{record['figures']['ratio']:.2f}**" in text and text not in page.read_text()


def test_results_files_are_small_and_say_where_they_come_from():
    files = sorted(RESULTS.rglob("*.json"))
    assert files
    for path in files:
        # A comparison's file (per-cell means, every stated pair's intervals) takes ~12 KB; per-item
        # outcomes (thousands of rows) belong in the run's own folder, never here.
        assert path.stat().st_size < 16_000, f"{path.name}: keep results files to a few KB"
        record = json.loads(path.read_text())
        if record["kind"] == "published":
            assert record["sources"], path
            continue
        assert record["command"] and record["commit"] and record["date"], path
        assert not record["commit_dirty"], f"{path}: measured with uncommitted code"
        machine = record["machine"]
        assert machine["usable_cpus"] and "load_average_at_start" in machine, path


def test_every_marker_names_a_results_file_and_every_file_is_shown():
    render = _renderer()
    shown = set()
    for page in render.pages():
        for match in render.MARKER.finditer(page.read_text()):
            matched = list(RESULTS.glob(match.group("pattern")))
            assert matched, f"{page_id(page)} asks for docs/results/{match.group('pattern')}"
            shown.update(matched)
    unshown = [str(path.relative_to(RESULTS)) for path in RESULTS.rglob("*.json") if path not in shown]
    assert not unshown, f"results files no page shows: {unshown}"


# ---------------------------------------------------------------------------------------- narration
NARRATION = [
    (re.compile(r"\b[Ss]eed 0\d\d\b"), "an origin-note tag"),
    (re.compile(r"\b[Ii]ssue #?\d+"), "an issue number"),
    (re.compile(r"\b(this|previous|earlier|last|next) session\b", re.I), "narration of sessions"),
    (
        re.compile(r"\bI(?:'m|'ve| have| had| checked| measured| ran| found| did| tried| saw| think)\b"),
        "first person",
    ),
    (re.compile(r"\bWhat I\b|\bI have not\b"), "first person"),
    (re.compile(r"\b(?:[Ww]e|[Oo]ur|[Oo]urs|[Uu]s)\b"), "first person plural"),
    (re.compile(r"\bcommit [0-9a-f]{7,40}\b"), "a commit hash in prose"),
]


def prose_of(path: Path) -> list[tuple[int, str]]:
    """(line, text) of what a reader reads: all of a Markdown page; comments and strings of Python;
    comments of YAML."""
    text = path.read_text()
    if path.suffix == ".md":
        return list(enumerate(text.splitlines(), 1))
    if path.suffix in (".yaml", ".yml"):
        return [(n, line.split("#", 1)[1]) for n, line in enumerate(text.splitlines(), 1) if "#" in line]
    kept = []
    for token in tokenize.generate_tokens(io.StringIO(text).readline):
        if token.type == tokenize.COMMENT or token.type == getattr(tokenize, "FSTRING_MIDDLE", -1):
            kept.append((token.start[0], token.string))
        elif token.type == tokenize.STRING:
            prefix = token.string[: token.string.index(token.string.lstrip("rbuRBUfF")[0])]
            words = re.sub(r"\{[^{}]*\}", " ", token.string) if "f" in prefix.lower() else token.string
            kept.append((token.start[0], words))  # an f-string's {expressions} are code, not prose
    return kept


def project_files() -> list[Path]:
    found = [ROOT / "README.md", ROOT / "mkdocs.yml"]
    for folder, patterns in (
        (DOCS, ("*.md",)),
        (ROOT / "src", ("*.py", "*.yaml")),
        (ROOT / "tests", ("*.py", "*.md")),
        (ROOT / "benchmarks", ("*.py",)),
        (ROOT / "scripts", ("*.py", "*.sh")),
    ):
        for pattern in patterns:
            found += sorted(folder.rglob(pattern))
    return [path for path in found if path != Path(__file__).resolve()]


def test_no_narration_first_person_or_issue_numbers_anywhere():
    problems = []
    for path in project_files():
        for line, text in prose_of(path):
            for pattern, what in NARRATION:
                match = pattern.search(text)
                if match:
                    problems.append(f"{path.relative_to(ROOT)}:{line}: {what}: {match.group(0)!r}")
    assert not problems, "\n".join(problems)


def test_the_narration_check_finds_what_it_looks_for(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("As seed 004 saw, this session we fixed issue 16 (commit e8f4bf2). What I checked.\n")
    found = {what for _, text in prose_of(page) for pattern, what in NARRATION if pattern.search(text)}
    assert found == {what for _, what in NARRATION}


# ---------------------------------------------------------------------------------------- code blocks
@dataclass
class Block:
    page: Path
    line: int
    language: str
    code: str
    not_run: str | None = None  # the reason, when the block is only parsed
    expect_exit: int = 0


FENCE = re.compile(r"^```(\w*)[^\n]*\n(.*?)^```\s*$", re.DOTALL | re.MULTILINE)
DIRECTIVE = re.compile(r"<!-- (not run|expect): (.+?) -->\s*$")


def code_blocks(page: Path) -> list[Block]:
    text = page.read_text()
    blocks = []
    for match in FENCE.finditer(text):
        language = match.group(1)
        if language not in ("python", "bash"):
            continue
        line = text[: match.start()].count("\n") + 1
        before = text[: match.start()].rstrip("\n").splitlines()
        directive = DIRECTIVE.search(before[-1]) if before else None
        block = Block(page, line, language, match.group(2))
        if directive and directive.group(1) == "not run":
            block.not_run = directive.group(2)
        elif directive:
            block.expect_exit = int(directive.group(2).removeprefix("exit "))
        blocks.append(block)
    return blocks


def commands_of(code: str) -> list[list[str]]:
    """Each shell command of a block as its words (continuation lines joined, comments dropped,
    `a && b` split)."""
    commands = []
    for logical in code.replace("\\\n", " ").splitlines():
        words = shlex.split(logical, comments=True)
        while words:
            if "&&" in words:
                cut = words.index("&&")
                commands.append(words[:cut])
                words = words[cut + 1 :]
            else:
                commands.append(words)
                words = []
    return commands


CONFIG_SYSTEMS = {"retrieval": "retrieval", "ground": "grounding", "prune": "pruning", "vlm": "vlm"}


def parse_visionloom(arguments: list[str], where: str) -> None:
    """Parse a visionloom command line without running it, and load every config it names."""
    import typer

    from visionloom.cli import CONFIG_LOADERS, app

    command = typer.main.get_command(app)
    context = command.context_class(command, info_name="visionloom")
    words = list(arguments)
    path = []
    while hasattr(command, "get_command") and words and not words[0].startswith("-"):  # a group
        sub = command.get_command(context, words[0])
        assert sub is not None, f"{where}: visionloom has no command {' '.join([*path, words[0]])!r}"
        path.append(words.pop(0))
        command = sub
    parsed = command.make_context(" ".join(path), words)  # unknown options and bad values raise here
    system = CONFIG_SYSTEMS.get(path[0]) if path else None
    if system is None:
        return
    names = [
        parsed.params.get("config"),
        parsed.params.get("reference"),
        *(parsed.params.get("configs") or []),
    ]
    loader = __import__(CONFIG_LOADERS[system], fromlist=["load_config"]).load_config
    for name in filter(None, names):
        loader(name, list(parsed.params.get("overrides") or []))


def check_script(words: list[str], where: str) -> None:
    """`python SCRIPT --option ...`: the script exists and knows each option."""
    script = ROOT / words[0]
    assert script.is_file(), f"{where}: {words[0]} does not exist"
    source = script.read_text()
    for word in words[1:]:
        if word.startswith("--"):
            assert f'"{word.split("=")[0]}"' in source, f"{where}: {words[0]} has no option {word}"


def check_lmms_eval(arguments: list[str], where: str) -> None:
    """`lmms-eval --model visionloom --model_args ...`: lmms-eval is installed and finds the model,
    and every model argument is one the model takes."""
    import inspect

    from lmms_eval.models import get_model

    from visionloom.pruning.dropin import PRUNER_SETTINGS

    assert arguments[arguments.index("--model") + 1] == "visionloom", where
    model = get_model("visionloom")
    known = {*inspect.signature(model.__init__).parameters, *PRUNER_SETTINGS} - {"self", "settings"}
    given = arguments[arguments.index("--model_args") + 1]
    for pair in given.split(","):
        assert pair.split("=")[0] in known, f"{where}: --model_args {pair}: the model takes {sorted(known)}"


def run_command(words: list[str], block: Block, run: bool, where: str) -> None:
    from typer.testing import CliRunner

    from visionloom.cli import app

    program, *arguments = words
    if program in (".venv/bin/visionloom", "visionloom"):
        if not run:
            parse_visionloom(arguments, where)
            return
        result = CliRunner().invoke(app, arguments)
        output = result.output + (result.stderr if result.stderr_bytes is not None else "")
        assert result.exit_code == block.expect_exit, (
            f"{where}: {shlex.join(words)} exited {result.exit_code}\n{output[-3000:]}"
        )
    elif program == ".venv/bin/accelerate":
        assert arguments[0] == "launch" and "-m" in arguments, f"{where}: {shlex.join(words)}"
        module_at = arguments.index("-m")
        assert arguments[module_at + 1] == "visionloom.cli", where
        parse_visionloom(arguments[module_at + 2 :], where)
    elif program in (".venv/bin/python", "python"):
        if arguments[:2] == ["-m", "pytest"]:  # the suite itself: its paths must exist
            for argument in arguments[2:]:
                if argument.startswith("tests"):
                    assert (ROOT / argument.split("::")[0]).exists(), f"{where}: no {argument}"
        else:
            check_script(arguments, where)
    elif program == ".venv/bin/lmms-eval":
        check_lmms_eval(arguments, where)
    elif program == "bash":
        assert (ROOT / arguments[0]).is_file(), f"{where}: no {arguments[0]}"
    elif program in ("mkdir", "cp", "ls"):
        if run:
            subprocess.run(words, check=True)
    else:
        raise AssertionError(f"{where}: the docs test does not know how to run {program!r}")


def run_python(block: Block, namespace: dict, where: str) -> None:
    code = compile(block.code, where, "exec")
    if block.not_run is None:
        exec(code, namespace)


@pytest.mark.parametrize("page", [p for p in PAGES if code_blocks(p)], ids=page_id)
def test_code_blocks_run(page, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "__docs__"}
    for block in code_blocks(page):
        where = f"{page_id(page)}:{block.line}"
        if block.language == "python":
            run_python(block, namespace, where)
            continue
        skipped_setup = block.code.startswith(
            "bash scripts/setup.sh &&"
        )  # the two commands: setup + job/suite
        for words in commands_of(block.code):
            run_command(words, block, run=block.not_run is None and not skipped_setup, where=where)


def test_a_block_that_is_not_run_says_why():
    for page in PAGES:
        for block in code_blocks(page):
            if block.not_run is not None:
                assert len(block.not_run.split()) >= 3, f"{page_id(page)}:{block.line}: say why it is not run"


def test_parsing_catches_a_wrong_option_and_an_unknown_config():
    with pytest.raises(Exception, match="--dat"):
        parse_visionloom(["retrieval", "train", "baseline", "--dat", "d", "--out", "o"], "here")
    with pytest.raises(Exception, match="phase9"):
        parse_visionloom(["retrieval", "train", "phase9", "--data", "d", "--out", "o"], "here")
    with pytest.raises(Exception, match="train.stepz"):
        parse_visionloom(
            ["ground", "train", "llava", "--data", "d", "--out", "o", "--set", "train.stepz=2"], "here"
        )
