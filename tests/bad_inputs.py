"""The bad inputs that tests outside ``test_validation.py``'s case lists check (not collected).

docs/robustness.md's table "Bad input and the error it gives" is generated (``omnifm docs``,
:mod:`omnifm_jax.docgen`) from two sources:
- ``CONFIG_CASES`` and ``DATA_CASES`` of ``tests/test_validation.py``: the generator runs each
  case and prints the error it actually raises, so those rows cannot go stale;
- :data:`CASES` below: the other cases, each naming the test(s) that check it.
``tests/test_docs.py`` checks that every test named here exists.

Each entry is ``(group, bad input, the error as a user sees it, tests)``: ``group`` is one of
:data:`GROUPS`; ``…`` in an error stands for text left out (a path, a long list); ``tests`` are
pytest node ids relative to ``tests/`` (``file.py::test_name``; a parametrized test without its
``[id]`` means all its cases).
"""
from __future__ import annotations

__all__ = ["GROUPS", "CASES"]

#: Table sections, in order: key -> heading.
GROUPS = {
    "config": "Configs and the command line",
    "data": "Data and how it fits the config",
    "files": "Data files",
    "run": "Output directories, resume and checkpoints",
}

_V = "test_validation.py::"
_CK = "test_checkpoint.py::"
_RD = "test_rundir.py::"

