"""`python -m prunec ...`: the command line, e.g. under `torchrun -m prunec build SPEC`."""

from prunec.cli import main

if __name__ == "__main__":
    main()
