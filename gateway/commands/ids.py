"""Placeholder until its owner lands it."""

import click


@click.group("id")
def id_group() -> None:
    """(in progress)"""
