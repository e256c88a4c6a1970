"""``python -m siibra_anchor.training CONFIG [--resume] [--steps N] [--out DIR]`` (see :mod:`.cli`)."""

from siibra_anchor.training.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
