from benchmarks.peers.harness import main

raise SystemExit(main())
