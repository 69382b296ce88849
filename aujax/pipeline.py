"""Runs a mode of the command line: checks the settings, then calls the stages in order.

The run record, `workdir/config.json`, holds a run's settings (`_RUN_IDENTITY`) and a fingerprint of each role's data;
it is written once training starts. A workdir that holds trained state (a checkpoint or a finished fold) refuses
other settings (`prepare_workdir`) and other data (`run_record`) in every later mode.
"""

import ast
import json
import os
import time

import jax
import ml_collections
import numpy as np
from absl import logging

from aujax import facs
from aujax import files
from aujax import html_report
from aujax import localisation
from aujax import lrp
from aujax import model as model_lib
from aujax import protocol
from aujax import report
from aujax import rundir
from aujax import train
from aujax.analysis import model_checks
from aujax.data import fingerprint, sources

MODES = {
    "all": "train every fold, evaluate, explain and verify, write the HTML report",
    "train": "train every fold not finished yet (leave-one-subject-out), then evaluate",
    "evaluate": "Tables 1 and 2 from a trained workdir",
    "explain": "LRP heatmaps, Table 3 (μ), Figures 1-2 and the report from a trained workdir",
    "explain_image": "explain a photo, a folder or glob of images, or a video (--image, --fps) with the trained run's "
                     "best model, --checkpoint or --model_file",
    "preprocess": "build a real dataset: --dataset, --manual_dir, --data_dir",
    "score": "μ, the other localisation metrics, Table 3, figures and the report of heatmaps made elsewhere "
             "(--heatmaps, --data, optional --labels, --predictions)",
    "explain_model": "explain a model trained elsewhere (--model_file=m.onnx, its card beside it or --model_card) on "
                     "--data: Table 3 (μ), μ beside F1, figures and the report",
}
USER_ERRORS = (ValueError, FileNotFoundError, NotADirectoryError, PermissionError, train.NonFiniteLossError,
               train.TrainingStopped)
_HEATMAP_ROWS = 256  # images whose heatmaps `save_heatmaps` computes at a time (float32 while computed)
# Settings that change what a run trains: a workdir holding checkpoints of other settings is refused.
_RUN_IDENTITY = ("seed", "aus", "data", "synthetic", "model", "train", "protocol")
# What a run record written before a setting existed means by it (its run had that setting's one value then).
_BEFORE_THE_SETTING = {"aus": ",".join(map(str, facs.PAIN_AUS))}
# The same for fields added to a section since: {section: {field: the one value earlier runs had}}.
_BEFORE_THE_FIELD = {"model": {"name": "resnet18", "dtype": "float32"}}
# Fields of those sections that change how a run is watched, not what it computes: neither recorded nor compared (so a
# workdir trained before such a field existed still resumes).
_WATCHING_ONLY = {"train": ("log_every_steps",)}


def check_settings(config) -> None:
    """Clear errors for settings that cannot work, before any data is generated or read."""
    try:
        facs.resolve_aus(config.aus)
    except ValueError as e:
        raise ValueError(f"--config.aus: {e}") from None
    model_lib.resolve_widths(config.model.widths, config.model.name)
    model_lib.check_dtype(config.model.dtype)
    model_lib.check_dtype(config.explain.dtype, "--config.explain.dtype")
    for composite in (config.explain.composite, *config.explain.compare):
        if composite not in lrp.COMPOSITES:
            raise ValueError(f"LRP composite {composite!r}: expected one of {', '.join(lrp.COMPOSITES)}")
    try:
        localisation.check_metric_names(config.explain.metrics)
    except ValueError as e:
        raise ValueError(f"--config.explain.metrics: {e}") from None
    if "mu" not in config.explain.metrics:
        raise ValueError(f"--config.explain.metrics={tuple(config.explain.metrics)}: must include 'mu' (Table 3)")
    model_checks.check_settings(config, sources.ROLES)
    devices = jax.device_count()
    if config.train.batch_size < 1 or config.train.batch_size % devices:
        raise ValueError(f"--batch_size={config.train.batch_size} must be a positive multiple of the number of "
                         f"devices ({devices}: {jax.devices()[0].platform})")
    if config.explain.batch_size < 1 or config.explain.batch_size % devices:
        raise ValueError(f"--config.explain.batch_size={config.explain.batch_size} must be a positive multiple of the "
                         f"number of devices ({devices})")
    if config.seed < 0:
        raise ValueError(f"--seed={config.seed} must be a non-negative integer")
    if config.train.epochs < 1:
        raise ValueError(f"--epochs={config.train.epochs} must be at least 1")
    if not 0.0 < config.model.threshold < 1.0:
        raise ValueError(f"--threshold={config.model.threshold} must lie strictly between 0 and 1")
    check_analysis(config.analysis)


