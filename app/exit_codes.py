"""The exit codes of every `brain-tumor` command, so that the service, `predict` and both daemons say the same thing
with the same number (scripts and orchestrators act on them: a restart on 3, a fix of the configuration on 2)."""

EXIT_OK = 0
EXIT_FAILED = 1
"""`predict`: a file could not be predicted; `pacs-sync --once`: Orthanc could not be reached."""
EXIT_USAGE = 2
"""Bad arguments or configuration: nothing was started."""
EXIT_MODELS = 3
"""The models could not be loaded."""
EXIT_INTERRUPTED = 130
