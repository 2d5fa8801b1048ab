"""The mlx-sidecar Python worker: MLX inference served over gRPC on a Unix socket."""
