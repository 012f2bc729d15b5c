"""`python -m vlbert`: the `vlbert` command."""
import sys

from vlbert.cli import main

if __name__ == "__main__":
    sys.exit(main())
