"""Import the authors' Keras 2.4 `save_weights` HDF5 files (SPEC.md §5) into a TIMNet.

Keras names layers by a global creation counter (conv1d_34, conv1d_35, ...), so the mapping
is by the order of those numbers, not by name: the two 1x1 input convs (forward, backward),
then per level the forward block's conv1, conv2 and the backward block's conv1, conv2.
Every tensor's shape is checked and every key of the PyTorch model must be filled exactly once.
"""
from __future__ import annotations

import hashlib
import re
from collections import Counter
from pathlib import Path

import numpy as np
import torch

from .errors import TimnetError
from .model import TIMNet, TIMNetConfig

FOLD_FILE = "10-fold_weights_best_{k}.hdf5"


def _suffix(name: str) -> int:
    m = re.search(r"_(\d+)$", name)
    return int(m.group(1)) if m else 0  # Keras leaves the first layer of a kind unnumbered


def _read_layers(path: Path) -> dict[str, dict[str, np.ndarray]]:
    """{layer name: {weight name without layer prefix and ':0': array}} for layers with weights."""
    import h5py

    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise TimnetError(f"{path}: not an HDF5 weight file ({e})") from None
    try:
        with f:
            return _layers_of(f, path)
    except (OSError, RuntimeError, UnicodeDecodeError, ValueError, TypeError) as e:
        # a damaged header or metadata: h5py raises RuntimeError ("Unable to synchronously check link
        # existence"), a name's bytes fail to decode, a dataset of strings will not be an array
        raise TimnetError(f"{path}: damaged, its layers cannot be read ({type(e).__name__}: {str(e).splitlines()[0][:120]}); "
                          "expected an intact Keras save_weights HDF5 file") from None


def _layers_of(f, path: Path) -> dict[str, dict[str, np.ndarray]]:
    g = f["model_weights"] if "model_weights" in f else f  # save() files nest the weights
    if "layer_names" not in g.attrs:
        raise TimnetError(f"{path}: no 'layer_names' attribute; expected a Keras save_weights HDF5 file")
    layers = {}
    for raw in g.attrs["layer_names"]:
        name = raw.decode() if isinstance(raw, bytes) else str(raw)
        try:
            names = [n.decode() if isinstance(n, bytes) else str(n) for n in g[name].attrs.get("weight_names", [])]
            if names:
                layers[name] = {n.split("/")[-1].split(":")[0]: np.asarray(g[name][n]) for n in names}
        except (KeyError, OSError) as e:  # h5py's errors for a listed group or dataset that is not there
            raise TimnetError(f"{path}: layer {name!r} is listed in layer_names but cannot be read ({e}); "
                              "expected a complete Keras save_weights HDF5 file") from None
        for weight, value in layers.get(name, {}).items():
            if not np.issubdtype(value.dtype, np.number):
                raise TimnetError(f"{path}: {name}/{weight} holds {value.dtype} values; expected numbers")
    return layers


def _of_kind(layers: dict, kind: str) -> list[str]:
    return sorted((n for n in layers if re.fullmatch(rf"{kind}(_\d+)?", n)), key=_suffix)


def config_from_keras(path: str | Path) -> TIMNetConfig:
    """The TIMNetConfig a weight file implies (levels, widths, classes), checked for consistency."""
    return _config_of(_read_layers(Path(path)), Path(path))


