"""Smoke test: `maskserve bench` runs end to end on the tiny model and writes well-formed results."""

from __future__ import annotations

import json

import pytest

from maskserve import bench
from maskserve.engines.flops import cpu_peak_flops


def test_bench_runs_and_writes_json_and_plot(tmp_path, tiny_checkpoint):
    result = bench.run(checkpoint=tiny_checkpoint, requests=8, clients=2, rate=5, seconds=1, encode_images=2,
                       out=tmp_path, everything_reps=1, everything_grid=4)
    data = json.loads((tmp_path / "bench.json").read_text())
    assert data == json.loads(json.dumps(result))
    for name in ("segment 1 point, 3 masks RLE", "segment 1 point, best mask", "closed loop, 2 clients",
                 "open loop, 5 req/s", "stream, gaze points", "embedding fetch from Redis", "decoder run alone"):
        s = data["scenarios"][name]
        assert s["n"] > 0 and 0 < s["p50_ms"] <= s["p90_ms"] <= s["p99_ms"] <= s["max_ms"]
    assert data["scenarios"]["encode_images_per_s"] > 0
    assert set(data["security"]["p50_ms"]) == {"plaintext", "TLS", "TLS + API key", "traced (OTLP)"}
    assert data["security"]["spans_exported"] > 0
    h = data["http"]
    assert h["grpc_p50_ms"] > 0 and h["http_json_p50_ms"] > 0 and h["http_vs_grpc_p50"] > 0
    assert all(v["json_bytes"] > v["protobuf_bytes"] > 0 for v in h["answer_bytes"].values())
    c = data["client"]
    assert c["p50_ms"]["Client.predict"] > 0 and c["p50_ms"]["refine by handle"] > 0
    assert c["formats"]["bits"]["response_bytes"] > 0 and c["formats"]["logits"]["response_bytes"] > 3 * 256 * 256 * 4
    assert set(c["ratios"]) == {"client_predict_vs_bare_rpc", "client_predict_before_vs_bare_rpc",
                                "client_predict_vs_reference_predict"}
    assert all(v > 0 for v in data["security"]["p50_ms"].values())
    assert data["decoder"]["flops_per_prompt"] > 0 and 0 < data["decoder"]["fraction_of_peak"] < 1.5
    assert 0 < data["decoder"]["fraction_of_gemm"] < 1.5 and data["machine"]["gemm_flops"] > 0
    assert set(data["ratios"]) == {"segment_p50_vs_reference_predict", "segment_p99_vs_own_p50",
                                   "closed_loop_throughput_vs_reference_sequential",
                                   "encode_throughput_vs_reference_set_image"}
    for case in bench.EVERYTHING_CASES:
        e = data["everything"][case]
        assert e["masks"] == e["reference_masks"] and e["cached_s"] > 0 and e["reference_end_to_end_s"] > 0
        assert e["peak_mb_decoder_process"] >= 0 and "grid_decode" in e["stage_seconds"]
    assert (tmp_path / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("vendor,family,flags,per_cycle", [
    ("GenuineIntel", 6, "avx avx2 fma avx512f", 64),  # two 512-bit FMA units
    ("AuthenticAMD", 25, "avx avx2 fma avx512f", 32),  # Zen 4: AVX-512 on 256-bit units
    ("AuthenticAMD", 26, "avx avx2 fma avx512f", 64),  # Zen 5
    ("GenuineIntel", 6, "avx avx2 fma", 32),
    ("GenuineIntel", 6, "sse2", 8),
])
def test_cpu_peak_follows_the_fma_datapath(vendor, family, flags, per_cycle):
    info = (f"vendor_id\t: {vendor}\ncpu family\t: {family}\ncpu MHz\t\t: 2000.000\nflags\t\t: fpu {flags}\n") * 2
    peak = cpu_peak_flops(cores=2, cpuinfo=info)
    assert peak["flops_per_cycle_per_core"] == per_cycle and peak["peak_flops"] == 2 * 2e9 * per_cycle


def test_sam2_bench_measures_against_sam2_image_predictor(sam2_tiny_random):
    result = bench.run_sam2(sam2_tiny_random[1], sam2_tiny_random[0], requests=6, encode_images=1, set_image_reps=1)
    assert result["model"]["type"] == "sam2.1_hiera_tiny"
    assert set(result["ratios"]) == {"segment_p50_vs_reference_predict", "encode_throughput_vs_reference_set_image",
                                     "float16_fetch_p50_vs_float32"}
    assert all(v > 0 for v in result["ratios"].values())
    for dtype, nbytes in (("float32", 16 << 20), ("float16", 8 << 20)):
        stored = result["store"][dtype]
        assert nbytes < stored["value_bytes"] < nbytes + 4096  # the three arrays and a header
        assert stored["redis_bytes"] >= stored["value_bytes"] and stored["fetch"]["p50_ms"] > 0


def test_mobile_sam_bench_measures_the_cpu_tier_against_mobile_sam(vit_t_random, tiny_model_dir):
    result = bench.run_mobile_sam(vit_t_random[1], vit_t_random[0], frames=2, encoder_reps=1,
                                  compare_model_dir=tiny_model_dir)
    assert result["model"]["type"] == "vit_t"
    assert set(result["ratios"]) == {"encoder_p50_vs_reference_tinyvit", "first_mask_p50_vs_reference_set_image_predict",
                                     "camera_loop_fps_vs_reference", "encoder_p50_vs_tiny_encoder"}
    assert all(v > 0 for v in result["ratios"].values())
    loop = result["camera_loop"]
    assert loop["frames"] == 2 and loop["ours"]["encode"]["p50_ms"] > 0 and loop["reference"]["set_image"]["p50_ms"] > 0


def test_sam3_bench_measures_segment_concept_against_sam3_processor(sam3_random):
    result = bench.run_sam3(sam3_random[1], sam3_random[0], reps=1, encode_images=1)
    assert result["model"]["type"] == "sam3" and result["embedding_mb"]["float32"] == pytest.approx(132.7104)
    assert set(result["ratios"]) == {"one_phrase_p50_vs_reference", "ten_phrases_vs_reference",
                                     "encoder_pool_images_per_s_vs_reference_set_image"}
    assert all(v > 0 for v in result["ratios"].values()) and result["embedding_fetch_ms"] > 0
