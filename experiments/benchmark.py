"""The GPU benchmark suite: one command, one table.

  python -m experiments.benchmark --out=runs/benchmark            # every part, the issue's sizes
  python -m experiments.benchmark --parts=train_jax,lrp_jax ...   # some parts

Parts (each in its own process, so that its peak device memory is its own and torch and JAX never share the GPU):

  train_jax       aujax's jitted train step with its input pipeline (uint8 dataset on the devices in row blocks,
                  indices of the global batch sent per step, gather and conversion on the device), as in
                  `train.fit_fold`, for each computation dtype of `--dtype` (e.g. float32,bfloat16)
  train_torch     torchvision resnet18(num_classes=8), the same loss, optimizer and resident data, eager
  train_compile   the same under torch.compile
  lrp_jax         aujax's `paper` LRP composite (all 8 AUs, one forward pass) and JAX gradient x input (all 8 AUs
                  and one AU), at JAX's default float32 precision and at 'highest'; with `--model=resnet50` only
                  the `paper` composite at default precision, on torchvision's resnet50 (random weights and BatchNorm
                  statistics) read from its ONNX export, its logits checked against torch's before timing
  lrp_zennit      Zennit's EpsilonPlusFlat (BatchNorm folded by torch, ResNetBasicBlockCanonizer; for resnet50
                  ResNetBottleneckCanonizer, on the same network as lrp_jax), one AU and all 8
  mu              μ and the other localisation metrics: (image, AU) pairs/s, and their share of the explain time
                  when fused with LRP as `--mode=explain` runs them
  precision       what explaining in bfloat16 changes (`explain.precision_difference`): per AU, the relative L2 of
                  the `paper` heatmaps to float32 at matmul precision 'highest' and the μ difference, on
                  `--batch_size` synthetic faces (random weights)
  preprocess      MediaPipe face crops of a real photo: images per CPU-second on one core, and on all cores
  protocol        the paper protocol (experiments/paper.py: paper-sized synthetic data, full-width ResNet-18,
                  25 epochs per fold) for `--protocol_folds` folds; the full 20-fold wall time is extrapolated
                  from them unless all 20 ran

Throughputs are medians over `--repeats` timed runs after warm-up, inputs rotated among several random batches.
Writes <out>/benchmark.json (all figures) and <out>/benchmark.md (the table) and prints the table. A part that fails
(say, a package missing on this machine) is reported in the table with its error; the others still run.
"""

import argparse
import contextlib
import json
import os
import platform
import subprocess
import sys
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PARTS = ("train_jax", "lrp_jax", "mu", "protocol", "lrp_zennit", "train_torch", "train_compile", "preprocess",
         "precision")
NUM_AUS = 8
IMAGE_SIZE = 112
ROTATING_INPUTS = 4  # distinct random batches timed in turn, so that no figure is a cache's
PAPER_FOLDS = 20
PAPER_ACTOR_STUDY_IMAGES = 33_012
LRP_MODELS = ("resnet18", "resnet50")
LOGITS_TOLERANCE = 1e-4  # max |aujax - torch| / max |torch| of the resnet50 logits (float32, 50 layers: about 3e-5)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="runs/benchmark", help="directory for benchmark.json and benchmark.md")
    parser.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated, from {','.join(PARTS)}")
    parser.add_argument("--batch_size", type=int, default=256)
    parser.add_argument("--widths", default="full", help="model widths of the JAX parts (preset or a,b,c,d)")
    parser.add_argument("--model", default="resnet18",
                        help="network of lrp_jax and lrp_zennit: resnet18 (aujax's at --widths vs torchvision's, "
                             "each with its own random weights) or resnet50 (one torchvision network, full width, "
                             "read by aujax from its ONNX export; LRP only)")
    parser.add_argument("--dtype", default="float32",
                        help="computation dtypes of train_jax, comma-separated (float32, bfloat16), each timed")
    parser.add_argument("--train_images", type=int, default=8192, help="resident dataset of the training parts")
    parser.add_argument("--steps", type=int, default=50, help="timed train steps or LRP batches per repeat")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps after compilation")
    parser.add_argument("--preprocess_images", type=int, default=64)
    parser.add_argument("--protocol_folds", type=int, default=2, help="folds of the paper protocol to run (20: all)")
    parser.add_argument("--protocol_config", default="experiments/paper.py")
    parser.add_argument("--protocol_override", action="append", default=[],
                        help="name=value for the protocol's config, e.g. train.epochs=1 (repeatable)")
    parser.add_argument("--part_timeout", type=int, default=900, help="seconds before a part is stopped")
    parser.add_argument("--run_part", help=argparse.SUPPRESS)  # internal: run one part in this process
    args = parser.parse_args(argv)
    args.parts = [p for p in args.parts.split(",") if p]
    unknown = sorted(set(args.parts) - set(PARTS))
    if unknown:
        parser.error(f"--parts: unknown {', '.join(unknown)}; expected some of {', '.join(PARTS)}")
    if args.model not in LRP_MODELS:
        parser.error(f"--model={args.model}: expected one of {', '.join(LRP_MODELS)}")
    args.dtype = [d for d in args.dtype.split(",") if d]
    from aujax import model as model_lib

    for dtype in args.dtype:
        try:
            model_lib.check_dtype(dtype, "--dtype")
        except ValueError as e:
            parser.error(str(e))
    return args


