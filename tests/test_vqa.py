"""Federated VQA: the VQA-RAD loader (omnifm_jax/data/vqa_rad.py), the LLaVA-shaped backbone
(omnifm_jax/models/vqa.py), the task's metrics (omnifm_jax/tasks/vqa.py), fine-tuning from a
model pretrained on other images, and the bad inputs, on a small VQA-RAD-like folder written
here (plus one check of the real files where they are present)."""
from __future__ import annotations

import json
from collections import Counter

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from omnifm_jax import config as config_lib
from omnifm_jax import experiment, finetune
from omnifm_jax.checks import ConfigError
from omnifm_jax.data import load_federation
from omnifm_jax.data import vqa_rad as V
from omnifm_jax.data.io import DataFileError, DatasetNotFoundError
from omnifm_jax.data.paths import default_real_data_dir
from omnifm_jax.models.vqa import VQABackbone
from omnifm_jax.models.vqa import unpack as jax_unpack
from omnifm_jax.tasks.vqa import majority_baseline, vqa

WORDS = ["is", "there", "a", "mass", "in", "the", "liver", "lung", "brain", "what", "organ", "shown", "left", "right"]
ANSWERS_CLOSED = ["yes", "no"]
ANSWERS_OPEN = ["liver", "lung", "brain", "left", "right"]


def write_folder(root, *, images_per_organ=4, questions_per_image=4, seed=0, drop_image=None, empty_answer=False):
    """A VQA-RAD-like folder: ``images/*.jpg`` (grey JPEGs of various sizes) and the two JSON
    files; every image has training questions and one test question."""
    rng = np.random.default_rng(seed)
    folder = root / "vqa_rad"
    (folder / "images").mkdir(parents=True)
    train, test, qid = [], [], 0
    for organ in V.ORGANS:
        for i in range(images_per_organ):
            name = f"{organ.lower()}{i}.jpg"
            h, w = rng.integers(20, 60, size=2)
            if name != drop_image:
                Image.fromarray(rng.integers(0, 256, (h, w), dtype=np.uint8)).save(folder / "images" / name, "JPEG")
            for j in range(questions_per_image):
                is_open = rng.random() < 0.5
                answers = ANSWERS_OPEN if is_open else ANSWERS_CLOSED
                qid += 1
                rec = {"qid": qid, "image_name": name, "image_organ": organ + (" " if j == 0 else ""),
                       "answer": str(rng.choice(answers)).upper() if j == 1 else str(rng.choice(answers)),
                       "answer_type": "OPEN" if is_open else "CLOSED ", "question_type": "PRES",
                       "question": " ".join(rng.choice(WORDS, size=rng.integers(3, 9))).capitalize() + "?",
                       "phrase_type": "freeform"}
                (test if j == questions_per_image - 1 else train).append(rec)
    test.append({**test[0], "qid": qid + 1, "answer": "an answer no training question has"})
    if empty_answer:
        train[3]["answer"] = "  "
    (folder / "trainset.json").write_text(json.dumps(train))
    (folder / "testset.json").write_text(json.dumps(test))
    return folder, train, test


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return write_folder(tmp_path_factory.mktemp("vqa"))


def fed_of(folder, **kw):
    return load_federation("vqa_rad", num_clients=kw.pop("num_clients", 3), seed=kw.pop("seed", 0),
                           root=str(folder[0]), image_size=16, question_length=8, **kw)


def test_pack_and_unpack_invert_each_other_in_numpy_and_in_the_model():
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (5, 6, 6, 1), dtype=np.uint8)
    tokens = rng.integers(0, 1 << 16, (5, 18)).astype(np.int32)  # two bytes: ids above 255 too
    x = V.pack(images, tokens)
    assert x.shape == (5, 6, 6, 2) and x.dtype == np.uint8
    back_images, back_tokens = V.unpack(x, 18)
    np.testing.assert_array_equal(back_images, images)
    np.testing.assert_array_equal(back_tokens, tokens)
    _, jt = jax_unpack(jnp.asarray(x, jnp.float32), 18)  # the jitted model's reading of the raw plane
    np.testing.assert_array_equal(np.asarray(jt), tokens)
    with pytest.raises(ValueError, match="do not fit a 6x6 plane"):
        V.pack(images, np.zeros((5, 19), np.int32))


