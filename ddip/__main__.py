from ddip.cli import main

raise SystemExit(main())
