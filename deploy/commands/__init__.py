"""The `mfvan` commands, one module each (`mfvan.deploy.cli` is their table).

Each module has `HELP` (one line for `mfvan --help`), `add(parser)` (its flags) and
`run(args)` (its body, returning the exit status). The stage commands (ingest, spot,
recognize) share `mfvan.deploy.runtime.stage`; `run` supervises them with
`mfvan.deploy.runtime.supervisor`.
"""
