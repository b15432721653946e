"""The capacity benchmark: how many facts each feedforward stores at equal FLOPs per token and equal steps."""
