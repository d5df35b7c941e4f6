"""The exported graphs and the model directory: batching, dynamic shapes, manifest, TensorRT-ready ONNX."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from maskserve.build.builder import build_model_dir
from maskserve.build.checkpoint import load_model
from maskserve.build.export import PromptDecoder, two_way_transformer
from maskserve.build.specs import get_spec
from maskserve.engines import load
from maskserve.engines.model_dir import Manifest, ModelDirError


TINY = get_spec("tiny")
# input side, embedding grid side, embedding width, low-res mask side
S, E, C, M = TINY.image_size, TINY.embedding_size, TINY.prompt_embed_dim, TINY.mask_input_size


@pytest.fixture(scope="module")
def built(tiny_checkpoint, tmp_path_factory):
    out = tmp_path_factory.mktemp("export") / "tiny"
    manifest = build_model_dir(tiny_checkpoint, "tiny", out)
    return out, manifest


def test_manifest_describes_the_model(built, tiny_checkpoint):
    out, manifest = built
    data = json.loads((out / "manifest.json").read_text())
    assert data["model_type"] == "tiny" and data["backend"] == "onnxruntime" and data["precision"] == "fp32"
    assert data["backend_version"] == ort.__version__
    assert data["image_size"] == S and data["embedding_shape"] == [C, E, E] and data["mask_input_size"] == M
    assert data["embedding_dtype"] == "float32"
    assert len(data["checkpoint_sha256"]) == 64
    assert Manifest.load(out) == manifest


def test_model_version_derives_from_content(built, tiny_checkpoint, tmp_path):
    out, manifest = built
    again = build_model_dir(tiny_checkpoint, "tiny", tmp_path / "again")
    assert again.model_version == manifest.model_version
    changed = torch.load(tiny_checkpoint, weights_only=True)
    changed["mask_decoder.iou_token.weight"] += 1
    torch.save(changed, tmp_path / "changed.pth")
    other = build_model_dir(tmp_path / "changed.pth", "tiny", tmp_path / "other")
    assert other.model_version != manifest.model_version


def test_shipped_model_directory_is_current(tiny_model_dir, built):
    """The shipped ONNX files must be what the shipped checkpoint exports to (same outputs)."""
    out, manifest = built
    assert Manifest.load(tiny_model_dir).model_version == manifest.model_version
    shipped, fresh = load(tiny_model_dir), load(out)
    x = np.random.default_rng(0).normal(size=(1, 3, S, S)).astype(np.float32)
    e1, e2 = shipped.encoder.encode(x), fresh.encoder.encode(x)
    assert np.abs(e1 - e2).max() < 1e-5
    args = ({"image_embeddings": e1}, np.array([[[10.0, 20.0], [0, 0]]], np.float32), np.array([[1.0, -1.0]], np.float32),
            np.zeros((1, 1, M, M), np.float32), np.zeros(1, np.float32))
    for a, b in zip(shipped.decoder.decode(*args), fresh.decoder.decode(*args)):
        assert np.abs(a - b).max() < 1e-4


def test_points_decoder_computes_only_the_cells_asked_for(built, tmp_path):
    """`mask_extent` limits the mask head to the image's cells: the full grid's logits, top-left corner; a
    points graph without that input (exported before it existed) still runs, over the whole grid."""
    out, _ = built
    decoder = load(out, encoder=False).decoder
    rng = np.random.default_rng(2)
    emb = {"image_embeddings": rng.normal(size=(1, C, E, E)).astype(np.float32)}
    coords = rng.uniform(0, S, (3, 2, 2)).astype(np.float32)
    labels = np.array([[1, 0], [1, -1], [2, 3]], np.float32)
    no_mask = np.zeros((3, 1, M, M), np.float32), np.zeros(3, np.float32)
    prepared = decoder.prepare(emb)
    iou, full = decoder.decode(emb, coords, labels, *no_mask, prepared)
    assert full.shape == (3, 4, M, M)
    for rows, cols in [(E - 10, E), (E, 9), (1, 1), (E, E)]:
        iou_part, part = decoder.decode(emb, coords, labels, *no_mask, prepared, (rows, cols))
        assert part.shape == (3, 4, 4 * rows, 4 * cols)
        assert np.abs(part - full[..., : 4 * rows, : 4 * cols]).max() < 1e-5
        assert np.array_equal(iou_part, iou)

    old = tmp_path / "old"
    old.mkdir()
    for f in out.iterdir():
        (old / f.name).write_bytes(f.read_bytes())
    graph = onnx.load(str(old / "decoder_points.onnx"))
    graph.graph.input.remove(next(i for i in graph.graph.input if i.name == "mask_extent"))
    graph.graph.initializer.append(onnx.numpy_helper.from_array(np.array([E, E], np.int64), "mask_extent"))
    onnx.save(graph, str(old / "decoder_points.onnx"))
    old_decoder = load(old, encoder=False).decoder
    _, whole = old_decoder.decode(emb, coords, labels, *no_mask, old_decoder.prepare(emb), (E - 10, E))
    assert np.abs(whole - full).max() < 1e-5


def test_decoder_batch_equals_prompts_one_by_one(built, tiny_checkpoint):
    out, _ = built
    decoder = load(out, encoder=False).decoder
    rng = np.random.default_rng(1)
    emb = {"image_embeddings": rng.normal(size=(1, C, E, E)).astype(np.float32)}
    b, n = 5, 4
    coords = rng.uniform(0, S, (b, n, 2)).astype(np.float32)
    labels = rng.choice([0.0, 1.0, -1.0, 2.0, 3.0], (b, n)).astype(np.float32)
    masks = rng.normal(size=(b, 1, M, M)).astype(np.float32)
    has = np.array([1, 0, 1, 0, 0], np.float32)
    iou, low = decoder.decode(emb, coords, labels, masks, has)
    assert iou.shape == (b, 4) and low.shape == (b, 4, M, M)
    torch_decoder = PromptDecoder(load_model(tiny_checkpoint, "tiny")).eval()
    for i in range(b):
        one = decoder.decode(emb, coords[i:i + 1], labels[i:i + 1], masks[i:i + 1], has[i:i + 1])
        assert np.abs(one[1][0] - low[i]).max() < 1e-4
        with torch.no_grad():
            ref = torch_decoder(*(torch.from_numpy(a) for a in (emb["image_embeddings"], coords[i:i + 1], labels[i:i + 1],
                                                                  masks[i:i + 1], has[i:i + 1])))
        # Float noise, relative to logits of magnitude ~10 (AVX-512 kernels sum in another order than AVX2's).
        np.testing.assert_allclose(low[i], ref[1].numpy()[0], rtol=1e-5, atol=1e-4)
        assert np.abs(ref[0].numpy()[0] - iou[i]).max() < 1e-5


@pytest.mark.parametrize("batch, tokens", [(1, 7), (3, 9)])
def test_reassociated_attention_equals_sams_transformer(tiny_checkpoint, batch, tokens):
    """The export's cross-attention moves the projections to the token side (build/export.py); SAM's
    own TwoWayTransformer on the same inputs must give the same queries and image tokens."""
    transformer = load_model(tiny_checkpoint, "tiny").mask_decoder.transformer.eval()
    g = torch.Generator().manual_seed(batch)
    image = torch.randn(batch, C, E, E, generator=g)
    pe = torch.randn(1, C, E, E, generator=g)
    prompt = torch.randn(batch, tokens, C, generator=g)
    with torch.no_grad():
        ref_queries, ref_keys = transformer(image, pe, prompt)
        queries, keys = two_way_transformer(transformer, prompt, image.flatten(2).transpose(1, 2),
                                            pe.flatten(2).transpose(1, 2))
    # Float noise: sums over the E·E image tokens in another order.
    assert (queries - ref_queries).abs().max() < 5e-5
    assert (keys - ref_keys).abs().max() < 5e-5


def test_split_decoder_answers_like_the_general_graph(built):
    """Prompts without a mask input take decoder_image + decoder_points; they must answer as decoder.onnx."""
    out, _ = built
    decoder = load(out, encoder=False).decoder
    rng = np.random.default_rng(4)
    emb = {"image_embeddings": rng.normal(size=(1, C, E, E)).astype(np.float32)}
    prepared = decoder.prepare(emb)
    assert prepared is not None and set(prepared) == {"image_tokens", "image_keys", "image_values", "image_queries"}
    for b, n in ((1, 2), (6, 3)):
        coords = rng.uniform(0, S, (b, n, 2)).astype(np.float32)
        labels = rng.choice([0.0, 1.0, -1.0, 2.0, 3.0], (b, n)).astype(np.float32)
        no_masks = (np.zeros((b, 1, M, M), np.float32), np.zeros(b, np.float32))
        general = decoder.decode(emb, coords, labels, *no_masks)
        split = decoder.decode(emb, coords, labels, *no_masks, prepared=prepared)
        assert np.abs(general[0] - split[0]).max() < 1e-5
        # Logits of ~20 from a random embedding: the split graph's reassociated attention sums in another order.
        np.testing.assert_allclose(split[1], general[1], rtol=1e-5, atol=1e-4)


def test_encoder_takes_a_batch(built):
    out, _ = built
    encoder = load(out, decoder=False).encoder
    x = np.random.default_rng(2).normal(size=(3, 3, S, S)).astype(np.float32)
    batch = encoder.encode(x)
    assert batch.shape == (3, C, E, E)
    assert np.abs(batch[1:2] - encoder.encode(x[1:2])).max() < 1e-4


@pytest.mark.parametrize("name", ["encoder.onnx", "decoder.onnx", "decoder_image.onnx", "decoder_points.onnx"])
def test_graphs_are_valid_onnx_with_the_dynamic_axes_tensorrt_profiles_use(built, name):
    out, _ = built
    model = onnx.load(str(out / name))
    onnx.checker.check_model(model, full_check=True)
    dims = {i.name: [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim] for i in model.graph.input}
    if name == "encoder.onnx":
        assert dims == {"images": ["batch", 3, S, S]}
    elif name == "decoder_image.onnx":
        assert dims == {"image_embeddings": [1, C, E, E]}
    else:
        assert dims["point_coords"] == ["batch", "points", 2]
        if name == "decoder.onnx":
            assert dims["image_embeddings"] == [1, C, E, E]
            assert dims["mask_input"] == ["batch", 1, M, M]
        else:
            assert dims["image_tokens"] == [1, E * E, C]
            assert dims["image_keys"][:2] == [1, 4] and dims["image_keys"][2] == E * E
    # Only standard-domain operators: what TensorRT's ONNX parser reads.
    assert {n.domain for n in model.graph.node} <= {"", "ai.onnx"}


def test_model_directory_errors(tmp_path, built):
    with pytest.raises(ModelDirError, match="no manifest.json"):
        load(tmp_path)
    out, _ = built
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "manifest.json").write_text((out / "manifest.json").read_text())
    with pytest.raises(ModelDirError, match="encoder.onnx named by the manifest is missing"):
        load(broken)


def test_tensorrt_backend_without_tensorrt_is_a_clear_error(tiny_checkpoint, tmp_path):
    try:
        import tensorrt  # noqa: F401

        pytest.skip("tensorrt is installed here; the GPU tests cover it")
    except ImportError:
        pass
    with pytest.raises(RuntimeError, match="needs the `tensorrt` package and an NVIDIA GPU"):
        build_model_dir(tiny_checkpoint, "tiny", tmp_path / "trt", backend="tensorrt")
    assert not (tmp_path / "trt").exists()
