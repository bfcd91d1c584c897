"""Placeholder until its owner lands it."""

import click


@click.group("keys")
def keys_group() -> None:
    """(in progress)"""
