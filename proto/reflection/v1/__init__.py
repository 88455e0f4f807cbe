"""grpc.reflection.v1 messages and cryo stubs, generated from grpc-proto's reflection.proto."""
