"""Shared test settings."""
import torch

# The tests run tiny detectors on tiny images: one intra-op thread is the fastest, and on a machine
# whose cores are busy (a training run next to the tests), more threads oversubscribe the CPU and
# make every forward pass tens of times slower.
torch.set_num_threads(1)
