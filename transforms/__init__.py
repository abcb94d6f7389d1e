"""Pure, engine-free logic on batches: no IO, no engine imports, no globals.

Engines (``pipelines/``) and IO (``connectors/``) call these functions; each one is unit-tested
without an engine.
"""