def check_analysis(cfg) -> None:
    """Clear errors for the `config.analysis` settings of the region matrix, strategies and intervals that cannot
    work."""
    size = cfg.strategy_size
    if size < 0 or (size and facs.IMAGE_SIZE % size):
        raise ValueError(f"--config.analysis.strategy_size={size}: expected a divisor of {facs.IMAGE_SIZE} "
                         "(0: no strategies)")
    for name in ("bootstrap_samples", "max_clusters", "neighbours"):
        if cfg[name] < 1:
            raise ValueError(f"--config.analysis.{name}={cfg[name]} must be at least 1")
    if not 0.0 < cfg.confidence < 1.0:
        raise ValueError(f"--config.analysis.confidence={cfg.confidence} must lie strictly between 0 and 1")


def prepare_workdir(workdir: str, config) -> None:
    """Create `workdir`, check it is writable, and refuse one that holds trained state of a run with other settings.

    A workdir whose config.json was never followed by a checkpoint or a finished fold (a refused or failed first
    attempt) holds no run: other settings are welcome there."""
    try:
        os.makedirs(workdir, exist_ok=True)
        probe = os.path.join(workdir, f".write_test.{jax.process_index()}")  # processes may share the workdir
        with open(probe, "w") as f:
            f.write("ok")
        os.remove(probe)
    except OSError as e:
        raise PermissionError(f"--workdir={workdir} is not a writable directory ({e.strerror})") from None
    path = rundir.RunDir(workdir).config
    saved = files.read_json(path)
    if saved is None or not protocol.holds_trained_state(workdir):
        return
    settings = run_settings(config)
    changed = [k for k in _RUN_IDENTITY if _saved_setting(saved, k) != settings[k]]
    if changed:
        raise ValueError(f"--workdir={workdir} holds a run with other settings ({', '.join(changed)} differ from "
                         f"{path}); use a new --workdir or the same settings")


def _saved_setting(saved: dict, key: str):
    """Setting `key` of a run record as this aujax would write it (settings and fields added since filled in)."""
    value = saved.get(key, _BEFORE_THE_SETTING.get(key))
    return {**_BEFORE_THE_FIELD[key], **value} if key in _BEFORE_THE_FIELD and isinstance(value, dict) else value


def run_settings(config) -> dict:
    """The settings of `_RUN_IDENTITY` but `_WATCHING_ONLY`, as config.json holds them (JSON types; the AU set as
    its ids, "4,6,7,...", whichever way the config names it)."""
    settings = json.loads(json.dumps({k: config[k].to_dict() if hasattr(config[k], "to_dict") else config[k]
                                      for k in _RUN_IDENTITY}))
    settings["aus"] = ",".join(map(str, facs.resolve_aus(config.aus)))
    for section, fields in _WATCHING_ONLY.items():
        for field in fields:
            settings[section].pop(field, None)
    return settings


def run_record(workdir: str, config, roles: dict) -> dict:
    """What `workdir/config.json` is to hold of this run: its settings and, under "fingerprints", a fingerprint of
    each role's records (`aujax.data.fingerprint`).

    ValueError naming each role whose data differ, and in what, from those that trained the workdir's run (where it
    holds trained state and its config.json has fingerprints).
    """
    record = {**run_settings(config), "fingerprints": {role: fingerprint.fingerprint(r) for role, r in roles.items()}}
    path = rundir.RunDir(workdir).config
    saved = files.read_json(path)
    if saved is None or "fingerprints" not in saved or not protocol.holds_trained_state(workdir):
        return record
    differing = [f"the {role} role's {', '.join(fields)}" for role, current in record["fingerprints"].items()
                 if (fields := fingerprint.differences(saved["fingerprints"].get(role, {}), current))]
    if differing:
        raise ValueError(f"{'; '.join(differing)} differ from those the run in --workdir={workdir} was trained and "
                         f"evaluated on ({path}); use that data or a new --workdir")
    return record


