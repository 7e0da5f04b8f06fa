"""One exit-status convention for every specdec command (commands.py, offload_commands.py)."""

EXIT_OK, EXIT_PROBLEM, EXIT_USAGE, EXIT_BUG, EXIT_INTERRUPTED = 0, 1, 2, 3, 130
EXIT_CODES = """exit status (every command):
  0    done
  1    a problem with the input or the environment (a missing file, a model that does not
       fit, a prompt longer than the context ...): one line says what, and how to fix it
  2    command-line usage error (unknown option, a value out of range), before any loading
  3    an internal error, i.e. a bug in specdec: the traceback is printed; please report it
  130  interrupted (Ctrl-C); `generate` has printed the text it had"""
