"""The default job: the whole protocol on small embedded synthetic data, sized for a 2-core CPU (about 5 minutes).

Roles as in the paper: `train` stands in for CK+ (posed), `cv` for the Actor Study (posed, leave one subject out),
`cross` for UNBC-McMaster (wild). The other configs (`paper`, `bias`) import this one and override a few fields.
"""

import ml_collections

from aujax import localisation


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.seed = 0
    # the AU set: pain (the paper's 8), bp4d, disfa, unbc, or AU ids such as "1,2,12" (aujax.facs); the model's outputs
    # and every table follow its order
    config.aus = "pain"

    config.data = ml_collections.ConfigDict()
    config.data.train = "synthetic"
    config.data.cv = "synthetic"
    config.data.cross = "synthetic"
    config.data.data_dir = "~/tensorflow_datasets"

    config.synthetic = ml_collections.ConfigDict()
    config.synthetic.seed = 0
    config.synthetic.spurious_cue_au = 0  # 0: no cue; an AU id (e.g. 4) puts a background mark with it in training
    config.synthetic.spurious_cue_probability = 0.9
    config.synthetic.train = dict(num_subjects=16, images_per_subject=40, domain="posed")
    config.synthetic.cv = dict(num_subjects=5, images_per_subject=60, domain="posed")
    config.synthetic.cross = dict(num_subjects=8, images_per_subject=40, domain="wild")

    config.model = ml_collections.ConfigDict()
    config.model.name = "resnet18"  # aujax.model.ARCHITECTURES: resnet18, resnet34, resnet50, vgg11_bn, mobilenet_v2
    config.model.widths = "tiny"  # 'full' 64-128-256-512, 'reduced' 32-64-128-256, 'tiny' 16-32-64-128, or "a,b,c,d"
    config.model.threshold = 0.5
    # computation dtype of training (aujax.model.DTYPES): "bfloat16" runs convolutions and activations in bfloat16,
    # parameters, batch statistics, loss and optimizer state stay float32 (mixed precision)
    config.model.dtype = "float32"

    config.train = ml_collections.ConfigDict()
    config.train.epochs = 4
    config.train.batch_size = 32
    config.train.learning_rate = 0.01
    config.train.momentum = 0.95
    config.train.pos_weight_max = 10.0
    config.train.checkpoint_every_steps = 0  # 0: at the end of every epoch
    config.train.log_every_steps = 10  # TensorBoard: the training loss of every this many steps (0: none)

    config.explain = ml_collections.ConfigDict()
    config.explain.composite = "paper"  # the main LRP composite (aujax.lrp.COMPOSITES)
    # compared side by side with the main one in Table 3, on the same model and images
    config.explain.compare = ("epsilon_alpha2_beta1_flat", "epsilon_gamma_box", "all_z", "all_epsilon",
                              "gradient_x_input")
    config.explain.epsilon = 0.1  # ε of the ε-rule layers (iNNvestigate's default for the dense layers)
    # computation dtype of the LRP convolutions, independent of model.dtype: "bfloat16" rounds their operands
    # (denominators and relevance stay float32); docs/benchmarks.md "Mixed precision" gives what that changes
    config.explain.dtype = "float32"
    # BatchNorm in LRP: "fold" (into the convolution before it, as Zennit), "innvestigate" (kept and explained as
    # iNNvestigate 2.1.2's LRP presets do) or "innvestigate_v1" (as iNNvestigate 1.0.8, the paper's era); docs/lrp.md
    config.explain.batch_norm = "fold"
    # localisation metrics (aujax.localisation.METRIC_NAMES; 'mu' is required): ('mu',) skips the per-pair sort of
    # the rank-based ones, which costs about a fifth of the explain time on a GPU
    config.explain.metrics = localisation.METRIC_NAMES
    config.explain.max_images = 48  # per role and composite, to keep the CPU job short; 0: all
    config.explain.batch_size = 32
    config.explain.examples_per_panel = 3  # Figure 2: lowest and highest μ examples per AU
    config.explain.grid_images = 6  # heatmap grids: images per role
    # results/heatmaps_<role>.npz: every explained image's heatmaps under the main composite, float16 (n, A, 112, 112)
    # with `source` per row and `au_ids`, for analysis elsewhere (a second LRP pass; memory n x A x 25 KB)
    config.explain.save_heatmaps = False

    # Verification beyond μ (aujax.analysis, issue 15), run by the explain step.
    config.analysis = ml_collections.ConfigDict()
    # Faithfulness and the randomisation sanity check run the model again and again (aujax.analysis.model_checks):
    # sized for the 2-core default job; a GPU run can take every explained image and finer curves.
    # the composites both compare (each costs an LRP compile at their batch size): the main one, an LRP composite with
    # γ/box layers and the gradient baseline; () = every composite of config.explain
    config.analysis.composites = ("paper", "epsilon_gamma_box", "gradient_x_input")
    config.analysis.batch_size = 4  # images per batch of both (rounded up to a multiple of the devices)
    config.analysis.faithfulness_roles = ("cv",)
    config.analysis.faithfulness_images = 8  # the first explained images of each of those roles; 0: none
    config.analysis.fill = "blur"  # what fills perturbed pixels: "blur" (Gaussian, σ = 4 px) or "mean" (colour)
    config.analysis.flip_steps = 4  # pixel flipping: points of the curve after the unperturbed image
    config.analysis.flip_max_fraction = 0.2  # share of the image's 8x8 patches filled at the last point
    config.analysis.sanity_role = "cv"
    config.analysis.sanity_images = 4  # the first explained images of sanity_role; 0: no sanity check
    config.analysis.sanity_granularity = "stage"  # randomisation levels: one per stage ("stage") or per module ("layer")
    config.analysis.sanity_threshold = 0.5  # flag a composite whose fully randomised heatmaps stay this similar
    # intervals, relevance-region matrix and strategies (cheap: no further pass of the model)
    config.analysis.bootstrap_samples = 1000  # resamples of the subjects for every interval (seeded by config.seed)
    config.analysis.confidence = 0.95  # level of the bootstrap intervals of every F1 and μ
    config.analysis.strategy_size = 28  # SpRAy: heatmaps summed to this many pixels a side (a divisor of 112; 0: none)
    config.analysis.max_clusters = 6  # SpRAy: at most this many strategies per AU (the eigengap picks how many)
    config.analysis.neighbours = 10  # SpRAy: k of the k-nearest-neighbour affinity
    config.analysis.min_images = 10  # SpRAy: an AU with fewer correctly predicted images is one cluster

    config.protocol = ml_collections.ConfigDict()
    config.protocol.max_folds = 0  # 0: every subject of the cv role is held out once
    config.protocol.min_support = 5  # an AU with fewer positives in an evaluation set is not scored
    return config
