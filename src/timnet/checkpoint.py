"""Checkpoints: weights plus every config needed to use them, in one file (like whisper's).

An ensemble (TrainConfig.members > 1) keeps its first member under "state_dict", as a single
model does, and every member under "members"; `load_checkpoint` rebuilds the ensemble.
"""
from __future__ import annotations

from dataclasses import asdict, fields
from pathlib import Path

import torch

from .errors import TimnetError
from .features import FeatureConfig
from .files import damaged_record, save_torch
from .model import TIMNet, TIMNetConfig, TIMNetEnsemble

FORMAT = "timnet-checkpoint/1"
# An ensemble's checkpoint is marked apart, so that a timnet without ensembles refuses it rather
# than predicting with its first member alone.
ENSEMBLE_FORMAT = "timnet-checkpoint/2"


def save_checkpoint(
    path: str | Path,
    model: TIMNet | TIMNetEnsemble,
    *,
    feature_config: FeatureConfig,
    labels: tuple[str, ...],
    corpus: str,
    extra: dict | None = None,
) -> Path:
    """Write weights, model and feature configs, labels and `extra` (e.g. fold indices) atomically."""
    members = list(model.members) if isinstance(model, TIMNetEnsemble) else [model]
    payload = {
        "format": ENSEMBLE_FORMAT if len(members) > 1 else FORMAT,
        "model_config": asdict(model.config),
        "feature_config": asdict(feature_config),
        "labels": list(labels),
        "corpus": corpus,
        "state_dict": members[0].state_dict(),
        "extra": extra or {},
    }
    if len(members) > 1:
        payload["members"] = [m.state_dict() for m in members]
    save_torch(payload, path)
    return Path(path)


def read_checkpoint(path: str | Path) -> dict:
    """The raw checkpoint dict, validated to be a timnet checkpoint."""
    path = Path(path)
    if not path.is_file():
        raise TimnetError(f"{path}: {'a folder, not' if path.is_dir() else 'no such'} checkpoint file")
    try:
        open(path, "rb").close()
    except OSError as e:  # not to be taken for a damaged file below
        raise TimnetError(f"{path}: cannot be read ({e.strerror or e})") from None
    if record := damaged_record(path):
        raise TimnetError(f"{path}: a damaged timnet checkpoint (the bytes of {record} fail their checksum: a disk or "
                          "copy error); expected a model.pt as `timnet train` wrote it")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # torch raises many types for a file that is not a checkpoint
        import zipfile

        # torch.save writes a zip whose directory is at its end (without one, the file was cut short),
        # holding <name>/data.pkl (without it, another program wrote the zip)
        try:
            names = zipfile.ZipFile(path).namelist() if zipfile.is_zipfile(path) else None
        except (zipfile.BadZipFile, OSError):  # an end record intact, the directory it points at damaged
            names = []
        if names is None:
            why = "not a whole file: cut short, or another format"
        elif not names:
            why = "a damaged zip archive"
        elif not any(name.endswith("/data.pkl") for name in names):
            why = "a zip archive torch.save did not write, e.g. an .npz"
        else:
            why = "a torch file of other objects than a timnet checkpoint's (e.g. a whole pickled model), or damaged"
        raise TimnetError(f"{path}: not a readable timnet checkpoint ({why}); expected a model.pt of `timnet train`") from None
    if not isinstance(payload, dict) or payload.get("format") not in (FORMAT, ENSEMBLE_FORMAT):
        raise TimnetError(f"{path}: not a timnet checkpoint; expected format {FORMAT} or {ENSEMBLE_FORMAT}")
    return payload


def load_checkpoint(path: str | Path) -> tuple[TIMNet | TIMNetEnsemble, dict]:
    """(model in eval mode, checkpoint dict) from a checkpoint file alone; an ensemble for several members."""
    payload = read_checkpoint(path)
    try:
        # every field, as every timnet has written them: a default standing in for one would rebuild
        # another model or features (a RAVDESS model cropping to EMODB's signal length)
        for key, kind in (("model_config", TIMNetConfig), ("feature_config", FeatureConfig)):
            if missing := [f.name for f in fields(kind) if f.name not in payload[key]]:
                raise TimnetError(f"{key} without {', '.join(missing)}")
        config = TIMNetConfig(**payload["model_config"])
        labels = payload["labels"]
        if not isinstance(labels, list) or len(labels) != config.n_classes:
            raise TimnetError(f"labels {labels!r} for a model of {config.n_classes} classes")
        if payload["feature_config"]["n_mfcc"] != config.n_features:
            raise TimnetError(f"features of {payload['feature_config']['n_mfcc']} MFCCs for a model of "
                              f"{config.n_features} inputs")
        states = [payload["state_dict"]] if payload["format"] == FORMAT else payload["members"]
        if payload["format"] == ENSEMBLE_FORMAT and (not isinstance(states, list) or len(states) < 2):
            raise TimnetError(f"an ensemble's checkpoint with {len(states) if isinstance(states, list) else 'no list of'} "
                              "members; expected two or more")  # its first member alone would pass for the ensemble
        members = []
        for state in states:
            members.append(TIMNet(config))
            members[-1].load_state_dict(state)
        payload["feature_config"] = FeatureConfig(**payload["feature_config"])
    except (KeyError, TypeError, ValueError, RuntimeError, TimnetError) as e:
        # A checkpoint of another timnet version or an edited one: an unknown config field (TypeError),
        # weights that do not fit the config (RuntimeError from load_state_dict), a missing entry, a
        # value the config refuses (TimnetError, which would name an option the user never gave).
        reason = " ".join(str(e).split())[:200] or type(e).__name__  # one line, however long torch's is
        raise TimnetError(f"{path}: a timnet checkpoint this version cannot load ({reason})") from None
    model = TIMNetEnsemble(members) if len(members) > 1 else members[0]
    return model.eval(), payload
