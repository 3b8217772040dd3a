"""VQA-RAD radiology visual question answering (Lau et al. 2018), registered as ``vqa_rad``.

The ``vqa_rad`` folder of the real-data folder: ``trainset.json`` (3,064 question-answer
pairs) and ``testset.json`` (451) on 315 radiology images (``images/*.jpg``; CT, MRI and
X-ray of the head, chest and abdomen), the usual split, in which test questions ask about
images that training questions ask about too (a question is the sample, not an image).

Clients (``partition``):
  * ``"organ"`` (3 clients): one per imaging group of the files, ``HEAD``, ``CHEST``,
    ``ABD``. The files label the organ of each image, not its modality; in VQA-RAD the
    groups are dominated by different modalities (chest X-ray, head MRI/CT, abdominal CT),
    so this is the modality-specific federation the data allow (the paper's Task 2 has
    eight modality clients).
  * ``"iid"`` (any number of clients): images dealt at random to clients (every question
    stays with its image, so no image is in two clients), like the paper's Task 1 IID split.
    A client's test questions are those of the test file about its images.

``images``: ``"all"``, or a split of the images for fine-tuning: ``"pretrain"`` keeps a
``pretrain_fraction`` of the images (drawn with ``split_seed``, the same for every run) and
``"federation"`` the others: a model pretrained on the first set never saw an image of the
second (a fine-tuning run checks this, image by image).

Text: questions are lower-cased, split into words (letters and digits) and mapped through a
word vocabulary built from ALL training questions of the file (``min_word_count``), ids 0 =
padding, 1 = unknown word; answers are the lower-cased, stripped strings, and the answer
vocabulary is every training answer of the file. Both vocabularies depend on the files and
``min_word_count`` only, not on the clients, so a model pretrained on one split reads the
same words and answers as the federation it is fine-tuned on (``init_from`` refuses a
checkpoint whose vocabularies differ: :func:`omnifm_jax.finetune.check_vocabularies`). A test
answer outside the training vocabulary counts as wrong.

How a sample travels: the engine moves one ``uint8`` array per sample, so the question is
stored as an extra channel of the image array (:func:`pack`): ``x[..., :C]`` is the image,
``x[..., C]`` the question plane, token ``t`` of the question in its first ``2 L`` pixels
(row-major) as two bytes, high then low. This keeps the engine's one-array contract
(gathers, sharding, checkpoints, deduplication) unchanged; :func:`unpack` (NumPy) and
``omnifm_jax.models.vqa.unpack`` (in the jitted model) read it back. The label of a sample
is ``answer + (V + 1) * is_open``, with ``answer = V`` for an unknown test answer
(:func:`encode_labels`), so the task knows each question's type (closed yes/no or open).
"""
from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import numpy as np

from omnifm_jax.registry import DATASETS

from .federation import Federation, stack_clients, validate_federation
from .image import box_resize, to_uint8
from .io import DataFileError, DatasetNotFoundError, open_image
from .options import dataset_options
from .paths import real_data_root

__all__ = ["VQA_DIR", "ORGANS", "PAD", "UNK", "tokenize", "build_vocabularies", "encode_question", "pack", "unpack",
           "encode_labels", "decode_labels", "question_capacity", "vqa_rad_federation"]

#: The folder, relative to the real-data folder.
VQA_DIR = Path("vqa_rad")
#: The organ groups of the files (``image_organ``), the clients of ``partition="organ"``.
ORGANS = ("HEAD", "CHEST", "ABD")
#: Question token ids of padding and of a word outside the vocabulary.
PAD, UNK = 0, 1
PARTITIONS = ("organ", "iid")
IMAGE_SETS = ("all", "pretrain", "federation")
_WORD = re.compile(r"[a-z0-9]+")


def tokenize(question: str) -> List[str]:
    """``"Is the liver enlarged?" -> ["is", "the", "liver", "enlarged"]``."""
    return _WORD.findall(str(question).lower())


def normalize_answer(answer) -> str:
    """An answer as compared: lower-cased, surrounding blanks removed."""
    return str(answer).strip().lower()


