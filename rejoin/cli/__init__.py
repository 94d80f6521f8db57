"""The `rejoin` command: compare, simulate, replay, load, bench, serve (DESIGN section 8).

Exit codes: 0 done (for `simulate`: every expectation and invariant held; for `load`: every user
has audio at the end, the join rate held and every invariant held), 1 an expectation, an
invariant or a load's outcome failed, 2 bad input (a one-line message on stderr naming the file
and the fault; for live runs also a LiveKit that cannot be reached or refuses the credentials).
A closed pipe on stdout ends the command quietly with 141, as a command killed by SIGPIPE;
Ctrl-C with 130.
"""

from rejoin.cli.main import main

__all__ = ["main"]
