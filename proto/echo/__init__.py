"""Messages and grpcio stubs of the benchmark Echo service, generated from echo.proto."""
