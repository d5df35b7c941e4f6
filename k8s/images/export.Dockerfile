# The export step (checkpoint → ONNX model directory): the only image with torch, run as a one-off Job.
# Build from the repository root:  docker build -f k8s/images/export.Dockerfile -t ghcr.io/maskserve/export:0.1.0 .
FROM python:3.11-slim
WORKDIR /src
COPY . .
RUN pip install --no-cache-dir --extra-index-url https://download.pytorch.org/whl/cpu torch torchvision ".[export]" \
 && cd / && python -c "import maskserve.service.proto" && rm -rf /src
RUN useradd --uid 10001 --no-create-home maskserve
USER 10001
ENTRYPOINT ["maskserve"]
CMD ["build", "--help"]
