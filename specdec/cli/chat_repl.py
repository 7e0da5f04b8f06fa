"""The terminal chat: streamed replies, multi-turn with cache reuse, in-chat commands.

Replies go to stdout; the banner, summaries and command output to stderr, so
`printf 'question\\n' | specdec chat > answer.txt` captures just the answers.
The chat never ends because the context is full: the oldest turns are dropped (the system
prompt stays), and the caches are reused for what is still a shared prefix.
"""
from __future__ import annotations

import json
import sys
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from offload.atomic import replacing, write_atomic

from .reply_stats import MARKERS, ReplyTiming, stats_rows, summary_line, table

HELP = """commands:
  /system TEXT     set the system prompt (and start the conversation again)
  /set NAME VALUE  temperature, top_p, top_k, max_tokens, seed, repetition_penalty,
                   repetition_window (/set alone shows them)
  /save FILE       write the conversation and settings as JSON
  /load FILE       continue a conversation saved with /save
  /reset           forget the conversation (keeps the system prompt)
  /stats           statistics of the last reply and of the session
  /help            this help
  /exit            leave (also Ctrl-D; Ctrl-C stops a reply, twice at the prompt leaves)
a line that is just \"\"\" starts a multi-line message; another \"\"\" line ends it"""

MULTILINE = '"""'
SAVE_FORMAT = "specdec-chat"


@dataclass
class ChatSettings:
    system: str | None = None
    max_new_tokens: int = 512
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int = 0
    repetition_penalty: float = 1.0
    repetition_window: int = 64

    @classmethod
    def from_args(cls, args) -> "ChatSettings":
        """From `specdec chat` / `generate` options (generate has no --system)."""
        return cls(getattr(args, "system", None), args.max_new_tokens, args.temperature, args.top_p,
                   args.top_k, args.seed, args.repetition_penalty, args.repetition_window)

    def generation(self) -> dict:
        """The keyword arguments of SpecDecoder.stream_ids these settings stand for."""
        return dict(max_new_tokens=self.max_new_tokens, temperature=self.temperature,
                    top_p=self.top_p, top_k=self.top_k, seed=self.seed,
                    repetition_penalty=self.repetition_penalty,
                    repetition_window=self.repetition_window)


# /set NAME VALUE: the name users type -> (field, parser, check, what a valid value is)
SETTABLE = {
    "temperature": ("temperature", float, lambda v: v >= 0, "a number >= 0 (0 = greedy)"),
    "top_p": ("top_p", float, lambda v: 0 < v <= 1, "a number in (0, 1]"),
    "top_k": ("top_k", int, lambda v: v >= 0, "an integer >= 0 (0 = off)"),
    "max_tokens": ("max_new_tokens", int, lambda v: v >= 1, "an integer >= 1"),
    "seed": ("seed", int, lambda v: True, "an integer"),
    "repetition_penalty": ("repetition_penalty", float, lambda v: 0 < v < float("inf"),
                           "a number > 0 (1 = off)"),
    "repetition_window": ("repetition_window", int, lambda v: v >= 0,
                          "an integer >= 0 (the last N tokens; 0 = all)"),
}


@dataclass
class SessionTotals:
    replies: int = 0
    tokens: int = 0
    prefilled: int = 0
    passes: int = 0
    drafted: int = 0
    accepted: int = 0
    rejected: int = 0
    bytes_read: int = 0
    seconds: float = 0.0

    def add(self, s) -> None:
        self.replies += 1
        self.tokens += s.new_tokens
        self.prefilled += s.prefilled_tokens
        self.passes += s.target_passes
        self.drafted += s.drafted
        self.accepted += s.accepted
        self.rejected += s.rejected
        self.bytes_read += s.bytes_read
        self.seconds += s.seconds


class LineReader:
    """Input lines: readline editing and history on a terminal, plain lines from a pipe."""

    def __init__(self, interactive: bool, history: Path | None = None, out=sys.stdout):
        self.interactive = interactive
        self.history = history if interactive else None
        self.out = out
        if self.history is not None:
            self._start_history()

    def read(self, prompt: str = "> ") -> str | None:
        """One line without its newline; None at end of input."""
        if self.interactive:
            try:
                return input(prompt)
            except EOFError:
                self.out.write("\n")  # leave the shell prompt on a line of its own
                self.out.flush()
                return None
        line = sys.stdin.readline()
        return line.rstrip("\n") if line else None

    def read_message(self) -> str | None:
        """A message: one line, or the lines between two \"\"\" lines."""
        line = self.read("> ")
        if line is None or line.strip() != MULTILINE:
            return line
        lines = []
        while True:
            more = self.read("... ")
            if more is None or more.strip() == MULTILINE:
                return "\n".join(lines)
            lines.append(more)

    def close(self) -> None:
        if self.history is None:
            return
        import readline

        # Written atomically: a crash mid-write must not lose the old history.
        try:
            self.history.parent.mkdir(parents=True, exist_ok=True)
            with replacing(self.history) as tmp:
                readline.write_history_file(tmp)
        except OSError:
            pass  # history is a convenience; never fail the chat on it

    def _start_history(self) -> None:
        import readline  # imported for its side effect: input() gains line editing

        readline.set_history_length(1000)
        try:
            readline.read_history_file(self.history)
        except FileNotFoundError:
            pass  # first session
        except OSError as e:
            print(f"(history {self.history} not read: {e})", file=sys.stderr)