def build_vocabularies(train_records: Sequence[dict], *, min_word_count: int = 1) -> Dict[str, List[str]]:
    """``{"questions": words, "answers": answers}`` of the training records: words seen at
    least ``min_word_count`` times (after ``<pad>`` and ``<unk>``), sorted by count then
    alphabetically; every training answer, sorted the same way."""
    words = Counter(w for r in train_records for w in tokenize(r["question"]))
    kept = sorted((w for w, c in words.items() if c >= min_word_count), key=lambda w: (-words[w], w))
    answers = Counter(normalize_answer(r["answer"]) for r in train_records)
    return {"questions": ["<pad>", "<unk>"] + kept, "answers": sorted(answers, key=lambda a: (-answers[a], a))}


def encode_question(question: str, index: Dict[str, int], length: int) -> np.ndarray:
    """``int32[length]`` token ids of ``question`` (truncated, padded with :data:`PAD`)."""
    ids = [index.get(w, UNK) for w in tokenize(question)][:length]
    return np.asarray(ids + [PAD] * (length - len(ids)), np.int32)


def question_capacity(height: int, width: int) -> int:
    """The longest question (tokens) a ``height x width`` question plane holds."""
    return (height * width) // 2


def pack(images: np.ndarray, tokens: np.ndarray) -> np.ndarray:
    """``uint8[N, H, W, C]`` images and ``int[N, L]`` token ids -> ``uint8[N, H, W, C + 1]``
    (module docstring). Ids must be in ``[0, 65536)``; ``2 L <= H W``."""
    images, tokens = np.asarray(images), np.asarray(tokens)
    n, h, w, _ = images.shape
    if tokens.ndim != 2 or tokens.shape[0] != n:
        raise ValueError(f"pack: tokens must be int[{n}, L], got {tokens.shape}")
    if tokens.shape[1] > question_capacity(h, w):
        raise ValueError(f"pack: {tokens.shape[1]} tokens do not fit a {h}x{w} plane (at most "
                         f"{question_capacity(h, w)})")
    if tokens.size and (tokens.min() < 0 or tokens.max() >= 1 << 16):
        raise ValueError("pack: token ids must be in [0, 65536)")
    plane = np.zeros((n, h * w), np.uint8)
    plane[:, 0:2 * tokens.shape[1]:2] = (tokens >> 8).astype(np.uint8)
    plane[:, 1:2 * tokens.shape[1]:2] = (tokens & 0xFF).astype(np.uint8)
    return np.concatenate([images.astype(np.uint8), plane.reshape(n, h, w, 1)], axis=-1)


def unpack(x: np.ndarray, length: int) -> Tuple[np.ndarray, np.ndarray]:
    """The inverse of :func:`pack`: ``(uint8 images [N, H, W, C], int32 tokens [N, length])``."""
    x = np.asarray(x)
    plane = x[..., -1].reshape(x.shape[0], -1).astype(np.int32)
    return x[..., :-1], plane[:, 0:2 * length:2] * 256 + plane[:, 1:2 * length:2]


def encode_labels(answer_ids: np.ndarray, is_open: np.ndarray, num_answers: int) -> np.ndarray:
    """``answer + (V + 1) * is_open`` (``answer = V``: not in the training vocabulary)."""
    return (np.asarray(answer_ids, np.int64) + (num_answers + 1) * np.asarray(is_open, np.int64)).astype(np.int32)


def decode_labels(labels, num_answers: int):
    """``(answer, is_open)`` of encoded labels (NumPy or jax arrays)."""
    return labels % (num_answers + 1), labels // (num_answers + 1)


