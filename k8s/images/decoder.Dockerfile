# The serving image: decoder service, and the CPU encoder (ONNX Runtime). No torch.
# Build from the repository root:  docker build -f k8s/images/decoder.Dockerfile -t ghcr.io/maskserve/decoder:0.1.0 .
FROM python:3.11-slim AS build
WORKDIR /src
COPY . .
RUN pip install --no-cache-dir --prefix=/install ./packages/maskserve-tiny ".[server]"
# ONNX Runtime Web for the annotator's in-browser decoder (15 MB from the npm registry, checksum verified)
RUN PYTHONPATH=/install/lib/python3.11/site-packages MASKSERVE_CACHE=/opt/maskserve /install/bin/maskserve web pull --quiet

FROM python:3.11-slim
COPY --from=build /install /usr/local
COPY --from=build /opt/maskserve /opt/maskserve
ENV MASKSERVE_CACHE=/opt/maskserve
RUN useradd --uid 10001 --no-create-home maskserve
USER 10001
ENV PYTHONUNBUFFERED=1
EXPOSE 50051 8443 9090
ENTRYPOINT ["maskserve"]
CMD ["decoder"]
