"""``python -m metatrain``: the command line (see ``metatrain.cli``)."""

from metatrain.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
