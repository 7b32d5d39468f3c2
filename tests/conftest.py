"""Shared by the test modules: the carepath pytest plugin (opted into here, as a user's conftest
would: installing carepath does not activate it)."""

pytest_plugins = ["carepath.testing.plugin"]
