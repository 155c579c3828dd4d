"""What every model adapter hands the engines: a ``LoadedModel``, and the ``ModelSpec`` that names one.

Whichever library a model comes from, it is loaded into the one shape the engines know (a timm-style
ViT: patch embed -> blocks -> norm -> forward_head) with its token layout, preprocessing and class names.
"""

from __future__ import annotations

import difflib
import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vitcam_cli.engine.geometry import TokenLayout
from vitcam_cli.errors import ParameterError, VitcamError, literal
from vitcam_cli.targets import Reading
from vitcam_cli.textfiles import read_whole


@dataclass
class LoadedModel:
    model: nn.Module
    spec: str
    layout: TokenLayout
    data_config: dict[str, Any]
    transform: Callable[[Any], torch.Tensor]
    class_names: list[str]
    class_ids: list[str]
    info: dict[str, Any] = field(default_factory=dict)
    # a zero-shot model: the same model with its classes made of other texts and prompt templates
    class_texts: Callable[[Sequence[str], Sequence[str], str], LoadedModel] | None = field(
        default=None, repr=False
    )
    # the model's outputs are this embedding (its library's own, e.g. timm's pooled features), not logits
    embedding: str | None = None
    reading: Reading = field(default_factory=Reading)  # how the outputs are read (see ``targets``)

    @property
    def input_size(self) -> tuple[int, ...]:
        return tuple(self.data_config["input_size"])

    def resolve_class(self, value: str) -> int:
        return resolve_class(value, self.class_names, self.class_ids)

    def named(self, names: Sequence[str], source: str) -> LoadedModel:
        """The model with these class names (in class-index order), e.g. for a checkpoint without any."""
        count = int(self.model.num_classes)
        if len(names) != count:
            raise ParameterError(
                "class_names", f"holds {len(names)} names but the model has {count} classes", source
            )
        digest = hashlib.sha256("\n".join(names).encode("utf-8", "surrogateescape")).hexdigest()
        info = self.info | {"class_names": source, "class_names_sha256": digest}
        return replace(self, class_names=list(names), info=info)

    def with_reading(self, kind: str) -> LoadedModel:
        """The classifier read another way: ``sigmoid`` for a multi-label head."""
        if self.embedding is not None:
            raise ParameterError("score", f"{kind} reads class logits; this model's outputs are an embedding")
        return replace(self, reading=Reading(kind), info=self.info | {"reading": kind})

    def with_targets(self, table: torch.Tensor, names: Sequence[str], source: dict[str, Any]) -> LoadedModel:
        """An embedding model whose targets are the rows of ``table`` (K, D), compared by cosine and
        named ``names`` (reference paths, or the names of embeddings computed elsewhere)."""
        if self.embedding is None:
            raise VitcamError(
                "similarity targets need the model's embedding, and this model has a classifier head: load "
                "it without ({num_classes} 0 on a timm model)"
            )
        unit = torch.nn.functional.normalize(table.float(), dim=-1)
        digest = weights_digest_of(unit)
        info = self.info | {"targets": source | {"count": len(names), "embeddings_sha256": digest}}
        return replace(
            self, class_names=list(names), class_ids=[], reading=Reading("cosine", unit), info=info
        )

    def with_texts(
        self, texts: Sequence[str], prompts: Sequence[str] = (), source: str = "texts"
    ) -> LoadedModel:
        """A zero-shot model whose classes are ``texts`` (filled into ``prompts``; empty: as before)."""
        if self.class_texts is None:
            raise ParameterError("texts", "only a zero-shot model (open_clip) takes class texts")
        return self.class_texts(list(texts), tuple(prompts), source)


def read_class_names(path: Path) -> list[str]:
    """Class names from a file: one per line in class-index order (blank lines skipped), or a JSON list."""
    try:
        text = read_whole(path, "class_names").decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise ParameterError("class_names", "not UTF-8 text; save it as UTF-8", path) from error
    if text.lstrip().startswith("["):
        try:
            names = json.loads(text)
        except json.JSONDecodeError as error:
            raise ParameterError("class_names", f"not a valid JSON list ({literal(error)})", path) from error
        if not isinstance(names, list) or not all(isinstance(name, str | int) for name in names):
            raise ParameterError("class_names", "the JSON must be a list of names", path)
        return [str(name) for name in names]
    return [line.strip() for line in text.splitlines() if line.strip()]