def _config_of(layers: dict, path: Path) -> TIMNetConfig:
    convs, bns = _of_kind(layers, "conv1d"), _of_kind(layers, "batch_normalization")
    weights, dense = _of_kind(layers, "weight_layer"), _of_kind(layers, "dense")
    if len(weights) != 1 or len(dense) != 1 or len(convs) < 6 or (len(convs) - 2) % 4:
        raise TimnetError(
            f"{path}: expected 2 + 4n conv1d layers, 4n batch_normalization, 1 weight_layer and 1 dense; "
            f"found {len(convs)}, {len(bns)}, {len(weights)}, {len(dense)}"
        )
    levels = (len(convs) - 2) // 4
    if len(bns) != 4 * levels:
        raise TimnetError(f"{path}: {len(convs)} conv1d layers imply {levels} levels and {4 * levels} batch_normalization layers; found {len(bns)}")
    k_in = layers[convs[0]].get("kernel")
    k_blocks = [layers[c].get("kernel") for c in convs[2:]]
    k_dense = layers[dense[0]].get("kernel")
    if k_in is None or k_dense is None or k_in.ndim != 3 or k_dense.ndim != 2 or any(k is None or k.ndim != 3 for k in k_blocks):
        raise TimnetError(f"{path}: conv1d/dense layers lack 3-D/2-D 'kernel' weights")
    # the blocks' kernel size is the one most of them have, so that a damaged layer is the one named
    sizes = [k.shape[0] for k in k_blocks]
    counts = Counter(sizes).most_common()
    kernel_size = counts[0][0]
    if len(counts) > 1 and counts[1][1] == counts[0][1]:
        raise TimnetError(f"{path}: the block convs disagree on their kernel size: "
                          + ", ".join(f"{n} of them {size}" for size, n in counts))
    if odd := [(c, n) for c, n in zip(convs[2:], sizes) if n != kernel_size]:
        raise TimnetError(f"{path}: {odd[0][0]}/kernel has kernel size {odd[0][1]} where the other block convs "
                          f"have {kernel_size}" + (f" ({len(odd)} such layers)" if len(odd) > 1 else ""))
    return TIMNetConfig(
        n_features=k_in.shape[1], n_filters=k_in.shape[2], kernel_size=kernel_size,
        dilations=levels, n_classes=k_dense.shape[1],
    )


