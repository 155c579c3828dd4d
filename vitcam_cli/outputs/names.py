"""Output file names: a pure function of the input's path, unique by construction, valid on any file
system that holds the input.

An image's outputs are named like sidecar files: the input's path below the inputs' common folder, its
file name whole (extension included), then the class when the run explains several per image, then the
output's own extension: ``sub/a.png`` gives ``overlays/sub/a.png.png`` and ``maps/sub/a.png.npy``
(``a.png.3.png`` for class 3). Why each rule keeps two inputs from one name:

- the whole file name is kept, so ``a.png``, ``a.jpg`` and ``a.png.png`` stay apart;
- whether the class is named depends on the run, never on the image, and a class is digits after the
  last dot but one, so ``x.png`` class 3 (``x.png.3.png``) never meets the input ``x.3.png``
  (``x.3.png.png``);
- a folder whose name, less any trailing ``~``, ends like an output (``.png``, ``.jpg``, ``.webp``,
  ``.npy``) gets one more ``~``, so no output folder is ever named like an output file (``b.bmp``'s
  ``b.bmp.png`` beside the folder ``b.bmp.png/``);
- bytes that are not UTF-8 and the escape character ``%`` itself are percent-encoded (``caf%E9.png``),
  so every link is UTF-8 text for the rows, the CSV and the report;
- a name longer than the file system's 255 bytes keeps its first bytes and ends with ``%~`` and 16 hex
  digits of the SHA-256 of the whole name, then the class and extension; since ``%`` is escaped in every
  name, ``%~`` can only come from vitcam, so no input's own name can take a shortened one's place;
- a resumed run whose inputs have another common folder can meet an earlier image's name with another
  file (``a/x.png`` then ``x.png``): the newcomer's name is tagged ``%~`` and 16 hex digits of the
  SHA-256 of its file's path (``x.png%~0123456789abcdef.png``), which no earlier name can be.

The name depends on nothing else, so a resumed run that meets new images never renames old outputs.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path, PurePosixPath
from urllib.parse import quote

NAME_MAX = 255  # bytes in one file or folder name (ext4, XFS, APFS, NTFS in UTF-16 units)
OUTPUT_SUFFIXES = (".png", ".jpg", ".webp", ".npy")  # what every output file's name ends with
_DIGEST = 16  # hex digits of a shortened name's hash
MARK = "%~"  # before a hash in a name: never in an escaped name, where % is always followed by hex digits
_SAFE = "".join(chr(code) for code in range(0x20, 0x7F) if chr(code) not in "%/")


def readable(name: str) -> str:
    """``name`` as UTF-8 text: its undecodable bytes (and ``%``) percent-encoded."""
    raw = os.fsencode(name)
    try:
        return raw.decode("utf-8").replace("%", "%25")
    except UnicodeDecodeError:
        return quote(raw, safe=_SAFE)  # every byte outside printable ASCII, and %, as %XX


def _folder(name: str) -> str:
    """A folder's name in the output tree: never ending like an output file."""
    return name + "~" if name.rstrip("~").lower().endswith(OUTPUT_SUFFIXES) else name


def _fit(name: str, tail: str = "") -> str:
    """``name + tail``, shortened (prefix, ``~``, hash) when longer than ``NAME_MAX`` bytes."""
    whole = name + tail
    if len(whole.encode()) <= NAME_MAX:
        return whole
    digest = MARK + hashlib.sha256(name.encode()).hexdigest()[:_DIGEST]
    room = NAME_MAX - len((digest + tail).encode())
    prefix = name.encode()[:room].decode("utf-8", "ignore")  # never half a character
    return prefix + digest + tail


def file_tag(file: Path) -> str:
    """What tells an image's outputs from those of another file of the same relative name."""
    return hashlib.sha256(os.fsencode(file)).hexdigest()[:_DIGEST]


def output_link(
    folder: str, rel: PurePosixPath, extension: str, class_index: int | None = None, tag: str | None = None
) -> str:
    """Where an output of the input ``rel`` goes, relative to the output folder (POSIX separators):
    ``folder/<rel's folders>/<rel's file name>[%~<tag>][.<class>].<extension>``."""
    *folders, name = (readable(part) for part in rel.parts)
    name += MARK + tag if tag else ""
    tail = (f".{class_index}" if class_index is not None else "") + f".{extension}"
    return "/".join([folder, *(_fit(_folder(part)) for part in folders), _fit(name, tail)])


def output_folder(folder: str, rel: PurePosixPath) -> str:
    """The folder ``output_link`` puts the outputs of ``rel`` in."""
    return output_link(folder, rel, "npy").rsplit("/", 1)[0]