def test_vocabularies_and_question_encoding():
    recs = [{"question": "Is the liver big?", "answer": "Yes "}, {"question": "is THE lung big", "answer": "no"},
            {"question": "what organ", "answer": "yes"}]
    vocab = V.build_vocabularies(recs)
    # count order, then alphabetical; <pad> and <unk> first
    assert vocab["questions"] == ["<pad>", "<unk>", "big", "is", "the", "liver", "lung", "organ", "what"]
    assert vocab["answers"] == ["yes", "no"]
    assert V.build_vocabularies(recs, min_word_count=2)["questions"] == ["<pad>", "<unk>", "big", "is", "the"]
    index = {w: i for i, w in enumerate(vocab["questions"])}
    np.testing.assert_array_equal(V.encode_question("Is the spleen big?", index, 6), [3, 4, V.UNK, 2, 0, 0])
    np.testing.assert_array_equal(V.encode_question("is is is is", index, 2), [3, 3])


def test_loader_clients_labels_and_questions_match_the_files(folder):
    root, train, test = folder
    fed = fed_of(folder)
    info = fed.info
    assert info["target"] == "answers" and fed.num_clients == 3 and info["client_names"] == ["head", "chest", "abd"]
    vocab = info["vocabulary"]
    assert vocab == V.build_vocabularies(train)
    num_answers = len(vocab["answers"])
    for split, recs in (("train", train), ("test", test)):
        arrays = getattr(fed, split)
        images, tokens = V.unpack(arrays.x, 8)
        answer, is_open = V.decode_labels(arrays.y, num_answers)
        # every record once, grouped by organ client; compare as multisets of (client, question, answer, type)
        got, want = Counter(), Counter()
        owner = np.repeat(np.arange(3), arrays.n)
        for k, t, a, o in zip(owner, tokens, answer, is_open):
            words = " ".join(vocab["questions"][i] for i in t if i != V.PAD)
            got[(int(k), words, vocab["answers"][a] if a < num_answers else None, bool(o))] += 1
        for r in recs:
            words = " ".join(w if w in vocab["questions"] else "<unk>" for w in V.tokenize(r["question"])[:8])
            ans = V.normalize_answer(r["answer"])
            want[(V.ORGANS.index(r["image_organ"].strip()), words, ans if ans in vocab["answers"] else None,
                  r["answer_type"].strip() == "OPEN")] += 1
        assert got == want
    unknown = sum(V.normalize_answer(r["answer"]) not in vocab["answers"] for r in test)
    assert info["unknown_test_answers"] == unknown >= 1
    # no image is in two clients
    digests = [finetune.image_digests(fed.train.x[o:o + n], 1) for o, n in zip(fed.train.offsets, fed.train.n)]
    assert all(not (digests[a] & digests[b]) for a in range(3) for b in range(a + 1, 3))


def test_iid_partition_and_image_splits_are_disjoint_by_image(folder):
    fed = fed_of(folder, partition="iid", num_clients=2, seed=3)
    per_client = [finetune.image_digests(fed.train.x[o:o + n], 1) for o, n in zip(fed.train.offsets, fed.train.n)]
    assert per_client[0] and per_client[1] and not (per_client[0] & per_client[1])
    for k in range(2):  # a client's test questions are about its own images
        lo, n = fed.test.offsets[k], fed.test.n[k]
        assert finetune.image_digests(fed.test.x[lo:lo + n], 1) <= per_client[k]
    pre = fed_of(folder, partition="iid", num_clients=1, images="pretrain")
    rest = fed_of(folder, images="federation")
    a, b = finetune.image_digests(pre.train.x, 1), finetune.image_digests(rest.train.x, 1)
    assert a and b and not (a & b)
    assert len(a) + len(b) == len(finetune.image_digests(fed_of(folder).train.x, 1))
    assert pre.info["vocabulary"] == rest.info["vocabulary"]  # the files' vocabularies, whatever the images


@pytest.mark.parametrize("kwargs, error, message", [
    ({"drop_image": "chest1.jpg"}, DatasetNotFoundError, r"chest1\.jpg \(trainset\.json qid"),
    ({"empty_answer": True}, DataFileError, "the answer is empty"),
])
def test_bad_files_are_refused_before_training(tmp_path, kwargs, error, message):
    folder = write_folder(tmp_path, **kwargs)
    with pytest.raises(error, match=message):
        fed_of(folder)


def test_bad_options_are_refused(folder):
    with pytest.raises(ValueError, match="partition='organ' makes 3 clients"):
        fed_of(folder, num_clients=4)
    with pytest.raises(ValueError, match="question_length must be in"):
        load_federation("vqa_rad", num_clients=3, root=str(folder[0]), image_size=4, question_length=9)


