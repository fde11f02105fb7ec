"""Every command in README.md, docs/*.md and benchmarks/README.md runs as shown.

Each page's blocks run in order in a fresh copy of samples/ (a later command may use a file an
earlier one wrote):
- ```console: `$ merge-models ...` lines, and the output below each must be what the command prints
  (`...` stands for any lines; only the duration in `in 0.20 s` may differ);
- ```sh: each line is a command; `merge-models` ones must exit 0, and a ```json block right after a
  one-line block is its `--json` document (same keys and value types; paths, columns, classes equal);
- ```python: runs and exits 0; a ```text block right after it is its output;
- `make` targets are dry-run (`make -n`), scripts too long for the suite must exist, and the few
  commands that set up other environments (pip, venv, activate) are listed in NOT_RUN with why.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from conftest import ROOT, SAMPLES

from merge_cli.cli import main

PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "benchmarks" / "README.md"]

# Commands that install or set up another environment: shown for people, not run by the suite.
NOT_RUN = {
    ". .venv/bin/activate": "changes the shell the test runs in; make install makes .venv",
    "pip install": "installs into the environment running the tests",
    "python3 -m venv /tmp/torchenv": "the torch fixtures' throwaway environment (minutes, network)",
    "/tmp/torchenv/": "the torch fixtures' throwaway environment (minutes, network)",
    "merge-models --install-completion": "edits the user's shell start-up file",
    "HYPOTHESIS_PROFILE=fuzz-long": "5000 fuzz cases per test: minutes",
}
# Scripts that take minutes: the file and its arguments must exist, and that is all the suite checks.
TOO_LONG = ("benchmarks/", "tests/make_fixtures.py", "samples/make_samples.py", "tests/bad_inputs.py")


@dataclass
class Block:
    lang: str
    body: str
    after: Block | None = None  # the block right after this one, if nothing but blank lines is between


def blocks(page: Path) -> list[Block]:
    found = []
    previous_end = -1
    text = page.read_text()
    for m in re.finditer(r"^```(\w*)\n(.*?)^```\n", text, re.M | re.S):
        block = Block(m.group(1), m.group(2))
        if found and text[previous_end:m.start()].strip() == "":
            found[-1].after = block
        found.append(block)
        previous_end = m.end()
    return found


def commands(body: str) -> list[str]:
    """The command lines of a ```sh block, without their trailing comments."""
    lines = [re.split(r"\s+#\s", line)[0].strip() for line in body.splitlines()]
    return [line for line in lines if line and not line.startswith("#")]


def matches(documented: list[str], actual: list[str]) -> bool:
    """The documented lines, where `...` is any lines and a duration `in 0.20 s` any duration."""

    def same(doc: str, act: str) -> bool:
        pattern = re.escape(doc).replace(r"\.\.\.", "(?:.*)")
        pattern = re.sub(r"in\\ \d+\\\.\d+\\ s", r"in\\ \\d+\\.\\d+\\ s", pattern)
        return re.fullmatch(pattern, act) is not None

    if not documented:
        return not actual
    if documented[0] == "...":
        return any(matches(documented[1:], actual[i:]) for i in range(len(actual) + 1))
    return bool(actual) and same(documented[0], actual[0]) and matches(documented[1:], actual[1:])


def structure(value: Any) -> Any:
    """A document's shape: the same keys, list element shapes and value types; values themselves vary."""
    if isinstance(value, dict):
        return {k: structure(v) for k, v in value.items()}
    if isinstance(value, list):
        return [structure(v) for v in value]
    if isinstance(value, bool) or value is None:
        return type(value).__name__
    if isinstance(value, (int, float)):
        return "number"
    return type(value).__name__


class Runner:
    """Runs a page's commands in `workdir`, the way the page shows them."""

    def __init__(self, workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
        self.workdir = workdir
        self.capsys = capsys
        self.ran: list[str] = []

    def run(self, line: str) -> tuple[int, str, str]:
        self.ran.append(line)
        for prefix, why in NOT_RUN.items():
            if line.startswith(prefix):
                assert why
                return 0, "", ""
        words = shlex.split(line)
        env = {}
        while words and re.fullmatch(r"[A-Z_]+=.*", words[0]):  # VAR=value make ...
            name, _, value = words.pop(0).partition("=")
            env[name] = value
        if words[0] == "merge-models":
            code = main(words[1:])
            captured = self.capsys.readouterr()
            return code, captured.out, captured.err
        if words[0] == "make":
            proc = subprocess.run(["make", "-n", *words[1:]], cwd=ROOT, capture_output=True, text=True, timeout=60)
            return proc.returncode, proc.stdout, proc.stderr
        if words[0] in ("python", "python3", ".venv/bin/python"):
            script = words[1]
            if script.startswith(TOO_LONG):
                assert (ROOT / script).is_file(), script
                return 0, "", ""
            proc = subprocess.run([sys.executable, *words[1:]], cwd=self.workdir, capture_output=True, text=True,
                                  timeout=120)
            return proc.returncode, proc.stdout, proc.stderr
        raise AssertionError(f"the docs test does not know how to run: {line}")

    def python(self, code: str) -> tuple[int, str, str]:
        proc = subprocess.run([sys.executable, "-c", code], cwd=self.workdir, capture_output=True, text=True,
                              timeout=120)
        return proc.returncode, proc.stdout, proc.stderr


def check_json(command: str, result: tuple[int, str, str], documented: dict[str, Any]) -> None:
    code, stdout, stderr = result
    assert stdout.strip(), (command, stderr)
    actual = json.loads(stdout)
    assert structure(actual) == structure(documented), command
    assert (code == 0) == (documented["status"] == "ok"), command
    for key in ("output", "path", "columns", "classes", "outputs", "error", "combiner", "head", "sources"):
        if key in documented:
            assert actual[key] == documented[key], (command, key)


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_command_on_the_page_runs_as_shown(page: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    shutil.copytree(SAMPLES, tmp_path / "samples", ignore=shutil.ignore_patterns("merged", "__pycache__"))
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("COLUMNS", raising=False)  # output as piped into a file
    runner = Runner(tmp_path, capsys)
    for block in blocks(page):
        if block.lang == "console":
            for step in re.split(r"^\$ ", block.body, flags=re.M)[1:]:
                command, *documented = step.rstrip("\n").split("\n")
                code, stdout, stderr = runner.run(command)
                assert code == 0, (command, stderr)
                assert matches(documented, stdout.splitlines()), f"$ {command}\n--- documented\n" + \
                    "\n".join(documented) + "\n--- printed\n" + stdout
        elif block.lang == "sh":
            lines = commands(block.body)
            for line in lines:
                result = runner.run(line)
                if block.after is not None and block.after.lang == "json" and len(lines) == 1:
                    check_json(line, result, json.loads(block.after.body))
                else:
                    assert result[0] == 0, (line, result[2])
        elif block.lang == "python":
            code, stdout, stderr = runner.python(block.body)
            assert code == 0, stderr
            if block.after is not None and block.after.lang == "text":
                assert matches(block.after.body.splitlines(), stdout.splitlines()), stdout
    if page.name == "README.md" and page.parent == ROOT:
        assert any(c.startswith("merge-models merge") for c in runner.ran)


def test_the_pages_cover_the_commands_and_link_each_other() -> None:
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 250
    for page in PAGES[1:]:
        assert f"]({page.relative_to(ROOT)})" in readme, f"README does not link {page.relative_to(ROOT)}"
    text = "".join(p.read_text() for p in PAGES)
    for link in re.findall(r"\]\(([^)#]+\.md)(?:#[^)]*)?\)", text):
        assert any((p.parent / link).resolve().is_file() for p in PAGES), link
    run = [c for p in PAGES for b in blocks(p) if b.lang == "sh" for c in commands(b.body)]
    for command in ("merge-models merge", "merge-models inspect", "merge-models init", "merge-models verify"):
        assert any(c.startswith(command) for c in run), command
    jsons = {c.split()[1] for p in PAGES for b in blocks(p) if b.lang == "sh" and b.after and b.after.lang == "json"
             for c in commands(b.body)}
    assert {"merge", "inspect", "init", "verify"} <= jsons


def test_the_ci_example_installs_from_the_repository_or_a_wheel() -> None:
    ci = (ROOT / "docs" / "ci.md").read_text()
    installs = re.findall(r"pip install (\S+)", ci)
    assert installs and all(target.startswith(("./", "dist/", "tools/")) for target in installs), installs
    assert "make dist" in ci and re.search(r"^dist: ", (ROOT / "Makefile").read_text(), re.M)


def test_every_option_the_pages_name_exists() -> None:
    """Options named in prose and tables (`--map`, `--ir-version N`) are options of some command."""
    import typer

    from merge_cli.cli import app

    root = typer.main.get_command(app)
    known = {"--help", "--install-completion", "--show-completion"}
    for command in [root, *getattr(root, "commands", {}).values()]:
        for param in command.params:
            known |= {*param.opts, *param.secondary_opts}
    other_tools = {"--torch": ROOT / "tests" / "make_fixtures.py"}  # an option of a script, not of merge-models
    for page in PAGES:
        text = page.read_text()
        for span in re.findall(r"`([^`\n]+)`", text) + [b.body for b in blocks(page) if b.lang in ("sh", "console")]:
            for option in re.findall(r"(?<![\w-])--[a-z][a-z-]*", span):
                assert option in known or (option in other_tools and option in other_tools[option].read_text()), (
                    page.name, option, span)