def keep_run_record(workdir: str, record: dict) -> None:
    """Write `record` to `workdir/config.json` (process 0) unless it is there already; call it once the run holds
    trained state of these settings and data, or is about to. A config.json without fingerprints (an older aujax)
    gets them, with an INFO line."""
    path = rundir.RunDir(workdir).config
    saved = files.read_json(path)
    if saved == record:
        return
    if saved is not None and "fingerprints" not in saved:
        logging.info("%s has no data fingerprints (written by an older aujax): recording those of the data now; "
                     "later modes refuse other data", path)
    if jax.process_index() == 0:
        files.write_json(path, record)


def adopt_run_settings(workdir: str, config) -> None:
    """Modes that read a trained run take its settings from `workdir/config.json`, whatever the flags say."""
    saved = files.read_json(rundir.RunDir(workdir).config)
    if saved is None:
        return
    with config.unlocked():
        for key in _RUN_IDENTITY:
            value = _saved_setting(saved, key)
            if value is not None:
                config[key] = ml_collections.ConfigDict(value) if isinstance(value, dict) else value
    logging.info("using the settings of the trained run in %s", rundir.RunDir(workdir).config)


def run(mode: str, config, workdir: str, dataset: str | None = None, manual_dir: str | None = None,
        image: str | None = None, checkpoint: str | None = None, preprocess_options: dict | None = None,
        fps: float | None = None, score_inputs: dict | None = None, model_inputs: dict | None = None) -> None:
    """Run `mode` (`MODES`); `score_inputs` are --mode=score's files: heatmaps, data, labels, predictions;
    `model_inputs` --mode=explain_model's: model_file, model_card, data."""
    started = time.perf_counter()
    if mode == "preprocess":
        _preprocess(config, workdir, dataset, manual_dir, preprocess_options or {})
        return
    model_file = (model_inputs or {}).get("model_file")
    if mode in ("evaluate", "explain") or (mode == "explain_image" and not model_file):
        adopt_run_settings(workdir, config)
    check_settings(config)
    if mode == "score":
        from aujax import score  # figures only where asked for

        inputs = score_inputs or {}
        if not inputs.get("heatmaps") or not inputs.get("data"):
            raise ValueError("--mode=score needs --heatmaps=<.npy or .npz> and --data=<records or a folder of images>")
        score.score(config, workdir, **inputs)
        return
    if mode == "explain_image":
        if not image:
            raise ValueError("--mode=explain_image needs --image=<photo, folder, glob or video>")
        from aujax import explain_image  # LRP, mediapipe and figures only where asked for

        external = None
        if model_file:
            if checkpoint:
                raise ValueError("--mode=explain_image takes --model_file or --checkpoint, not both")
            model_card = model_inputs.get("model_card")
            external = explain_image.ExternalModel(*external_model(model_file, model_card, mode), model_file,
                                                   model_card)
        explain_image.explain_image(config, workdir, image, checkpoint, fps or explain_image.DEFAULT_FPS, external)
        return
    prepare_workdir(workdir, config)
    if mode == "explain_model":
        explain_model(config, workdir, **(model_inputs or {}))
        _finish(workdir, started)
        return
    logging.info("%d %s device(s) on %d host(s)", jax.device_count(), jax.devices()[0].platform,
                 jax.process_count())
    roles = protocol.load_roles(config)
    record = run_record(workdir, config, roles)
    if mode in ("train", "all"):
        protocol.run_training(config, workdir, roles, on_start=lambda: keep_run_record(workdir, record))
    outcome = protocol.loso_outcome(config, workdir, roles)
    keep_run_record(workdir, record)
    if mode in ("train", "evaluate", "all"):
        evaluate(config, workdir, roles, outcome)
    if mode in ("explain", "all"):
        _explain(config, workdir, roles, outcome)
    _finish(workdir, started)


