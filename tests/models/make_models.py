"""Generate the TFLite model fixtures used by the edge-agent inference tests.

What it writes (all into the directory holding this script, tests/models/):

  anomaly_autoencoder.tflite     [1,16] f32 -> [1,1] f32  dense autoencoder, reconstruction
                                 error computed in-model (SUB, MUL, SUM axis=1, MUL 1/16),
                                 squashed by LOGISTIC into (0,1); threshold 0.8
  anomaly_logistic.tflite        [1,16] f32 -> [1,1] f32  logistic regression (sigmoid score)
  anomaly_conv1d.tflite          [1,16] f32 -> [1,1] f32  small 1-D CNN (CONV_2D on [1,1,16,1])
  image_classifier.tflite        [1,32,32,3] f32 in [0,1] -> [1,3] softmax
  image_classifier.labels.txt    one label per line, in output order
  images/<label>_<n>.png         6 test images, 48x48 RGB (the agent resizes them to 32x32)
  images/golden.json             LiteRT top-1 label + softmax for each test image
  <model>.golden.json            10 (anomaly) / 8 (image) input/output vectors from LiteRT
  anomaly_autoencoder.broken_golden.json   same inputs, deliberately wrong outputs
  unsupported_op.tflite          contains SQUARED_DIFFERENCE (tract-tflite 0.23.9 refuses to load it)
  panics_loader.tflite           FULLY_CONNECTED without a bias (tract-tflite 0.23.9 panics on load)
  manifest.json                  per-model shapes, TFLite op list, sha256

Everything is deterministic: fixed seeds, single-threaded TensorFlow, op determinism on.
Re-running it with the pinned versions in requirements.txt rebuilds the same files.

How to run (from the repository root; the venv lives outside the repo):

    python3 -m venv /tmp/tfvenv
    /tmp/tfvenv/bin/pip install -r tests/models/requirements.txt
    /tmp/tfvenv/bin/python tests/models/make_models.py

Optional: `make_models.py --quant-candidates /tmp/quant` also writes full-int8 variants of the
four models (with LiteRT outputs) into /tmp/quant, to re-check whether tract-tflite can run them
(0.23.9 cannot; none is committed, see README.md).

Data conventions shared with the agent (see README.md in this directory):

  * Anomaly models take a window of 16 *normalised* readings: x = (raw - 20.0) / 3.5
    (NORM_MEAN / NORM_STD below). Training "normal" windows are
    raw = 20 + A*sin(2*pi*f*t/16 + phi) + offset + N(0, 0.2) with A in [4,6] and
    f in [0.5,2] cycles per window, offset in [-0.5,0.5]; a "spiked" window adds
    +6 std (= +21.0 raw units, +6.0 normalised) to one reading.
  * Anomaly scores are in (0,1); a score > 0.8 (THRESHOLD) means anomaly.
  * Image input: decode PNG as RGB, resize to 32x32 with bilinear filtering
    (PIL Image.resize((32,32), Image.BILINEAR) is the reference), then float32(pixel)/255.0,
    NHWC layout [1,32,32,3].
"""

import hashlib
import json
import os
import shutil
import sys
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ["TF_DETERMINISTIC_OPS"] = "1"
os.environ["CUDA_VISIBLE_DEVICES"] = ""
os.environ["PYTHONHASHSEED"] = "0"

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import keras  # noqa: E402
from PIL import Image  # noqa: E402
from ai_edge_litert.interpreter import Interpreter, OpResolverType  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
IMG_DIR = os.path.join(HERE, "images")

SEED = 20240611
WINDOW = 16
NORM_MEAN = 20.0          # raw units
NORM_STD = 3.5            # raw units
SPIKE_STD = 6.0           # a spike adds SPIKE_STD * NORM_STD to one raw reading
THRESHOLD = 0.8
# Autoencoder score = LOGISTIC(AE_SCALE * (mse - AE_CENTER)), mse = sum((x - recon)^2, axis=1) / 16
# (mse in normalised units). Chosen from the held-out mse distributions printed by this script:
# normal windows: mse median 0.0027, max 0.0167 -> score <= 0.018; +6 std spike: mse min 0.72,
# median 2.15 -> score >= 0.988. The 0.8 threshold sits at mse = 0.35 + ln(4)/12 = 0.466.
AE_CENTER = 0.35
AE_SCALE = 12.0
GOLDEN_TOLERANCE = 1e-5

