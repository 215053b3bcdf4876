"""Data and measuring helpers shared by several benches: LFW folders and crops, the LFW
verification protocol, the federated-accuracy design (data, features, training workers,
evaluation) and a process tree's peak RSS. Nothing here imports a bench entry point."""
