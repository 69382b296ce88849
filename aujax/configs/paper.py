"""The paper's protocol (Rieger et al. 2020) on paper-sized synthetic data, or on real data via flags.

25 epochs per fold, full-width ResNet-18, SGD lr 0.01 momentum 0.95, leave-one-subject-out over the 20 Actor Study
subjects. Synthetic sizes match the paper's sets: CK+ 8,657 images (here 111 x 78 = 8,658), Actor Study 33,012 from
20 subjects (20 x 1,651 = 33,020), UNBC-McMaster 9,313 from 25 subjects (25 x 373 = 9,325). For real data:
  --train_data=ck_plus --cv_data=actor_study --cross_data=unbc_mcmaster --data_dir=...
"""

from aujax.configs import default


def get_config():
    config = default.get_config()
    config.synthetic.train = dict(num_subjects=111, images_per_subject=78, domain="posed")
    config.synthetic.cv = dict(num_subjects=20, images_per_subject=1651, domain="posed")
    config.synthetic.cross = dict(num_subjects=25, images_per_subject=373, domain="wild")
    config.model.widths = "full"
    config.train.epochs = 25
    config.train.batch_size = 256
    config.protocol.min_support = 20
    config.explain.max_images = 0
    config.explain.batch_size = 256
    return config
