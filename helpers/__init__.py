"""chexplain helpers: the tested code the notebooks narrate.

Modules follow the data flow of ``DESIGN.md``: ``paths``, ``config``, ``io``, ``tensors``, ``labels``,
``phantom``, ``data``, ``models``, ``train``, ``evaluate``, ``canonizers``, ``heatmaps``, ``explainers``
(``lrp`` and ``cam`` re-export their public names where DESIGN.md lists them), ``metrics``, ``figures``,
``widgets``, and ``run`` (a profile's artifacts and stages) on top.
"""

__version__ = "0.1.0"
