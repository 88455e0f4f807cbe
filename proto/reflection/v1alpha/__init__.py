"""grpc.reflection.v1alpha messages and cryo stubs, generated from grpc-proto's reflection.proto."""
