"""The demo pair carries its own sampling (the "demo" preset): flags not given take
it when the demo runs, and the commands' general defaults otherwise; given flags always win."""
import pytest

from specdec.cli import build_parser
from specdec.cli.commands import check_args
from specdec.sampling_params import SAMPLING_PRESETS

DEMO = SAMPLING_PRESETS["demo"]


def _sampling(*argv):
    args = build_parser().parse_args(list(argv))
    check_args(args)
    s = args.sampling
    return dict(temperature=s.temperature, top_p=s.top_p, repetition_penalty=s.repetition_penalty,
                repetition_window=s.repetition_window)


@pytest.mark.parametrize("command", ["chat", "generate"])
def test_the_demo_uses_its_own_sampling(command):
    assert _sampling(command) == dict(temperature=DEMO.temperature, top_p=DEMO.top_p,
                                      repetition_penalty=DEMO.repetition_penalty,
                                      repetition_window=DEMO.repetition_window)


def test_real_models_keep_the_commands_defaults(tmp_path):
    assert _sampling("chat", "--target", str(tmp_path)) == dict(
        temperature=0.7, top_p=0.9, repetition_penalty=1.1, repetition_window=64)
    assert _sampling("generate", "--target", str(tmp_path)) == dict(
        temperature=0.0, top_p=1.0, repetition_penalty=1.1, repetition_window=64)
    # A preset that names a target is a real model too.
    assert _sampling("chat", "--config", "qwen2.5-7b")["temperature"] == 0.7


def test_given_flags_win_over_the_demo():
    got = _sampling("chat", "--temperature", "0.5", "--repetition-penalty", "1.2",
                    "--repetition-window", "32")
    assert got == dict(temperature=0.5, top_p=DEMO.top_p, repetition_penalty=1.2,
                       repetition_window=32)
