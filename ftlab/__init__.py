"""ftlab: the helper library of a course on fine-tuning pretrained models.

Each function is taught in a lesson first; its docstring names that lesson. Below is the
learner's short list; everything else is imported from its one home module, named by concern:
setup/ (lesson 00), fundamentals (01), data/ and models/ (02, 03), training/ (02), freeze (04),
lora (05), scaling/ (06), plot (all). Course tooling lives apart: bench/, exercises/, cli.
"""

from ftlab.setup.claims import check_claims
from ftlab.setup.env import (
    doctor,
    in_colab,
    pick_device,
    pick_precision,
    seed_everything,
    warn_if_no_gpu,
)
from ftlab.setup.settings import active_profile, banner, settings
from ftlab.training.diagnose import diagnose
from ftlab.training.evaluation import evaluate, predict
from ftlab.training.loop import fit
from ftlab.training.lr_find import lr_find
from ftlab.training.state import History

__version__ = "0.1.0"
