import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
# Tiny models: one thread avoids OpenMP spin-waiting, which on a shared 2-core machine made
# tiny forwards 100x slower; speed is measured in benchmarks/, not here.
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    """A small hybrid checkpoint (conv + attention) with weights and config, float32."""
    from checkpoints import make_checkpoint

    path, ref = make_checkpoint(tmp_path_factory.mktemp("tiny"), layout="small", seed=1)
    return path, ref


# The test tokenizer (lfmkit.testing), ours and transformers' view of it, for the chat tests.
@pytest.fixture(scope="session")
def tok_dir(tmp_path_factory):
    from lfmkit.testing import build_test_tokenizer

    return build_test_tokenizer(tmp_path_factory.mktemp("tok"))


@pytest.fixture(scope="session")
def tok(tok_dir):
    from lfmkit.text.tokenizer import Tokenizer

    return Tokenizer.from_pretrained(tok_dir)


@pytest.fixture(scope="session")
def hf(tok_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tok_dir)
