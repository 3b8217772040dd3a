"""The pretraining set of Table 1's fine-tuned column (omnifm_jax/data/histo_derm_mri.py): its
images and labels against the source files, and no image shared with real4."""
from __future__ import annotations

import numpy as np
import pytest

from omnifm_jax import finetune
from omnifm_jax.data import load_federation
from omnifm_jax.data.histo_derm_mri import SOURCES, load_histo_derm_mri
from omnifm_jax.data.image import box_resize, to_uint8
from omnifm_jax.data.paths import default_real_data_dir

ROOT = default_real_data_dir()
pytestmark = pytest.mark.skipif(not all((ROOT / rel).exists() for _, rel in SOURCES),
                                reason="the real BreaKHis, PH2 and TCGA-LGG files are not here")


def test_pool_matches_the_source_files_and_shares_no_image_with_real4():
    pool = load_histo_derm_mri(image_size=12)
    ph2 = np.load(ROOT / SOURCES[1][1])
    lgg = np.load(ROOT / SOURCES[2][1])
    n_histo = int(np.sum(pool.modality == 0))
    assert pool.images.shape[1:] == (12, 12, 3) and pool.num_classes == 7
    assert np.bincount(pool.modality).tolist() == [n_histo, len(ph2["images"]), len(lgg["images"])] and n_histo > 0
    derm = pool.modality == 1
    np.testing.assert_array_equal(pool.labels[derm] - 2, ph2["diagnosis"])   # classes 2..4
    i = 17   # one image by hand: the box-filtered PH2 image
    np.testing.assert_array_equal(pool.images[derm][i], to_uint8(box_resize(ph2["images"][i].astype(np.float32),
                                                                             (12, 12))))
    tumour = lgg["masks"].reshape(len(lgg["masks"]), -1).max(axis=1) > 0
    np.testing.assert_array_equal(pool.labels[pool.modality == 2], 5 + tumour)
    real4 = load_federation("real4", num_clients=2, seed=0, partition="iid")
    pre = load_federation("histo_derm_mri", num_clients=1, seed=0)
    seen = finetune.image_digests(pre.train.x) | finetune.image_digests(pre.test.x)
    assert not seen & (finetune.image_digests(real4.train.x) | finetune.image_digests(real4.test.x))
