"""Export Keras models to ONNX with tf2onnx (run by the TensorFlow venv's interpreter, not by
pytest: TensorFlow cannot share the test environment, its ml_dtypes is newer than onnx's cap).

    python keras_exports.py OUT_FOLDER

Writes ``resnet50.onnx`` and ``mobilenetv3small.onnx`` (224x224, as Keras builds them) and
``onet.onnx`` (MTCNN's 48x48 output network: a plain conv stack with PReLU, flatten, dense),
all with random weights, NHWC inputs and batch 1, at opset 17.
"""

import sys
from pathlib import Path

import tensorflow as tf
import tf2onnx


def onet() -> tf.keras.Model:
    layers = tf.keras.layers
    x = inputs = tf.keras.Input((48, 48, 3), batch_size=1, name="input")
    for channels, kernel, pool in ((32, 3, 3), (64, 3, 3), (64, 3, 2), (128, 2, 0)):
        x = layers.PReLU(shared_axes=[1, 2])(layers.Conv2D(channels, kernel)(x))
        if pool:
            x = layers.MaxPool2D(pool, 2, padding="same")(x)
    x = layers.PReLU()(layers.Dense(256)(layers.Flatten()(x)))
    return tf.keras.Model(inputs, layers.Dense(2, activation="softmax")(x))


def main(folder: Path) -> None:
    tf.keras.utils.set_random_seed(0)
    apps = tf.keras.applications
    models = {"resnet50": (apps.ResNet50(weights=None, input_shape=(224, 224, 3)), 224),
              "mobilenetv3small": (apps.MobileNetV3Small(weights=None,
                                                         input_shape=(224, 224, 3)), 224),
              "onet": (onet(), 48)}
    for name, (model, size) in models.items():
        spec = (tf.TensorSpec((1, size, size, 3), tf.float32, name="input"),)
        tmp = folder / f"{name}.tmp"
        tf2onnx.convert.from_keras(model, input_signature=spec, opset=17, output_path=str(tmp))
        tmp.rename(folder / f"{name}.onnx")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