def _read_records(folder: Path, name: str) -> List[dict]:
    path = folder / name
    if not path.is_file():
        raise DatasetNotFoundError(f"data set 'vqa_rad': {path} is missing (put VQA-RAD's trainset.json, "
                                   f"testset.json and images/ in {folder}, or set OMNIFM_REAL_DATA)")
    try:
        records = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as exc:
        raise DataFileError(f"data set 'vqa_rad': {path} is not JSON: {exc}") from None
    if not isinstance(records, list):
        raise DataFileError(f"data set 'vqa_rad': {path} must hold a list of question records")
    for i, r in enumerate(records):
        where = f"data set 'vqa_rad': {path} record {i} (qid {r.get('qid', '?') if isinstance(r, dict) else '?'})"
        if not isinstance(r, dict):
            raise DataFileError(f"{where}: not an object")
        missing = [k for k in ("image_name", "question", "answer", "answer_type", "image_organ") if k not in r]
        if missing:
            raise DataFileError(f"{where}: no {missing}")
        if not normalize_answer(r["answer"]):
            raise DataFileError(f"{where}: the answer is empty (question {r['question']!r})")
        if not tokenize(r["question"]):
            raise DataFileError(f"{where}: the question has no word ({r['question']!r})")
        if str(r["answer_type"]).strip().upper() not in ("CLOSED", "OPEN"):
            raise DataFileError(f"{where}: answer_type must be CLOSED or OPEN, got {r['answer_type']!r}")
        if str(r["image_organ"]).strip().upper() not in ORGANS:
            raise DataFileError(f"{where}: image_organ must be one of {list(ORGANS)}, got {r['image_organ']!r}")
    return records


def _load_images(folder: Path, names: Sequence[str], size: int, referenced_by: Dict[str, str]) -> np.ndarray:
    missing = [n for n in names if not (folder / "images" / n).is_file()]
    if missing:
        raise DatasetNotFoundError(
            f"data set 'vqa_rad': {len(missing)} image(s) named by questions are not in {folder / 'images'}: "
            + ", ".join(f"{n} ({referenced_by[n]})" for n in missing[:5]) + (" ..." if len(missing) > 5 else ""))
    out = np.empty((len(names), size, size, 1), np.uint8)
    for i, name in enumerate(names):
        with open_image(folder / "images" / name, "vqa_rad") as im:
            grey = np.asarray(im.convert("L"), np.float32)
        out[i, ..., 0] = to_uint8(box_resize(grey, (size, size)))
    return out


