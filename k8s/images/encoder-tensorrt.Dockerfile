# The GPU encoder: TensorRT runtime base (TensorRT and CUDA come with it), maskserve without torch.
# Build from the repository root:  docker build -f k8s/images/encoder-tensorrt.Dockerfile -t ghcr.io/maskserve/encoder-tensorrt:0.1.0 .
FROM nvcr.io/nvidia/tensorrt:24.08-py3
WORKDIR /src
COPY . .
RUN pip install --no-cache-dir ./packages/maskserve-tiny ".[server]" "cuda-python>=12" \
 && cd / && python -c "import maskserve.service.proto, tensorrt" && rm -rf /src
RUN useradd --uid 10001 --no-create-home maskserve
USER 10001
ENV PYTHONUNBUFFERED=1
EXPOSE 9091
ENTRYPOINT ["maskserve"]
CMD ["encoder"]
