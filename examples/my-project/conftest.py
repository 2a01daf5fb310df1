"""Loaded by pytest before the wmcore plugin checks --wm-model (this file sits in the directory
``wmcore bench`` runs from): register the project's model family, so that ``--wm-model pixels:4``
works in the installed suites and in bench/."""

from my_models import load

from wmcore.models import register_family

register_family("pixels", load)
