"""Splitting one run over processes: ``--shard I/N`` by hand, or one shard per rank under torchrun.

Every shard takes a disjoint, deterministic slice of the sorted inputs (every N-th image, starting at
I) and writes its own part files into the output folder; ``vitcam merge`` (or rank 0, under torchrun)
combines them once all shards have finished.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from vitcam_cli.errors import ParameterError, VitcamError, literal
from vitcam_cli.textfiles import SUMMARY_LIMIT, read_whole

T = TypeVar("T")


@dataclass(frozen=True)
class Shard:
    index: int
    count: int

    @property
    def suffix(self) -> str:
        """What shard part files add to their names: ``results.shard-0-of-4.jsonl``."""
        return f".shard-{self.index}-of-{self.count}"

    def take(self, items: Sequence[T]) -> list[T]:
        return list(items[self.index :: self.count])


def parse_shard(value: str) -> Shard:
    """``I/N`` with 0 <= I < N."""
    try:
        index, count = (int(part) for part in value.split("/"))
    except ValueError:
        index = count = -1
    if not 0 <= index < count:
        raise ParameterError("shard", "use I/N with 0 <= I < N, e.g. {shard} 0/4 ... {shard} 3/4", value)
    return Shard(index, count)


TORCHRUN_VARIABLES = ("WORLD_SIZE", "RANK", "LOCAL_RANK")


def torchrun_rank() -> tuple[int, int, int] | None:
    """(rank, world size, local rank) when started by torchrun with more than one process, else None.

    torchrun sets all three variables; ``WORLD_SIZE`` without the others (left over from another
    launcher or a job script) is refused in one line rather than guessed at."""
    values = {name: os.environ.get(name) for name in TORCHRUN_VARIABLES}
    if values["WORLD_SIZE"] is None or values["WORLD_SIZE"].strip() == "1":
        return None
    try:
        world, rank, local = (int(values[name] or "") for name in TORCHRUN_VARIABLES)
    except ValueError:
        given = ", ".join(f"{name}={value!r}" for name, value in values.items() if value is not None)
        raise VitcamError(
            f"{literal(given)} is set, but torchrun sets WORLD_SIZE, RANK and LOCAL_RANK (integers): start "
            "the run with torchrun, or unset WORLD_SIZE to run one process"
        ) from None
    return None if world <= 1 else (rank, world, local)


@contextmanager
def process_group(device: torch.device) -> Iterator[None]:
    """torch.distributed for the run: NCCL between GPUs, gloo on CPUs; torn down afterwards."""
    if dist.is_initialized():
        yield
        return
    if device.type == "cuda":
        torch.cuda.set_device(device)  # NCCL's collectives run on the current device: this rank's own
    dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    try:
        yield
    finally:
        dist.destroy_process_group()


def rank_device(device: torch.device, local_rank: int) -> torch.device:
    """Under torchrun each rank takes its own GPU (``cuda:LOCAL_RANK``); CPU ranks share the CPU."""
    return torch.device("cuda", local_rank) if device.type == "cuda" else device


def input_record(items: Sequence[Any]) -> dict[str, Any]:
    """What a run was given, for checking that every shard saw the same: the count of inputs and a
    SHA-256 of their sorted relative paths."""
    names = "\n".join(sorted(str(item.rel) for item in items)).encode("utf-8", "surrogateescape")
    return {"count": len(items), "sha256": hashlib.sha256(names).hexdigest()}


def _check_inputs(index: int, count: int, inputs: Any, first: Any) -> None:
    if inputs == first:
        return
    given = "an unrecorded input list" if not inputs else f"{inputs['count']} inputs"
    expected = "an unrecorded one" if not first else f"{first['count']}"
    raise VitcamError(
        f"shard {index}/{count} was given other inputs than shard 0 ({given}, shard 0 {expected}; images "
        "added or removed between the shards, or other folders): rerun every shard on the same inputs"
    )


def collect_shards(
    folders: Sequence[Path], stem: str, run_settings: Callable[[dict[str, Any]], dict[str, Any]]
) -> list[tuple[Path, dict[str, Any]]]:
    """(folder, data) of every shard's ``<stem>.shard-I-of-N.json``, in shard order.

    One clear error when a shard is missing, appears twice or is unfinished, when the folders mix runs
    of different N, or when a shard's ``run_settings`` differ from shard 0's.
    """
    found: dict[int, tuple[Path, dict[str, Any]]] = {}
    sizes = set()
    for folder in folders:
        for path in sorted(folder.glob(f"{stem}.shard-*-of-*.json")):
            index, count = (int(v) for v in path.name.split(".shard-")[1].removesuffix(".json").split("-of-"))
            sizes.add(count)
            if index in found:
                raise VitcamError(f"shard {index}/{count} appears twice ({found[index][0]} and {folder})")
            found[index] = (folder, json.loads(read_whole(path, "folders", SUMMARY_LIMIT).decode("utf-8")))
    if not found:
        where = ", ".join(map(str, folders))
        raise VitcamError(f"{where}: no shard summaries ({stem}.shard-I-of-N.json) to merge")
    if len(sizes) != 1:
        raise VitcamError(
            f"the folders hold shards of different runs (N = {', '.join(map(str, sorted(sizes)))})"
        )
    count = sizes.pop()
    missing = ", ".join(str(i) for i in range(count) if i not in found)
    if missing:
        raise VitcamError(f"shards {missing} of {count} are missing: run them ({{shard}} I/{count}) first")
    shards = [found[i] for i in range(count)]
    reference = run_settings(shards[0][1])
    for index, (folder, data) in enumerate(shards):
        if data.get("status") != "complete":
            raise VitcamError(
                f"shard {index}/{count} in {folder} is {data.get('status')}: rerun it with {{skip_existing}}"
            )
        _check_inputs(index, count, data.get("inputs"), shards[0][1].get("inputs"))
        settings = run_settings(data)
        different = ", ".join(key for key in reference if settings.get(key) != reference[key])
        if different:
            raise VitcamError(f"shard {index}/{count} used other {different} settings than shard 0")
    return shards
