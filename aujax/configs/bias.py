"""The bias-detection experiment: the default job with a clean posed cross-domain set, so that the only difference
between the `cv` role (LOSO, carries the cue when asked for) and the `cross` role is the spurious cue.

Run both arms with `python experiments/bias_experiment.py` (it sets --config.synthetic.spurious_cue_au).
"""

from aujax.configs import default


def get_config():
    config = default.get_config()
    config.synthetic.cross = dict(num_subjects=8, images_per_subject=40, domain="posed")
    config.synthetic.spurious_cue_probability = 1.0
    config.train.epochs = 6
    config.explain.compare = ()
    config.explain.max_images = 160
    return config
