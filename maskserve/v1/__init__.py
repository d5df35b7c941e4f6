"""Generated gRPC code for proto/maskserve/v1/maskserve.proto (see maskserve.service.proto); not edited by hand."""