def test_task_metrics_against_a_numpy_reference():
    rng = np.random.default_rng(7)
    v, n = 6, 40
    logits = rng.normal(size=(n, v)).astype(np.float32)
    answer = rng.integers(0, v + 1, n)  # v = unknown
    is_open = rng.random(n) < 0.4
    labels = V.encode_labels(answer, is_open, v)
    task = vqa(v)
    stats = jax.tree_util.tree_map(np.asarray, task.eval_stats(jnp.asarray(logits), jnp.asarray(labels)))
    m = task.summarize(stats, np.array([n]))
    correct = (logits.argmax(1) == answer) & (answer < v)
    assert m["accuracy"] == pytest.approx(correct.mean())
    assert m["closed_accuracy"] == pytest.approx(correct[~is_open].mean())
    assert m["open_accuracy"] == pytest.approx(correct[is_open].mean())
    z = logits.astype(np.float64)
    logp = z - z.max(1, keepdims=True) - np.log(np.exp(z - z.max(1, keepdims=True)).sum(1, keepdims=True))
    known = answer < v
    assert m["test_loss"] == pytest.approx(-logp[known, answer[known]].mean(), rel=1e-5)
    # majority baseline, by hand: client 0 closed answers [1, 1, 0, v(unknown)] -> 2/4, open [2] -> 1/1,
    # all 5 -> 2/5; client 1 closed [3] -> 1/1, no open question
    lab = V.encode_labels(np.array([1, 1, 0, v, 2, 3]), np.array([0, 0, 0, 0, 1, 0]), v)
    base = majority_baseline(lab, np.array([5, 1]), v)
    assert base["clients"][0] == {"accuracy": 0.4, "closed_accuracy": 0.5, "open_accuracy": 1.0}
    assert base["clients"][1]["closed_accuracy"] == 1.0 and np.isnan(base["clients"][1]["open_accuracy"])
    assert base["avg"] == {"accuracy": 3 / 6, "closed_accuracy": 3 / 5, "open_accuracy": 1.0}


def test_spectral_path_reads_the_image_and_not_the_question():
    """OmniFM on the VQA backbone: its spectral tokens do not change with the question; the
    model's answer does."""
    from omnifm_jax import bank as bank_lib
    from omnifm_jax.models.heads import ClassificationHead
    from omnifm_jax.models.omnifm import OmniFM

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (2, 16, 16, 1), dtype=np.uint8)
    x1 = V.pack(images, rng.integers(2, 30, (2, 8)))
    x2 = V.pack(images, rng.integers(2, 30, (2, 8)))
    model = OmniFM(backbone=VQABackbone(question_length=8, vocab_size=32, dim=16, vision_dim=16, num_heads=2),
                   head=ClassificationHead(5), spectral_dim=8, attn_dim=8)
    bank = bank_lib.init(8, 8)
    f = lambda x: jnp.asarray(x, jnp.float32)  # noqa: E731
    params = jax.jit(model.init)(jax.random.key(0), f(x1), bank)
    apply = jax.jit(model.apply)
    (o1, a1), (o2, a2) = apply(params, f(x1), bank), apply(params, f(x2), bank)
    np.testing.assert_array_equal(np.asarray(a1.s), np.asarray(a2.s))
    assert np.max(np.abs(np.asarray(o1) - np.asarray(o2))) > 1e-6


TINY = ["dataset_kwargs.image_size=8", "backbone_kwargs.patch=4", "dataset_kwargs.question_length=8", "backbone_kwargs.question_length=8",
        "backbone_kwargs.dim=16", "backbone_kwargs.vision_dim=16", "backbone_kwargs.num_heads=2",
        "backbone_kwargs.depth=1", "backbone_kwargs.vocab_size=64", "batch_size=4", "eval_batch_size=64",
        "rounds=1", "eval_train_loss=False", "diagnostics=0", "checkpoint_every=0"]
SMALL_OMNIFM = ["algorithm_kwargs.spectral_dim=8", "algorithm_kwargs.attn_dim=8"]


def cfg_of(folder, *overrides):
    cfg = config_lib.load_config("vqa_rad_modality")
    return config_lib.apply_overrides(cfg, TINY + [f"dataset_kwargs.root={folder[0]}"] + list(overrides))


