"""`mfvan completion bash|zsh|tcsh`: a shell completion script for `mfvan`, generated
from the command's own parser by shtab (so it never falls behind the flags).

    mfvan completion bash | sudo tee /etc/bash_completion.d/mfvan   # or ~/.bashrc: eval
    mfvan completion zsh > "${fpath[1]}/_mfvan"
"""

from __future__ import annotations

import argparse

HELP = "print a shell completion script (bash, zsh, tcsh)"


def add(p: argparse.ArgumentParser) -> None:
    p.add_argument("shell", choices=("bash", "zsh", "tcsh"), help="the shell")


def run(args: argparse.Namespace) -> int:
    import shtab

    from mfvan.deploy.cli import build_parser

    print(shtab.complete(build_parser(), shell=args.shell))
    return 0
