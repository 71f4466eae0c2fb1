import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    """A small hybrid checkpoint (conv + attention) with weights and config, float32."""
    from checkpoints import make_checkpoint

    path, ref = make_checkpoint(tmp_path_factory.mktemp("tiny"), layout="small", seed=1)
    return path, ref