# ----------------------------------------------------------------------------------------------------------------
# Timing


def median_rate(run_once, items_per_run: int, repeats: int, warmup: int, synchronize) -> float:
    """Median items/s of `run_once(i)` over `repeats` runs, each timed from a synchronized start to a synchronized
    end; `warmup` untimed runs first. `run_once(i)` returns what `synchronize` waits for."""
    for i in range(warmup):
        synchronize(run_once(i))
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        synchronize(run_once(0))
        rates.append(items_per_run / (time.perf_counter() - start))
    return float(np.median(rates))


def jax_peak_bytes():
    import jax

    stats = jax.local_devices()[0].memory_stats() or {}
    return stats.get("peak_bytes_in_use")


def jax_compiled_bytes(jitted, *args):
    """Arguments + outputs + temporaries of one compiled call, from XLA's memory analysis (None where unavailable)."""
    analysis = jitted.lower(*args).compile().memory_analysis()
    if analysis is None:
        return None
    return int(analysis.argument_size_in_bytes + analysis.output_size_in_bytes + analysis.temp_size_in_bytes
               - analysis.alias_size_in_bytes)


def device_name() -> str:
    import jax

    device = jax.devices()[0]
    return f"{device.device_kind} ({device.platform}, {jax.device_count()} device(s))"


# ----------------------------------------------------------------------------------------------------------------
# Parts


def part_train_jax(args) -> dict:
    """The figures of the first dtype of `--dtype` at the top level (as before the flag), every dtype's in `dtypes`
    (the process's peak memory is over all of them)."""
    figures = {dtype: _train_jax(args, dtype) for dtype in args.dtype}
    return {**figures[args.dtype[0]], "dtypes": figures, "peak_bytes": jax_peak_bytes()}


def _train_jax(args, dtype: str) -> dict:
    import jax
    from jax.sharding import NamedSharding, PartitionSpec as P

    from aujax import distributed, train
    from aujax import model as model_lib
    from aujax.data.records import FaceRecords

    rng = np.random.default_rng(0)
    n = args.train_images
    records = FaceRecords(image=rng.integers(0, 256, (n, IMAGE_SIZE, IMAGE_SIZE, 3), np.uint8),
                          landmarks=np.zeros((n, 68, 2), np.float32),
                          labels=(rng.random((n, NUM_AUS)) < 0.3).astype(np.uint8),
                          intensity=np.zeros((n, NUM_AUS), np.float32), subject=np.full(n, "S000"),
                          source=np.full(n, "random"), name="random")
    cfg = train.TrainConfig(epochs=1, batch_size=args.batch_size, learning_rate=0.01, momentum=0.95, seed=0,
                            pos_weight_max=10.0, checkpoint_every_steps=0, threshold=0.5, min_support=1)
    trainer = train.Trainer(model_lib.create_model(args.widths, dtype=dtype), cfg, distributed.make_mesh())
    data = train.put_on_devices(records, trainer.mesh)
    pos_weight = jax.device_put(train.positive_weights(records.labels, cfg.pos_weight_max),
                                NamedSharding(trainer.mesh, P()))
    state = train.init_state(trainer.model, trainer.optimizer, jax.random.key(0), trainer.mesh)
    batches = train.epoch_order(np.arange(n), 0, 0, 0, args.batch_size)
    compiled_bytes = jax_compiled_bytes(trainer.train_step, state, data.images, data.labels, pos_weight,
                                        train.put_index(batches[0], trainer.mesh))
    box = {"state": state, "next": 0}

    def run_steps(_):
        for _ in range(args.steps):
            batch = batches[box["next"] % len(batches)]
            box["next"] += 1
            box["state"], loss = trainer.train_step(box["state"], data.images, data.labels, pos_weight,
                                                    train.put_index(batch, trainer.mesh))
        return loss

    rate = median_rate(run_steps, args.steps * args.batch_size, args.repeats, 1, jax.block_until_ready)
    return {"images_per_s": rate, "compiled_step_bytes": compiled_bytes,
            "parameters": model_lib.parameter_count(box["state"]["params"]), "device": device_name(),
            "precision": "JAX default for float32" if dtype == "float32" else f"{dtype} computation, float32 state",
            "dtype": dtype}


