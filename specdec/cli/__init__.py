"""The `specdec` command line: chat, generate, info, serve, pack, verify, bench.

commands.py parses and dispatches; load_args.py turns model arguments into a decoder (shared
by every command that loads one, `serve` included); chat_repl.py is the terminal chat;
banner.py and reply_stats.py are what the commands print; exit_codes.py the exit statuses.
The HTTP server `serve` starts is specdec/serve/.
"""
from .commands import build_parser, main

__all__ = ["main", "build_parser"]
