"""specdec chat | generate | info | serve | pack | verify | bench"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import traceback
from pathlib import Path

from offload.expert_guess import GUESSES

from .load_args import add_kernels_argument, is_demo, load_from_args, read_preset
from .banner import banner, compute_info, draft_info, plan_text
from .exit_codes import EXIT_BUG, EXIT_CODES, EXIT_INTERRUPTED, EXIT_OK, EXIT_PROBLEM, EXIT_USAGE

BUG_TYPES = (AssertionError, RuntimeError)  # raised by internals, never by bad input


class UsageError(ValueError):
    """A flag value argparse's types could not check."""


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)  # usage errors exit 2 here, before anything loads
    if not hasattr(args, "handler"):
        parser.print_help()
        return EXIT_USAGE
    try:
        check_args(args)
        return args.handler(args) or EXIT_OK
    except UsageError as e:
        print(f"specdec: usage error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BUG_TYPES as e:
        return _bug(e)
    except (ValueError, OSError, MemoryError) as e:
        # Our errors name the file and the fix; a traceback would bury that.
        print(f"specdec: error: {_one_line(e)}", file=sys.stderr)
        return EXIT_PROBLEM
    except Exception as e:  # anything else is a bug too: say so, with the traceback
        return _bug(e)


def _bug(e: BaseException) -> int:
    traceback.print_exception(e, file=sys.stderr)
    print(f"specdec: internal error ({type(e).__name__}); this is a bug in specdec, please report "
          "it with the traceback above and the command you ran.", file=sys.stderr)
    return EXIT_BUG


def _one_line(e: BaseException) -> str:
    text = str(e) or type(e).__name__
    return " ".join(text.split())


def build_parser() -> argparse.ArgumentParser:
    from .offload_commands import add_offload_commands

    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(prog="specdec", description=__doc__, epilog=EXIT_CODES,
                                     formatter_class=formatter)
    sub = parser.add_subparsers(metavar="COMMAND")
    chat = sub.add_parser("chat", help="chat in the terminal (no arguments: the offline demo pair)",
                          epilog=EXIT_CODES, formatter_class=formatter)
    _model_args(chat)
    _sampling_args(chat, "chat", max_new_tokens=512)
    chat.add_argument("--system", help="system prompt")
    chat.set_defaults(handler=cmd_chat)
    gen = sub.add_parser("generate", help="one prompt in, text out (streamed)",
                         description="Stream the reply to stdout as tokens are accepted; statistics "
                                     "go to stderr. The prompt is wrapped in the model's chat "
                                     "template when it has one (--raw: plain completion).",
                         epilog=EXIT_CODES, formatter_class=formatter)
    _model_args(gen)
    _sampling_args(gen, "generate", max_new_tokens=128)
    gen.add_argument("--prompt", help="the prompt (default: read stdin)")
    gen.add_argument("--raw", action="store_true",
                     help="plain completion of the prompt, without the chat template")
    gen.add_argument("--json", action="store_true",
                     help="print text, token ids and stats as one JSON object at the end")
    gen.set_defaults(handler=cmd_generate)
    info = sub.add_parser("info", help="what a model, store or preset is, and the RAM plan",
                          epilog=EXIT_CODES, formatter_class=formatter)
    _model_args(info)
    info.add_argument("--json", action="store_true", help="the plan as JSON")
    info.set_defaults(handler=cmd_info)
    _serve_parser(sub, formatter)
    add_offload_commands(sub)
    return parser


def _serve_parser(sub, formatter) -> None:
    serve = sub.add_parser(
        "serve", help="an OpenAI-compatible HTTP server (no model arguments: the demo pair)",
        description="Serve the model at /v1/chat/completions, /v1/completions and /v1/models\n"
                    "(OpenAI's API: point the `openai` package or any OpenAI-compatible chat\n"
                    "front end at http://HOST:PORT/v1). One generation at a time; requests wait\n"
                    "in a queue. Needs the `serve` extra: pip install 'specdec[serve]'.",
        epilog=EXIT_CODES, formatter_class=formatter)
    _model_args(serve)
    serve.add_argument("--host", default="127.0.0.1",
                       help="address to listen on (default 127.0.0.1: this machine only; any "
                            "other address needs an API key)")
    serve.add_argument("--port", type=_port, default=8000,
                       help="port (default 8000; 0: any free port, printed at start)")
    serve.add_argument("--api-key", help="require `Authorization: Bearer KEY` on every request "
                                         "(default $SPECDEC_API_KEY; prefer it: a flag shows in ps)")
    serve.add_argument("--queue", type=_at_least(0), default=16,
                       help="requests that may wait while one generates (default 16); beyond "
                            "that, 503 with Retry-After")
    serve.add_argument("--model-name", help="the model id clients send and /v1/models lists "
                                            "(default: the preset's or target's name)")
    serve.set_defaults(handler=cmd_serve)


def _at_least(low, kind=int, what=None, strictly=False):
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {'an integer' if kind is int else 'a number'}")
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
        if value < low or (strictly and value == low):
            raise argparse.ArgumentTypeError(f"{text} is out of range: {what or f'must be >= {low}'}")
        return value
    return parse


def _port(text: str) -> int:
    value = _at_least(0, what="a port is in 0-65535")(text)
    if value > 65535:
        raise argparse.ArgumentTypeError(f"{text} is out of range: a port is in 0-65535")
    return value


class _Retired(argparse.Action):
    """A flag kept only so that commands which pass it still run: it sets nothing and says, on
    stderr, what replaced it (hidden from --help)."""

    def __init__(self, option_strings, dest, note: str, **kwargs):
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)
        self.note = note

    def __call__(self, parser, namespace, values, option_string=None):
        print(f"specdec: note: {option_string} {self.note}", file=sys.stderr)


