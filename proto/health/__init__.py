"""The gRPC health-checking protocol's messages and cryo stubs, generated from health.proto.

No logic here: the service itself is `proto.health_service`.
"""
