"""The README and docs/ stay true: every relative link resolves, and every `vlm-salience ...` command they show
exists, with options its parser knows (`--help` of each parses). Run in-process on the package's own parser, so
renaming a command or an option without updating the docs fails here, in well under a second."""

from __future__ import annotations

import argparse
import contextlib
import io
import re
import shlex
from pathlib import Path

import pytest

from vlm_salience.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^```[^\n]*\n(.*?)^```", re.S | re.M)
INLINE = re.compile(r"`(vlm-salience [^`]+)`")
PLACEHOLDER = re.compile(r"^[A-Z][A-Z_]+$")  # COMMAND, DIR: a word standing for the reader's own value


def _rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


def relative_links(path: Path) -> list[str]:
    """Links to files of this repository (no scheme, not a bare #anchor), anchors cut off."""
    text = FENCE.sub("", path.read_text())
    return [t.split("#")[0] for t in LINK.findall(text)
            if not re.match(r"^[a-z][a-z0-9+.-]*:", t) and not t.startswith("#")]


def shown_commands(text: str) -> list[list[str]]:
    """The argument lists after `vlm-salience` (or `-m vlm_salience.cli`) in code blocks and inline code."""
    found: list[str] = []
    for block in FENCE.findall(text):
        for line in block.replace("\\\n", " ").splitlines():
            found += re.findall(r"(?:^|[\s;&|])(?:vlm-salience|-m vlm_salience\.cli)\s+([^&|;]*)", line)
    found += [m[len("vlm-salience "):] for m in INLINE.findall(text)]
    commands = []
    for rest in found:
        words = shlex.split(rest.replace("\n", " "), comments=True)
        if words and not PLACEHOLDER.match(words[0]):  # `vlm-salience COMMAND --help` names no command
            commands.append(words)
    return commands


def _known(parser: argparse.ArgumentParser) -> set[str]:
    return set(parser._option_string_actions)


def check_command(words: list[str]) -> str | None:
    """Why this command line would not parse (None when it would): unknown sub-command, unknown option, or a
    `--help` that does not exit cleanly."""
    parser = build_parser()
    known, path, node = _known(parser), [], parser
    for w in words:
        subs = [a for a in node._actions if isinstance(a, argparse._SubParsersAction)]
        if w.startswith("-") or not subs:
            break
        if w not in subs[0].choices:
            return f"no command '{' '.join([*path, w])}' (known: {sorted(subs[0].choices)})"
        node, path = subs[0].choices[w], [*path, w]
        known |= _known(node)
    for w in words:
        opt = w.split("=", 1)[0]
        if re.match(r"^--?[A-Za-z][\w-]*$", opt) and opt not in known:
            return f"'{' '.join(path)}' has no option {opt}"
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        try:
            parser.parse_args([*path, "--help"])
        except SystemExit as e:
            return None if e.code == 0 else f"'{' '.join(path)} --help' exited {e.code}: {out.getvalue()[-300:]}"
    return f"'{' '.join(path)} --help' did not exit"


@pytest.mark.parametrize("doc", DOCS, ids=_rel)
def test_relative_links_resolve(doc):
    broken = [t for t in relative_links(doc) if t and not (doc.parent / t).exists()]
    assert not broken, f"{_rel(doc)} links to missing files: {broken}"


@pytest.mark.parametrize("doc", DOCS, ids=_rel)
def test_every_command_shown_exists(doc):
    bad = [f"vlm-salience {shlex.join(w)}: {why}" for w in shown_commands(doc.read_text())
           if (why := check_command(w))]
    assert not bad, f"{_rel(doc)} shows commands the CLI does not have:\n" + "\n".join(bad)


def test_the_docs_show_commands_and_the_checker_catches_stale_ones(tmp_path):
    """The extraction finds the README's commands, and a renamed command or option is caught, so the checks above
    cannot pass by finding nothing."""
    shown = shown_commands((ROOT / "README.md").read_text())
    assert ["bci", "--data", "configs/data/affcog_utterances.yaml", "--out", "runs/affcog"] in shown
    assert sum(len(shown_commands(d.read_text())) for d in DOCS) > 40
    assert check_command(["bci", "--data", "x.yaml"]) is None
    assert "no command" in check_command(["study", "--data", "x.yaml"])
    assert "no option --dta" in check_command(["bci", "--dta", "x.yaml"])
    assert "no option --frob" in check_command(["video", "train", "x.yaml", "--frob=1"])
    page = tmp_path / "page.md"
    page.write_text("[a](gone.md#x) [b](https://example.org) [c](#here)\n```\n[d](in-code.md)\n```\n")
    assert relative_links(page) == ["gone.md"]


def shown_launches(text: str) -> list[list[str]]:
    """The argument lists after `accelerate launch` in code blocks (what runs a command on several processes)."""
    found = []
    for block in FENCE.findall(text):
        for line in block.replace("\\\n", " ").splitlines():
            found += [shlex.split(m, comments=True) for m in re.findall(r"accelerate launch\s+([^&|;]*)", line)]
    return found


def check_launch(words: list[str]) -> str | None:
    """Why `accelerate launch <words>` would not start (None when it would): accelerate's own parser refuses it,
    or a --config_file the repository should hold is missing."""
    from accelerate.commands.launch import launch_command_parser

    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        try:
            args = launch_command_parser().parse_args(words)
        except SystemExit as e:
            return f"accelerate's parser exited {e.code}: {out.getvalue()[-300:]}"
    if args.config_file and not (ROOT / args.config_file).is_file():
        return f"--config_file {args.config_file} does not exist"
    return None


@pytest.mark.parametrize("doc", DOCS, ids=_rel)
def test_every_accelerate_launch_shown_parses(doc):
    pytest.importorskip("accelerate")
    bad = [f"accelerate launch {shlex.join(w)}: {why}" for w in shown_launches(doc.read_text())
           if (why := check_launch(w))]
    assert not bad, f"{_rel(doc)} shows launches accelerate refuses:\n" + "\n".join(bad)


def test_the_launch_checker_catches_bad_launches():
    pytest.importorskip("accelerate")
    assert check_launch(["--config_file", "configs/accelerate/cpu_ddp.yaml", "-m", "vlm_salience.cli", "route",
                         "x.yaml"]) is None
    assert "does not exist" in check_launch(["--config_file", "configs/accelerate/nope.yaml", "-m", "x"])
    assert "exited" in check_launch(["--num_processes", "two", "-m", "x"])
    assert sum(len(shown_launches(d.read_text())) for d in DOCS) >= 4
