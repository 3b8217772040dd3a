"""Does OmniFM's spectral token collapse, and do its prompts act per input?

Variants of OmniFM (each an override of the config):

* ``default``: ECA attends to the local spectral token ``s`` and the retrieved prototypes
  (the task loss trains the tokenizer); mean-pooled head;
* ``retrieved_only`` (``local_spectral_in_eca=False``): ECA attends to the retrieved
  prototypes only, so only SPAlign trains the tokenizer (a constant ``s`` costs nothing);
* ``attention_head`` (``task_kwargs.head_pool=attention``): one self-attention layer over
  ``[Z || r || c]`` before pooling, so the suffix prompts interact with each input.

Each column is an evaluation round; besides accuracy and macro-F1 the run's diagnostics
(:mod:`omnifm_jax.diagnostics`, ``diag/...``) measure the spectral tokens of the test images:
their mean cosine to the mean token (1: every image gets the same token) and their modality
purity (do modalities stay apart in the spectral space the bank indexes?), and how uniform
ECA's attention is.
"""
from omnifm_jax.reproduce import Cell, Metric, Scale, Setting, Table
from omnifm_jax.reproduce.settings import REAL4_NOTE, RUN, SYNTHETIC_NOTE, TINY_CLS

VARIANTS = (("default", ()),
            ("retrieved_only", ("algorithm_kwargs.local_spectral_in_eca=False",)),
            ("attention_head", ("task_kwargs.head_pool=attention",)))
ROUNDS = (1, 10, 20, 30, 40, 50)
COLUMNS = tuple((f"r{r}", f"round {r}", r) for r in ROUNDS) + (("last", "last round", None),)
MEASURED = ("acc", "f1", "s_cos", "s_purity", "attn_entropy")

CELLS = tuple(Cell(name, label, name, key, "real4", ("algorithm=omnifm",) + over, at_round=r)
              for name, over in VARIANTS for key, label, r in COLUMNS)
SMOKE_REAL4 = RUN + ("eval_train_loss=False", "diagnostics=1", "num_clients=5", "dataset_kwargs.splits=['test']",
                     "backbone_kwargs.hidden=64", "batch_size=32")
TABLE = Table(
    "omnifm_gaps", "OmniFM's spectral token and prompts over training (real4)", MEASURED, CELLS, kind="study",
    rule="last",
    metric_defs={"s_cos": Metric("diag/s_cos_to_mean", "cos(s, mean s)", 1.0, 3, higher_is_better=False),
                 "s_purity": Metric("diag/s_modality_purity", "modality purity of s", 1.0, 3),
                 "attn_entropy": Metric("diag/attn_entropy_ratio", "ECA attention entropy / ln(keys)", 1.0, 3,
                                        higher_is_better=False)},
    scales={"smoke": Scale({"real4": (Setting("real4", SMOKE_REAL4, "real4", REAL4_NOTE),
                                      Setting("default", TINY_CLS + ("diagnostics=1",), None, SYNTHETIC_NOTE))},
                           cols=("r1", "last"), rounds=4),
            "full": Scale({"real4": (Setting("real4", RUN + ("eval_train_loss=False", "diagnostics=10"), "real4",
                                             "real4 as configured: 20 clients, Dirichlet 0.1, 20% participation, "
                                             "FedAvgCNN"),)}, cols=tuple(k for k, _, _ in COLUMNS[:-1]), rounds=50),
            "tiny": Scale({"real4": (Setting("default", TINY_CLS + ("diagnostics=1",), None, "tests only"),)},
                          cols=("r1", "last"), rounds=2)},
    notes=("Diagnostics are measured on up to 64 test samples of every client with its personalised model "
           "(see omnifm_jax/diagnostics.py); they exist at round 1, every 10th round and the last.",))
