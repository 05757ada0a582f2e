"""`python -m genrec_lightning` is the same as the `genrec` console script."""

from genrec_lightning.cli import main

if __name__ == "__main__":
    main()
