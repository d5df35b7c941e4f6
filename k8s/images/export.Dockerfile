# The export step (checkpoint → ONNX model directory): the only image with torch, run as a one-off Job.
# Every model type: SAM (vit_b, vit_l, vit_h) through segment-anything (the `export` extra), SAM 2.1
# (sam2.1_hiera_*) through Meta's `sam2`, installed as the Makefile does: PyPI has only its source, built here
# without its optional CUDA extension (SAM2_BUILD_CUDA=0) against the torch installed first (no build
# isolation, which needs setuptools and wheel at hand). The last line checks both packages import and every
# SAM 2.1 model type's config is in the installed sam2.
# Build from the repository root:  docker build -f k8s/images/export.Dockerfile -t ghcr.io/maskserve/export:0.1.0 .
FROM python:3.11-slim
WORKDIR /src
COPY . .
RUN pip install --no-cache-dir --extra-index-url https://download.pytorch.org/whl/cpu torch torchvision ./packages/maskserve-tiny ".[export]" \
 && pip install --no-cache-dir "setuptools>=61" wheel \
 && SAM2_BUILD_CUDA=0 pip install --no-cache-dir --no-build-isolation sam2==1.1.0 hydra-core iopath \
 && cd / && python -c "import maskserve.service.proto, segment_anything, sam2.build_sam; from hydra import compose; \
from maskserve.build.specs import SAM2_SPECS; [compose(config_name=s.config) for s in SAM2_SPECS.values()]" \
 && rm -rf /src
RUN useradd --uid 10001 --no-create-home maskserve
USER 10001
ENTRYPOINT ["maskserve"]
CMD ["build", "--help"]
