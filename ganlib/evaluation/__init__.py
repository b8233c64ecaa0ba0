"""Checkpoint evaluation: ``evaluate`` scores every checkpoint of a run and picks the best; ``metrics`` holds
the maths (FD, KID, IS, precision/recall/density/coverage); ``classifier`` and ``inception`` are the feature
spaces; ``memorisation`` compares samples with their nearest training images."""
