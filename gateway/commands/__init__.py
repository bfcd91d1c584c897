"""Built-in subcommands of ``gateway``, one module per topic."""

from __future__ import annotations

import click


def BUILTIN() -> list[click.Command]:  # noqa: N802 - reads as a constant at the call site
    from . import (
        audit,
        db,
        demo,
        ids,
        init,
        keys,
        mappings,
        plugins_cmd,
        quarantine,
        reindex,
        scheduler,
        serve,
    )
    from . import match as match_cmd
    from . import request as request_cmd
    from . import sync as sync_cmd

    # `gateway keys reindex` lives beside the sync engine it shares batches with.
    if "reindex" not in keys.keys_group.commands:
        keys.keys_group.add_command(reindex.reindex_command, "reindex")
    return [
        ids.id_group,
        keys.keys_group,
        db.db_group,
        init.init_command,
        plugins_cmd.plugins_command,
        audit.audit_group,
        sync_cmd.sync_command,
        quarantine.quarantine_group,
        scheduler.scheduler_command,
        mappings.mappings_group,
        serve.serve_command,
        request_cmd.request_command,
        request_cmd.open_command,
        match_cmd.match_command,
        demo.demo_command,
    ]
