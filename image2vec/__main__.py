from image2vec.cli import main

raise SystemExit(main())
