"""Cross-validation splits: the paper's utterance-level KFold and speaker-independent folds."""
from __future__ import annotations

import numpy as np

from .errors import TimnetError

SPLITS = ("random", "speaker")


def unnamed(speakers: np.ndarray) -> bool:
    """Every speaker id empty: a folders tree extracted without --speaker-pattern records none."""
    return len(speakers) > 0 and not any(str(s) for s in np.asarray(speakers).tolist())


def default_folds(split: str, speakers: np.ndarray | None) -> int:
    """The paper's 10 folds; with `speaker` folds, at most one per speaker, so a corpus of 4
    speakers (CASIA, SAVEE) or 6 (EMOVO) gets leave-one-speaker-out rather than an error."""
    if split == "speaker" and speakers is not None and not unnamed(speakers):
        n_speakers = len(np.unique(np.asarray(speakers)))
        if n_speakers < 2:
            raise TimnetError(f"--split speaker needs at least 2 speakers; these features have {n_speakers}")
        return min(10, n_speakers)
    return 10


def make_folds(
    n_samples: int,
    *,
    folds: int = 10,
    seed: int,
    split: str = "random",
    speakers: np.ndarray | None = None,
    source: str | None = None,
) -> list[tuple[np.ndarray, np.ndarray]]:
    """(train_idx, test_idx) per fold, fold k of the list being the authors' k-th split.

    `random` is the paper's KFold(shuffle=True, random_state=seed) over the samples in the
    order of SPEC.md §1; speakers then appear on both sides. `speaker` keeps every speaker on
    one side: leave-one-speaker-out when `folds` equals the speaker count, else GroupKFold.
    `source` (the feature file) is named in errors.
    """
    from sklearn.model_selection import GroupKFold, KFold, LeaveOneGroupOut

    if split not in SPLITS:
        raise TimnetError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")
    dummy = np.zeros(n_samples)
    if split == "random":
        if n_samples < 2:  # no fold count fits: said as what it is, not as "expected 2..1"
            raise TimnetError(f"{source or 'these features'}: {n_samples} utterance{'s' * (n_samples != 1)}; cross-validation needs at least 2")
        if folds < 2 or folds > n_samples:
            raise TimnetError(f"--folds {folds} invalid; expected 2..{n_samples} for {n_samples} samples")
        splitter = KFold(n_splits=folds, shuffle=True, random_state=seed)
        return [(tr, te) for tr, te in splitter.split(dummy)]
    if speakers is None:
        raise TimnetError(f"{source or 'these features'}: no speaker ids, which --split speaker needs; expected features "
                          "from `timnet extract` (the authors' .npy files have none)")
    if unnamed(speakers):
        raise TimnetError(f"{source or 'these features'}: no speaker ids, which --split speaker needs; expected features "
                          "of a folders tree extracted with --speaker-pattern")
    groups = np.asarray(speakers)
    n_speakers = len(np.unique(groups))
    if n_speakers < 2:
        raise TimnetError(f"--split speaker needs at least 2 speakers; these features have {n_speakers}")
    if folds < 2:
        raise TimnetError(f"--folds {folds} invalid; expected 2..{n_speakers} for {n_speakers} speakers (--split speaker)")
    if folds > n_speakers:
        raise TimnetError(f"--folds {folds} with --split speaker needs at least {folds} speakers; these features have {n_speakers}")
    if folds == n_speakers:
        splitter = LeaveOneGroupOut()
        return [(tr, te) for tr, te in splitter.split(dummy, groups=groups)]
    splitter = GroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    return [(tr, te) for tr, te in splitter.split(dummy, groups=groups)]