LABELS = ["horizontal_stripes", "vertical_stripes", "circle"]
IMG_SIZE = 32             # model input
TEST_IMG_SIZE = 48        # committed PNGs; the agent must resize them to 32x32


def set_seeds(seed):
    keras.utils.set_random_seed(seed)
    np.random.seed(seed)


tf.config.threading.set_intra_op_parallelism_threads(1)
tf.config.threading.set_inter_op_parallelism_threads(1)
tf.config.experimental.enable_op_determinism()


# --------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------

def raw_windows(rng, n):
    """n "normal" windows in raw units (shape [n,16])."""
    t = np.arange(WINDOW, dtype=np.float64)[None, :]
    amp = rng.uniform(4.0, 6.0, size=(n, 1))
    freq = rng.uniform(0.5, 2.0, size=(n, 1))
    phase = rng.uniform(0.0, 2 * np.pi, size=(n, 1))
    offset = rng.uniform(-0.5, 0.5, size=(n, 1))
    noise = rng.normal(0.0, 0.2, size=(n, WINDOW))
    return NORM_MEAN + offset + amp * np.sin(2 * np.pi * freq * t / WINDOW + phase) + noise


def add_spikes(rng, raw, std=SPIKE_STD):
    out = raw.copy()
    idx = rng.integers(0, WINDOW, size=len(raw))
    out[np.arange(len(raw)), idx] += std * NORM_STD
    return out


def normalise(raw):
    return ((raw - NORM_MEAN) / NORM_STD).astype(np.float32)


