"""The gRPC decision service: protos in protos/carepath/v1, a worker pool of engines, thin servicers."""
