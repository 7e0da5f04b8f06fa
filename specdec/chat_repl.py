"""The terminal chat: streamed replies, multi-turn with cache reuse, in-chat commands.

Replies go to stdout; the banner, summaries and command output to stderr, so
`printf 'question\\n' | specdec chat > answer.txt` captures just the answers.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass, field

HELP = """commands:
  /reset   forget the conversation (keeps the system prompt)
  /stats   statistics of the last reply and of the session
  /help    this help
  /exit    leave (also Ctrl-D; Ctrl-C stops a reply, twice at the prompt leaves)"""


@dataclass
class ChatSettings:
    system: str | None = None
    max_new_tokens: int = 512
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int = 0


@dataclass
class SessionTotals:
    replies: int = 0
    tokens: int = 0
    passes: int = 0
    drafted: int = 0
    accepted: int = 0
    rejected: int = 0
    bytes_read: int = 0
    seconds: float = 0.0

    def add(self, s) -> None:
        self.replies += 1
        self.tokens += s.new_tokens
        self.passes += s.target_passes
        self.drafted += s.drafted
        self.accepted += s.accepted
        self.rejected += s.rejected
        self.bytes_read += s.bytes_read
        self.seconds += s.seconds


@dataclass
class ChatSession:
    lm: object
    settings: ChatSettings
    out: object = sys.stdout
    err: object = sys.stderr
    messages: list = field(default_factory=list)
    totals: SessionTotals = field(default_factory=SessionTotals)

    def __post_init__(self):
        self.reset()

    def reset(self) -> None:
        self.messages = [{"role": "system", "content": self.settings.system}] if self.settings.system else []
        self.lm.reset()

    def run(self, interactive: bool) -> None:
        interrupted_at_prompt = False
        while True:
            try:
                line = self._read(interactive)
                interrupted_at_prompt = False
            except KeyboardInterrupt:
                if interrupted_at_prompt:
                    self._say("\nbye")
                    return
                interrupted_at_prompt = True
                self._say("\n(Ctrl-C again or /exit to leave)")
                continue
            if line is None:  # end of input (Ctrl-D or the pipe ran dry)
                return
            line = line.strip()
            if not line:
                continue
            if line.startswith("/"):
                if not self.command(line):
                    return
                continue
            self.reply(line)

    def command(self, line: str) -> bool:
        """Run an in-chat command; False means leave."""
        name = line.split()[0].lower()
        if name in ("/exit", "/quit"):
            return False
        if name == "/reset":
            self.reset()
            self._say("conversation cleared")
        elif name == "/stats":
            self._say(self.stats_text())
        elif name == "/help":
            self._say(HELP)
        else:
            self._say(f"unknown command {name}; /help lists the commands")
        return True

    def reply(self, text: str) -> None:
        self.messages.append({"role": "user", "content": text})
        s = self.settings
        pieces: list[str] = []
        try:
            for piece in self.lm.chat(self.messages, max_new_tokens=s.max_new_tokens,
                                      temperature=s.temperature, top_p=s.top_p, top_k=s.top_k,
                                      seed=s.seed, stream=True):
                pieces.append(piece)
                self.out.write(piece)
                self.out.flush()
        except KeyboardInterrupt:
            # The engine has already rolled its caches back to what was emitted; the
            # partial reply stays in the conversation, as the user saw it.
            self._say("\n[stopped]")
        self.out.write("\n")
        self.out.flush()
        self.messages.append({"role": "assistant", "content": "".join(pieces)})
        stats = self.lm.last_stats
        if stats is not None:
            self.totals.add(stats)
            self._say(summary_line(stats))

    def stats_text(self) -> str:
        t = self.totals
        last = self.lm.last_stats
        lines = [f"last reply: {last.to_dict()}" if last else "no reply yet"]
        offered = t.accepted + t.rejected
        lines.append(f"session: {t.replies} replies, {t.tokens} tokens in {t.seconds:.1f} s "
                     f"({t.tokens / t.seconds if t.seconds else 0:.2f} tok/s), "
                     f"{t.tokens / t.passes if t.passes else 0:.2f} tokens/pass, "
                     f"acceptance {t.accepted / offered if offered else 0:.0%} per token offered "
                     f"({t.accepted}/{t.drafted} drafted tokens taken), {t.bytes_read / 1e9:.2f} GB read")
        return "\n".join(lines)

    def _read(self, interactive: bool) -> str | None:
        if interactive:
            try:
                return input("> ")
            except EOFError:
                return None
        line = sys.stdin.readline()
        return line if line else None

    def _say(self, text: str) -> None:
        print(text, file=self.err, flush=True)


def summary_line(stats) -> str:
    import psutil

    rss = psutil.Process().memory_info().rss
    return (f"[{stats.tokens_per_second:.2f} tok/s | {stats.tokens_per_pass:.2f} tokens/pass | "
            f"acceptance {stats.token_acceptance:.0%} | {stats.bytes_read / 1e9:.2f} GB read | "
            f"RAM {rss / 2**20:.0f} MB]")