def _keras_tensors(layers: dict, levels: int) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Keras weights under PyTorch state-dict keys, layouts converted (not yet shape-checked), and
    each key's source ("conv1d_20/kernel"), so an error can name the file's own layer."""
    convs, bns = _of_kind(layers, "conv1d"), _of_kind(layers, "batch_normalization")
    out: dict[str, np.ndarray] = {}
    source: dict[str, str] = {}

    def take(key: str, layer: str, weight: str, convert=lambda a: a):
        out[key], source[key] = convert(layers[layer][weight]), f"{layer}/{weight}"

    def conv(key: str, layer: str):
        take(f"{key}.weight", layer, "kernel", lambda k: np.transpose(k, (2, 1, 0)))  # (k, in, out) -> (out, in, k)
        take(f"{key}.bias", layer, "bias")

    def bn(key: str, layer: str):
        for theirs, ours in (("gamma", "weight"), ("beta", "bias"), ("moving_mean", "running_mean"), ("moving_variance", "running_var")):
            take(f"{key}.{ours}", layer, theirs)

    conv("forward_in", convs[0])
    conv("backward_in", convs[1])
    for j in range(levels):
        for s, stream in enumerate(("forward_blocks", "backward_blocks")):
            for i in (1, 2):
                idx = 4 * j + 2 * s + (i - 1)
                conv(f"{stream}.{j}.conv{i}", convs[2 + idx])
                bn(f"{stream}.{j}.bn{i}", bns[idx])
    # the fusion kernel is (levels, 1) (SPEC §5): flattened only then, else the shape check below names it
    take("fusion", _of_kind(layers, "weight_layer")[0], "kernel",
         lambda k: k.reshape(-1) if k.ndim == 1 or k.ndim == 2 and k.shape[1] == 1 else k)
    dense = _of_kind(layers, "dense")[0]
    take("classifier.weight", dense, "kernel", lambda k: k.T)  # (in, out) -> (out, in)
    take("classifier.bias", dense, "bias")
    return out, source


def load_keras_weights(path: str | Path, *, config: TIMNetConfig | None = None) -> TIMNet:
    """A TIMNet (eval mode) holding the weights of one authors' HDF5 file.

    With `config`, the file must fit it exactly (e.g. the corpus's class count); without,
    the config is read off the file.
    """
    path = Path(path)
    if not path.is_file():
        raise TimnetError(f"{path}: no such weight file")
    layers = _read_layers(path)
    found = _config_of(layers, path)
    if config is not None and found != config:
        diffs = ", ".join(f"{k} {getattr(found, k)} (expected {getattr(config, k)})" for k in found.__dataclass_fields__ if getattr(found, k) != getattr(config, k) and k != "dropout")
        if diffs:
            raise TimnetError(f"{path}: does not fit the model: {diffs}")
        found = config
    model = TIMNet(found)
    try:
        tensors, source = _keras_tensors(layers, found.dilations)
    except KeyError as e:
        raise TimnetError(f"{path}: a layer lacks the weight {e}; expected kernel/bias, gamma/beta/moving_mean/moving_variance") from None
    target = {k: v for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
    missing, extra = sorted(set(target) - set(tensors)), sorted(set(tensors) - set(target))
    if missing or extra:
        raise TimnetError(f"{path}: weights do not map onto the model: missing {missing[:3]}, unexpected {extra[:3]}")
    for key, value in tensors.items():
        if tuple(value.shape) != tuple(target[key].shape):
            raise TimnetError(f"{path}: {source[key]} (for {key}) has shape {tuple(value.shape)} in PyTorch's layout; "
                              f"expected {tuple(target[key].shape)}")
        target[key] = torch.from_numpy(np.ascontiguousarray(value, dtype=np.float32))
    model.load_state_dict(target, strict=False)  # strict minus num_batches_tracked, checked above
    return model.eval()


def highest_keras_fold(folder: str | Path) -> int:
    """The highest k of the authors' fold files 10-fold_weights_best_<k>.hdf5 in `folder`, 0 for none
    (a copy such as `..._1 (1).hdf5` or `..._01.hdf5` is not one)."""
    pattern = re.compile(re.escape(FOLD_FILE).replace(re.escape("{k}"), r"([1-9]\d*)"))
    return max((int(m.group(1)) for f in Path(folder).glob(FOLD_FILE.format(k="*")) if (m := pattern.fullmatch(f.name))),
               default=0)


def keras_fold_files(folder: str | Path, folds: int) -> list[Path]:
    """The authors' per-fold files 10-fold_weights_best_<k>.hdf5, k = 1..folds; all must exist."""
    folder = Path(folder)
    if not folder.is_dir():
        raise TimnetError(f"{folder}: no such weights folder")
    files = [folder / FOLD_FILE.format(k=k) for k in range(1, folds + 1)]
    missing = [f.name for f in files if not f.is_file()]
    if missing:
        raise TimnetError(f"{folder}: missing fold weights {', '.join(missing)}; expected {FOLD_FILE.format(k='<k>')} for k = 1..{folds}")
    # a fold beyond the split, or one fold's file copied over another's, would be scored or
    # ensembled as if it were a model of its own
    if (highest := highest_keras_fold(folder)) > folds:
        raise TimnetError(f"{folder}: {FOLD_FILE.format(k=highest)} is not a fold of the authors' {folds}-fold split; "
                          f"expected {FOLD_FILE.format(k=1)} to {FOLD_FILE.format(k=folds)} only: move it out of the folder")
    seen: dict[bytes, Path] = {}
    for f in files:
        digest = hashlib.sha256(f.read_bytes()).digest()
        if digest in seen:
            raise TimnetError(f"{f}: the very bytes of {seen[digest].name}; expected each fold's own weights (a copy "
                              "over a lost fold?)")
        seen[digest] = f
    return files


def check_corpus_levels(model: TIMNet, corpus: str, path: str | Path) -> None:
    """The authors trained each corpus with its own number of temporal-aware levels (SPEC.md §2):
    a file with another number is another corpus's model, whatever its class count says."""
    from .corpora import CORPORA

    c = CORPORA.get(str(corpus).upper())
    if c is not None and model.config.dilations != c.dilations:
        raise TimnetError(f"{path}: {model.config.dilations} temporal-aware levels; the authors' {c.name} models "
                          f"have {c.dilations} (another corpus's weights?)")


def warn_if_named_for_another_corpus(path: str | Path, corpus: str, *, given_by: str = "--corpus") -> None:
    """The authors' folders are named after their corpus (EMODB_46, CASIA_32, RAVDE_46). EMODB, EMOVO
    and SAVEE models all have 7 classes and 8 levels, so the weights cannot tell which corpus's
    class names are right: where the name says another corpus than `corpus`, say so, and what to
    check (`given_by`: where `corpus` came from)."""
    import re
    import warnings

    from .corpora import CORPORA

    path = Path(path)
    name = (path if path.is_dir() else path.parent).resolve().name  # "." and "fold/.." have a name too
    head = re.split(r"[_\-. ]", name, maxsplit=1)[0].upper()
    named = [c for c in CORPORA if len(head) >= 4 and c.startswith(head)]
    if named and str(corpus).upper() not in named:
        warnings.warn(f"{path}: named like the authors' {named[0]} weights, but read as {str(corpus).upper()}'s "
                      f"classes ({', '.join(CORPORA[str(corpus).upper()].labels)}); check {given_by}", stacklevel=2)
