"""``python -m regtool``: the same command line as the ``regtool`` console script."""

from regtool.cli import main

if __name__ == "__main__":
    main()
