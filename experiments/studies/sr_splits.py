"""How much an image-level BreaKHis split inflates super-resolution scores.

``sr_breakhis`` (3 clients by magnification, x2) with the default patient-level split (test
patients, i.e. accession numbers, held out from every client) and with
``group_split=image`` (test images held out, but other fields of their slides trained on).
Each seed draws its own split. The PSNR gain over bicubic upsampling of the same test
patches makes the splits comparable although their test images differ. Needs the BreaKHis
PNGs (``OMNIFM_REAL_DATA``).
"""
from omnifm_jax.reproduce import Cell, Claim, Metric, Scale, Setting, Table, method, paper_metric
from omnifm_jax.reproduce.settings import RUN, SMOKE

METHODS = ("OmniFM", "FedAvg")
SPLITS = (("patient", "patient-level split (test patients held out)"),
          ("image", "image-level split (test images held out)"))

CELLS = tuple(Cell(method(n).label, label, method(n).key, split, "sr_breakhis",
                   method(n).overrides + (f"dataset_kwargs.group_split={split}",))
              for n in METHODS for split, label in SPLITS)
CLAIMS = tuple(Claim(f"an image-level split inflates {method(n).label}'s PSNR gain over bicubic", "psnr_gain",
                     "contrast", terms=((1.0, method(n).key, "image"), (-1.0, method(n).key, "patient")))
               for n in METHODS)
TABLE = Table(
    "sr_splits", "BreaKHis super-resolution: patient-level vs image-level test split",
    ("psnr", "psnr_gain", "ssim"), CELLS, CLAIMS, kind="study", rule="last", data_seed="seed",
    metric_defs={"psnr_gain": Metric("psnr", "PSNR gain over bicubic (dB)", 1.0, 2, minus_baseline=True),
                 "psnr": paper_metric("super_resolution", "psnr", 1.0, 2)},
    scales={"smoke": Scale({"sr_breakhis": SMOKE["sr_breakhis"][:1]}, rounds=8),
            "cpu": Scale({"sr_breakhis": (Setting("sr_breakhis", RUN, "breakhis",
                                                  "the config's protocol: x2, 3 clients by magnification, the "
                                                  "config's EDSR"),)}, rounds=40,
                         note="the protocol of experiments/results/sr_breakhis_splits.md: 40 rounds, seeds 0, 1, 2")},
    notes=("Each seed draws its own split (data_seed = seed); at a seed both methods see the same split.",
           "The bicubic baseline is measured on the same test patches as the model (the CSV's psnr_baseline)."))
