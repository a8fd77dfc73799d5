"""Bundled recipes (YAML), installed as ``contrastmix.recipes``; see README *Recipes*."""
