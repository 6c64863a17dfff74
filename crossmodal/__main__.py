"""``python -m crossmodal`` is the ``crossmodal`` command."""
from crossmodal.cli.main import main

raise SystemExit(main())
