import sys

from rl.cli import main

if __name__ == "__main__":  # not again in the processes the demo spawns
    sys.exit(main())
