"""Small generated Keras models: real files the real loader reads, built in well under a second."""

from __future__ import annotations

from pathlib import Path
from typing import Any

TINY_LABELS = [f"class_{i}" for i in range(10)]


def write_labels(path: Path, classes: int) -> None:
    path.write_text("\n".join(f"class_{i}" for i in range(classes)) + "\n")


def build_tiny_model(folder: Path, input_size: int = 32, classes: int = 10) -> tuple[Path, Path]:
    """A conv + dense classifier saved as `.keras`, with a labels file; returns (model, labels)."""
    import keras

    keras.utils.set_random_seed(7)
    inputs = keras.Input((input_size, input_size, 3))
    x = keras.layers.Conv2D(8, 3, strides=2, activation="relu", name="conv")(inputs)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    outputs = keras.layers.Dense(classes, activation="softmax", name="fc")(x)
    return save_with_labels(keras.Model(inputs, outputs, name="tiny"), folder, "tiny", classes)


def save_with_labels(model: Any, folder: Path, stem: str, classes: int) -> tuple[Path, Path]:
    """`model` saved as FOLDER/STEM.keras beside FOLDER/STEM-labels.txt; returns (model, labels)."""
    folder.mkdir(parents=True, exist_ok=True)
    model_path, labels_path = folder / f"{stem}.keras", folder / f"{stem}-labels.txt"
    model.save(model_path)
    write_labels(labels_path, classes)
    return model_path, labels_path


def build_model_failing_warm_up(folder: Path, kernel: int = 64, classes: int = 10) -> tuple[Path, Path]:
    """A model that loads but cannot run on images smaller than `kernel`: its input takes any height and
    width, so the loader's size check passes, and the first real batch fails inside a too-large convolution.
    """
    import keras

    inputs = keras.Input((None, None, 3))
    x = keras.layers.Conv2D(4, kernel, name="conv_needs_large_images")(inputs)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    outputs = keras.layers.Dense(classes, activation="softmax", name="fc")(x)
    return save_with_labels(
        keras.Model(inputs, outputs, name="fails_warm_up"), folder, "fails-warm-up", classes
    )


OUT_OF_MEMORY_ROWS = 2**25
"""Each image row repeated this often by `build_model_out_of_memory_at_warm_up`: 32 x 2**25 rows is still an int32
height, and 512 TiB for one image is more than any machine's address space (2**47 bytes), so the allocator
refuses it at once whatever the kernel's overcommit policy, instead of anything being paged in."""


def build_model_out_of_memory_at_warm_up(
    folder: Path, input_size: int = 32, classes: int = 10
) -> tuple[Path, Path]:
    """A model that loads and passes every check, then runs out of memory on its first batch of one: a Dense
    layer widens each pixel to 4096 channels and UpSampling2D repeats each row OUT_OF_MEMORY_ROWS times,
    a 512 TiB tensor that TensorFlow's CPU allocator refuses with ResourceExhaustedError (in well under a second,
    without touching the memory)."""
    import keras

    inputs = keras.Input((input_size, input_size, 3))
    x = keras.layers.Dense(4096, name="wide")(inputs)
    x = keras.layers.UpSampling2D(size=(OUT_OF_MEMORY_ROWS, 1), name="taller_than_memory")(x)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    outputs = keras.layers.Dense(classes, activation="softmax", name="fc")(x)
    return save_with_labels(
        keras.Model(inputs, outputs, name="out_of_memory"), folder, "out-of-memory", classes
    )


if __name__ == "__main__":
    import sys

    # python -m tests.tiny_model FOLDER [INPUT_SIZE]
    print(build_tiny_model(Path(sys.argv[1]), *(int(size) for size in sys.argv[2:3])))


def _counts_traces_class() -> type:
    import keras

    @keras.saving.register_keras_serializable(package="inferd_test")
    class CountsTraces(keras.layers.Layer):  # type: ignore[misc]
        """Passes its input through and counts how often its Python `call` runs: once per trace."""

        traces = 0

        def call(self, inputs: Any) -> Any:
            CountsTraces.traces += 1
            return inputs

    return CountsTraces


def __getattr__(name: str) -> Any:
    # Built on first use, so that importing this module does not import Keras (and pick its backend).
    if name == "CountsTraces":
        globals()[name] = _counts_traces_class()
        return globals()[name]
    raise AttributeError(name)


def build_counting_model(folder: Path, input_size: int = 32, classes: int = 10) -> tuple[Path, Path]:
    """A tiny model whose layer `CountsTraces` counts compilations (tests/integration/test_model_buckets.py)."""
    import keras

    counts_traces = __getattr__("CountsTraces")
    inputs = keras.Input((input_size, input_size, 3))
    x = counts_traces(name="counts_traces")(inputs)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    outputs = keras.layers.Dense(classes, activation="softmax", name="fc")(x)
    folder.mkdir(parents=True, exist_ok=True)
    model_path, labels_path = folder / "counting.keras", folder / "labels.txt"
    keras.Model(inputs, outputs, name="counting").save(model_path)
    write_labels(labels_path, classes)
    return model_path, labels_path
