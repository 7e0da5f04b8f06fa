"""specdec chat | generate | info | pack | verify | bench"""
from __future__ import annotations

import argparse
import json
import sys
import tomllib
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "handler"):
        parser.print_help()
        return 2
    try:
        return args.handler(args) or 0
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
    except (ValueError, FileNotFoundError, OSError, RuntimeError) as e:
        # Our errors name the file and the fix; a traceback would bury that.
        print(f"specdec: error: {e}", file=sys.stderr)
        return 1


def build_parser() -> argparse.ArgumentParser:
    from .cli_offload import add_offload_commands

    parser = argparse.ArgumentParser(prog="specdec", description=__doc__)
    sub = parser.add_subparsers(metavar="COMMAND")
    chat = sub.add_parser("chat", help="chat in the terminal (no arguments: the offline demo pair)")
    _model_args(chat)
    _sampling_args(chat, max_new_tokens=512)
    chat.add_argument("--system", help="system prompt")
    chat.set_defaults(handler=cmd_chat)
    gen = sub.add_parser("generate", help="one prompt in, text out")
    _model_args(gen)
    _sampling_args(gen, max_new_tokens=128)
    gen.add_argument("--prompt", help="the prompt (default: read stdin)")
    gen.add_argument("--chat", action="store_true", help="wrap the prompt in the chat template")
    gen.add_argument("--json", action="store_true", help="print text and stats as JSON")
    gen.set_defaults(handler=cmd_generate)
    info = sub.add_parser("info", help="what a model, store or preset is, and the RAM plan")
    _model_args(info)
    info.set_defaults(handler=cmd_info)
    add_offload_commands(sub)
    return parser


def _model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--target", help="target: HF directory, .gguf, store, or hub id")
    p.add_argument("--draft", help="draft model (omit for plain decoding unless a preset names one)")
    p.add_argument("--config", help="a preset TOML (configs/*.toml, by path or name)")
    p.add_argument("--ram", help="RAM budget, e.g. 4GB (the target streams from disk)")
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    p.add_argument("--max-context", type=int, help="KV cache length in tokens")
    p.add_argument("--k", type=int, help="chain mode: drafted tokens per pass (default: adaptive)")
    p.add_argument("--speculation", choices=["chain", "tree"], default=None,
                   help="chain (default): k drafts in a row; tree: a draft tree verified in one pass")
    p.add_argument("--tree-nodes", type=int, help="tree mode: fixed tree size (default: cost model)")
    p.add_argument("--tree-width", type=int, default=4, help="tree mode: children per node")
    p.add_argument("--cache-dir", help="where packed stores go (default $SPECDEC_CACHE or ~/.cache/specdec)")


def _sampling_args(p: argparse.ArgumentParser, max_new_tokens: int) -> None:
    p.add_argument("--max-new-tokens", type=int, default=max_new_tokens)
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--seed", type=int, default=0)


def load_from_args(args):
    import specdec

    from .hub import resolve

    preset = read_preset(args.config) if args.config else {}
    target = args.target or preset.get("target")
    draft = args.draft or preset.get("draft")
    kwargs = dict(ram=args.ram or preset.get("ram"), dtype=args.dtype,
                  max_context=args.max_context or preset.get("max_context"), k=args.k,
                  cache_dir=args.cache_dir, progress=True,
                  speculation=args.speculation or preset.get("speculation"),
                  tree_nodes=args.tree_nodes, tree_width=args.tree_width)
    if target is None:
        return specdec.load(draft=resolve(draft), **kwargs)
    return specdec.load(resolve(target), draft=resolve(draft), **kwargs)


def read_preset(ref: str) -> dict:
    """A preset by path, else by name among those shipped in specdec/configs (package data)."""
    from .configs import preset, preset_names

    path = Path(ref)
    if not path.exists():
        path = preset(ref)
    if not path.is_file():
        known = ", ".join(preset_names()) or "none"
        raise FileNotFoundError(f"{ref}: no such preset file or shipped preset (shipped: {known}).")
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not valid TOML ({e}).") from e
    unknown = set(data) - {"name", "target", "draft", "ram", "max_context", "notes", "speculation"}
    if unknown:
        raise ValueError(f"{path}: unknown keys {sorted(unknown)}; expected target, draft, ram, "
                         "max_context, speculation, name, notes.")
    return data


def banner(lm) -> str:
    t = lm.target
    lines = [f"specdec: target {t.path} ({t.args.model_type}, {t.args.num_layers} layers)"]
    if t.description:
        lines.append(f"  {t.description}")
    if lm.plan is not None:
        streamed = len(lm.plan.streamed)
        how = (f"target streamed from disk, {lm.plan.budget_bytes / 1e6:.0f} MB RAM budget"
               if streamed else "target fully in RAM")
        lines.append(f"  {how}; {lm.plan.summary}")
    else:
        lines.append("  target fully in RAM (no --ram given)")
    lines.append(f"  draft: {lm.draft.path if lm.draft else 'none (plain decoding)'}"
                 + (f", {_speculation_text(lm)}" if lm.draft else ""))
    return "\n".join(lines)


def _speculation_text(lm) -> str:
    return lm.engine.strategy.describe()


def cmd_chat(args) -> int:
    from .chat_repl import ChatSession, ChatSettings

    lm = load_from_args(args)
    print(banner(lm), file=sys.stderr)
    interactive = sys.stdin.isatty()
    if interactive:
        print("type /help for commands", file=sys.stderr)
    settings = ChatSettings(args.system, args.max_new_tokens, args.temperature, args.top_p,
                            args.top_k, args.seed)
    with lm:
        ChatSession(lm, settings).run(interactive)
    return 0


def cmd_generate(args) -> int:
    prompt = args.prompt if args.prompt is not None else sys.stdin.read()
    if not prompt.strip():
        raise ValueError("empty prompt: pass --prompt TEXT or pipe text on stdin")
    lm = load_from_args(args)
    sampling = dict(max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                    top_p=args.top_p, top_k=args.top_k, seed=args.seed)
    with lm:
        if args.chat:
            out = lm.chat([{"role": "user", "content": prompt}], **sampling)
        else:
            out = lm.generate(prompt, **sampling)
    if args.json:
        print(json.dumps({"text": out.text, "token_ids": out.token_ids, "stats": out.stats.to_dict()}))
    else:
        print(out.text)
    return 0


def cmd_info(args) -> int:
    lm = load_from_args(args)
    with lm:
        print(banner(lm))
        if lm.plan is not None:
            print(json.dumps(lm.plan.as_dict(), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
