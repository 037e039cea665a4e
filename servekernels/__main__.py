from servekernels.cli import main

raise SystemExit(main())
