from rosetta_rnn.cli import main

raise SystemExit(main())
