"""The 13 localisable findings: one small class each, owning its scene parameters and its drawing.

Each finding adds its own attenuation change, drawn where a radiologist would look; its mask is the
support of that change (:func:`helpers.phantom.render.support`). A finding's parameters are drawn for
every image whether or not the finding is present, and :meth:`Finding.draw` uses no random numbers, so
switching a finding on or off (its strength in :func:`helpers.phantom.render`) changes nothing else in
the image.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from helpers.labels import LOCALISABLE
from helpers.phantom.anatomy import Geometry
from helpers.phantom.shapes import band, ellipse, smooth_inside

if TYPE_CHECKING:
    from helpers.phantom.scene import SceneDraws


class Finding:
    """One finding: the scene parameters it needs and the attenuation change it draws.

    Subclasses set :attr:`name` (a :data:`helpers.labels.LOCALISABLE` name) and implement
    :meth:`sample` and :meth:`draw`.
    """

    name: str = ""

    def sample(self, draw: SceneDraws) -> dict[str, np.ndarray]:
        """This finding's placement parameters, each an ``(n,)`` (or ``(n, ...)``) array.

        Keys are unique across findings; the draws happen in the order written, which is part of the
        phantom's reproducibility (same seed, same files).
        """
        raise NotImplementedError

    def draw(self, geo: Geometry, idx: np.ndarray) -> np.ndarray:
        """Attenuation change at unit strength for images ``idx``, ``(len(idx), H, W)``; no random draws."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class EnlargedCardiomediastinum(Finding):
    name = "Enlarged Cardiomediastinum"

    def sample(self, draw):
        return {"ecm_width": draw.uniform(1.35, 1.7)}

    def draw(self, geo, idx):
        width = geo.param("mediastinum", idx)
        wide = geo.mediastinum(idx, width * geo.param("ecm_width", idx))
        _, Y = geo.at(idx)
        upper = smooth_inside(Y + 0.02, 0.05)  # widening of the upper mediastinum only
        return (0.12 + 0.32 * geo.lungs(idx)) * (wide - geo.mediastinum(idx, width)) * upper


class Cardiomegaly(Finding):
    name = "Cardiomegaly"

    def sample(self, draw):
        return {"ctr_big": draw.uniform(0.55, 0.66)}

    def draw(self, geo, idx):
        heart_gain = 0.12 + 0.32 * geo.lungs(idx)  # the enlarged heart covers lung and adds its own density
        return heart_gain * (geo.heart(idx, geo.param("ctr_big", idx)) - geo.heart(idx, geo.param("ctr", idx)))


class LungOpacity(Finding):
    name = "Lung Opacity"

    def sample(self, draw):
        return {
            "opacity_side": draw.side(),
            "opacity_y": draw.uniform(-0.15, 0.12),
            "opacity_r": draw.uniform(0.06, 0.1),
        }

    def draw(self, geo, idx):
        X, Y = geo.at(idx)
        side, T = geo.param("opacity_side", idx), geo.param("thorax", idx)
        r = geo.param("opacity_r", idx)
        patch = ellipse(X, Y, side * 0.55 * T, geo.param("opacity_y", idx), r, 1.3 * r, edge=0.06)
        return 0.16 * patch * geo.lung(idx, side)


class LungLesion(Finding):
    name = "Lung Lesion"

    def sample(self, draw):
        return {
            "lesion_side": draw.side(),
            "lesion_x": draw.uniform(0.35, 0.8),
            "lesion_y": draw.uniform(-0.2, 0.12),
            "lesion_r": draw.uniform(0.03, 0.055),
        }

    def draw(self, geo, idx):
        X, Y = geo.at(idx)
        side, T = geo.param("lesion_side", idx), geo.param("thorax", idx)
        r = geo.param("lesion_r", idx)
        nodule = ellipse(X, Y, side * geo.param("lesion_x", idx) * T, geo.param("lesion_y", idx), r, r, edge=0.012)
        return 0.34 * nodule * (geo.lungs(idx) > 0.5)


class Edema(Finding):
    name = "Edema"

    def sample(self, draw):
        return {"edema_spread": draw.uniform(0.9, 1.2)}

    def draw(self, geo, idx):
        X, Y = geo.at(idx)
        spread = geo.param("edema_spread", idx)
        haze = np.exp(-(((np.abs(X) - 0.1) / (0.14 * spread)) ** 2 + (Y / (0.18 * spread)) ** 2))  # bat wings
        return 0.1 * haze * geo.lungs(idx) * (haze > 0.1)


