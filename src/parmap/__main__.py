"""``python -m parmap`` and the ``parmap`` console script (see ``parmap._cli``)."""

from ._cli import main

__all__ = ("main",)

if __name__ == "__main__":
    raise SystemExit(main())