def _model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--target", help="target: HF directory, .gguf, store, or hub id")
    p.add_argument("--draft", help="draft model, or `self` (4-bit copies of the target's streamed "
                   "layers), or `lookup` (no draft model: n-gram matches of the prompt and reply "
                   "so far; for rewriting, summarising, editing code); omit for plain decoding "
                   "unless a preset names one (the demo pair: plain decoding; --speculation, --k "
                   "or --tree-nodes bring its draft model)")
    p.add_argument("--draft-quant", choices=["q4", "q8"], default=None,
                   help="run the draft model as its low-bit copy (packed once into the cache): "
                        "~0.31x (q4) of its bf16 RAM, leaving more of the target pinned; with no "
                        "--target it brings the demo's draft")
    p.add_argument("--config", help="a preset TOML (configs/*.toml, by path or name)")
    p.add_argument("--ram", help="RAM budget, e.g. 4GB or 800MB (decimal; the target streams from disk)")
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    p.add_argument("--max-context", type=_at_least(2, what="the context must hold >= 2 tokens"),
                   help="KV cache length in tokens (default: the model's, at most 4096; demo 2048)")
    p.add_argument("--k", type=_at_least(1, what="drafted tokens per pass must be >= 1 (omit --draft "
                                                 "for plain decoding, omit --k for adaptive)"),
                   help="chain mode (or --draft lookup): drafted tokens per pass, >= 1 (default: adaptive)")
    from ..speculate.registry import MODES

    drafting = [name for name, mode in MODES.items() if mode.needs_model]  # lookup: --draft lookup
    p.add_argument("--speculation", choices=drafting, default=None,
                   help="chain (default): k drafts in a row; tree: a draft tree verified in one pass; "
                        "overlap: a tree that keeps growing while the target streams")
    p.add_argument("--tree-nodes", type=_at_least(1), help="tree mode: fixed tree size (default: cost model)")
    p.add_argument("--tree-width", type=_at_least(1), default=4, help="tree mode: children per node")
    p.add_argument("--lookup-branches", type=_at_least(0), default=None,
                   help="tree mode: at most N nodes of prompt-lookup branches (the context's own "
                        "n-gram continuations) added to each tree when they pay (default 8 on an "
                        "adaptive tree, 0 on a fixed one; 0: none)")
    p.add_argument("--expert-guess", choices=(*GUESSES, "none"), default=None,
                   help="mixture-of-experts target: read the next layer's guessed experts while a "
                        "layer computes (on by default; only the bytes read depend on it), guessed "
                        "by next-router (default: the next layer's router on this layer's "
                        "residual), previous-pass (the experts the previous pass's last token "
                        "routed to) or none (no prefetch: experts read only once routed)")
    p.add_argument("--expert-prefetch", action=_Retired, help=argparse.SUPPRESS,
                   note="does nothing: expert prefetch is on by default (the next-router guess). "
                        "--expert-guess previous-pass picks the other guess, --expert-guess none "
                        "turns it off. The flag will be removed.")
    p.add_argument("--expert-reads", choices=["direct", "page-cache"], default=None,
                   help="mixture-of-experts target: O_DIRECT reads and an expert cache in the budget "
                        "(direct, default), or buffered reads left to the page cache (for comparisons)")
    p.add_argument("--cache-dir", help="where packed stores go (default $SPECDEC_CACHE or ~/.cache/specdec)")
    add_kernels_argument(p)


