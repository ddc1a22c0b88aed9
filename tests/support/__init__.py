"""What the tests share besides fixtures: waiting on conditions, real workers and processes.

conftest.py keeps only fixtures and hooks; tests import these helpers from here.
"""

from pathlib import Path

REPO = Path(__file__).resolve().parent.parent.parent