def test_training_reports_closed_open_and_overall_accuracy_and_fine_tunes(folder, tmp_path):
    """A pretraining run on some images, a fine-tuning run (F-C regime: connector and head)
    on the others; a source with other vocabularies or trained on the test images is refused."""
    source = tmp_path / "pretrain"
    experiment.run(cfg_of(folder, "algorithm=fedavg", "num_clients=1", "dataset_kwargs.partition=iid",
                          "dataset_kwargs.images=pretrain", "checkpoint_every=1"), source, progress=False,
                   log=lambda _: None)
    src = finetune.load_source_params(source)
    regime = ['init_params=["params/backbone/"]', 'trainable=["connector_", "params/head/", "tokenizer", "eca", "prompt"]', "dataset_kwargs.images=federation"]
    summary = experiment.run(cfg_of(folder, f"init_from={source}", *regime, *SMALL_OMNIFM), None, progress=False,
                             log=lambda _: None)
    for key in ("accuracy", "closed_accuracy", "open_accuracy", "test_loss"):
        assert np.isfinite(summary["last"][key]) or key == "open_accuracy"
    after = {finetune.path_name(p): np.asarray(v) for p, v in
             jax.tree_util.tree_flatten_with_path(summary["state"].server.params)[0]}
    # loaded and frozen (the server's weighted mean of equal copies may move the last bit)
    np.testing.assert_allclose(after["params/backbone/llm_block0/query/kernel"],
                               src.params["params/backbone/llm_block0/query/kernel"], rtol=1e-6, atol=1e-7)
    assert not np.array_equal(after["params/backbone/connector_fc1/kernel"],
                              src.params["params/backbone/connector_fc1/kernel"])  # trained
    with pytest.raises(ConfigError, match="questions vocabulary .* first difference"):
        experiment.setup(cfg_of(folder, f"init_from={source}", "dataset_kwargs.images=federation",
                                "dataset_kwargs.min_word_count=1000"))  # no word kept
    # all images: this run trains on the source's images itself (a warning, no leak)
    with pytest.warns(UserWarning, match="training images"):
        experiment.setup(cfg_of(folder, f"init_from={source}", 'init_params=["params/backbone/"]'))


def test_a_source_that_saw_a_test_question_or_an_unseen_test_image_is_refused():
    rng = np.random.default_rng(3)
    images = rng.integers(0, 256, (4, 8, 8, 1), dtype=np.uint8)
    q = rng.integers(2, 50, (4, 4))
    x = lambda i, t: V.pack(images[i], q[t])  # noqa: E731  (samples: images i with questions t)
    train, test = x([0, 1], [0, 1]), x([1, 2], [2, 3])  # test image 1 is a training image too, image 2 is not
    with pytest.warns(UserWarning, match="1 of this run.s training images"):
        finetune.check_disjoint(x([0], [0]), train, test, where="a", channels=1)  # shares training data only
    with pytest.warns(UserWarning, match="training images"):
        finetune.check_disjoint(x([1], [0]), train, test, where="b", channels=1)  # test image 1, another question
    for source in (x([1], [2]), x([2], [0])):  # a test sample itself; test image 2 that this run never trains on
        with pytest.raises(ConfigError, match="was trained on 1 of this run's test images"):
            finetune.check_disjoint(source, train, test, where="c", channels=1)
    # a test sample that the data set also puts in the training split: the run trains on it itself
    repeated = np.concatenate([train, x([1], [2])])
    with pytest.warns(UserWarning, match="training images"):
        finetune.check_disjoint(x([1], [2]), repeated, test, where="d", channels=1)


def test_backbone_and_data_must_agree(folder):
    with pytest.raises(ConfigError, match="backbone_kwargs.question_length=16 but the data hold questions of 8"):
        experiment.setup(cfg_of(folder, "backbone_kwargs.question_length=16"))
    with pytest.raises(ConfigError, match="vocab_size=4 is smaller than the data's question vocabulary"):
        experiment.setup(cfg_of(folder, "backbone_kwargs.vocab_size=4"))
    with pytest.raises(ConfigError, match="task=vqa needs backbone='vqa'"):
        experiment.setup(cfg_of(folder, "backbone=cnn", "backbone_kwargs={}"))


@pytest.mark.skipif(not (default_real_data_dir() / "vqa_rad" / "trainset.json").is_file(),
                    reason="the real VQA-RAD files are not here")
def test_real_vqa_rad_has_the_documented_size():
    fed = load_federation("vqa_rad", num_clients=3, image_size=8, question_length=8)
    assert int(fed.train.n.sum()) == 3064 and int(fed.test.n.sum()) == 451
    assert fed.info["num_answers"] == 476 and fed.info["unknown_test_answers"] == 47