SAMPLING_FLAGS = ("temperature", "top_p", "top_k", "repetition_penalty", "repetition_window",
                  "seed")
SAMPLING_HELP = {
    "temperature": "0 = greedy",
    "top_p": "in (0, 1]",
    "top_k": "0 = off",
    "repetition_penalty": "> 1 discourages tokens seen in the last --repetition-window tokens, as "
                          "transformers and llama.cpp (repeat_penalty) do; 1 = off",
    "repetition_window": "the last N tokens the penalty looks at; 0 = the whole context",
    "seed": "the sampler's seed",
}


def _sampling_args(p: argparse.ArgumentParser, preset_name: str, max_new_tokens: int) -> None:
    """The sampling flags. Unset until check_args, which fills the ones not given from the
    command's preset (specdec.sampling_params.SAMPLING_PRESETS), or the demo's."""
    from ..sampling_params import preset

    ours, demo = preset(preset_name), preset("demo")
    p.set_defaults(sampling_preset=preset_name)
    p.add_argument("--max-new-tokens", type=_at_least(1), default=max_new_tokens,
                   help=f"reply length cap (default {max_new_tokens})")
    for name in SAMPLING_FLAGS:
        flag = "--" + name.replace("_", "-")
        p.add_argument(flag, type=_sampling_type(name, flag), default=None,
                       help=f"{SAMPLING_HELP[name]} (default {getattr(ours, name)}; the demo pair: "
                            f"{getattr(demo, name)})")


def _sampling_type(name: str, flag: str):
    from ..sampling_params import SamplingError, parse_text

    def parse(text: str):
        try:
            return parse_text(name, text, flag)
        except SamplingError as e:
            raise argparse.ArgumentTypeError(str(e)) from None
    parse.__name__ = name  # argparse names the type in "invalid <name> value"
    return parse


def check_args(args) -> None:
    """What argparse types cannot check, before any model loads: the RAM size and the preset."""
    from offload.budget import parse_size

    if getattr(args, "ram", None) is not None:
        try:
            parse_size(args.ram)
        except ValueError as e:
            raise UsageError(f"--ram: {e}") from e
    if getattr(args, "config", None):
        args.preset = read_preset(args.config)
    if hasattr(args, "sampling_preset"):
        fill_sampling_defaults(args)


def fill_sampling_defaults(args) -> None:
    """args.sampling: the sampling flags given, over the demo preset when the demo runs (no
    target, none in a preset), else over the command's own."""
    from ..sampling_params import preset

    given = {name: getattr(args, name) for name in SAMPLING_FLAGS if getattr(args, name) is not None}
    args.sampling = preset("demo" if is_demo(args) else args.sampling_preset).replace(**given)


# -- commands ---------------------------------------------------------------------------------
def cmd_chat(args) -> int:
    from .chat_repl import ChatSession, ChatSettings, LineReader
    from ..cache_root import cache_root

    lm = load_from_args(args)
    with lm:
        print(banner(lm, args), file=sys.stderr)
        if not lm.has_chat_template():
            raise ValueError(f"{lm.target.path}: this model has no chat template; use "
                             "`specdec generate --raw` for plain completion.")
        interactive = sys.stdin.isatty()
        if interactive:
            print("type /help for commands, \"\"\" for a multi-line message; "
                  "RAM on the stats line is this process's RSS in MB (10^6 bytes)", file=sys.stderr)
        settings = ChatSettings.from_args(args)
        reader = LineReader(interactive, cache_root(args.cache_dir) / "chat_history")
        ChatSession(lm, settings).run(reader)
    return EXIT_OK


