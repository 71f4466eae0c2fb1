"""A bounded fuzz run driven by the server's own `/openapi.json` (schemathesis, in-process ASGI).

Schemathesis generates requests from the served schema, valid ones and deliberately invalid
ones, and sends them to the app in process. Whatever it sends, the answer is never a 5xx; and
a body the schema calls invalid is never accepted (the schema is no looser than the server).
The engine's context is tiny (64 tokens), so every generation is short.
"""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import negative_data_rejection, not_a_server_error
from test_server import MODEL

from lfmkit import LFM2
from lfmkit.inference.engine import Engine, EngineConfig
from lfmkit.serve.app import ServerContext, create_app
from lfmkit.text.tokenizer import Tokenizer


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    from checkpoints import make_checkpoint

    path, _ = make_checkpoint(tmp_path_factory.mktemp("fuzz"), layout="small", seed=7, with_tokenizer=True)
    tokenizer = Tokenizer.from_pretrained(path)
    engine = Engine(LFM2.from_pretrained(path).eval(), tokenizer,
                    EngineConfig(max_concurrent=2, max_queued=8, max_length=64))
    engine.start()
    try:
        yield create_app(ServerContext(engine, tokenizer, MODEL))
    finally:
        engine.stop()


# Random generation only (the exhaustive "coverage" phase alone sends hundreds of requests),
# a fixed seed, a bounded number of examples per operation.
CONFIG = """
seed = 1
[generation]
max-examples = 30
[phases.coverage]
enabled = false
"""


@pytest.fixture(scope="module")
def api_schema(app):
    return schemathesis.openapi.from_asgi("/openapi.json", app,
                                          config=schemathesis.Config.from_str(CONFIG))


schema = schemathesis.pytest.from_fixture("api_schema")


@schema.parametrize()
@settings(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much,
                                                HealthCheck.data_too_large])
def test_no_request_gets_a_5xx(case):
    case.call_and_validate(checks=[not_a_server_error, negative_data_rejection])