def _finish(workdir: str, started: float) -> None:
    """The HTML report (process 0) and where the results are."""
    if jax.process_index() == 0:
        print(f"\nReport: {os.path.abspath(html_report.write_report(workdir))}", flush=True)
    print(f"\nResults in {os.path.abspath(rundir.RunDir(workdir).results)} "
          f"({time.perf_counter() - started:.0f} s)", flush=True)


def evaluate(config, workdir: str, roles: dict, outcome: protocol.LosoOutcome) -> dict:
    """Tables 1 and 2 of `outcome` (`protocol.evaluate`), written and printed by process 0; returns the summary."""
    evaluation = protocol.evaluate(config, roles, outcome)
    if jax.process_index() == 0:
        print(report.write_evaluation(rundir.RunDir(workdir), evaluation), flush=True)
    return evaluation.summary


def _explain(config, workdir: str, roles: dict, outcome: protocol.LosoOutcome) -> None:
    """Explain the best fold's model on every role (every process), then write Table 3 and the figures (process 0)."""
    from aujax import explain  # LRP only where asked for

    graph = protocol.create_model(config).graph  # known from the config: no need to recognise it from the variables
    canonical = lrp.canonize(outcome.variables, graph, batch_norm=config.explain.batch_norm)
    explained = explain.explain_roles(canonical, roles, config.explain, config.model.threshold,
                                      config.analysis.strategy_size)
    _write_explained(config, workdir, canonical, explained, outcome.results[outcome.best].name, outcome.histories)
    _check_model(config, workdir, outcome.variables, explained)


def _check_model(config, workdir: str, variables: dict, explained) -> None:
    """Faithfulness and the randomisation sanity check of the trained model (`analysis.model_checks`, every
    process), written and printed by process 0."""
    from aujax.analysis import faithfulness_figures  # matplotlib only where asked for

    checks = model_checks.run_checks(protocol.create_model(config), variables, explained, config)
    if jax.process_index() == 0:
        print(report.write_model_checks(rundir.RunDir(workdir), checks), flush=True)
        faithfulness_figures.write_model_checks(rundir.RunDir(workdir), checks)


def explain_model(config, workdir: str, model_file: str | None = None, model_card: str | None = None,
                  data: str | None = None) -> None:
    """--mode=explain_model: the ONNX model `model_file` (`lrp.load_onnx`; `model_card` a card file or JSON object,
    None for the card beside the model) explained on the dataset `data` (a --cv_data spec), for the AUs its card maps
    and the dataset codes; writes what --mode=explain writes."""
    from aujax import explain
    from aujax.data import sources

    if not model_file or not data:
        raise ValueError("--mode=explain_model needs --model_file=<model.onnx> and --data=<dataset or records>")
    if protocol.holds_trained_state(workdir):
        raise ValueError(f"--workdir={workdir} holds a trained run, whose results --mode=explain_model would "
                         "overwrite; use another --workdir")
    network, card = external_model(model_file, model_card, "explain_model")
    records = sources.load_role("cv", data, config)
    aus = tuple(au for au in records.au_ids if au in network.au_ids)  # in the dataset's order
    if not aus:
        raise ValueError(f"{card.where} maps AUs {', '.join(map(str, network.au_ids))}, --data={data} codes "
                         f"{', '.join(map(str, records.au_ids))}: no AU in common to verify")
    if len(aus) < len(network.au_ids):
        logging.warning("%s: AUs %s are not coded in %s and are left out", card.where,
                        ", ".join(str(au) for au in network.au_ids if au not in aus), records.name)
    index = dict(zip(network.au_ids, network.outputs))
    canonical = lrp.canonize(network._replace(au_ids=aus, outputs=tuple(index[au] for au in aus)),
                             batch_norm=config.explain.batch_norm)
    explained = explain.explain_roles(canonical, {"cv": records.with_aus(aus)}, config.explain,
                                      config.model.threshold, config.analysis.strategy_size)
    _write_explained(config, workdir, canonical, explained, os.path.basename(model_file), {})