def cmd_generate(args) -> int:
    from .reply_stats import MARKERS, ReplyTiming, summary_line

    prompt = args.prompt if args.prompt is not None else sys.stdin.read()
    if not prompt.strip():
        raise ValueError("empty prompt: pass --prompt TEXT or pipe text on stdin")
    lm = load_from_args(args)
    with lm:
        if not args.raw and lm.has_chat_template():
            ids = lm.encode_chat([{"role": "user", "content": prompt}])
        else:
            ids = lm.encode(prompt)
        text, token_ids, timing = [], [], ReplyTiming.start()
        interrupted = False
        try:
            for piece, new in lm.stream_ids(ids, args.max_new_tokens, sampling=args.sampling):
                if new:
                    timing.saw_tokens()
                token_ids.extend(new)
                text.append(piece)
                if piece and not args.json:
                    sys.stdout.write(piece)
                    sys.stdout.flush()
        except KeyboardInterrupt:
            interrupted = True  # keep what was generated: print it and the stats, exit 130
        stats = lm.last_stats
        reason = "interrupted" if interrupted else stats.stop_reason
        if args.json:
            print(json.dumps({"text": "".join(text), "token_ids": token_ids,
                              "stats": {**stats.to_dict(), "stop_reason": reason,
                                        "time_to_first_token": timing.ttft}}))
        else:
            sys.stdout.write("\n")
            sys.stdout.flush()
            marker = MARKERS.get(reason, "")
            print((marker + " " if marker else "")
                  + summary_line(stats, timing, (lm.context_used, lm.max_context)), file=sys.stderr)
    return EXIT_INTERRUPTED if interrupted else EXIT_OK


def cmd_serve(args) -> int:
    try:  # before the model loads: a missing package or a refused address costs no wait
        from ..serve.server import ServeSettings, check_exposure, serve
    except ImportError as e:
        raise ValueError(f"`specdec serve` needs the server's packages ({e.name} is missing): "
                         "pip install 'specdec[serve]'") from e
    api_key = args.api_key or os.environ.get("SPECDEC_API_KEY") or None
    try:
        check_exposure(args.host, api_key)
    except ValueError as e:
        raise UsageError(str(e)) from e
    from ..sampling_params import preset

    # Fields a request leaves out: the demo's own settings for the demo pair, else OpenAI's.
    settings = ServeSettings(model_name=args.model_name or _served_name(args), host=args.host,
                             port=args.port, api_key=api_key, queue_length=args.queue,
                             sampling=preset("demo" if is_demo(args) else "serve"))
    lm = load_from_args(args)
    with lm:  # closes the reader thread and files when the server has stopped
        print(banner(lm, args), file=sys.stderr)

        def ready(url: str) -> None:
            print(f"serving {settings.model_name!r} at {url}/v1 (OpenAI-compatible; "
                  f"{'API key required' if api_key else 'no API key'}); Ctrl-C stops",
                  file=sys.stderr, flush=True)
        serve(lm, settings, on_ready=ready)
    print("specdec serve: stopped", file=sys.stderr)
    return EXIT_OK


def _served_name(args) -> str:
    """The model id clients see: the preset's name, else the target as the user named it (a
    hub id as given, a path's last part), else the demo's."""
    preset = getattr(args, "preset", None) or {}
    if preset.get("name"):
        return str(preset["name"])
    target = args.target or preset.get("target")
    if target is None:
        return "specdec-demo"
    path = Path(target).expanduser()
    if path.exists():
        return path.stem if path.suffix == ".gguf" else path.name
    return target


def cmd_info(args) -> int:
    lm = load_from_args(args)
    with lm:
        if args.json:
            print(json.dumps({"target": str(lm.target.path),
                              "draft": draft_info(lm),
                              "max_context": lm.max_context,
                              "plan": lm.plan.as_dict() if lm.plan is not None else None,
                              "compute": compute_info(lm.target.model)}, indent=2))
            return EXIT_OK
        print(banner(lm, args))
        if lm.plan is not None:
            print(plan_text(lm.plan))
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
