"""Fixtures of the command-line tests that take a value (`tests.cli.command_support`)."""

from tests.cli.command_support import empty_orthanc  # noqa: F401 - a fixture
