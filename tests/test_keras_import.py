"""Import of the authors' Keras HDF5 weights: a synthetic round trip, refusals, real parity."""
import shutil

import h5py
import numpy as np
import pytest
import torch

from conftest import PRETRAINED, need
from timnet.errors import TimnetError
from timnet.keras_import import config_from_keras, keras_fold_files, load_keras_weights
from timnet.model import TIMNet, TIMNetConfig


def write_keras_h5(model: TIMNet, path, *, conv_start=8, bn_start=9):
    """Write `model` the way Keras 2.4 save_weights lays out TIM-Net (numbering crosses 9 -> 10)."""
    sd = {k: v.numpy() for k, v in model.state_dict().items()}
    layers = {}
    convs = ["forward_in", "backward_in"]
    bns = []
    for j in range(model.config.dilations):
        for stream in ("forward_blocks", "backward_blocks"):
            convs += [f"{stream}.{j}.conv1", f"{stream}.{j}.conv2"]
            bns += [f"{stream}.{j}.bn1", f"{stream}.{j}.bn2"]
    for i, key in enumerate(convs):
        layers[f"conv1d_{conv_start + i}"] = {"kernel": sd[f"{key}.weight"].transpose(2, 1, 0), "bias": sd[f"{key}.bias"]}
    for i, key in enumerate(bns):
        layers[f"batch_normalization_{bn_start + i}"] = {
            "gamma": sd[f"{key}.weight"], "beta": sd[f"{key}.bias"],
            "moving_mean": sd[f"{key}.running_mean"], "moving_variance": sd[f"{key}.running_var"]}
    layers["weight_layer_1"] = {"kernel": sd["fusion"].reshape(-1, 1)}
    layers["dense_1"] = {"kernel": sd["classifier.weight"].T, "bias": sd["classifier.bias"]}
    # Store layers in a scrambled order, as Keras's topological listing is not creation order.
    names = sorted(layers, key=lambda n: n[::-1]) + ["input_2", "activation_3"]
    with h5py.File(path, "w") as f:
        f.attrs["layer_names"] = np.array([n.encode() for n in names])
        for name in names:
            g = f.create_group(name)
            weights = layers.get(name, {})
            g.attrs["weight_names"] = np.array([f"{name}/{w}:0".encode() for w in weights])
            for w, value in weights.items():
                g.create_dataset(f"{name}/{w}:0", data=value)
    return path


def randomised(config, seed=1):
    torch.manual_seed(seed)
    model = TIMNet(config)
    # Every tensor its own random values: at the Keras initialisation biases and BN betas are all 0
    # and gammas all 1, so an importer that took one from the wrong layer would still round-trip.
    with torch.no_grad():
        for p in model.parameters():
            p.uniform_(-1.0, 1.0)
        for name, b in model.named_buffers():
            if "running" in name:
                b.uniform_(0.5, 1.5)
    return model.eval()


@pytest.mark.parametrize("levels,classes", [(8, 7), (10, 4)])
def test_round_trip(tmp_path, levels, classes):
    model = randomised(TIMNetConfig(dilations=levels, n_classes=classes))
    path = write_keras_h5(model, tmp_path / "w.hdf5")
    assert config_from_keras(path) == model.config
    imported = load_keras_weights(path)
    for k, v in model.state_dict().items():
        if not k.endswith("num_batches_tracked"):
            assert torch.equal(imported.state_dict()[k], v), k
    x = torch.randn(2, 40, 39)
    assert torch.allclose(imported(x), model(x))


def test_refuses_wrong_class_count(tmp_path):
    path = write_keras_h5(randomised(TIMNetConfig(n_classes=6)), tmp_path / "w.hdf5")
    with pytest.raises(TimnetError, match="n_classes 6 \\(expected 7\\)"):
        load_keras_weights(path, config=TIMNetConfig(n_classes=7))


