"""Failures mid-generation (a real Ctrl-C at random moments, a disk that fails): shared by the
runtime and overlap reliability tests."""
import contextlib
import random
import signal
import threading


@contextlib.contextmanager
def python_sigint():
    """Python's own SIGINT handler (KeyboardInterrupt in the main thread) for the duration,
    the previous one restored after. A job started in the background (`cmd &`, nohup, some CI
    runners) inherits SIGINT ignored, and so would any process it starts: tests that send
    SIGINT install the handler they rely on instead of assuming it. A child started inside
    this block gets the default action at exec, so its Python installs KeyboardInterrupt too."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def ctrl_c_storm(lm, prompts: list[list[int]], expected: dict, duration: float, rounds: int,
                 new_tokens: int = 16, seed: int = 0) -> int:
    """SIGINT (Python's handler: KeyboardInterrupt wherever the main thread is) at a random
    moment of each of `rounds` generations, the prompts taken in turn; after each the decoder
    must give `expected[tuple(prompt)][:new_tokens]`. `duration`: seconds one generation takes.
    Returns how many signals interrupted a generation."""
    with python_sigint():
        return _storm(lm, prompts, expected, duration, rounds, new_tokens, random.Random(seed))


def _storm(lm, prompts, expected, duration, rounds, new_tokens, rng) -> int:
    interrupted = 0
    for i in range(rounds):
        prompt = prompts[i % len(prompts)]
        timer = threading.Timer(rng.uniform(0.05, 0.9) * duration,
                                lambda: signal.pthread_kill(threading.main_thread().ident, signal.SIGINT))
        try:
            timer.start()
            lm.generate(prompt, max_new_tokens=new_tokens)
            timer.join()
        except KeyboardInterrupt:
            interrupted += 1
        finally:
            timer.cancel()
            timer.join()
        assert lm.generate(prompt, max_new_tokens=new_tokens).token_ids == expected[tuple(prompt)][:new_tokens], i
    return interrupted


def generate_error(lm, prompt: list[int], new_tokens: int, timeout: float = 60.0) -> BaseException | None:
    """Run one generation in a thread; it must end (not hang) within `timeout` seconds.
    Returns what it raised (None if it finished)."""
    result = {}

    def call():
        try:
            lm.generate(prompt, max_new_tokens=new_tokens)
        except BaseException as e:  # noqa: BLE001 - returned to the test
            result["error"] = e

    worker = threading.Thread(target=call)
    worker.start()
    worker.join(timeout=timeout)
    assert not worker.is_alive(), "generate hung after an I/O error"
    return result.get("error")
