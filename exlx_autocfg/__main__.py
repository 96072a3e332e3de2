"""`python -m exlx_autocfg` runs the CLI (handy where the console script is not on PATH)."""

from exlx_autocfg.cli import main

if __name__ == "__main__":
    main()