@dataclass
class ChatSession:
    lm: object
    settings: ChatSettings
    out: object = sys.stdout
    err: object = sys.stderr
    messages: list = field(default_factory=list)
    totals: SessionTotals = field(default_factory=SessionTotals)
    last_timing: ReplyTiming | None = None

    def __post_init__(self):
        self.reset()

    def reset(self) -> None:
        self.messages = [{"role": "system", "content": self.settings.system}] if self.settings.system else []
        self.lm.reset()

    def run(self, reader: LineReader) -> None:
        interrupted_at_prompt = False
        try:
            while True:
                try:
                    line = reader.read_message()
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
                if not line.strip():
                    continue
                if line.startswith("/"):
                    if not self.command(line.strip()):
                        return
                    continue
                self.reply(line.strip() if "\n" not in line else line)
        finally:
            reader.close()

    # -- commands -------------------------------------------------------------------------
    def command(self, line: str) -> bool:
        """Run an in-chat command; False means leave."""
        name, _, rest = line.partition(" ")
        name, rest = name.lower(), rest.strip()
        if name in ("/exit", "/quit", "/bye"):
            return False
        handler = {"/reset": self._cmd_reset, "/stats": self._cmd_stats, "/help": self._cmd_help,
                   "/system": self._cmd_system, "/set": self._cmd_set, "/save": self._cmd_save,
                   "/load": self._cmd_load}.get(name)
        if handler is None:
            self._say(f"unknown command {name}; /help lists the commands")
        else:
            handler(rest)
        return True

    def _cmd_reset(self, _rest: str) -> None:
        self.reset()
        self._say("conversation cleared")

    def _cmd_stats(self, _rest: str) -> None:
        self._say(self.stats_text())

    def _cmd_help(self, _rest: str) -> None:
        self._say(HELP)

    def _cmd_system(self, text: str) -> None:
        self.settings.system = text or None
        self.reset()
        self._say("system prompt set; conversation cleared" if text else
                  "system prompt removed; conversation cleared")

    def _cmd_set(self, rest: str) -> None:
        parts = rest.split()
        if not parts:
            self._say(self.settings_text())
            return
        if len(parts) != 2 or parts[0] not in SETTABLE:
            self._say(f"usage: /set NAME VALUE with NAME one of {', '.join(SETTABLE)}")
            return
        attr, parse, ok, valid = SETTABLE[parts[0]]
        try:
            value = parse(parts[1])
        except ValueError:
            value = None
        if value is None or not ok(value):
            self._say(f"/set {parts[0]}: {parts[1]!r} is not {valid}; unchanged")
            return
        setattr(self.settings, attr, value)
        self._say(f"{parts[0]} = {value}")

    def _cmd_save(self, path: str) -> None:
        if not path:
            self._say("usage: /save FILE")
            return
        data = {"format": SAVE_FORMAT, "version": 1, "settings": asdict(self.settings),
                "messages": self.messages}
        try:
            target = Path(path).expanduser()
            target.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(target, json.dumps(data, indent=1, ensure_ascii=False) + "\n")
        except OSError as e:
            self._say(f"/save: could not write {path}: {e.strerror or e}")
            return
        self._say(f"saved {len(self.messages)} messages to {path}")

    def _cmd_load(self, path: str) -> None:
        if not path:
            self._say("usage: /load FILE")
            return
        try:
            settings, messages = read_conversation(Path(path).expanduser(), self.settings)
        except (OSError, ValueError) as e:
            self._say(f"/load: {e}")
            return
        self.settings = settings
        self.messages = messages
        # No cache reset: the next turn reuses whatever prefix the caches still share.
        self._say(f"loaded {len(messages)} messages from {path}")

    def settings_text(self) -> str:
        s = self.settings
        return (f"temperature {s.temperature}, top_p {s.top_p}, top_k {s.top_k}, "
                f"max_tokens {s.max_new_tokens}, seed {s.seed}, repetition_penalty "
                f"{s.repetition_penalty} over the last {s.repetition_window or 'all'} tokens, system prompt: "
                + (repr(s.system) if s.system else "none"))

    # -- a reply ----------------------------------------------------------------------------
    def reply(self, text: str) -> None:
        self.messages.append({"role": "user", "content": text})
        ids = self.fit_context()
        if ids is None:
            self.messages.pop()
            return
        pieces: list[str] = []
        timing = ReplyTiming.start()
        interrupted = False
        try:
            for piece, new in self.lm.stream_ids(ids, **self.settings.generation()):
                if new:
                    timing.saw_tokens()
                if piece:
                    pieces.append(piece)
                    self.out.write(piece)
                    self.out.flush()
        except KeyboardInterrupt:
            # The engine has already rolled its caches back to what was emitted; the
            # partial reply stays in the conversation, as the user saw it.
            interrupted = True
        stats = self.lm.last_stats
        reason = "interrupted" if interrupted else (stats.stop_reason if stats else "")
        marker = MARKERS.get(reason, "")
        # On a terminal the marker ends the reply's line; with redirected output it starts the
        # summary line instead, so stdout keeps just the text and stderr whole lines.
        inline = marker and _isatty(self.out) and _isatty(self.err)
        if inline:
            self.err.write((" " if pieces else "") + marker)
            self.err.flush()
        self.out.write("\n")
        self.out.flush()
        self.messages.append({"role": "assistant", "content": "".join(pieces)})
        self.last_timing = timing
        if stats is not None:
            self.totals.add(stats)
            line = summary_line(stats, timing, (self.lm.context_used, self.lm.max_context))
            self._say(line if inline or not marker else f"{marker} {line}")

    def fit_context(self) -> list[int] | None:
        """The conversation's token ids, after dropping the oldest turns (never the system
        prompt, never the new message) until it leaves room for a reply. None, after saying
        why, when the new message alone does not fit."""
        size = self.lm.max_context
        # Room kept for the reply: the reply cap, but at most a quarter of the context, so a
        # big cap on a small context does not drop every earlier turn.
        room = max(1, min(self.settings.max_new_tokens, size // 4))
        ids = self.lm.encode_chat(self.messages)
        first = 1 if self.messages and self.messages[0]["role"] == "system" else 0
        dropped = 0
        while len(ids) + room > size and len(self.messages) - first > 1:
            # Drop the oldest turn: a user message and the replies up to the next one.
            del self.messages[first]
            dropped += 1
            while len(self.messages) - first > 1 and self.messages[first]["role"] != "user":
                del self.messages[first]
                dropped += 1
            ids = self.lm.encode_chat(self.messages)
        if dropped:
            kept = "kept the system prompt, " if first else ""
            self._say(f"[context {size} tokens: dropped the {dropped} oldest messages; {kept}"
                      f"{len(ids)} tokens remain]")
        if len(ids) >= size:
            self._say(f"[this message needs {len(ids)} tokens with the system prompt but the "
                      f"context holds {size}; shorten it, or start with a larger --max-context]")
            return None
        return ids

    def stats_text(self) -> str:
        rows = stats_rows(self.lm.last_stats, self.totals, self.last_timing)
        rows.insert(0, ("context used / size", "-", f"{self.lm.context_used}/{self.lm.max_context}"))
        return table(rows, ("", "last reply", "session"))

    def _say(self, text: str) -> None:
        print(text, file=self.err, flush=True)


def _isatty(stream) -> bool:
    return hasattr(stream, "isatty") and stream.isatty()


def _valid_setting(value, entry) -> bool:
    _, parse, ok, _ = entry
    kinds = (int,) if parse is int else (int, float)
    return isinstance(value, kinds) and not isinstance(value, bool) and ok(value)


def read_conversation(path: Path, defaults: ChatSettings | None = None) -> tuple[ChatSettings, list[dict]]:
    """Settings and messages from a /save file, checked; ValueError names what is wrong.
    Settings the file lacks (one saved by an older specdec) keep their `defaults`."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not JSON ({e}); expected a file written by /save") from e
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not UTF-8 text; expected a file written by /save") from e
    if not isinstance(data, dict) or data.get("format") != SAVE_FORMAT:
        raise ValueError(f"{path}: not a specdec chat file (no \"format\": \"{SAVE_FORMAT}\")")
    messages = data.get("messages")
    if not isinstance(messages, list) or not all(
            isinstance(m, dict) and m.get("role") in ("system", "user", "assistant")
            and isinstance(m.get("content"), str) for m in messages):
        raise ValueError(f"{path}: \"messages\" must be a list of {{role: system|user|assistant, "
                         "content: text}}")
    known = {f.name for f in fields(ChatSettings)}
    raw = data.get("settings") or {}
    if not isinstance(raw, dict) or set(raw) - known:
        raise ValueError(f"{path}: \"settings\" may only hold {sorted(known)}")
    for name, value in raw.items():
        entry = next((e for key, e in SETTABLE.items() if e[0] == name), None)
        if entry is not None and not _valid_setting(value, entry):
            raise ValueError(f"{path}: setting {name} = {value!r} is not {entry[3]}")
    settings = ChatSettings(**{**asdict(defaults or ChatSettings()), **raw})
    system = next((m["content"] for m in messages[:1] if m["role"] == "system"), None)
    settings.system = system
    return settings, [dict(role=m["role"], content=m["content"]) for m in messages]
