"""The command line's exit statuses: one number for each outcome, used by every command."""

EXIT_CASES_FAILED = 1  # a cohort ran, and at least one case failed (the others' results are written)
EXIT_USER_ERROR = 2  # a mistake in the command or its inputs: one line on stderr, nothing written
EXIT_INTERRUPTED = 130  # Ctrl-C (128 + SIGINT, as shells report it)
