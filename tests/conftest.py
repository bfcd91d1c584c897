"""Shared fixtures: each topic's fixtures live in tests/fixtures/ and are loaded here."""

pytest_plugins = [
    "tests.fixtures.servers",
    "tests.fixtures.sites",
    "tests.fixtures.live_server",
    "tests.fixtures.browser",
]
