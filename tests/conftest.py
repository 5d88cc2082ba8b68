"""Tests run small models: one intra-op thread avoids oversubscribing shared 2-core machines."""

import torch

torch.set_num_threads(1)
