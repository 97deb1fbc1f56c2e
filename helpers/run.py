"""``Run(profile)``: the one owner of everything a profile makes, and the way to load each stage.

Every artifact path of a run is derived here, under ``runs/<profile>/`` (git-ignored): the phantom or a
pointer to the real data, the decoded-image cache, the checkpoint, heatmap sets by explainer name, metric
tables, figures and executed notebooks. Notebooks, benchmarks and scripts go through a ``Run``; no other
module builds an artifact path, and every write is atomic. A stage that has not run yet is a clear error
naming the notebook that makes it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from matplotlib.figure import Figure
from torch import nn

from helpers import config, data, explainers, figures, labels, paths, train
from helpers.heatmaps import HeatmapSet
from helpers.io import atomic_path

#: Folder of the phantom inside a phantom run (CheXpert's own folder name).
PHANTOM_FOLDER = "CheXpert-v1.0-small"


@dataclass
class ExplainedBatch:
    """The test images every explainer explains, the same for notebooks 03 to 06.

    Attributes
    ----------
    rows : list of int
        Rows of the test split, sampled across patients (:meth:`helpers.data.PreparedData.sample_rows`).
    image_ids, patients : list of str
        CheXlocalize image id and patient id of each image.
    inputs : Tensor
        Normalised network inputs ``(n, 3, H, W)`` on the CPU (explainers move them to the model's device).
    images : numpy.ndarray
        uint8 ``(n, H, W)``, for display.
    codes : numpy.ndarray
        CheXpert label codes ``(n, 14)``: 1, 0, -1 or NaN.
    masks : numpy.ndarray
        Ground truth, bool ``(n, 14, H, W)`` (empty where none).
    """

    rows: list[int]
    image_ids: list[str]
    patients: list[str]
    inputs: torch.Tensor
    images: np.ndarray
    codes: np.ndarray
    masks: np.ndarray

    def __len__(self) -> int:
        return len(self.rows)

    def pairs(self, pathologies: Sequence[str] = labels.LOCALISABLE) -> list[tuple[int, str]]:
        """Every positive ``(image index, pathology)`` among ``pathologies`` (default: the localisable findings)."""
        return [
            (i, name)
            for i in range(len(self))
            for name in pathologies
            if self.codes[i, labels.PATHOLOGIES.index(name)] == 1
        ]

    def balanced_pairs(self, n: int, seed: int = 0) -> list[tuple[int, str]]:
        """At most ``n`` positive pairs, one per image, spread evenly over the findings: pairs are taken in turns
        over the findings, rarest first (each finding's pairs in an order shuffled with ``seed``), skipping images
        already used; so a frequent finding (Support Devices) does not fill the sample."""
        pairs = self.pairs()
        rng = np.random.default_rng(seed)
        by_finding = {name: [p for p in pairs if p[1] == name] for name in dict.fromkeys(p for _, p in pairs)}
        # rarest first in every turn, so a frequent finding cannot take the images a rare one needs
        by_finding = dict(sorted(by_finding.items(), key=lambda item: len(item[1])))
        queues = [list(rng.permutation(len(own))) for own in by_finding.values()]
        chosen, used = [], set()
        while len(chosen) < n and any(queues):
            for own, queue in zip(by_finding.values(), queues):
                while queue and own[queue[0]][0] in used:
                    queue.pop(0)
                if queue and len(chosen) < n:
                    pair = own[queue.pop(0)]
                    chosen.append(pair)
                    used.add(pair[0])
        return chosen

    def head(self, n: int) -> ExplainedBatch:
        """The first ``n`` images (for the checks that re-explain them many times)."""
        return ExplainedBatch(
            self.rows[:n],
            self.image_ids[:n],
            self.patients[:n],
            self.inputs[:n],
            self.images[:n],
            self.codes[:n],
            self.masks[:n],
        )


def model_identity(meta: dict) -> str:
    """A short hash of a checkpoint's metadata (settings, data, epoch, validation AUROC): what tells the model that
    made a set of saved maps from one trained again since."""
    return hashlib.sha1(json.dumps(meta, sort_keys=True, default=str).encode()).hexdigest()[:16]


class Run:
    """Everything one profile makes, by stage.

    Parameters
    ----------
    profile : Profile or str, optional
        A profile or its name; default ``$CHEXPLAIN_PROFILE``, else ``default``.
    device : str or torch.device, optional
        Where the model runs; default the best available (:func:`helpers.train.select_device`, which
        ``$CHEXPLAIN_DEVICE`` overrides).
    root : path-like, optional
        The run folder (default ``runs/<profile>/``; :meth:`twin` puts its runs inside their parent's).
    data_from : Run, optional
        A run whose data folder and decoded-image cache this one shares (a twin on the same phantom).
    overrides : dict, optional
        Settings replaced in the named profile (:func:`helpers.config.load_profile`): a notebook's
        ``profile_overrides`` parameter, e.g. ``{"deterministic": False}``. The run folder keeps the profile's
        name; its checkpoints record the settings, so a model trained with others is refused, not used.
    """

    def __init__(
        self,
        profile: config.Profile | str | None = None,
        device: str | torch.device | None = None,
        *,
        root: Path | None = None,
        data_from: Run | None = None,
        overrides: dict | None = None,
    ):
        if isinstance(profile, config.Profile) and overrides:
            raise ValueError("Overrides apply to a profile's name; a Profile object already holds its settings.")
        if not isinstance(profile, config.Profile):
            profile = config.load_profile(profile, **(overrides or {}))
        self.profile = profile
        self.device = torch.device(device) if device is not None else train.select_device()
        self.root = Path(root) if root is not None else paths.run_dir(self.profile.name)
        self._data_from = data_from
        self._loaded: dict[str, object] = {}  # each stage loaded once per Run

    def __repr__(self) -> str:
        return f"Run({self.profile.name!r}, root={str(self.root)!r}, device={str(self.device)!r})"

    # ----------------------------------------------------------------------------------------- paths

    def folder(self, name: str) -> Path:
        """``runs/<profile>/<name>/``, created on first use."""
        path = self.root / name
        path.mkdir(parents=True, exist_ok=True)
        return path

    @property
    def data_root(self) -> Path:
        """The CheXpert-format folder holding ``train.csv`` and ``valid.csv``."""
        if self._data_from is not None:
            return self._data_from.data_root
        if self.profile.data_source == "phantom":
            return self.root / PHANTOM_FOLDER
        value = os.environ.get(config.CHEXPERT_ROOT_ENV)
        if not value:
            raise FileNotFoundError(
                f"Profile {self.profile.name!r} reads real CheXpert, but {config.CHEXPERT_ROOT_ENV} is not set. "
                f"Set it to the CheXpert-v1.0-small folder that holds train.csv, e.g. "
                f"`export {config.CHEXPERT_ROOT_ENV}=/data/CheXpert-v1.0-small`, or run another profile "
                f"(`{config.PROFILE_ENV}=default`)."
            )
        return Path(value).expanduser().resolve()

    @property
    def cache_dir(self) -> Path:
        """The decoded images and the split (notebook 01), shared with ``data_from``'s run where given."""
        return self._data_from.cache_dir if self._data_from is not None else self.folder("cache")

    @property
    def figures_dir(self) -> Path:
        """This run's figures and tables (``make publish`` copies the default run's into ``figures/``)."""
        return self.folder("figures")

    @property
    def model_dir(self) -> Path:
        """``last.pt`` (resume) and ``best.pt`` (the model every later notebook loads)."""
        return self.folder("model")

    @property
    def shuffled_model_dir(self) -> Path:
        """The shuffled-label model of the data randomisation test (:meth:`shuffled_label_model`)."""
        return self.folder("model_shuffled")

    @property
    def predictions_path(self) -> Path:
        """The test split's predicted probabilities (notebook 02)."""
        return self.root / "predictions_test.csv"

    def heatmap_path(self, name: str) -> Path:
        """Where the HeatmapSet of explainer ``name`` is saved."""
        return self.folder("heatmaps") / f"{name}.npz"

    def table_path(self, name: str) -> Path:
        """Where metric table ``name`` is saved (CSV)."""
        return self.folder("metrics") / f"{name}.csv"

    # ----------------------------------------------------------------------------------------- stages

    def prepare(self, on_bad: str = "raise", progress: bool = True) -> data.PreparedData:
        """Notebook 01: generate the phantom (phantom profiles), validate the data, decode every image once."""
        profile = self.profile
        if profile.data_source == "phantom":
            from helpers import phantom  # the run makes the phantom; the data layer only reads folders

            phantom.generate(
                self.data_root,
                profile.n_train,
                profile.image_size,
                seed=profile.seed,
                n_valid=profile.n_valid,
                min_prevalence=profile.min_prevalence,
                progress=progress,
                marker=phantom.Marker(**profile.shortcut.marker()) if profile.marker else None,
            )
        prepared = data.prepare(
            self.data_root,
            self.cache_dir,
            profile.image_size,
            val_fraction=profile.val_fraction,
            frontal=profile.frontal_only,
            seed=profile.seed,
            on_bad=on_bad,
        )
        self._loaded.clear()  # the data may have been written again: nothing loaded from the old stays
        self._loaded["data"] = prepared
        return prepared

    def data(self) -> data.PreparedData:
        """The splits notebook 01 prepared (decoded images memory-mapped)."""
        return self._once("data", lambda: data.load_prepared(self.cache_dir, self.profile.image_size))

    def train(self, progress: bool = True) -> tuple[nn.Module, dict, pd.DataFrame]:
        """Notebook 02: train (resuming an interrupted run) or load the finished one; the model is on :attr:`device`."""
        model, meta, history = train.train_or_load(
            self.profile, self.data(), self.model_dir, progress=progress, device=self.device
        )  # on self.device, in eval mode
        self._loaded["model"] = (model, meta)
        return model, meta, history

    def shuffled_label_model(
        self, epochs: int, images: int | None = None, progress: bool = True
    ) -> tuple[nn.Module, dict]:
        """The profile's network trained for ``epochs`` on permuted training labels (Adebayo et al.'s data
        randomisation test), trained once into ``model_shuffled/`` and loaded afterwards; on :attr:`device`.

        ``images`` bounds its training images (a seeded subset: :attr:`helpers.config.TrainSettings.train_images`):
        two epochs of CheXpert-small's 191,027 images would take about half an hour on an H200 (the GPU
        benchmark's projected epoch) to learn labels that mean nothing."""
        profile, folder = self.shuffled_label_profile(epochs, images), self.shuffled_model_dir
        stale = train.discard_other_settings(folder, profile, self.data().fingerprint)
        if stale:
            print(f"{folder} had been trained with other settings or data ({'; '.join(stale)}): training it again.")
        model, meta, _ = train.train_or_load(
            profile, self.data(), folder, progress=progress, shuffle_labels=True, device=self.device
        )
        return model, meta  # on self.device, in eval mode

    def shuffled_label_profile(self, epochs: int, images: int | None) -> config.Profile:
        """The profile :meth:`shuffled_label_model` trains with: ``epochs`` (no early stop) on at most ``images``
        (and the profile's own bound); ``train_images`` is None where the bound covers the training split."""
        images = min((n for n in (images, self.profile.train.train_images) if n is not None), default=None)
        if images is not None and images >= len(self.data().split("train")):
            images = None  # every image: the same model, and the checkpoint of a run without the bound
        settings = dataclasses.replace(self.profile.train, max_epochs=epochs, patience=epochs, train_images=images)
        return dataclasses.replace(self.profile, train=settings)

    def model(self) -> tuple[nn.Module, dict]:
        """The trained model (best checkpoint) on :attr:`device`, in eval mode, and its metadata."""
        return self._once("model", self._trained_model)

    def _trained_model(self) -> tuple[nn.Module, dict]:
        # a model trained before the data were prepared again is refused (without a model, say so first)
        data = self.data().fingerprint if (self.model_dir / train.BEST).is_file() else None
        return train.load_trained(self.profile, self.model_dir, device=self.device, data=data)

    def explained(self) -> ExplainedBatch:
        """The test images every explainer explains: at least ``n_explain`` images with a positive localisable
        finding, sampled across patients with the profile's seed, and more until every localisable finding has
        ``min_positives`` positive images (or all the split has)."""
        return self._once("explained", self._explained_batch)

    def _explained_batch(self) -> ExplainedBatch:
        rows = self.data().sample_rows(
            "test", self.profile.n_explain, seed=self.profile.seed, min_positives=self.profile.min_positives
        )
        return self.test_batch(rows)

    def test_batch(self, rows: Sequence[int]) -> ExplainedBatch:
        """Rows of the test split as an :class:`ExplainedBatch` (inputs normalised for this run's model)."""
        prepared, (_, meta) = self.data(), self.model()
        chosen = prepared.split("test").iloc[list(rows)]
        return ExplainedBatch(
            rows,
            chosen["image_id"].tolist(),
            data.patient_ids(chosen).tolist(),
            prepared.inputs("test", rows, meta["mean"], meta["std"]),
            np.asarray(prepared.images["test"][rows]),
            chosen[list(labels.PATHOLOGIES)].to_numpy(),
            prepared.masks("test")[rows],
        )

    def has_counterfactuals(self) -> bool:
        """Whether :meth:`counterfactuals` can render: the data is a chexplain phantom (its manifest is there),
        also when a real-data profile reads one from ``CHEXPERT_ROOT``; real radiographs have no counterfactual."""
        from helpers import phantom  # the run owns the phantom; data never generates it

        return (self.data_root / phantom.MANIFEST).is_file()

    def counterfactuals(self, pairs: Sequence[tuple[int, str]], batch: ExplainedBatch | None = None) -> torch.Tensor:
        """Network inputs ``(len(pairs), 3, H, W)``: each pair's image rendered again without that pair's finding
        (phantom data only, see :meth:`has_counterfactuals`); :meth:`counterfactual_renders` also says where."""
        return self.counterfactual_renders(pairs, batch)[0]

    def counterfactual_renders(
        self, pairs: Sequence[tuple[int, str]], batch: ExplainedBatch | None = None
    ) -> tuple[torch.Tensor, np.ndarray]:
        """Each pair's image of ``batch`` (default :meth:`explained`) rendered again without that pair's finding, or
        without the marker for the name ``"marker"``: network inputs ``(len(pairs), 3, H, W)`` and bool
        ``(len(pairs), H, W)``, where the removal changed the radiograph (its footprint, in the input's frame).

        Raises
        ------
        ValueError
            For data that is not a phantom, or a phantom written at another size than the cache.
        """
        if not self.has_counterfactuals():
            raise ValueError(
                f"The data of profile {self.profile.name!r} ({self.data_root}) is not a chexplain phantom: "
                f"counterfactual renders exist only for the phantom."
            )
        from helpers import phantom

        batch, meta = batch if batch is not None else self.explained(), self.model()[1]
        rendered = phantom.render_without(self.replay(), [batch.image_ids[i] for i, _ in pairs], [p for _, p in pairs])
        size = self.profile.image_size
        factual, counterfactual = (data.resize_to_input(x, size) for x in (rendered.factual, rendered.counterfactual))
        if not np.array_equal(factual, batch.images[[i for i, _ in pairs]]):
            raise ValueError(
                f"The phantom at {self.data_root} renders other pixels than the cached images (another image size or "
                f"version): rerun notebook 01 with profile {self.profile.name!r}."
            )
        changed = np.zeros((len(pairs), size, size), bool)
        for p, region in enumerate(rendered.changed):
            changed[p] = data.map_mask(region, size)
        inputs = data.to_model_input(torch.from_numpy(counterfactual), meta["mean"], meta["std"])
        return inputs, changed

    def replay(self):
        """The phantom's scenes, replayed once per Run from its manifest (:func:`helpers.phantom.replay`): every
        counterfactual render and marker lookup reads them."""
        from helpers import phantom

        return self._once("replay", lambda: phantom.replay(self.data_root))

    def twin(self, shortcut: bool) -> Run:
        """Notebook 06's clean or shortcut model: this profile trained for ``profile.shortcut.max_epochs`` epochs on
        its phantom without, or with, the spurious marker (:class:`helpers.config.ShortcutSettings`).

        Both live in ``known_truth/clean`` and ``known_truth/shortcut`` of this run's folder. The clean twin shares
        this run's phantom and image cache when this run is a phantom run (the same images); otherwise, and for the
        shortcut twin, notebook 06 generates a phantom at this profile's settings.
        """
        settings = self.profile.shortcut
        kind = "shortcut" if shortcut else "clean"
        profile = dataclasses.replace(
            self.profile,
            name=f"{self.profile.name}-{kind}",
            data_source="phantom",
            marker=shortcut,
            train=dataclasses.replace(self.profile.train, max_epochs=settings.max_epochs, patience=settings.max_epochs),
        )
        shared = not shortcut and self.profile.data_source == "phantom" and not self.profile.marker
        return Run(profile, self.device, root=self.root / "known_truth" / kind, data_from=self if shared else None)

    def marker_rows(self, n: int, seed: int = 0) -> list[int]:
        """Up to ``n`` test rows whose image carries the marker: half (or all there are) positive for the marker's
        pathology, the rest negative, each group sampled with ``seed``; in test-split order."""

        test = self.data().split("test")
        marked = self.replay().marker_present(test["image_id"].tolist())
        positive = test[self.profile.shortcut.pathology].to_numpy() == 1
        rng = np.random.default_rng(seed)
        chosen_positive = rng.permutation(np.flatnonzero(marked & positive))[: n // 2]
        negative = rng.permutation(np.flatnonzero(marked & ~positive))[: n - len(chosen_positive)]
        return sorted(int(row) for row in np.concatenate([chosen_positive, negative]))

    def marker_masks(self, image_ids: Sequence[str]) -> np.ndarray:
        """Bool ``(n, H, W)`` in the network input's frame: the marker's pixels in each image (empty where none)."""

        written = self.replay().marker_masks(list(image_ids))
        return np.stack([data.map_mask(mask, self.profile.image_size) for mask in written])

    def explainer(self, name: str, **overrides) -> explainers.Explainer:
        """The registered explainer ``name`` set up for this run's model: its input normalisation and, on a GPU,
        a batch size chosen for the device's free memory (unless ``batch_size`` is given)."""
        explainer = explainers.create(name, **overrides)
        if "batch_size" not in overrides:
            explainer.batch_size = explainers.batch_size_for(
                self.device, self.profile.image_size, explainer.batch_size, scale=explainer.memory_scale
            )
        meta = self.model()[1]
        explainer.normalisation = (tuple(meta["mean"]), tuple(meta["std"]))  # the model's, not ImageNet's default
        if isinstance(explainer, explainers.PriorMap) and explainer.prior is None:
            explainer.prior = self.finding_prior()
        return explainer

    def finding_prior(self) -> np.ndarray:
        """Float32 ``(14, H, W)``: each pathology's mean ground-truth mask over the training split (the prior
        baseline). Cached in the run folder.

        Raises
        ------
        FileNotFoundError
            Where the training split has no masks: real CheXpert with CheXlocalize, whose masks cover only
            CheXpert's validation and test images (here the test split, which the prior must not see).
        """
        # keyed by the data too: a prior of data prepared again since would be another's
        key = "_".join(filter(None, (str(self.profile.image_size), self.data().fingerprint)))
        path = self.folder("baselines") / f"prior_{key}.npy"
        if path.is_file():
            return np.load(path)
        prior = self.data().mask_mean("train")
        if prior is None:
            raise FileNotFoundError(
                f"No ground-truth masks for the training split of {self.data_root}: the prior baseline needs them "
                f"(phantom profiles have them; CheXlocalize's cover only the test images). Leave 'prior' out of "
                f"notebook 05's baselines for this profile."
            )
        with atomic_path(path) as tmp, open(tmp, "wb") as handle:  # np.save would append .npy to a bare path
            np.save(handle, prior)
        return prior

    def explain(self, explainer: str | explainers.Explainer, reuse: bool = False, **overrides) -> HeatmapSet:
        """Explain the :meth:`explained` batch with an explainer (or a registered name) and save the result.

        With ``reuse``, a registered name whose maps of this batch are already saved is loaded instead (a rerun
        of the scores after a metrics change; the saved set must explain the same images with the explainer's
        default settings, by this run's model, else it is remade).
        """
        if reuse and isinstance(explainer, str) and not overrides and self.heatmap_path(explainer).is_file():
            saved = HeatmapSet.load(self.heatmap_path(explainer))
            same_batch = saved.image_ids == self.explained().image_ids and self._made_by_this_model(saved)
            if same_batch and not self._settings_not_the_defaults(explainer, saved):
                return saved
        default_settings = False  # an explainer object: its settings are its own
        if isinstance(explainer, str):
            name, explainer = explainer, self.explainer(explainer, **overrides)
            # an override that restates a default (canonization="full") keeps the maps the method's own
            default_settings = not overrides or explainer.params == self.explainer(name).params
        batch = self.explained()
        model, meta = self.model()
        result = explainer.explain(model, batch.inputs, image_ids=batch.image_ids)
        result.params["model"] = model_identity(meta)  # saved maps of a model trained again since are stale
        result.params["default_settings"] = default_settings  # saved under the same name: reuse needs to know
        result.params["overrides"] = dict(overrides)
        result.save(self.heatmap_path(result.method))
        return result

    def _made_by_this_model(self, heatmaps: HeatmapSet) -> bool:
        """Whether saved maps were made by the model :meth:`model` loads (maps saved before models were recorded:
        nothing to tell, so yes)."""
        made_by = heatmaps.params.get("model")
        return made_by is None or made_by == model_identity(self.model()[1])

    @staticmethod
    def _settings_not_the_defaults(name: str, heatmaps: HeatmapSet) -> dict:
        """How saved maps of explainer ``name`` differ from its present default settings (empty: they match).

        Their overrides where they had any; else each setting whose default changed since ``{name: (saved, now)}``,
        as maps made before a default changed (e.g. SmoothGrad's samples) are another method's. A setting the
        explainer resolves only when it explains (occlusion's window, None until then) is not compared; one missing
        from maps saved before it existed counts as changed."""
        if not heatmaps.params.get("default_settings", True):  # maps saved before it was recorded: no overrides
            return heatmaps.params.get("overrides") or {"explainer": "an explainer object"}
        defaults = explainers.create(name).params.items()
        saved = heatmaps.params
        return {key: (saved.get(key), now) for key, now in defaults if now is not None and saved.get(key) != now}

    def heatmaps(self, names: Sequence[str]) -> dict[str, HeatmapSet]:
        """Saved HeatmapSets by explainer name; all must explain the :meth:`explained` images."""
        expected = self.explained().image_ids
        sets = {name: HeatmapSet.load(self.heatmap_path(name)) for name in names}
        for name, heatmaps in sets.items():
            if heatmaps.image_ids != expected:
                raise ValueError(
                    f"{self.heatmap_path(name)} explains other images than this run's explained batch; "
                    f"rerun {self._explaining_notebook(name)} with profile {self.profile.name!r}."
                )
            if not self._made_by_this_model(heatmaps):
                raise ValueError(
                    f"{self.heatmap_path(name)} was made by another model than this run's (trained again since); "
                    f"rerun {self._explaining_notebook(name)} with profile {self.profile.name!r}."
                )
            differences = self._settings_not_the_defaults(name, heatmaps)
            if differences:
                # the steps that explain again (sanity checks, class leakage, shortcut maps) use the defaults
                raise ValueError(
                    f"{self.heatmap_path(name)} holds maps made with settings other than {name!r}'s present "
                    f"defaults ({differences}); "
                    f"notebooks 05 and 06 explain with the defaults again, and the two would not be the same method. "
                    f"Rerun {self._explaining_notebook(name)} with its default parameters (e.g. canonization = None)."
                )
        return sets

    @staticmethod
    def _explaining_notebook(name: str) -> str:
        """The notebook that saves the maps of explainer ``name`` (a registered one; else the one that explains it)."""
        if name.startswith("lrp_"):
            return "notebook 03"
        if name not in explainers.available():
            return "the notebook that explains with it"
        return "notebook 04" if isinstance(explainers.create(name), explainers.CAM) else "notebook 05"

    def save_table(self, table: pd.DataFrame, name: str) -> Path:
        """Write a metric table atomically as CSV (read back with :meth:`table`)."""
        path = self.table_path(name)
        with atomic_path(path) as tmp:
            table.to_csv(tmp, index=False)
        return path

    def table(self, name: str) -> pd.DataFrame:
        """A saved metric table; a clear error names the notebook that writes it."""
        path = self.table_path(name)
        if not path.is_file():
            raise FileNotFoundError(
                f"No table {name!r} at {path}: run notebook {'06' if name.startswith('known_truth') else '05'} "
                f"(profile {self.profile.name!r}) first."
            )
        return pd.read_csv(path)

    def save_figure(self, fig: Figure, number: int, slug: str) -> list[Path]:
        """``figN_<slug>.pdf`` and ``.png`` into :attr:`figures_dir`; in a notebook the saved PNG is what it shows
        (:func:`helpers.figures.show_saved`)."""
        written = figures.save_figure(fig, number, slug, self.figures_dir)
        figures.show_saved(fig, written[1])
        return written

    def _once(self, stage: str, load):
        if stage not in self._loaded:
            self._loaded[stage] = load()
        return self._loaded[stage]
