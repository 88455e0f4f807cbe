"""Messages of CRIU's swrk RPC protocol, generated from rpc.proto; no logic of its own."""