class Consolidation(Finding):
    name = "Consolidation"

    def sample(self, draw):
        return {"consol_side": draw.side(), "consol_top": draw.uniform(0.0, 0.1)}

    def draw(self, geo, idx):
        X, Y = geo.at(idx)
        side = geo.param("consol_side", idx)
        lobe = geo.lung(idx, side) * smooth_inside(geo.param("consol_top", idx) - Y, 0.008)  # sharp fissure
        bronchi = band(np.sin(22 * (X - side * 0.15) + 9 * Y) * 0.04, 0.004, 0.004)  # air bronchograms
        return lobe * (0.3 - 0.12 * bronchi)


class Pneumonia(Finding):
    name = "Pneumonia"
    #: Foci of a patchy, multifocal pneumonia around one zone.
    foci = 4

    def sample(self, draw):
        return {
            "pneu_side": draw.side(),
            "pneu_y": draw.uniform(-0.05, 0.12),
            "pneu_offsets": draw.normal(0.045, (self.foci, 2)),
        }

    def draw(self, geo, idx):
        X, Y = geo.at(idx)
        side, T = geo.param("pneu_side", idx), geo.param("thorax", idx)
        offsets = geo.scene["pneu_offsets"][idx]
        blobs = np.zeros((len(X), geo.size, geo.size), np.float32)
        for k in range(offsets.shape[1]):
            x0 = side * 0.5 * T + offsets[:, k, 0, None, None]
            y0 = geo.param("pneu_y", idx) + offsets[:, k, 1, None, None]
            np.maximum(blobs, ellipse(X, Y, x0, y0, 0.035, 0.03, edge=0.03), out=blobs)
        return 0.24 * blobs * geo.lung(idx, side)


class Atelectasis(Finding):
    name = "Atelectasis"

    def sample(self, draw):
        return {"atel_side": draw.side(), "atel_y": draw.uniform(0.06, 0.13), "atel_len": draw.uniform(0.1, 0.16)}

    def draw(self, geo, idx):
        X, Y = geo.at(idx)
        side, T = geo.param("atel_side", idx), geo.param("thorax", idx)
        y0 = geo.param("atel_y", idx) + 0.15 * (X - side * 0.45 * T)
        plate = band(Y - y0, 0.011, 0.008) * band(X - side * 0.45 * T, geo.param("atel_len", idx) / 2, 0.02)
        volume_loss = geo.lung(idx, side) - geo.lung(idx, side, dome_shift=0.045)  # raised hemidiaphragm
        return 0.34 * plate * geo.lung(idx, side) + 0.32 * volume_loss


class Pneumothorax(Finding):
    name = "Pneumothorax"

    def sample(self, draw):
        return {"ptx_side": draw.side(), "ptx_depth": draw.uniform(0.05, 0.09)}

    def draw(self, geo, idx):
        X, Y = geo.at(idx)
        side, T = geo.param("ptx_side", idx), geo.param("thorax", idx)
        depth = geo.param("ptx_depth", idx)
        lung = geo.lung(idx, side)
        collapsed = ellipse(
            X, Y, side * 0.42 * T, 0.0, 0.46 * T - depth, geo.param("lung_height", idx) - depth, edge=0.006
        )
        apex = smooth_inside(Y + 0.02, 0.06)  # upright film: air rises to the apex
        pleural_air = lung * (1 - collapsed) * apex
        markings = geo.markings[geo.rows[idx]]  # the collapsed lung's vessels leave the air space
        pleural_line = band(collapsed - 0.5, 0.2, 0.1) * lung * apex
        return -pleural_air * (0.14 + markings) + 0.12 * pleural_line


class PleuralEffusion(Finding):
    name = "Pleural Effusion"

    def sample(self, draw):
        return {"eff_side": draw.side(), "eff_height": draw.uniform(0.08, 0.16), "eff_both": draw.chance(0.4)}

    def draw(self, geo, idx):
        X, Y = geo.at(idx)
        fluid = np.zeros_like(X)
        main_side = geo.param("eff_side", idx)
        for side, weight in ((main_side, 1.0), (-main_side, geo.param("eff_both", idx))):
            T = geo.param("thorax", idx)
            level = (
                geo.param("dome", idx)
                - geo.param("eff_height", idx)
                - 0.5 * ((X - side * 0.47 * T) * side).clip(0) * 0.6
            )
            basal = smooth_inside(level - Y, 0.03)  # meniscus: climbs the lateral wall, blunts the angle
            fluid = fluid + weight * basal * geo.lung(idx, side, dome_shift=-0.04)
        return 0.28 * fluid