def make_image(rng, label, size):
    """One RGB image (uint8 [size,size,3]) of class `label`, random colours and noise."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    # Two colours that differ enough to be visible.
    while True:
        fg = rng.uniform(0.0, 1.0, size=3)
        bg = rng.uniform(0.0, 1.0, size=3)
        if np.abs(fg - bg).sum() > 0.6:
            break
    if label == "horizontal_stripes" or label == "vertical_stripes":
        period = rng.uniform(size / 8.0, size / 3.0)
        phase = rng.uniform(0, period)
        coord = yy if label == "horizontal_stripes" else xx
        mask = (((coord + phase) % period) < period / 2.0).astype(np.float64)
    elif label == "circle":
        r = rng.uniform(size * 0.2, size * 0.42)
        cy = rng.uniform(r, size - r)
        cx = rng.uniform(r, size - r)
        d = np.sqrt((yy - cy) ** 2 + (xx - cx) ** 2)
        if rng.uniform() < 0.5:
            mask = (d <= r).astype(np.float64)               # filled disc
        else:
            w = rng.uniform(size * 0.05, size * 0.12)
            mask = (np.abs(d - r) <= w / 2).astype(np.float64)  # ring
    else:
        raise ValueError(label)
    img = mask[..., None] * fg + (1 - mask[..., None]) * bg
    img = img + rng.normal(0.0, rng.uniform(0.02, 0.12), size=img.shape)
    return (np.clip(img, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def resize_to_input(img_u8):
    """The reference pre-processing: bilinear resize to 32x32, then /255.0 as float32."""
    im = Image.fromarray(img_u8)
    if im.size != (IMG_SIZE, IMG_SIZE):
        im = im.resize((IMG_SIZE, IMG_SIZE), Image.BILINEAR)
    return np.asarray(im, dtype=np.float32) / np.float32(255.0)


def image_dataset(rng, n):
    xs, ys = [], []
    for i in range(n):
        label = int(rng.integers(0, len(LABELS)))
        # Half generated at 32x32, half generated at 48x48 and resized like the agent does.
        size = IMG_SIZE if i % 2 == 0 else TEST_IMG_SIZE
        xs.append(resize_to_input(make_image(rng, LABELS[label], size)))
        ys.append(label)
    return np.stack(xs), np.array(ys, dtype=np.int32)


# --------------------------------------------------------------------------------------------
# Conversion / reference inference helpers
# --------------------------------------------------------------------------------------------

def convert(fn, trackables, input_shape, input_name, out_name):
    """fn: tf-traceable callable x -> y. Saved as a SavedModel, then converted with
    TFLiteConverter.from_saved_model, TFLITE_BUILTINS only, float32, fixed batch 1."""
    archive = keras.export.ExportArchive()
    for t in trackables:
        archive.track(t)
    archive.add_endpoint(
        name="serve", fn=fn,
        input_signature=[tf.TensorSpec(input_shape, tf.float32, name=input_name)])
    tmp = tempfile.mkdtemp(prefix="edgepipe_sm_")
    try:
        archive.write_out(tmp, verbose=False)
        conv = tf.lite.TFLiteConverter.from_saved_model(tmp)
        conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
        data = conv.convert()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    path = os.path.join(HERE, out_name)
    with open(path, "wb") as f:
        f.write(data)
    return path


# Reference: LiteRT's builtin kernels without the default XNNPACK delegate, one thread.
RESOLVER = OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES


def interpreter(path, resolver=RESOLVER):
    it = Interpreter(model_path=path, num_threads=1, experimental_op_resolver_type=resolver)
    it.allocate_tensors()
    return it


def run_litert(path, inputs, resolver=RESOLVER):
    """inputs: array [k, ...input shape without batch...]; returns [k, ...] outputs."""
    it = interpreter(path, resolver)
    inp = it.get_input_details()[0]
    out = it.get_output_details()[0]
    res = []
    for x in inputs:
        it.set_tensor(inp["index"], np.asarray(x, dtype=np.float32).reshape(inp["shape"]))
        it.invoke()
        res.append(it.get_tensor(out["index"]).copy())
    return np.stack(res)


def op_names(path):
    it = Interpreter(model_path=path)
    return [d["op_name"] for d in it._get_ops_details()]


def check_fc_bias(path, expect_bias=True):
    """Every FULLY_CONNECTED must carry a non-zero bias (tract panics otherwise)."""
    it = Interpreter(model_path=path)
    it.allocate_tensors()
    for d in it._get_ops_details():
        if d["op_name"] != "FULLY_CONNECTED":
            continue
        ins = list(d["inputs"])
        has = len(ins) >= 3 and ins[2] >= 0
        if expect_bias:
            assert has, f"{path}: FULLY_CONNECTED without bias"
            b = it.get_tensor(ins[2])
            assert np.any(b != 0), f"{path}: all-zero bias"
        else:
            assert not has, f"{path}: expected a bias-less FULLY_CONNECTED"


def f32_json(v):
    """Shortest decimal that reads back (via f64, as serde_json does) to the same f32."""
    v = np.float32(v)
    s = np.format_float_positional(v, unique=True, trim="-") if abs(v) >= 1e-4 or v == 0 else \
        np.format_float_scientific(v, unique=True, trim="-")
    assert np.float32(float(s)) == v, (s, v)
    return s


def dump_json_f32(obj):
    """json.dumps, but float32 lists use the shortest round-tripping representation."""
    def conv(o):
        if isinstance(o, np.ndarray):
            return [conv(v) for v in o.ravel().tolist()] if o.dtype != np.float32 else \
                [_F(f32_json(v)) for v in o.ravel()]
        if isinstance(o, dict):
            return {k: conv(v) for k, v in o.items()}
        if isinstance(o, (list, tuple)):
            return [conv(v) for v in o]
        return o

    return _render(conv(obj))


class _F:
    def __init__(self, s):
        self.s = s


def _render(o, indent=0):
    pad = "  " * indent
    if isinstance(o, dict):
        items = [f'{pad}  {json.dumps(k)}: {_render(v, indent + 1).lstrip()}' for k, v in o.items()]
        return pad + "{\n" + ",\n".join(items) + "\n" + pad + "}"
    if isinstance(o, list):
        if all(isinstance(v, (_F, int, float, str)) for v in o):
            return pad + "[" + ", ".join(_render(v) for v in o) + "]"
        return pad + "[\n" + ",\n".join(_render(v, indent + 1) for v in o) + "\n" + pad + "]"
    if isinstance(o, _F):
        return o.s
    return pad + json.dumps(o)


def write_golden(name, path, inputs, outputs, tolerance=GOLDEN_TOLERANCE):
    doc = {
        "model": os.path.basename(path),
        "tolerance": tolerance,
        "vectors": [{"input": np.asarray(i, np.float32), "output": np.asarray(o, np.float32)}
                    for i, o in zip(inputs, outputs)],
    }
    with open(os.path.join(HERE, name), "w") as f:
        f.write(dump_json_f32(doc) + "\n")


# --------------------------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------------------------

def dense(units, activation=None, name=None):
    # Non-zero bias init, and training keeps them non-zero: the converter drops all-zero biases,
    # and tract-tflite 0.23.9 panics on a bias-less FULLY_CONNECTED.
    return keras.layers.Dense(units, activation=activation, use_bias=True,
                              bias_initializer=keras.initializers.Constant(0.05), name=name)


def build_autoencoder(x_train, x_val_normal, x_val_spiked):
    set_seeds(SEED + 1)
    ae = keras.Sequential([
        keras.Input((WINDOW,)),
        dense(12, "tanh", "enc1"),
        dense(6, "tanh", "code"),
        dense(12, "tanh", "dec1"),
        dense(WINDOW, None, "recon"),
    ], name="autoencoder")
    ae.compile(optimizer=keras.optimizers.Adam(3e-3), loss="mse")
    ae.fit(x_train, x_train, epochs=60, batch_size=128, verbose=0, shuffle=True)

    inv_n = tf.constant(1.0 / WINDOW, tf.float32)
    scale = tf.constant(AE_SCALE, tf.float32)
    bias = tf.constant(-AE_SCALE * AE_CENTER, tf.float32)

    def mse_fn(x):
        recon = ae(x, training=False)
        d = tf.subtract(x, recon)                                  # SUB
        sq = tf.multiply(d, d)                                     # MUL
        s = tf.reduce_sum(sq, axis=1, keepdims=True)              # SUM, positive axis
        return tf.multiply(s, inv_n)                               # MUL 1/n  -> mean

    def score_fn(x):
        return tf.sigmoid(tf.add(tf.multiply(mse_fn(x), scale), bias))   # MUL, ADD, LOGISTIC

    mse_n = mse_fn(tf.constant(x_val_normal)).numpy().ravel()
    mse_s = mse_fn(tf.constant(x_val_spiked)).numpy().ravel()
    print(f"  autoencoder mse normal: median {np.median(mse_n):.4f} p99.9 {np.quantile(mse_n, 0.999):.4f} "
          f"max {mse_n.max():.4f}")
    print(f"  autoencoder mse spiked: min {mse_s.min():.4f} p0.1 {np.quantile(mse_s, 0.001):.4f} "
          f"median {np.median(mse_s):.4f}")
    return ae, score_fn


def build_logistic(x, y):
    set_seeds(SEED + 2)
    m = keras.Sequential([keras.Input((WINDOW,)), dense(1, "sigmoid", "logit")], name="logistic")
    m.compile(optimizer=keras.optimizers.Adam(1e-2), loss="binary_crossentropy", metrics=["accuracy"])
    m.fit(x, y, epochs=20, batch_size=128, verbose=0, shuffle=True)
    return m


def build_conv1d(x, y):
    set_seeds(SEED + 3)
    inp = keras.Input((WINDOW,), name="window")
    h = keras.layers.Reshape((1, WINDOW, 1))(inp)                       # RESHAPE -> NHWC
    h = keras.layers.Conv2D(8, (1, 3), padding="same", activation="relu",
                            bias_initializer=keras.initializers.Constant(0.05))(h)
    h = keras.layers.MaxPooling2D((1, 2))(h)                            # [1,1,8,8]
    h = keras.layers.Conv2D(8, (1, 3), padding="same", activation="relu",
                            bias_initializer=keras.initializers.Constant(0.05))(h)
    h = keras.layers.MaxPooling2D((1, 2))(h)                            # [1,1,4,8]
    # Global average pooling as SUM over positive axes (1,2) x 1/4 -> rank-2 [1,8], so the
    # Dense is fed by a rank-2 tensor (no Flatten/Reshape folded into FULLY_CONNECTED).
    h = SumPool(1.0 / 4.0)(h)
    out = dense(1, "sigmoid", "logit")(h)
    m = keras.Model(inp, out, name="conv1d")
    m.compile(optimizer=keras.optimizers.Adam(3e-3), loss="binary_crossentropy", metrics=["accuracy"])
    m.fit(x, y, epochs=15, batch_size=128, verbose=0, shuffle=True)
    return m


class SumPool(keras.layers.Layer):
    """Global average pooling over H,W written as SUM(axis=(1,2)) * 1/n (never MEAN)."""

    def __init__(self, inv_n, **kw):
        super().__init__(**kw)
        self.inv_n = float(inv_n)

    def call(self, x):
        return keras.ops.multiply(keras.ops.sum(x, axis=(1, 2)), self.inv_n)


def build_image_classifier(x, y):
    set_seeds(SEED + 4)
    c = lambda f: keras.layers.Conv2D(f, 3, padding="same", activation="relu",  # noqa: E731
                                      bias_initializer=keras.initializers.Constant(0.05))
    inp = keras.Input((IMG_SIZE, IMG_SIZE, 3), name="image")
    h = c(8)(inp)
    h = keras.layers.MaxPooling2D(2)(h)        # 16x16
    h = c(16)(h)
    h = keras.layers.MaxPooling2D(2)(h)        # 8x8
    h = c(16)(h)
    h = SumPool(1.0 / 64.0)(h)                 # [1,16]
    out = dense(len(LABELS), "softmax", "probs")(h)
    m = keras.Model(inp, out, name="image_classifier")
    m.compile(optimizer=keras.optimizers.Adam(3e-3), loss="sparse_categorical_crossentropy",
              metrics=["accuracy"])
    m.fit(x, y, epochs=20, batch_size=64, verbose=0, shuffle=True)
    return m


# --------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------

# Optional: `make_models.py --quant-candidates DIR` also writes full-int8 variants of every model
# into DIR (outside the repo) with LiteRT reference outputs, to re-check whether tract-tflite can
# run them. None is committed: see README.md ("Quantised models").
QUANT_DIR = None
if "--quant-candidates" in sys.argv:
    QUANT_DIR = os.path.abspath(sys.argv[sys.argv.index("--quant-candidates") + 1])


def quant_convert(fn, trackables, input_shape, input_name, rep, path, io_type):
    archive = keras.export.ExportArchive()
    for t in trackables:
        archive.track(t)
    archive.add_endpoint(name="serve", fn=fn,
                         input_signature=[tf.TensorSpec(input_shape, tf.float32, name=input_name)])
    tmp = tempfile.mkdtemp(prefix="edgepipe_sm_")
    try:
        archive.write_out(tmp, verbose=False)
        conv = tf.lite.TFLiteConverter.from_saved_model(tmp)
        conv.optimizations = [tf.lite.Optimize.DEFAULT]
        conv.representative_dataset = lambda: ([np.asarray(r, np.float32).reshape(input_shape)]
                                               for r in rep[:300])
        conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        if io_type is not None:
            conv.inference_input_type = io_type
            conv.inference_output_type = io_type
        data = conv.convert()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    with open(path, "wb") as f:
        f.write(data)


def write_quant_candidates(sources, golden_windows, img_inputs):
    os.makedirs(QUANT_DIR, exist_ok=True)
    for name, fn, tr, shape, iname, rep in sources:
        inputs = img_inputs if name == "image_classifier" else golden_windows
        for tag, io in (("int8io", tf.int8), ("floatio", None)):
            path = os.path.join(QUANT_DIR, f"{name}.{tag}.tflite")
            try:
                quant_convert(fn, tr, shape, iname, rep, path, io)
            except Exception as e:  # noqa: BLE001
                print(f"  quant {name} {tag}: conversion failed: {e}")
                continue
            it = interpreter(path)
            i0, o0 = it.get_input_details()[0], it.get_output_details()[0]
            iscale, izp = i0["quantization"]
            oscale, ozp = o0["quantization"]
            vecs = []
            for x in inputs:
                x = np.asarray(x, np.float32).reshape(i0["shape"])
                if i0["dtype"] == np.int8:
                    xq = np.clip(np.round(x / iscale) + izp, -128, 127).astype(np.int8)
                else:
                    xq = x
                it.set_tensor(i0["index"], xq)
                it.invoke()
                y = it.get_tensor(o0["index"]).copy()
                vecs.append({"input": xq.ravel().tolist(), "output": y.ravel().tolist()})
            doc = {"model": os.path.basename(path), "ops": op_names(path),
                   "input_dtype": i0["dtype"].__name__, "input_quant": [float(iscale), int(izp)],
                   "output_dtype": o0["dtype"].__name__, "output_quant": [float(oscale), int(ozp)],
                   "vectors": vecs}
            with open(path[:-len(".tflite")] + ".golden.json", "w") as f:
                json.dump(doc, f)
            print(f"  quant {name} {tag}: {doc['input_dtype']} ops={doc['ops']}")


def sha256(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def main():
    os.makedirs(IMG_DIR, exist_ok=True)
    rng = np.random.default_rng(SEED)
    manifest = {}

    # ---------------- windows ----------------
    normal_train = normalise(raw_windows(rng, 20000))
    val_normal = normalise(raw_windows(rng, 5000))
    val_spiked = normalise(add_spikes(rng, raw_windows(rng, 5000)))
    cls_normal = normalise(raw_windows(rng, 10000))
    cls_spiked = normalise(add_spikes(rng, raw_windows(rng, 10000)))
    cls_x = np.concatenate([cls_normal, cls_spiked])
    cls_y = np.concatenate([np.zeros(10000), np.ones(10000)]).astype(np.float32)
    print(f"normalised training windows: mean {normal_train.mean():.3f} std {normal_train.std():.3f}")

    # Golden windows (fixed seed, independent of training data): 0-3 normal, 4-7 one +6 std
    # spike, 8-9 one moderate +3 std spike (borderline: mid-range scores, no expected label).
    grng = np.random.default_rng(SEED + 100)
    g_raw = raw_windows(grng, 8)
    g_raw[4:] = add_spikes(grng, g_raw[4:])
    g_raw = np.concatenate([g_raw, add_spikes(grng, raw_windows(grng, 2), std=3.0)])
    golden_windows = normalise(g_raw)

    window_models = []

    # ---------------- autoencoder ----------------
    print("training anomaly_autoencoder")
    ae, score_fn = build_autoencoder(normal_train, val_normal, val_spiked)
    p = convert(score_fn, [ae], [1, WINDOW], "window", "anomaly_autoencoder.tflite")
    window_models.append(("anomaly_autoencoder", p))
    quant_sources = [("anomaly_autoencoder", score_fn, [ae], [1, WINDOW], "window", normal_train)]
    sn = run_litert(p, val_normal).ravel()
    ss = run_litert(p, val_spiked).ravel()
    print(f"  LiteRT score normal: max {sn.max():.4f}  spiked: min {ss.min():.4f}")
    assert sn.max() < 0.3, "normal windows must score < 0.3"
    assert ss.min() > 0.9, "spiked windows must score > 0.9"

    # ---------------- logistic ----------------
    print("training anomaly_logistic")
    lg = build_logistic(cls_x, cls_y)
    p = convert(lambda x: lg(x, training=False), [lg], [1, WINDOW], "window", "anomaly_logistic.tflite")
    window_models.append(("anomaly_logistic", p))
    quant_sources.append(("anomaly_logistic", lambda x: lg(x, training=False), [lg], [1, WINDOW], "window", cls_x))
    acc = ((run_litert(p, np.concatenate([val_normal[:2000], val_spiked[:2000]])).ravel() > THRESHOLD)
           == np.concatenate([np.zeros(2000), np.ones(2000)])).mean()
    print(f"  logistic held-out accuracy at {THRESHOLD}: {acc:.3f}")
    manifest_extra = {"anomaly_logistic": {"heldout_accuracy_at_threshold": round(float(acc), 4)}}

    # ---------------- conv1d ----------------
    print("training anomaly_conv1d")
    cv = build_conv1d(cls_x, cls_y)
    p = convert(lambda x: cv(x, training=False), [cv], [1, WINDOW], "window", "anomaly_conv1d.tflite")
    window_models.append(("anomaly_conv1d", p))
    quant_sources.append(("anomaly_conv1d", lambda x: cv(x, training=False), [cv], [1, WINDOW], "window", cls_x))
    acc = ((run_litert(p, np.concatenate([val_normal[:2000], val_spiked[:2000]])).ravel() > THRESHOLD)
           == np.concatenate([np.zeros(2000), np.ones(2000)])).mean()
    print(f"  conv1d held-out accuracy at {THRESHOLD}: {acc:.3f}")
    manifest_extra["anomaly_conv1d"] = {"heldout_accuracy_at_threshold": round(float(acc), 4)}
    manifest_extra["anomaly_autoencoder"] = {
        "heldout_accuracy_at_threshold": round(float(((sn > THRESHOLD) == 0).mean() * 0.5
                                                      + ((ss > THRESHOLD) == 1).mean() * 0.5), 4)}

    for name, p in window_models:
        outs = run_litert(p, golden_windows)
        write_golden(f"{name}.golden.json", p, golden_windows, outs)
        if name == "anomaly_autoencoder":
            broken = np.where(outs < 0.5, outs + 0.5, outs - 0.5).astype(np.float32)
            write_golden(f"{name}.broken_golden.json", p, golden_windows, broken)
        print(f"  {name} golden outputs: {np.round(outs.ravel(), 4).tolist()}")

    # ---------------- image classifier ----------------
    print("training image_classifier")
    irng = np.random.default_rng(SEED + 200)
    xi, yi = image_dataset(irng, 3000)
    xv, yv = image_dataset(irng, 600)
    ic = build_image_classifier(xi, yi)
    p = convert(lambda x: ic(x, training=False), [ic], [1, IMG_SIZE, IMG_SIZE, 3], "image",
                "image_classifier.tflite")
    quant_sources.append(("image_classifier", lambda x: ic(x, training=False), [ic],
                          [1, IMG_SIZE, IMG_SIZE, 3], "image", xi))
    with open(os.path.join(HERE, "image_classifier.labels.txt"), "w") as f:
        f.write("\n".join(LABELS) + "\n")
    pv = run_litert(p, xv).reshape(len(xv), -1)
    acc = float((pv.argmax(1) == yv).mean())
    print(f"  image_classifier held-out accuracy: {acc:.3f}")
    manifest_extra["image_classifier"] = {"heldout_accuracy": round(acc, 4)}

    # Test images: 2 per class, 48x48, same generator, fixed seed.
    trng = np.random.default_rng(SEED + 300)
    img_inputs, img_entries = [], []
    for label in LABELS:
        for n in range(2):
            arr = make_image(trng, label, TEST_IMG_SIZE)
            fname = f"{label}_{n}.png"
            Image.fromarray(arr).save(os.path.join(IMG_DIR, fname), optimize=False)
            # Read back from disk so the golden reflects exactly what is committed.
            back = np.asarray(Image.open(os.path.join(IMG_DIR, fname)).convert("RGB"))
            assert np.array_equal(back, arr)
            img_inputs.append(resize_to_input(back))
            img_entries.append({"file": f"images/{fname}", "label": label})
    # Two extra vectors generated directly at 32x32 (no resize involved).
    for label in ("circle", "vertical_stripes"):
        img_inputs.append(resize_to_input(make_image(trng, label, IMG_SIZE)))
    img_inputs = np.stack(img_inputs)
    outs = run_litert(p, img_inputs)
    write_golden("image_classifier.golden.json", p, img_inputs, outs)
    images_golden = {
        "model": "image_classifier.tflite",
        "labels": LABELS,
        "preprocess": {
            "decode": "PNG -> RGB8",
            "source_size": [TEST_IMG_SIZE, TEST_IMG_SIZE],
            "resize": "bilinear to 32x32 (reference: PIL Image.resize((32, 32), Image.BILINEAR), "
                      "which is an area-aware triangle filter when downscaling)",
            "scale": "float32(pixel) / 255.0",
            "layout": "NHWC [1,32,32,3], RGB order",
        },
        # The softmax below is LiteRT's output on the PIL-resized pixels (identical to
        # image_classifier.golden.json vector `golden_vector_index`, tolerance 1e-5 there).
        # Another bilinear implementation (Rust `image` crate, FilterType::Triangle) differs from
        # PIL by at most 1/255 on ~16% of the resized values, which moved the softmax by up to
        # 7.2e-5 in tract: compare end-to-end results with `tolerance` and require equal top-1.
        "tolerance": 1e-3,
        "images": [],
    }
    for i, e in enumerate(img_entries):
        probs = outs[i].ravel()
        top = int(probs.argmax())
        assert LABELS[top] == e["label"], f"{e['file']} misclassified as {LABELS[top]}"
        images_golden["images"].append({
            "file": e["file"], "expected_label": e["label"], "top1": LABELS[top],
            "top1_index": top, "softmax": probs.astype(np.float32),
            "golden_vector_index": i,
        })
    with open(os.path.join(IMG_DIR, "golden.json"), "w") as f:
        f.write(dump_json_f32(images_golden) + "\n")

    # ---------------- negative fixtures ----------------
    print("building unsupported_op / panics_loader")
    set_seeds(SEED + 5)
    sd = keras.Sequential([keras.Input((WINDOW,)), dense(WINDOW, None, "recon")])
    sd(np.zeros((1, WINDOW), np.float32))
    convert(lambda x: tf.reduce_sum(tf.math.squared_difference(x, sd(x, training=False)), axis=1,
                                    keepdims=True),
            [sd], [1, WINDOW], "window", "unsupported_op.tflite")
    set_seeds(SEED + 6)
    nb = keras.Sequential([keras.Input((WINDOW,)),
                           keras.layers.Dense(1, activation="sigmoid", use_bias=False, name="nobias")])
    nb(np.zeros((1, WINDOW), np.float32))
    convert(lambda x: nb(x, training=False), [nb], [1, WINDOW], "window", "panics_loader.tflite")
    assert "SQUARED_DIFFERENCE" in op_names(os.path.join(HERE, "unsupported_op.tflite"))
    check_fc_bias(os.path.join(HERE, "panics_loader.tflite"), expect_bias=False)

    # ---------------- manifest ----------------
    for f in ["anomaly_autoencoder.tflite", "anomaly_logistic.tflite", "anomaly_conv1d.tflite",
              "image_classifier.tflite", "unsupported_op.tflite", "panics_loader.tflite"]:
        path = os.path.join(HERE, f)
        it = interpreter(path)
        ops = op_names(path)
        for banned in ("MEAN", "QUANTIZE", "DEQUANTIZE") if "unsupported" not in f else ():
            assert banned not in ops, f"{f} contains {banned}"
        if f not in ("panics_loader.tflite",):
            check_fc_bias(path)
        name = f[:-len(".tflite")]
        i0, o0 = it.get_input_details()[0], it.get_output_details()[0]
        manifest[f] = {
            "input": {"name": i0["name"], "shape": i0["shape"].tolist(), "dtype": i0["dtype"].__name__},
            "output": {"name": o0["name"], "shape": o0["shape"].tolist(), "dtype": o0["dtype"].__name__},
            "tflite_ops": ops,
            "bytes": os.path.getsize(path),
            "sha256": sha256(path),
            **manifest_extra.get(name, {}),
        }
        print(f"  {f}: {manifest[f]['input']['shape']} -> {manifest[f]['output']['shape']} ops={ops}")
    manifest["_conventions"] = {
        "normalize": {"mean": NORM_MEAN, "std": NORM_STD, "formula": "x = (raw - mean) / std"},
        "spike": f"+{SPIKE_STD} std on one reading",
        "threshold": THRESHOLD,
        "autoencoder_score": f"sigmoid({AE_SCALE} * (sum((x - recon)^2, axis=1) / 16 - {AE_CENTER}))",
        "golden_windows": "vectors 0-3 normal windows, 4-7 one +6 std spike, 8-9 one +3 std spike",
    }
    with open(os.path.join(HERE, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=2)
        f.write("\n")
    if QUANT_DIR:
        write_quant_candidates(quant_sources, golden_windows, img_inputs)
    print("done")


if __name__ == "__main__":
    sys.exit(main())
