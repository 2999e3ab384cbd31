"""ftlab: the helper library of a course on fine-tuning pretrained models.

Each function is taught in a lesson first; its docstring names that lesson. Lesson modules
append their public names below, one import line each.
"""

from ftlab.diagnose import diagnose
from ftlab.env import doctor, in_colab, pick_device, pick_precision, seed_everything, warn_if_no_gpu
from ftlab.profile import active_profile, banner, settings
from ftlab.train import History, evaluate, fit, predict

__version__ = "0.1.0"
