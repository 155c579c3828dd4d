"""Resuming a run (``--skip-existing``): what the earlier run recorded, and the settings it must share.

A run resumes only into a folder written with the same model (its weights too: summary.json keeps a
SHA-256 of them), method, targets (a labels file's contents too) and overlay settings, so that no
results.jsonl ever mixes rows of two runs that differ.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vitcam_cli.errors import ParameterError, literal
from vitcam_cli.outputs.atomic import remove_stale_temporaries
from vitcam_cli.outputs.folder import read_json

# settings that change what is written: resuming into a folder written with others is refused
RESUME_KEYS = ("model", "method", "targets", "colormap", "alpha", "overlays", "adcc")
# the contents each setting records a digest of, and how a change of them is named
DIGESTS = {
    ("model", "weights_sha256"): "other weights of the model",
    ("model", "class_names_sha256"): "other class names",
    ("model", "targets_sha256"): "other target embeddings (references or embeddings file)",
    ("targets", "labels_sha256"): "another labels file's contents",
}


def earlier_summary(out: Path, part: str = "") -> dict[str, Any]:
    """The summary an earlier run left in ``out`` (its shard's, for a shard); empty when there is none.
    A whole run resumed in a folder of unmerged shards is held to the first shard's."""
    summary = read_json(out / f"summary{part}.json") or {}
    if summary or part:
        return summary
    shards = sorted(out.glob("summary.shard-*-of-*.json"))
    return (read_json(shards[0]) or {}) if shards else {}


def _same(before: object, now: object) -> bool:
    """Equal settings; of two tables, the entries both record (a version that recorded less still
    resumes, on what it recorded)."""
    if isinstance(before, dict) and isinstance(now, dict):
        return all(_same(before[key], now[key]) for key in before.keys() & now.keys())
    return before == now


def _other_contents(before: dict[str, Any], now: dict[str, Any]) -> str | None:
    """How the contents behind the settings changed (weights, class names, labels), if they did."""
    for (setting, key), what in DIGESTS.items():
        old, new = before.get(setting, {}).get(key), now.get(setting, {}).get(key)
        if old is not None and new is not None and old != new:
            return f"{what} (SHA-256 {old[:12]}..., now {new[:12]}...)"
    return None


def _difference(key: str, before: object, now: object) -> str:
    """Which entry of a setting changed, old and new (``model.model 'm', now 'local-dir:m'``)."""
    if isinstance(before, dict) and isinstance(now, dict):
        for entry in sorted(before.keys() & now.keys()):
            if not _same(before[entry], now[entry]):
                return _difference(f"{key}.{entry}", before[entry], now[entry])
    return f"{key} {literal(_short(before))}, now {literal(_short(now))}"


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def refuse_other_settings(
    out: Path, settings: dict[str, Any], earlier: dict[str, Any], part: str = ""
) -> None:
    """Resuming: temporary files of killed runs go; a folder written with other settings, or rows whose
    settings are not on record (summary.json removed), are refused."""
    remove_stale_temporaries(out)
    rows = out / f"results{part}.jsonl"
    if not earlier.get("settings") and rows.is_file() and rows.stat().st_size:
        raise ParameterError(
            "skip_existing",
            f"{literal(out)} holds rows but no summary{part}.json saying which model and options wrote them; "
            "use a new {out}, or {overwrite} to start again",
        )
    before = earlier.get("settings", {})
    contents = _other_contents(before, settings)
    changed = [key for key in RESUME_KEYS if key in before and not _same(before[key], settings.get(key))]
    if contents or changed:
        details = "; ".join(_difference(key, before[key], settings.get(key)) for key in changed)
        what = contents or f"different {', '.join(changed)} settings ({details})"
        raise ParameterError(
            "skip_existing",
            f"{literal(out)} was written with {what}; rerun with the same model and options, or use a "
            "new {out}",
        )
