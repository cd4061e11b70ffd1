import os
import sys

# The project's modules live in the repository root, one level above the tests.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