def external_model(model_file: str, model_card, mode: str):
    """(`ExplainableNetwork`, `ModelCard`) of the ONNX model `model_file` (`lrp.load_onnx`; `model_card` a card file or
    JSON object, None for the card beside the model) for `--mode=<mode>`, which explains 112x112 face crops and
    decides an AU by sigmoid(output) >= --threshold: ValueError in one line for a card of another input size or
    output activation, or one that does not match the model."""
    from aujax.lrp import onnx as onnx_lib

    card = onnx_lib.resolve_card(model_file, model_card)
    if list(card.input_size) != [facs.IMAGE_SIZE] * 2 or card.output_activation != "sigmoid":
        raise ValueError(f"{card.where}: --mode={mode} explains {facs.IMAGE_SIZE}x{facs.IMAGE_SIZE} face "
                         "crops and decides an AU by sigmoid(output) >= --threshold: it needs input_size "
                         f"[{facs.IMAGE_SIZE}, {facs.IMAGE_SIZE}] and output_activation \"sigmoid\", got "
                         f"{list(card.input_size)} and {card.output_activation!r}")
    return onnx_lib.load_onnx(model_file, card), card

def _write_explained(config, workdir: str, canonical, explained, model_name: str, histories: dict) -> None:
    """The analyses of `explained` (`aujax.analysis.verify`: region matrix, strategies, intervals), then Table 3, μ
    beside F1, the analyses' tables, the figures and (where asked for) the heatmap arrays, on process 0."""
    from aujax import explain, figures  # matplotlib only where asked for
    from aujax.analysis import figures as analysis_figures, verify

    cfg = config.explain
    if jax.process_index() != 0:
        return
    analysis = verify.analyse(explained, config.analysis, config.seed, explained.main["cv"].records.au_ids)
    canonical = jax.device_get(canonical)  # the figures' few heatmaps: this process alone, on its default device
    print(report.write_explained(rundir.RunDir(workdir).results, explained, cfg, config.protocol.min_support,
                                 model_name, analysis), flush=True)
    print(report.write_analysis(rundir.RunDir(workdir), explained, analysis), flush=True)
    figure2 = explain.figure2_examples(canonical, explained.main["cv"], cfg)
    grids = {role: explain.heatmap_grid(canonical, result.records, cfg) for role, result in explained.main.items()}
    figures.write_explained(rundir.RunDir(workdir), explained, figure2, grids, histories)
    analysis_figures.write_figures(rundir.RunDir(workdir), explained, analysis)
    if cfg.save_heatmaps:
        save_heatmaps(rundir.RunDir(workdir), canonical, explained, cfg)


def save_heatmaps(run: rundir.RunDir, canonical, explained, cfg) -> list[str]:
    """Write `run.heatmap_arrays(role)` for every role of `explained` (`explain.Explained`): its explained images'
    heatmaps under the main composite, `heatmaps` float16 (n, A, 112, 112), `source` (n,) and `au_ids` (A,)
    (`--mode=score` reads them back); returns the paths."""
    from aujax import explain

    paths = []
    for role, result in explained.main.items():
        records = result.records
        parts = [explain.pixel_heatmaps_of(canonical, records.image[start:start + _HEATMAP_ROWS], cfg)
                 .swapaxes(0, 1).astype(np.float16) for start in range(0, len(records), _HEATMAP_ROWS)]
        paths.append(run.heatmap_arrays(role))
        files.write_npz(paths[-1], heatmaps=np.concatenate(parts), source=records.source,
                        au_ids=np.array(records.au_ids, np.int64))
    return paths


def parse_options(pairs: list[str] | None) -> dict:
    """["landmarks=dataset", "margin=0.3"] -> {"landmarks": "dataset", "margin": 0.3} (Python literals or strings)."""
    options = {}
    for pair in pairs or ():
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"--preprocess_option={pair!r}: expected name=value, e.g. landmarks=dataset")
        try:
            options[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            options[key] = value
    return options


def _preprocess(config, workdir: str, dataset: str | None, manual_dir: str | None, options: dict) -> None:
    from aujax.data import preprocess  # tensorflow-datasets and mediapipe only for this mode

    if not dataset or (not manual_dir and dataset != "synthetic_faces"):
        raise ValueError("--mode=preprocess needs --dataset and --manual_dir (and --data_dir for the output)")
    preprocess.preprocess(dataset, manual_dir, os.path.expanduser(config.data.data_dir),
                          rundir.RunDir(workdir).result("preprocess_report.csv"), **options)