def test_refuses_bad_shape_and_missing_layer(tmp_path):
    path = write_keras_h5(randomised(TIMNetConfig()), tmp_path / "w.hdf5")
    with h5py.File(path, "a") as f:
        del f["conv1d_20/conv1d_20/kernel:0"]
        f["conv1d_20"].create_dataset("conv1d_20/kernel:0", data=np.zeros((2, 39, 40), np.float32))
    with pytest.raises(TimnetError, match=r"w.hdf5: conv1d_20/kernel \(for backward_blocks.2.conv1.weight\) has shape \(40, 39, 2\) in PyTorch's layout; expected \(39, 39, 2\)"):
        load_keras_weights(path)
    # another kernel size in one block conv, the first (conv1d_10) included: that layer is named
    for layer in ("conv1d_20", "conv1d_10"):
        path = write_keras_h5(randomised(TIMNetConfig()), tmp_path / f"{layer}.hdf5")
        with h5py.File(path, "a") as f:
            del f[f"{layer}/{layer}/kernel:0"]
            f[layer].create_dataset(f"{layer}/kernel:0", data=np.zeros((3, 39, 39), np.float32))
        for reader in (load_keras_weights, config_from_keras):
            with pytest.raises(TimnetError, match=rf"{layer}.hdf5: {layer}/kernel has kernel size 3 where the other block convs have 2$"):
                reader(path)
    # one level, two of its four block convs of another size: no majority to name the odd ones by
    path = write_keras_h5(randomised(TIMNetConfig(dilations=1)), tmp_path / "tie.hdf5")
    with h5py.File(path, "a") as f:
        for layer in ("conv1d_10", "conv1d_11"):
            del f[f"{layer}/{layer}/kernel:0"]
            f[layer].create_dataset(f"{layer}/kernel:0", data=np.zeros((3, 39, 39), np.float32))
    with pytest.raises(TimnetError, match=r"tie.hdf5: the block convs disagree on their kernel size: 2 of them \d, 2 of them \d$"):
        config_from_keras(path)
    path2 = write_keras_h5(randomised(TIMNetConfig()), tmp_path / "w2.hdf5")
    with h5py.File(path2, "a") as f:
        names = [n for n in f.attrs["layer_names"] if n != b"batch_normalization_9"]
        f.attrs["layer_names"] = np.array(names)
    with pytest.raises(TimnetError, match="batch_normalization"):
        load_keras_weights(path2)
    # a layer listed but not in the file, and a listed weight not in its layer: one error each
    for name, missing in (("w3.hdf5", "dense_1"), ("w4.hdf5", "conv1d_20/conv1d_20/kernel:0")):
        path = write_keras_h5(randomised(TIMNetConfig()), tmp_path / name)
        with h5py.File(path, "a") as f:
            del f[missing]
        for reader in (load_keras_weights, config_from_keras):
            with pytest.raises(TimnetError, match=rf"{name}: layer '{missing.split('/')[0]}' is listed in layer_names but cannot be read"):
                reader(path)


def test_refuses_non_hdf5_and_missing_fold(tmp_path):
    bad = tmp_path / "10-fold_weights_best_1.hdf5"
    bad.write_text("not hdf5")
    with pytest.raises(TimnetError, match="not an HDF5 weight file"):
        load_keras_weights(bad)
    with pytest.raises(TimnetError, match="missing fold weights 10-fold_weights_best_2.hdf5"):
        keras_fold_files(tmp_path, 3)


def test_stray_copied_and_damaged_fold_files_are_refused(tmp_path):
    """A fold file past the split, one fold's file copied over another's, and metadata h5py cannot
    read are each one error naming the file, not an ensemble of the wrong models or a traceback."""
    config = TIMNetConfig(n_classes=4, dilations=2)
    for k in (1, 2, 3):
        torch.manual_seed(k)
        write_keras_h5(TIMNet(config).eval(), tmp_path / f"10-fold_weights_best_{k}.hdf5")
    assert len(keras_fold_files(tmp_path, 3)) == 3
    shutil.copy(tmp_path / "10-fold_weights_best_1.hdf5", tmp_path / "10-fold_weights_best_4.hdf5")
    with pytest.raises(TimnetError, match=r"10-fold_weights_best_4.hdf5 is not a fold of the authors' 3-fold split; "
                                          r"expected 10-fold_weights_best_1.hdf5 to 10-fold_weights_best_3.hdf5 only"):
        keras_fold_files(tmp_path, 3)
    (tmp_path / "10-fold_weights_best_4.hdf5").rename(tmp_path / "10-fold_weights_best_3.hdf5")
    with pytest.raises(TimnetError, match=r"10-fold_weights_best_3.hdf5: the very bytes of 10-fold_weights_best_1.hdf5"):
        keras_fold_files(tmp_path, 3)
    # a layer name whose bytes are not text, a kernel of strings
    torch.manual_seed(0)
    path = write_keras_h5(TIMNet(config).eval(), tmp_path / "names.hdf5")
    with h5py.File(path, "a") as f:
        f.attrs["layer_names"] = np.array([b"\xf7\xff"] + list(f.attrs["layer_names"]))
    with pytest.raises(TimnetError, match=r"names.hdf5: damaged, its layers cannot be read \(UnicodeDecodeError"):
        load_keras_weights(path)
    path = write_keras_h5(TIMNet(config).eval(), tmp_path / "strings.hdf5")
    with h5py.File(path, "a") as f:
        del f["dense_1/dense_1/bias:0"]
        f["dense_1"].create_dataset("dense_1/bias:0", data=np.array([b"a", b"b", b"c", b"d"]))
    with pytest.raises(TimnetError, match=r"strings.hdf5: dense_1/bias holds \|S1 values; expected numbers"):
        load_keras_weights(path)


