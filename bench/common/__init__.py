"""Helpers of the bench entry points that are not the federation rig: LFW folders and
crops, the LFW verification protocol, the federated-accuracy design (data, features,
training workers, evaluation), label-free camera distillation (issue 18), the fuzzed
parsers' targets and a process tree's peak RSS. Nothing here imports a bench entry
point."""
