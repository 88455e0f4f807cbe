"""Generated modules of the official gRPC server-reflection protos (v1alpha and v1).

They come from Debian's grpc-proto package when `python -m proto.generate` runs; the
service itself is `proto.reflection_service`.
"""
