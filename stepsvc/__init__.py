"""The gRPC step service: one pipeline step per process, chained through discovery."""