def vqa_rad_federation(*, num_clients: int = 3, seed: int = 0, root=None, partition: str = "organ",
                       image_size: int = 32, question_length: int = 16, min_word_count: int = 1,
                       images: str = "all", pretrain_fraction: float = 0.3, split_seed: int = 0) -> Federation:
    """The VQA-RAD federation (module docstring). ``image_size``: images are resized (Pillow
    box filter, grey) to a square of this side; ``question_length``: tokens kept per question
    (VQA-RAD's longest has 31 words; 16 covers 94 %)."""
    if partition not in PARTITIONS:
        raise ValueError(f"vqa_rad: partition must be one of {list(PARTITIONS)}, got {partition!r}")
    if images not in IMAGE_SETS:
        raise ValueError(f"vqa_rad: images must be one of {list(IMAGE_SETS)}, got {images!r}")
    if partition == "organ" and num_clients != len(ORGANS):
        raise ValueError(f"vqa_rad: partition='organ' makes {len(ORGANS)} clients ({', '.join(ORGANS)}); "
                         f"num_clients={num_clients} (use partition='iid' for another number)")
    if num_clients < 1:
        raise ValueError(f"vqa_rad: num_clients must be >= 1, got {num_clients}")
    if not 4 <= image_size <= 512:
        raise ValueError(f"vqa_rad: image_size must be in [4, 512], got {image_size}")
    if not 1 <= question_length <= question_capacity(image_size, image_size):
        raise ValueError(f"vqa_rad: question_length must be in [1, {question_capacity(image_size, image_size)}] "
                         f"for image_size={image_size} (the question travels in a plane of the image), "
                         f"got {question_length}")
    if min_word_count < 1:
        raise ValueError(f"vqa_rad: min_word_count must be >= 1, got {min_word_count}")
    if not 0.0 < pretrain_fraction < 1.0:
        raise ValueError(f"vqa_rad: pretrain_fraction must be in (0, 1), got {pretrain_fraction}")
    folder = real_data_root(root, str(VQA_DIR))
    train_rec, test_rec = _read_records(folder, "trainset.json"), _read_records(folder, "testset.json")
    vocab = build_vocabularies(train_rec, min_word_count=min_word_count)
    if len(vocab["questions"]) >= 1 << 16:
        raise ValueError(f"vqa_rad: {len(vocab['questions'])} question words; at most 65535 fit a token")
    word_index = {w: i for i, w in enumerate(vocab["questions"])}
    answer_index = {a: i for i, a in enumerate(vocab["answers"])}
    num_answers = len(vocab["answers"])

    referenced_by: Dict[str, str] = {}
    organ_of: Dict[str, str] = {}
    for split, recs in (("trainset.json", train_rec), ("testset.json", test_rec)):
        for r in recs:
            referenced_by.setdefault(r["image_name"], f"{split} qid {r.get('qid', '?')}")
            organ = str(r["image_organ"]).strip().upper()
            if organ_of.setdefault(r["image_name"], organ) != organ:
                raise DataFileError(f"data set 'vqa_rad': image {r['image_name']} is labelled both "
                                    f"{organ_of[r['image_name']]} and {organ}")
    names = sorted(referenced_by)
    if images != "all":  # a fixed split of the images (split_seed), the same whatever the run's seed
        order = np.random.default_rng(split_seed).permutation(len(names))
        n_pre = int(round(pretrain_fraction * len(names)))
        chosen = order[:n_pre] if images == "pretrain" else order[n_pre:]
        names = sorted(names[i] for i in chosen)
    pixels = _load_images(folder, names, image_size, referenced_by)
    image_row = {n: i for i, n in enumerate(names)}

    if partition == "organ":
        client_of = {n: ORGANS.index(organ_of[n]) for n in names}
        client_names = [o.lower() for o in ORGANS]
    else:
        perm = np.random.default_rng(seed).permutation(len(names))
        client_of = {names[i]: int(k) for k, part in enumerate(np.array_split(perm, num_clients)) for i in part}
        client_names = [f"client{k}" for k in range(num_clients)]

    def split(recs, known_only):
        rows = [r for r in recs if r["image_name"] in image_row]
        tokens = np.stack([encode_question(r["question"], word_index, question_length) for r in rows]) \
            if rows else np.zeros((0, question_length), np.int32)
        ans = np.array([answer_index.get(normalize_answer(r["answer"]), num_answers) for r in rows], np.int64)
        if known_only and np.any(ans == num_answers):
            raise AssertionError("a training answer outside the training vocabulary")
        is_open = np.array([str(r["answer_type"]).strip().upper() == "OPEN" for r in rows], bool)
        x = pack(pixels[[image_row[r["image_name"]] for r in rows]], tokens)
        y = encode_labels(ans, is_open, num_answers)
        client = np.array([client_of[r["image_name"]] for r in rows], np.int64)
        modality = np.array([ORGANS.index(organ_of[r["image_name"]]) for r in rows], np.int32)
        return x, y, modality, [np.flatnonzero(client == k) for k in range(num_clients)], ans, is_open

    x_tr, y_tr, m_tr, idx_tr, _, _ = split(train_rec, True)
    x_te, y_te, m_te, idx_te, ans_te, open_te = split(test_rec, False)
    labels = [f"closed:{a}" for a in vocab["answers"]] + ["closed:<unknown>"] + \
        [f"open:{a}" for a in vocab["answers"]] + ["open:<unknown>"]
    info = {"dataset": "vqa_rad", "target": "answers", "root": str(folder), "partition": partition,
            "images": images, "seed": int(seed), "split_seed": int(split_seed), "num_clients": int(num_clients),
            "image_size": int(image_size), "question_length": int(question_length), "image_channels": 1,
            "num_answers": num_answers, "vocabulary": vocab, "client_names": client_names,
            "unknown_test_answers": int(np.count_nonzero(ans_te == num_answers)),
            "split_note": "the files' split; a question is a sample; clients by image (no image in two clients)"}
    if images != "all":
        info["pretrain_fraction"] = float(pretrain_fraction)
    fed = Federation(train=stack_clients(x_tr, y_tr, m_tr, idx_tr), test=stack_clients(x_te, y_te, m_te, idx_te),
                     num_classes=len(labels), class_names=tuple(labels),
                     modality_names=tuple(o.lower() for o in ORGANS), info=info)
    validate_federation(fed)
    return fed


@DATASETS.register("vqa_rad")
def _vqa_rad(spec: str, num_clients: int, seed: int, kw: dict) -> Federation:
    del spec
    kw = dataset_options("vqa_rad", kw, vqa_rad_federation)
    return vqa_rad_federation(num_clients=num_clients, seed=seed, **kw)