@dataclass(frozen=True)
class ModelSpec:
    """What the command line says about the model: every command loads it the same way."""

    name: str
    checkpoint: Path | None = None
    pretrained: bool = True
    num_classes: int | None = None
    img_size: tuple[int, int] | None = None
    class_names: Path | None = None  # one name per line, or a JSON list; None: the model's own
    pretrained_tag: str | None = None  # open_clip: which pretrained weights of the architecture
    prompts: tuple[str, ...] = ()  # zero-shot: templates the class texts are filled into; () the default
    texts: tuple[str, ...] = ()  # zero-shot: the class texts themselves (else read from class_names)

    def load(self, device: torch.device | str = "cpu") -> LoadedModel:
        """The model, with its class names and a SHA-256 of its weights (resuming compares it)."""
        from vitcam_cli.models import adapter_for  # the adapters import this module

        loaded = adapter_for(self.name).load(self, device)
        if self.class_names is not None and loaded.embedding is None:  # an embedding's targets take them
            loaded = loaded.named(read_class_names(self.class_names), str(self.class_names))
        return replace(loaded, info=loaded.info | {"weights_sha256": weights_digest(loaded.model)})

    def files(self) -> list[Path]:
        """The files named beside the model's name (its own folder aside)."""
        return [path for path in (self.checkpoint, self.class_names) if path is not None]


def weights_digest(model: nn.Module) -> str:
    """SHA-256 of every parameter and buffer of ``model`` (names, types, shapes and values), whichever
    library and file they came from: one model, one digest."""
    return weights_digest_of(*(item for pair in sorted(model.state_dict().items()) for item in pair))


def weights_digest_of(*items: str | torch.Tensor) -> str:
    """SHA-256 of names and tensors (each tensor's type, shape and bytes)."""
    digest = hashlib.sha256()
    for item in items:
        if isinstance(item, str):
            digest.update(f"{item}:".encode())
            continue
        digest.update(f"{item.dtype}:{tuple(item.shape)};".encode())
        digest.update(item.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


SHOWN_CLASSES = 10  # class names an error lists before "... and N more"


def resolve_class(value: str, class_names: list[str], class_ids: list[str] = ()) -> int:
    """A ``--class`` value: an index, a class id (ImageNet's n01440764), or a class name (case-insensitive;
    any comma-separated synonym)."""
    if value.strip().lstrip("-").isdigit():
        index = int(value)
        if not 0 <= index < len(class_names):
            raise VitcamError(
                f"class {index} is out of range: the model has {len(class_names)} classes, "
                f"0 to {len(class_names) - 1}"
            )
        return index
    if value.strip() in class_ids:
        return list(class_ids).index(value.strip())
    wanted = value.strip().lower()
    exact = [i for i, name in enumerate(class_names) if name.lower() == wanted]
    if exact:
        return exact[0]
    synonyms = [
        i for i, name in enumerate(class_names) if wanted in (s.strip().lower() for s in name.split(","))
    ]
    if len(synonyms) == 1:
        return synonyms[0]
    if synonyms:
        options = "; ".join(f"{i} ({class_names[i]})" for i in synonyms[:5])
        raise VitcamError(literal(f"class {value!r} is ambiguous: {options}; pass the index instead"))
    raise _unknown_class(value, class_names)


def _unknown_class(value: str, class_names: list[str]) -> VitcamError:
    """What the classes are, and the names closest to ``value``: the user's way to a valid one."""
    count = len(class_names)
    if class_names == [str(i) for i in range(count)]:
        return VitcamError(
            f"class {literal(repr(value))} is not a class name: the model has none; pass an index from 0 to "
            f"{count - 1}, or name its classes with {{class_names}}"
        )
    close = _closest(value, class_names)
    hint = f" (did you mean {' or '.join(repr(name) for name in close)}?)" if close else ""
    shown = ", ".join(repr(name) for name in class_names[:SHOWN_CLASSES])
    more = f" ... and {count - SHOWN_CLASSES} more" if count > SHOWN_CLASSES else ""
    return VitcamError(
        literal(f"class {value!r} is not one of the model's {count} classes{hint}; they are {shown}{more}")
        + f", or pass an index from 0 to {count - 1}"
    )


def _closest(value: str, class_names: list[str]) -> list[str]:
    """Up to three class names closest to ``value``, in any case, by the whole name or any synonym."""
    by_text: dict[str, int] = {}
    for index, name in enumerate(class_names):
        for text in (name, *name.split(",")):
            by_text.setdefault(text.strip().lower(), index)
    close = difflib.get_close_matches(value.strip().lower(), list(by_text), n=3)
    return list(dict.fromkeys(class_names[by_text[text]] for text in close))
