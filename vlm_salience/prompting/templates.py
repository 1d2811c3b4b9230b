"""Prompt templates: files in prompts/ with a YAML header and a Jinja2 body, rendered into chat messages.

Rendering runs in Jinja2's sandbox with strict undefined variables. Item text enters through the `data` filter,
which turns angle brackets into look-alikes so that a situation or an utterance can never close its tag, open a
message (`<<user>>`) or place an image (`<<image>>`): it stays data inside the prompt.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field

from vlm_salience.config import StrictModel, validate
from vlm_salience.errors import ConfigError

Input = Literal["image", "context", "face_text", "examples"]
_MARKER = re.compile(r"<<(system|user|assistant|image)>>")


class TemplateHeader(StrictModel):
    name: str
    description: str = ""
    requires: list[Input] = Field(default_factory=list)
    optional: list[Input] = Field(default_factory=list)
    reasoning: bool = False
    # prompt: an item's judgement prompt (answer slots, inputs of an Item); target: text written for training
    # answers; clip: a prompt over one clip's frames with its own variables (GRACE's descriptions, grace/text.py)
    kind: Literal["prompt", "target", "clip"] = "prompt"


def data_filter(value: Any) -> str:
    text = "" if value is None else str(value)
    return text.replace("<", "\u2039").replace(">", "\u203a")


@dataclass
class PromptTemplate:
    header: TemplateHeader
    body: str
    path: Path
    digest: str  # hash of the file and every include: part of each answer's cache key
    # the compiled Jinja template, made on the first render: compiling costs ~18 ms, as much as reading a clip's
    # frames from the frame cache ten times (benchmarks/bench_clip_inputs.py)
    _compiled: Any = field(default=None, repr=False, compare=False)

    @property
    def name(self) -> str:
        return self.header.name

    def missing(self, available: set[str]) -> list[str]:
        return [r for r in self.header.requires if r not in available]

    def render(self, variables: dict[str, Any]) -> list[dict[str, Any]]:
        """Chat messages: [{"role": ..., "content": [{"type": "text", "text": ...}, {"type": "image"}, ...]}]."""
        from jinja2 import StrictUndefined, TemplateError
        from jinja2.sandbox import SandboxedEnvironment
        from jinja2 import FileSystemLoader

        try:
            if self._compiled is None:
                env = SandboxedEnvironment(loader=FileSystemLoader(str(self.path.parent)),
                                           undefined=StrictUndefined, keep_trailing_newline=True, autoescape=False)
                env.filters["data"] = data_filter
                self._compiled = env.from_string(self.body)
            text = self._compiled.render(**variables)
        except TemplateError as exc:
            raise ConfigError(f"{self.path}: cannot render template ({exc}).") from None
        return split_messages(text, where=str(self.path))


def split_messages(text: str, where: str) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = []
    role = None
    pos = 0
    parts: list[dict[str, Any]] = []

    def flush_text(chunk: str) -> None:
        if chunk.strip():
            parts.append({"type": "text", "text": chunk.strip("\n")})

    for m in _MARKER.finditer(text):
        chunk = text[pos:m.start()]
        pos = m.end()
        if role is None:
            if chunk.strip():
                raise ConfigError(f"{where}: text before the first <<system>> or <<user>> marker.")
        else:
            flush_text(chunk)
        kind = m.group(1)
        if kind == "image":
            if role is None:
                raise ConfigError(f"{where}: <<image>> outside a message.")
            parts.append({"type": "image"})
            continue
        if role is not None:
            messages.append({"role": role, "content": parts})
        role, parts = kind, []
    if role is None:
        raise ConfigError(f"{where}: no <<system>> or <<user>> marker.")
    flush_text(text[pos:])
    messages.append({"role": role, "content": parts})
    return [m for m in messages if m["content"]]


def prompts_dir() -> Path:
    from vlm_salience.resources import home

    return home() / "prompts"


def load_template(name: str | Path, folder: Path | None = None) -> PromptTemplate:
    folder = folder or prompts_dir()
    path = Path(name) if str(name).endswith(".j2") else folder / f"{name}.j2"
    if not path.is_file():
        known = sorted(p.stem for p in path.parent.glob("*.j2") if not p.stem.startswith("_"))
        raise ConfigError(f"prompt template '{name}' not found in {path.parent}; known: {known}")
    raw = path.read_text(encoding="utf-8")
    if not raw.startswith("---"):
        raise ConfigError(f"{path}: a template starts with a YAML header between '---' lines.")
    try:
        _, head, body = raw.split("---", 2)
    except ValueError:
        raise ConfigError(f"{path}: the YAML header is not closed by '---'.") from None
    header = validate(yaml.safe_load(head) or {}, TemplateHeader, source=path, base_dir=path.parent)
    h = hashlib.sha256(raw.encode())
    for inc in sorted(path.parent.glob("_*.j2")):
        h.update(inc.read_bytes())
    return PromptTemplate(header=header, body=body.lstrip("\n"), path=path, digest=h.hexdigest()[:16])
