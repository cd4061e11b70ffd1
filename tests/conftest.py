import os
import sys

# The project's modules live in the repository root, one level above the tests.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch

# The tests use tiny models, for which a second thread costs more in handover than it saves,
# and many times more when the other core is busy.
torch.set_num_threads(1)