@pytest.mark.realdata
def test_a_damaged_authors_file_is_one_error(tmp_path):
    """Bytes overwritten in the header of a real authors' file (where h5py raises RuntimeError or a
    name fails to decode) end in one error naming it."""
    original = need(PRETRAINED / "EMODB_46") / "10-fold_weights_best_1.hdf5"
    for offset in (704, 832, 1024):
        damaged = tmp_path / f"at_{offset}.hdf5"
        data = bytearray(original.read_bytes())
        data[offset : offset + 16] = np.random.default_rng(offset).integers(0, 256, 16, dtype=np.uint8).tobytes()
        damaged.write_bytes(bytes(data))
        with pytest.raises(TimnetError, match=rf"at_{offset}.hdf5: (damaged|not an HDF5|.*cannot be read|.*expected)"):
            load_keras_weights(damaged)


# ---- real-data tier -------------------------------------------------------------------------

@pytest.mark.realdata
def test_emodb_weights_reproduce_reference(reference):
    """Each sample's probabilities and fused features under its test-fold model: measured within
    6.6e-7 and 8.1e-6 of the authors' TensorFlow outputs; asserted with margins for other CPUs' kernels."""
    folder = need(PRETRAINED / "EMODB_46")
    for k, path in enumerate(keras_fold_files(folder, 10), start=1):
        model = load_keras_weights(path, config=TIMNetConfig(n_classes=7))
        idx = np.flatnonzero(reference["test_fold"] == k)
        with torch.no_grad():
            logits, fused = model(torch.from_numpy(reference["mfcc"][idx]), return_features=True)
        np.testing.assert_allclose(logits.softmax(-1).numpy(), reference["probs"][idx], atol=1e-5, rtol=0)
        np.testing.assert_allclose(fused.numpy(), reference["fused"][idx], atol=5e-5, rtol=0)


@pytest.mark.realdata
def test_casia_weights_import_and_refusals(tmp_path):
    folder = need(PRETRAINED / "CASIA_32")
    for path in keras_fold_files(folder, 10):
        model = load_keras_weights(path, config=TIMNetConfig(n_classes=6))
        assert model.config.n_classes == 6 and model.config.dilations == 8
    with pytest.raises(TimnetError, match="n_classes 6 \\(expected 7\\)"):
        load_keras_weights(folder / "10-fold_weights_best_1.hdf5", config=TIMNetConfig(n_classes=7))
    partial = tmp_path / "partial"
    partial.mkdir()
    for k in range(1, 10):
        shutil.copy(folder / f"10-fold_weights_best_{k}.hdf5", partial)
    with pytest.raises(TimnetError, match="missing fold weights 10-fold_weights_best_10.hdf5"):
        keras_fold_files(partial, 10)


def test_another_corpus_levels_are_refused_by_test_and_predict(tmp_path):
    """IEMOCAP's authors' models have 10 levels: 8-level files with its 4 classes are another
    corpus's weights, refused by `test` and `predict` rather than scored."""
    from test_train import synthetic
    from timnet.evaluate import fold_models
    from timnet.predict import load_model

    folder = tmp_path / "w"
    folder.mkdir()
    for k in range(1, 11):
        write_keras_h5(randomised(TIMNetConfig(dilations=8, n_classes=4), seed=k), folder / f"10-fold_weights_best_{k}.hdf5")
    fs = synthetic()
    fs.corpus, fs.labels = "IEMOCAP", ("angry", "happy", "neutral", "sad")
    fs.y = fs.y % 4
    with pytest.raises(TimnetError, match="8 temporal-aware levels; the authors' IEMOCAP models have 10"):
        fold_models(folder, fs, folds=10, seed=0)
    with pytest.raises(TimnetError, match="8 temporal-aware levels; the authors' IEMOCAP models have 10 .*; check --corpus"):
        load_model(str(folder), corpus="iemocap")
    # 4 classes read as a 6-class corpus: the option to change is named, with the file
    with pytest.raises(TimnetError, match=r"10-fold_weights_best_1.hdf5: 4 classes, but --corpus casia has 6 "
                                          r"\(angry, fear, happy, neutral, sad, surprise\); .* check --corpus"):
        load_model(str(folder), corpus="casia")


def test_another_input_width_and_a_malformed_fusion_kernel_are_refused(tmp_path):
    """An authors'-format file of 20 features per frame is refused by `predict` (39 MFCCs computed)
    with one line, not a convolution's traceback; a fusion kernel not (levels, 1) is refused as any
    misshapen weight is, not flattened into place."""
    from timnet.predict import load_model

    path = write_keras_h5(randomised(TIMNetConfig(n_features=20)), tmp_path / "f20.hdf5")
    with pytest.raises(TimnetError, match=r"f20.hdf5: a model takes 20 features per frame, but its feature config gives 39 MFCCs"):
        load_model(str(path), corpus="emodb")
    path = write_keras_h5(randomised(TIMNetConfig()), tmp_path / "fusion.hdf5")
    with h5py.File(path, "a") as f:
        del f["weight_layer_1/weight_layer_1/kernel:0"]
        f["weight_layer_1"].create_dataset("weight_layer_1/kernel:0", data=np.zeros((4, 2), np.float32))
    with pytest.raises(TimnetError, match=r"fusion.hdf5: weight_layer_1/kernel \(for fusion\) has shape \(4, 2\)"):
        load_keras_weights(path)
