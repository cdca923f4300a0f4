"""``python tests/kill_after_rows.py N [RANK] -- smoothguard arguments``: run the
smoothguard CLI, and SIGKILL this very process right after it has written (and flushed)
its N-th result row; with RANK, only the torchrun rank RANK dies (the others run on).

A deterministic stand-in for "kill -9 in the middle of a run": the cut comes after
exactly N rows however fast or loaded the machine is (polling the file from outside and
then killing raced the run: the number of rows done depended on the load).
"""

import os
import signal
import sys


def main(argv: list[str]) -> int:
    sep = argv.index("--")
    n = int(argv[0])
    rank = argv[1] if sep > 1 else None
    if rank is None or os.environ.get("RANK", "0") == rank:
        from smoothguard.evaluation import resultfile

        write = resultfile.ResultWriter.write
        written = [0]

        def write_then_die(self, row):
            write(self, row)
            written[0] += 1
            if written[0] >= n:
                os.kill(os.getpid(), signal.SIGKILL)

        resultfile.ResultWriter.write = write_then_die
    from smoothguard.cli import main as cli_main

    return cli_main(argv[sep + 1:])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
