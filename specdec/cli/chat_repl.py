"""The terminal chat: streamed replies, multi-turn with cache reuse, in-chat commands.

Replies go to stdout; the banner, summaries and command output to stderr, so
`printf 'question\\n' | specdec chat > answer.txt` captures just the answers.
The chat never ends because the context is full: the oldest turns are dropped (the system
prompt stays), and the caches are reused for what is still a shared prefix.
"""
from __future__ import annotations

import dataclasses
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

from offload.atomic import replacing, write_atomic

from ..moe_stats import add_counters, expert_figures
from ..sampling_params import SETTINGS, SamplingError, SamplingParams, parse_text
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
    """What a chat (or `specdec generate`) runs with; /set changes it, /save writes it (flat)."""
    system: str | None = None
    max_new_tokens: int = 512
    sampling: SamplingParams = field(default_factory=SamplingParams)

    @classmethod
    def from_args(cls, args) -> "ChatSettings":
        """From `specdec chat` / `generate` options (generate has no --system); `args.sampling`
        is filled by the command's argument check (commands.check_args)."""
        return cls(getattr(args, "system", None), args.max_new_tokens, args.sampling)

    def as_dict(self) -> dict:
        """The /save form: one flat object, as files written by older versions have it."""
        return {"system": self.system, "max_new_tokens": self.max_new_tokens,
                **self.sampling.as_dict()}

    def with_values(self, values: dict) -> "ChatSettings":
        """These settings with the flat `values` (as_dict's names) changed, each checked."""
        values = dict(values)
        system = values.pop("system", self.system)
        max_new_tokens = values.pop("max_new_tokens", self.max_new_tokens)
        if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
            raise SamplingError(f"max_new_tokens must be an integer >= 1, got {max_new_tokens!r}",
                                "max_new_tokens")
        return ChatSettings(system, max_new_tokens, self.sampling.replace(**values))


# /set NAME: the name users type -> the ChatSettings field it sets
SETTABLE = {"temperature": "temperature", "top_p": "top_p", "top_k": "top_k",
            "max_tokens": "max_new_tokens", "seed": "seed",
            "repetition_penalty": "repetition_penalty", "repetition_window": "repetition_window"}


def parse_setting(field_name: str, text: str):
    """A /set value typed by the user -> the field's value; SamplingError says what is valid."""
    if field_name == "max_new_tokens":
        try:
            value = int(text)
        except ValueError:
            value = 0
        if value < 1:
            raise SamplingError(f"{text!r} is not an integer >= 1", field_name)
        return value
    try:
        return parse_text(field_name, text)
    except SamplingError:
        raise SamplingError(f"{text!r} is not {SETTINGS[field_name].valid}", field_name) from None


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
    source: dict = field(default_factory=dict)  # the weight source's counters (expert figures)

    @property
    def experts(self) -> dict[str, float]:
        return expert_figures(self.source, self.passes, self.tokens)

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
        add_counters(self.source, s.source)


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
        name = SETTABLE[parts[0]]
        try:
            value = parse_setting(name, parts[1])
        except SamplingError as e:
            self._say(f"/set {parts[0]}: {e}; unchanged")
            return
        self.settings = self.settings.with_values({name: value})
        self._say(f"{parts[0]} = {value}")

    def _cmd_save(self, path: str) -> None:
        if not path:
            self._say("usage: /save FILE")
            return
        data = {"format": SAVE_FORMAT, "version": 1, "settings": self.settings.as_dict(),
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
        s = self.settings.sampling
        return (f"temperature {s.temperature}, top_p {s.top_p}, top_k {s.top_k}, "
                f"max_tokens {self.settings.max_new_tokens}, seed {s.seed}, repetition_penalty "
                f"{s.repetition_penalty} over the last {s.repetition_window or 'all'} tokens, system prompt: "
                + (repr(self.settings.system) if self.settings.system else "none"))

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
            for piece, new in self.lm.stream_ids(ids, self.settings.max_new_tokens,
                                                sampling=self.settings.sampling):
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
    raw = data.get("settings") or {}
    known = set(ChatSettings().as_dict())
    if not isinstance(raw, dict) or set(raw) - known:
        raise ValueError(f"{path}: \"settings\" may only hold {sorted(known)}")
    try:
        settings = (defaults or ChatSettings()).with_values(raw)
    except SamplingError as e:
        raise ValueError(f"{path}: setting {e.field} = {raw[e.field]!r} is not valid: {e}") from None
    system = next((m["content"] for m in messages[:1] if m["role"] == "system"), None)
    return dataclasses.replace(settings, system=system), [dict(role=m["role"], content=m["content"]) for m in messages]