def _torch_training(args, compile_model: bool) -> dict:
    import torch
    import torchvision

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(0)
    n = args.train_images
    images = torch.randint(0, 256, (n, IMAGE_SIZE, IMAGE_SIZE, 3), dtype=torch.uint8, device=device)
    labels = (torch.rand((n, NUM_AUS), device=device) < 0.3).float()
    net = torchvision.models.resnet18(num_classes=NUM_AUS).to(device).train()
    step_net = torch.compile(net) if compile_model else net
    optimizer = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.95)
    positives = labels.sum(0)
    loss_fn = torch.nn.BCEWithLogitsLoss(pos_weight=((n - positives) / positives.clamp(min=1)).clamp(1, 10))
    order = torch.randperm(n, device=device)

    def step(index):
        x = images[index].permute(0, 3, 1, 2).float().div_(255.0)
        loss = loss_fn(step_net(x), labels[index])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss

    box = {"next": 0}

    def run_steps(_):
        for _ in range(args.steps):
            start = (box["next"] * args.batch_size) % (n - args.batch_size + 1)
            box["next"] += 1
            loss = step(order[start:start + args.batch_size])
        return loss

    def synchronize(loss):
        loss.item()
        if device.type == "cuda":
            torch.cuda.synchronize()

    started = time.perf_counter()
    synchronize(run_steps(0))  # compiles under torch.compile
    first_seconds = time.perf_counter() - started
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    rate = median_rate(run_steps, args.steps * args.batch_size, args.repeats, 1, synchronize)
    return {"images_per_s": rate, "first_run_seconds": first_seconds,
            "peak_bytes": torch.cuda.max_memory_allocated() if device.type == "cuda" else None,
            "device": torch.cuda.get_device_name() if device.type == "cuda" else platform.processor() or "cpu",
            "torch": torch.__version__, "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
            "matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32}


def part_train_torch(args) -> dict:
    return _torch_training(args, compile_model=False)


def part_train_compile(args) -> dict:
    return _torch_training(args, compile_model=True)


def _random_batches(shape, seed: int = 0):
    import jax

    rng = np.random.default_rng(seed)
    return [jax.device_put(rng.random(shape, np.float32)) for _ in range(ROTATING_INPUTS)]


def _jax_figures(fn, weights, batches, args) -> dict:
    """Images/s of `fn(weights, batch)` over `args.steps` batches (median of `args.repeats`), and its compiled bytes."""
    import jax

    def run_batches(i):
        for k in range(args.steps):
            out = fn(weights, batches[(i + k) % ROTATING_INPUTS])
        return out

    return {"images_per_s": median_rate(run_batches, args.steps * args.batch_size, args.repeats, 1,
                                        jax.block_until_ready),
            "compiled_bytes": jax_compiled_bytes(fn, weights, batches[0])}


def probe_images() -> np.ndarray:
    """(2, 112, 112, 3) float32 in [0, 1]: the images whose logits both LRP parts report (`probe_logits`)."""
    return np.random.default_rng(1).random((2, IMAGE_SIZE, IMAGE_SIZE, 3), np.float32)


def part_lrp_jax(args) -> dict:
    if args.model != "resnet18":
        return _lrp_jax_torchvision(args)
    import jax
    import jax.numpy as jnp
    from aujax import lrp
    from aujax import model as model_lib

    model = model_lib.create_model(args.widths)
    variables = model_lib.init_variables(model, jax.random.key(0))
    canonical = lrp.canonize(variables)
    batches = _random_batches((args.batch_size, IMAGE_SIZE, IMAGE_SIZE, 3))

    def gradient_x_input_all(variables, images):
        logits, backward = jax.vjp(lambda x: model.apply(variables, x, train=False), images)
        seeds = jnp.broadcast_to(jnp.eye(NUM_AUS, dtype=logits.dtype)[:, None, :], (NUM_AUS,) + logits.shape)
        (gradients,) = jax.vmap(backward)(seeds)
        return gradients * images

    def gradient_x_input_one(variables, images):
        gradient = jax.grad(lambda x: model.apply(variables, x, train=False)[:, 0].sum())(images)
        return gradient * images

    methods = {
        "lrp_paper_all": (lrp.make_explain_fn("paper"), canonical),
        "gxi_all": (jax.jit(gradient_x_input_all), variables),
        "gxi_one": (jax.jit(gradient_x_input_one), variables),
    }
    results, heatmaps = {}, {}
    for precision in ("default", "highest"):
        with contextlib.nullcontext() if precision == "default" else jax.default_matmul_precision("highest"):
            for name, (fn, weights) in methods.items():
                results[f"{name}_{precision}"] = _jax_figures(fn, weights, batches, args)
            heatmaps[precision] = np.asarray(lrp.pixel_heatmaps(
                    methods["lrp_paper_all"][0](canonical, batches[0])[1]), np.float64)
    for precision in ("default", "highest"):
        results[f"lrp_over_gxi_{precision}"] = (results[f"lrp_paper_all_{precision}"]["images_per_s"]
                                                / results[f"gxi_all_{precision}"]["images_per_s"])
    difference = np.linalg.norm(heatmaps["default"] - heatmaps["highest"]) / np.linalg.norm(heatmaps["highest"])
    results.update(heatmap_relative_difference=float(difference), peak_bytes=jax_peak_bytes(), device=device_name())
    return results


def _lrp_jax_torchvision(args) -> dict:
    """The `paper` composite, all 8 AUs, default precision, on the network lrp_zennit explains (torchvision's
    `--model`, `torch_reference.random_resnet`) read from its ONNX export; first its logits are checked against
    torch's (at matmul precision 'highest', so that TF32 does not count)."""
    import tempfile

    import jax
    from aujax import facs, lrp
    from aujax import graph as graph_lib
    from experiments import torch_reference

    net = torch_reference.random_resnet(args.model, NUM_AUS)
    with tempfile.TemporaryDirectory(prefix="aujax_benchmark_") as directory:
        network = torch_reference.onnx_network(net, facs.PAIN_AUS, directory)
    probe = probe_images()
    expected = torch_reference.pixel_logits(net, probe)
    with jax.default_matmul_precision("highest"):
        logits = np.asarray(graph_lib.apply(network.graph, network.variables, probe, output=network.graph.logit))
    difference = float(np.abs(logits - expected).max() / np.abs(expected).max())
    if difference > LOGITS_TOLERANCE:
        raise RuntimeError(f"{args.model}: aujax's logits differ from torch's by {difference:.1e} of the largest "
                           f"(expected <= {LOGITS_TOLERANCE:.0e})")
    batches = _random_batches((args.batch_size, IMAGE_SIZE, IMAGE_SIZE, 3))
    return {"lrp_paper_all_default": _jax_figures(lrp.make_explain_fn("paper"), lrp.canonize(network), batches, args),
            "model": args.model, "probe_logits": logits.tolist(), "logits_relative_difference_to_torch": difference,
            "peak_bytes": jax_peak_bytes(), "device": device_name()}


def part_lrp_zennit(args) -> dict:
    import importlib.metadata

    import torch
    import torchvision
    from zennit.composites import EpsilonPlusFlat
    from zennit.torchvision import ResNetBasicBlockCanonizer, ResNetBottleneckCanonizer

    from experiments import torch_reference

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    results = {"model": args.model}
    if args.model == "resnet18":
        torch.manual_seed(0)
        net = torch_reference.fold_batch_norm_torch(torchvision.models.resnet18(num_classes=NUM_AUS).eval())
    else:  # the network lrp_jax explains; its logits reported, so that the table shows both sides agree
        net = torch_reference.fold_batch_norm_torch(torch_reference.random_resnet(args.model, NUM_AUS))
        results["probe_logits"] = torch_reference.pixel_logits(net, probe_images()).tolist()
    net = net.to(device)
    batches = [torch.rand((args.batch_size, 3, IMAGE_SIZE, IMAGE_SIZE), device=device)
               for _ in range(ROTATING_INPUTS)]
    eye = torch.eye(NUM_AUS, device=device)
    composite = EpsilonPlusFlat(canonizers=[ResNetBasicBlockCanonizer() if args.model == "resnet18"
                                            else ResNetBottleneckCanonizer()])

    def relevance(images, aus):
        """One Zennit forward and backward pass per AU (seed one-hot x logit), as Zennit's attributors do."""
        heatmaps = []
        for au in aus:
            x = images.clone().requires_grad_(True)
            logits = modified(x)
            (r,) = torch.autograd.grad(logits, x, grad_outputs=logits.detach() * eye[au])
            heatmaps.append(r.sum(1))
        return heatmaps[-1]

    def synchronize(out):
        if device.type == "cuda":
            torch.cuda.synchronize()

    with composite.context(net) as modified:
        for name, aus in (("zennit_one", range(1)), ("zennit_all", range(NUM_AUS))):
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats()
            steps = max(1, args.steps // len(aus))

            def run_batches(i, aus=aus, steps=steps):
                for k in range(steps):
                    out = relevance(batches[(i + k) % ROTATING_INPUTS], aus)
                return out

            results[name] = {"images_per_s": median_rate(run_batches, steps * args.batch_size, args.repeats, 1,
                                                         synchronize),
                             "peak_bytes": torch.cuda.max_memory_allocated() if device.type == "cuda" else None}
    results.update(zennit=importlib.metadata.version("zennit"), torch=torch.__version__,
                   torch_threads=torch.get_num_threads(), cudnn_allow_tf32=torch.backends.cudnn.allow_tf32)
    return results


def part_mu(args) -> dict:
    import jax
    import jax.numpy as jnp
    from aujax import explain, facs, localisation, lrp, regions
    from aujax import model as model_lib
    from aujax.data import synthetic

    faces = synthetic.generate(max(1, args.batch_size // 64), 64, "posed", seed=0)
    images = jax.device_put(np.resize(faces.image, (args.batch_size,) + faces.image.shape[1:]))
    landmarks = jax.device_put(np.resize(faces.landmarks, (args.batch_size,) + faces.landmarks.shape[1:]))
    heatmaps = jax.device_put(np.random.default_rng(0).standard_normal(
            (NUM_AUS, args.batch_size, IMAGE_SIZE, IMAGE_SIZE), np.float32))
    masks = regions.au_region_masks(landmarks, aus=facs.PAIN_AUS)
    pairs_per_s = localisation.pairs_per_second(heatmaps, masks, repeats=args.repeats * 4)
    mu_pairs_per_s = localisation.pairs_per_second(heatmaps, masks, repeats=args.repeats * 4, names=("mu",))

    variables = model_lib.init_variables(model_lib.create_model(args.widths), jax.random.key(0))
    canonical = lrp.canonize(variables)
    explain_fn = jax.jit(lambda c, u8: lrp.make_explain_fn("paper")(c, u8.astype(jnp.float32) / 255.0))
    fused_fn = explain.explain_and_score_fn("paper", lrp.DEFAULT_EPSILON, facs.PAIN_AUS)
    fused_mu_fn = explain.explain_and_score_fn("paper", lrp.DEFAULT_EPSILON, facs.PAIN_AUS, ("mu",))

    def timed(fn, *fn_args):
        def run_batches(_):
            for _ in range(args.steps):
                out = fn(*fn_args)
            return out
        return median_rate(run_batches, args.steps * args.batch_size, args.repeats, 1, jax.block_until_ready)

    explain_images_per_s = timed(explain_fn, canonical, images)
    fused_images_per_s = timed(fused_fn, canonical, images, landmarks)
    fused_mu_images_per_s = timed(fused_mu_fn, canonical, images, landmarks)
    paper_pairs = PAPER_ACTOR_STUDY_IMAGES * NUM_AUS
    return {"pairs_per_s": pairs_per_s, "mu_only_pairs_per_s": mu_pairs_per_s,
            "mu_only_share_of_explain_time": 1.0 - fused_mu_images_per_s / explain_images_per_s,
            "paper_pairs_seconds": paper_pairs / pairs_per_s,
            "explain_images_per_s": explain_images_per_s, "explain_and_score_images_per_s": fused_images_per_s,
            "mu_share_of_explain_time": 1.0 - fused_images_per_s / explain_images_per_s, "device": device_name()}


def part_precision(args) -> dict:
    import jax
    from aujax import explain, facs, lrp
    from aujax import model as model_lib
    from aujax.data import synthetic

    faces = synthetic.generate(1, args.batch_size, "posed", seed=0)
    variables = model_lib.init_variables(model_lib.create_model(args.widths), jax.random.key(0))
    started = time.perf_counter()
    per_au = explain.precision_difference(lrp.canonize(variables), faces.image, faces.landmarks, facs.PAIN_AUS)
    return {"per_au": per_au, "images": len(faces.image), "widths": args.widths, "composite": "paper",
            "weights": "random (model.init_variables, seed 0)", "seconds": time.perf_counter() - started,
            "device": device_name()}


def part_preprocess(args) -> dict:
    from aujax.data import available_cores, faces

    photo = os.path.join(REPO, "tests", "data", "astronaut.png")
    paths = [photo] * args.preprocess_images
    with faces.FaceCropper() as cropper:  # model load and first-call set-up excluded
        cropper.crop_file(photo)
        cpu_started, started = time.process_time(), time.perf_counter()
        for path in paths:
            cropper.crop_file(path)
        cpu_seconds, one_core_wall = time.process_time() - cpu_started, time.perf_counter() - started
    workers = available_cores()
    started = time.perf_counter()
    for _, crop in faces.crop_files(paths * workers, workers=workers):
        if isinstance(crop, faces.FaceError):
            raise crop
    all_cores_seconds = time.perf_counter() - started
    return {"images_per_cpu_second": len(paths) / cpu_seconds, "images_per_s_one_process": len(paths) / one_core_wall,
            "workers": workers, "images_per_s_all_cores": len(paths) * workers / all_cores_seconds,
            "note": "all cores: worker start-up (model load) included"}


def _protocol_config(args):
    import importlib.util

    spec = importlib.util.spec_from_file_location("protocol_config", os.path.join(REPO, args.protocol_config))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config()
    config.protocol.max_folds = args.protocol_folds
    for override in args.protocol_override:
        name, _, value = override.partition("=")
        *parents, leaf = name.split(".")
        node = config
        for parent in parents:
            node = node[parent]
        node[leaf] = type(node[leaf])(value)
    return config


def part_protocol(args) -> dict:
    import tempfile

    import jax
    from aujax import pipeline, protocol

    config = _protocol_config(args)
    with tempfile.TemporaryDirectory(prefix="aujax_protocol_") as workdir:
        pipeline.check_settings(config)
        pipeline.prepare_workdir(workdir, config)
        started = time.perf_counter()
        roles = protocol.load_roles(config)
        data_seconds = time.perf_counter() - started
        started = time.perf_counter()
        results = protocol.run_training(config, workdir, roles)
        train_seconds = time.perf_counter() - started
        started = time.perf_counter()
        outcome = protocol.loso_outcome(config, workdir, roles)
        pipeline.evaluate(config, workdir, roles, outcome)
        evaluate_seconds = time.perf_counter() - started
    folds = len(results)
    total_folds = len(roles["cv"].subjects)
    fold_seconds = [r.seconds for r in results]
    # The first fold compiles the train and predict steps (once per process); the later ones show the steady cost.
    steady_fold_seconds = float(np.median(fold_seconds[1:])) if folds > 1 else fold_seconds[0]
    epoch_rates = [h["images_per_second"] for r in results for h in r.history[1:]]  # epoch 1 compiles
    median_epoch_rate = float(np.median(epoch_rates)) if epoch_rates else None
    epoch_images = results[0].history[0]["step"] * config.train.batch_size
    return {"folds_run": folds, "folds_total": total_folds, "epochs": config.train.epochs,
            "images": {role: len(r) for role, r in roles.items()}, "data_seconds": data_seconds,
            "train_seconds": train_seconds, "evaluate_seconds": evaluate_seconds, "fold_seconds": fold_seconds,
            "seconds_per_fold": steady_fold_seconds,
            "step_seconds_per_fold": (config.train.epochs * epoch_images / median_epoch_rate
                                      if median_epoch_rate else None),
            "full_protocol_seconds": (data_seconds + fold_seconds[0] + steady_fold_seconds * (total_folds - 1)
                                      + (train_seconds - sum(fold_seconds)) + evaluate_seconds),
            "extrapolated": folds < total_folds, "train_images_per_s_median_epoch": median_epoch_rate,
            "device": device_name(), "peak_bytes": jax_peak_bytes()}


# ----------------------------------------------------------------------------------------------------------------
# The table


def _figure(results, part, *keys):
    """results[part][key][...] if it is a number, else None (part missing or failed)."""
    value = results.get(part, {})
    for key in keys:
        value = value.get(key, {}) if isinstance(value, dict) else {}
    return value if isinstance(value, (int, float)) else None


def _fmt(value, unit=""):
    if value is None:
        return "n/a"
    if unit == "GiB":
        return f"{value / 2 ** 30:.2f} GiB"
    if unit == "x":
        return f"{value:.2f}x"
    if unit == "%":
        return f"{100 * value:.2f} %"
    if unit == "min":
        return f"{value / 60:.1f} min"
    return f"{value:,.0f}"


def lrp_network_difference(results: dict, model: str) -> str:
    """How far apart the logits of lrp_jax's and lrp_zennit's networks are on `probe_images()`, relative to the
    largest; for resnet18 'different random weights' (aujax's and torchvision's own); 'n/a' without both parts."""
    if model == "resnet18":
        return "different random weights"
    jax_logits, zennit_logits = (results.get(part, {}).get("probe_logits") for part in ("lrp_jax", "lrp_zennit"))
    if jax_logits is None or zennit_logits is None:
        return "n/a"
    a, b = np.asarray(jax_logits), np.asarray(zennit_logits)
    return f"{np.abs(a - b).max() / np.abs(b).max():.1e}"


def table_rows(results: dict, args) -> list[tuple[str, str, str]]:
    """(what, measured, goal or reference) rows of the summary table."""
    r = lambda part, *keys: _figure(results, part, *keys)  # noqa: E731
    train_ours = r("train_jax", "images_per_s")
    train_fp32, train_bf16 = (r("train_jax", "dtypes", dtype, "images_per_s") for dtype in ("float32", "bfloat16"))
    precision = results.get("precision", {}).get("per_au", {})
    lrp_default = r("lrp_jax", "lrp_paper_all_default", "images_per_s")
    zennit_all = r("lrp_zennit", "zennit_all", "images_per_s")
    protocol = results.get("protocol", {})
    protocol_note = (f"{protocol['folds_run']} of {protocol['folds_total']} folds run, rest extrapolated"
                     if protocol.get("extrapolated") else "all folds run")
    rows = [
        ("training images/s, aujax (batch %d, fp32, input pipeline included)" % args.batch_size,
         _fmt(train_ours), ">= 28,000 (H100)"),
        ("training images/s, aujax bfloat16 (same run, `--dtype`)", _fmt(train_bf16), ">= 1.5x float32"),
        ("aujax training bfloat16 / float32", _fmt(train_bf16 / train_fp32 if train_bf16 and train_fp32 else None,
                                                   "x"), ">= 1.5x"),
        ("training images/s, PyTorch eager", _fmt(r("train_torch", "images_per_s")), "17,100 measured by the issue"),
        ("training images/s, torch.compile", _fmt(r("train_compile", "images_per_s")), "18,800 measured by the issue"),
        ("aujax / torch.compile", _fmt(train_ours / r("train_compile", "images_per_s")
                                      if train_ours and r("train_compile", "images_per_s") else None, "x"), ">= 1.5x"),
        ("peak device memory, aujax training", _fmt(r("train_jax", "peak_bytes"), "GiB"), ""),
        ("peak device memory, PyTorch eager training", _fmt(r("train_torch", "peak_bytes"), "GiB"), ""),
        ("LRP images/s, all 8 AUs, aujax `paper`, default precision", _fmt(lrp_default), ">= 6,500 (H100)"),
        ("LRP images/s, all 8 AUs, aujax `paper`, precision 'highest'",
         _fmt(r("lrp_jax", "lrp_paper_all_highest", "images_per_s")), ""),
        ("gradient x input images/s, all 8 AUs, default / highest",
         f"{_fmt(r('lrp_jax', 'gxi_all_default', 'images_per_s'))} / "
         f"{_fmt(r('lrp_jax', 'gxi_all_highest', 'images_per_s'))}", "8,900 measured by the issue (default)"),
        ("gradient x input images/s, one AU, default / highest",
         f"{_fmt(r('lrp_jax', 'gxi_one_default', 'images_per_s'))} / "
         f"{_fmt(r('lrp_jax', 'gxi_one_highest', 'images_per_s'))}", "44,700 measured by the issue (default)"),
        ("LRP / gradient x input, all 8 AUs, default / highest",
         f"{_fmt(r('lrp_jax', 'lrp_over_gxi_default'), 'x')} / {_fmt(r('lrp_jax', 'lrp_over_gxi_highest'), 'x')}",
         ">= 0.75x"),
        ("heatmaps default vs highest precision, relative difference",
         "n/a" if r("lrp_jax", "heatmap_relative_difference") is None
         else f"{r('lrp_jax', 'heatmap_relative_difference'):.1e}", "about 1e-3 expected"),
        ("bfloat16 LRP heatmaps vs float32 'highest': relative L2, worst AU; mean abs. Δμ, worst AU",
         f"{max(a['relative_l2'] for a in precision.values()):.1e}; "
         f"{max(a['mu_abs_difference_mean'] or 0 for a in precision.values()):.1e}" if precision else "n/a",
         "table below"),
        ("Zennit EpsilonPlusFlat images/s, all 8 AUs / one AU",
         f"{_fmt(zennit_all)} / {_fmt(r('lrp_zennit', 'zennit_one', 'images_per_s'))}", "626 / 4,670 by the issue"),
        ("aujax LRP / Zennit, all 8 AUs", _fmt(lrp_default / zennit_all if lrp_default and zennit_all else None, "x"),
         ">= 10x"),
        ("network of the LRP parts (`--model`); aujax vs Zennit's logits, max relative difference",
         f"{args.model}; {lrp_network_difference(results, args.model)}",
         f"resnet50: one network, <= {LOGITS_TOLERANCE:.0e}"),
        ("peak device memory, aujax LRP all 8 AUs (compiled call, default)",
         _fmt(r("lrp_jax", "lrp_paper_all_default", "compiled_bytes"), "GiB"), ""),
        ("peak device memory, Zennit all 8 AUs", _fmt(r("lrp_zennit", "zennit_all", "peak_bytes"), "GiB"), ""),
        ("μ and other metrics, (image, AU) pairs/s", _fmt(r("mu", "pairs_per_s")), ""),
        ("μ share of the explain time (fused with LRP), all seven metrics",
         _fmt(r("mu", "mu_share_of_explain_time"), "%"), "< 5 %"),
        ("μ alone: (image, AU) pairs/s, share of the explain time",
         f"{_fmt(r('mu', 'mu_only_pairs_per_s'))}, {_fmt(r('mu', 'mu_only_share_of_explain_time'), '%')}", "< 5 %"),
        ("preprocessing images per CPU-second, one core", _fmt(r("preprocess", "images_per_cpu_second")), ">= 100"),
        ("preprocessing images/s, all %s cores" % (results.get("preprocess", {}).get("workers", "?")),
         _fmt(r("preprocess", "images_per_s_all_cores")), ""),
        (f"protocol wall time ({args.protocol_config}: {protocol.get('folds_total', '?')} folds x "
         f"{protocol.get('epochs', '?')} epochs)",
         _fmt(r("protocol", "full_protocol_seconds"), "min") + (f" ({protocol_note})" if protocol else ""),
         "< 15 min (H100)"),
        ("protocol: seconds per fold after the first (of which train steps), median epoch images/s",
         f"{r('protocol', 'seconds_per_fold') or 0:.1f} s ({r('protocol', 'step_seconds_per_fold') or 0:.1f} s), "
         f"{_fmt(r('protocol', 'train_images_per_s_median_epoch'))}" if protocol else "n/a", ""),
    ]
    return rows


def precision_table(precision: dict) -> list[str]:
    """The `precision` part per AU as markdown lines ([] without it)."""
    if "per_au" not in precision:
        return []
    lines = ["", f"bfloat16 vs float32 'highest', `{precision['composite']}` composite, {precision['images']} images, "
             f"widths {precision['widths']}, {precision['weights']}:", "",
             "| AU | heatmap relative L2 | mean μ float32 | mean μ bfloat16 | mean abs. Δμ | max abs. Δμ |",
             "| --- | --- | --- | --- | --- | --- |"]
    number = lambda value, spec: "n/a" if value is None else format(value, spec)  # noqa: E731
    for au, row in precision["per_au"].items():
        lines.append(f"| {au} | {row['relative_l2']:.1e} | {number(row['mu_float32'], '.4f')} | "
                     f"{number(row['mu_bfloat16'], '.4f')} | {number(row['mu_abs_difference_mean'], '.1e')} | "
                     f"{number(row['mu_abs_difference_max'], '.1e')} |")
    return lines


def markdown_table(results: dict, args) -> str:
    lines = [f"Device: {results.get('device', 'unknown')}", "", "| what | measured | goal / reference |",
             "| --- | --- | --- |"]
    lines += [f"| {what} | {value} | {goal} |" for what, value, goal in table_rows(results, args)]
    lines += precision_table(results.get("precision", {}))
    failed = {part: r["error"] for part, r in results.items() if isinstance(r, dict) and "error" in r}
    lines += [""] + [f"- part `{part}` failed: {error}" for part, error in failed.items()]
    return "\n".join(lines).rstrip() + "\n"


# ----------------------------------------------------------------------------------------------------------------
# Driver


def run_part_in_subprocess(part: str, args, argv: list[str]) -> dict:
    """Run one part in a fresh process; its figures as a dict, or {'error': ...} naming what went wrong."""
    result_path = os.path.join(args.out, f"part_{part}.json")
    with contextlib.suppress(FileNotFoundError):
        os.remove(result_path)
    log_path = os.path.join(args.out, f"part_{part}.log")
    print(f"[benchmark] {part} ...", flush=True)
    started = time.perf_counter()
    with open(log_path, "w") as log:
        try:
            completed = subprocess.run([sys.executable, "-m", "experiments.benchmark", *argv, f"--run_part={part}"],
                                       cwd=REPO, stdout=log, stderr=subprocess.STDOUT, timeout=args.part_timeout)
            returncode = completed.returncode
        except subprocess.TimeoutExpired:
            returncode = f"timeout after {args.part_timeout} s"
    seconds = time.perf_counter() - started
    if returncode == 0 and os.path.exists(result_path):
        with open(result_path) as f:
            result = json.load(f)
        print(f"[benchmark] {part} done in {seconds:.0f} s", flush=True)
        return result
    with open(log_path) as f:
        tail = [line.rstrip() for line in f.readlines() if line.strip()][-3:]
    error = f"exit {returncode}; {' | '.join(tail)[-400:]} (log: {log_path})"
    print(f"[benchmark] {part} FAILED after {seconds:.0f} s: {error}", flush=True)
    return {"error": error}


def main(argv=None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    if args.run_part:
        from absl import logging

        logging.use_absl_handler()  # timestamped lines
        logging.set_verbosity(logging.INFO)  # the part's log shows aujax's progress lines (epochs, images/s)
        result = globals()[f"part_{args.run_part}"](args)
        with open(os.path.join(args.out, f"part_{args.run_part}.json"), "w") as f:
            json.dump(result, f, indent=2)
        return
    results = {"command": "python -m experiments.benchmark " + " ".join(argv), "python": platform.python_version()}
    for part in args.parts:
        results[part] = run_part_in_subprocess(part, args, [a for a in argv if not a.startswith("--run_part")])
        results.setdefault("device", results[part].get("device"))
        with open(os.path.join(args.out, "benchmark.json"), "w") as f:
            json.dump(results, f, indent=2)
    table = markdown_table(results, args)
    with open(os.path.join(args.out, "benchmark.md"), "w") as f:
        f.write(table)
    print("\n" + table, flush=True)


if __name__ == "__main__":
    main()
