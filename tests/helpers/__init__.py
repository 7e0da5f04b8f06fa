"""What the tests share: tiny models (models, family_models, family_gguf), the chi-square
helpers (distribution), failure injection (interrupts), raw HTTP for the server tests
(serve_client) and MoE stores streamed by expert (moe_streams). Test files import them as
`from helpers.models import make_tiny_model` (pytest puts tests/ on the import path); fixtures
live in conftest.py."""