class PleuralOther(Finding):
    name = "Pleural Other"

    def sample(self, draw):
        return {"pleural_side": draw.side(), "pleural_t": draw.uniform(0.018, 0.03)}

    def draw(self, geo, idx):
        X, Y = geo.at(idx)
        side, T = geo.param("pleural_side", idx), geo.param("thorax", idx)
        lung = geo.lung(idx, side)
        inner = ellipse(
            X,
            Y,
            side * 0.47 * T - side * geo.param("pleural_t", idx),
            -0.02,
            0.46 * T,
            geo.param("lung_height", idx),
            edge=0.01,
        )
        lateral = side * X > 0.25 * T
        return 0.26 * lung * (1 - inner) * lateral * smooth_inside(Y - 0.1, 0.05)


class Fracture(Finding):
    name = "Fracture"

    def sample(self, draw):
        return {
            "fracture_side": draw.side(),
            "fracture_rib": draw.integers(2, 7),
            "fracture_x": draw.uniform(0.55, 0.8),
        }

    def draw(self, geo, idx):
        X, Y = geo.at(idx)
        side, T = geo.param("fracture_side", idx), geo.param("thorax", idx)
        rib = geo.param("fracture_rib", idx)
        x_break = side * geo.param("fracture_x", idx) * T
        window = band(X - x_break - side * 0.03, 0.03, 0.006)
        d, n = geo.rib_distance(idx)
        d_shift, n_shift = geo.rib_distance(idx, y_shift=0.02)  # displaced fragment
        original = band(d, 0.009, 0.008) * (n == rib)
        displaced = band(d_shift, 0.009, 0.008) * (n_shift == rib)
        gap = band(X - x_break, 0.01, 0.004) * original
        callus = ellipse(X, Y, x_break, geo.rib_y(idx, x_break, rib), 0.04, 0.03, edge=0.012)  # healing callus
        return 0.14 * ((displaced - original) * window - gap) + 0.26 * callus


class SupportDevices(Finding):
    name = "Support Devices"
    TUBE, LINE, PACEMAKER = 1, 2, 4  # bits of ``device_kind``

    def sample(self, draw):
        return {"device_kind": draw.integers(1, 8), "device_x": draw.uniform(-0.02, 0.02)}

    def draw(self, geo, idx):
        X, Y = geo.at(idx)
        kind = geo.scene["device_kind"][idx].astype(int)[:, None, None]
        thin = max(0.006, 0.8 / geo.size)  # at least a pixel wide at any resolution
        tube = (
            band(X - geo.param("device_x", idx), thin, 0.004) * smooth_inside(Y + 0.12, 0.01) * ((kind & self.TUBE) > 0)
        )
        curve = Y - (-0.12 - 1.6 * (X + 0.12) ** 2)
        line = band(curve, thin, 0.004) * band(X + 0.2, 0.17, 0.01) * ((kind & self.LINE) > 0)
        box = band(X - 0.24, 0.04, 0.008) * band(Y + 0.3, 0.025, 0.008)
        lead = band(Y + 0.3 - 1.2 * (X - 0.24), 0.004, 0.004) * band(X - 0.14, 0.1, 0.01)
        pacemaker = np.maximum(box, lead) * ((kind & self.PACEMAKER) > 0)
        return 0.85 * np.maximum(np.maximum(tube, line), pacemaker)


#: One instance per finding, in :data:`helpers.labels.LOCALISABLE` order: the order of the strength and
#: mask axes, of drawing, and of parameter sampling.
REGISTRY: tuple[Finding, ...] = (
    EnlargedCardiomediastinum(),
    Cardiomegaly(),
    LungOpacity(),
    LungLesion(),
    Edema(),
    Consolidation(),
    Pneumonia(),
    Atelectasis(),
    Pneumothorax(),
    PleuralEffusion(),
    PleuralOther(),
    Fracture(),
    SupportDevices(),
)
FINDINGS_BY_NAME: dict[str, Finding] = {finding.name: finding for finding in REGISTRY}
if tuple(FINDINGS_BY_NAME) != LOCALISABLE:  # an import-time guard: masks would silently change meaning
    raise RuntimeError(f"helpers.phantom.findings.REGISTRY is out of LOCALISABLE order: {tuple(FINDINGS_BY_NAME)}")
