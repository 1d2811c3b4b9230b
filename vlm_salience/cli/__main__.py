"""`python -m vlm_salience.cli ...` (and `accelerate launch -m vlm_salience.cli ...`)."""

import sys

from vlm_salience.cli import main

sys.exit(main())