CASES = [
    # ------------------------------------------------------------------ configs, command line
    ("config", "unknown key in a config file",
     "ConfigError: …/typo.py: unknown key(s) ['rouns']; known keys: [...]", (_V + "test_bad_overrides_and_config_files",)),
    ("config", "unknown `--set` key", "ConfigError: unknown config key 'lrr'; known keys: [...]",
     (_V + "test_bad_overrides_and_config_files",)),
    ("config", "`--set rounds`", "ConfigError: override 'rounds' is not key=value",
     (_V + "test_bad_overrides_and_config_files",)),
    ("config", "`--set seed.x=1`", "ConfigError: 'seed' is not a dict; cannot set 'seed.x'",
     (_V + "test_bad_overrides_and_config_files",)),
    ("config", "unknown config name",
     "ConfigError: config 'no_such_config' not found (looked for …); known configs: [...]",
     (_V + "test_bad_overrides_and_config_files",)),
    ("config", "missing key", "ConfigError: missing key(s) ['rounds'] (start from load_config() or DEFAULTS)",
     (_V + "test_missing_key",)),
    ("config", "`head_pool=attention` / `scale=4` (former top-level keys, in a config file or `--set`)",
     "ConfigError: head_pool moved to task_kwargs.head_pool (scale moved to task_kwargs.scale)",
     ("test_run_path.py::test_former_top_level_task_options_are_refused_naming_the_new_key",)),
    ("config", "`backbone_kwargs={'width': 3}`", "ConfigError: backbone_kwargs {'width': 3} do not fit backbone 'cnn': …",
     (_V + "test_bad_backbone_kwargs", _V + "test_run_refuses_bad_config_before_loading_data")),
    ("config", "unknown `task_kwargs` key",
     "ConfigError: task 'classification': unknown task_kwargs ['dice_weight']; it accepts: ['head_pool']",
     (_V + "test_unknown_task_kwargs_named",)),
    ("config", "`omnifm train --set client_dropout=1.5` (any config error on the command line)",
     "omnifm: error: client_dropout must be a number in [0, 1), got 1.5 (exit code 2)", (_V + "test_cli_errors",)),
    ("config", "`omnifm reproduce table2 --scale tiny --only x2 --dry-run`",
     "omnifm: error: table2 cell (×2, Scenario 2: OmniFM): data: dataset 'synthetic_sr': unknown option(s) "
     "['split_by'] (Scenario 2 needs BreaKHis' subtypes)", (_RD + "test_reproduce_dry_run_builds_every_federation",)),
    # ------------------------------------------------------------------ data and the config
    ("data", "unknown data-set option",
     "ConfigError: dataset 'synthetic': unknown option(s) ['alpha_typo']; allowed: [...]",
     (_V + "test_data_that_does_not_fit_the_config",)),
    ("data", "`dataset_kwargs.alpha=[1,2]` (a wrong type for any data-set option)",
     "ConfigError: dataset 'synthetic': dataset_kwargs.alpha must be a number (default 0.5), got [1, 2] (list)",
     (_RD + "test_a_list_where_a_number_is_expected",)),
    ("data", "unknown data set", "ValueError: unknown dataset 'mnist'; known: …",
     (_V + "test_data_that_does_not_fit_the_config",)),
    ("data", "data built for 3 clients, config asks 4", "ConfigError: dataset built 3 clients, config asks 4",
     (_V + "test_data_that_does_not_fit_the_config",)),
    ("data", "12x12 images for the `cnn` backbone",
     "ConfigError: backbone 'cnn' cannot take images of shape (12, 12, 1) (too small for its convolutions and "
     "pooling?): …", (_V + "test_data_that_does_not_fit_the_config",)),
    ("data", "`batch_size` larger than every client's training set, `drop_last=True`",
     "ConfigError: drop_last=True and batch_size=65, but every client has fewer than 65 training samples "
     "(largest: 64): no client would ever train; lower batch_size or set drop_last=False",
     (_V + "test_drop_last_with_every_client_smaller_than_a_batch",)),
    ("data", "`batch_size=100000`, `drop_last=False`",
     "ConfigError: batch_size=100000 is larger than every client's training set (largest: 41 samples); with "
     "drop_last=False each client would run one step on all its samples, which batch_size=41 does exactly: "
     "set batch_size <= 41",
     (_V + "test_drop_last_with_every_client_smaller_than_a_batch",
      _RD + "test_batch_larger_than_every_client_without_drop_last")),
    ("data", "some clients smaller than `batch_size`, `drop_last=True`",
     "UserWarning naming them: they run no local step (and upload the model they received, weighted by n_k, "
     "as in PFLlib)", (_V + "test_drop_last_with_every_client_smaller_than_a_batch",)),
    ("data", "a client of one sample (`min_size=1`)",
     "ValueError: client 3 has a single sample, so it cannot have both a training and a test sample; …",
     ("test_data_federation.py::test_one_sample_client_is_an_error_not_an_unevaluated_client",)),
    ("data", "`shard_clients=True` with clients not divisible by the devices",
     "ConfigError: shard_clients needs num_clients divisible by the 8 devices, got num_clients=6",
     ("test_sharding.py::test_sharded_fedavg_round_equals_single_device",)),
    ("data", "bad data reaching `experiment.run`", "the same errors, raised before anything is written or trained",
     (_V + "test_run_refuses_bad_data_before_any_work",)),
    # ------------------------------------------------------------------ data files
    ("files", "a truncated or corrupt `.npz`",
     "DataFileError: data set 'pbc_bloodmnist_style_28': cannot read …/pbc_bloodmnist_style_28.npz: BadZipFile: "
     "File is not a zip file (truncated or corrupt? replace the file)",
     (_RD + "test_a_truncated_npz_is_named", _RD + "test_a_truncated_npz_in_the_real_data_folder")),
    ("files", "a file in an image folder that is not an image",
     "DataFileError: data set 'BreaKHis': …/SOB_B_A-14-22549AB-40-001.png is not a readable image: "
     "UnidentifiedImageError: …", (_RD + "test_a_non_image_in_an_image_folder",)),
    ("files", "`--config real4` without its four files (no real-data folder here)",
     "DatasetNotFoundError: real 4-modality set incomplete in ROOT; missing: …. Put the files there, set "
     "OMNIFM_REAL_DATA to the real-data folder that holds them (…), or pass dataset_kwargs.root=FOLDER",
     (_RD + "test_the_real4_files_missing_says_where_it_looked_and_how_to_point_elsewhere",)),
    ("files", "MedMNIST file with a wrong MD5", "ChecksumError naming the file and both hashes",
     ("test_data_medmnist.py::test_corrupted_copy_is_caught",)),
    ("files", "MedMNIST file missing, offline", "DatasetNotFoundError naming the URL and the path to put the file at",
     ("test_data_medmnist.py::test_missing_file_offline_names_url_and_path",)),
    ("files", "unknown MedMNIST subset / BreaKHis file name / SR scale or patch not divisible by the scale",
     "ValueError naming the subset, file or value",
     ("test_data_medmnist.py::test_file_names_and_urls", "test_data_breakhis.py::test_bad_names_raise_naming_the_file",
      "test_data_sr.py::test_make_sr_pairs_errors")),
    # ------------------------------------------------------------------ runs, resume, checkpoints
    ("run", "fresh run into a directory with an earlier run's outputs (checkpoints or not)",
     "RunDirError: --out OUT already holds the outputs of an earlier run (config.json, metrics.jsonl, ...); "
     "continue it with --resume, replace it with --overwrite, or choose another directory",
     (_V + "test_resume_without_checkpoint_and_fresh_run_over_one",
      _RD + "test_a_finished_run_is_never_overwritten_silently_and_overwrite_replaces_it_whole")),
    ("run", "a second run on the `--out` of a live run",
     "RunDirError: --out OUT is in use by run pid 4146 on HOST (started ...); wait for it to finish or choose "
     "another output directory",
     (_RD + "test_a_directory_held_by_a_live_run_is_refused_and_a_killed_runs_lock_is_not_stale",)),
    ("run", "`omnifm flower --out` of an earlier run or of a live one",
     "RunDirError, as for a run (already holds the outputs of an earlier run ... / is in use by run pid ...), "
     "before any Flower process starts; `--overwrite` replaces the earlier outputs",
     (_RD + "test_a_flower_deployment_is_refused_an_earlier_runs_directory_before_it_starts_anything",)),
    ("run", "`omnifm reproduce TABLE` again into a folder with that table's files, without `--resume` or "
            "`--overwrite`",
     "RunDirError: --out OUT already holds the outputs of an earlier sitting of TABLE (TABLE.md, TABLE.csv, ...); "
     "continue it with --resume, replace it with --overwrite, or choose another directory",
     ("test_reproduce.py::test_resume_runs_only_the_cells_that_did_not_finish",)),
    ("run", "a second sitting of one table on one folder while the first runs (another table may share it)",
     "RunDirError: --out OUT is in use by run pid 4146 on HOST (started ...); wait for it to finish or choose "
     "another output directory",
     ("test_reproduce.py::test_a_second_sitting_of_a_table_on_one_folder_is_refused_while_the_first_runs",)),
    ("run", "`--out` is a file / lies below a file",
     "RunDirError: --out OUT exists and is not a directory / …/file is not a directory, so OUT cannot be created",
     (_RD + "test_out_is_a_file",)),
    ("run", "`--out` on a read-only file system",
     "RunDirError: --out OUT cannot be created or written: Read-only file system (OUT)",
     (_RD + "test_out_on_a_read_only_file_system",)),
    ("run", "every participant faulty in every round (`lr=1e30`)",
     "exit code 1: the run learned nothing: no client update was accepted in any round …; `\"learned\": false` in "
     "summary.json", (_RD + "test_a_run_that_learned_nothing_fails_and_says_so",)),
    ("run", "`run(..., resume=True)` without an output directory",
     "ConfigError: resume needs the output directory of the run to continue",
     (_V + "test_resume_without_checkpoint_and_fresh_run_over_one",)),
    ("run", "`omnifm train --resume` without `--out`",
     "omnifm: error: --resume needs --out, the output directory of the run to continue", (_V + "test_cli_errors",)),
    ("run", "`--resume` on a directory without config.json",
     "omnifm: error: cannot resume: OUT/config.json not found (pass --config to name the config)",
     (_V + "test_cli_errors",)),
    ("run", "resume with another config",
     "ConfigError: cannot resume from OUT/checkpoints: the config differs in ['local_epochs', 'lr'] (local_epochs: "
     "checkpoint 3 vs now 2, lr: checkpoint 0.3 vs now 0.1); only [...] may change on resume",
     (_V + "test_resume_with_another_config_names_the_keys",
      _CK + "test_resume_with_another_config_is_refused_before_any_work")),
    ("run", "resume with fewer rounds than done",
     "ConfigError: cannot resume from OUT/checkpoints: it is at round 3 but rounds=2",
     (_V + "test_resume_with_fewer_rounds_than_done",)),
    ("run", "resume on other data",
     "ConfigError: cannot resume from OUT/checkpoints: the training/test data differ from the data the checkpoint "
     "was trained on (data_sha256 … vs …)", (_V + "test_resume_with_other_data",)),
    ("run", "resume a checkpoint of another model",
     "CheckpointMismatchError: checkpoint of round 1 in OUT/checkpoints does not fit this run's state: checkpoint "
     "has server/w float32[3] where this run has …",
     (_V + "test_resume_a_checkpoint_of_another_model", _CK + "test_state_of_another_structure_is_refused")),
    ("run", "resume with no checkpoint", "CheckpointError: no checkpoint to resume from in OUT/checkpoints",
     (_V + "test_resume_without_checkpoint_and_fresh_run_over_one",)),
    ("run", "truncated checkpoint file",
     "CorruptCheckpointWarning: checkpoint of round 3 in OUT/checkpoints is corrupt or incomplete (round 3: "
     "unreadable (…)); moved to corrupt-3-<time>, falling back to an earlier checkpoint",
     (_CK + "test_truncated_file_falls_back_to_previous_checkpoint",
      _CK + "test_resume_from_a_corrupt_latest_checkpoint_falls_back_and_matches")),
    ("run", "checkpoint bytes overwritten",
     "CorruptCheckpointWarning: … round 2 … (unreadable or integrity check failed); falls back",
     (_CK + "test_overwritten_bytes_fail_the_integrity_check",)),
    ("run", "readable checkpoint with changed values",
     "CorruptCheckpointWarning: … (round 2: integrity check failed (state sha256 … != recorded …)) …",
     (_CK + "test_changed_values_with_a_valid_encoding_fail_the_integrity_check",)),
    ("run", "commit marker or metadata item deleted",
     "CorruptCheckpointWarning: … (round 3: commit marker commit_success.txt missing (incomplete write)) … / "
     "(round 2: metadata item missing (OUT/checkpoints/2/meta)) …",
     (_CK + "test_missing_commit_marker_or_metadata_falls_back",)),
    ("run", "every checkpoint corrupt",
     "CheckpointError: no good checkpoint in OUT/checkpoints (all of rounds [1] are corrupt)",
     (_CK + "test_no_good_checkpoint_is_an_error",)),
    ("run", "half-written temporary checkpoint directory", "ignored, and removed when the manager starts",
     (_CK + "test_partially_written_tmp_directory_is_ignored",)),
    # ------------------------------------------------------------------ fine-tuning
    ("run", "`init_from` that is neither a run directory nor a checkpoint",
     "ConfigError: init_from='…' is neither a run directory (with checkpoints/) nor a checkpoint directory "
     "(RUN/checkpoints/<round>); train the source run with checkpoint_every > 0",
     ("test_finetune.py::test_mismatched_or_missing_parameters_are_refused_before_training",)),
    ("run", "`init_from` whose parameters do not fit the model (another width, a personal head)",
     "ConfigError: init_from=…: cannot load 3 parameter(s): params/backbone/fc1/bias: shape (8,) here, (16,) in "
     "the source (…); … Select what to load with init_params (path rules, e.g. 'params/backbone/')",
     ("test_finetune.py::test_mismatched_or_missing_parameters_are_refused_before_training",)),
    ("run", "`init_from` a model trained on this run's test images",
     "ConfigError: init_from=… was trained on N of this run's test images: a fine-tuning run must start from a "
     "model trained on data disjoint from its test split",
     ("test_finetune.py::test_a_source_trained_on_this_runs_test_images_is_refused",)),
    ("run", "`init_from` a VQA model whose question or answer vocabulary is not the data's",
     "ConfigError: init_from=…: its questions vocabulary (N entries) is not this run's (M); first difference at "
     "entry 2: 'the' there, 'is' here (data built from other files or with other vocabulary options)",
     ("test_vqa.py::test_training_reports_closed_open_and_overall_accuracy_and_fine_tunes",)),
    ("files", "a VQA question whose image is missing",
     "DatasetNotFoundError: data set 'vqa_rad': 1 image(s) named by questions are not in …/images: chest1.jpg "
     "(trainset.json qid 21)", ("test_vqa.py::test_bad_files_are_refused_before_training",)),
    ("files", "a VQA question with an empty answer (or no word, an unknown answer type or organ)",
     "DataFileError: data set 'vqa_rad': …/trainset.json record 3 (qid 4): the answer is empty (question '…')",
     ("test_vqa.py::test_bad_files_are_refused_before_training",)),
    ("data", "`task=vqa` with another backbone, or a backbone whose question length or vocabulary does not fit",
     "ConfigError: backbone_kwargs.question_length=16 but the data hold questions of 8 tokens (set both, or "
     "dataset_kwargs.question_length) (and similar)", ("test_vqa.py::test_backbone_and_data_must_agree",)),
    ("config", "`trainable` pattern that names no parameter",
     "ConfigError: trainable pattern 'params/nothing' matches no parameter of this model (its parameters: [...])",
     ("test_finetune.py::test_trainable_freezes_every_other_parameter_on_server_and_clients",)),
    ("config", "`init_params` without `init_from`, `trainable` not a list, a bad regex",
     "ConfigError: init_params selects what init_from loads: set init_from too (and similar)",
     ("test_finetune.py::test_bad_finetuning_settings",)),
    ("config", "`lora` target that adapts no dense layer",
     "ConfigError: lora target 'conv9' matches no dense layer of the backbone (layers with a kernel: [...])",
     ("test_finetune.py::test_lora_fine_tuning_regime_trains_only_the_adapters_and_head",)),
    ("config", "`lora` without targets, a rank < 1, an unknown option",
     "ConfigError: lora.targets must be a non-empty list of regexes on module paths, got [] (and similar)",
     ("test_finetune.py::test_bad_lora_settings",)),
    # ------------------------------------------------------------------ several processes
    ("config", "`--coordinator` / `--num-processes` / `--process-id` given in part (or malformed)",
     "ConfigError: a multi-process run needs the coordinator address, the number of processes and this "
     "process's id; missing: num_processes (--num-processes or $JAX_NUM_PROCESSES)",
     ("test_distributed.py::test_settings_from_arguments_and_environment",)),
    ("config", "a multi-process run without `shard_clients=True` or without `--out`",
     "ConfigError: this process is one of 2 (a multi-process run): the clients must be split over their "
     "devices, set shard_clients=True",
     ("test_distributed.py::test_a_multi_process_run_needs_sharded_clients_and_an_output_directory",)),
    ("run", "a multi-process run whose step fails on process 0 (refused `--out`, bad checkpoint)",
     "the other processes: PeerFailure: checking the output directory OUT failed on process 0: RunDirError: …",
     ("test_distributed.py::test_a_step_that_fails_on_the_primary_stops_every_process",)),
    ("run", "a process of a multi-process run dies",
     "the others stop within --peer-timeout: JAX's \"The following tasks are unhealthy (stopped sending "
     "heartbeats)\" (exit status 134)",
     ("test_distributed.py::test_a_dead_peer_stops_the_run_with_an_error",)),
    ("run", "a deployment node whose upload does not fit the model (wrong name, shape or dtype)",
     "that upload is left out of the round (weight 0) and the server logs: round 1: rejected the upload of node "
     "N: site 1 sent shared/params/… as float64[…], expected float32[…]",
     ("test_deploy.py::test_a_malformed_upload_is_refused_naming_the_site",
      "test_flower.py::test_a_stopped_node_a_malformed_upload_and_a_misconfigured_site_are_left_out_and_the_run_ends")),
    ("run", "a deployment node that dies or never answers",
     "its client gets weight 0 for the round (no reply after --round-timeout or Flower's node-unavailable "
     "error); the run ends and writes its outputs",
     ("test_deploy.py::test_a_dead_site_gets_weight_zero_and_the_round_completes",
      "test_flower.py::test_a_stopped_node_a_malformed_upload_and_a_misconfigured_site_are_left_out_and_the_run_ends")),
]
