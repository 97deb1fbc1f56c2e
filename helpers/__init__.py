"""chexplain helpers: the tested code the notebooks narrate.

Modules follow the data flow of ``DESIGN.md``: ``paths``, ``config``, ``labels``, ``phantom``, ``data``,
``models``, ``train``, ``heatmaps``, ``lrp``, ``cam``, ``metrics``, ``figures``, ``widgets``.
"""
__version__ = "0.1.0"
